"""`detect timeline PRINCIPAL`: one principal's requests, denials, findings and addresses."""

from __future__ import annotations

import os
from datetime import timedelta
from functools import partial
from typing import Annotated, Any

import typer

from detector.cli.options import (
    ClusterOpt,
    Duration,
    FormatOpt,
    LakeOpt,
    OutputFormat,
    SinceOpt,
    UntilOpt,
    duration_option,
    emit_json,
    lake_to_read,
    stdout,
    time_range,
)
from detector.controls import ONE_LINE, unshown
from detector.errors import UsageError

KIND_STYLE = {"denied": "red", "finding": "bold yellow", "source": "cyan", "requests": ""}


class _Every(Duration):
    """A duration, or a bare ``0``: collapse only consecutive runs (a zero window)."""

    def __call__(self, value: Any) -> timedelta:
        return timedelta(0) if str(value).strip() == "0" else super().__call__(value)


def timeline(
    principal: Annotated[
        str,
        typer.Argument(
            help="The principal: stored form (arn:aws:iam::ACCOUNT:role/ROLE/SESSION), the STS "
            "form (arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION), a role ARN for all its "
            "sessions, or a Kubernetes user name.",
            show_default=False,
        ),
    ],
    lake: LakeOpt = "./lake",
    since: SinceOpt = "24h",  # type: ignore[assignment]
    until: UntilOpt = None,
    cluster: ClusterOpt = None,
    every: Annotated[
        timedelta,
        duration_option(
            "--every",
            parser=_Every(),
            help="Collapse the same request within windows of this length (10m, 1h); "
            "0 collapses only consecutive runs.",
        ),
    ] = "10m",  # type: ignore[assignment]
    output: FormatOpt = OutputFormat.table,
) -> None:
    """One principal's activity in time order: requests, denied requests, findings and the
    source addresses it came from.

    Requests with the same verb, resource and outcome within a window (--every) are
    collapsed to one line with a count and the namespaces and names, placed at the first;
    denied requests (401, 403, RBAC forbid) are never merged with allowed ones; the first
    request from each address is marked.

    Exit codes: 0 done (also when the principal did nothing), 2 bad arguments, 3 storage
    failure.

    Example:

    \b
        detect timeline arn:aws:sts::111122223333:assumed-role/developer/grace --since 24h
        detect timeline system:anonymous --lake ./lake --since 7d --format json
    """
    from detector.events.identity import identity_summary
    from detector.report.timeline import build_timeline

    if not principal.strip():
        raise UsageError("PRINCIPAL is empty")
    start, end = time_range(since, until)
    window = every or None  # a zero window: only consecutive runs are collapsed
    the_lake = lake_to_read(lake, cluster)
    tl = build_timeline(the_lake, principal, start, end, cluster=cluster, every=window)
    if not tl.entries() and (stored := unshown(principal)) != principal:
        # Typed as the screen shows it (control characters escaped): the stored name.
        tl = build_timeline(the_lake, stored, start, end, cluster=cluster, every=window)
    # One principal matched: its identity, not the pattern typed (the form a table shows,
    # "developer (session grace)", matches in any account: no account, no ARN; review).
    (only,) = tl.principals if len(tl.principals) == 1 else (tl.principal,)
    identity = identity_summary(
        only,
        tl.access_key_ids,
        start=start,
        end=end,
        region=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"),
    )
    if output == OutputFormat.json:
        emit_json({**tl.to_dict(), "identity": identity})
        return
    render_timeline(tl, identity)


def render_timeline(tl, identity: dict) -> None:  # type: ignore[no-untyped-def]
    out = stdout
    # What was typed or stored, on the line it heads: a line break in it would print lines
    # that look like the tool's own.
    who = identity["display"].translate(ONE_LINE)
    if identity.get("account"):
        who += f"  account {identity['account']}"
    out.print(f"timeline of {who}", markup=False, style="bold")
    # To the minute when both ends are (`--since 1h` is not: seconds shown, as the range
    # 14:13:00-14:13:41 read "14:13Z to 14:13Z"; found by review).
    fmt = "%Y-%m-%d %H:%M" + ("" if tl.start.second == tl.end.second == 0 else ":%S")
    out.print(
        f"{tl.start.strftime(fmt)}Z to {tl.end.strftime(fmt)}Z: {tl.requests:,} requests "
        f"({tl.denied:,} denied) in {tl.runs.height:,} entries, {tl.sources.height} source "
        f"address(es), {tl.findings.height} finding(s)",
        markup=False,
    )
    if len(tl.principals) > 1:
        out.print(f"principals matched: {', '.join(tl.principals)}", markup=False)
    entries = tl.entries()
    if not entries:
        out.print(
            f"no activity for {tl.principal.translate(ONE_LINE)} in this range (principals "
            "are stored as "
            "arn:aws:iam::ACCOUNT:role/ROLE/SESSION; see `detect findings`)",
            markup=False,
        )
        return
    _print_lines([_row(e) for e in entries])
    for link in identity["links"]:
        out.print(f"{link['label']}:\n  {link['target']}", markup=False)


#: A timeline row: time, until, count, what, style of what, source addresses.
_Row = tuple[str, str, str, str, str, str]
_HEADER = ("time (UTC)", "until", "count", "what", "from")
#: The widest the "what" column is padded to; a longer entry overflows.
_PLAIN_WHAT_WIDTH = 160


def _row(e: dict[str, Any]) -> _Row:
    from detector.report.timeline import describe_entry

    last = e.get("last_time")
    sources = e.get("sources") or ([e["source"]] if e.get("source") else [])
    return (
        f"{e['time']:%m-%d %H:%M:%S}",
        f"{last:%H:%M:%S}" if last and last != e["time"] else "",
        f"{e['count']:,}" if "count" in e else "",
        describe_entry(e),
        KIND_STYLE[e["kind"]],
        ", ".join(sources),
    )


def _print_lines(rows: list[_Row]) -> None:
    """The entries as aligned columns, one entry a line; at a terminal, denied requests and
    findings in colour and the description padded to the screen's width at most.

    Control characters are shown escaped (line breaks included), since these lines do not
    go through the console. Not a rich table: laying one out measures and wraps every cell,
    and a busy controller's week (419k entries) took 108 s to print that way; this takes
    about a second whatever the output.
    """
    cells = [(r[0], r[1], r[2], r[3].translate(ONE_LINE), r[5].translate(ONE_LINE)) for r in rows]
    wt, wu, wc, ww = (max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(_HEADER[:4]))
    # Padded to the longest description, up to a point: one request for a path of a
    # megabyte would otherwise pad every line of the listing to a megabyte.
    ww = min(ww, _PLAIN_WHAT_WIDTH)
    colours = _colours()
    if stdout.is_terminal:  # the addresses start on the same screen line when they can
        ww = max(len(_HEADER[3]), min(ww, stdout.width - (wt + wu + wc + 8) - 16))
    header = f"{_HEADER[0]:<{wt}}  {_HEADER[1]:<{wu}}  {_HEADER[2]:>{wc}}  {_HEADER[3]:<{ww}}"
    lines = [(colours.get("header") or str)(f"{header}  {_HEADER[4]}".rstrip())]
    for (t, u, c, w, f), row in zip(cells, rows, strict=True):
        paint = colours.get(row[4])
        pad = " " * (ww - len(w))
        lines.append(
            f"{t:<{wt}}  {u:<{wu}}  {c:>{wc}}  {paint(w) if paint else w}{pad}  {f}".rstrip()
        )
    stdout.file.write("\n".join(lines) + "\n")
    stdout.file.flush()


def _colours() -> dict[str, Any]:
    """Style name -> a function colouring a string, for the console's colour system (none
    when stdout is not a terminal or colour is off, as with ``NO_COLOR``)."""
    from rich.console import COLOR_SYSTEMS
    from rich.style import Style

    system = stdout.color_system if stdout.is_terminal else None
    if system is None:
        return {}
    styles = {*KIND_STYLE.values(), "header"} - {""}
    return {
        name: partial(
            Style.parse("bold" if name == "header" else name).render,
            color_system=COLOR_SYSTEMS[system],
        )
        for name in styles
    }


def register(app: typer.Typer) -> None:
    app.command("timeline")(timeline)
