"""Airflow 3 DAGs for audit-detector (``airflow.sdk``): hourly export + score, daily retrain.

``audit_detector_hourly`` (every hour, for the hour that just closed):

    wait_for_cloudwatch  ->  export  ->  score

- ``wait_for_cloudwatch`` waits until ``data_interval_end`` + DETECT_SETTLE (default 5
  minutes), since CloudWatch Logs delivers events late; it reschedules itself, holding no
  worker slot.
- ``export`` runs ``detect export --since {{ data_interval_start }} --until
  {{ data_interval_end }}``. It then checks from detect's JSON summary that the whole
  interval was read; if not, the task fails and is retried (exponential backoff), and
  ``score`` (trigger rule all_success) does not run on a partial hour.
- ``score`` runs ``detect score`` over the same interval. Findings at or above
  ``--fail-on`` (Variable ``detect_score_args``, e.g. ``--fail-on high``) fail the task
  without retry, so the DAG's failure alerts fire.

``audit_detector_retrain`` (daily): ``detect train --since <end - baseline> --until <end>``
on a rolling baseline (Variable ``detect_baseline``, default 14d).

Both use the data interval, never "now": a backfill or a re-run of a past hour reads and
writes exactly that hour, and both steps are idempotent. Exit codes of detect: 2 (usage or
configuration error) fails at once, 3 (runtime: AWS or the lake unreachable) is retried.

Settings: an Airflow Variable wins, then the environment variable of the worker, then the
default. ``detect`` itself also reads DETECT_CONFIG (a detect.toml) for everything else.

================  ==================  ==================================================
Variable          environment         meaning
================  ==================  ==================================================
detect_bin        DETECT_BIN          the detect executable (default: detect on PATH); a
                                      venv of its own, so Airflow's pins and ours differ
detect_lake       DETECT_LAKE         the lake, s3://bucket/prefix (required)
detect_log_group  DETECT_LOG_GROUP    CloudWatch log group, /aws/eks/NAME/cluster
                                      (required for the hourly DAG)
detect_cluster    DETECT_CLUSTER      cluster name in the lake (default: from the group)
detect_model_dir  DETECT_MODEL_DIR    model store (local folder or s3://)
detect_region     DETECT_REGION       AWS region
detect_config     DETECT_CONFIG       path of a detect.toml on the worker
detect_aws_conn   DETECT_AWS_CONN     an Airflow connection (type aws): login/password
                                      are the access key, extra region_name and
                                      endpoint_url are honoured. Default: the worker's
                                      AWS chain (IRSA, instance profile)
detect_baseline   DETECT_BASELINE     retrain window, e.g. 14d (default), 336h, 2w
detect_score_args DETECT_SCORE_ARGS   extra flags for score, e.g. "--fail-on high"
detect_export_args DETECT_EXPORT_ARGS extra flags for export, e.g. "--rate 3"
================  ==================  ==================================================

Read when the DAG file is parsed, from the environment of the DAG processor: DETECT_SETTLE
(minutes after the end of an hour before its export starts, default 5), DETECT_RETRIES
(default 3) and DETECT_RETRY_DELAY (minutes before the first retry, default 2; it doubles
at each retry, up to 30).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import subprocess
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.providers.standard.sensors.time_delta import TimeDeltaSensor
from airflow.sdk import CronDataIntervalTimetable, dag, task

try:
    from airflow.sdk.exceptions import AirflowFailException
except ImportError:  # pragma: no cover - older task SDKs
    from airflow.exceptions import AirflowFailException

log = logging.getLogger(__name__)

#: setting -> (Airflow Variable, environment variable, default)
SETTINGS: dict[str, tuple[str, str, str | None]] = {
    "bin": ("detect_bin", "DETECT_BIN", "detect"),
    "lake": ("detect_lake", "DETECT_LAKE", None),
    "log_group": ("detect_log_group", "DETECT_LOG_GROUP", None),
    "cluster": ("detect_cluster", "DETECT_CLUSTER", None),
    "model_dir": ("detect_model_dir", "DETECT_MODEL_DIR", None),
    "region": ("detect_region", "DETECT_REGION", None),
    "config": ("detect_config", "DETECT_CONFIG", None),
    "aws_conn": ("detect_aws_conn", "DETECT_AWS_CONN", None),
    "baseline": ("detect_baseline", "DETECT_BASELINE", "14d"),
    "score_args": ("detect_score_args", "DETECT_SCORE_ARGS", ""),
    "export_args": ("detect_export_args", "DETECT_EXPORT_ARGS", ""),
}

#: How long after the end of an hour its export starts (CloudWatch ingestion delay).
SETTLE = timedelta(minutes=float(os.environ.get("DETECT_SETTLE", "5")))

EXIT_FINDINGS, EXIT_USAGE = 1, 2

#: Retries with exponential backoff: DETECT_RETRIES (default 3) tries after the first,
#: starting DETECT_RETRY_DELAY minutes (default 2) apart, at most 30 minutes.
DEFAULT_ARGS: dict[str, Any] = {
    "owner": "security",
    "retries": int(os.environ.get("DETECT_RETRIES", "3")),
    "retry_delay": timedelta(minutes=float(os.environ.get("DETECT_RETRY_DELAY", "2"))),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=30),
}


# ---------------------------------------------------------------------- helpers
def setting(name: str) -> str | None:
    """A setting at run time: Airflow Variable, else the worker's environment, else default."""
    from airflow.sdk import Variable

    variable, env, default = SETTINGS[name]
    value = Variable.get(variable, default=None)
    if value in (None, ""):
        value = os.environ.get(env) or default
    return value


def require(name: str) -> str:
    value = setting(name)
    if not value:
        variable, env, _ = SETTINGS[name]
        raise AirflowFailException(f"set the Airflow Variable {variable} or {env}")
    return value


def detect_env() -> dict[str, str]:
    """The environment of a detect run: the worker's, plus DETECT_* and AWS_* settings."""
    env = dict(os.environ)
    for name, var in (
        ("lake", "DETECT_LAKE"),
        ("log_group", "DETECT_LOG_GROUP"),
        ("cluster", "DETECT_CLUSTER"),
        ("model_dir", "DETECT_MODEL_DIR"),
        ("region", "DETECT_REGION"),
        ("config", "DETECT_CONFIG"),
    ):
        value = setting(name)
        if value:
            env[var] = value
    conn_id = setting("aws_conn")
    if conn_id:
        from airflow.sdk import BaseHook

        conn = BaseHook.get_connection(conn_id)
        extra = conn.extra_dejson or {}
        pairs = {
            "AWS_ACCESS_KEY_ID": conn.login,
            "AWS_SECRET_ACCESS_KEY": conn.password,
            "AWS_SESSION_TOKEN": extra.get("aws_session_token"),
            "AWS_REGION": extra.get("region_name"),
            "AWS_DEFAULT_REGION": extra.get("region_name"),
            "AWS_ENDPOINT_URL": extra.get("endpoint_url"),
        }
        env.update({k: v for k, v in pairs.items() if v})
    env.setdefault("DETECT_LOG_FORMAT", "json")  # stderr as JSON records in the task log
    return env


def iso(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def parse_baseline(text: str) -> timedelta:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([hdw])\s*", text or "")
    if not match:
        raise AirflowFailException(f"baseline {text!r}: use hours, days or weeks (336h, 14d, 2w)")
    units = {"h": "hours", "d": "days", "w": "weeks"}
    return timedelta(**{units[match[2]]: float(match[1])})


def run_detect(args: list[str], *, timeout: float | None = None) -> dict[str, Any]:
    """Run ``detect ARGS --format json``; its JSON summary, or an exception by exit code."""
    cmd = [require("bin"), *args, "--format", "json"]
    log.info("running %s", shlex.join(cmd))
    try:
        proc = subprocess.run(
            cmd, env=detect_env(), capture_output=True, text=True, timeout=timeout, check=False
        )
    except FileNotFoundError:
        raise AirflowFailException(
            f"{cmd[0]} not found: set the Variable detect_bin or DETECT_BIN to detect's path"
        ) from None
    for line in proc.stderr.splitlines():
        log.info("detect: %s", line)
    try:
        summary = json.loads(proc.stdout) if proc.stdout.strip() else {}
    except json.JSONDecodeError:
        log.info("detect stdout: %s", proc.stdout)
        summary = {}
    reason = _last_error(proc.stderr) or f"exit {proc.returncode}"
    if proc.returncode == 0:
        return summary
    if proc.returncode == EXIT_USAGE:  # configuration or arguments: a retry cannot help
        raise AirflowFailException(f"detect {args[0]}: {reason}")
    if proc.returncode == EXIT_FINDINGS and args[0] == "score":
        found = summary.get("findings")
        count = len(found) if isinstance(found, list) else "?"
        raise AirflowFailException(
            f"detect score: {count} finding(s), some at or above --fail-on (they are in the lake)"
        )
    raise RuntimeError(f"detect {args[0]} failed ({reason}); will retry")


def _last_error(stderr: str) -> str | None:
    for line in reversed(stderr.splitlines()):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if line.startswith("error:"):
                return line[len("error:") :].strip()
            continue
        if isinstance(record, dict) and record.get("level") == "error":
            return str(record.get("message"))
    return None


def extra_args(name: str) -> list[str]:
    return shlex.split(setting(name) or "")


# ---------------------------------------------------------------------- hourly
@task(execution_timeout=timedelta(minutes=50))
def export(
    data_interval_start: datetime | None = None, data_interval_end: datetime | None = None
) -> dict:
    """CloudWatch Logs -> lake for exactly the data interval; fails on a partial read."""
    assert data_interval_start is not None and data_interval_end is not None
    start, end = iso(data_interval_start), iso(data_interval_end)
    args = ["export", "--log-group", require("log_group"), "--lake", require("lake")]
    args += ["--since", start, "--until", end, *extra_args("export_args")]
    summary = run_detect(args)
    reached = (summary.get("window") or {}).get("end")
    if summary.get("complete") is False or not reached or parse_iso(reached) < parse_iso(end):
        raise RuntimeError(
            f"export read up to {reached or 'nothing'}, not to {end} (events not delivered "
            "yet?): retrying so that the hour is scored only once it is complete"
        )
    log.info(
        "exported %s .. %s: %s events read, %s new",
        start,
        end,
        summary.get("events_read"),
        summary.get("events_written"),
    )
    return {
        "events_read": summary.get("events_read"),
        "events_written": summary.get("events_written"),
        "quarantined": summary.get("quarantined"),
    }


@task(execution_timeout=timedelta(minutes=50))
def score(
    data_interval_start: datetime | None = None, data_interval_end: datetime | None = None
) -> dict:
    """Score the data interval: findings to LAKE/findings/ (replacing a previous run's)."""
    assert data_interval_start is not None and data_interval_end is not None
    args = ["score", "--lake", require("lake")]
    args += ["--since", iso(data_interval_start), "--until", iso(data_interval_end)]
    args += extra_args("score_args")
    summary = run_detect(args)
    findings = summary.get("findings")
    count = len(findings) if isinstance(findings, list) else findings
    log.info("%s finding(s) for %s", count, iso(data_interval_start))
    return {"findings": count, "requests": summary.get("requests")}


@dag(
    dag_id="audit_detector_hourly",
    description="Export the closed hour of EKS audit logs from CloudWatch, then score it",
    schedule=CronDataIntervalTimetable("0 * * * *", timezone="UTC"),
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,  # one exporter per log group: hours run one after the other
    default_args=DEFAULT_ARGS,
    tags=["security", "audit-detector"],
    doc_md=(
        "Exports the closed hour of EKS audit logs from CloudWatch Logs into the lake, then "
        "scores it (only if the export read the whole hour). Settings: Airflow Variables "
        "`detect_*` or env `DETECT_*`; see the DAG file and docs/operations.md."
    ),
)
def audit_detector_hourly() -> None:
    wait = TimeDeltaSensor(
        task_id="wait_for_cloudwatch",
        delta=SETTLE,
        mode="reschedule",
        poke_interval=60,
        timeout=3600,
    )
    wait >> export() >> score()


# ---------------------------------------------------------------------- daily
@task(execution_timeout=timedelta(hours=3))
def train(data_interval_end: datetime | None = None) -> dict:
    """Fit the model on [end - baseline, end): a rolling baseline."""
    assert data_interval_end is not None
    since = data_interval_end - parse_baseline(setting("baseline") or "14d")
    args = ["train", "--lake", require("lake")]
    args += ["--since", iso(since), "--until", iso(data_interval_end)]
    card = run_detect(args)
    return {k: card.get(k) for k in ("model_version", "rows", "threshold") if k in card}


@dag(
    dag_id="audit_detector_retrain",
    description="Retrain the anomaly model on a rolling baseline",
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["security", "audit-detector"],
)
def audit_detector_retrain() -> None:
    train()


audit_detector_hourly()
audit_detector_retrain()
