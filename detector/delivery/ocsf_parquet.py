"""The one Arrow schema of the OCSF Detection Findings written to Security Lake as Parquet.

Inferred from each batch, the schema changed from file to file under one ``eventDay``:
a batch without ATT&CK tactics had no ``finding_info.attacks`` column, one without a
region no ``resources.region``, and a field null in every record of a batch was typed
``null`` (found by review). Glue crawlers and Athena read a custom source's files with one
table schema, so every file is written with this one. Integers are 64-bit, as inference
wrote them before; ``unmapped`` and each evidence's ``data`` are free-form maps, stored as
JSON text.

:func:`detector.delivery.payloads.ocsf` builds the records: a member it adds must be added
here (a test holds a record with every optional member to a lossless round trip).
"""

from __future__ import annotations

import pyarrow as pa

_TEXT = pa.string()
_INT = pa.int64()
_UID_NAME = pa.struct([("uid", _TEXT), ("name", _TEXT)])

OCSF_PARQUET_SCHEMA = pa.schema(
    [
        ("activity_id", _INT),
        ("activity_name", _TEXT),
        ("category_uid", _INT),
        ("category_name", _TEXT),
        ("class_uid", _INT),
        ("class_name", _TEXT),
        ("type_uid", _INT),
        ("type_name", _TEXT),
        ("time", _INT),
        ("start_time", _INT),
        ("end_time", _INT),
        ("count", _INT),
        ("severity_id", _INT),
        ("severity", _TEXT),
        ("status_id", _INT),
        ("status", _TEXT),
        ("message", _TEXT),
        (
            "metadata",
            pa.struct(
                [
                    ("version", _TEXT),
                    ("uid", _TEXT),
                    ("correlation_uid", _TEXT),
                    (
                        "product",
                        pa.struct([("name", _TEXT), ("vendor_name", _TEXT), ("version", _TEXT)]),
                    ),
                    ("labels", pa.list_(_TEXT)),
                ]
            ),
        ),
        (
            "finding_info",
            pa.struct(
                [
                    ("uid", _TEXT),
                    ("title", _TEXT),
                    ("desc", _TEXT),
                    ("created_time", _INT),
                    ("modified_time", _INT),
                    ("first_seen_time", _INT),
                    ("last_seen_time", _INT),
                    ("types", pa.list_(_TEXT)),
                    ("data_sources", pa.list_(_TEXT)),
                    (
                        "attacks",
                        pa.list_(
                            pa.struct(
                                [
                                    ("tactic", pa.struct([("name", _TEXT)])),
                                    ("technique", _UID_NAME),
                                    ("sub_technique", _UID_NAME),
                                ]
                            )
                        ),
                    ),
                ]
            ),
        ),
        (
            "resources",
            pa.list_(
                pa.struct([("type", _TEXT), ("uid", _TEXT), ("name", _TEXT), ("region", _TEXT)])
            ),
        ),
        ("evidences", pa.list_(pa.struct([("name", _TEXT), ("data", _TEXT)]))),
        ("unmapped", _TEXT),
        (
            "cloud",
            pa.struct(
                [
                    ("provider", _TEXT),
                    ("region", _TEXT),
                    (
                        "account",
                        pa.struct(
                            [("uid", _TEXT), ("type_id", _INT), ("type", _TEXT), ("name", _TEXT)]
                        ),
                    ),
                ]
            ),
        ),
    ]
)


def ocsf_table(records: list[dict]) -> pa.Table:
    """``records`` (with ``unmapped`` and evidence ``data`` already JSON text) as a table of
    :data:`OCSF_PARQUET_SCHEMA`."""
    return pa.Table.from_pylist(records, schema=OCSF_PARQUET_SCHEMA)
