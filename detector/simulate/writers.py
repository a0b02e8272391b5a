"""Writing a simulation to disk in the four input formats ingest reads, plus labels.json.

Why: the simulator must produce exactly what the readers in
:mod:`detector.sources.files` consume. The framing of each format (line layout, page and
record shapes, gzip members) comes from :mod:`detector.sources.formats`, shared with the
readers and the test factories; this module only decides file layout and batching.
"""

from __future__ import annotations

import gzip
import io
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import orjson

from detector.simulate.actors import ACCOUNT_ID, HEX_DIGITS, US
from detector.simulate.factory import EventFactory
from detector.simulate.simulation import EventBatch, default_end, simulate
from detector.sources import formats
from detector.timeparse import iso_utc

#: Output formats understood by :func:`write_simulation`: every input format ingest reads.
FORMATS = formats.INPUT_FORMATS

# --------------------------------------------------------------------------------------------
# Writers
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SimulationSummary:
    """What :func:`write_simulation` wrote."""

    out_dir: Path
    start: datetime
    end: datetime
    seed: int
    rate: float
    cluster: str
    events: int
    scenarios: int
    files: tuple[Path, ...]
    bytes_written: int
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "out_dir": str(self.out_dir),
            "start": iso_utc(self.start),
            "end": iso_utc(self.end),
            "seed": self.seed,
            "rate": self.rate,
            "cluster": self.cluster,
            "events": self.events,
            "scenarios": self.scenarios,
            "files": [str(path) for path in self.files],
            "bytes_written": self.bytes_written,
            "seconds": round(self.seconds, 3),
            "events_per_second": round(self.events / self.seconds) if self.seconds else None,
        }


def _gzip_writer(path: Path) -> gzip.GzipFile:
    """A reproducible gzip stream into a new file (see :func:`formats.gzip_stream`)."""
    return formats.gzip_stream(path.open("wb"))


def _close_gzip(stream: gzip.GzipFile) -> None:
    raw = stream.fileobj
    stream.close()
    if raw is not None:
        raw.close()


def _event_id(ts_ms: int, rnd: random.Random) -> str:
    """A CloudWatch-Logs-like 56-digit event id (time-ordered prefix, random tail)."""
    return f"{ts_ms:013d}{rnd.getrandbits(142) % 10**43:043d}"


class _Writer:
    files: list[Path]

    def add(self, batch: EventBatch, lines: list[bytes] | None, ids: list[str]) -> None:
        """Take one hour of events; ``lines`` are their JSON texts (None: ndjson-only run)."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class _NdjsonWriter(_Writer):
    """``audit.log``: what ``--audit-log-path`` produces on a self-managed API server."""

    def __init__(self, out: Path, gz: bool) -> None:
        path = out / ("audit.log.gz" if gz else "audit.log")
        self.gz = _gzip_writer(path) if gz else None
        # Many small writes into a large buffer: serializing and writing event by event is
        # about 3x faster than building a list of lines and joining it (allocator churn).
        self.fh: BinaryIO = io.BufferedWriter(self.gz or path.open("wb"), 1 << 20)  # type: ignore[arg-type]
        self.files = [path]

    def add(self, batch: EventBatch, lines: list[bytes] | None, ids: list[str]) -> None:
        write = self.fh.write
        if lines is None:
            dumps, nl = orjson.dumps, orjson.OPT_APPEND_NEWLINE
            for e in batch.events:
                write(dumps(e, option=nl))
        else:
            for line in lines:
                write(line)
                write(formats.NDJSON_LINE_END)

    def close(self) -> None:
        self.fh.close()  # closes the gzip stream (writing its trailer) or the file
        if self.gz is not None and self.gz.fileobj is not None:
            self.gz.fileobj.close()


class _CloudWatchWriter(_Writer):
    """Pages of ``aws logs filter-log-events --interleaved`` output, 10,000 events each
    (``page-0001.json`` ...; ``.json.gz`` when ``gz``: same JSON, gzip-compressed)."""

    PAGE = formats.MAX_PAGE_EVENTS

    def __init__(self, out: Path, streams: list[str], seed: int, gz: bool) -> None:
        self.dir = out / "cloudwatch"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.streams = streams
        self.gz = gz
        self.page: list[bytes] = []
        self.files = []
        self.rnd = random.Random(f"cloudwatch:{seed}")

    def add(self, batch: EventBatch, lines: list[bytes] | None, ids: list[str]) -> None:
        assert lines is not None
        dumps, event = orjson.dumps, formats.cloudwatch_event
        for line, ts_us, stream, event_id in zip(
            lines, batch.times_us, batch.streams, ids, strict=True
        ):
            if len(self.page) >= self.PAGE:
                self._flush(last=False)
            ms = ts_us // 1000
            # CloudWatch ingests an event 0.6 to 4.6 s after the API server logged it.
            ingested = ms + 600 + self.rnd.randrange(4000)
            self.page.append(
                dumps(event(self.streams[stream], ms, line.decode(), ingested, event_id))
            )

    def _flush(self, last: bool) -> None:
        number = len(self.files) + 1
        path = self.dir / (f"page-{number:04d}.json" + (".gz" if self.gz else ""))
        token = None if last else f"Bf{number:06d}{'A' * 48}"
        doc = formats.cloudwatch_page(self.page, self.streams, token)
        path.write_bytes(formats.gzip_bytes(doc) if self.gz else doc)
        self.files.append(path)
        self.page = []

    def close(self) -> None:
        self._flush(last=True)  # the last page carries no nextToken (may be empty)


class _ExportWriter(_Writer):
    """CloudWatch Logs export-task objects: ``export/<task>/<stream>/000000.gz`` ..., each
    line ``<ISO-8601 ms timestamp> <message>``, sorted by time within a stream."""

    CHUNK = 10_000

    def __init__(self, out: Path, streams: list[str], task: str) -> None:
        self.dir = out / "export" / task
        self.streams = streams
        self.open: dict[int, tuple[gzip.GzipFile, int, int]] = {}  # stream -> (fh, lines, part)
        self.files = []

    def add(self, batch: EventBatch, lines: list[bytes] | None, ids: list[str]) -> None:
        assert lines is not None
        for line, ts, s in zip(lines, batch.times_us, batch.streams, strict=True):
            fh, lines_written, part = self.open.get(s, (None, 0, 0))
            if fh is None or lines_written >= self.CHUNK:
                if fh is not None:
                    _close_gzip(fh)
                    part += 1
                d = self.dir / self.streams[s]
                d.mkdir(parents=True, exist_ok=True)
                path = d / formats.export_object_name(part)
                self.files.append(path)
                fh, lines_written = _gzip_writer(path), 0
            fh.write(formats.export_line(ts // 1000, line))
            self.open[s] = (fh, lines_written + 1, part)

    def close(self) -> None:
        for fh, _, _ in self.open.values():
            _close_gzip(fh)


class _FirehoseWriter(_Writer):
    """CloudWatch Logs subscription records as Firehose delivers them to S3.

    Each S3 object covers a 300 s buffer and is the concatenation of the records'
    gzip members (CloudWatch gzips every record; Firehose concatenates them as-is), so
    decompressing gives JSON objects back to back with no newline between them. The very
    first object starts with the CONTROL_MESSAGE CloudWatch sends when the subscription is
    created.
    """

    BUFFER_US = 300 * US
    RECORD = 250  # log events per DATA_MESSAGE record at most

    def __init__(self, out: Path, streams: list[str], cluster: str, seed: int) -> None:
        self.out = out / "firehose"
        self.streams = streams
        self.cluster = cluster
        self.rnd = random.Random(f"firehose:{seed}")
        self.window: int | None = None
        self.pending: list[tuple[int, int, bytes, str]] = []  # (ts_us, stream, line, id)
        self.files = []
        self.first = True

    def add(self, batch: EventBatch, lines: list[bytes] | None, ids: list[str]) -> None:
        assert lines is not None
        for line, ts, s, eid in zip(lines, batch.times_us, batch.streams, ids, strict=True):
            window = ts // self.BUFFER_US
            if self.window is not None and window != self.window:
                self._flush()
            self.window = window
            self.pending.append((ts, s, line, eid))

    def _record(self, stream: int, items: list[tuple[int, int, bytes, str]]) -> dict[str, Any]:
        return formats.subscription_record(
            ACCOUNT_ID,
            formats.eks_log_group(self.cluster),
            self.streams[stream],
            [f"eks-audit-{self.cluster}-to-firehose"],
            ((event_id, ts_us // 1000, line.decode()) for ts_us, _, line, event_id in items),
        )

    def _flush(self) -> None:
        if not self.pending:
            return
        first_ts = self.pending[0][0]
        records: list[dict[str, Any]] = []
        if self.first:
            records.append(formats.control_record(first_ts // 1000))
            self.first = False
        by_stream: dict[int, list[tuple[int, int, bytes, str]]] = {}
        for item in self.pending:
            by_stream.setdefault(item[1], []).append(item)
        chunks = []
        for s, items in by_stream.items():
            for i in range(0, len(items), self.RECORD):
                chunks.append((items[i][0], s, items[i : i + self.RECORD]))
        chunks.sort(key=lambda chunk: (chunk[0], chunk[1]))
        records.extend(self._record(stream, items) for _, stream, items in chunks)
        arrival = first_ts + self.BUFFER_US
        tm = time.gmtime(arrival // US)
        d = self.out / time.strftime("%Y/%m/%d/%H", tm)
        d.mkdir(parents=True, exist_ok=True)
        uid = "".join(self.rnd.choices(HEX_DIGITS, k=32))
        uid = f"{uid[:8]}-{uid[8:12]}-{uid[12:16]}-{uid[16:20]}-{uid[20:]}"
        stamp = time.strftime("%Y-%m-%d-%H-%M-%S", tm)
        path = d / f"eks-audit-{self.cluster}-1-{stamp}-{uid}.gz"
        path.write_bytes(formats.firehose_object(records))
        self.files.append(path)
        self.pending = []

    def close(self) -> None:
        self._flush()


def write_simulation(
    out_dir: Path,
    *,
    days: float = 2,
    rate: float = 2.0,
    seed: int = 0,
    end: datetime | None = None,
    cluster: str = "demo",
    formats: Iterable[str] = ("ndjson",),
    gzip: bool = False,
    scenarios: Iterable[str] | None = None,
) -> SimulationSummary:
    """Simulate ``days`` ending at ``end`` (default: now, to the minute) and write it.

    Always writes ``out_dir/labels.json``. Per format:

    * ``ndjson``: ``audit.log`` (``audit.log.gz`` with ``gzip=True``), one Event per line;
    * ``cloudwatch-json``: ``cloudwatch/page-0001.json`` ..., ``filter-log-events`` pages
      (``.json.gz`` with ``gzip=True``, to keep checked-in samples small);
    * ``export-gz``: ``export/<task-id>/<log stream>/000000.gz`` ..., export-task objects;
    * ``firehose``: ``firehose/YYYY/MM/DD/HH/<delivery stream>-1-<time>-<uuid>.gz``.

    All formats carry the same events; the same arguments give the same bytes.
    """
    fmts = list(dict.fromkeys(formats))
    bad = [x for x in fmts if x not in FORMATS]
    if bad:
        raise ValueError(f"unknown formats {bad}; known: {list(FORMATS)}")
    if days <= 0:
        raise ValueError(f"days must be positive, got {days}")
    began = time.perf_counter()
    end = default_end() if end is None else end.astimezone(UTC)
    start = end - timedelta(days=days)
    sim = simulate(start=start, end=end, rate=rate, seed=seed, cluster=cluster, scenarios=scenarios)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    labels_path = out / "labels.json"
    labels_path.write_bytes(orjson.dumps(sim.labels_document(), option=orjson.OPT_INDENT_2) + b"\n")
    writers: list[_Writer] = []
    for fmt in fmts:
        if fmt == "ndjson":
            writers.append(_NdjsonWriter(out, gzip))
        elif fmt == "cloudwatch-json":
            writers.append(_CloudWatchWriter(out, sim.log_streams, sim.seed, gzip))
        elif fmt == "export-gz":
            task = EventFactory(
                sim.world, np.random.default_rng(0), random.Random(f"export:{seed}")
            ).uuid()
            writers.append(_ExportWriter(out, sim.log_streams, task))
        else:
            writers.append(_FirehoseWriter(out, sim.log_streams, cluster, sim.seed))
    others = any(not isinstance(writer, _NdjsonWriter) for writer in writers)
    id_rnd = random.Random(f"eventid:{seed}")
    count = 0
    try:
        for batch in sim.iter_batches():
            # CloudWatch-shaped formats embed each line and need CloudWatch event ids; the
            # plain audit.log path serializes straight into its buffer instead.
            lines = batch.lines() if others else None
            ids = [_event_id(ts // 1000, id_rnd) for ts in batch.times_us] if others else []
            for writer in writers:
                writer.add(batch, lines, ids)
            count += len(batch.events)
    finally:
        for writer in writers:
            writer.close()
    files = [labels_path] + [path for writer in writers for path in writer.files]
    return SimulationSummary(
        out_dir=out,
        start=sim.start,
        end=sim.end,
        seed=sim.seed,
        rate=sim.rate,
        cluster=cluster,
        events=count,
        scenarios=len(sim.labels),
        files=tuple(files),
        bytes_written=sum(path.stat().st_size for path in files),
        seconds=time.perf_counter() - began,
    )
