"""`detect rules list | test | docs`: see, try and document the detection rules.

The options ``--rules FILE``, ``--enable ID`` and ``--disable ID`` mean the same here as on
``detect score``: they are the shared aliases of :mod:`detector.cli.options`.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from detector.cli.options import (
    EXIT_FINDINGS,
    DisableOpt,
    EnableOpt,
    FormatOpt,
    InputFormat,
    InputFormatOpt,
    OutputFormat,
    RulesFileOpt,
    WindowOpt,
    emit_json,
    output_file,
    stderr,
    stdout,
)
from detector.cli.render import SEVERITY_STYLE, format_score
from detector.errors import UsageError
from detector.userfiles import write_user_file

rules_app = typer.Typer(
    name="rules",
    help=(
        "List, try and document the detection rules (YAML, see docs/rules.md).\n\n"
        "Example:\n\n"
        "\b\n"
        "    detect rules list\n"
        "    detect rules test pod-exec /var/log/kubernetes/audit.log --expect-fire\n"
        "    detect rules docs --check"
    ),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _load(
    rules: list[str] | None, disable: list[str] | None, enable: list[str] | None = None
) -> Any:
    from detector.rules import load_ruleset

    return load_ruleset(extra_files=rules or None, disabled=disable, enabled=enable)


@rules_app.command("list")
def list_rules(
    rules: RulesFileOpt = None,
    disable: DisableOpt = None,
    enable: EnableOpt = None,
    output: FormatOpt = OutputFormat.table,
) -> None:
    """Show every rule: id, severity, tactic, technique, title and whether it is on.

    With --rules, the rules as your override files leave them. JSON output carries the
    whole definition (condition, exceptions, Falco/GuardDuty mapping, references).

    Exit codes: 0 done, 2 a rules file or rule id is wrong.

    Example:

    \b
        detect rules list
        detect rules list --rules site-rules.yaml --disable pod-exec --format json
    """
    ruleset = _load(rules, disable, enable)
    if output == OutputFormat.json:
        emit_json(
            {
                "fingerprint": ruleset.fingerprint,
                "files": ruleset.files,
                "rules": [r.to_dict() for r in ruleset.rules],
            }
        )
        return
    table = Table(show_lines=False, expand=False)
    table.add_column("id", no_wrap=True)
    for col in ("severity", "tactic", "technique", "title", "enabled"):
        table.add_column(col, overflow="fold")
    for r in sorted(ruleset.rules, key=lambda r: (not r.enabled, -r.severity_rank, r.id)):
        table.add_row(
            r.id,
            f"[{SEVERITY_STYLE[r.severity]}]{r.severity}[/]",
            r.tactic,
            r.technique,
            escape(r.title),
            "yes" if r.enabled else "[dim]no[/]",
        )
    stdout.print(table)
    stdout.print(
        f"{len(ruleset.enabled_rules)} of {len(ruleset.rules)} rules enabled; "
        f"ruleset {ruleset.fingerprint}",
        markup=False,
    )


@rules_app.command("test")
def test_rule(
    rule_id: Annotated[str, typer.Argument(help="The rule to run (see `detect rules list`).")],
    paths: Annotated[
        list[str],
        typer.Argument(help="Audit log files or folders (plain or .gz).", show_default=False),
    ],
    rules: RulesFileOpt = None,
    window: WindowOpt = "10m",  # type: ignore[assignment]
    input_format: InputFormatOpt = InputFormat.auto,
    fail_if_silent: Annotated[
        bool,
        typer.Option("--expect-fire", help="Exit 1 if the rule raises no finding (for CI)."),
    ] = False,
    output: FormatOpt = OutputFormat.table,
) -> None:
    """Run one rule over audit files and show what fired and why (or why not).

    The rule runs even if it ships disabled. For each finding: principal, window, count,
    the sentences analysts will read and the audit IDs. When nothing fires, the counts say
    where the events stopped: wrong stage, condition not met, removed by an exception, or
    below the threshold. Test your overrides with --rules before deploying them.

    Exit codes: 0 done, 1 nothing fired and --expect-fire was given, 2 unknown rule or bad
    rules file, 3 an input could not be read.

    Example:

    \b
        detect rules test aws-auth-changed /var/log/kubernetes/audit.log
        detect rules test pod-exec ./audit/ --rules site-rules.yaml --expect-fire
    """
    import polars as pl

    from detector.pipeline.ingest import read_events
    from detector.rules import evaluate_rules, why_not

    ruleset = _load(rules, None)
    if rule_id not in ruleset.ids:
        close = difflib.get_close_matches(rule_id, ruleset.ids, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UsageError(f"no rule {rule_id!r}{hint} (`detect rules list` shows the ids)")
    events, quarantine = read_events(paths, fmt=input_format.value)
    one = ruleset.only(rule_id)
    rule = ruleset.get(rule_id)  # as configured, so a rule that ships disabled says so
    result = evaluate_rules(events, one, window=window, explain=True)
    stats = result.stats.get(rule_id)
    stopped = why_not(events, rule) if result.findings.is_empty() else None
    if output == OutputFormat.json:
        emit_json(
            {
                "rule": rule.to_dict(),
                "events": events.height,
                "quarantined": quarantine.height,
                "stats": None if stats is None else stats.__dict__,
                "findings": result.findings.to_dicts(),
                "finding_events": result.events.to_dicts(),
                "stopped": None
                if stopped is None
                else stopped.with_columns(pl.col("event_time").dt.to_string()).to_dicts(),
            }
        )
    else:
        _render_test(rule, events.height, quarantine.height, stats, result.findings)
        if stopped is not None:
            _render_stopped(stopped)
    if fail_if_silent and result.findings.is_empty():
        raise typer.Exit(EXIT_FINDINGS)


def _render_test(rule: Any, n_events: int, n_quarantined: int, stats: Any, findings: Any) -> None:
    """The human report of `rules test`: the funnel, then each finding with its reasons."""
    p = stdout.print
    state = "" if rule.enabled else " (ships disabled)"
    p(
        f"rule {rule.id}{state}: {rule.title} [{rule.severity}, {rule.tactic} {rule.technique}]",
        markup=False,
    )
    p(
        f"read {n_events:,} events"
        + (f" ({n_quarantined:,} input lines quarantined)" if n_quarantined else ""),
        markup=False,
    )
    if stats is not None:
        p(f"  in stages {', '.join(rule.stages)}: {stats.in_stages:,}", markup=False)
        p(f"  matching the condition: {stats.condition:,}", markup=False)
        for name, count in stats.excluded.items():
            p(f"  removed by exception {name}: {count:,}", markup=False)
        p(f"  distinct requests counted: {stats.requests:,}", markup=False)
        if rule.threshold is not None and stats.best_value is not None:
            p(
                f"  highest per-window value: {stats.best_value:g} "
                f"(threshold {stats.best_threshold:g})",
                markup=False,
            )
    if findings.is_empty():
        p("did not fire: " + _why_silent(rule, stats), markup=False)
        return
    p(f"FIRED: {findings.height} finding(s)", markup=False)
    for row in findings.iter_rows(named=True):
        p(
            f"- {row['severity']} {row['principal']} "
            f"{row['window_start']:%Y-%m-%d %H:%M}-{row['window_end']:%H:%M} UTC, "
            f"{row['event_count']} event(s), score {format_score(row['score'])}",
            markup=False,
        )
        for reason in row["reasons"]:
            p(f"    {reason}", markup=False)
        ids = row["audit_ids"]
        shown = ", ".join(ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
        p(f"    audit IDs: {shown}", markup=False)


#: Events listed per stopping term in `rules test` (the rest are counted).
_STOPPED_SHOWN = 5


def _render_stopped(stopped: Any) -> None:
    """Per term of the condition (or stage, or exception): how many events it stopped,
    then the first few of them, so an author sees which term to change."""
    import polars as pl

    if stopped.is_empty():
        return
    p = stdout.print
    p("what stopped each event (first failing term):", markup=False)
    groups = stopped.group_by("stopped_by", maintain_order=True).agg(
        pl.len().alias("n"), pl.all().head(_STOPPED_SHOWN)
    )
    for row in groups.sort("n", descending=True).iter_rows(named=True):
        p(f"  {row['n']:,} x {row['stopped_by']}", markup=False)
        for i in range(len(row["audit_id"])):
            what = " ".join(
                str(v) for v in (row["verb"][i], row["resource"][i], row["subresource"][i]) if v
            )
            p(
                f"      {row['audit_id'][i]} {row['stage'][i]}: {what} {row['target'][i]}",
                markup=False,
            )
        if row["n"] > _STOPPED_SHOWN:
            p(f"      and {row['n'] - _STOPPED_SHOWN:,} more", markup=False)


def _why_silent(rule: Any, stats: Any) -> str:
    if stats is None or stats.events == 0:
        return "no events were read"
    if stats.in_stages == 0:
        return f"no event is at stage {' or '.join(rule.stages)} (see the rule's stages)"
    if stats.condition == 0:
        return "no event matches the condition"
    if stats.requests == 0 and not any(stats.excluded.values()):
        return (
            "the matching events are RequestReceived rows, which stand in for a request "
            "only where the log records none of the rule's later stages"
        )
    if stats.requests == 0:
        return "every matching event is covered by an exception"
    if rule.threshold is not None:
        return (
            f"below the threshold: at most {stats.best_value:g} per window, "
            f"threshold {stats.best_threshold:g}"
        )
    return "no finding"


@rules_app.command("docs")
def docs(
    out: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            parser=output_file,
            help="Where to write the Markdown ('-': stdout).",
        ),
    ] = Path("docs/rules.md"),
    check: Annotated[
        bool,
        typer.Option("--check", help="Write nothing; exit 1 if the file is not up to date."),
    ] = False,
) -> None:
    """Generate docs/rules.md from the built-in rule files.

    The page lists every rule (severity, ATT&CK tactic and technique, condition,
    exceptions with their reasons, the Falco rules and GuardDuty findings it corresponds
    to) and the condition language. CI runs it with --check.

    Exit codes: 0 written (or up to date), 1 --check found the file out of date (or not
    Markdown: too large, not UTF-8), 2 bad arguments (--output a folder), 3 the file
    cannot be read or written.

    Example:

    \b
        detect rules docs
        detect rules docs --check
    """
    from detector.rules.docs import render_docs

    text = render_docs()
    if str(out) == "-":
        write_user_file(out, text)
        return
    if check:
        import errno

        from detector.controls import ONE_LINE
        from detector.userfiles import read_user_bytes

        shown = str(out).translate(ONE_LINE)
        try:  # bounded: `-o /dev/zero` read until the kernel killed it (found by review)
            current = read_user_bytes(out) if out.exists() else None
        except OSError as exc:
            if exc.errno != errno.EFBIG:
                raise
            current = b""  # larger than any docs page: not it
        if current != text.encode("utf-8"):
            state = "is out of date" if current is not None else "does not exist"
            stderr.print(
                f"error: {shown} {state}: run `detect rules docs --output {shown}`", markup=False
            )
            raise typer.Exit(EXIT_FINDINGS)
        stdout.print(f"{shown} is up to date", markup=False)
        return
    write_user_file(out, text)
    stdout.print(f"wrote {out} ({text.count(chr(10))} lines)", markup=False)


#: Where `detect rules aws-ranges` writes when neither -o nor the setting says.
DEFAULT_AWS_RANGES = "aws-ip-ranges.txt"


@rules_app.command("aws-ranges")
def aws_ranges(
    ip_ranges: Annotated[
        Path, typer.Argument(help="AWS's ip-ranges.json, downloaded by you.", metavar="FILE")
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            parser=output_file,
            help="Where to write (default: the aws_ranges file of detect.toml or "
            "DETECT_AWS_RANGES, else ./aws-ip-ranges.txt).",
        ),
    ] = None,
) -> None:
    """Refresh the AWS address ranges the rules use, from a file you supply.

    The rules never fetch anything at run time: system-identity-outside-aws reads a small
    snapshot (merged IPv4 CIDRs with the source's createDate) shipped with the tool, or
    the file `aws_ranges` names in detect.toml (or DETECT_AWS_RANGES). This command
    derives a new one from AWS's ip-ranges.json
    (https://ip-ranges.amazonaws.com/ip-ranges.json, fetched however your network allows)
    into that file, never into the installed package (read-only in an image, replaced on
    upgrade). Without the setting it writes ./aws-ip-ranges.txt and says what to add.

    Exit codes: 0 written, 2 the file is not AWS's ip-ranges.json.

    Example:

    \b
        curl -sO https://ip-ranges.amazonaws.com/ip-ranges.json
        detect rules aws-ranges ip-ranges.json
        echo 'aws_ranges = "aws-ip-ranges.txt"' >> detect.toml
    """
    from detector.config import AWS_RANGES_ENV, AWS_RANGES_KEY
    from detector.rules.iplists import configured_aws_ranges, derive_aws_ranges

    text = derive_aws_ranges(ip_ranges)  # a file that is not ip-ranges.json: ConditionError (2)
    configured = configured_aws_ranges()
    target = out or configured or Path(DEFAULT_AWS_RANGES)
    write_user_file(target, text)
    stdout.print(
        f"wrote {target}: {text.splitlines()[1].lstrip('# ')}", markup=False, soft_wrap=True
    )
    if configured is None or Path(target).resolve() != configured.resolve():
        stdout.print(
            f"the rules read it once detect.toml says {AWS_RANGES_KEY} = "
            f'"{Path(target).resolve()}" (or {AWS_RANGES_ENV} names it)',
            markup=False,
            soft_wrap=True,
        )


def register(app: typer.Typer) -> None:
    """Add `detect rules ...` to the app."""
    app.add_typer(rules_app, name="rules")
