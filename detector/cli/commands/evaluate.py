"""`detect evaluate`: detection, precision, recall and false alerts on labeled data."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import typer
from rich.table import Table

from detector.cli.options import (
    DEFAULT_ALERT_RATE,
    AddressOpt,
    AlertRateOpt,
    ExecutorName,
    ExecutorOpt,
    FormatOpt,
    LakeOpt,
    NoRulesOpt,
    OutputFormat,
    SeedOpt,
    WindowOpt,
    emit_json,
    executor_for,
    instant_option,
    progress_status,
)
from detector.cli.render import short_principal, wide_console


def evaluate(
    lake: LakeOpt = "./lake",
    labels: Annotated[
        str, typer.Option("--labels", help="labels.json written by `detect simulate`.")
    ] = "labels.json",
    train_until: Annotated[
        datetime,
        instant_option(
            "--train-until", help="Train on events before this instant, score the rest."
        ),
    ] = ...,  # type: ignore[assignment]
    until: Annotated[
        datetime | None,
        instant_option(
            "--until",
            help="End of the scored range (exclusive), a duration before now or an "
            "instant; default: the end of the window holding the lake's last event.",
        ),
    ] = None,
    window: WindowOpt = "10m",  # type: ignore[assignment]
    alert_rate: AlertRateOpt = DEFAULT_ALERT_RATE,
    seed: SeedOpt = 0,
    no_rules: NoRulesOpt = False,
    output: FormatOpt = OutputFormat.table,
    executor: ExecutorOpt = ExecutorName.local,
    address: AddressOpt = None,
) -> None:
    """Train on labeled data up to --train-until, score the rest and measure the detection.

    Prints, for each labeled scenario in the scored range, whether the model alone (and the
    model with the rules, when the rules engine is installed) raised a finding about it;
    then precision, recall, and false alerts per day on principals that take part in no
    scenario. The scored range ends at --until (default: the last event). Nothing is
    written to the lake or the model store.

    Exit codes: 0 done, 2 bad arguments or labels, or a --train-until leaving
    nothing to train on or score, 3 storage failure.

    Example:

    \b
        detect simulate --out sim --days 7 --seed 1
        detect ingest sim/audit.log --lake sim/lake --cluster demo
        detect evaluate --lake sim/lake --labels sim/labels.json --train-until 2026-11-26T00:00:00Z
    """
    from detector.detect.evaluate import evaluate as run_evaluate
    from detector.detect.evaluate import load_labels
    from detector.lake.events import Lake

    scenarios = load_labels(labels)
    runner = executor_for(executor, address)
    with progress_status("evaluating: training and scoring..."):
        report = run_evaluate(
            Lake(lake).require_existing(),
            scenarios,
            train_until=train_until,
            until=until,
            window=window,
            alert_rate=alert_rate,
            seed=seed,
            rules=not no_rules,
            executor=runner,
        )
    from detector.incidents.evaluate import incident_figures

    figures = incident_figures(report)
    if output == OutputFormat.json:
        emit_json({**report.to_dict(), "incidents": figures.to_dict()})
        return
    render(report)
    render_incidents(figures)


def render_incidents(f: Any) -> None:
    """The alert figures: what reaches a sink at the default minimum severity."""
    wide_console().print(
        f"incidents at min severity {f.min_severity} (what reaches a sink): "
        f"{f.incidents} delivered; {f.reached}/{f.scenarios} attacks reach a sink, "
        f"at most {f.max_per_attack} incident(s) per attack; benign "
        f"{f.benign_per_day:.1f} incident(s)/day ({f.unmatched} matching no attack); "
        "targets (every attack, <=2 per attack, <=2 benign/day) "
        + ("met" if f.targets_met else "NOT met"),
        markup=False,
    )


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.0%}"


def render(report) -> None:
    """Per-scenario detection, then the metrics of each set of detectors."""
    out = wide_console()
    names = [d.name for d in report.detectors]
    table = Table(
        title="scenarios in the scored range", box=None, header_style="bold", title_justify="left"
    )
    for col in ("scenario", "principal", "tactic", *names):
        table.add_column(col, no_wrap=True)
    for s in report.scenarios:
        cells = []
        for n in names:
            hit = s.get(n)
            cells.append(f"[green]yes[/] ({hit['severity']})" if hit else "[red]no[/]")
        table.add_row(s["id"], short_principal(s["principal"]), s["tactic"] or "-", *cells)
    out.print(table)
    summary = Table(title="detection", box=None, header_style="bold", title_justify="left")
    for col in (
        "detectors",
        "scenarios detected",
        "recall",
        "findings",
        "precision",
        "false alerts/day",
        "false alerts/day (benign principals)",
    ):
        summary.add_column(col, no_wrap=True, justify="right")
    for d in report.detectors:
        summary.add_row(
            d.name,
            f"{d.detected}/{d.scenarios}",
            _pct(d.recall),
            str(d.findings),
            _pct(d.precision),
            f"{d.false_per_day:.1f}",
            f"{d.false_per_day_benign:.1f}",
        )
    out.print(summary)
    t0, t1 = report.test
    out.print(
        f"trained {report.train[0]:%Y-%m-%d %H:%M}Z to {report.train[1]:%Y-%m-%d %H:%M}Z, "
        f"scored {t0:%Y-%m-%d %H:%M}Z to {t1:%Y-%m-%d %H:%M}Z; threshold "
        f"{report.model_threshold:.4f}"
        + (
            f"; {report.skipped_scenarios} scenario(s) outside the scored range"
            if report.skipped_scenarios
            else ""
        ),
        markup=False,
    )


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)
