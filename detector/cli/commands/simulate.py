"""`detect simulate`: synthetic EKS audit traffic with labeled attacks, to files."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from detector.cli.options import (
    MAX_SEED,
    MAX_SIM_DAYS,
    MAX_SIM_RATE,
    FormatOpt,
    InputFormat,
    OutputFormat,
    check_sim_size,
    cluster_name,
    emit_json,
    instant_option,
    output_folder,
    progress_status,
    stdout,
)
from detector.errors import UsageError


def simulate(
    out: Annotated[
        Path,
        typer.Option("--out", parser=output_folder, help="Folder to write into (created)."),
    ],
    days: Annotated[
        float, typer.Option(help="Length of the traffic, in days.", min=0.05, max=MAX_SIM_DAYS)
    ] = 2.0,
    rate: Annotated[
        float,
        typer.Option(
            help="Average events per second over the whole range.", min=0.01, max=MAX_SIM_RATE
        ),
    ] = 2.0,
    seed: Annotated[
        int, typer.Option(min=0, max=MAX_SEED, help="Random seed: same seed, same bytes.")
    ] = 0,
    end: Annotated[
        datetime | None,
        instant_option("--end", help="End of the traffic (default now)."),
    ] = None,
    cluster: Annotated[  # checked as ingest checks it: it becomes file and log group names
        str,
        typer.Option(parser=cluster_name, help="Cluster name (log group /aws/eks/NAME/cluster)."),
    ] = "demo",
    input_formats: Annotated[
        list[InputFormat] | None,
        typer.Option(
            "--as", help="Output format, one of the input formats (repeatable; default ndjson)."
        ),
    ] = None,
    gzip: Annotated[
        bool,
        typer.Option(
            "--gzip", help="Gzip the output (audit.log.gz, CloudWatch pages as .json.gz)."
        ),
    ] = False,
    output: FormatOpt = OutputFormat.table,
) -> None:
    """Write realistic EKS audit traffic plus labels.json (the attacks in it).

    Kubelets, controllers, eks:* components, service accounts, a GitOps controller, a CI
    role and engineers through shared IAM roles, with ten labeled attack scenarios in the
    last day (stolen token, cluster-admin binding, aws-auth edit, anonymous probing, exec
    into kube-system, webhook registration, permission enumeration, privileged workload,
    token minting, event deletion).

    Exit codes: 0 written, 2 bad arguments, 3 a write failed.

    Example:

    \b
        detect simulate --out ./sim --days 2 --rate 2 --seed 7
        detect ingest ./sim/audit.log --lake ./lake --cluster demo
    """
    from detector.simulate import FORMATS, write_simulation

    check_sim_size(days, rate, end)
    formats = [f.value for f in input_formats or [InputFormat.ndjson]]
    if InputFormat.auto.value in formats:
        raise UsageError(f"--as takes a format to write: {', '.join(FORMATS)}, not auto")
    with progress_status(f"simulating {days:g} day(s) at {rate:g} events/s"):
        summary = write_simulation(
            out,
            days=days,
            rate=rate,
            seed=seed,
            end=end,
            cluster=cluster,
            formats=formats,
            gzip=gzip,
        )
    if output == OutputFormat.json:
        emit_json(summary.as_dict())
        return
    stdout.print(
        f"wrote {summary.events:,} events ({summary.bytes_written / 1e6:,.1f} MB) and "
        f"{summary.scenarios} labeled attack scenarios to {out} in {summary.seconds:.1f}s "
        f"({summary.start:%Y-%m-%d %H:%M} to {summary.end:%Y-%m-%d %H:%M} UTC)",
        markup=False,
    )


def register(app: typer.Typer) -> None:
    app.command("simulate")(simulate)
