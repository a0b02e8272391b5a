"""The HTML report: one self-contained file an analyst opens with no network.

Everything is inline: styles, charts (SVG rendered in Python, :mod:`detector.report.charts`)
and one small script that opens the collapsed raw-events block an anchor link points into.
Everything from the lake is untrusted (principal names, user agents, resource names are
chosen by whoever sent the request), so the page is built with Jinja2 autoescaping, ids
derived from lake values are reduced to safe characters, and a Content-Security-Policy
allows no network access and no script but ours (by its hash): an injection that slipped
past escaping would still not run.
"""

from __future__ import annotations

import base64
import hashlib
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup

from detector.controls import clip
from detector.events.addresses import shown_source
from detector.events.identity import display_principal, identity_summary, parse_principal
from detector.report import charts
from detector.report.data import ReportData
from detector.report.timeline import collapse_runs, denied_expr, describe_entry
from detector.userfiles import write_user_file

#: Raw events listed per finding (the count of all is shown).
MAX_EVENTS = 200
#: The CloudTrail lookup spans a finding's window and this much on each side: the same
#: credentials are usually used against AWS APIs around the Kubernetes requests.
LOOKUP_MARGIN = timedelta(hours=1)
#: Principals in the top-principals chart and table.
TOP_PRINCIPALS = 15

#: Opens the <details> that holds the anchor target (raw events are collapsed), then
#: scrolls to it; runs on load and on every hash change.
SCRIPT = """
function showTarget() {
  var id = decodeURIComponent(location.hash.slice(1));
  if (!id) return;
  var el = document.getElementById(id);
  if (!el) return;
  for (var p = el; p; p = p.parentElement) {
    if (p.tagName === "DETAILS") p.open = true;
  }
  el.scrollIntoView({block: "center"});
}
window.addEventListener("hashchange", showTarget);
window.addEventListener("DOMContentLoaded", showTarget);
"""

_SAFE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")


def anchor(prefix: str, *values: str | None) -> str:
    """An element id for lake values: kept when already safe, else a short hash of them."""
    joined = "-".join(v or "" for v in values)
    if _SAFE_ID.match(joined):
        return f"{prefix}-{joined}"
    return f"{prefix}-{hashlib.sha256(joined.encode()).hexdigest()[:16]}"


def _ts(value: datetime | None, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    return value.astimezone(UTC).strftime(fmt) if value else ""


#: The longest lake text a table cell of the page shows (an object name may be 4 MB long:
#: ingest keeps lines up to that); the raw event is a command away.
CELL_CHARS = 300


def _cut(text: str | None, width: int = 120) -> str:
    return clip(text, width) or ""


def _timeline_rows(runs: pl.DataFrame, event_anchor: dict[str, str]) -> list[dict[str, Any]]:
    rows = []
    for r in runs.iter_rows(named=True):
        entry = {"kind": "denied" if r["denied"] else "requests", **r}
        rows.append(
            {
                "time": _ts(r["time"], "%m-%d %H:%M:%S"),
                "last_time": _ts(r["last_time"], "%H:%M:%S") if r["last_time"] != r["time"] else "",
                "count": f"{r['count']:,}",
                "what": _cut(describe_entry(entry), CELL_CHARS),
                "sources": _cut(", ".join(r["sources"]), CELL_CHARS),
                "denied": r["denied"],
                "event_anchor": event_anchor.get(r["audit_id"] or ""),
            }
        )
    return rows


def _events_rows(events: pl.DataFrame, finding_id: str) -> list[dict[str, Any]]:
    rows = []
    flagged = events.head(MAX_EVENTS).with_columns(denied_expr().alias("_denied"), shown_source())
    anchored: set[str | None] = set()
    for e in flagged.iter_rows(named=True):
        # An id once per audit ID: its stages, and requests that reused a client's
        # Audit-ID, share one, and an id twice in a page is no link target.
        first = e["audit_id"] not in anchored
        anchored.add(e["audit_id"])
        rows.append(
            {
                "anchor": anchor("ev", finding_id, e["audit_id"]) if first else None,
                "time": _ts(e["event_time"]),
                "verb": e["verb"] or "",
                "target": _cut(
                    "/".join(x for x in (e["resource"], e["subresource"]) if x), CELL_CHARS
                ),
                "where": _cut("/".join(x for x in (e["namespace"], e["name"]) if x), CELL_CHARS),
                "code": e["response_code"] if e["response_code"] is not None else "",
                "source": _cut(e["source"]),
                "user_agent": _cut(e["user_agent"]),
                "audit_id": e["audit_id"] or "",
                "denied": e["_denied"],
            }
        )
    return rows


def build_context(data: ReportData) -> dict[str, Any]:
    """Plain values for the template (strings are escaped by the template, not here)."""
    findings = data.findings
    detailed_ids = data.detailed["finding_id"].to_list()
    f_anchor = {fid: anchor("finding", fid) for fid in detailed_ids}

    # incidents: anchors first, so findings can link back
    incidents: list[dict[str, Any]] | None = None
    incidents_of: dict[str, list[dict[str, str]]] = {}
    if data.incidents is not None:
        incidents = []
        for inc in data.incidents.iter_rows(named=True):
            ref = {
                "incident_id": inc["incident_id"],
                "anchor": anchor("incident", inc["incident_id"]),
            }
            for fid in inc["finding_ids"] or []:
                incidents_of.setdefault(fid, []).append(ref)
            incidents.append({**inc, **ref})

    # where each finding's raw events live: (finding, audit id) -> row anchor
    event_anchor: dict[str, str] = {}
    detailed = []
    by_id = {r["finding_id"]: r for r in data.detailed.iter_rows(named=True)}
    order = sorted(
        detailed_ids,
        key=lambda i: (-by_id[i]["severity_rank"], -(by_id[i]["score"] or 0), i),
    )
    for fid in order:
        f = by_id[fid]
        ev = data.events.filter(pl.col("finding_id") == fid)
        own = {
            a: anchor("ev", fid, a) for a in ev.head(MAX_EVENTS)["audit_id"].drop_nulls().to_list()
        }
        for a, target in own.items():
            event_anchor.setdefault(a, target)
        keys = ev["access_key_id"].drop_nulls().unique(maintain_order=True).to_list()
        detailed.append(
            {
                **f,
                "anchor": f_anchor[fid],
                "events_anchor": anchor("events", fid),
                "window": f"{_ts(f['window_start'], '%Y-%m-%d %H:%M')}–"
                f"{_ts(f['window_end'], '%H:%M')}",
                "identity": identity_summary(
                    f["principal"],
                    keys,
                    start=f["window_start"] - LOOKUP_MARGIN,
                    end=f["window_end"] + LOOKUP_MARGIN,
                    region=data.region,
                ),
                "timeline": _timeline_rows(collapse_runs(ev), own),
                "events": _events_rows(ev, fid),
                "events_cut": ev.height > MAX_EVENTS,
                "incidents": incidents_of.get(fid, []),
                "reasons": f["reasons"] or [],
            }
        )

    if incidents is not None:
        in_range = {r["finding_id"]: r for r in findings.iter_rows(named=True)}
        for inc in incidents:
            ids = inc["finding_ids"] or []
            inc["findings"] = [
                {
                    "finding_id": fid,
                    "anchor": f_anchor.get(fid),
                    "in_range": fid in in_range,
                    "title": in_range[fid]["title"] if fid in in_range else fid,
                    "severity": in_range[fid]["severity"] if fid in in_range else "info",
                }
                for fid in ids
            ]
            ev = data.events.filter(
                pl.col("finding_id").is_in(pl.Series(ids, dtype=pl.String).implode())
            ).unique(["audit_id", "stage", "event_time"], keep="first")  # COPY_KEY: reused IDs
            inc["timeline"] = _timeline_rows(collapse_runs(ev), event_anchor)
            # Grouped by source address: shown by it, as `detect incidents` shows it (the
            # page named it after one of its principals, system:anonymous).
            by_ip = inc.get("key_kind") == "source_ip" and inc.get("key")
            inc["display"] = by_ip or display_principal(inc.get("principal"))
            inc["time"], inc["end"] = _ts(inc["time"]), _ts(inc["end"])
            inc["severity"] = inc.get("severity") or "info"
            inc["title"] = inc.get("title") or f"Incident {inc['incident_id']}"

    firsts: dict[str, list[dict[str, str]]] = {}
    for f in detailed:
        firsts.setdefault(f["principal"], []).append(
            {"anchor": f["anchor"], "severity": f["severity"]}
        )
    top = data.principals.head(TOP_PRINCIPALS)
    principals = [
        {
            **p,
            "display": display_principal(p["principal"]),
            "account": parse_principal(p["principal"]).account,
            "findings": firsts.get(p["principal"], [])[:8],
        }
        for p in top.iter_rows(named=True)
    ]
    findings_table = [
        {
            "severity": f["severity"],
            "window": _ts(f["window_start"], "%m-%d %H:%M"),
            "detector": f["detector"],
            "principal": f["principal"],
            "display": display_principal(f["principal"]),
            "title": f["title"] or "",
            "anchor": f_anchor.get(f["finding_id"]),
        }
        for f in findings.iter_rows(named=True)
    ]
    return {
        "start": _ts(data.start, "%Y-%m-%d %H:%M"),
        "end": _ts(data.end, "%Y-%m-%d %H:%M"),
        "generated": _ts(datetime.now(UTC), "%Y-%m-%d %H:%M UTC"),
        "lake": data.lake_uri,
        "summary": data.summary(),
        "notes": data.notes,
        "levels": data.levels,
        "principals": principals,
        "incidents": incidents,
        "findings_table": findings_table,
        "detailed": detailed,
        "charts": _charts(data, top),
    }


def _charts(data: ReportData, top: pl.DataFrame) -> dict[str, Any]:
    """Inline SVG of every chart that has data (``Markup``: already escaped by vl-convert
    and checked by :func:`charts.to_svg`)."""
    out: dict[str, Any] = {"events": None, "rates": [], "findings": None, "incidents": None}
    domain = charts.domain_of(data.start, data.end)
    if data.hourly.height:
        out["events"] = Markup(charts.events_per_hour(data.hourly, domain))
        for name, column, level in (
            ("denied-rate", "denied_rate", data.levels[0]),
            ("unauthenticated-rate", "unauthenticated_rate", data.levels[1]),
        ):
            out["rates"].append(
                (name, Markup(charts.rate_against_usual(data.rates, column, level, domain)))
            )
    if data.findings.height:
        out["findings"] = Markup(
            charts.by_severity(
                data.findings, "window_start", "Findings per hour by severity", domain
            )
        )
    if data.incidents is not None and data.incidents.height:
        # An incident begun before the range counts in its first hour, not off the chart.
        inc = data.incidents.with_columns(
            pl.col("severity").fill_null("info"),
            pl.max_horizontal("time", pl.lit(data.start, data.incidents.schema["time"])),
        )
        out["incidents"] = Markup(
            charts.by_severity(inc, "time", "Incidents per hour by severity", domain)
        )
    if top.height:
        out["principals"] = Markup(charts.top_principals(principal_labels(top)))
    return out


#: The longest principal a chart label shows (it is drawn 320 px wide). A username of
#: 100,000 characters (whatever an OIDC claim says) took the chart renderer 67 s whole.
LABEL_CHARS = 80


def principal_labels(top: pl.DataFrame) -> pl.DataFrame:
    """``top`` with ``label``: each principal as people read it, cut to
    :data:`LABEL_CHARS`; two that read the same (one role in two accounts, two names cut
    alike) are told apart by their stored form, then by a short hash of it. Compared as
    drawn, control characters and line breaks escaped: ``ops`` + a line break + ``admin``
    and ``ops\\nadmin`` read the same."""
    labels = top["principal"].to_list()
    shown = [display_principal(p).translate(charts.LABEL_TEXT) for p in labels]
    if len(set(shown)) < len(shown):
        seen = {s: shown.count(s) for s in shown}
        shown = [
            p.translate(charts.LABEL_TEXT) if seen[s] > 1 else s
            for p, s in zip(labels, shown, strict=True)
        ]
    cut = [_cut(s, LABEL_CHARS) for s in shown]
    if len(set(cut)) < len(cut):
        tail = LABEL_CHARS - 10
        cut = [
            c
            if cut.count(c) == 1
            else f"{_cut(s, tail)} #{hashlib.sha256(p.encode()).hexdigest()[:8]}"
            for p, s, c in zip(labels, shown, cut, strict=True)
        ]
    return top.with_columns(pl.Series("label", cut, dtype=pl.String))


def _shown(value: Any) -> Any:
    """Lake text with its control characters shown (``\\x1b``), as every command shows them:
    a NUL or an escape sequence in a user name is evidence, and an analyst copying it from
    the page must see it. Our own markup (``Markup``: the charts, the script) is as built."""
    if isinstance(value, str) and not isinstance(value, Markup):
        return value.translate(PAGE_TEXT)
    return value


#: What lake text on the page shows escaped: what XML cannot hold, and line breaks and tabs
#: as the terminal shows them (``\\n``: HTML drew a line break in a name as a space, so
#: ``line1\\nFORGED`` read as two words the terminal showed otherwise). The charts' own.
PAGE_TEXT = charts.LABEL_TEXT


def render(data: ReportData) -> str:
    """The report page as one string."""
    env = Environment(
        loader=FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=select_autoescape(["html", "j2"], default=True),
        trim_blocks=True,
        lstrip_blocks=True,
        finalize=_shown,
    )
    digest = base64.b64encode(hashlib.sha256(SCRIPT.encode()).digest()).decode()
    template = env.get_template("report.html.j2")
    return template.render(
        **build_context(data), script=Markup(SCRIPT), script_hash=f"sha256-{digest}"
    )


def write_report(data: ReportData, path: str | Path) -> Path:
    """Write the page atomically (a reader never sees half a report)."""
    return write_user_file(path, render(data))
