"""`detect train`: fit the anomaly model on a baseline range of the lake."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer

from detector.cli.options import (
    DEFAULT_ALERT_RATE,
    DEFAULT_MODEL_DIR,
    AddressOpt,
    AlertRateOpt,
    ClusterOpt,
    ExecutorName,
    ExecutorOpt,
    FormatOpt,
    LakeOpt,
    ModelDirOpt,
    OutputFormat,
    SeedOpt,
    SinceOpt,
    UntilOpt,
    WindowOpt,
    chunk_progress,
    emit_json,
    executor_for,
    lake_to_read,
    stdout,
    time_range,
)

__all__ = ["DEFAULT_ALERT_RATE", "DEFAULT_MODEL_DIR", "train"]


class ThresholdMethod(StrEnum):
    budget = "budget"
    sigma = "sigma"


def train(
    lake: LakeOpt = "./lake",
    since: SinceOpt = "14d",  # type: ignore[assignment]
    until: UntilOpt = None,
    model_dir: ModelDirOpt = DEFAULT_MODEL_DIR,
    window: WindowOpt = "10m",  # type: ignore[assignment]
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

    The baseline (--since to --until) should be a period of normal activity (two weeks by
    default). Features are computed per principal and window; the principals' own history
    (IPs, user agents, namespaces, resources, hours of activity, typical volumes) is saved
    with the model so that `detect score` can tell what is new for each of them. The alert
    threshold is set so that about --alert-rate of the baseline windows would have been
    flagged.

    Writes MODEL_DIR/model.json (the model card) and the files it names.

    Exit codes: 0 trained, 2 bad arguments or too little data, 3 storage failure.

    Example:

    \b
        detect train --lake ./lake --since 14d --model-dir models
        detect train --lake s3://audit/lake --since 14d --executor ray
    """
    from detector.detect.train import train_model
    from detector.storage import require_bucket

    start, end = time_range(
        since,
        until,
        future_end="the model card would record it as the training end, which the "
        "staleness check and the novelty memory start from",
    )
    require_bucket(model_dir, "--model-dir")  # before the fit, not after it
    runner = executor_for(executor, address)
    with chunk_progress("training") as progress:
        model = train_model(
            lake_to_read(lake, cluster),
            start,
            end,
            model_dir=model_dir,
            window=window,
            alert_rate=alert_rate,
            seed=seed,
            threshold_method=threshold.value,
            cluster=cluster,
            strict=strict,
            progress=progress,
            executor=runner,
        )
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
