"""Rendering shared by several commands: findings tables, principals, wide output.

Commands never import each other; what two of them print the same way lives here.
"""

from __future__ import annotations

from typing import Any

import polars as pl
from rich.cells import cell_len
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from detector.cli.options import stdout
from detector.cli.terminal import SafeConsole
from detector.controls import ONE_LINE
from detector.events.identity import display_principal

SEVERITY_STYLE = {
    "critical": "bold red",
    "high": "red",
    "medium": "yellow",
    "low": "cyan",
    "info": "dim",
}

#: Width of tables written to files, pipes and cron logs (no terminal to ask).
PIPE_WIDTH = 200
#: Principals longer than this are cut (with an ellipsis) to keep a line readable.
PRINCIPAL_MAX = 100
#: The title keeps at least this much room, whatever the terminal.
TITLE_MIN = 12
#: On a narrow terminal these columns are cut down to so many characters, after the title.
_NARROWED = (("principal", 20), ("detector", 16))


_HEADERS = ("id", "severity", "score", "window (UTC)", "detector", "principal", "title")


def findings_json(df: pl.DataFrame) -> list[dict[str, Any]]:
    """Findings as JSON-ready dicts (datetimes become ISO strings in emit_json)."""
    return df.to_dicts()


def short_principal(principal: str | None) -> str:
    """A principal as shown in tables: ``developer (session grace)`` for IAM role sessions."""
    return display_principal(principal)


def format_score(score: float | None) -> str:
    """One format for every detector's score (model scores near 1, rule counts above)."""
    return "-" if score is None else f"{score:.2f}"


def wide_console() -> Console:
    """stdout, but at least :data:`PIPE_WIDTH` columns wide when it is not a terminal
    (files, pipes, cron logs), so one finding stays on one line."""
    if stdout.is_terminal:
        return stdout
    return SafeConsole(highlight=False, soft_wrap=True, width=max(stdout.width, PIPE_WIDTH))


def render_findings(
    df: pl.DataFrame,
    *,
    title: str | None = None,
    alerts_only: bool = False,
    hint: str | None = None,
) -> None:
    """One line per finding: id, severity, score, window, detector, principal, title.

    With ``alerts_only`` the ``info`` records (routine exec, port-forward, namespaced RBAC,
    single denied secret reads) are counted on one line instead of listed: they are in the
    lake for investigations, but a screen of them would hide the alerts. ``hint`` is the
    command that lists them (``detect findings`` lists every severity by default).

    The title gives way first; on a terminal too narrow for the rest, the principal and the
    detector are cut next (:func:`_print_fitted`); never a whole column.
    """
    if alerts_only:
        records = df.filter(pl.col("severity") == "info")
        df = df.filter(pl.col("severity") != "info")
        if records.height:
            stdout.print(
                f"{records.height} info record(s) not shown (routine activity kept for "
                f"investigations){': ' + hint if hint else ''}",
                markup=False,
            )
    if df.is_empty():
        stdout.print("no alerts" if alerts_only else "no findings", markup=False)
        return
    with_status = "status" in df.columns  # `detect findings` joins the workflow status
    headers = list(_HEADERS[:6]) + (["status"] if with_status else []) + ["title"]
    rows = []
    for row in df.iter_rows(named=True):
        model = row["detector"].startswith("model")
        cells = [
            row["finding_id"],
            row["severity"],
            format_score(row["score"]),
            f"{row['window_start']:%m-%d %H:%M}",
            "model" if model else row["detector"].removeprefix("rule:"),
            short_principal(row["principal"]),
        ]
        if with_status:
            cells.append(row["status"] or "new")
        rows.append([*cells, row["title"] or ""])
    _print_fitted(headers, rows, title=title, right={"score"})


def render_incidents(df: pl.DataFrame, *, title: str | None = None) -> None:
    """One line per incident: what reaches people, most severe first (``detect incidents``).
    Like :func:`render_findings`, the identifying columns stay whole and the title gives way."""
    if df.is_empty():
        stdout.print("no incidents", markup=False)
        return
    headers = ["id", "severity", "status", "first seen (UTC)", "findings", "principal", "title"]
    rows = []
    for r in df.iter_rows(named=True):
        who = r["key"] if r["key_kind"] == "source_ip" else short_principal(r["principal"])
        rows.append(
            [
                r["incident_id"],
                r["severity"],
                r["status"] + (f" ({r['suppression']})" if r["suppression"] else ""),
                f"{r['first_seen']:%m-%d %H:%M}",
                str(len(r["finding_ids"])),
                who or "-",
                r["title"] or "",
            ]
        )
    _print_fitted(headers, rows, title=title, right={"findings"})


#: Columns of lake or user text cut (with an ellipsis) past this width; the others are ours
#: and short. A status carries a suppression's name.
_CAPPED = {"principal": PRINCIPAL_MAX, "status": 40, "detector": 60}


def _print_fitted(
    headers: list[str], rows: list[list[str]], *, title: str | None, right: set[str]
) -> None:
    """A table of plain-text ``rows`` whose columns but the last keep the width of their
    longest cell (capped by :data:`_CAPPED`), and whose last (a title) takes what is left
    of the line, at least :data:`TITLE_MIN`; where that does not fit, the columns of
    :data:`_NARROWED` are cut down, and past that lines wrap. Left to itself, rich shrinks
    every column alike: at 120 columns `detect incidents` dropped the severity, status and
    findings columns and cut the id, and one long principal hid three columns of every row
    (found by review). Cells are escaped here (lake text is never markup); severities
    styled. Cells are measured as shown: control characters and line breaks escaped
    (``\\x1b``, ``\\n``: one row is one line), wide letters two cells."""
    out = wide_console()
    n = len(headers) - 1
    rows = [[c.translate(ONE_LINE) for c in r] for r in rows]
    widths = [
        min(max(cell_len(h), *(cell_len(r[i]) for r in rows)), _CAPPED.get(h, 10**6))
        for i, h in enumerate(headers[:n])
    ]
    for name, least in _NARROWED:  # a narrow terminal: these give way after the title
        over = sum(widths) + 2 * n + TITLE_MIN - out.width
        if over > 0 and name in headers:
            i = headers.index(name)
            widths[i] = max(min(least, widths[i]), widths[i] - over)
    title_w = max(TITLE_MIN, out.width - sum(widths) - 2 * n)
    table = Table(title=title, box=None, pad_edge=False, header_style="bold", title_justify="left")
    for header, width in zip(headers[:n], widths, strict=True):
        table.add_column(
            header,
            no_wrap=True,
            min_width=width,
            max_width=width,
            justify="right" if header in right else "left",
            overflow="ellipsis",
        )
    table.add_column(headers[n], no_wrap=True, overflow="ellipsis", max_width=title_w)
    severity = headers.index("severity")
    for r in rows:
        cells = [escape(c) for c in r]
        style = SEVERITY_STYLE.get(r[severity], "")
        cells[severity] = f"[{style}]{cells[severity]}[/]" if style else cells[severity]
        table.add_row(*cells)
    # Still too wide: lines wrap on the terminal rather than rich dropping whole columns.
    out.print(table, width=max(out.width, sum(widths) + 2 * n + title_w))


def digests_text(summary: dict[str, Any]) -> str:
    """``, N digest(s) of M alerts, K held for the next`` for a delivery summary where a
    sink's hourly budget was past (:mod:`detector.delivery.storm`), else nothing."""
    out = ""
    if summary.get("digests"):
        out += f", {summary['digests']} digest(s) of {summary['folded']} alerts"
    if summary.get("held"):
        out += f", {summary['held']} held for the next digest"
    return out
