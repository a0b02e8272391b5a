"""`detect config show`: the effective settings and where each one came from."""

from __future__ import annotations

import os
from enum import Enum
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table
from typer._click import exceptions as click_exceptions

from detector import config as settings
from detector.cli.options import FormatOpt, OutputFormat, emit_json, log_group_name, stdout
from detector.errors import UsageError

config_app = typer.Typer(
    name="config",
    help=(
        "Settings: detect.toml < DETECT_* environment variables < flags.\n\n"
        "Example:\n\n"
        "\b\n"
        "    detect config show\n"
        "    detect --config prod.toml config show --all --format json"
    ),
    no_args_is_help=True,
)

_ROOT_DEFAULTS = {"log_format": "text", "log_level": "warning"}


def _show_value(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, tuple | list):
        return [_show_value(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)  # paths and the like


def _context_for(root: Any, command: tuple[str, ...]) -> Any:
    """A context for ``command`` under the real root: it sees the same default_map."""
    ctx, group = root, root.command
    for name in command:
        cmd = group.commands[name]
        ctx = cmd.context_class(cmd, parent=ctx, info_name=name)
        group = cmd
    return ctx


def _source_of(s: settings.Setting, source: Any, loaded: settings.LoadedConfig) -> str:
    if source.name == "ENVIRONMENT":
        envs = [s.param.envvar] if isinstance(s.param.envvar, str) else list(s.param.envvar or [])
        return next((f"env {e}" for e in envs if os.environ.get(e)), "env")
    if source.name == "DEFAULT_MAP":
        return loaded.origin.get((s.command, s.param.name or s.key), settings.DEFAULT_CONFIG_FILE)
    return "default"


def _check_env(s: settings.Setting, ctx: Any, value: Any, where: str) -> None:
    """A DETECT_* variable holding what the option would refuse (``DETECT_WATCH_PORT=abc``)
    is the commands' usage error, said here too rather than shown as if it were fine."""
    try:
        s.param.process_value(ctx, value)
    except (click_exceptions.BadParameter, ValueError) as exc:
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        raise UsageError(f"{where}: {s.key} = {value!r}: {message}") from None


def effective(
    ctx: Any, *, all_options: bool = False, flags: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Rows of (setting, value, source): root settings, shared settings, then per command."""
    root = ctx.find_root()
    state: settings.RootSettings = root.meta.get("detect.settings") or settings.RootSettings()
    loaded = state.config
    rows: list[dict[str, Any]] = [
        {
            "setting": "config",
            "value": state.values.get("config"),
            "source": state.sources.get("config", "default"),
        }
    ]
    for key in ("log_format", "log_level", "region"):
        value = state.values.get(key)
        source = state.sources.get(key, "default")
        if value is None and key == "region":  # no setting, no AWS_REGION: the profile's
            import boto3

            value = boto3.Session().region_name
            source = "AWS profile" if value else "none: set AWS_REGION or --region"
        rows.append({"setting": key, "value": value or _ROOT_DEFAULTS.get(key), "source": source})
    rows += _address_list_rows(loaded)
    group = root.command
    shared_rows: dict[str, dict[str, Any]] = {}
    per_command: list[dict[str, Any]] = []
    for s in settings.iter_settings(group):
        if s.command[0] == "config" or s.key in settings.ROOT_SETTINGS:
            continue  # root settings (region) are listed once, above
        sub = _context_for(root, s.command)
        value, source = s.param.consume_value(sub, {})
        where = _source_of(s, source, loaded)
        if where.startswith("env ") and value is not None:
            _check_env(s, sub, value, where)
        row = {
            "setting": f"{'.'.join(s.command)}.{s.key}",
            "value": _show_value(value),
            "source": where,
        }
        if s.shared:
            name = s.shared[len(settings.ENV_PREFIX) :].lower()
            flag = (flags or {}).get(name)
            if flag is not None:
                shared_rows.setdefault(name, {"setting": name, "value": flag, "source": "flag"})
            elif where.endswith("]"):  # this command's own table overrides the shared value
                per_command.append(row)
            else:
                shared_rows.setdefault(name, {**row, "setting": name})
        elif all_options or where != "default":
            per_command.append(row)
    rows += shared_rows.values()
    # [[sinks]]: where each secret comes from and whether it is set, never its value
    for sink in loaded.extra.get("sinks", []):
        where = loaded.path.name if loaded.path else settings.DEFAULT_CONFIG_FILE
        rows.append({"setting": f"sinks.{sink.name}", "value": sink.describe(), "source": where})
    return rows + per_command


def _address_list_rows(loaded: settings.LoadedConfig) -> list[dict[str, Any]]:
    """The rules' address lists: deny lists (``ip_lists``) and the AWS ranges
    (``aws_ranges``), from their variable (which wins) or the file's top level."""
    where = loaded.path.name if loaded.path else settings.DEFAULT_CONFIG_FILE
    rows = []
    for key, env_name, from_file in (
        (settings.IP_LISTS_KEY, settings.IP_LISTS_ENV, os.pathsep.join(loaded.ip_lists)),
        (settings.AWS_RANGES_KEY, settings.AWS_RANGES_ENV, loaded.aws_ranges or ""),
    ):
        value = os.environ.get(env_name, "")
        if not value:
            shown = [] if key == settings.IP_LISTS_KEY else "the snapshot shipped with the tool"
            rows.append({"setting": key, "value": shown, "source": "default"})
            continue
        source = where if from_file and value == from_file else f"env {env_name}"
        shown = [v for v in value.split(os.pathsep) if v] if key == settings.IP_LISTS_KEY else value
        rows.append({"setting": key, "value": shown, "source": source})
    return rows


@config_app.command("show")
def show(
    ctx: typer.Context,
    all_options: Annotated[
        bool,
        typer.Option("--all", help="Every option of every command, not only the ones set."),
    ] = False,
    lake: Annotated[str | None, typer.Option("--lake", help="As the commands' --lake.")] = None,
    cluster: Annotated[
        str | None, typer.Option("--cluster", help="As the commands' --cluster.")
    ] = None,
    model_dir: Annotated[
        str | None, typer.Option("--model-dir", help="As the commands' --model-dir.")
    ] = None,
    log_group: Annotated[
        str | None,
        typer.Option("--log-group", parser=log_group_name, help="As export's --log-group."),
    ] = None,
    output: FormatOpt = OutputFormat.table,
) -> None:
    """Print the effective configuration and where each value came from.

    Precedence, lowest first: the option's default, detect.toml (top-level keys are shared
    by every command that has the option; [command] tables hold one command's options),
    environment variables DETECT_<NAME>, flags. Shared settings are listed always; other
    options when something sets them (all of them with --all).

    Exit codes: 0 shown, 2 unknown key or bad value in the file (named in the message),
    including an `ip_lists` or `aws_ranges` file the rules could not read.

    Example:

    \b
        detect config show
        DETECT_LAKE=s3://audit-lake/prod detect --config prod.toml config show --format json
    """
    from detector.rules.iplists import source_in

    # The address lists the rules read, read as they read them: `ip_lists = ["/nonexistent"]`
    # was shown, exit 0, and every `detect score` then refused it (found by review).
    source_in("denied")
    source_in("aws")
    flags = {"lake": lake, "cluster": cluster, "model_dir": model_dir, "log_group": log_group}
    rows = effective(ctx, all_options=all_options, flags=flags)
    if output == OutputFormat.json:
        emit_json({"settings": rows})
        return
    table = Table(box=None, pad_edge=False, show_edge=False)
    table.add_column("setting", no_wrap=True)
    table.add_column("value", overflow="fold")
    table.add_column("source", style="dim")
    for row in rows:
        value = row["value"]
        if isinstance(value, list):
            shown = ", ".join(map(str, value)) or "-"
        else:
            shown = "-" if value is None else str(value)
        table.add_row(escape(row["setting"]), escape(shown), escape(row["source"]))
    stdout.print(table)


def register(app: typer.Typer) -> None:
    """Add ``detect config show`` to the app."""
    app.add_typer(config_app, name="config")
