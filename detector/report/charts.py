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

import re

import altair as alt
import polars as pl

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
_UNSAFE = re.compile(r"<\s*(script|foreignObject|iframe)|\son[a-z]+\s*=|javascript:", re.I)


class UnsafeChart(ValueError):
    """Rendered SVG held markup that could run code; never embedded."""


def to_svg(chart: alt.TopLevelMixin) -> str:
    """Render to SVG markup, refusing anything that could execute in the page."""
    import vl_convert as vlc

    svg = vlc.vegalite_to_svg(chart.to_dict())
    if _UNSAFE.search(svg):
        raise UnsafeChart("rendered chart holds script-like markup")
    return svg


def _time_x(field: str = "hour", title: str = "hour (UTC)") -> alt.X:
    return alt.X(
        f"{field}:T",
        title=title,
        scale=alt.Scale(type="utc"),
        axis=alt.Axis(format="%m-%d %H:%M", labelAngle=0, labelOverlap=True),
    )


def _iso(df: pl.DataFrame, *cols: str) -> pl.DataFrame:
    """Datetimes as ISO strings with ``Z``: parsed as UTC by Vega whatever the machine's TZ."""
    return df.with_columns(pl.col(c).dt.strftime("%Y-%m-%dT%H:%M:%SZ") for c in cols)


def events_per_hour(hourly: pl.DataFrame) -> str:
    """Events per hour, one line per cluster."""
    data = _iso(hourly.select("cluster", "hour", "events"), "hour")
    chart = (
        alt.Chart(alt.Data(values=data.to_dicts()))
        .mark_line(point=alt.OverlayMarkDef(size=18))
        .encode(
            x=_time_x(),
            y=alt.Y("events:Q", title="events"),
            color=alt.Color("cluster:N", title="cluster"),
            tooltip=["cluster:N", "hour:T", "events:Q"],
        )
        .properties(width=WIDTH, height=220, title="Events per hour by cluster")
    )
    return to_svg(chart)


def rate_against_usual(rates: pl.DataFrame, column: str, level: Level) -> str:
    """An hourly rate, its usual level (dashed) and the alarm line (red); hours above the
    alarm line are red points."""
    data = _iso(
        rates.select("hour", pl.col(column).fill_nan(0.0).alias("rate"), "events"), "hour"
    ).with_columns((pl.col("rate") > level.alarm).alias("above"))
    base = alt.Chart(alt.Data(values=data.to_dicts()))
    line = base.mark_line(color="#495057").encode(
        x=_time_x(), y=alt.Y("rate:Q", title="share of requests", axis=alt.Axis(format="%"))
    )
    above = (
        base.transform_filter("datum.above")
        .mark_point(color="#c92a2a", filled=True, size=60)
        .encode(x=_time_x(), y="rate:Q", tooltip=["hour:T", alt.Tooltip("rate:Q", format=".2%")])
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


def by_severity(df: pl.DataFrame, time_col: str, title: str) -> str:
    """Counts per hour, stacked by severity in severity order and colours."""
    data = _iso(
        df.group_by(pl.col(time_col).dt.truncate("1h").alias("hour"), "severity")
        .agg(pl.len().alias("count"))
        .sort("hour"),
        "hour",
    )
    present = [s for s in SEVERITIES if s in set(data["severity"].to_list())]
    chart = (
        alt.Chart(alt.Data(values=data.to_dicts()))
        .mark_bar()
        .encode(
            x=_time_x(),
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
