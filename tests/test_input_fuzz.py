"""Property-based: any mix of valid events and garbage, in every input format.

For each format a reader accepts (NDJSON audit log plain and gzip, ``aws logs
filter-log-events`` pages, CloudWatch export-task objects, Firehose objects), Hypothesis
builds inputs that interleave valid audit events with hostile lines and checks what a
user relies on: the run never aborts, every valid event lands in the lake exactly once,
and every other line is in the quarantine, once, with a reason.

Derandomized (the examples are the same on every run) and small, so the suite stays fast.
Blank lines in a line-oriented file are not counted: they carry nothing to keep.
"""

from __future__ import annotations

import gzip
import json
import tempfile
from pathlib import Path

import orjson
import pyarrow as pa
from factories import cloudwatch_page, export_task_object, firehose_object, make_event
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detector.events.normalize import normalize_lines
from detector.lake.events import Lake
from detector.pipeline.ingest import EventBuffer, ingest_paths
from detector.sources.cloudwatch import page_batch
from detector.sources.files import BOM

FUZZ = settings(
    max_examples=30,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

#: Lines that broke or hung a run before (issue 10), next to generated ones.
KNOWN_HOSTILE = [
    "x^2 + y^2",
    "\x1f\x8b not really gzip",
    "(\xb5/\xfd zstd?",
    "\ufeff{",
    "[" * 5000 + "]" * 5000,
    '{"requestObject": ' + "[" * 3000 + "]" * 3000 + "}",
    "[1, 2]",
    '"a string"',
    "123",
    "null",
    '{"kind": "Event", "auditID":',
    '{"kind": "Event", "stage": "ResponseComplete"}',
    '{"auditID": "no-time", "stage": "ResponseComplete"}',
    '{"auditID": "x", "stage": "ResponseComplete", "stageTimestamp": "yesterday"}',
    '{"auditID": "x", "stage": "ResponseComplete", "stageTimestamp": 5}',
]


def _not_blank(text: str) -> bool:
    return bool(text.encode("utf-8", "surrogatepass").strip())


garbage_text = st.one_of(
    st.sampled_from(KNOWN_HOSTILE),
    st.text(min_size=1, max_size=60).filter(_not_blank),
    st.builds(
        lambda cut, i: orjson.dumps(make_event(10_000 + i)).decode()[:cut],
        st.integers(1, 400),
        st.integers(0, 99),
    ),
)
#: For line formats a garbage line cannot hold a newline (it would be two lines).
garbage_line = st.one_of(
    garbage_text.map(lambda t: t.replace("\n", " ").replace("\r", " ")).filter(_not_blank),
    st.binary(min_size=1, max_size=60)
    .map(lambda b: b.replace(b"\n", b" "))
    .filter(lambda b: bool(b.strip())),
)
#: A valid event, with free text where an API server copies what clients send.
valid = st.builds(
    lambda agent, verb: {"userAgent": agent, "verb": verb},
    st.text(max_size=30),
    st.sampled_from(["get", "list", "watch", "create", "patch", "delete"]),
)


def mix(garbage: st.SearchStrategy) -> st.SearchStrategy:
    """Lists of ("ok", overrides) / ("bad", line): at least one of each, in any order."""
    item = st.one_of(st.tuples(st.just("ok"), valid), st.tuples(st.just("bad"), garbage))
    return st.lists(item, min_size=1, max_size=25)


def _events(items: list) -> tuple[list, list[str]]:
    """Materialize: the messages in order, and the auditIDs expected in the lake."""
    out, ids = [], []
    for n, (kind, value) in enumerate(items):
        if kind == "ok":
            ev = make_event(n, **value)
            out.append(ev)
            ids.append(ev["auditID"])
        else:
            out.append(value)
    return out, sorted(ids)


def _ingest(data: bytes, name: str, expected_ids: list[str], bad: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, name)
        path.write_bytes(data)
        lake = str(Path(tmp, "lake"))
        summary = ingest_paths(
            [str(path)], lake, cluster="fuzz"
        )  # must not raise, whatever the input
        assert summary.failed_inputs == []
        got = Lake(lake).scan_events().collect() if expected_ids else None
        assert (sorted(got["audit_id"]) if got is not None else []) == expected_ids
        assert summary.events_written == len(expected_ids)
        quarantine = Lake(lake).scan_quarantine().collect()
        assert quarantine.height == bad == summary.quarantined
        assert quarantine["source_position"].n_unique() == bad
        assert all(reason.strip() for reason in quarantine["reason"])


def _line(message) -> bytes:
    if isinstance(message, dict):
        return orjson.dumps(message)
    return message if isinstance(message, bytes) else message.encode("utf-8", "surrogatepass")


@FUZZ
@given(items=mix(garbage_line), gz=st.booleans(), bom=st.booleans())
def test_ndjson_audit_log(items, gz, bom):
    messages, ids = _events(items)
    data = b"".join(_line(m) + b"\n" for m in messages)
    data = (BOM if bom else b"") + data
    _ingest(gzip.compress(data) if gz else data, "audit.log", ids, len(items) - len(ids))


@FUZZ
@given(items=mix(garbage_line.filter(lambda b: isinstance(b, str))))
def test_cloudwatch_export_task_object(items):
    messages, ids = _events(items)
    _ingest(export_task_object(messages), "000000.gz", ids, len(items) - len(ids))


@FUZZ
@given(items=mix(garbage_text), pages=st.integers(1, 3), indent=st.sampled_from([None, 2]))
def test_filter_log_events_pages(items, pages, indent):
    messages, ids = _events(items)
    texts = [orjson.dumps(m).decode() if isinstance(m, dict) else m for m in messages]
    size = -(-len(texts) // pages)
    body = "\n".join(
        json.dumps(cloudwatch_page(texts[k : k + size], t0=1795000000000 + k), indent=indent)
        for k in range(0, len(texts), size)
    )
    _ingest(body.encode(), "page.json", ids, len(items) - len(ids))


@FUZZ
@given(items=mix(garbage_text), per_record=st.integers(1, 5))
def test_firehose_object(items, per_record):
    messages, ids = _events(items)
    _ingest(firehose_object(messages, per_record=per_record), "fh.gz", ids, len(items) - len(ids))


@FUZZ
@given(
    lines=st.lists(st.one_of(garbage_line, valid.map(lambda v: make_event(0, **v))), max_size=30)
)
def test_the_normalizer_accounts_for_every_line(lines):
    raw = [_line(x) for x in lines]
    result = normalize_lines(
        pa.array(raw, pa.binary()),
        positions=pa.array([str(i) for i in range(len(raw))]),
        source="fuzz",
        cluster="fuzz",
    )
    assert result.events.height + result.quarantine.height == len(raw)
    assert result.quarantine["reason"].str.len_chars().min() or not result.quarantine.height


@FUZZ
@given(items=mix(garbage_text | st.sampled_from(["", "  ", "\n"])))
def test_cloudwatch_pages_as_the_exporter_reads_them(items):
    # What `detect export` does with each FilterLogEvents page, without the network: the
    # page's events become one batch; nothing in a message can stop the export.
    messages, ids = _events(items)
    page = [
        {
            "eventId": f"e{i}",
            "logStreamName": "kube-apiserver-audit-1",
            "timestamp": 1795000000000 + i,
            "message": orjson.dumps(m).decode() if isinstance(m, dict) else m,
        }
        for i, m in enumerate(messages)
    ]
    buffer = EventBuffer(cluster="fuzz")
    buffer.add(page_batch(page, region="us-east-1", log_group="/aws/eks/f/cluster", cluster="f"))
    events, quarantine = buffer.take()
    assert sorted(events["audit_id"]) == ids
    assert quarantine.height == len(items) - len(ids)
    assert quarantine["source_position"].n_unique() == quarantine.height
    assert all(reason.strip() for reason in quarantine["reason"])


@FUZZ
@given(
    lines=st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")), max_size=30),
    last_newline=st.booleans(),
    batch=st.integers(min_value=1, max_value=64),
)
def test_blocks_cover_the_input_exactly_with_their_line_numbers(lines, last_newline, batch):
    """The reader's blocks (one buffer each, numpy scans) hold every byte once, in order,
    cut only after a newline, numbered from the first line of each; and the lines the
    normalizer gets are the input's lines."""
    import io

    from detector.sources.files import _split_lines, iter_line_blocks

    data = b"\n".join(lines) + (b"\n" if last_newline and lines else b"")
    seen, expected_line = b"", 1
    got_lines: list[bytes] = []
    for block, first, oversize, offsets in iter_line_blocks(io.BytesIO(data), batch_bytes=batch):
        assert not oversize
        block = bytes(block)
        assert first == expected_line
        assert block.endswith(b"\n") or seen + block == data  # only the very end lacks one
        got_lines += [x.rstrip(b"\n") for x in _split_lines(block, offsets).to_pylist()]
        seen += block
        expected_line += block.count(b"\n")
    assert seen == data
    expected = data.split(b"\n") if data else []
    if data.endswith(b"\n"):
        expected = expected[:-1]
    assert got_lines == expected
