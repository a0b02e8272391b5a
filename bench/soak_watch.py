"""Soak `detect watch` under SIGKILLs at random moments: nothing lost, duplicated or missed.

The tests kill `detect watch` at chosen moments (tests/test_watch.py); this kills it where
the clock says, as an evicted pod or an OOM kill would, while audit events keep arriving:

1. `detect simulate` writes a few hours of traffic with its planted attacks;
2. a writer appends them to a file (``--source tail``; writes sometimes cut a line in
   two) or puts them into a CloudWatch log group on moto's server (``--source
   cloudwatch``, the lake then on moto's S3), at ``--rate`` lines a second;
3. `detect watch` runs (``--replicas`` copies, which share the source by lease), one copy
   is SIGKILLed after a seeded random 1.5 to 12 s and started again, ``--kills`` times;
   then, the writer done, the copies get SIGTERM and one ``--once`` run drains the rest
   (``--kills 0``, the control: they run for the whole feed); with ``--compact-every S``,
   `detect compact` runs every S seconds meanwhile, half its runs SIGKILLed at random;
4. a clean run (`detect watch --tail --once` over the same lines, no kill, nothing sent)
   is the reference.

Checks (exit 1 when one fails): every line is in the lake once (audit ID and stage) and
nothing is quarantined; the findings (ids and event counts) and incidents (ids, severity,
findings) are the clean run's; each incident at or above the sink's severity reached the
webhook at its final version; a key arrives twice only as the re-send of a crash between
the webhook's answer and the checkpoint (at most one per kill).

Run: ``python bench/soak_watch.py [--source tail|cloudwatch] [--kills 15] [--seed 1]``.
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

import orjson
import polars as pl
from bench_watch import Hook, start_moto

DETECT = Path(sys.executable).parent / "detect"
GROUP = "/aws/eks/soak/cluster"
STREAMS = ("kube-apiserver-audit-a", "kube-apiserver-audit-b")
SINKS = '[[sinks]]\nname = "hook"\ntype = "webhook"\nurl_env = "SOAK_HOOK_URL"\nthrottle = "0s"\n'


def _append(lines: list[bytes], path: Path, rate: float, rng: random.Random) -> None:
    """Append ``lines`` to ``path`` at ``rate`` a second; a third of the writes cut a line."""
    with path.open("ab", buffering=0) as fh:
        i = 0
        while i < len(lines):
            n = rng.randint(1, max(1, int(rate // 5)))
            chunk = b"".join(lines[i : i + n])
            i += n
            if rng.random() < 0.3 and len(chunk) > 10:
                cut = rng.randint(1, len(chunk) - 1)
                fh.write(chunk[:cut])
                time.sleep(0.05)
                fh.write(chunk[cut:])
            else:
                fh.write(chunk)
            time.sleep(n / rate)


def _put(lines: list[bytes], endpoint: str, rate: float, rng: random.Random) -> None:
    """Put ``lines`` into the log group at ``rate`` a second, timestamped now, two streams."""
    import boto3

    logs = boto3.client("logs", endpoint_url=endpoint)
    i = 0
    while i < len(lines):
        n = rng.randint(50, 600)
        now = int(time.time() * 1000)
        events = [{"timestamp": now, "message": m.decode().rstrip("\n")} for m in lines[i : i + n]]
        logs.put_log_events(
            logGroupName=GROUP, logStreamName=STREAMS[rng.randrange(2)], logEvents=events
        )
        i += n
        time.sleep(n / rate)


def _watch_args(source: str, work: Path, lake: str) -> list[str]:
    common = ["--lake", lake, "--cluster", "soak", "--no-model", "--poll", "1s"]
    if source == "tail":
        return ["watch", "--tail", str(work / "audit.log"), *common]
    return ["watch", "--log-group", GROUP, *common, "--latency", "2s", "--rate", "0",
            "--since", "10m", "--lease", "5s"]  # fmt: skip


def _run_and_kill(
    command: list[str],
    env: dict[str, str],
    log: IO[bytes],
    args: argparse.Namespace,
    rng: random.Random,
    writer: threading.Thread,
) -> None:
    """``--replicas`` copies of `detect watch`; every seeded 1.5 to 12 s one of them, at
    random, is SIGKILLed and started again, ``--kills`` times. With ``--kills 0`` (the
    control) they run for the whole feed and stop on SIGTERM."""
    start = lambda: subprocess.Popen(command, env=env, stdout=log, stderr=log)  # noqa: E731
    procs = [start() for _ in range(args.replicas)]
    try:
        for _ in range(args.kills):
            time.sleep(rng.uniform(1.5, 12))
            k = rng.randrange(len(procs))
            procs[k].send_signal(signal.SIGKILL)
            procs[k].wait()
            procs[k] = start()
        if not args.kills:
            writer.join()
            time.sleep(5)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=600)


def _compact(
    lake: str, env: dict[str, str], args: argparse.Namespace, stop: threading.Event, work: Path
) -> None:
    """`detect compact` every ``--compact-every`` seconds while watch writes, half of the
    runs SIGKILLed at a random moment (a compaction is atomic and idempotent)."""
    rng = random.Random(args.seed + 1)
    command = [str(DETECT), "compact", "--lake", lake, "--grace", "30s"]
    with (work / "compact.log").open("ab") as log:
        while not stop.wait(args.compact_every):
            proc = subprocess.Popen(command, env=env, stdout=log, stderr=log)
            try:
                proc.wait(timeout=rng.uniform(0.2, 3) if rng.random() < 0.5 else 600)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()


def _lake_state(lake_uri: str) -> dict:
    """Events (audit ID, stage) with their counts, quarantine rows, findings, incidents."""

    from detector.lake.events import Lake
    from detector.lake.findings import list_findings, scan_dates
    from detector.lake.incidents import incidents_table, read_incidents

    lake = Lake(lake_uri)
    far = datetime(1970, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)
    events = lake.scan_events(*far).select("audit_id", "stage").collect()
    findings = list_findings(lake).select("finding_id", "event_count").sort("finding_id")
    # Compared by what they hold, not by id: an incident's id comes from the finding that
    # opened it, and which of a window's findings comes first depends on where the reads
    # cut the stream (killed or not), not on what was found.
    # An incident every finding of which was withdrawn (a window scored on part of its
    # events found something the whole window did not) is kept, resolved, for history; where
    # the reads were cut decides whether one exists, so they are counted, not compared.
    stored = read_incidents(lake)
    # Readers keep one row per incident; the table itself should hold one too.
    rows = scan_dates(incidents_table(lake), None, None).select(pl.len()).collect().item()
    held = pl.col("finding_ids").list.len() > 0
    incidents = stored.filter(held).select(
        "key_kind", "key", "first_seen", "last_seen", "severity", pl.col("finding_ids").list.sort()
    )
    # Findings an incident names that the findings table no longer holds (a re-scored
    # window lost them), with what the incident's timeline says of them.
    known = findings["finding_id"].implode()
    dangling = (
        read_incidents(lake)
        .select("incident_id", "timeline")
        .explode("timeline")
        .unnest("timeline")
        .filter(~pl.col("finding_id").is_in(known))
    )
    return {
        "dangling": dangling,
        "events": collections.Counter(events.iter_rows()),
        "quarantined": lake.scan_quarantine().select(pl.len()).collect().item(),
        "findings": findings,
        "incidents": incidents.sort("key_kind", "key", "first_seen"),
        "emptied": stored.filter(~held).height,
        "filed_twice": rows - stored.height,
        "delivery": stored.select("incident_id", "version", "severity", "status"),
    }


def soak(args: argparse.Namespace) -> int:
    work = Path(args.workdir or tempfile.mkdtemp(prefix="soak-watch-"))
    rng = random.Random(args.seed)
    sim = work / "sim"
    subprocess.run(
        [str(DETECT), "simulate", "--out", str(sim), "--days", str(args.days), "--rate", "10",
         "--seed", str(args.seed), "--cluster", "soak"],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    lines = (sim / "audit.log").read_bytes().splitlines(keepends=True)[: args.events]
    hook = Hook()
    (work / "detect.toml").write_text(SINKS)
    env = {**os.environ, "SOAK_HOOK_URL": hook.url, "DETECT_CONFIG": str(work / "detect.toml")}
    moto = None
    lake = str(work / "lake")
    if args.source == "cloudwatch":
        import boto3

        moto, endpoint = start_moto()
        env.update({k: v for k, v in os.environ.items() if k.startswith("AWS_")})
        for _ in range(100):
            try:
                boto3.client("s3").create_bucket(Bucket="soak")
                break
            except Exception:  # the server is still starting
                time.sleep(0.1)
        logs = boto3.client("logs")
        logs.create_log_group(logGroupName=GROUP)
        for stream in STREAMS:
            logs.create_log_stream(logGroupName=GROUP, logStreamName=stream)
        lake = "s3://soak/lake"
        writer = threading.Thread(target=_put, args=(lines, endpoint, args.rate, rng))
    else:
        (work / "audit.log").touch()
        writer = threading.Thread(target=_append, args=(lines, work / "audit.log", args.rate, rng))
    stop = threading.Event()
    compactor = threading.Thread(target=_compact, args=(lake, env, args, stop, work))
    try:
        writer.start()
        if args.compact_every:
            compactor.start()
        command = [str(DETECT), *_watch_args(args.source, work, lake)]
        with (work / "watch.log").open("ab") as log:
            _run_and_kill(command, env, log, args, rng, writer)
            stop.set()
            if args.compact_every:
                compactor.join()
            writer.join()
            drain = [*command, "--once"] + (["--latency", "0s"] if args.source != "tail" else [])
            subprocess.run(drain, env=env, stdout=log, stderr=log, check=True, timeout=600)
        got = _lake_state(lake)
        # The killed run's findings, for whoever reads a failed run (moto's lake goes with it).
        list_findings_all(lake).write_parquet(work / "killed-findings.parquet")
    finally:
        if moto is not None:
            moto.terminate()
    (work / "clean").mkdir(exist_ok=True)
    (work / "clean" / "audit.log").write_bytes(b"".join(lines))
    clean_lake = str(work / "clean" / "lake")
    subprocess.run(
        [str(DETECT), *_watch_args("tail", work / "clean", clean_lake), "--once", "--no-deliver"],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    want = _lake_state(clean_lake)
    return _report(args, lines, got, want, hook)


def list_findings_all(lake_uri: str) -> pl.DataFrame:
    """Every finding in the lake, info included, with the columns that tell them apart."""
    from detector.lake.events import Lake
    from detector.lake.findings import list_findings

    return list_findings(Lake(lake_uri), min_severity="info").select(
        "finding_id", "detector", "principal", "window_start", "event_count", "audit_ids"
    )


def _report(args: argparse.Namespace, lines: list[bytes], got: dict, want: dict, hook: Hook) -> int:
    fed = collections.Counter(
        (d["auditID"], d["stage"]) for d in (orjson.loads(line) for line in lines)
    )
    stored = got["events"]
    missing = sum(1 for k in fed if k not in stored)
    extra = sum(1 for k in stored if k not in fed)
    twice = sum(1 for v in stored.values() if v > 1)
    keys = collections.Counter(
        body["output_fields"]["detect.idempotency_key"] for _, body in hook.got
    )
    delivered: dict[str, int] = {}
    for key in keys:
        incident, version = key.rsplit(":v", 1)
        delivered[incident] = max(delivered.get(incident, 0), int(version))
    due = got["delivery"].filter(got["delivery"]["severity"] != "info")
    # A resolved incident no sink was told of is not sent (nothing to close).
    stale = [
        r["incident_id"] for r in due.iter_rows(named=True)
        if delivered.get(r["incident_id"]) != r["version"]
        and not (r["status"] == "resolved" and r["incident_id"] not in delivered)
    ]  # fmt: skip
    repeats = sum(n - 1 for n in keys.values())
    same_findings = got["findings"].equals(want["findings"])
    same_incidents = got["incidents"].equals(want["incidents"])
    print(
        f"{args.source}: {len(lines):,} lines, {args.replicas} replica(s), {args.kills} SIGKILLs "
        f"(seed {args.seed}): "
        f"lake {sum(stored.values()):,} rows, {missing} missing, {extra} unknown, {twice} "
        f"stored twice, {got['quarantined']} quarantined; findings {got['findings'].height} "
        f"({'same as' if same_findings else 'NOT the same as'} the clean run's), incidents "
        f"{got['incidents'].height} ({'same' if same_incidents else 'NOT the same'}; "
        f"{got['emptied']} emptied by withdrawals, {want['emptied']} in the clean run, "
        f"{got['filed_twice']} filed twice); "
        f"{sum(keys.values())} alerts, {len(keys)} keys, {repeats} re-sent, {len(stale)} "
        "incidents whose final version was not delivered"
    )
    for row in got["dangling"].iter_rows(named=True):
        print("  an incident names a finding the lake no longer holds:", row)
    if not same_findings:
        a, b = got["findings"], want["findings"]
        print("findings only in the killed run:", a.join(b, on=a.columns, how="anti").rows())
        print("findings only in the clean run:", b.join(a, on=a.columns, how="anti").rows())
    if not same_incidents:  # what differs, for whoever has to find out why
        shown = [pl.col("finding_ids").list.join(" ")]
        a = got["incidents"].with_columns(shown)
        b = want["incidents"].with_columns(shown)
        for name, df in (("killed", a.join(b, on=a.columns, how="anti")),
                         ("clean", b.join(a, on=a.columns, how="anti"))):  # fmt: skip
            print(f"only in the {name} run:")
            for row in df.iter_rows(named=True):
                print(" ", row)
    ok = (
        not (missing or extra or twice or got["quarantined"] or stale)
        and got["dangling"].is_empty()
        and not got["filed_twice"]
        and same_findings
        and same_incidents
        and repeats <= args.kills
    )
    return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", choices=["tail", "cloudwatch"], default="tail")
    parser.add_argument("--kills", type=int, default=15)
    parser.add_argument("--replicas", type=int, default=1, help="watch processes at once")
    parser.add_argument(
        "--compact-every", type=float, default=0, help="run `detect compact` this often (s)"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--days", type=float, default=0.25, help="simulated traffic")
    parser.add_argument("--events", type=int, default=None, help="the first N lines only")
    parser.add_argument("--rate", type=float, default=3000.0, help="lines a second")
    parser.add_argument("--workdir", default=None)
    sys.exit(soak(parser.parse_args()))
