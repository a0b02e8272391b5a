"""Athena DDL for the lake: CREATE EXTERNAL TABLE statements with partition projection.

Columns come from the Arrow schemas the lake is written with (:mod:`detector.events.schema`,
:mod:`detector.lake.findings_schema`), never from a hand-kept list, so the tables match the
Parquet files exactly. Partitions use partition projection (no crawler, no
``MSCK REPAIR``): ``cluster`` injected (or an enum of the clusters given), ``date`` a date
range, ``hour`` 00..23. Arguments are checked here (:class:`AthenaArgumentError`, exit 2),
so any caller gets the same checks as ``detect athena-ddl``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime

import polars as pl
import pyarrow as pa

from detector.errors import UsageError
from detector.events.schema import QUARANTINE_COLUMNS, events_arrow_schema
from detector.lake.findings_schema import FINDINGS_COLUMNS, FINDINGS_EVENTS_COLUMNS
from detector.lake.incidents import INCIDENT_COLUMNS, INCIDENTS_DIR, STATUS_COLUMNS, STATUS_DIR
from detector.storage import is_s3


class AthenaArgumentError(UsageError):
    """A lake, name or date that Athena DDL cannot be made for; the message names it."""


_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")


def athena_type(t: pa.DataType) -> str:
    """The Athena (Hive DDL) type that reads a Parquet column of Arrow type ``t``."""
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "string"
    if pa.types.is_boolean(t):
        return "boolean"
    if pa.types.is_int8(t):
        return "tinyint"
    if pa.types.is_int16(t):
        return "smallint"
    if pa.types.is_int32(t):
        return "int"
    if pa.types.is_int64(t):
        return "bigint"
    if pa.types.is_float32(t):
        return "float"
    if pa.types.is_float64(t):
        return "double"
    if pa.types.is_timestamp(t):
        return "timestamp"
    if pa.types.is_date32(t):
        return "date"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return "binary"
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return f"array<{athena_type(t.value_type)}>"
    if pa.types.is_struct(t):
        fields = ",".join(f"{f.name}:{athena_type(f.type)}" for f in t)
        return f"struct<{fields}>"
    raise ValueError(f"no Athena type for Arrow type {t}")


def arrow_schema(columns: dict[str, pl.DataType]) -> pa.Schema:
    """The Arrow schema polars writes for these columns."""
    return pl.DataFrame(schema=columns).to_arrow().schema


@dataclass(frozen=True)
class Table:
    name: str  # table name without prefix
    directory: str  # folder under the lake root
    schema: pa.Schema  # columns inside the Parquet files
    partitions: tuple[str, ...]  # partition keys, in path order
    comment: str


def tables() -> list[Table]:
    """The lake's tables, with the columns their Parquet files hold."""
    return [
        Table(
            "events",
            "events",
            events_arrow_schema(),
            ("cluster", "date", "hour"),
            "Kubernetes audit events, one row per event and stage (docs/schema.md)",
        ),
        Table(
            "findings",
            "findings",
            arrow_schema(FINDINGS_COLUMNS),
            ("date",),
            "Findings of detect score, one row per finding",
        ),
        Table(
            "findings_events",
            "findings_events",
            arrow_schema(FINDINGS_EVENTS_COLUMNS),
            ("date",),
            "The events behind each finding, with its finding_id",
        ),
        Table(
            "quarantine",
            "quarantine",
            arrow_schema(QUARANTINE_COLUMNS),
            ("date",),
            "Input lines that could not become events, with the reason",
        ),
        Table(
            "incidents",
            INCIDENTS_DIR,
            arrow_schema(INCIDENT_COLUMNS),
            ("date",),
            "Incidents by first_seen date; a row per incident, the highest version when two",
        ),
        Table(
            "finding_status",
            STATUS_DIR,
            arrow_schema(STATUS_COLUMNS),
            ("date",),
            "Each finding's incident and workflow status (acknowledged, suppressed...)",
        ),
    ]


def _q(name: str) -> str:
    return f"`{name}`"


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def create_table(
    table: Table,
    *,
    lake: str,
    database: str,
    prefix: str = "",
    clusters: list[str] | None = None,
    first_date: str | None = None,
) -> str:
    """One ``CREATE EXTERNAL TABLE`` statement with partition projection."""
    root = lake.rstrip("/")
    location = f"{root}/{table.directory}/"
    cols = ",\n".join(f"  {_q(f.name)} {athena_type(f.type)}" for f in table.schema)
    parts = ", ".join(f"{_q(p)} string" for p in table.partitions)
    template = location + "/".join(f"{p}=${{{p}}}" for p in table.partitions) + "/"
    props: list[tuple[str, str]] = [("projection.enabled", "true")]
    for p in table.partitions:
        if p == "cluster":
            if clusters:
                props += [("projection.cluster.type", "enum")]
                props += [("projection.cluster.values", ",".join(clusters))]
            else:
                props += [("projection.cluster.type", "injected")]
        elif p == "date":
            start = first_date or "NOW-2YEARS"
            props += [
                ("projection.date.type", "date"),
                ("projection.date.format", "yyyy-MM-dd"),
                ("projection.date.range", f"{start},NOW+1DAYS"),
                ("projection.date.interval", "1"),
                ("projection.date.interval.unit", "DAYS"),
            ]
        elif p == "hour":
            props += [
                ("projection.hour.type", "integer"),
                ("projection.hour.range", "0,23"),
                ("projection.hour.digits", "2"),
            ]
    props += [("storage.location.template", template), ("parquet.compression", "ZSTD")]
    tblprops = ",\n".join(f"  {_lit(k)} = {_lit(v)}" for k, v in props)
    return (
        f"CREATE EXTERNAL TABLE IF NOT EXISTS {_q(database)}.{_q(prefix + table.name)} (\n"
        f"{cols}\n)\n"
        f"COMMENT {_lit(table.comment)}\n"
        f"PARTITIONED BY ({parts})\n"
        f"STORED AS PARQUET\n"
        f"LOCATION {_lit(location)}\n"
        f"TBLPROPERTIES (\n{tblprops}\n);\n"
    )


def ddl(
    lake: str,
    *,
    database: str = "audit",
    prefix: str = "",
    clusters: list[str] | None = None,
    first_date: str | None = None,
    only: list[str] | None = None,
) -> str:
    """CREATE DATABASE plus one CREATE EXTERNAL TABLE per lake table, as one script."""
    lake = check_arguments(
        lake,
        database=database,
        prefix=prefix,
        clusters=clusters,
        first_date=first_date,
        only=only,
    )
    out = [f"CREATE DATABASE IF NOT EXISTS {_q(database)};\n"]
    for table in tables():
        if only and table.name not in only:
            continue
        out.append(
            create_table(
                table,
                lake=lake,
                database=database,
                prefix=prefix,
                clusters=clusters,
                first_date=first_date,
            )
        )
    return "\n".join(out)


def check_arguments(
    lake: str,
    *,
    database: str,
    prefix: str,
    clusters: list[str] | None,
    first_date: str | None,
    only: list[str] | None,
) -> str:
    """The lake as Athena names it (``s3://``); :class:`AthenaArgumentError` otherwise."""
    if not is_s3(lake):
        raise AthenaArgumentError(
            f"Athena reads S3 only: pass --lake s3://bucket/prefix (not {lake!r})"
        )
    for name, value in (("--database", database), ("--table-prefix", prefix or "x")):
        if not _IDENT.match(value):
            raise AthenaArgumentError(f"{name} {value!r}: use letters, digits and _ only")
    for c in clusters or []:
        if "," in c or "/" in c or "'" in c:
            raise AthenaArgumentError(f"--cluster {c!r}: not a valid cluster name")
    if first_date is not None:
        try:
            first = date.fromisoformat(first_date)
        except ValueError:
            raise AthenaArgumentError(f"--first-date {first_date!r}: use YYYY-MM-DD") from None
        # the projection runs from it to NOW+1DAYS: a later start projects no partition
        today = datetime.now(UTC).date()
        if not date(1970, 1, 1) <= first <= today:
            raise AthenaArgumentError(
                f"--first-date {first_date}: must be from 1970-01-01 to today ({today})"
            )
    known = [t.name for t in tables()]
    for name in only or []:
        if name not in known:
            raise AthenaArgumentError(f"--table {name!r}: one of {', '.join(known)}")
    return "s3://" + lake.split("://", 1)[1]  # s3a:// -> s3://
