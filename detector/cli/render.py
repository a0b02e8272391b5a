"""Rendering shared by several commands: findings tables, principals, wide output.

Commands never import each other; what two of them print the same way lives here.
"""

from __future__ import annotations

from typing import Any

import polars as pl
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from detector.cli.options import stdout
from detector.cli.terminal import SafeConsole
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
TITLE_MIN = 20


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

    The identifying columns (detector, principal) are never cut: the title gives way.
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
    headers = list(_HEADERS[:6]) + (["status"] if with_status else [])
    rows = []
    for row in df.iter_rows(named=True):
        model = row["detector"].startswith("model")
        cells = [
            row["finding_id"],
            f"[{SEVERITY_STYLE.get(row['severity'], '')}]{row['severity']}[/]",
            format_score(row["score"]),
            f"{row['window_start']:%m-%d %H:%M}",
            "model" if model else row["detector"].removeprefix("rule:"),
            short_principal(row["principal"]),
        ]
        if with_status:
            cells.append(row["status"] or "new")
        rows.append((*cells, row["title"] or ""))
    # Identifying columns get their full width; the title takes what is left of the line.
    out = wide_console()
    n = len(headers)
    widths = [max(len(str(r[i])) for r in rows) for i in range(n)]
    widths[1], widths[5] = len("severity"), min(widths[5], PRINCIPAL_MAX)
    fixed = sum(max(w, len(h)) for w, h in zip(widths, headers, strict=True)) + 2 * n
    title_w = max(TITLE_MIN, out.width - fixed)
    table = Table(title=title, box=None, pad_edge=False, header_style="bold")
    for i, header in enumerate(headers):
        table.add_column(
            header,
            no_wrap=True,
            min_width=max(widths[i], len(header)),
            justify="right" if header == "score" else "left",
            overflow="ellipsis",
        )
    table.add_column("title", no_wrap=True, overflow="ellipsis", max_width=title_w)
    for r in rows:
        table.add_row(*r[:5], escape(r[5]), *r[6:n], escape(r[n]))
    out.print(table)


def render_incidents(df: pl.DataFrame, *, title: str | None = None) -> None:
    """One line per incident: what reaches people, most severe first (``detect incidents``)."""
    if df.is_empty():
        stdout.print("no incidents", markup=False)
        return
    table = Table(title=title, box=None, pad_edge=False, header_style="bold", title_justify="left")
    for col in ("id", "severity", "status", "first seen (UTC)", "findings", "principal", "title"):
        table.add_column(col, no_wrap=True, overflow="ellipsis", max_width=72)
    for r in df.iter_rows(named=True):
        who = r["key"] if r["key_kind"] == "source_ip" else short_principal(r["principal"])
        table.add_row(
            r["incident_id"],
            f"[{SEVERITY_STYLE.get(r['severity'], '')}]{r['severity']}[/]",
            r["status"] + (f" ({r['suppression']})" if r["suppression"] else ""),
            f"{r['first_seen']:%m-%d %H:%M}",
            str(len(r["finding_ids"])),
            escape(who or "-"),
            escape(r["title"] or ""),
        )
    wide_console().print(table)


def digests_text(summary: dict[str, Any]) -> str:
    """``, N digest(s) of M alerts, K held for the next`` for a delivery summary where a
    sink's hourly budget was past (:mod:`detector.delivery.storm`), else nothing."""
    out = ""
    if summary.get("digests"):
        out += f", {summary['digests']} digest(s) of {summary['folded']} alerts"
    if summary.get("held"):
        out += f", {summary['held']} held for the next digest"
    return out
