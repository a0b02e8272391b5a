"""`detect watch`: follow CloudWatch, a local audit.log or a replay; alert as events arrive."""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer

from detector.cli.options import (
    DEFAULT_MODEL_DIR,
    EXIT_OK,
    POSITIVE,
    BackoffOpt,
    CloudWatchRateOpt,
    ClusterOpt,
    DeliverOpt,
    DisableOpt,
    Duration,
    LakeOpt,
    LeaseOpt,
    ModelDirOpt,
    RegionOpt,
    RulesFileOpt,
    SuppressionsOpt,
    configured_sinks,
    duration_option,
    instant_option,
    log_group_name,
    stop_on_signals,
)
from detector.errors import UsageError

log = logging.getLogger("detector.watch")


#: Replayed seconds per real second, at most: a day a second, already faster than any
#: replay runs (0 is flat out). An infinite speed made the replay's step infinite, and
#: the source failed and restarted forever.
MAX_SPEED = 86_400.0


def watch(
    ctx: typer.Context,
    log_group: Annotated[
        list[str] | None,
        typer.Option(
            "--log-group",
            parser=log_group_name,
            help="CloudWatch log group to follow (repeat for several), as `detect export`; "
            "in detect.toml: \\[watch] log_group = [...].",
            show_default=False,
        ),
    ] = None,
    tail: Annotated[
        list[str] | None,
        typer.Option(
            "--tail", help="Local audit.log an API server appends to (rotation followed)."
        ),
    ] = None,
    replay: Annotated[
        str | None,
        typer.Option(
            "--replay", help="Replay this audit log through the same path (no AWS needed)."
        ),
    ] = None,
    speed: Annotated[
        float,
        typer.Option(
            "--speed",
            min=0.0,
            max=MAX_SPEED,
            help="Replay: replayed seconds per real second (0: flat out).",
        ),
    ] = 60.0,
    step: Annotated[
        timedelta | None,
        duration_option(
            "--step",
            # a millisecond step replayed 7 events in a minute: each step costs a batch's
            # work whatever it holds (found by review)
            parser=Duration(minimum=timedelta(seconds=1)),
            help="Replay: replayed time per step, 1s at least (default --poll x --speed; "
            "flat out: 1m).",
            show_default=False,
        ),
    ] = None,
    once: Annotated[
        bool,
        typer.Option(
            "--once", help="Process what is available (a replay: all of it), then exit 0."
        ),
    ] = False,
    lake: LakeOpt = "./lake",
    cluster: ClusterOpt = None,
    model_dir: ModelDirOpt = DEFAULT_MODEL_DIR,
    no_model: Annotated[
        bool,
        typer.Option("--no-model", "--rules-only", help="Leave the model out: the rules alone."),
    ] = False,
    rules: RulesFileOpt = None,
    disable: DisableOpt = None,
    grace: Annotated[
        timedelta,
        duration_option(
            "--grace", help="Model: score a window this long after it closes (late events)."
        ),
    ] = "2m",  # type: ignore[assignment]
    poll: Annotated[
        timedelta,
        duration_option("--poll", parser=POSITIVE, help="Time between reads of each source."),
    ] = "5s",  # type: ignore[assignment]
    latency: Annotated[
        timedelta,
        duration_option(
            "--latency",
            help="CloudWatch: read up to this long before now; later arrivals are caught by "
            "--overlap.",
        ),
    ] = "1s",  # type: ignore[assignment]
    overlap: Annotated[
        timedelta | None,
        duration_option(
            "--overlap",
            help="CloudWatch: re-read this much behind the checkpoint (default: --grace).",
            show_default=False,
        ),
    ] = None,
    since: Annotated[
        datetime,
        instant_option(
            "--since", help="CloudWatch, first run only: where to start (then it resumes)."
        ),
    ] = "10m",  # type: ignore[assignment]
    lease: LeaseOpt = "3m",  # type: ignore[assignment]
    port: Annotated[
        int | None,
        typer.Option(
            "--port",
            min=0,
            max=65535,
            envvar="DETECT_WATCH_PORT",
            help="Serve /healthz, /readyz and /metrics on this port (0: any free port).",
            show_default=False,
        ),
    ] = None,
    status_every: Annotated[
        timedelta,
        duration_option(
            "--status-every", parser=POSITIVE, help="A one-line status on stderr (info level)."
        ),
    ] = "1m",  # type: ignore[assignment]
    model_check: Annotated[
        timedelta,
        duration_option(
            "--model-check",
            help="How often to look for a newly trained model and for edits to --rules files "
            "(both are picked up without a restart).",
        ),
    ] = "30s",  # type: ignore[assignment]
    rate: CloudWatchRateOpt = 5.0,
    suppressions: SuppressionsOpt = None,
    deliver: DeliverOpt = True,
    backoff: BackoffOpt = "0.5s",  # type: ignore[assignment]
    region: RegionOpt = None,
) -> None:
    """Detect as events arrive and alert within seconds, exactly once per incident version.

    Follows CloudWatch log groups with the code of `detect export --follow` (same
    checkpoint, lease and lake writes), a local audit.log (--tail) or a replayed file
    (--replay). Each batch, once durable in the lake, runs the rules over the windows it
    touched (the first event of a rule, principal and window opens a finding and alerts;
    later ones update it); the model scores each principal's window --grace after it
    closes. Incidents go to the sinks of detect.toml; what was sent is stored with the
    stream checkpoint, so a restart (even after SIGKILL) neither loses nor repeats an alert
    (an alert sent in the instant before a crash is re-sent with the same idempotency key).

    Two replicas on one log group: one leads, the other stands by (/readyz 503) and takes
    over when the leader's lease lapses. SIGTERM drains: flush, detect, deliver,
    checkpoint, exit 0. A newly trained model is picked up without a restart.

    Exit codes: 0 stopped cleanly or done; 2 bad arguments or configuration; 3 cannot
    start (another replica holds the source with --once, lake unreachable).

    Example:

    \b
        detect watch --replay audit.log --cluster demo --speed 60 --lake ./lake
        detect watch --log-group /aws/eks/prod/cluster --lake s3://audit-lake/prod --port 9102
    """
    from detector.delivery.run import suppressions_for
    from detector.delivery.stream import StreamAlerter
    from detector.detect.stream import ModelReloader, StreamDetector
    from detector.lake.events import Lake
    from detector.lake.state import Owner
    from detector.pipeline.export import ExportOptions
    from detector.pipeline.watch import (
        CloudWatchSource,
        ReplaySource,
        TailSource,
        Watcher,
        WatchOptions,
    )
    from detector.pipeline.watch_metrics import WatchMetrics
    from detector.sources.files import cluster_from_log_group
    from detector.sources.tail import check_tailable

    if region:
        from detector.config import apply_region

        apply_region(ctx, region)
    groups, tails = list(log_group or []), list(tail or [])
    if not groups and not tails and not replay:
        raise UsageError("nothing to watch: give --log-group, --tail or --replay")
    for path in tails:
        check_tailable(path)
    poll_s = poll.total_seconds()
    lease_s = lease.total_seconds()

    the_lake = Lake(lake)
    the_lake.require_root()  # a file as --lake: exit 3 and a state path, then (review)
    metrics = WatchMetrics()
    reloader = None
    if not no_model:
        reloader = ModelReloader(
            model_dir,
            every=model_check.total_seconds(),
            on_change=lambda m: metrics.set_model(m.version if m is not None else None),
        )
        reloader.check()
        if reloader.model is None and not reloader.refused:  # a refused one is said above
            log.warning("no model in %s yet: rules only until `detect train` writes one", model_dir)
    sinks = configured_sinks(ctx) if deliver else []
    # A sink secret that cannot be read (its URL variable unset) is an error now, not at
    # the first alert: that watch ran ready until an attack, then exited 2 on every
    # restart. Only the secrets: a receiver or STS down at start is retried like any
    # delivery, not the end of a long-running service.
    for cfg in sinks:
        if cfg.enabled:
            cfg.check_secrets()
    detector = StreamDetector(
        the_lake,
        model=reloader,
        rule_files=list(rules or []) or None,
        disabled_rules=list(disable or []) or None,
        grace=grace,
        rules_check=model_check.total_seconds(),
    )
    detector.check_rules()
    alerter = StreamAlerter(
        the_lake, detector, sinks, suppressions=suppressions_for(suppressions), metrics=metrics
    )

    stop = threading.Event()
    owner = Owner()
    factories: list[Any] = []
    for group in groups:
        name = cluster or cluster_from_log_group(group)
        if not name:
            raise UsageError(f"cannot tell the cluster from log group {group!r}: pass --cluster")
        opts = ExportOptions(
            log_group=group,
            cluster=name,
            latency=latency,
            overlap=overlap if overlap is not None else grace,
            chunk=timedelta(minutes=15),
            interval=timedelta(seconds=poll_s),
            flush_seconds=poll_s,
            rate=rate,
            backoff_base=backoff.total_seconds(),
            lease_seconds=lease_s,
        )
        factories.append(
            lambda o=opts: CloudWatchSource(
                the_lake, o, alerter.consume, metrics, since=since, owner=owner, stop=stop
            )
        )
    for path in tails:
        factories.append(
            lambda p=path: TailSource(
                the_lake,
                p,
                alerter.consume,
                metrics,
                cluster=cluster,
                lease_seconds=lease_s,
                owner=owner,
            )
        )
    if replay:
        factories.append(
            lambda: ReplaySource(
                the_lake,
                replay,
                alerter.consume,
                metrics,
                speed=0.0 if once else speed,
                step=step,
                poll=poll_s,
                cluster=cluster,
                tail=timedelta(minutes=10) + grace + timedelta(minutes=5),
                lease_seconds=lease_s,
                owner=owner,
                stop=stop,
            )
        )
    watcher = Watcher(
        factories,
        metrics,
        WatchOptions(
            poll=poll_s,
            once=once,
            port=port,
            status_every=status_every.total_seconds(),
        ),
        stop=stop,
        on_tick=(lambda: reloader()) if reloader is not None else None,
    )
    received: list[int] = []
    started = datetime.now(UTC)
    with stop_on_signals(stop, received):
        watcher.run()  # a DetectError is one line and its exit code, from the entry point
    seconds = (datetime.now(UTC) - started).total_seconds()
    log.info("%s", metrics.status_line())
    typer.echo(
        f"watch stopped{' by ' + _signame(received[0]) if received else ''} after {seconds:.1f}s: "
        f"{metrics.totals['events']} events, "
        f"{metrics.alerts_text()}{metrics.totals['quarantined']} quarantined",
        err=True,
    )
    raise typer.Exit(EXIT_OK)


def _signame(signum: int) -> str:
    import signal

    return signal.Signals(signum).name


def register(app: typer.Typer) -> None:
    """Add ``detect watch`` to the app."""
    app.command("watch")(watch)
