"""`detect athena-ddl`: CREATE EXTERNAL TABLE statements so Athena can query the lake."""

from __future__ import annotations

from typing import Annotated

import typer

from detector.cli.options import LakeOpt, cluster_names
from detector.lake.athena import ddl

#: Not ``ClusterOpt``: that one reads ``DETECT_CLUSTER`` and detect.toml's shared
#: ``cluster``, which made the DDL list one cluster as the partition's only value, and
#: Athena then returned no rows of any other, without an error (found by review).
PartitionClusters = Annotated[
    str | None,
    typer.Option(
        "--cluster",
        parser=cluster_names,
        help=(
            "Clusters to list as the cluster partition's values, comma-separated. Default: "
            "any cluster (the value is taken from the path). Only from the command line."
        ),
    ),
]


def athena_ddl(
    lake: LakeOpt = "./lake",
    database: Annotated[
        str, typer.Option("--database", help="Athena (Glue) database to create the tables in.")
    ] = "audit",
    prefix: Annotated[
        str, typer.Option("--table-prefix", help="Prefix of the table names, e.g. eks_.")
    ] = "",
    cluster: PartitionClusters = None,
    first_date: Annotated[
        str | None,
        typer.Option(
            "--first-date",
            help="Earliest date partition (YYYY-MM-DD). Default: two years back.",
            show_default=False,
        ),
    ] = None,
    table: Annotated[
        list[str] | None,
        typer.Option(
            "--table",
            help=(
                "Only this table (events, findings, findings_events, quarantine, incidents, "
                "finding_status)."
            ),
        ),
    ] = None,
) -> None:
    """Print CREATE EXTERNAL TABLE statements for Athena, with partition projection.

    One statement per lake table (events, findings, findings_events, quarantine,
    incidents, finding_status), columns and types taken from the schema the Parquet files
    are written with. Partition projection means no crawler and no MSCK REPAIR: new hours
    are queryable at once. Run the statements in the Athena console or with `aws athena
    start-query-execution`. An incident moved to an earlier first day can show under both
    days for a moment: take the row of the highest version.

    Exit codes: 0 printed, 2 the lake is not on S3 or a bad argument.

    Example:

    \b
        detect athena-ddl --lake s3://audit-lake/prod --cluster prod,staging > tables.sql
    """
    clusters = [c.strip() for c in cluster.split(",") if c.strip()] if cluster else None
    typer.echo(
        ddl(
            lake,
            database=database,
            prefix=prefix,
            clusters=clusters,
            first_date=first_date,
            only=table or None,
        ),
        nl=False,
    )


def register(app: typer.Typer) -> None:
    """Add ``detect athena-ddl`` to the app."""
    app.command("athena-ddl")(athena_ddl)
