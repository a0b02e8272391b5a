"""`detect lake check`: list the lake files that readers skip, and why."""

from __future__ import annotations

from typing import Annotated

import typer

from detector.cli.options import (
    EXIT_FINDINGS,
    FormatOpt,
    LakeOpt,
    OutputFormat,
    emit_json,
    stdout,
)
from detector.lake.events import Lake
from detector.lake.maintenance import check_lake

lake_app = typer.Typer(
    name="lake",
    help=(
        "Look after the lake: find unreadable files (see also `detect compact`).\n\n"
        "Example:\n\n"
        "\b\n"
        "    detect lake check --lake ./lake\n"
        "    detect lake check --help"
    ),
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@lake_app.command("check")
def check(
    lake: LakeOpt = "./lake",
    quick: Annotated[
        bool,
        typer.Option(
            "--quick", help="Check footers and column types only (what readers check), not data."
        ),
    ] = False,
    output: FormatOpt = OutputFormat.table,
) -> None:
    """List every lake file that readers skip (unreadable, wrong column types) or ignore.

    `score`, `train`, `ingest` and the other commands skip such files with a warning rather
    than fail; this command lists them so they can be moved aside or rewritten. Tables
    checked: events, quarantine, findings, findings_events, incidents, finding_status.

    Exit codes: 0 no problem found, 1 problem files listed, 2 bad arguments or missing
    bucket, 3 the lake could not be read.

    Example:

    \b
        detect lake check --lake ./lake
        detect lake check --lake s3://audit-lake/prod --quick --format json
    """
    report = check_lake(Lake(lake).require_existing(), deep=not quick)
    if output == OutputFormat.json:
        emit_json(report.to_dict())
    else:
        stdout.print(
            f"checked {report.files:,} files in {report.lake}: {len(report.problems)} problem(s)",
            markup=False,
        )
        for p in report.problems:
            stdout.print(f"  {p.table}: {p.path}: {p.problem}", markup=False)
    if report.problems:
        raise typer.Exit(EXIT_FINDINGS)


def register(app: typer.Typer) -> None:
    """Add `detect lake ...` to the app."""
    app.add_typer(lake_app, name="lake")
