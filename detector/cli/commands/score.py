"""`detect score`: a time range of the lake -> findings (model and rules), filed in the lake."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from detector.cli.options import (
    DEFAULT_MODEL_DIR,
    EXIT_FINDINGS,
    AddressOpt,
    ClusterOpt,
    DeliverOpt,
    DisableOpt,
    EnableOpt,
    ExecutorName,
    ExecutorOpt,
    FailOnOpt,
    FormatOpt,
    LakeOpt,
    ModelDirOpt,
    NoRulesOpt,
    OutputFormat,
    RulesFileOpt,
    SeedOpt,
    SinceOpt,
    SuppressionsOpt,
    UntilOpt,
    chunk_progress,
    configured_sinks,
    emit_json,
    executor_for,
    lake_to_read,
    stdout,
    time_range,
)
from detector.cli.render import digests_text, findings_json, render_findings
from detector.config import given_as_flag
from detector.errors import UsageError
from detector.lake.findings_schema import SEVERITIES


def score(
    ctx: typer.Context,
    lake: LakeOpt = "./lake",
    since: SinceOpt = "1h",  # type: ignore[assignment]
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
    no_model: Annotated[
        bool, typer.Option("--no-model", help="Leave the model out: the rules alone.")
    ] = False,
    rules_only: Annotated[  # the first name of --no-model, kept working
        bool, typer.Option("--rules-only", hidden=True, help="Same as --no-model.")
    ] = False,
    no_rules: NoRulesOpt = False,
    rules: RulesFileOpt = None,
    enable: EnableOpt = None,
    disable: DisableOpt = None,
    fail_on: FailOnOpt = None,
    seed: SeedOpt = 0,
    cluster: ClusterOpt = None,
    suppressions: SuppressionsOpt = None,
    deliver: DeliverOpt = True,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Show the findings only: write nothing to the lake (findings, incidents) "
            "and deliver nothing. For trying --rules/--enable/--disable on a shared lake, "
            "or scoring with read-only access.",
        ),
    ] = False,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict",
            help="Refuse (exit 2) rather than warn when the model is stale or from other clusters.",
        ),
    ] = False,
    executor: ExecutorOpt = ExecutorName.local,
    address: AddressOpt = None,
) -> None:
    """Score a time range of the lake: features, model and rules -> findings.

    The range is widened to whole feature windows. Findings go to LAKE/findings/ and the
    events behind them to LAKE/findings_events/; scoring the same range again replaces that
    range's findings instead of adding copies. The table lists the most severe first.
    --no-model (day one, before any training) and --no-rules leave one detector out.
    A range longer than a day is read a cluster-day at a time, so memory stays flat.
    --dry-run shows what a run would find and changes nothing: a run with other rules
    would otherwise replace the range's findings for everyone, and alert.

    Exit codes: 0 done, 1 findings at or above --fail-on, 2 bad arguments or no model
    (train one with `detect train`), 3 storage failure.

    Example:

    \b
        detect score --lake ./lake --since 1h --fail-on high
        detect score --lake ./lake --since 1h --no-model --enable namespace-created
        detect score --lake ./lake --since 7d --no-model --rules mine.yaml --dry-run
        detect score --lake s3://audit/lake --since 90d --executor ray
    """
    from detector.detect.score import ScoreOptions, score_range
    from detector.model.storage import Model, ModelNotFound

    start, end = time_range(
        since, until, future_end="windows after now would be scored before their events arrive"
    )
    no_model = no_model or rules_only
    if no_model and no_rules:
        raise UsageError("--no-model and --no-rules leave nothing to score")
    if no_model and fit_on_window:
        raise UsageError("--no-model and --fit-on-window exclude each other")
    # Rules options with --no-rules were ignored, a broken --rules file never read, and a
    # rule both enabled and disabled was silently disabled (found by review).
    if no_rules and (rules or enable or disable):
        raise UsageError("--no-rules and --rules, --enable or --disable exclude each other")
    # --dry-run delivers nothing: asked for both, the user expected one of them to win.
    if dry_run and deliver and given_as_flag(ctx, "deliver"):
        raise UsageError("--dry-run delivers nothing: --deliver and --dry-run exclude each other")
    both = sorted(set(enable or []) & set(disable or []))
    if both:
        raise UsageError(f"--enable and --disable both name {', '.join(both)}")
    runner = executor_for(executor, address)
    # Read before anything is scored or written: a bad file found after the findings were
    # replaced left findings and incidents disagreeing (and --dry-run checks it too).
    from detector.delivery.run import check_sinks, suppressions_for

    suppressing = suppressions_for(suppressions)
    if deliver and not dry_run:
        check_sinks(configured_sinks(ctx, output))
    model = None
    if not no_model and not fit_on_window:
        try:
            model = Model.load(model_dir)
        except ModelNotFound:
            raise UsageError(
                f"no model in {model_dir}: train one with `detect train --lake {lake} "
                "--since 14d` (or score with --fit-on-window or --no-model)"
            ) from None
    with chunk_progress("scoring") as progress:
        result = score_range(
            lake_to_read(lake, cluster),
            start,
            end,
            model=model,
            options=ScoreOptions(
                fit_on_window=fit_on_window,
                use_model=not no_model,
                use_rules=not no_rules,
                rule_files=tuple(rules or ()),
                enabled_rules=tuple(enable or ()),
                disabled_rules=tuple(disable or ()),
                seed=seed,
                cluster=cluster,
                strict=strict,
                write=not dry_run,
            ),
            progress=progress,
            executor=runner,
        )
    alerts = None if dry_run else _alerts(ctx, lake, result, suppressing, deliver)
    if output == OutputFormat.json:
        emit_json(
            {
                "since": result.start,
                "until": result.end,
                "windows": result.windows,
                "requests": result.requests,
                "model_version": result.model_version,
                "cold_start": result.cold_start,
                "rules": result.rules,
                "written": not dry_run,
                "incidents": alerts.to_dict() if alerts else None,
                "findings": findings_json(result.findings),
            }
        )
    else:
        hint = (
            None
            if dry_run
            else f"detect findings --lake {lake} --since {result.start:%Y-%m-%dT%H:%MZ}"
        )
        render_findings(result.findings, alerts_only=True, hint=hint)
        written = None if dry_run else lake
        stdout.print(summary_line(result, written, model_used=not no_model), markup=False)
        stdout.print(_alerts_line(alerts), markup=False)
    worst = int(result.findings["severity_rank"].max()) if len(result.findings) else -1
    if fail_on is not None and worst >= SEVERITIES.index(fail_on.value):
        raise typer.Exit(EXIT_FINDINGS)


def summary_line(result, lake: str | None, *, model_used: bool) -> str:  # type: ignore[no-untyped-def]
    """What was scored and by what: windows and requests only when the model counted them."""
    model = (
        f"{result.windows:,} principal windows, {result.requests:,} requests; model "
        f"{result.model_version}{' (cold start)' if result.cold_start else ''}"
        if model_used
        else "model not used"
    )
    return (
        f"{len(result.findings)} finding(s) in {result.start:%Y-%m-%d %H:%M}Z to "
        f"{result.end:%Y-%m-%d %H:%M}Z: {model}; {result.rules}; "
        + (f"written to {lake}/findings/" if lake else "not written (--dry-run)")
    )


def _alerts(
    ctx: typer.Context, lake: str, result: Any, suppressions: list[Any], deliver: bool
) -> Any:
    """Incidents, suppressions and delivery after the findings are written (docs/alerts.md)."""
    from detector.delivery.run import process
    from detector.lake.events import Lake

    return process(
        Lake(lake),
        result.findings,
        result.events,
        sink_configs=configured_sinks(ctx),
        suppressions=suppressions,
        deliver_alerts=deliver,
        rescored=result.rescored,
    )


def _alerts_line(alerts: Any) -> str:
    if alerts is None:
        return "incidents not updated, nothing delivered (--dry-run)"
    d = alerts.delivery
    sent = (
        f"; delivered {d['sent']} alert(s) ({d['new']} new, {d['updates']} updates"
        f"{digests_text(d)}), {d['throttled']} throttled, {d['failed']} failed"
        if d
        else ""
    )
    return (
        f"{alerts.incidents} incident(s) touched, {alerts.changed} changed, "
        f"{alerts.suppressed_findings} finding(s) suppressed{sent}"
    )


def register(app: typer.Typer) -> None:
    app.command("score")(score)
