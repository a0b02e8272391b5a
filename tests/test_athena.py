"""`detect athena-ddl`: the statements parse, and their columns are the Parquet files' own.

The DDL is parsed by sqlglot (Athena dialect, in a side venv: tests/venvs.py) and its
columns are compared with ``pyarrow.parquet.read_schema`` of files that the real commands
wrote (``detect ingest`` for events and quarantine, the findings store for findings), with
a type mapping written here independently of the one in the command.
"""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from detector.cli import app
from detector.lake.findings_schema import FINDINGS_COLUMNS, FINDINGS_EVENTS_COLUMNS
from tests.venvs import tools_venv, venv_python

DEMO_LOG = Path(__file__).parent / "data" / "external" / "audit2rbac" / "demo.log"

# Parse the script in the tools venv; print, per CREATE TABLE, what Athena would make of it.
PARSE = r"""
import json, sys
import sqlglot
from sqlglot import exp
out = []
for stmt in sqlglot.parse(sys.stdin.read(), read="athena"):
    assert isinstance(stmt, exp.Create), type(stmt)
    if stmt.kind != "TABLE":
        out.append({"kind": stmt.kind, "name": stmt.this.sql("athena")})
        continue
    props = {}
    partitions, location, external, fmt = [], None, False, None
    for p in stmt.args["properties"].expressions:
        if isinstance(p, exp.ExternalProperty):
            external = True
        elif isinstance(p, exp.PartitionedByProperty):
            partitions = [(c.name, c.args["kind"].sql("hive").lower()) for c in p.this.expressions]
        elif isinstance(p, exp.LocationProperty):
            location = p.this.name
        elif isinstance(p, exp.FileFormatProperty):
            fmt = p.this.name.upper()
        elif type(p) is exp.Property:
            props[p.name] = p.args["value"].name
    table = stmt.this.this
    out.append({
        "kind": "TABLE",
        "name": table.name,
        "db": table.db,
        "external": external,
        "format": fmt,
        "location": location,
        "partitions": partitions,
        "columns": [(c.name, c.args["kind"].sql("hive").lower()) for c in stmt.this.expressions],
        "props": props,
    })
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def sqlglot_python() -> Path:
    return venv_python(tools_venv())


def parse_ddl(python: Path, sql: str) -> list[dict]:
    proc = subprocess.run(
        [str(python), "-c", PARSE], input=sql, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def hive_type(t: pa.DataType) -> str:
    """Arrow type of a Parquet column -> the Hive type name sqlglot prints (lower case)."""
    simple = {
        pa.string(): "string",
        pa.large_string(): "string",
        pa.bool_(): "boolean",
        pa.int8(): "tinyint",
        pa.int16(): "smallint",
        pa.int32(): "int",
        pa.int64(): "bigint",
        pa.float64(): "double",
    }
    if t in simple:
        return simple[t]
    if pa.types.is_timestamp(t):
        return "timestamp"
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return f"array<{hive_type(t.value_type)}>"
    if pa.types.is_struct(t):
        return "struct<" + ", ".join(f"{f.name}: {hive_type(f.type)}" for f in t) + ">"
    raise AssertionError(f"unexpected Parquet type {t}")


def run_cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def written_lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A lake written by the real code: events + quarantine (ingest), findings (store),
    incidents and finding_status (the incident workflow)."""
    root = tmp_path_factory.mktemp("athena")
    lake = root / "lake"
    bad = root / "bad.log"
    bad.write_text(DEMO_LOG.read_text().splitlines()[0] + "\n{not json\n")
    code, out, err = run_cli(
        "ingest", str(DEMO_LOG), str(bad), "--lake", str(lake), "--cluster", "default"
    )
    assert code == 0, out + err
    from detector.lake.events import Lake
    from detector.lake.findings import write_range

    store = Lake(str(lake))
    events = store.scan_events().collect()
    assert events.height > 0
    start = events["event_time"].min().replace(minute=0, second=0, microsecond=0)
    end = start + timedelta(hours=1)
    row = {c: None for c in FINDINGS_COLUMNS}
    row |= {
        "finding_id": "f" * 20,
        "detector": "rule:test",
        "severity": "high",
        "severity_rank": 3,
        "score": 1.0,
        "threshold": 1.0,
        "cluster": "default",
        "principal": "someone",
        "window_start": start,
        "window_end": end,
        "title": "a test finding",
        "reasons": ["because"],
        "top_features": [{"name": "x", "value": 1.0, "baseline": 0.0, "population": 0.5}],
        "audit_ids": [events["audit_id"][0]],
        "created_at": datetime.now(UTC),
        "cold_start": False,
    }
    findings = pl.DataFrame([row], schema=FINDINGS_COLUMNS)
    flagged = events.head(1).with_columns(pl.lit("f" * 20).alias("finding_id"))
    write_range(store, "rules", start, end, findings, flagged.select(list(FINDINGS_EVENTS_COLUMNS)))
    from detector.incidents import workflow

    result = workflow.update(store, findings, flagged, now=end)  # incidents + finding_status
    assert result.incidents
    return lake


def test_ddl_parses_with_projection(sqlglot_python):
    code, sql, err = run_cli(
        "athena-ddl", "--lake", "s3://audit-lake/prod/", "--database", "sec", "--first-date",
        "2026-01-01",
    )  # fmt: skip
    assert code == 0, err
    stmts = parse_ddl(sqlglot_python, sql)
    assert stmts[0] == {"kind": "DATABASE", "name": "sec"} or stmts[0]["kind"] in {
        "SCHEMA",
        "DATABASE",
    }
    tables = {s["name"]: s for s in stmts[1:]}
    assert set(tables) == {
        "events",
        "findings",
        "findings_events",
        "quarantine",
        "incidents",
        "finding_status",
    }
    for name, t in tables.items():
        assert t["db"] == "sec"
        assert t["external"] and t["format"] == "PARQUET"
        assert t["location"] == f"s3://audit-lake/prod/{name}/"
        props = t["props"]
        assert props["projection.enabled"] == "true"
        keys = [p for p, _ in t["partitions"]]
        assert (
            props["storage.location.template"]
            == t["location"] + "/".join(f"{k}=${{{k}}}" for k in keys) + "/"
        )
        assert props["projection.date.type"] == "date"
        assert props["projection.date.format"] == "yyyy-MM-dd"
        assert props["projection.date.range"].startswith("2026-01-01,")
        assert all(ptype == "string" for _, ptype in t["partitions"])
        # Athena rejects a partition key that is also a column.
        assert not set(keys) & {c for c, _ in t["columns"]}
    events = tables["events"]
    assert [p for p, _ in events["partitions"]] == ["cluster", "date", "hour"]
    assert events["props"]["projection.cluster.type"] == "injected"
    assert events["props"]["projection.hour.type"] == "integer"
    assert events["props"]["projection.hour.range"] == "0,23"
    assert events["props"]["projection.hour.digits"] == "2"
    assert [p for p, _ in tables["findings"]["partitions"]] == ["date"]


def test_cluster_enum_projection(sqlglot_python):
    code, sql, err = run_cli(
        "athena-ddl", "--lake", "s3://b/l", "--cluster", "prod, staging", "--table", "events"
    )
    assert code == 0, err
    (_, events) = parse_ddl(sqlglot_python, sql)
    assert events["props"]["projection.cluster.type"] == "enum"
    assert events["props"]["projection.cluster.values"] == "prod,staging"


def test_a_cluster_set_for_other_commands_does_not_narrow_the_partition(
    sqlglot_python, tmp_path, monkeypatch
):
    """detect.toml's shared `cluster = "prod"` (or DETECT_CLUSTER) made the DDL's cluster
    projection an enum of that one cluster: Athena then returned no rows of any other
    cluster, without an error (found by review). Only --cluster narrows it."""
    config = tmp_path / "detect.toml"
    config.write_text('cluster = "prod"\n')
    monkeypatch.setenv("DETECT_CONFIG", str(config))
    monkeypatch.setenv("DETECT_CLUSTER", "staging")
    code, sql, err = run_cli("athena-ddl", "--lake", "s3://b/l", "--table", "events")
    assert code == 0, err
    (_, events) = parse_ddl(sqlglot_python, sql)
    assert events["props"]["projection.cluster.type"] == "injected"


def test_columns_equal_the_parquet_files(sqlglot_python, written_lake):
    code, sql, err = run_cli("athena-ddl", "--lake", "s3://bucket/lake")
    assert code == 0, err
    tables = {s["name"]: s for s in parse_ddl(sqlglot_python, sql) if s["kind"] == "TABLE"}
    for name, table in tables.items():
        files = sorted((written_lake / name).rglob("*.parquet"))
        assert files, f"the test lake has no {name} files"
        for f in files:
            schema = pq.read_schema(f)
            from_file = [[field.name, hive_type(field.type)] for field in schema]
            assert table["columns"] == from_file, f"{name}: DDL columns differ from {f.name}"
        # partition values in the paths are what the projection describes
        rel = files[0].relative_to(written_lake / name).parts[:-1]
        assert [p.split("=")[0] for p in rel] == [k for k, _ in table["partitions"]]
        if name == "events":
            _, date, hour = (p.split("=")[1] for p in rel)
            datetime.strptime(date, "%Y-%m-%d")
            assert len(hour) == 2 and 0 <= int(hour) <= 23


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lake", "./lake"], "Athena reads S3 only"),
        (["--lake", "s3://b/p", "--first-date", "2026-13-01"], "--first-date"),
        (["--lake", "s3://b/p", "--database", "my-db"], "--database"),
        (["--lake", "s3://b/p", "--table", "evnts"], "--table 'evnts'"),
    ],
)
def test_bad_arguments_exit_2(args, message):
    code, _out, err = run_cli("athena-ddl", *args)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1
