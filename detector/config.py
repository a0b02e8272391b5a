"""Settings: ``detect.toml``, then ``DETECT_*`` environment variables, then flags (flags win).

The file is found at ``--config PATH``, else ``$DETECT_CONFIG``, else ``./detect.toml`` (if
there is one). Its shape::

    # settings shared by every command that has them (each also reads env DETECT_<NAME>)
    lake = "s3://audit-lake/prod"
    cluster = "prod"
    model_dir = "s3://audit-lake/models"
    log_group = "/aws/eks/prod/cluster"
    region = "eu-west-1"           # root settings: region, log_format, log_level
    log_format = "json"

    [export]                        # options of one command, named like its flags
    latency = "5m"
    rate = 3

    [findings.list]                 # a subcommand of a group
    min_severity = "high"

How precedence works: the root callback turns the file into click's ``default_map``, and
click resolves every option as command line > environment variable > ``default_map`` >
the option's default. Shared settings are exactly the options that declare an environment
variable ``DETECT_<NAME>`` (``--lake`` reads ``DETECT_LAKE``...): at the top of the file they
apply to every command that has them. Any option can be set in its command's table.

Unknown keys, unknown tables and values that the option would refuse are a
:class:`ConfigError` naming the key (one line, exit 2), checked on every run so that a typo
never silently falls back to a default.
"""

from __future__ import annotations

import contextlib
import os
import re
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperOption

from detector.errors import UsageError
from detector.userfiles import read_user_file

CONFIG_ENV = "DETECT_CONFIG"
#: Top-level ``ip_lists = ["tor-exits.txt"]``: deny lists for the rules, passed on in env.
IP_LISTS_KEY = "ip_lists"
IP_LISTS_ENV = "DETECT_IP_LISTS"
#: Top-level ``aws_ranges = "aws-ip-ranges.txt"``: the AWS ranges the rules read instead of
#: the snapshot shipped in the package (``detect rules aws-ranges`` writes one), in env.
AWS_RANGES_KEY = "aws_ranges"
AWS_RANGES_ENV = "DETECT_AWS_RANGES"
DEFAULT_CONFIG_FILE = "detect.toml"
ENV_PREFIX = "DETECT_"
#: Where the AWS SDKs look for a region, in their order.
AWS_REGION_ENVS = ("AWS_REGION", "AWS_DEFAULT_REGION")

#: Settings of the root command (``detect --log-format json export ...``), with their
#: allowed values (None: any string).
ROOT_SETTINGS: dict[str, tuple[str, ...] | None] = {
    "log_format": ("text", "json"),
    "log_level": ("debug", "info", "warning", "error"),
    "region": None,
}

#: Top-level keys owned by a layer above this one (``[[sinks]]``: detector.delivery.config),
#: each with the checker that layer registers when imported: ``check(value, file_name)``
#: returns the parsed value or raises :class:`ConfigError`. The parsed value lands in
#: ``LoadedConfig.extra``.
EXTRA_KEYS: dict[str, Callable[[Any, str], Any]] = {}


class ConfigError(UsageError, ValueError):
    """A configuration file or value that cannot be used; the message names the key."""


@dataclass
class Setting:
    """One option of one command as the configuration sees it."""

    command: tuple[str, ...]  # ("export",) or ("findings", "list")
    key: str  # name in detect.toml: the long flag without dashes, "-" -> "_"
    param: TyperOption
    shared: str | None  # the DETECT_<NAME> env var, when the option declares one
    cmd: Any = None  # the (typer) command object

    @property
    def command_name(self) -> str:
        return " ".join(self.command)


@dataclass
class LoadedConfig:
    """What a configuration file gave, ready for click."""

    path: Path | None = None
    root: dict[str, str] = field(default_factory=dict)  # log_format, log_level, region
    default_map: dict[str, Any] = field(default_factory=dict)
    #: (command path, param name) -> where the file said it: "detect.toml" or "detect.toml [export]"
    origin: dict[tuple[tuple[str, ...], str], str] = field(default_factory=dict)
    #: parsed values of EXTRA_KEYS (``sinks``...)
    extra: dict[str, Any] = field(default_factory=dict)
    #: ``ip_lists = [...]``: deny-list files for the rules, absolute (relative to the file)
    ip_lists: list[str] = field(default_factory=list)
    #: ``aws_ranges = "..."``: the AWS ranges file for the rules, absolute (relative to the file)
    aws_ranges: str | None = None


# ------------------------------------------------------------------ the command tree
def option_key(param: TyperOption) -> str:
    """The name of an option in detect.toml: ``--log-group`` -> ``log_group``."""
    longs = [o for o in param.opts if o.startswith("--")]
    flag = longs[0] if longs else param.opts[0]
    return flag.lstrip("-").replace("-", "_")


def _envvars(param: Any) -> list[str]:
    env = param.envvar
    if not env:
        return []
    return [env] if isinstance(env, str) else list(env)


def shared_name(param: Any) -> str | None:
    """``lake`` for an option reading ``DETECT_LAKE``; None for options with no env var."""
    for env in _envvars(param):
        if env.startswith(ENV_PREFIX) and env != CONFIG_ENV:
            return env[len(ENV_PREFIX) :].lower()
    return None


def is_group(cmd: Any) -> bool:
    return isinstance(getattr(cmd, "commands", None), dict)


def iter_settings(group: Any, prefix: tuple[str, ...] = ()) -> Iterator[Setting]:
    """Every configurable option of every command under ``group`` (a typer group).

    A group's own options count too: ``detect findings`` and ``detect incidents`` list
    from the group's callback, and their ``--lake`` must take the file's ``lake`` as
    ``findings show`` does.
    """
    for name in sorted(group.commands):
        cmd = group.commands[name]
        if getattr(cmd, "hidden", False):
            continue
        path = (*prefix, name)
        if is_group(cmd):
            yield from iter_settings(cmd, path)
        for param in cmd.params:
            if not isinstance(param, TyperOption) or param.is_eager or param.hidden:
                continue
            yield Setting(path, option_key(param), param, _shared_env(param), cmd)


def _shared_env(param: Any) -> str | None:
    name = shared_name(param)
    return f"{ENV_PREFIX}{name.upper()}" if name else None


def shared_keys(group: Any) -> dict[str, list[Setting]]:
    """Top-level keys of detect.toml: shared settings -> the options they feed."""
    out: dict[str, list[Setting]] = {}
    for s in iter_settings(group):
        if s.shared:
            out.setdefault(s.shared[len(ENV_PREFIX) :].lower(), []).append(s)
    return out


# ------------------------------------------------------------------ finding and reading
def config_path(explicit: str | None) -> Path | None:
    """The file to read: ``--config``/``DETECT_CONFIG`` (must exist), else ./detect.toml."""
    if explicit:
        path = Path(explicit).expanduser()
        try:
            path.stat()
        except (FileNotFoundError, NotADirectoryError):
            pass  # said below, as "not found"
        except OSError as exc:  # a folder it cannot look in, a name too long: was exit 3
            raise ConfigError(
                f"config file {explicit} cannot be read: {exc.strerror or exc} "
                f"(from --config or {CONFIG_ENV})"
            ) from None
        if path.is_dir():
            raise ConfigError(
                f"config file {explicit} is a folder (from --config or {CONFIG_ENV}): "
                f"name the file, such as {Path(explicit) / DEFAULT_CONFIG_FILE}"
            )
        if not path.is_file():
            raise ConfigError(f"config file {explicit} not found (from --config or {CONFIG_ENV})")
        return path
    default = Path(DEFAULT_CONFIG_FILE)
    return default if default.is_file() else None


#: The longest text a setting may hold: paths, names, URLs and queries are far shorter. A
#: 10 MB value took `config show` 51 s to lay out and came back whole in error lines.
MAX_SETTING_CHARS = 4096


def _check_lengths(value: Any, path: Path, key: str = "") -> None:
    if isinstance(value, str) and len(value) > MAX_SETTING_CHARS:
        raise ConfigError(
            f"{path}: {key or 'a value'} holds {len(value):,} characters "
            f"(at most {MAX_SETTING_CHARS:,})"
        )
    if isinstance(value, (dict, list)):
        for k, v in value.items() if isinstance(value, dict) else enumerate(value):
            if isinstance(k, str) and len(k) > MAX_SETTING_CHARS:
                raise ConfigError(f"{path}: a key holds {len(k):,} characters")
            _check_lengths(v, path, f"{key}.{k}" if key else str(k))


def read_toml(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(read_user_file(path))
        _check_lengths(data, path)
        return data
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except RecursionError:  # tomllib recurses into nested arrays and tables
        raise ConfigError(f"{path}: not valid TOML: nested too deeply") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not UTF-8 (byte {exc.object[exc.start]:#04x} at offset {exc.start}); "
            "save the file as UTF-8"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read: {exc.strerror or exc}") from None


def check_value(setting: Setting, value: Any, where: str) -> Any:
    """Check ``value`` as the option would take it; raise :class:`ConfigError` naming the key.

    Returns the value as written (click converts it again when the command runs).
    """
    param, key = setting.param, setting.key
    label = f"{where}: {key} = {value!r}"
    annotation = param.type_descriptor.annotation
    if isinstance(value, dict):
        raise ConfigError(f"{label}: expected a value, not a table")
    if param.multiple and not isinstance(value, list):
        raise ConfigError(f'{label}: expected a list, e.g. {key} = ["..."]')
    if not param.multiple and isinstance(value, list):
        raise ConfigError(f"{label}: expected one value, not a list")
    items = value if isinstance(value, list) else [value]
    if annotation is bool and not isinstance(value, bool):
        raise ConfigError(f"{label}: expected true or false")
    if (annotation is str or param.multiple) and not all(isinstance(i, str) for i in items):
        raise ConfigError(f"{label}: expected a string (in quotes)")
    if isinstance(value, bool) and annotation is not bool:
        raise ConfigError(f"{label}: expected {getattr(annotation, '__name__', 'a value')}")
    ctx = setting_context(setting)
    try:
        param.process_value(ctx, value)  # the option's own parser: choices, bounds, times
    except typer.BadParameter as exc:
        message = exc.message.replace("Value error, ", "")
        raise ConfigError(f"{label}: {message}") from None
    return value


def setting_context(setting: Setting) -> Any:
    """A bare context of the setting's command, for checking a value."""
    cmd = setting.cmd
    return cmd.context_class(cmd, info_name=setting.command[-1])


#: An AWS region name as botocore accepts one (``us-east-1``, ``us-gov-west-1``); checked
#: here so a typo is one line at start-up, not an error deep in the first AWS call.
REGION_NAME = re.compile(r"[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?")


def check_root_value(key: str, value: Any, where: str) -> str:
    allowed = ROOT_SETTINGS[key]
    if not isinstance(value, str):
        raise ConfigError(f"{where}: {key} = {value!r}: expected a string (in quotes)")
    if key == "region" and not REGION_NAME.fullmatch(value):
        raise ConfigError(f"{where}: {key} = {value!r}: not an AWS region name (us-east-1)")
    if allowed is not None and value.lower() not in allowed:
        raise ConfigError(f"{where}: {key} = {value!r}: expected one of {', '.join(allowed)}")
    return value.lower() if allowed is not None else value


def _put(default_map: dict[str, Any], command: tuple[str, ...], name: str, value: Any) -> None:
    node = default_map
    for part in command:
        node = node.setdefault(part, {})
    node[name] = value


def _ip_lists(value: Any, path: Path) -> list[str]:
    """``ip_lists``: files of addresses/CIDRs the rules treat as denied (relative to the file)."""
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{path.name}: {IP_LISTS_KEY} = {value!r}: expected a list of file paths")
    return [str((path.parent / v) if not Path(v).is_absolute() else Path(v)) for v in value]


def _aws_ranges(value: Any, path: Path) -> str:
    """``aws_ranges``: the AWS ranges file the rules read (relative to the file)."""
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{path.name}: {AWS_RANGES_KEY} = {value!r}: expected a file path")
    return str(path.parent / value if not Path(value).is_absolute() else Path(value))


def load(group: Any, path: Path | None) -> LoadedConfig:
    """Read and check ``path`` against the commands of ``group``; build the default_map."""
    loaded = LoadedConfig(path=path)
    if path is None:
        return loaded
    data = read_toml(path)
    fname = path.name
    settings = list(iter_settings(group))
    shared = shared_keys(group)
    by_command: dict[tuple[str, ...], dict[str, Setting]] = {}
    for s in settings:
        by_command.setdefault(s.command, {})[s.key] = s
    groups = {s.command[:i] for s in settings for i in range(1, len(s.command))}

    def section(prefix: tuple[str, ...], table: dict[str, Any]) -> None:
        where = f"{fname} [{'.'.join(prefix)}]"
        for raw_key, value in table.items():
            key = raw_key.replace("-", "_")
            sub = (*prefix, raw_key)
            if isinstance(value, dict) and (sub in by_command or sub in groups):
                section(sub, value)
                continue
            own = by_command.get(prefix, {})
            targets = [own[key]] if key in own else []
            if prefix in groups:  # a group's table: every subcommand that has the option too
                targets += [
                    opts[key]
                    for cmd, opts in by_command.items()
                    if len(cmd) > len(prefix) and cmd[: len(prefix)] == prefix and key in opts
                ]
            if not targets:
                what = "group" if prefix in groups else "command"
                known = ", ".join(sorted(by_command.get(prefix, {}))) or "none"
                raise ConfigError(
                    f"{where}: unknown key {raw_key!r} (not an option of this {what}; "
                    f"options: {known})"
                )
            for s in targets:
                checked = check_value(s, value, where)
                _put(loaded.default_map, s.command, s.param.name or key, checked)
                loaded.origin[(s.command, s.param.name or key)] = where

    # Top-level keys first, tables after: a command's table beats the shared value.
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    for raw_key, value in data.items():
        if raw_key in tables:
            continue
        key = raw_key.replace("-", "_")
        if key in EXTRA_KEYS:
            loaded.extra[key] = EXTRA_KEYS[key](value, fname)
        elif key == IP_LISTS_KEY:
            loaded.ip_lists = _ip_lists(value, path)
        elif key == AWS_RANGES_KEY:
            loaded.aws_ranges = _aws_ranges(value, path)
        elif key in ROOT_SETTINGS:
            loaded.root[key] = check_root_value(key, value, fname)
        elif key in shared:
            for s in shared[key]:
                checked = check_value(s, value, fname)
                _put(loaded.default_map, s.command, s.param.name or key, checked)
                loaded.origin[(s.command, s.param.name or key)] = fname
        else:
            owners = sorted({s.command_name for s in settings if s.key == key})
            hint = (
                f"; it is an option of {', '.join(owners)}: put it under "
                f"[{owners[0].replace(' ', '.')}]"
                if owners
                else f"; top-level keys: "
                f"{', '.join(sorted({*ROOT_SETTINGS, *shared, IP_LISTS_KEY, AWS_RANGES_KEY}))}"
            )
            raise ConfigError(f"{fname}: unknown key {raw_key!r}{hint}")
    for raw_key, value in tables.items():
        if (raw_key,) in by_command or (raw_key,) in groups:
            section((raw_key,), value)
        else:
            commands = sorted({s.command[0] for s in settings})
            raise ConfigError(
                f"{fname}: unknown table [{raw_key}] (commands: {', '.join(commands)})"
            )
    return loaded


def peek_root(explicit: str | None) -> dict[str, str]:
    """The root settings of a file that failed to load, if it can be read at all.

    So that a bad key in a file that also says ``log_format = "json"`` is still reported
    as a JSON record.
    """
    try:
        path = config_path(explicit)
        data = read_toml(path) if path else {}
    except ConfigError:
        return {}
    out = {}
    for key in ROOT_SETTINGS:
        with contextlib.suppress(KeyError, ConfigError):
            out[key] = check_root_value(key, data[key], "")
    return out


# ------------------------------------------------------------------ the root callback
@dataclass
class RootSettings:
    """The root options once resolved, each with where it came from."""

    values: dict[str, str | None] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    config: LoadedConfig = field(default_factory=LoadedConfig)


def _source_name(ctx: Any, name: str) -> str:
    """Where a parsed parameter came from, by the name of click's ``ParameterSource``
    (typer carries its own copy of click, so the enum is compared by name)."""
    return getattr(ctx.get_parameter_source(name), "name", "")


def given_as_flag(ctx: Any, name: str) -> bool:
    """Whether the user typed the option, rather than it taking a default or config value."""
    return _source_name(ctx, name) == "COMMANDLINE"


def describe_source(ctx: Any, param: Any) -> str:
    """``flag``, ``env DETECT_X``, ``detect.toml`` or ``default`` for a parsed parameter."""
    name = _source_name(ctx, param.name or "")
    if name == "COMMANDLINE":
        return "flag"
    if name == "ENVIRONMENT":
        for env in _envvars(param):
            if os.environ.get(env):
                return f"env {env}"
        return "env"
    if name == "DEFAULT_MAP":
        return DEFAULT_CONFIG_FILE
    return "default"


def setup_root(
    ctx: Any,
    *,
    config: str | None,
    log_format: str | None,
    log_level: str | None,
    region: str | None,
) -> RootSettings:
    """Read the config file, fill click's default_map, apply the root settings.

    Called from the root callback, before the subcommand's context exists: the
    subcommand then finds its defaults in ``ctx.default_map[<name>]``.
    """
    loaded = load(ctx.command, config_path(config))
    if ctx.default_map:  # e.g. set by a caller of the app: those win over the file
        _merge(loaded.default_map, ctx.default_map)
    ctx.default_map = loaded.default_map
    params = {p.name: p for p in ctx.command.params}
    given = {"log_format": log_format, "log_level": log_level, "region": region}
    out = RootSettings(config=loaded)
    for key, value in given.items():
        source = describe_source(ctx, params[key]) if key in params else "default"
        if value is not None and source != "default":
            out.values[key] = check_root_value(key, value, source)
            out.sources[key] = source
        elif key in loaded.root:
            out.values[key] = loaded.root[key]
            out.sources[key] = loaded.path.name if loaded.path else DEFAULT_CONFIG_FILE
        else:
            out.values[key] = value
            out.sources[key] = "default"
    if out.values.get("region") is None:
        # AWS_REGION alone is honoured (boto3 reads only AWS_DEFAULT_REGION).
        for env in AWS_REGION_ENVS:
            if os.environ.get(env):
                out.values["region"], out.sources["region"] = os.environ[env], f"env {env}"
                break
    out.values["config"] = str(loaded.path) if loaded.path else None
    if "config" in params:
        out.sources["config"] = (
            describe_source(ctx, params["config"]) if config else "default (./detect.toml)"
        )
    if out.values.get("region"):
        apply_region(ctx, str(out.values["region"]))
    # Read by the rules when they compile (detector.rules.iplists); env beats file.
    for env_name, value in (
        (IP_LISTS_ENV, os.pathsep.join(loaded.ip_lists)),
        (AWS_RANGES_ENV, loaded.aws_ranges or ""),
    ):
        if value and not os.environ.get(env_name):
            saved_env = {env_name: os.environ.get(env_name)}
            os.environ[env_name] = value
            ctx.call_on_close(lambda saved=saved_env: _restore_env(saved))
    ctx.meta["detect.settings"] = out
    return out


def apply_region(ctx: Any, region: str) -> None:
    """Make ``region`` the one boto3, s3fs and polars use, until ``ctx`` closes.

    They read AWS_DEFAULT_REGION (boto3) or AWS_REGION (others): both are set, so an
    explicit setting beats the AWS chain and AWS_REGION alone is enough. Restored when the
    command ends, for callers that run the app in-process.
    """
    saved = {k: os.environ.get(k) for k in AWS_REGION_ENVS}
    os.environ["AWS_REGION"] = os.environ["AWS_DEFAULT_REGION"] = region
    ctx.call_on_close(lambda: _restore_env(saved))


def _restore_env(saved: dict[str, str | None]) -> None:
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _merge(into: dict[str, Any], other: dict[str, Any]) -> None:
    for k, v in other.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = v
