"""The rule condition language: parsed once, compiled once into polars expressions.

A condition reads like a Falco condition over the canonical event columns::

    resource = configmaps and namespace = kube-system and name = aws-auth
    and verb in (update, patch, delete) and not user_name glob (eks_identities)

Grammar (``or`` binds loosest, then ``and``, then ``not``)::

    expr      := term ("or" term)*
    term      := factor ("and" factor)*
    factor    := "not" factor | "(" expr ")" | predicate | MACRO
    predicate := operand OP value | operand WORD_OP values | operand "exists"
    operand   := FIELD | "any(" FIELD ")" | "all(" FIELD ")"
    values    := value | "(" [value ("," value)*] ")"     # a bare word naming a list expands

Each operator maps to one polars call (``in`` -> ``is_in``, ``glob``/``matches`` ->
``str.contains`` with one anchored regex, ``contains`` -> ``str.contains_any``,
``expands_to`` -> ``str.contains`` with one regex of what a shell glob may stand for,
``exists`` -> ``is_not_null``), so evaluation is columnar: no ``eval``, and no per-row
Python but for two kinds of body term, which parse the JSON of only the rows that reach
them (the rules' cheap terms and gate run first: pod-spec writes, not every event): a quoted
JSONPath and the command-line fields (``container_command_lines``, ``shell_command_lines``).
Every predicate is null-safe (a missing value is "false", never "unknown"), so ``not`` means
what an analyst expects: ``not namespace = kube-system`` is true for cluster-scoped objects.

Fields are canonical columns (``verb``, ``user_name``, ``response_code``...), JSON paths into
the request/response bodies (``request_object.roleRef.name``; or any JSONPath, quoted:
``request_object["$.subjects[?(@.kind == 'User')].name"]``, a list when the path can
match several values), deep keys that collect every
value of a key anywhere in a body (``request_object..privileged``: all containers, init and
ephemeral containers, pod templates of Deployments/DaemonSets/CronJobs...), and a few
derived fields (:data:`DERIVED_FIELDS`). Deep keys and list columns (``user_groups``) are
lists: an operator holds if it holds for ``any`` element, or for ``all`` of them (and there
is at least one) when the operand is wrapped in ``all(...)``.
"""

from __future__ import annotations

import functools
import hashlib
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import polars as pl

from detector.errors import UsageError
from detector.events.identity import canonical_principal
from detector.events.schema import CANONICAL_COLUMNS

# --------------------------------------------------------------------------- errors


class ConditionError(UsageError, ValueError):
    """A condition that cannot be parsed or compiled; ``pos`` is a 0-based column or -1."""

    def __init__(self, message: str, pos: int = -1) -> None:
        super().__init__(message)
        self.message = message
        self.pos = pos


# --------------------------------------------------------------------------- AST


@dataclass(frozen=True)
class Value:
    """A literal as written: bare words may name a list, quoted strings never do."""

    text: str
    quoted: bool = False


@dataclass(frozen=True)
class FieldRef:
    name: str
    quantifier: str | None = None  # "any" | "all" | None (default any for lists)
    pos: int = -1


@dataclass(frozen=True)
class Pred:
    field: FieldRef
    op: str
    values: tuple[Value, ...] = ()
    pos: int = -1


@dataclass(frozen=True)
class And:
    items: tuple[Node, ...]


@dataclass(frozen=True)
class Or:
    items: tuple[Node, ...]


@dataclass(frozen=True)
class Not:
    item: Node


@dataclass(frozen=True)
class MacroRef:
    name: str
    pos: int = -1


@dataclass(frozen=True)
class Const:
    value: bool


Node = And | Or | Not | Pred | MacroRef | Const

COMPARISON_OPS = ("=", "!=", "<", "<=", ">", ">=")
WORD_OPS = (
    "in",
    "intersects",
    "startswith",
    "endswith",
    "contains",
    "icontains",
    "glob",
    "matches",
    "expands_to",
)
UNARY_OPS = ("exists",)
OPERATORS = (*COMPARISON_OPS, *WORD_OPS, *UNARY_OPS)
KEYWORDS = {"and", "or", "not", *WORD_OPS, *UNARY_OPS}

#: Bounds on what a rules file may ask the loader to build (hostile or careless files).
MAX_LIST_VALUES = 100_000
MAX_CONDITION_NODES = 20_000

#: Macros every rule file can use without defining them (Falco's tuning placeholders).
BUILTIN_MACROS = {"always_true": True, "never_true": False}

# --------------------------------------------------------------------------- tokenizer

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<path>[A-Za-z_][A-Za-z0-9_]*\[\s*(?:"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')\s*\])
  | (?P<op><=|>=|!=|==|=|<|>)
  | (?P<punct>[(),])
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
  | (?P<word>[^\s(),=<>!"']+)
    """,
    re.VERBOSE,
)


@dataclass(frozen=True)
class Token:
    kind: str  # path | op | punct | string | word | end
    text: str
    pos: int


def _unquote(text: str) -> str:
    body = text[1:-1]
    return re.sub(r"\\(.)", r"\1", body)


def tokenize(text: str) -> list[Token]:
    """Split a condition into tokens; anything unreadable is reported with its column."""
    tokens: list[Token] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise ConditionError(f"unexpected character {text[pos]!r}", pos)
        kind = m.lastgroup or "word"
        if kind != "ws":
            value = m.group()
            if kind == "string":
                value = _unquote(value)
            elif kind == "op" and value == "==":
                value = "="
            tokens.append(Token(kind, value, pos))
        pos = m.end()
    tokens.append(Token("end", "", len(text)))
    return tokens


# --------------------------------------------------------------------------- parser


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = tokenize(text)
        self.i = 0

    def peek(self, offset: int = 0) -> Token:
        return self.tokens[min(self.i + offset, len(self.tokens) - 1)]

    def next(self) -> Token:
        tok = self.peek()
        self.i += 1
        return tok

    def is_word(self, word: str, offset: int = 0) -> bool:
        tok = self.peek(offset)
        return tok.kind == "word" and tok.text == word

    def expect_punct(self, char: str) -> Token:
        tok = self.next()
        if tok.kind != "punct" or tok.text != char:
            found = tok.text or "end of condition"
            raise ConditionError(f"expected {char!r}, found {found!r}", tok.pos)
        return tok

    def parse(self) -> Node:
        node = self.parse_or()
        tok = self.peek()
        if tok.kind != "end":
            raise ConditionError(
                f"unexpected {tok.text!r} (missing 'and'/'or' or a parenthesis?)", tok.pos
            )
        return node

    def parse_or(self) -> Node:
        items = [self.parse_and()]
        while self.is_word("or"):
            self.next()
            items.append(self.parse_and())
        return items[0] if len(items) == 1 else Or(tuple(items))

    def parse_and(self) -> Node:
        items = [self.parse_not()]
        while self.is_word("and"):
            self.next()
            items.append(self.parse_not())
        return items[0] if len(items) == 1 else And(tuple(items))

    def parse_not(self) -> Node:
        if self.is_word("not"):
            self.next()
            return Not(self.parse_not())
        return self.parse_primary()

    def parse_primary(self) -> Node:
        tok = self.peek()
        if tok.kind == "punct" and tok.text == "(":
            self.next()
            node = self.parse_or()
            self.expect_punct(")")
            return node
        if tok.kind == "word" and tok.text in ("any", "all") and self.peek(1).text == "(":
            self.next()
            self.next()
            inner = self.next()
            if inner.kind not in ("word", "path"):
                raise ConditionError(f"expected a field inside {tok.text}(...)", inner.pos)
            self.expect_punct(")")
            return self.parse_predicate(FieldRef(inner.text, tok.text, inner.pos))
        if tok.kind in ("word", "path"):
            if tok.kind == "word" and tok.text in KEYWORDS:
                raise ConditionError(f"expected a field or macro, found {tok.text!r}", tok.pos)
            self.next()
            nxt = self.peek()
            if nxt.kind == "op" or (nxt.kind == "word" and nxt.text in OPERATORS):
                return self.parse_predicate(FieldRef(tok.text, None, tok.pos))
            if tok.kind == "path":
                raise ConditionError(f"expected an operator after {tok.text!r}", nxt.pos)
            return MacroRef(tok.text, tok.pos)
        found = tok.text or "end of condition"
        raise ConditionError(f"expected a field, macro or '(', found {found!r}", tok.pos)

    def parse_predicate(self, ref: FieldRef) -> Pred:
        op_tok = self.next()
        op = op_tok.text
        if op in UNARY_OPS:
            return Pred(ref, op, (), op_tok.pos)
        if op in COMPARISON_OPS:
            return Pred(ref, op, (self.parse_value(),), op_tok.pos)
        if op in WORD_OPS:
            if self.peek().kind == "punct" and self.peek().text == "(":
                return Pred(ref, op, self.parse_value_list(), op_tok.pos)
            return Pred(ref, op, (self.parse_value(),), op_tok.pos)
        raise ConditionError(f"expected an operator after {ref.name!r}", op_tok.pos)

    def parse_value(self) -> Value:
        tok = self.next()
        if tok.kind == "string":
            return Value(tok.text, quoted=True)
        if tok.kind == "word" and tok.text not in ("and", "or", "not"):
            return Value(tok.text)
        found = tok.text or "end of condition"
        raise ConditionError(f"expected a value, found {found!r}", tok.pos)

    def parse_value_list(self) -> tuple[Value, ...]:
        self.expect_punct("(")
        values: list[Value] = []
        if self.peek().kind == "punct" and self.peek().text == ")":
            self.next()
            return ()
        while True:
            values.append(self.parse_value())
            tok = self.next()
            if tok.kind == "punct" and tok.text == ")":
                return tuple(values)
            if not (tok.kind == "punct" and tok.text == ","):
                found = tok.text or "end of condition"
                raise ConditionError(f"expected ',' or ')' in a list, found {found!r}", tok.pos)


def parse(text: str) -> Node:
    """Parse a condition into its syntax tree (macros are resolved later, by name)."""
    if not text or not text.strip():
        raise ConditionError("empty condition", 0)
    return _Parser(text).parse()


# --------------------------------------------------------------------------- fields

_SCALAR_JSON = r'"(?:[^"\\]|\\.)*"|true|false|null|-?[0-9][0-9.eE+\-]*'
_QUOTED_BOOLEANS = ['"true"', '"false"']
_JSON_COLUMNS = ("request_object", "response_object", "annotations")
_KEY = re.compile(r"^[A-Za-z0-9_\-$@]+\Z")


def deep_values(column: str, key: str, sub_path: str | None = None) -> pl.Expr:
    """Every value of ``key`` anywhere in a JSON column, as a list of strings.

    A JSONPath match returns one value; a pod has many containers and a Deployment nests
    them in a template, so "any container is privileged" needs all of them. Values are
    strings (numbers and booleans as JSON writes them), except that the strings "true" and
    "false" keep their quotes: ``..privileged intersects (true)`` is the boolean, never a
    label or annotation that happens to be called ``privileged``. The values are
    found with one regex per row (scalars, flat arrays of scalars, or flat objects when a
    ``sub_path`` follows), which keeps this vectorized; nested objects under ``key`` are
    not descended into, which is why conditions may not follow a deep key with a path
    (:func:`resolve_field` refuses ``..securityContext.privileged``; ``..privileged``
    works). ``sub_path`` is for derived fields over objects known to be flat
    (``hostPath: {path, type}``).

    A JSON patch (``kubectl patch --type=json``) names the key in an operation's path
    instead (``{"op": "replace", "path": ".../securityContext/privileged", "value":
    true}``): those values count too (:func:`_patched_values`), so a patch is no way
    around a rule that a create or a merge patch would meet.
    """
    k = re.escape(key)
    prefix = rf'"{k}"\s*:\s*'
    col = pl.col(column)
    if sub_path is None:
        value = rf"(?:{_SCALAR_JSON}|\[[^\[\]{{}}]*\])"
        found = pl.concat_list(
            col.str.extract_all(prefix + value),
            _patched_values(col, "/" + key + r"(?:/(?:-|[0-9]+))?", value, f'"{key}":'),
        )
        tokens = found.list.join("\n").str.replace_all(prefix, "").str.extract_all(_SCALAR_JSON)
        # The strings "true"/"false" keep their quotes, so that a bare true in a condition
        # is the JSON boolean: a label `privileged: "true"` is not a privileged container.
        token = pl.element()
        return tokens.list.eval(
            pl.when(token.is_in(_QUOTED_BOOLEANS))
            .then(token)
            .otherwise(token.str.json_path_match("$"))
        )
    value = rf"(?:\{{[^{{}}]*\}}|{_SCALAR_JSON})"
    objects = pl.concat_list(
        col.str.extract_all(prefix + value).list.eval(pl.element().str.replace(f"^{prefix}", "")),
        _patched_values(col, "/" + key, value, ""),
        # ".../hostPath/path": the one member a flat object holds, set alone.
        _patched_values(
            col, f"/{key}/{sub_path}", _SCALAR_JSON, '{"' + sub_path + '":', suffix="}"
        ),
    )
    return objects.list.eval(pl.element().str.json_path_match("$." + sub_path))


#: A JSON-patch operation's path (a JSON string up to its tail), and its ``op`` member.
_PATCH_PATH = r'"path"\s*:\s*"(?:[^"\\]|\\.)*'
_PATCH_OP = r'"op"\s*:\s*"[a-z]+"'


def _patched_values(
    col: pl.Expr, tail: str, value: str, prefix: str, *, suffix: str = ""
) -> pl.Expr:
    """The values JSON-patch operations in ``col`` set at paths ending in ``tail`` (a
    regex), each as ``prefix + value + suffix``. Members in any order (``op``, ``path``,
    ``value`` as kubectl writes them, or ``value`` first); a ``remove`` has no value and a
    ``test`` only compares, so neither sets anything."""
    path, value = rf'{_PATCH_PATH}{tail}"', f"(?:{value})"
    op = rf"(?:{_PATCH_OP}\s*,\s*)?"  # before the member it precedes
    op_after = rf"(?:\s*,\s*{_PATCH_OP})?"
    forward = rf'{op}{path}{op_after}\s*,\s*"value"\s*:\s*{value}{op_after}'
    backward = rf'{op}"value"\s*:\s*{value}{op_after}\s*,\s*{path}{op_after}'
    operation = pl.element()
    bare = (
        operation.str.replace(rf'^{op}{path}{op_after}\s*,\s*"value"\s*:\s*', "")
        .str.replace(rf'^{op}"value"\s*:\s*', "")
        .str.replace(rf"{op_after}\s*,\s*{path}{op_after}$", "")
        .str.replace(rf"\s*,\s*{_PATCH_OP}$", "")
    )
    return (
        col.str.extract_all(f"{forward}|{backward}")
        .list.eval(operation.filter(~operation.str.contains(r'"op"\s*:\s*"test"')))
        .list.eval(pl.concat_str(pl.lit(prefix), bare, pl.lit(suffix)))
    )


def _json_path(column: str, path: str) -> pl.Expr:
    _check_json_path(path)
    return pl.col(column).str.json_path_match(path)


@functools.lru_cache(maxsize=512)
def _check_json_path(path: str) -> None:
    """Reject a JSONPath polars cannot compile at load time: it compiles a path only when a
    query first runs it, and one bad path in a user's rule stopped all scoring with a
    page of query plan."""
    _polars_compiles("JSONPath", path, lambda s: s.str.json_path_match(path), "{}")


#: JSONPath steps that can match more than one value: a wildcard, a filter, a recursive
#: descent, a slice or a union. polars' ``json_path_match`` returns only the first match,
#: so a rule on ``$.subjects[?(@.kind == 'User')].name`` saw the first User and missed the
#: rest; such paths give a list of every match instead (see :func:`_json_path_all`).
_MULTI_MATCH = re.compile(r"\[\s*\*\s*\]|\.\.|\.\*|\[\s*\?|\[[^\]'\"]*[:,][^\]'\"]*\]")


#: One JSONPath parser for every path: ``jsonpath_ng.ext.parse`` builds a new one (its LALR
#: tables) per call, 4 ms each, a third of loading the default rules. A parser is not
#: safe to share between threads mid-parse, hence the lock (rules load on any thread).
_JSONPATH_LOCK = threading.Lock()


@functools.cache
def _jsonpath_parser() -> Any:
    from jsonpath_ng.ext import parser

    # jsonpath-ng 1.8 renamed the class; 1.6 and 1.7 have only the old name.
    cls = getattr(parser, "ExtendedJsonPathParser", None) or parser.ExtentedJsonPathParser
    return cls()


#: Bodies whose answer one row-by-row body reader remembers (by a 128-bit digest of the
#: text, not the text: a few dozen bytes each), then it starts over.
KNOWN_BODIES = 4096
#: The largest answer remembered (characters over its values): a hostile body can make a
#: reader's answer as big as itself, and 4,096 of those must not stay in memory.
ANSWER_CHARS = 4096


def _per_distinct_body(
    read: Callable[[str], list[str] | None],
) -> Callable[[str], list[str] | None]:
    """``read`` (a request body's text -> its values), remembering the answer for each body
    seen: bodies repeat (every pod of a ReplicaSet is created from the same text, Helm
    writes the same RoleBindings again), and parsing the JSON is the cost, not the lookup
    (the bench's day: 1,525 RoleBinding writes, 32 distinct bodies). The digest is
    BLAKE2b: a crafted body cannot pass for another."""
    known: dict[bytes, list[str] | None] = {}

    def cached(text: str) -> list[str] | None:
        key = hashlib.blake2b(text.encode(), digest_size=16).digest()
        try:
            return known[key]
        except KeyError:
            pass
        out = read(text)
        if out is not None and sum(len(v) for v in out) > ANSWER_CHARS:
            return out
        if len(known) >= KNOWN_BODIES:
            known.clear()
        known[key] = out
        return out

    return cached


def _json_path_all(column: str, path: str) -> pl.Expr:
    """Every value ``path`` matches in each body, as a list of strings (like
    ``json_path_match`` gives one: strings as they are, other values as compact JSON, JSON
    nulls left out). jsonpath-ng evaluates it, row by row, only over the rows that reach
    this term (body terms run after the cheap ones); a body that does not parse, or nests
    too deeply for it, gives null, which every predicate reads as false."""
    from jsonpath_ng.exceptions import JSONPathError

    try:
        with _JSONPATH_LOCK:
            compiled = _jsonpath_parser().parse(path)
    except JSONPathError as exc:
        raise ConditionError(f"invalid JSONPath {path!r}: {exc}") from None

    def matches(text: str) -> list[str] | None:
        try:
            found = [m.value for m in compiled.find(orjson.loads(text))]
        except (orjson.JSONDecodeError, RecursionError, TypeError, ValueError):
            return None
        return [
            v if isinstance(v, str) else orjson.dumps(v).decode() for v in found if v is not None
        ]

    return pl.col(column).map_elements(
        _per_distinct_body(matches), return_dtype=pl.List(pl.String), skip_nulls=True
    )


def _object_name() -> pl.Expr:
    return pl.coalesce(
        pl.when(pl.col("name") != "").then(pl.col("name")),
        _json_path("response_object", "$.metadata.name"),
        _json_path("request_object", "$.metadata.name"),
    )


def _target() -> pl.Expr:
    name = _object_name()
    ns = pl.col("namespace")
    return (
        pl.when(name.is_not_null() & ns.is_not_null() & (ns != ""))
        .then(pl.concat_str([ns, name], separator="/"))
        .when(name.is_not_null())
        .then(name)
        .when(ns.is_not_null() & (ns != ""))
        .then(pl.concat_str([ns, pl.lit("*")], separator="/"))
        .otherwise(pl.lit("*"))
    )


def _image_repositories(column: str = "request_object") -> pl.Expr:
    # Drop a digest or a tag (a last ":x" with no "/" after it, so registry ports survive).
    return deep_values(column, "image").list.eval(
        pl.element().str.replace(r"@sha256:[0-9a-fA-F]+$", "").str.replace(r":[^/:@]+$", "")
    )


def _object_image_repositories() -> pl.Expr:
    """The request's images, or, for a patch that names none (``kubectl patch``, ``kubectl
    edit`` of a command), the images of the object as the response returns it."""
    request = _image_repositories()
    return (
        pl.when(request.list.len() > 0)
        .then(request)
        .otherwise(_image_repositories("response_object"))
    )


def _subjects() -> pl.Expr:
    names = r'"name"\s*:\s*"(?:[^"\\]|\\.)*"'
    # A JSON patch body has no subjects: the response (the whole binding) has them.
    subjects = pl.coalesce(
        _json_path("request_object", "$.subjects"), _json_path("response_object", "$.subjects")
    )
    return subjects.str.extract_all(names).list.eval(
        pl.element().str.replace(r'^"name"\s*:\s*', "").str.json_path_match("$")
    )


def _role_ref(key: str) -> pl.Expr:
    """A binding's roleRef field from the request body, else (a patch, which leaves the
    immutable roleRef out) from the response body, which holds the whole binding."""
    return pl.coalesce(
        _json_path("request_object", f"$.roleRef.{key}"),
        _json_path("response_object", f"$.roleRef.{key}"),
    )


def _host_paths() -> pl.Expr:
    """Every hostPath path, normalised as the kubelet resolves it: ``//`` is ``/``, ``/./``
    is ``/``, and a trailing ``/.`` or ``/`` goes (``/etc/.`` is ``/etc``, ``//`` is ``/``).
    The API server refuses ``..`` in a hostPath, so there is nothing else to resolve."""
    return deep_values("request_object", "hostPath", "path").list.eval(
        pl.element()
        .str.replace_all(r"/+", "/")
        .str.replace_all(r"/(?:\./)+", "/")
        .str.replace(r"/\.$", "/")
        .str.replace(r"(.)/$", "${1}")
    )


def _service_type() -> pl.Expr:
    """A Service body's ``spec.type``; for a JSON patch, the value its last operation on
    ``/spec/type`` sets (``[{"op": "replace", "path": "/spec/type", "value": "NodePort"}]``
    carries no ``spec`` to read)."""
    patched = _patched_values(pl.col("request_object"), "/spec/type", _SCALAR_JSON, "")
    return pl.coalesce(
        _json_path("request_object", "$.spec.type"),
        patched.list.last().str.json_path_match("$"),
    )


#: The words of a command line that run a shell, a tool for breaking out of the container
#: (nsenter, chroot, crictl, insmod...) or one for calling home (nc, socat, curl, wget, an
#: interpreter): as a whole word, a path's last part (``/bin/sh``) or after ``=``.
SHELL_COMMAND_WORDS = (
    r"(^|[^A-Za-z0-9_.-])(sh|bash|dash|ash|zsh|ksh|busybox|nc|ncat|netcat|socat|nsenter"
    r"|chroot|unshare|curl|wget|python[0-9.]*|perl|ruby|php|telnet|ssh|crictl|ctr|insmod"
    r"|modprobe)($|[^A-Za-z0-9_.-])"
)
_CONTAINER_LISTS = frozenset({"containers", "initContainers", "ephemeralContainers"})
_PATCHED_COMMAND = re.compile(
    r"/(?:c|initC|ephemeralC)ontainers/(?:[0-9]+|-)/(?:command|args)(?:/(?:-|[0-9]+))?$"
)


def _words(value: Any) -> list[str]:
    items = value if isinstance(value, list) else [value]
    return [v if isinstance(v, str) else orjson.dumps(v).decode() for v in items if v is not None]


def command_lines(body: Any) -> list[str]:
    """Each container's command line in a request body: its ``command`` then its ``args``,
    joined by spaces (containers, init and ephemeral containers, in pods and pod templates
    at any depth), and what each JSON-patch operation sets at a container's
    ``command``/``args``. Probes and lifecycle hooks are not containers: left out."""
    lines: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in _CONTAINER_LISTS and isinstance(value, list):
                    for c in value:
                        if isinstance(c, dict):
                            words = [*_words(c.get("command")), *_words(c.get("args"))]
                            if words:
                                lines.append(" ".join(words))
                walk(value)
        elif isinstance(node, list):
            for item in node:
                path = item.get("path") if isinstance(item, dict) else None
                if (
                    isinstance(path, str)
                    and item.get("op") in ("add", "replace")
                    and _PATCHED_COMMAND.search(path)
                    and (words := _words(item.get("value")))
                ):
                    lines.append(" ".join(words))
                walk(item)

    walk(body)
    return lines


def _command_lines(*, shell_only: bool) -> pl.Expr:
    """:func:`command_lines` of each request body (all of them, or those naming one of
    :data:`SHELL_COMMAND_WORDS`), row by row over the rows that reach this term (body
    terms run after the cheap ones: pod-spec writes); a body that does not parse gives
    null, which every predicate reads as false."""
    shell = re.compile(SHELL_COMMAND_WORDS)

    def lines(text: str) -> list[str] | None:
        try:
            found = command_lines(orjson.loads(text))
        except (orjson.JSONDecodeError, RecursionError, TypeError, ValueError):
            return None
        return [line for line in found if shell.search(line)] if shell_only else found

    return pl.col("request_object").map_elements(
        _per_distinct_body(lines), return_dtype=pl.List(pl.String), skip_nulls=True
    )


def _host_namespaces() -> pl.Expr:
    flags = []
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        on = deep_values("request_object", key).list.contains("true").fill_null(False)
        flags.append(pl.when(on).then(pl.lit(key)))
    return pl.concat_list(flags).list.drop_nulls()


#: ``+`` and every ``%XX`` escape of an ASCII character, in either case (``%2f``, ``%2F``,
#: ``%73`` for ``s``), with what it stands for: decoded in one pass, so ``%252F`` is the
#: literal ``%2F`` the container receives, as the API server decodes it once.
_URL_ESCAPES = ["+", *(f"%{i:02X}" for i in range(128))]
_URL_DECODED = [" ", *(chr(i) for i in range(128))]


def _uri_param(name: str) -> pl.Expr:
    """All values of one query parameter of ``request_uri``, URL-decoded (ASCII escapes)."""
    return (
        pl.col("request_uri")
        .str.extract_all(rf"[?&]{name}=[^&]*")
        .list.eval(
            pl.element()
            .str.replace(rf"^[?&]{name}=", "")
            .str.replace_many(_URL_ESCAPES, _URL_DECODED, ascii_case_insensitive=True)
        )
    )


def _aws_auth_mappings() -> pl.Expr:
    """``ARN -> groups`` for each entry of aws-auth's mapRoles/mapUsers (YAML in a string).

    The ConfigMap's values are YAML documents inside JSON strings; each top-level ``- ``
    item maps one IAM role or user. Block (``- system:masters``) and flow (``[a, b]``)
    group lists are both read. An entry without groups says so.
    """
    entries = []
    for key in ("mapRoles", "mapUsers"):
        text = _json_path("request_object", f"$.data.{key}")
        split = text.str.replace(r"^\s*-", "\n-").str.split("\n-").list.slice(1)
        entries.append(split.fill_null(pl.lit([], dtype=pl.List(pl.String))))
    item = pl.element()
    arn = item.str.extract(r"(?:rolearn|userarn)\s*:\s*['\"]?([^\s'\"]+)", 1)
    block = item.str.extract(r"groups[ \t]*:[ \t]*\n((?:[ \t]*-[ \t]*\S+[ \t]*(?:\n|$))+)", 1)
    flow = item.str.extract(r"groups\s*:\s*\[([^\]]*)\]", 1)
    groups = pl.coalesce(
        block.str.extract_all(r"-\s*[^\s'\"]+")
        .list.eval(pl.element().str.replace(r"^-\s*", ""))
        .list.join(", "),
        flow.str.replace_all(r"['\"\s]", "").str.replace_all(",", ", "),
    )
    line = pl.concat_str([arn, pl.lit(" -> "), groups.fill_null("no groups")])
    found = pl.concat_list(entries).list.eval(line).list.drop_nulls()
    return pl.when(found.list.len() > 0).then(found)


def _webhook_targets() -> pl.Expr:
    """Where a webhook configuration sends objects: ``service ns/name`` or its URL."""
    service = r'"service"\s*:\s*\{[^{}]*\}'
    services = (
        pl.col("request_object")
        .str.extract_all(service)
        .list.eval(
            pl.concat_str(
                [
                    pl.lit("service "),
                    pl.element()
                    .str.replace(r'^"service"\s*:\s*', "")
                    .str.json_path_match("$.namespace"),
                    pl.lit("/"),
                    pl.element()
                    .str.replace(r'^"service"\s*:\s*', "")
                    .str.json_path_match("$.name"),
                ]
            )
        )
    )
    urls = deep_values("request_object", "url").list.eval(
        pl.concat_str([pl.lit("URL "), pl.element()])
    )
    return pl.concat_list([services, urls]).list.drop_nulls().list.unique(maintain_order=True)


def _public_outside_aws() -> pl.Expr:
    from detector.rules.iplists import public_outside_aws

    return public_outside_aws()


def _source_in(kind: str) -> pl.Expr:
    from detector.rules.iplists import source_in  # iplists reports ConditionError

    return source_in(kind)


@dataclass(frozen=True)
class DerivedField:
    kind: str
    build: Callable[[], pl.Expr]
    doc: str
    uses_json: bool = True


#: Named fields computed from several columns; documented in docs/rules.md.
DERIVED_FIELDS: dict[str, DerivedField] = {
    "images": DerivedField(
        "list",
        lambda: deep_values("request_object", "image"),
        "every container image in the request body (containers, initContainers, "
        "ephemeralContainers, pod templates)",
    ),
    "image_repositories": DerivedField(
        "list", _image_repositories, "`images` without tag or digest"
    ),
    "object_image_repositories": DerivedField(
        "list",
        _object_image_repositories,
        "`image_repositories`, or for a patch that names no image, those of the patched "
        "object in the response body",
    ),
    "host_paths": DerivedField(
        "list",
        _host_paths,
        "every `hostPath.path` in the request body (pod volumes, a PersistentVolume), "
        "normalised (`//`, `/./`, a trailing `/.` or `/` removed: `/etc/.` is `/etc`)",
    ),
    "host_namespaces": DerivedField(
        "list",
        _host_namespaces,
        "which of hostNetwork, hostPID, hostIPC the request body sets to true",
    ),
    "service_type": DerivedField(
        "str",
        _service_type,
        "a Service body's `spec.type` (`NodePort`, `LoadBalancer`...), or the value a JSON "
        "patch sets at `/spec/type`",
    ),
    "added_capabilities": DerivedField(
        "list",
        lambda: deep_values("request_object", "add").list.eval(
            pl.element().str.to_uppercase().str.replace(r"^CAP_", "")
        ),
        "every Linux capability added to a container (`securityContext.capabilities.add`), "
        "upper case, without a `CAP_` prefix",
    ),
    "aws_auth_mappings": DerivedField(
        "list",
        _aws_auth_mappings,
        "`ARN -> groups` for each IAM role or user mapped in an aws-auth body",
    ),
    "webhook_targets": DerivedField(
        "list",
        _webhook_targets,
        "where a webhook configuration body sends objects (`service ns/name`, `URL ...`)",
    ),
    "source_ip_public": DerivedField(
        "bool",
        lambda: ~_source_in("non_public"),
        "true when an address of `source_ips` is a public IPv4 address (not private, CGNAT, "
        "loopback, link-local, reserved): every address is judged, since all but the last "
        "are the client's own X-Forwarded-For claim",
        uses_json=False,
    ),
    "source_ip_in_aws": DerivedField(
        "bool",
        lambda: _source_in("aws"),
        "true when every public address of `source_ips` (one at least) is in AWS's "
        "published ranges (the shipped snapshot, `detect rules aws-ranges` refreshes it)",
        uses_json=False,
    ),
    "source_ips_outside_aws": DerivedField(
        "list",
        lambda: _public_outside_aws(),
        "the addresses of `source_ips` that are public and outside AWS's published ranges "
        "(for reasons: which of a forwarded request's addresses was judged); one the client "
        "wrote in a forwarding header says so",
        uses_json=False,
    ),
    "source_ip_denied": DerivedField(
        "bool",
        lambda: _source_in("denied"),
        "true when an address of `source_ips` is on a deny list named in detect.toml (`ip_lists`)",
        uses_json=False,
    ),
    "subjects": DerivedField(
        "list",
        _subjects,
        "names of the subjects of a RoleBinding/ClusterRoleBinding body (the request's, "
        "else the response's: a JSON patch carries only operations)",
    ),
    "role_ref": DerivedField(
        "str",
        lambda: _role_ref("name"),
        "the role a RoleBinding/ClusterRoleBinding grants (`roleRef.name`), from the "
        "request body or, for a patch that leaves it out, the response body",
    ),
    "role_ref_kind": DerivedField(
        "str",
        lambda: _role_ref("kind"),
        "`Role` or `ClusterRole`: the kind of `role_ref`",
    ),
    "exec_command": DerivedField(
        "str",
        lambda: _uri_param("command").list.join(" "),
        "the command of an exec request (its `command=` parameters, joined)",
        uses_json=False,
    ),
    "exec_container": DerivedField(
        "str",
        lambda: _uri_param("container").list.first(),
        "the container named by an exec/attach request",
        uses_json=False,
    ),
    "label_selector": DerivedField(
        "str",
        lambda: _uri_param("labelSelector").list.first(),
        "a list or watch request's label selector, URL-decoded: its first `labelSelector=` "
        "parameter, the one the API server applies (a second one is ignored)",
        uses_json=False,
    ),
    "container_command_lines": DerivedField(
        "list",
        lambda: _command_lines(shell_only=False),
        "each container's command line in the request body: its `command` then its `args`, "
        "joined by spaces (init and ephemeral containers, pod templates, what a JSON patch "
        "sets at either), not probes or lifecycle hooks",
    ),
    "shell_command_lines": DerivedField(
        "list",
        lambda: _command_lines(shell_only=True),
        "the `container_command_lines` that run a shell, a tool for breaking out or one for "
        "calling home (sh, bash, busybox, nc, socat, nsenter, chroot, unshare, curl, wget, "
        "python, perl, ruby, php, telnet, ssh, crictl, ctr, insmod, modprobe: a whole word, "
        "a path's last part or after `=`)",
    ),
    "in_own_namespace": DerivedField(
        "bool",
        lambda: pl.col("user_name").str.starts_with(
            pl.concat_str([pl.lit("system:serviceaccount:"), pl.col("namespace"), pl.lit(":")])
        ),
        "true when a service account acts in its own namespace",
        uses_json=False,
    ),
    "object_name": DerivedField(
        "str",
        _object_name,
        "the object's name, also for creates where only the body carries it",
    ),
    "target": DerivedField("str", _target, "`namespace/name` of the object (`*` when absent)"),
    "request_path": DerivedField(
        "str",
        lambda: pl.col("request_uri").str.replace(r"\?.*$", ""),
        "`request_uri` without its query string",
        uses_json=False,
    ),
}


def _column_kind(dtype: pl.DataType) -> str:
    if dtype == pl.String:
        return "str"
    if dtype.is_integer():
        return "int"
    if dtype.is_float():
        return "float"
    if dtype == pl.Boolean:
        return "bool"
    if isinstance(dtype, pl.List):
        return "list"
    return "other"


@dataclass(frozen=True)
class ResolvedField:
    """A field as an expression, its kind (str/int/float/bool/list) and whether it reads JSON."""

    expr: pl.Expr
    kind: str
    uses_json: bool


def resolve_field(name: str) -> ResolvedField:
    """Turn a field name into an expression; unknown names raise :class:`ConditionError`.

    Remembered per name, since loading the rules resolves some 4,500 field names (each
    macro expands to its fields again in every rule) and building their expressions was a
    third of the load; polars expressions are immutable, so rules can share them. Not the
    address-list fields: which lists they read is configuration (:data:`GATE_DERIVED`).
    """
    if name in GATE_DERIVED:
        return _resolve_field(name)
    return _remembered_field(name)


def _resolve_field(name: str) -> ResolvedField:
    bracket = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)\[\s*(.*)\s*\]$", name, re.S)
    if bracket:
        column, quoted = bracket.groups()
        if column not in _JSON_COLUMNS:
            raise ConditionError(
                f"only {', '.join(_JSON_COLUMNS)} take a JSONPath in brackets, not {column!r}"
            )
        path = _unquote(quoted)
        if not path.startswith("$"):
            raise ConditionError(f"a JSONPath starts with '$': {path!r}")
        if _MULTI_MATCH.search(path):
            return ResolvedField(_json_path_all(column, path), "list", True)
        return ResolvedField(_json_path(column, path), "str", True)
    if name in CANONICAL_COLUMNS:
        kind = _column_kind(CANONICAL_COLUMNS[name])
        return ResolvedField(pl.col(name), kind, name in _JSON_COLUMNS)
    if name in DERIVED_FIELDS:
        d = DERIVED_FIELDS[name]
        return ResolvedField(d.build(), d.kind, d.uses_json)
    head, dot, rest = name.partition(".")
    if dot and head in _JSON_COLUMNS and rest:
        if rest.startswith("."):
            key, _, sub = rest[1:].partition(".")
            if not key or not _KEY.match(key):
                raise ConditionError(f"bad deep key in {name!r}: write {head}..key")
            if sub:
                raise ConditionError(
                    f"{name!r}: a deep key collects the scalar values of one key anywhere in "
                    f"the body and cannot be followed by a path (it would miss objects that "
                    f"hold objects); write {head}..{sub.rsplit('.', 1)[-1]} for that key "
                    f"anywhere, or a full path such as {head}.spec.{key}.{sub}"
                )
            return ResolvedField(deep_values(head, key), "list", True)
        if not all(_KEY.match(part) for part in rest.split(".")):
            raise ConditionError(
                f"bad JSON path in {name!r}; for keys with dots or slashes write "
                f"{head}[\"$['a.b/c']\"]"
            )
        return ResolvedField(_json_path(head, "$." + rest), "str", True)
    raise ConditionError(
        f"unknown field {name!r}: use a canonical column (see docs/schema.md), "
        f"request_object.<path>, request_object..<key> or one of {', '.join(DERIVED_FIELDS)}"
    )


#: Field names are few (the built-in rules use about 300); user rule files add theirs.
_remembered_field = functools.lru_cache(maxsize=4096)(_resolve_field)


# --------------------------------------------------------------------------- operators


_RUST_REGEX_META = re.compile(r"([\\.^$|?*+()\[\]{}])")


def _regex_escape(text: str) -> str:
    """Escape for the Rust regex engine polars uses (only its metacharacters)."""
    return _RUST_REGEX_META.sub(r"\\\1", text)


@functools.lru_cache(maxsize=8192)
def glob_to_regex(pattern: str) -> str:
    """``*`` any run, ``?`` one character, ``[abc]``/``[!abc]`` a class; anchored.

    Runs of plain characters are escaped at once (rule sets hold hundreds of globs, and
    a character at a time was a quarter of loading them); each glob is translated once
    (lists are shared by many rules)."""
    out: list[str] = []
    literal_from = i = 0
    while i < len(pattern):
        c, token, last = pattern[i], None, i
        if c == "*":
            token = ".*"
        elif c == "?":
            token = "."
        elif c == "[" and (close := pattern.find("]", i + 2)) != -1:
            body = pattern[i + 1 : close]
            if body.startswith("!"):
                body = "^" + body[1:]
            token, last = "[" + body.replace("\\", "\\\\") + "]", close
        if token is not None:
            out += [_regex_escape(pattern[literal_from:i]), token]
            literal_from = last + 1
        i = last + 1
    out.append(_regex_escape(pattern[literal_from:]))
    return "".join(out)


@functools.lru_cache(maxsize=512)
def check_regex(pattern: str) -> None:
    """Reject a regex polars cannot compile, at load time rather than mid-scoring.

    A pattern that compiled is not compiled again (lists joined into one regex are shared
    by many rules); one that failed raises each time, as exceptions are not remembered.
    """
    _polars_compiles("regex", pattern, lambda s: s.str.contains(pattern), "")


def _polars_compiles(kind: str, text: str, run: Callable[[pl.Series], object], sample: str) -> None:
    """Run ``run`` on a one-value series so polars compiles ``text``; its refusal becomes a
    :class:`ConditionError` of one line (polars' own message runs over several, with the
    query plan)."""
    try:
        run(pl.Series([sample], dtype=pl.String))
    except Exception as exc:  # polars raises ComputeError with the parser's message
        message = str(exc).split("This error occurred")[0]
        found = re.search(r"^error: (.*)$", message, re.M)
        reason = found.group(1) if found else message
        reason = " ".join(reason.replace("error compiling JSON path expression", "").split())
        shown = text if len(text) <= 120 else text[:117] + "..."
        raise ConditionError(f"invalid {kind} {shown!r}: {reason[:200]}") from None


def _number(text: str, field_name: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ConditionError(f"{field_name} compares with numbers, not {text!r}") from None


def _typed(values: Sequence[str], kind: str, field_name: str) -> list[object]:
    if kind == "int":
        out: list[object] = []
        for v in values:
            num = _number(v, field_name)
            if num != int(num):
                raise ConditionError(f"{field_name} holds whole numbers, not {v!r}")
            out.append(int(num))
        return out
    if kind == "float":
        return [_number(v, field_name) for v in values]
    if kind == "bool":
        out = []
        for v in values:
            if v.lower() not in ("true", "false"):
                raise ConditionError(f"{field_name} is true or false, not {v!r}")
            out.append(v.lower() == "true")
        return out
    return [str(v) for v in values]


def _shell_text(s: pl.Expr) -> pl.Expr:
    """A command line as the shell hands it over: quotes and backslashes removed
    (``se""crets``, ``se\\crets`` and ``'secrets'`` are all ``secrets``)."""
    return s.str.replace_all(r"""["'\\]""", "")


#: One character of a path as a glob may write it: itself, ``?`` or a bracket expression.
def _glob_char(c: str) -> str:
    return rf"(?:{_regex_escape(c)}|\?|\[[^\]/\s]*\])"


def _glob_component(part: str, *, first: bool) -> str:
    """Every glob word that can match the path component ``part``: the component itself
    (a character may be ``?`` or ``[...]``), or a prefix of it, ``*`` (more words and ``*``
    may follow) and a suffix of it (``cred*``, ``t*n``, ``*``). The first component of a
    value must keep at least its first character, or ``*/*`` would be every path."""
    chars = [_glob_char(c) for c in part]
    exact = "".join(chars)
    prefix = ""
    for c in reversed(chars[1:] if first else chars):
        prefix = f"(?:{c}{prefix})?"
    if first:
        prefix = chars[0] + prefix
    suffix = ""
    for c in chars:
        suffix = f"(?:{suffix}{c})?"
    return rf"(?:{exact}|{prefix}\*(?:[^/\s*]*\*)*{suffix})"


@functools.cache
def expansion_regex(values: tuple[str, ...]) -> str:
    """``expands_to``: a case-insensitive regex for text holding one of ``values`` once the
    shell has removed quotes, or a glob (``*``, ``?``, ``[...]``, one path component at a
    time, as the shell expands them) that can expand to a path holding it:
    ``/var/run/secrets/*/token``, ``~/.aws/cred*``, ``/etc/kube*/admin.conf``, ``t?ken``.
    Values without a ``/`` are matched as they are."""
    parts = []
    for value in values:
        if "/" not in value:
            parts.append(_regex_escape(value))
            continue
        components = value.split("/")
        first = next((i for i, c in enumerate(components) if c), len(components))
        parts.append(
            "/".join(
                _glob_component(c, first=i == first) if c else "" for i, c in enumerate(components)
            )
        )
    return "(?i)(?:" + "|".join(parts) + ")" if parts else r"[^\s\S]"


def _scalar_op(e: pl.Expr, op: str, values: list[str], kind: str, field_name: str) -> pl.Expr:
    """One operator applied to one scalar expression (a column or a list element)."""
    if op == "exists":
        present = e.is_not_null()
        return present & (e.cast(pl.String) != "") if kind == "str" else present
    if op in ("=", "in", "intersects"):
        if op == "=" and len(values) != 1:
            raise ConditionError(f"'=' takes one value; use 'in' for a list ({field_name})")
        typed = _typed(values, kind, field_name)
        if not typed:
            return pl.lit(False)
        return e == typed[0] if op == "=" else e.is_in(typed)
    if op in ("<", "<=", ">", ">="):
        if len(values) != 1:
            raise ConditionError(f"{op!r} takes one value ({field_name})")
        bound = _number(values[0], field_name)
        num = e if kind in ("int", "float") else e.cast(pl.String).cast(pl.Float64, strict=False)
        return {"<": num < bound, "<=": num <= bound, ">": num > bound, ">=": num >= bound}[op]
    if not values:
        return pl.lit(False)
    s = e.cast(pl.String)
    if op == "contains":
        return s.str.contains_any(values)
    if op == "icontains":
        return s.str.contains_any(values, ascii_case_insensitive=True)
    if op == "expands_to":
        pattern = expansion_regex(tuple(values))
        check_regex(pattern)  # a list of many long paths may pass the regex size limit
        return _shell_text(s).str.contains(pattern)
    if op == "startswith":
        return s.str.contains("^(?:" + "|".join(_regex_escape(v) for v in values) + ")")
    if op == "endswith":
        return s.str.contains("(?:" + "|".join(_regex_escape(v) for v in values) + ")$")
    if op == "glob":
        rx = "^(?:" + "|".join(glob_to_regex(v) for v in values) + ")$"
        check_regex(rx)
        return s.str.contains(rx)
    if op == "matches":
        for v in values:
            check_regex(v)
        return s.str.contains("|".join(f"(?:{v})" for v in values))
    raise ConditionError(f"unknown operator {op!r}")


def predicate(
    field_name: str, op: str, values: Sequence[str], quantifier: str | None = None
) -> pl.Expr:
    """A null-safe boolean expression for ``field op values`` (lists: any/all elements).

    ``field_name`` may be written ``all(field)`` or ``any(field)`` as in conditions.
    """
    quantified = re.match(r"^(all|any)\((.+)\)$", field_name.strip())
    if quantified:
        quantifier, field_name = quantified.group(1), quantified.group(2).strip()
    resolved = resolve_field(field_name)
    return _predicate(resolved, field_name, op, list(values), quantifier)


def _predicate(
    resolved: ResolvedField, name: str, op: str, values: list[str], quantifier: str | None
) -> pl.Expr:
    if op == "!=":
        return ~_predicate(resolved, name, "=", values, quantifier)
    if resolved.kind == "list":
        if op == "exists" and quantifier is None:
            return (resolved.expr.list.len() > 0).fill_null(False)
        inner = _scalar_op(pl.element(), op, values, "str", name).fill_null(False)
        checked = resolved.expr.list.eval(inner)
        if quantifier == "all":
            result = (resolved.expr.list.len() > 0) & checked.list.all()
        else:
            result = checked.list.any()
        return result.fill_null(False)
    if quantifier == "all":
        raise ConditionError(f"all(...) needs a list field; {name!r} holds one value")
    if resolved.kind == "other" and op not in ("exists",):
        raise ConditionError(f"{name!r} cannot be compared with {op!r}")
    return _scalar_op(resolved.expr, op, values, resolved.kind, name).fill_null(False)


# --------------------------------------------------------------------------- compiler


@dataclass
class Compiler:
    """Resolves macros and lists, then turns syntax trees into polars expressions.

    ``macros`` holds macro conditions as text and ``lists`` named value lists; both are
    looked up by name when a rule is compiled, so a later override file can redefine them.
    """

    macros: dict[str, str] = field(default_factory=dict)
    lists: dict[str, list[str]] = field(default_factory=dict)
    _macro_ast: dict[str, Node] = field(default_factory=dict)
    _list_cache: dict[str, list[str]] = field(default_factory=dict)
    _nodes: int = 0

    def expand_list(self, name: str, _seen: tuple[str, ...] = ()) -> list[str]:
        """A list's values with the lists it names expanded, each value once.

        Lists may name lists; expansions are memoized and de-duplicated, so lists that name
        each other many times over cost their distinct values, not the number of paths
        through them (a 600-byte file could otherwise ask for 10^12 values). A cycle, or a
        list of more than :data:`MAX_LIST_VALUES` distinct values, is an error.
        """
        if name in self._list_cache:
            return self._list_cache[name]
        if name in _seen:
            raise ConditionError(f"list {name!r} includes itself ({' -> '.join((*_seen, name))})")
        out: dict[str, None] = {}
        for item in self.lists[name]:
            text = str(item)
            if text in self.lists:
                out.update(dict.fromkeys(self.expand_list(text, (*_seen, name))))
            else:
                out[text] = None
            if len(out) > MAX_LIST_VALUES:
                raise ConditionError(
                    f"list {name!r} expands to more than {MAX_LIST_VALUES:,} values"
                )
        self._list_cache[name] = list(out)
        return self._list_cache[name]

    def values(self, values: Sequence[Value | str]) -> list[str]:
        """Literal values with bare list names expanded (Falco: ``in (my_list, other)``).

        An IAM session named as ``arn:aws:sts::ACCT:assumed-role/ROLE/SESSION`` also
        matches in the form principals are stored in (``arn:aws:iam::ACCT:role/ROLE/
        SESSION``), so a tuning entry copied from CloudTrail or ``get-caller-identity``
        suppresses what it names.
        """
        out: list[str] = []
        for v in values:
            text, quoted = (v.text, v.quoted) if isinstance(v, Value) else (str(v), False)
            if not quoted and text in self.lists:
                out.extend(self.expand_list(text))
            else:
                out.append(text)
        # Only an STS ARN has another stored form.
        stored = [canonical_principal(v) for v in out if ":assumed-role/" in v]
        return list(dict.fromkeys([*out, *(v for v in stored if v not in out)]))

    def expand(self, node: Node, _stack: tuple[str, ...] = ()) -> Node:
        """Replace macro references by their (expanded) trees; detect cycles and unknowns.

        Macros that use each other many times over would expand exponentially; past
        :data:`MAX_CONDITION_NODES` nodes in one condition the rule is refused.
        """
        self._nodes = 0
        return self._expand(node, _stack)

    def _expand(self, node: Node, _stack: tuple[str, ...]) -> Node:
        self._nodes += 1
        if self._nodes > MAX_CONDITION_NODES:
            raise ConditionError(
                f"condition expands to more than {MAX_CONDITION_NODES:,} terms "
                "(macros that use each other many times over?)"
            )
        if isinstance(node, MacroRef):
            if node.name in BUILTIN_MACROS:
                return Const(BUILTIN_MACROS[node.name])
            if node.name not in self.macros:
                hint = (
                    " (a field needs an operator after it)" if _looks_like_field(node.name) else ""
                )
                raise ConditionError(f"unknown macro {node.name!r}{hint}", node.pos)
            if node.name in _stack:
                raise ConditionError(
                    f"macro {node.name!r} refers to itself ({' -> '.join((*_stack, node.name))})",
                    node.pos,
                )
            if node.name not in self._macro_ast:
                try:
                    self._macro_ast[node.name] = parse(self.macros[node.name])
                except ConditionError as exc:
                    raise ConditionError(f"in macro {node.name!r}: {exc.message}") from None
            return self._expand(self._macro_ast[node.name], (*_stack, node.name))
        if isinstance(node, And):
            return And(tuple(self._expand(i, _stack) for i in node.items))
        if isinstance(node, Or):
            return Or(tuple(self._expand(i, _stack) for i in node.items))
        if isinstance(node, Not):
            return Not(self._expand(node.item, _stack))
        return node

    def to_expr(self, node: Node) -> pl.Expr:
        """An expanded tree -> one boolean polars expression (nulls already mapped to False)."""
        if isinstance(node, Const):
            return pl.lit(node.value)
        if isinstance(node, And):
            return pl.all_horizontal([self.to_expr(i) for i in node.items])
        if isinstance(node, Or):
            return pl.any_horizontal([self.to_expr(i) for i in node.items])
        if isinstance(node, Not):
            return ~self.to_expr(node.item)
        if isinstance(node, Pred):
            try:
                resolved = resolve_field(node.field.name)
                return _predicate(
                    resolved,
                    node.field.name,
                    node.op,
                    self.values(node.values),
                    node.field.quantifier,
                )
            except ConditionError as exc:
                raise ConditionError(exc.message, node.field.pos) from None
        raise ConditionError(f"unresolved macro {getattr(node, 'name', node)!r}")

    def compile(self, text: str) -> tuple[pl.Expr, pl.Expr, Node]:
        """``(prefilter, full, tree)``: a cheap column-only necessary condition, the whole one.

        The prefilter is the conjunction of the top-level ``and`` terms that read no JSON;
        scoring applies it to every event and the full condition only to what passes, so
        regexes over request bodies run on a handful of rows instead of millions.
        """
        tree = self.expand(parse(text))
        full = self.to_expr(tree)
        prefilter = self.to_expr(And(cheap)) if (cheap := cheap_conjuncts(tree)) else pl.lit(True)
        return prefilter, full, tree

    def gate(self, tree: Node) -> pl.Expr | None:
        """The top-level ``and`` terms made only of equality/membership tests on columns.

        The first pass over every event of a range runs only these (hash lookups, no regex,
        no string rewriting); the rest of the prefilter and the full condition run on the
        rows that pass. ``None`` when the condition has no such term.
        """
        terms = gate_conjuncts(tree)
        return self.to_expr(And(terms)) if terms else None

    def conjuncts(self, text: str) -> list[tuple[str, pl.Expr]]:
        """The top-level ``and`` terms of a condition as written (macros by name), compiled.

        For ``detect rules test``: the first term an event fails is what stopped it, and
        analysts recognise the term they wrote, not its expansion.
        """
        tree = parse(text)
        items = tree.items if isinstance(tree, And) else (tree,)
        return [(node_text(i), self.to_expr(self.expand(i))) for i in items]


def _value_text(v: Value) -> str:
    if v.quoted or not re.fullmatch(r"[^\s(),=<>!\"']+", v.text):
        return '"' + v.text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return v.text


def node_text(node: Node, parent: str = "") -> str:
    """A syntax tree back as condition text (parenthesised only where needed)."""
    if isinstance(node, Const):
        return "always_true" if node.value else "never_true"
    if isinstance(node, MacroRef):
        return node.name
    if isinstance(node, Not):
        return "not " + node_text(node.item, "not")
    if isinstance(node, And | Or):
        word = "and" if isinstance(node, And) else "or"
        text = f" {word} ".join(node_text(i, word) for i in node.items)
        return f"({text})" if parent and parent != word else text
    field_text = node.field.name
    if node.field.quantifier:
        field_text = f"{node.field.quantifier}({field_text})"
    if node.op in UNARY_OPS:
        return f"{field_text} {node.op}"
    if node.op in COMPARISON_OPS:
        return f"{field_text} {node.op} {_value_text(node.values[0])}"
    return f"{field_text} {node.op} ({', '.join(_value_text(v) for v in node.values)})"


def _looks_like_field(name: str) -> bool:
    return name in CANONICAL_COLUMNS or name in DERIVED_FIELDS or "." in name or "[" in name


def iter_preds(node: Node) -> Iterator[Pred]:
    if isinstance(node, Pred):
        yield node
    elif isinstance(node, And | Or):
        for i in node.items:
            yield from iter_preds(i)
    elif isinstance(node, Not):
        yield from iter_preds(node.item)


def cheap_conjuncts(tree: Node) -> tuple[Node, ...]:
    """The top-level ``and`` terms of an expanded tree that read no JSON body."""
    conjuncts = tree.items if isinstance(tree, And) else (tree,)
    return tuple(c for c in conjuncts if not uses_json(c))


#: Derived fields as cheap as a column test: each distinct source address is classified
#: once and mapped back (a hash lookup per row), so they may gate the first pass.
GATE_DERIVED = ("source_ip_public", "source_ip_in_aws", "source_ip_denied")

#: Operators that need no regex and no string rewriting: hash lookups and comparisons.
_GATE_OPS = ("=", "!=", "in", "intersects", "exists", "<", "<=", ">", ">=")


def is_gate(node: Node) -> bool:
    """Whether a node only compares plain columns by equality, membership or order."""
    if isinstance(node, Const):
        return True
    if isinstance(node, Pred) and node.field.name in GATE_DERIVED:
        return node.op in _GATE_OPS and node.field.quantifier is None
    if isinstance(node, Pred):
        return (
            node.field.name in CANONICAL_COLUMNS
            and node.field.name not in _JSON_COLUMNS
            and _column_kind(CANONICAL_COLUMNS[node.field.name]) != "list"
            and node.field.quantifier is None
            and node.op in _GATE_OPS
        )
    if isinstance(node, And | Or):
        return all(is_gate(i) for i in node.items)
    if isinstance(node, Not):
        return is_gate(node.item)
    return False


def gate_conjuncts(tree: Node) -> tuple[Node, ...]:
    """The top-level ``and`` terms of an expanded tree that :func:`is_gate` accepts."""
    conjuncts = tree.items if isinstance(tree, And) else (tree,)
    return tuple(c for c in conjuncts if is_gate(c) and not isinstance(c, Const))


def uses_json(node: Node) -> bool:
    """Whether evaluating the node reads a JSON body (the expensive part)."""
    return any(resolve_field(p.field.name).uses_json for p in iter_preds(node))


def fields_used(node: Node) -> set[str]:
    return {p.field.name for p in iter_preds(node)}
