"""The report's charts: Altair specifications rendered to SVG text by vl-convert.

SVG is rendered here, in Python, so the page needs no JavaScript library and no network to
draw them: each chart is inline ``<svg>`` markup. vl-convert escapes the text it draws (axis
labels, legends: cluster and principal names come from the lake and are untrusted);
:func:`to_svg` checks the result holds no script or event-handler attribute all the same
before the page embeds it unescaped.

Times are drawn on a UTC scale: the lake is UTC, and a chart in the viewer's (or the
converter's) local time would not line up with the tables beside it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from html.parser import HTMLParser
from typing import Any

import altair as alt
import polars as pl

from detector.controls import NOT_XML, ONE_LINE
from detector.lake.findings_schema import SEVERITIES
from detector.report.data import Level

SEVERITY_COLORS = {
    "info": "#9aa5b1",
    "low": "#4c9bd6",
    "medium": "#f2b134",
    "high": "#e8590c",
    "critical": "#c92a2a",
}
WIDTH = 760
_SCRIPTING_TAGS = {"script", "foreignobject", "iframe", "object", "embed"}


class _ScriptFinder(HTMLParser):
    """Finds markup that could run code: a scripting element, an ``on*`` handler or a
    ``javascript:`` URL. A parser, not a regex: escaped label text such as
    ``aria-label="&lt;svg onload=...&gt;"`` is an attribute value, not an attribute."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag.lower() in _SCRIPTING_TAGS:
            self.found.append(f"<{tag}>")
        for name, value in attrs:
            if name.lower().startswith("on"):
                self.found.append(f"{tag} {name}=")
            if value and value.strip().lower().startswith("javascript:"):
                self.found.append(f"{tag} {name}=javascript:")

    handle_startendtag = handle_starttag


def unsafe_markup(svg: str) -> list[str]:
    """What in this markup could execute in a page (empty when nothing)."""
    finder = _ScriptFinder()
    finder.feed(svg)
    finder.close()
    return finder.found


class UnsafeChart(ValueError):
    """Rendered SVG held markup that could run code; never embedded."""


#: What XML cannot hold, and line breaks and tabs shown as the page's tables show them.
LABEL_TEXT = NOT_XML | ONE_LINE


def _shown(value: Any) -> Any:
    """Every string of a chart specification with control characters shown (``\\x00``):
    vl-convert aborts the process (a Rust panic, exit 134) on text XML cannot hold, and one
    audit event with a NUL or ESC in its user name stopped every report of its range."""
    if isinstance(value, str):
        return value.translate(LABEL_TEXT)
    if isinstance(value, list):
        return [_shown(v) for v in value]
    if isinstance(value, dict):
        return {_shown(k): _shown(v) for k, v in value.items()}
    return value


def to_svg(chart: alt.TopLevelMixin) -> str:
    """Render to SVG markup, refusing anything that could execute in the page."""
    import vl_convert as vlc

    svg = vlc.vegalite_to_svg(_shown(chart.to_dict()))
    if found := unsafe_markup(svg):
        raise UnsafeChart(f"rendered chart holds script-like markup: {found[:3]}")
    return svg


#: The report's range as ISO strings: every time axis spans it, so charts line up.
Domain = tuple[str, str]


def _time_x(domain: Domain | None, field: str = "hour", title: str = "hour (UTC)") -> alt.X:
    scale = alt.Scale(type="utc", domain=list(domain)) if domain else alt.Scale(type="utc")
    return alt.X(
        f"{field}:T",
        title=title,
        scale=scale,
        # At most a label per 90 px: the renderer does not drop labels that overlap, and
        # a 6-hour range drew one each 15 minutes, 31 px apart (found by review).
        axis=alt.Axis(format="%m-%d %H:%M", labelAngle=0, labelOverlap=True, tickCount=WIDTH // 90),
    )


def _iso(df: pl.DataFrame, *cols: str) -> pl.DataFrame:
    """Datetimes as ISO strings with ``Z``: parsed as UTC by Vega whatever the machine's TZ."""
    return df.with_columns(pl.col(c).dt.strftime("%Y-%m-%dT%H:%M:%SZ") for c in cols)


def domain_of(start: datetime, end: datetime) -> Domain:
    """The chart domain of a report range (whole hours, UTC)."""
    lo = start.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    return (lo.strftime("%Y-%m-%dT%H:%M:%SZ"), end.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))


def events_per_hour(hourly: pl.DataFrame, domain: Domain | None = None) -> str:
    """Events per hour, one line per cluster."""
    data = _iso(hourly.select("cluster", "hour", "events"), "hour")
    chart = (
        alt.Chart(alt.Data(values=data.to_dicts()))
        .mark_line(point=alt.OverlayMarkDef(size=18))
        .encode(
            x=_time_x(domain),
            y=alt.Y("events:Q", title="events"),
            color=alt.Color("cluster:N", title="cluster"),
            tooltip=["cluster:N", "hour:T", "events:Q"],
        )
        .properties(width=WIDTH, height=220, title="Events per hour by cluster")
    )
    return to_svg(chart)


def rate_against_usual(
    rates: pl.DataFrame, column: str, level: Level, domain: Domain | None = None
) -> str:
    """An hourly rate, its usual level (dashed) and the alarm line (red); hours above the
    alarm line are red points."""
    data = _iso(
        rates.select("hour", pl.col(column).fill_nan(0.0).alias("rate"), "events"), "hour"
    ).with_columns((pl.col("rate") > level.alarm).alias("above"))
    base = alt.Chart(alt.Data(values=data.to_dicts()))
    line = base.mark_line(color="#495057").encode(
        x=_time_x(domain), y=alt.Y("rate:Q", title="share of requests", axis=alt.Axis(format="%"))
    )
    above = (
        base.transform_filter("datum.above")
        .mark_point(color="#c92a2a", filled=True, size=60)
        .encode(
            x=_time_x(domain), y="rate:Q", tooltip=["hour:T", alt.Tooltip("rate:Q", format=".2%")]
        )
    )
    lines = alt.Data(
        values=[
            {"y": level.usual, "what": f"usual {level.usual:.2%}"},
            {"y": level.alarm, "what": f"alarm {level.alarm:.2%}"},
        ]
    )
    rules = (
        alt.Chart(lines)
        .mark_rule(strokeDash=[6, 4])
        .encode(
            y="y:Q",
            color=alt.Color(
                "what:N",
                title=None,
                scale=alt.Scale(range=["#2b8a3e", "#c92a2a"]),
                sort=None,
            ),
        )
    )
    chart = alt.layer(line, rules, above).properties(
        width=WIDTH, height=180, title=f"{level.name.capitalize()} rate per hour against usual"
    )
    return to_svg(chart)


def by_severity(df: pl.DataFrame, time_col: str, title: str, domain: Domain | None = None) -> str:
    """Counts per hour, stacked by severity in severity order and colours."""
    data = _iso(
        df.group_by(pl.col(time_col).dt.truncate("1h").alias("hour"), "severity")
        .agg(pl.len().alias("count"))
        .sort("hour"),
        "hour",
    )
    present = [s for s in SEVERITIES if s in set(data["severity"].to_list())]
    hours = 24.0
    if domain:
        lo, hi = (datetime.fromisoformat(d.replace("Z", "+00:00")) for d in domain)
        hours = max((hi - lo).total_seconds() / 3600, 1.0)
    chart = (
        alt.Chart(alt.Data(values=data.to_dicts()))
        .mark_bar(size=max(2.0, min(40.0, 0.8 * WIDTH / hours)), align="left")
        .encode(
            x=_time_x(domain),
            y=alt.Y("count:Q", title="count", stack="zero"),
            color=alt.Color(
                "severity:N",
                scale=alt.Scale(domain=present, range=[SEVERITY_COLORS[s] for s in present]),
                sort=present,
            ),
            order=alt.Order("rank:Q"),
            tooltip=["hour:T", "severity:N", "count:Q"],
        )
        .transform_calculate(rank=f"indexof({list(SEVERITIES)!r}, datum.severity)")
        .properties(width=WIDTH, height=180, title=title)
    )
    return to_svg(chart)


def top_principals(principals: pl.DataFrame) -> str:
    """Requests of the busiest principals, the denied part in red."""
    data = principals.select(
        pl.col("label"),
        (pl.col("events") - pl.col("denied")).alias("allowed"),
        pl.col("denied"),
    ).unpivot(index="label", variable_name="outcome", value_name="requests")
    order = principals["label"].to_list()
    chart = (
        alt.Chart(alt.Data(values=data.to_dicts()))
        .mark_bar()
        .encode(
            y=alt.Y("label:N", sort=order, title=None, axis=alt.Axis(labelLimit=320)),
            x=alt.X("requests:Q", title="requests", stack="zero"),
            color=alt.Color(
                "outcome:N",
                scale=alt.Scale(domain=["allowed", "denied"], range=["#4c9bd6", "#c92a2a"]),
            ),
            tooltip=["label:N", "outcome:N", "requests:Q"],
        )
        .properties(width=WIDTH - 300, height=max(60, 18 * len(order)), title="Top principals")
    )
    return to_svg(chart)
