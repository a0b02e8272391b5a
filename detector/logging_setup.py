"""Logging on stderr: plain text for people, one JSON object per line for log shippers.

``detect --log-format json ...`` (or ``DETECT_LOG_FORMAT=json``, or ``log_format = "json"`` in
detect.toml) makes *everything* the process writes to stderr a JSON line: records of the
``logging`` module, and also the one-line ``error: ...`` / ``warning: ...`` messages and
summaries that commands print on stderr through rich, which are turned into records
(level taken from their ``error:``/``warning:`` prefix). Data on stdout is never touched.
Fluent Bit, Vector, the CloudWatch agent or Datadog can then parse the stream as is::

    {"time": "2026-11-27T10:00:03.125Z", "level": "error", "logger": "detector",
     "command": "export", "message": "another exporter holds log group ...", "pid": 7}
"""

from __future__ import annotations

import io
import json
import logging
import re
import sys
import time
from typing import Any, TextIO

from detector.controls import ONE_LINE

LOGGER = "detector"
_STANDARD_ATTRS = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys() | {"message", "asctime"}
)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ms), level, logger, command, message, extras."""

    def __init__(self, command: str | None = None) -> None:
        super().__init__()
        self.command = command

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        if self.command:
            out["command"] = self.command
        out["message"] = record.getMessage()
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                out[key] = value
        out["pid"] = record.process
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """One line a record, control characters shown (a message may quote a lake string or
    what a server answered); a traceback, under --log-level debug, keeps its lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return super().formatMessage(record).translate(ONE_LINE)


class StderrToLog(io.TextIOBase):
    """A stand-in for ``sys.stderr`` that turns each complete line into a log record."""

    def __init__(self, logger: logging.Logger, original: TextIO) -> None:
        self.logger = logger
        self.original = original
        self._buffer = ""

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:  # no progress bars or colours inside JSON
        return False

    def fileno(self) -> int:
        return self.original.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.original, "encoding", "utf-8") or "utf-8"

    def write(self, text: str) -> int:
        self._buffer += text.replace("\r", "\n")
        while "\n" in self._buffer:
            line, self._buffer = self._buffer.split("\n", 1)
            self._emit(line)
        return len(text)

    def flush(self) -> None:
        if self._buffer:
            line, self._buffer = self._buffer, ""
            self._emit(line)

    def _emit(self, line: str) -> None:
        line = _ANSI.sub("", line).rstrip()
        if not line:
            return
        level = logging.INFO
        for prefix, lvl in (("error:", logging.ERROR), ("warning:", logging.WARNING)):
            if line.lower().startswith(prefix):
                level, line = lvl, line[len(prefix) :].lstrip()
                break
        self.logger.log(level, line)


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_installed: dict[str, Any] = {}


def configure(log_format: str = "text", level: str = "warning", command: str | None = None) -> None:
    """Set up the ``detector`` logger (and, for JSON, capture stderr) for this process."""
    reset()
    fmt = (log_format or "text").lower()
    original = sys.stderr
    handler = logging.StreamHandler(original)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(command))
    else:
        handler.setFormatter(TextFormatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger(LOGGER)
    root.addHandler(handler)
    root.setLevel((level or "warning").upper())
    root.propagate = False
    _installed["handler"] = handler
    if fmt == "json":
        # Lines written to stderr become records of this logger at their own level.
        echo = logging.getLogger(f"{LOGGER}.stderr")
        echo.setLevel(logging.DEBUG)
        logging.captureWarnings(True)
        warnings_logger = logging.getLogger("py.warnings")
        warnings_logger.addHandler(handler)
        warnings_logger.propagate = False
        _installed["warnings"] = warnings_logger
        _installed["stderr"] = original
        sys.stderr = StderrToLog(echo, original)  # type: ignore[assignment]


def reset() -> None:
    """Undo :func:`configure` (the root context calls it on close; tests rely on it)."""
    stream = sys.stderr
    if isinstance(stream, StderrToLog):
        stream.flush()
    if "stderr" in _installed:
        sys.stderr = _installed.pop("stderr")
    handler = _installed.pop("handler", None)
    if handler is not None:
        root = logging.getLogger(LOGGER)
        root.removeHandler(handler)
        root.setLevel(logging.NOTSET)
        root.propagate = True  # back to defaults: pytest's caplog and embedding apps
        warnings_logger = _installed.pop("warnings", None)
        if warnings_logger is not None:
            warnings_logger.removeHandler(handler)
            logging.captureWarnings(False)
