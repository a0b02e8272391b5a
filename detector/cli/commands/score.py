"""`detect score`: a time range of the lake -> findings (model and rules), filed in the lake."""

from __future__ import annotations

from typing import Annotated, Any

import polars as pl
import typer
from rich.markup import escape
from rich.table import Table

from detector.cli.commands.train import DEFAULT_MODEL_DIR, ModelDirOpt, SeedOpt
from detector.cli.options import (
    EXIT_FINDINGS,
    EXIT_USAGE,
    ClusterOpt,
    FormatOpt,
    LakeOpt,
    OutputFormat,
    SinceOpt,
    UntilOpt,
    chunk_progress,
    emit_json,
    fail,
    stdout,
    usage_error,
)
from detector.lake.findings_schema import SEVERITIES
from detector.storage import StorageError
from detector.timeparse import TimeArgumentError, parse_range

SEVERITY_STYLE = {
    "critical": "bold red",
    "high": "red",
    "medium": "yellow",
    "low": "cyan",
    "info": "dim",
}


def score(
    ctx: typer.Context,
    lake: LakeOpt = "./lake",
    since: SinceOpt = "1h",
    until: UntilOpt = None,
    model_dir: ModelDirOpt = DEFAULT_MODEL_DIR,
    output: FormatOpt = OutputFormat.table,
    fit_on_window: Annotated[
        bool,
        typer.Option(
            "--fit-on-window",
            help="Cold start: fit a model on the scored range itself (findings marked so).",
        ),
    ] = False,
    rules_only: Annotated[
        bool, typer.Option("--rules-only", help="Run the rules only, not the model.")
    ] = False,
    rules: Annotated[
        list[str] | None,
        typer.Option("--rules", help="Extra rules file (YAML); repeat for several."),
    ] = None,
    disable: Annotated[
        list[str] | None,
        typer.Option("--disable", help="Rule id to switch off; repeat for several."),
    ] = None,
    fail_on: Annotated[
        str | None,
        typer.Option(
            "--fail-on",
            help="Exit 1 if any finding is at or above this severity (low, medium, high...).",
        ),
    ] = None,
    seed: SeedOpt = 0,
    cluster: ClusterOpt = None,
    suppressions: Annotated[
        str | None,
        typer.Option(
            "--suppressions",
            envvar="DETECT_SUPPRESSIONS",
            help="Suppressions YAML applied before delivery (default ./suppressions.yaml if any).",
        ),
    ] = None,
    deliver: Annotated[
        bool,
        typer.Option(
            "--deliver/--no-deliver",
            help="Send new and changed incidents to the [[sinks]] in detect.toml.",
        ),
    ] = True,
) -> None:
    """Score a time range of the lake: features, model and rules -> findings.

    The range is widened to whole feature windows. Findings go to LAKE/findings/ and the
    events behind them to LAKE/findings_events/; scoring the same range again replaces that
    range's findings instead of adding copies. The table lists the most severe first.

    Exit codes: 0 done, 1 findings at or above --fail-on, 2 bad arguments or no model
    (train one with `detect train`), 3 storage failure.

    Example:

    \b
        detect score --lake ./lake --since 1h --fail-on high
    """
    from detector.detect.score import ScoringError, score_range
    from detector.lake.events import Lake
    from detector.model.estimator import Model, ModelError, ModelNotFound

    if fail_on is not None and fail_on not in SEVERITIES:
        usage_error(f"--fail-on must be one of {', '.join(SEVERITIES)}, not {fail_on!r}")
    if rules_only and fit_on_window:
        usage_error("--rules-only and --fit-on-window exclude each other")
    try:
        start, end = parse_range(since, until)
    except TimeArgumentError as exc:
        usage_error(str(exc))

    model = None
    if not rules_only and not fit_on_window:
        try:
            model = Model.load(model_dir)
        except ModelNotFound:
            fail(
                f"no model in {model_dir}: train one with `detect train --lake {lake} "
                "--since 14d` (or score with --fit-on-window or --rules-only)",
                EXIT_USAGE,
            )
        except ModelError as exc:
            fail(str(exc), EXIT_USAGE)
        except StorageError as exc:
            fail(str(exc))
    try:
        with chunk_progress("scoring") as progress:
            result = score_range(
                Lake(lake),
                start,
                end,
                model=model,
                fit_on_window=fit_on_window,
                use_model=not rules_only,
                rule_files=list(rules or []),
                disabled_rules=list(disable or []),
                seed=seed,
                cluster=cluster,
                progress=progress,
            )
    except ScoringError as exc:
        fail(str(exc), EXIT_USAGE)
    except StorageError as exc:
        fail(str(exc))
    alerts = _alerts(ctx, lake, result, suppressions, deliver)

    summary = {
        "since": result.start,
        "until": result.end,
        "windows": result.windows,
        "requests": result.requests,
        "model_version": result.model_version,
        "cold_start": result.cold_start,
        "rules": result.rules,
        "incidents": alerts.to_dict(),
    }
    if output == OutputFormat.json:
        emit_json({**summary, "findings": findings_json(result.findings)})
    else:
        render_findings(result.findings, alerts_only=True)
        stdout.print(
            f"{len(result.findings)} finding(s) in {result.start:%Y-%m-%d %H:%M}Z to "
            f"{result.end:%Y-%m-%d %H:%M}Z: {result.windows:,} principal windows, "
            f"{result.requests:,} requests; model {result.model_version or 'not used'}"
            f"{' (cold start)' if result.cold_start else ''}; rules {result.rules}; "
            f"written to {lake}/findings/",
            markup=False,
        )
        stdout.print(_alerts_line(alerts), markup=False)
    if fail_on is not None and len(result.findings):
        worst = int(result.findings["severity_rank"].max())
        if worst >= SEVERITIES.index(fail_on):
            raise typer.Exit(EXIT_FINDINGS)


def _alerts(
    ctx: typer.Context, lake: str, result: Any, suppressions: str | None, deliver: bool
) -> Any:
    """Incidents, suppressions and delivery after the findings are written (docs/alerts.md)."""
    from detector.cli.commands.incidents import configured_sinks
    from detector.delivery.run import after_score
    from detector.errors import DetectError
    from detector.lake.events import Lake

    try:
        return after_score(
            Lake(lake),
            result.findings,
            result.events,
            sink_configs=configured_sinks(ctx),
            suppressions_path=suppressions,
            deliver_alerts=deliver,
        )
    except DetectError as exc:
        fail(str(exc), exc.exit_code)
    except StorageError as exc:
        fail(str(exc))


def _alerts_line(alerts: Any) -> str:
    d = alerts.delivery
    sent = (
        f"; delivered {d['sent']} alert(s) ({d['new']} new, {d['updates']} updates), "
        f"{d['throttled']} throttled, {d['failed']} failed"
        if d
        else ""
    )
    return (
        f"{alerts.incidents} incident(s) touched, {alerts.changed} changed, "
        f"{alerts.suppressed_findings} finding(s) suppressed{sent}"
    )


def findings_json(df: pl.DataFrame) -> list[dict[str, Any]]:
    """Findings as JSON-ready dicts (datetimes become ISO strings in emit_json)."""
    return df.to_dicts()


def short_principal(principal: str | None) -> str:
    """A principal as shown in tables: IAM ARNs without the ``arn:aws:iam::<account>:`` part."""
    if not principal:
        return "-"
    if principal.startswith("arn:aws:") and principal.count(":") >= 5:
        return principal.split(":", 5)[5]
    return principal


def render_findings(
    df: pl.DataFrame, *, title: str | None = None, alerts_only: bool = False
) -> None:
    """One line per finding: id, severity, score, window, detector, principal, title.

    With ``alerts_only`` the ``info`` records (routine exec, port-forward, namespaced RBAC,
    single denied secret reads) are counted on one line instead of listed: they are in the
    lake for investigations, but a screen of them would hide the alerts.
    """
    if alerts_only:
        records = df.filter(pl.col("severity") == "info")
        df = df.filter(pl.col("severity") != "info")
        if records.height:
            stdout.print(
                f"{records.height} info record(s) not shown (routine activity kept for "
                "investigations): detect findings --min-severity info",
                markup=False,
            )
    if df.is_empty():
        stdout.print("no alerts" if alerts_only else "no findings", markup=False)
        return
    table = Table(title=title, box=None, pad_edge=False, header_style="bold")
    table.add_column("id", no_wrap=True, min_width=20)
    table.add_column("severity", no_wrap=True)
    table.add_column("score", no_wrap=True, justify="right")
    table.add_column("window (UTC)", no_wrap=True)
    table.add_column("detector", no_wrap=True, overflow="ellipsis", max_width=22)
    table.add_column("principal", no_wrap=True, overflow="ellipsis", max_width=36)
    table.add_column("title", no_wrap=True, overflow="ellipsis", max_width=72)
    for row in df.iter_rows(named=True):
        model = row["detector"].startswith("model")
        table.add_row(
            row["finding_id"],
            f"[{SEVERITY_STYLE.get(row['severity'], '')}]{row['severity']}[/]",
            f"{row['score']:.3f}" if model else f"{row['score']:g}",
            f"{row['window_start']:%m-%d %H:%M}",
            "model" if model else row["detector"].removeprefix("rule:"),
            escape(short_principal(row["principal"])),
            escape(row["title"] or ""),
        )
    wide_console().print(table)


def wide_console():
    """stdout, but at least 200 columns wide when it is not a terminal (files, pipes, cron
    logs), so one finding stays on one line."""
    from rich.console import Console

    if stdout.is_terminal:
        return stdout
    return Console(highlight=False, soft_wrap=True, width=max(stdout.width, 200))


def register(app: typer.Typer) -> None:
    app.command("score")(score)
