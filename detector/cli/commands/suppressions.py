"""`detect suppressions`: check a suppressions file and see what it would silence."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer

from detector.cli.options import (
    FormatOpt,
    OutputFormat,
    SinceOpt,
    emit_json,
    input_file,
    stdout,
)


def suppressions(
    path: Annotated[
        str, typer.Argument(parser=input_file, help="The suppressions YAML file.")
    ] = "suppressions.yaml",
    lake: Annotated[
        str | None,
        typer.Option(
            "--lake",
            envvar="DETECT_LAKE",
            help="Also count the findings in the lake each one matches.",
        ),
    ] = None,
    since: SinceOpt = "7d",  # type: ignore[assignment]
    output: FormatOpt = OutputFormat.table,
) -> None:
    """Check a suppressions file (exit 2 on the first problem) and list each suppression
    with its expiry and, given --lake, how many findings it matches.

    Suppressions are applied by `detect score` before delivery (--suppressions, default
    ./suppressions.yaml); suppressed findings stay in the lake with status suppressed.

    Exit codes: 0 every suppression is valid, 2 a problem in the file or bad
    arguments, 3 the lake could not be read.

    Example:

    \b
        detect suppressions suppressions.yaml --lake ./lake --since 30d
    """
    from detector.incidents import suppress

    now = datetime.now(UTC)
    sups = suppress.load(path)
    counts: dict[str, int] = {}
    if lake:
        from detector.lake.events import Lake
        from detector.lake.findings import list_findings
        from detector.lake.incidents import findings_events

        the_lake = Lake(lake).require_existing()
        found = list_findings(the_lake, since=since, min_severity="info")
        events = findings_events(the_lake, found) if found.height else None
        hits = suppress.apply(found, events, sups, now)
        for name in hits["suppression"].drop_nulls().to_list():
            counts[name] = counts.get(name, 0) + 1
    rows = [
        {
            "name": s.name,
            "state": "expired" if s.expired(now) else "active",
            "expires": s.expires.strftime("%Y-%m-%d"),
            "match": s.match,
            "reason": s.reason,
            **({"findings_matched": counts.get(s.name, 0)} if lake else {}),
        }
        for s in sups
    ]
    if output == OutputFormat.json:
        emit_json(rows)
        return
    for r in rows:
        cond = ", ".join(f"{k}={v}" for k, v in r["match"].items())
        extra = f", {r['findings_matched']} finding(s) matched" if lake else ""
        stdout.print(
            f"{r['name']}: {r['state']} {'on' if r['state'] == 'expired' else 'until'} "
            f"{r['expires']}{extra}; {cond}; reason: {r['reason']}",
            markup=False,
        )
    stdout.print(f"{len(rows)} suppression(s) in {path}: ok", markup=False)


def register(app: typer.Typer) -> None:
    app.command("suppressions")(suppressions)
