"""`detect demo`: the whole loop on generated data, no AWS needed."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer

from detector.cli.options import (
    MAX_SIM_DAYS,
    MAX_SIM_RATE,
    FormatOpt,
    OutputFormat,
    SeedOpt,
    check_sim_size,
    emit_json,
    progress_status,
    stderr,
    stdout,
)
from detector.cli.render import render_findings, render_incidents, short_principal, wide_console
from detector.errors import UsageError

DEMO_MARKER = "_state/demo.json"
DEMO_CLUSTER = "demo"
#: The model trains on every day but the last (the attacks' day): at least half a day.
MIN_DEMO_DAYS = 1.5
#: What the demo writes in --workdir: the only files of that folder it replaces.
DEMO_FILES = ("audit.log", "labels.json")
#: Written in the folders the demo owns (--workdir, --model-dir): it replaces files only
#: where this is (found by review: `--workdir /var/log/kubernetes` deleted the API
#: server's audit.log, and the default model folder was production's `models`).
OWNED_MARKER = ".detect-demo"
DEFAULT_WORKDIR = ".demo"


def demo(
    lake: Annotated[str, typer.Option("--lake", help="Local lake folder for the demo.")] = "./lake",
    workdir: Annotated[
        Path, typer.Option(help="Where the generated audit log and labels.json go.")
    ] = Path(DEFAULT_WORKDIR),
    days: Annotated[
        float,
        typer.Option(
            help="Days of traffic, ending now: the model trains on all but the last.",
            min=MIN_DEMO_DAYS,
            max=MAX_SIM_DAYS,
        ),
    ] = 4.0,
    rate: Annotated[
        float, typer.Option(help="Average events per second.", min=0.05, max=MAX_SIM_RATE)
    ] = 2.0,
    seed: SeedOpt = 7,
    model_dir: Annotated[  # not the shared --model-dir: DETECT_MODEL_DIR is production's
        str | None,
        typer.Option(
            "--model-dir",
            help="Where the demo model is saved. Default: WORKDIR/models.",
            show_default=False,
        ),
    ] = None,
    output: FormatOpt = OutputFormat.table,
) -> None:
    """Generate EKS audit traffic ending now, ingest it, train, and score the last day.

    Writes four days of simulated traffic (about 690,000 events) with ten labeled attacks
    in the last day to WORKDIR, ingests it into a fresh demo lake (a lake not made by the
    demo is never touched), prints what is in the lake, trains the model on the three days
    before the last and prints the alerts of the last day, the last hour's included. A
    model trained on less (--days 2) or on sparser traffic (--rate 1) raises more alerts
    on benign principals: it has seen less of what each one does.

    Exit codes: 0 done, 2 bad arguments (or a lake or folder the demo did not
    make), 3 a write failed.

    Example:

    \b
        detect demo
        detect findings --lake ./lake --since 1d
    """
    from detector.lake.events import Lake
    from detector.lake.overview import lake_overview
    from detector.pipeline.ingest import ingest_paths
    from detector.simulate import write_simulation

    check_sim_size(days, rate)
    root = Path(lake)
    if not lake.strip():
        raise UsageError("--lake must name a folder, not be empty")
    if "://" in lake:  # `s3://b/x` made a local folder `s3:/b/x` (found by review)
        raise UsageError(f"--lake {lake}: the demo writes a local folder, not a URI")
    if model_dir is not None and not model_dir.strip():
        raise UsageError("--model-dir must name a folder, not be empty")
    models = Path(model_dir) if model_dir is not None else workdir / "models"
    for path, flag in ((root, "--lake"), (workdir, "--workdir"), (models, "--model-dir")):
        if path.exists() and not path.is_dir():
            raise UsageError(f"{flag} {path}: a file, not a folder")
    if root.exists() and any(root.iterdir()) and not (root / DEMO_MARKER).exists():
        raise UsageError(
            f"{lake} holds a lake the demo did not make; pass --lake to a new folder "
            "(the demo replaces its own lake each run)"
        )
    _own(workdir, "--workdir", DEMO_FILES)
    _own(models, "--model-dir", ("model.json",))
    shutil.rmtree(root, ignore_errors=True)
    for name in DEMO_FILES:  # the folder may hold anything else: only the demo's files go
        (workdir / name).unlink(missing_ok=True)
    (root / "_state").mkdir(parents=True)
    (root / DEMO_MARKER).write_text('{"made_by": "detect demo"}\n')
    for folder in (workdir, models):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / OWNED_MARKER).write_text("made by detect demo: it replaces its files here\n")

    end = datetime.now(UTC).replace(second=0, microsecond=0)
    with progress_status("generating traffic"):
        sim = write_simulation(
            workdir, days=days, rate=rate, seed=seed, end=end, cluster=DEMO_CLUSTER
        )
    say(
        output,
        f"1/4 simulated {sim.events:,} events, {sim.scenarios} labeled attacks "
        f"-> {workdir}/audit.log, {workdir}/labels.json",
    )

    with progress_status("ingesting"):
        summary = ingest_paths([str(workdir / "audit.log")], lake, cluster=DEMO_CLUSTER)
    say(
        output,
        f"2/4 ingested into {lake}: {summary.events_written:,} events, "
        f"{summary.quarantined} quarantined, {summary.seconds:.1f}s",
    )
    lake_obj = Lake(lake)
    overview = lake_overview(lake_obj)
    if output == OutputFormat.table:
        render_overview(overview)

    report: dict = {"simulation": sim.as_dict(), "ingest": summary.to_dict(), "lake": overview}
    report.update(train_and_score(lake_obj, sim.start, end, model_dir=str(models), output=output))
    report["report"] = write_demo_report(lake_obj, end, workdir)
    say(output, f"report of the last day -> {report['report']}")
    if output == OutputFormat.json:
        emit_json(report)
    else:
        stdout.print(
            f"\nnext: open {report['report']}    detect findings --lake {lake} --since 1d    "
            f"detect score --lake {lake} --model-dir {models} --since 1h    "
            f"detect evaluate --lake {lake} --labels {workdir}/labels.json "
            f"--train-until {(end - timedelta(days=1)):%Y-%m-%dT%H:%M}Z",
            markup=False,
        )


def _own(folder: Path, flag: str, replaced: tuple[str, ...]) -> None:
    """Refuse a folder holding a file the demo would replace but did not write.

    The default `.demo`, written by the demo before it left this marker, with the
    simulator's `labels.json`, is its own too. Only that folder: any other holding the
    simulator's labels is the output of `detect simulate`, a dataset someone keeps for
    `detect evaluate`, which the demo replaced (found by review)."""
    if (folder / OWNED_MARKER).exists() or not any((folder / n).exists() for n in replaced):
        return
    legacy = folder.resolve() == (Path.cwd() / DEFAULT_WORKDIR).resolve()
    if flag == "--workdir" and legacy and _demo_labels(folder / "labels.json"):
        return
    raise UsageError(
        f"{flag} {folder} holds {', '.join(n for n in replaced if (folder / n).exists())} "
        "that the demo did not write: pass a folder of the demo's own"
    )


def _demo_labels(path: Path) -> bool:
    """Whether ``path`` is a labels.json the simulator wrote."""
    import json

    from detector.userfiles import read_user_bytes

    try:  # bounded: a labels.json that is /dev/zero (a link) is no labels file
        doc = json.loads(read_user_bytes(path))
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(doc, dict) and "scenarios" in doc and "seed" in doc


def write_demo_report(lake, end: datetime, workdir: Path) -> str:  # type: ignore[no-untyped-def]
    """The HTML report of the scored day (the day before is its baseline), in WORKDIR."""
    from detector.report.data import collect
    from detector.report.html import write_report

    with progress_status("writing the report"):
        data = collect(lake, end - timedelta(days=1), end, baseline=timedelta(days=1))
        return str(write_report(data, workdir / "report.html").resolve())


def say(output: OutputFormat, message: str) -> None:
    """Step lines: on stdout for people, on stderr when stdout carries JSON."""
    (stdout if output == OutputFormat.table else stderr).print(message, markup=False)


def render_overview(overview: dict, *, shown_hours: int = 12) -> None:
    """Events per hour (the last ``shown_hours``), top principals, quarantined lines."""
    from rich.table import Table

    hours = overview["events_per_hour"]
    shown = hours[-shown_hours:]
    peak = max((h["events"] for h in shown), default=1)
    stdout.print(
        f"\nlake: {overview['events']:,} events over {len(hours)} hours; "
        f"events per hour, the last {len(shown)}:",
        markup=False,
    )
    for h in shown:
        bar = "#" * max(1, round(40 * h["events"] / peak))
        stdout.print(f"  {h['hour']:%Y-%m-%d %H:00}  {h['events']:>7,}  {bar}", markup=False)
    table = Table(title="top principals", title_justify="left")
    table.add_column("principal", no_wrap=True)
    table.add_column("kind", no_wrap=True)
    table.add_column("events", justify="right")
    for row in overview["top_principals"]:
        table.add_row(
            short_principal(row["principal"]), row["principal_kind"], f"{row['events']:,}"
        )
    wide_console().print(table)
    lines = sum(q["lines"] for q in overview["quarantined"])
    stdout.print(f"quarantined lines: {lines}", markup=False)


def train_and_score(
    lake,  # type: ignore[no-untyped-def]
    start: datetime,
    end: datetime,
    *,
    model_dir: str,
    output: OutputFormat,
) -> dict:
    """Train on the days before the last, score the last as the hourly job would; show alerts.

    The simulator puts its attacks in the last day, so the model learns the cluster from
    the days before them (as it would have in production) and the alerts show what the
    hourly ``detect score --since 1h`` runs of that day raised, the last hour included.
    """
    import polars as pl

    from detector.delivery.run import process, suppressions_for
    from detector.detect.score import score_range
    from detector.detect.train import ScoringError, train_model
    from detector.lake.findings import sort_findings
    from detector.lake.incidents import incidents_overlapping

    day_start = end - timedelta(days=1)
    with progress_status("training"):
        try:
            model = train_model(lake, start, day_start, model_dir=model_dir)
        except ScoringError as exc:  # its advice names train's flags, not the demo's
            raise UsageError(
                f"the demo cannot train on {start:%Y-%m-%d %H:%M} to {day_start:%Y-%m-%d %H:%M} "
                f"UTC: {str(exc).split(':')[0]}; raise --days or --rate"
            ) from None
    card = model.card or {}
    say(
        output,
        f"3/4 trained the model on {start:%Y-%m-%d %H:%M} to {day_start:%Y-%m-%d %H:%M} UTC "
        f"(the days before the attacks) -> {model_dir}/ (version {card.get('model_version', '?')})",
    )
    with progress_status("scoring the last day"):
        result = score_range(lake, day_start, end, model=model)
    findings = sort_findings(result.findings)
    alerts = findings.filter(pl.col("severity") != "info")
    last_hour = alerts.filter(pl.col("window_end") > end - timedelta(hours=1))
    say(
        output,
        f"4/4 scored the last day (model and {result.rules}): {alerts.height} alert(s), "
        f"{last_hour.height} in the last hour; findings -> {lake.uri}/findings/",
    )
    # What reaches people: the findings of one principal grouped into incidents, as
    # `detect score` does before delivery (no sinks in the demo: nothing leaves the machine).
    process(
        lake,
        result.findings,
        result.events,
        suppressions=suppressions_for(None),
        deliver_alerts=False,
    )
    incidents = (
        incidents_overlapping(lake, day_start, end)
        .filter(pl.col("severity") != "info")
        .sort(["severity_rank", "last_seen"], descending=[True, True])
    )
    say(
        output,
        f"   {incidents.height} incident(s) group those alerts by principal: what a sink "
        "(Slack, webhook, SNS, EventBridge, Security Hub, OCSF) would receive",
    )
    if output == OutputFormat.table:
        render_incidents(incidents, title="incidents, last day")
        render_findings(
            findings,
            title="alerts, last day",
            alerts_only=True,
            hint=f"detect findings --lake {lake.uri} --since 1d",
        )
    return {
        "model_version": card.get("model_version"),
        "findings": findings.to_dicts(),
        "incidents": incidents.drop("timeline").to_dicts(),
        "alerts_last_hour": last_hour.height,
    }


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
