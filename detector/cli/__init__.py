"""The ``detect`` command line: typer app, shared options, rendering, one module per command.

Importing this package is cheap on purpose: :func:`main` imports the app (typer, polars,
pyarrow: about a second) inside its own ``try``, so a Ctrl-C during start-up ends with
exit 130 and one line, not a traceback from the middle of an import.
``from detector.cli import app`` still gives the typer app, imported on first use.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import sys
import types
from typing import Any

from detector.errors import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED

#: Set by :func:`main`: the app then imports only the command it runs (see
#: ``detector.cli.app.DetectGroup``). Library users and tests get every command.
lazy_commands = False


#: numpy's OpenBLAS starts a thread per core that spins waiting for work; nothing here
#: multiplies matrices big enough to share (the forest walks trees; features are polars),
#: and the spinning costs most where CPU is short: beside another busy process, `detect
#: ingest` of 300k events spent 4.5-5.4 user CPU-s with it, 4.4-4.6 without; a day's
#: `detect train` on a quiet machine 2.9-3.5 s, 2.8-3.3 s without (docs/performance.md).
#: Set before numpy loads; a user's setting wins.
BLAS_THREADS = ("OPENBLAS_NUM_THREADS", "1")


def main() -> None:
    """Console entry point (``detect``)."""
    global lazy_commands
    lazy_commands = True
    os.environ.setdefault(*BLAS_THREADS)
    _stand_in_for_closed_streams()
    _write_stdout_whole()
    try:
        from detector.cli.app import main as run
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(EXIT_INTERRUPTED)
    try:
        run()
    except SystemExit as done:
        if isinstance(done.code, int) or done.code is None:
            _leave(done.code or 0)
        raise


class _ClosedStream(io.TextIOBase):
    """Stands for a standard stream the process was started without (``>&-``).

    Python sets such a stream to None, and the first ``print`` failed with an
    ``AttributeError`` deep in a library. Writing here is an ``OSError`` naming the
    stream instead, which the CLI reports in one line (exit 3), as ``ls >&-`` does;
    a command that writes nothing there is not affected.
    """

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        raise OSError(errno.EBADF, f"cannot write: {self.name} is closed")


class _WholeWrites(io.RawIOBase):
    """A file descriptor whose writes are whole or fail: standard output's, for the CLI.

    A pipe whose reader leaves part way takes part of a write (64 KiB) and refuses the
    rest; Python's buffered writer took the part as done and dropped the rest without an
    error, so ``detect findings --format json | reader-that-stops`` ended with exit 0 and
    a cut document. Here the rest is written again, and fails with ``EPIPE``: the CLI
    then exits 141 (:data:`detector.errors.EXIT_BROKEN_PIPE`).
    """

    def __init__(self, fd: int) -> None:
        super().__init__()
        self._fd = fd

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def isatty(self) -> bool:
        return os.isatty(self._fd)

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            done += os.write(self._fd, view[done:])
        return done


def _write_stdout_whole() -> None:
    """Standard output through :class:`_WholeWrites`, with its encoding and buffering."""
    out = sys.stdout
    if not isinstance(out, io.TextIOWrapper):
        return  # a closed stream's stand-in, or one a caller replaced
    try:
        fd = out.fileno()
    except (OSError, ValueError):
        return
    out.flush()
    sys.stdout = io.TextIOWrapper(
        io.BufferedWriter(_WholeWrites(fd)),
        encoding=out.encoding,
        errors=out.errors,
        line_buffering=out.line_buffering,
    )


def _stand_in_for_closed_streams() -> None:
    """Give a closed stdout a stream that fails clearly, and a closed stderr the null device
    (nothing can be said there; the exit code still tells)."""
    if sys.stdout is None:
        sys.stdout = _ClosedStream("standard output")
    if sys.stderr is None:
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115 (the process's stderr until exit)


def _leave(code: int) -> None:
    """End the process with ``code`` without tearing the interpreter down, when that is safe.

    Teardown frees everything a run still holds, object by object: after `detect score`
    over 1M events that is ~0.15 s of a ~2 s command, spent after the work is done. It is
    skipped only when the main thread is the last Python thread (nothing else may still be
    writing); the ``atexit`` handlers still run first (logging's flush, ``weakref.finalize``
    clean-ups, Ray's shutdown), then stdout and stderr are flushed. Any doubt: the normal exit.
    """
    import atexit
    import threading

    code = _flush_standard_streams(code)
    run_exit_handlers = getattr(atexit, "_run_exitfuncs", None)
    if threading.active_count() != 1 or run_exit_handlers is None:
        sys.exit(code)
    run_exit_handlers()
    for stream in (sys.stdout, sys.stderr):
        if stream is None or isinstance(stream, _ClosedStream):  # started without it
            continue
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed stream
            sys.exit(code)
    os._exit(code)


def _flush_standard_streams(code: int) -> int:
    """Flush stdout and stderr; returns the exit code: :data:`EXIT_BROKEN_PIPE` when the
    reader of one went away before taking all (``| python -c 'read 10 bytes'``), as the
    shell reports a process SIGPIPE ended. The output the reader did not take was written
    in one final flush, which failed after the command had already chosen exit 0.

    The stream is then pointed at the null device, so the interpreter's own last flush
    finds nothing to fail on (it would print a traceback and exit 120)."""
    for stream in (sys.stdout, sys.stderr):
        if stream is None or isinstance(stream, _ClosedStream):
            continue
        try:
            stream.flush()
        except OSError as exc:
            if exc.errno != errno.EPIPE:
                continue  # said again, and handled, by the flush in _leave
            with contextlib.suppress(OSError, ValueError):
                null = os.open(os.devnull, os.O_WRONLY)
                os.dup2(null, stream.fileno())
                os.close(null)
            code = EXIT_BROKEN_PIPE
        except ValueError:  # a closed stream
            continue
    return code


class _Package(types.ModuleType):
    """``detector.cli.app`` is the typer app, even once the submodule of that name is loaded.

    (Importing a submodule sets it as an attribute of its package; the setter keeps the
    attribute pointing at the app object instead.)
    """

    @property
    def app(self) -> Any:
        from detector.cli.app import app

        return app

    @app.setter
    def app(self, value: Any) -> None:  # the import system storing the submodule
        pass


sys.modules[__name__].__class__ = _Package

__all__ = ["app", "main"]
