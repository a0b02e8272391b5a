"""`detect train`: fit the anomaly model on a baseline range of the lake."""

from __future__ import annotations

from datetime import timedelta
from enum import StrEnum
from typing import Annotated

import typer

from detector.cli.options import (
    EXIT_USAGE,
    AddressOpt,
    ClusterOpt,
    ExecutorName,
    ExecutorOpt,
    FormatOpt,
    LakeOpt,
    OutputFormat,
    chunk_progress,
    emit_json,
    executor_for,
    fail,
    stdout,
    usage_error,
)
from detector.storage import StorageError
from detector.timeparse import TimeArgumentError, parse_duration, parse_range

# The same values as detector.model.estimator's; repeated so that `detect --help` does not import
# scikit-learn (seconds). tests/test_model.py keeps them in step.
DEFAULT_ALERT_RATE = 0.001
DEFAULT_MODEL_DIR = "models"

ModelDirOpt = Annotated[
    str,
    typer.Option(
        "--model-dir",
        envvar="DETECT_MODEL_DIR",
        help="Model store: a local folder or s3://bucket/prefix.",
    ),
]
WindowOpt = Annotated[
    str,
    typer.Option("--window", help="Feature window per principal (1m to 1d), e.g. 10m, 1h."),
]
AlertRateOpt = Annotated[
    float,
    typer.Option(
        "--alert-rate",
        help="Alert budget: share of baseline windows above the threshold (0.001 = 1 in 1000).",
    ),
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed: same data + seed, same model.")]


class ThresholdMethod(StrEnum):
    budget = "budget"
    sigma = "sigma"


def parse_window(text: str) -> timedelta:
    """``--window`` as a timedelta, or a usage error."""
    try:
        window = parse_duration(text)
    except TimeArgumentError as exc:
        usage_error(str(exc))
    seconds = window.total_seconds()
    if seconds != int(seconds) or not 60 <= seconds <= 86_400:
        usage_error(f"--window must be whole seconds between 1m and 1d, not {text!r}")
    return window


def train(
    lake: LakeOpt = "./lake",
    since: Annotated[
        str,
        typer.Option(
            "--since", help="Start of the baseline: a duration before now (14d) or ISO-8601."
        ),
    ] = "14d",
    until: Annotated[
        str | None,
        typer.Option("--until", help="End of the baseline (exclusive), same forms; default now."),
    ] = None,
    model_dir: ModelDirOpt = DEFAULT_MODEL_DIR,
    window: WindowOpt = "10m",
    alert_rate: AlertRateOpt = DEFAULT_ALERT_RATE,
    threshold: Annotated[
        ThresholdMethod,
        typer.Option(
            "--threshold",
            help="budget: the --alert-rate quantile of baseline scores; sigma: mean + 3 sd.",
        ),
    ] = ThresholdMethod.budget,
    seed: SeedOpt = 0,
    cluster: ClusterOpt = None,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict", help="Refuse (exit 2) rather than warn when the baseline is thin."
        ),
    ] = False,
    output: FormatOpt = OutputFormat.table,
    executor: ExecutorOpt = ExecutorName.local,
    address: AddressOpt = None,
) -> None:
    """Fit the anomaly model on a baseline range of the lake and save it with a model card.

    The baseline should be a period of normal activity (two weeks by default). Features are
    computed per principal and window; the principals' own history (IPs, user agents,
    namespaces, resources, hours of activity, typical volumes) is saved with the model so
    that `detect score` can tell what is new for each of them. The alert threshold is set so
    that about --alert-rate of the baseline windows would have been flagged.

    Writes MODEL_DIR/model.json (the model card) and the files it names.

    Exit codes: 0 trained, 2 bad arguments or too little data, 3 storage failure.

    Example:

    \b
        detect train --lake ./lake --since 14d --model-dir models
        detect train --lake s3://audit/lake --since 14d --executor ray
    """
    from detector.detect.train import ScoringError, train_model
    from detector.lake.events import Lake

    win = parse_window(window)
    if not 0 < alert_rate < 0.5:
        usage_error(f"--alert-rate must be between 0 and 0.5, not {alert_rate}")
    try:
        start, end = parse_range(since, until)
    except TimeArgumentError as exc:
        usage_error(str(exc))
    runner = executor_for(executor, address)
    try:
        with chunk_progress("training") as progress:
            model = train_model(
                Lake(lake),
                start,
                end,
                model_dir=model_dir,
                window=win,
                alert_rate=alert_rate,
                seed=seed,
                threshold_method=threshold.value,
                cluster=cluster,
                strict=strict,
                progress=progress,
                executor=runner,
            )
    except ScoringError as exc:
        fail(str(exc), EXIT_USAGE)
    except StorageError as exc:
        fail(str(exc))
    card = model.card
    if output == OutputFormat.json:
        emit_json(card)
        return
    t = card["training"]
    stdout.print(
        f"trained model {card['model_version']} on {t['rows_fit']:,} windows "
        f"({t['principals']:,} principals, {t['requests']:,} requests, "
        f"{t['since']} to {t['until']}); threshold {card['threshold']:.4f} "
        f"({card['threshold_method']}); saved to {model_dir}",
        markup=False,
    )


def register(app: typer.Typer) -> None:
    app.command("train")(train)
