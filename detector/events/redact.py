"""Credentials out of every string before it reaches the lake: events and quarantine alike.

Two layers, because audit text comes in two shapes:

* **Text patterns** (:data:`PATTERNS`), run as polars expressions over whole columns. They
  work on any text, including JSON escaped inside a string (a ``last-applied-configuration``
  annotation, a webhook patch) and the truncated or garbled lines that end in quarantine,
  where nothing can be parsed. Each column is *searched* first and rewritten only where a
  pattern hits, because searching is far cheaper than rewriting and nearly all rows are
  clean: the hot path stays columnar, with no Python per row.
* **Structure** (:func:`redact_json`), for the few rows that need it: a Secret's ``data``
  and ``stringData`` hold credentials under any key name, so only knowing that the object
  *is* a Secret (its ``kind``, or an event about the ``secrets`` resource) finds them.
  Lists, ``Table`` rows, JSON patches, merge patches, TokenRequests and JSON nested inside
  strings are walked object by object. Only rows flagged by a search get here.

Every replacement writes :data:`REDACTED`; names of keys are kept (a rule can still see that
a ConfigMap has a ``db_password``), values are not. ``docs/security.md`` lists the classes.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import polars as pl

from detector.events.schema import EVENT_COLUMNS

REDACTED = "<redacted>"
#: What a whole body or annotations map becomes when it cannot be walked: the marker as a
#: JSON string, so the column still holds JSON text (docs/schema.md).
DROPPED = orjson.dumps(REDACTED).decode()

#: Key names that hold a credential, matched case-insensitively against the WHOLE key: the
#: key must end in one of these words (``db_password``, ``X-Api-Key``, ``clientSecret``,
#: ``aws_session_token``), so ``secretName`` or ``tokenExpirationSeconds`` (references and
#: settings, not credentials) are kept. Strings and numbers (or lists of them, the shape
#: of HTTP header maps) are replaced; in an object under such a key, the members that
#: hold the credential itself (:data:`VALUE_KEYS`), and it is walked as any object too.
#: ``pass`` and ``pw`` only after a separator (``REDIS_PASS``, ``LDAP_BIND_PW``; not
#: ``bypass``); the keys that official images and frameworks name their keys by
#: (``RAILS_MASTER_KEY``, ``SECRET_KEY_BASE``, ``ENCRYPTION_KEY``), not every ``*_key``
#: (``cache_key``, ``partition_key``).
_CREDENTIAL_WORD = (
    r"(?:(?:(?:password|passwd|passphrase|passcode|secret|token)s?|pwd|[_.\-](?:pass|pw)"
    r"|api[_-]?keys?|apikeys?|access[_-]?key|priv(?:ate)?[_-]?key|secret[_.\-]?key(?:[_-]?base)?"
    r"|secret[_-]?(?:id|string)|session[_-]?key|key[_-]?data|auth[_-]?key"
    r"|(?:master|encryption|signing|hmac|license|stripe|ssh|jwt)[_-]?key"
    r"|authorization|auth|credentials?(?:[_-]?json)?|cookie)"
    # the same key with how it is written said after it: tokenValue, password_b64, key_pem
    r"(?:[_.\-]?(?:value|b64|base64|pem|hex))?)"
)
CREDENTIAL_KEY = r"[A-Za-z0-9_.\-/]*" + _CREDENTIAL_WORD
_CREDENTIAL_KEY_RE = re.compile(CREDENTIAL_KEY, re.IGNORECASE)

#: Query parameters that carry a credential in a URL (``?access_token=``, SAS ``sig=``,
#: S3 presigned ``X-Amz-Signature``/``X-Amz-Credential``/``X-Amz-Security-Token``), and any
#: parameter whose name holds a %-escape (``?%74oken=``): no client escapes the letters of
#: a name, so one that does hides it, and decoding it here would cost more than the value.
CREDENTIAL_PARAM = (
    r"(?:[A-Za-z0-9_.\-]*(?:token|sig|signature|password|passwd|pwd|secret|api[_-]?key|apikey"
    r"|credential|auth|key)"
    r"|(?:[A-Za-z0-9_.\-]|%[0-9A-Fa-f]{2})*%[0-9A-Fa-f]{2}(?:[A-Za-z0-9_.\-]|%[0-9A-Fa-f]{2})*)"
)

# A JSON string at nesting level 0 ("..."), possibly cut short (quarantined lines), and one
# escaped inside another string (\"...\", \\\"...\\\" ...). The escaped form ends at the
# first escaped quote: a credential containing a quote may be cut there, a limit noted in
# docs/security.md; the structured layer handles those precisely when the JSON parses.
_STR0 = r'"(?:[^"\\]|\\.)*"?'
_STR_ESC = r'\\+"(?:[^"\\]|\\[^"])*(?:\\+")?'
_LIST0 = r'\[\s*"(?:[^"\\]|\\.)*(?:"(?:\s*,\s*"(?:[^"\\]|\\.)*")*\s*\]|$)'
#: A JSON number (Helm values: an unquoted YAML ``password: 123456`` becomes one).
_NUM0 = r"-?[0-9][0-9.eE+-]*"


#: A word boundary as ASCII sees it: a credential name after a non-ASCII letter
#: (``épassword=``) is one too, which only redacts more. Unicode's boundary cannot run in
#: the regex engine's DFA on text holding any non-ASCII character, and on such text (a
#: quarantined binary) its patterns ran at ~20 MB/s instead of ~700.
_BOUNDARY = r"(?-u:\b)"


#: Space between a credential's name or scheme and its value: white space, white space as
#: JSON escapes it (``\t`` in a body or a quarantined line), or as a URL encodes it (``+``,
#: ``%20``: ``kubectl exec`` sends each word of its command as a query parameter).
_SPACE = r"(?:\s|\\+[tnr]|\+|%20|%09)"
#: ``:`` or ``=`` as such, or URL-encoded (``--password%3Dx``, ``Authorization%3A+Bearer``).
_ASSIGN = r"(?:[:=]|%3[AaDd])"


@dataclass(frozen=True)
class Pattern:
    """One text pattern: what it finds (for docs and tests) and how it rewrites."""

    name: str
    regex: str
    replacement: str


#: Space inside one header line: no line break, escaped or not.
_HSPACE = r"(?:[ \t]|\\+t|\+|%20|%09)"

#: HTTP authentication schemes that may stand between a credential's name and its value
#: (``Authorization: token x``): kept, like the name, when the value after them is replaced.
_SCHEMES = (
    r"(?:bearer|basic|token|bot|apikey|api-key|ssws|geniekey|splunk|negotiate|ntlm|digest"
    r"|aws4-hmac-sha256|hoba|mutual|vapid|dpop|gnap|sharedkey|kerberos)"
)

#: A YAML block scalar's head (``password: |`` or ``>-``) and the line break and indent
#: before its first line, written or JSON-escaped.
_BLOCK_HEAD = r"[|>][+-]?[0-9]?[ \t]*(?:\r|\\+r)?(?:\n|\\+n)(?:[ \t]|\\+t)*"
#: Text that a match may remove from inside a JSON string, one character or escape at a
#: time: a backslash is taken with its whole run and the character after it, never a quote,
#: so what is removed holds no quote and no half of an escape at any depth. JSON nested in
#: a string (a last-applied annotation) writes its own quotes as ``\\"`` and its strings'
#: quotes as ``\\\\\\"``: cutting a run short would turn one into the other.
_ESC_CHAR = r'(?:[^"\\]|\\+[^"\\])'
#: The first character of a value in escaped quotes (``\\"x\\"``): not one that can follow
#: the end of a string, because in JSON nested inside a string ``\\"`` also ends the string
#: holding the name (``{\\"a\\":\\"password:\\",\\"b\\":1}``), and taking it as an opening
#: quote would run into the next member.
_ESC_FIRST = r'(?:[^"\\\s,:}\]]|\\+[^"\\nrt])'
#: A value in escaped quotes, once (``\\"x\\"`` in a body) or twice (``\\\\\\"x\\\\\\"`` in an
#: annotation that holds JSON): the closing quote, optional for cut text, is escaped as the
#: opening one is, so one of the enclosing JSON's own quotes is never taken for it. Groups:
#: the opening quote, once or twice escaped.
_ESC_QUOTED = (
    r'(\\")' + _ESC_FIRST + _ESC_CHAR + r'*(?:\\")?'
    r'|(\\\\\\")' + _ESC_FIRST + _ESC_CHAR + r'*(?:\\\\\\")?'
)
#: The rest of a line: stops at a line break, written or escaped, and at a quote (in JSON
#: text the end of the string holding it).
_LINE = r'(?:[^"\\\r\n]|\\+[^"\\nr])+'


#: A line break, written or JSON-escaped, with the blank space around it and any blank lines
#: after it: what stands between ``password:`` and a value on the next line.
_NEXT_LINE = r"(?:[ \t]|\\+t)*(?:\r|\\+r)?(?:\n|\\+n)(?:\s|\\+[tnr])*"
#: One character of a value alone on its line (YAML's plain scalar under its key): not
#: white space, and a ``:`` only inside a word (``: `` or a ``:`` at the end makes the line
#: a mapping key: ``name: x``, ``nested:``).
_LINE_CHAR = r'(?:[^"\\\s:]|:[^\s"\\]|\\+[^"\\nrt])'
#: Such a value: words of those characters, spaces between them; a word may not open with
#: ``#``, which after a space begins a comment (``hunter2  # TODO: rotate``: the comment
#: may say anything, ``: `` included, and is kept).
_LINE_VALUE = (
    _LINE_CHAR
    + "+(?:(?:[ \t]|\\\\+t)+"
    + r'(?:[^"\\\s:#]|:[^\s"\\]|\\+[^"\\nrt])'
    + _LINE_CHAR
    + "*)*"
)
#: Where such a line ends: a comment, then a line break, the quote that ends the string
#: holding it, or the end of the text. Matched (and written back) so that a key's line is
#: not taken for a value's.
_LINE_END = (
    r'((?:(?:[ \t]|\\+t)+#(?:[^"\\\r\n]|\\+[^"\\nr])*)?(?:[ \t]|\\+t)*'
    r'(?:(?:\r|\\+r)?(?:\n|\\+n)|\r|\\+r|\\*"|$))'
)
#: Space between ``:`` or ``=`` and a value on the same line: any white space but a line
#: break (a no-break space pasted from a wiki, an ideographic space), or as JSON or a URL
#: writes it.
_GAP = r"(?:[^\S\r\n]|\\+t|\\+u(?:00[aA]0|3000)|\+|%20|%09)"


_HEX = "0123456789ABCDEF"


def _escape_except(*codes: str) -> str:
    """Any ``%XX`` escape but those of ``codes`` (``"20"`` for ``%20``), in either letter
    case: what a URL-encoded value may hold up to the escape that ends it."""
    banned = {c.upper() for c in codes}
    free = "".join(h for h in _HEX if all(b[0] != h for b in banned))
    parts = [_hex_class(free) + "[0-9A-Fa-f]"] if free else []
    for hi in sorted({b[0] for b in banned}):
        seconds = "".join(lo for lo in _HEX if hi + lo not in banned)
        if seconds:
            parts.append(_hex_class(hi) + _hex_class(seconds))
    return "%(?:" + "|".join(parts) + ")"


def _hex_class(digits: str) -> str:
    """A character class of hex digits in both letter cases (``2B`` -> ``[2Bb]``)."""
    return "[" + digits + "".join(d.lower() for d in digits if d.isalpha()) + "]"


def _encoded_up_to(closing: str) -> str:
    """One character of URL-encoded text that is not the escape ``closing`` (``27`` for
    ``%27``) nor ``&`` (the end of the parameter): a plain one, or another ``%XX``."""
    return rf"(?:[^%&]|{_escape_except(closing)})"


#: A word of a URL-encoded value, as a shell reads one: it ends at an encoded space (``+``,
#: ``%20``) or a shell operator (``<``, ``>``, ``|``, ``;``, ``&``) outside quotes, and
#: takes whole what is in encoded quotes (``%27..%27``, ``%22..%22``) and parentheses;
#: ``%XX`` escapes of anything else belong to it. A command substitution is the output of
#: a command, which holds a credential literally only when it prints one (``$(echo S3CRET
#: | base64 -d)``): that one goes whole; any other (``TOKEN=$(cat
#: /var/run/secrets/.../token)``, ``$(curl ...)``) is no value to redact and is kept whole,
#: so the command reads as written and the credential rules see what it reads.
_URI_WORD = (
    r"(?:[^\s\"'\\,;&{\[+%<>|]"
    rf"|%24%28\s*(?:echo|printf)\b{_encoded_up_to('29')}*(?:%29)?"
    rf"|%60\s*(?:echo|printf)\b{_encoded_up_to('60')}*(?:%60)?"
    r"|%24(?:[A-Za-z0-9_]|%7[Bb])"
    rf"|%24%27{_encoded_up_to('27')}*(?:%27)?|%24%22{_encoded_up_to('22')}*(?:%22)?"
    rf"|%28{_encoded_up_to('29')}*(?:%29)?"
    # any other escape but a blank, a quote, ``$``, ``(``, a backquote or a shell operator
    "|"
    + _escape_except(
        "09", "0A", "0D", "20", "22", "24", "26", "27", "28", "3B", "3C", "3E", "60", "7C"
    )
    + rf"|%27{_encoded_up_to('27')}*(?:%27)?"
    rf"|%22{_encoded_up_to('22')}*(?:%22)?)+"
)
#: A header's value in a URL-encoded command (``-H "X-Api-Key: k1 k2"``): words and
#: encoded spaces up to the end of the parameter or an encoded quote.
_URI_HEADER_VALUE = r"(?:[^\s\"'\\&%]|" + _escape_except("22", "27") + ")+"
#: A value in URL-encoded quotes (``%27p w%27``), possibly cut.
_URI_QUOTED = [
    rf"(%27){_encoded_up_to('27')}+(?:%27)?",
    rf"(%22){_encoded_up_to('22')}+(?:%22)?",
]


def _assigned(
    name: str,
    assign: str = _ASSIGN,
    *,
    raw_quotes: bool = True,
    next_line: bool = True,
    uri: bool = False,
    value: str | None = None,
) -> Pattern:
    """A credential-named word, ``assign``, then its value (``password: x``, ``token=x``).

    The value is a word, or a quoted string: single quotes, quotes escaped as in a JSON
    string (``password: \\"x\\"`` in a body) and, with ``raw_quotes``, plain double
    quotes (``--password="x"``) in text that is not JSON. In JSON text a raw quote ends the
    string that holds the name, and a match across it would break the JSON. A closing quote
    missing (cut text) is not needed. Or the first line of a YAML block scalar
    (``password: |`` then the value on the next line). Or, on the next line, a quoted
    value or a whole line that is not a key: ``passwordSecret:`` over ``name: x`` (a
    mapping that names a Secret) keeps it, ``password:`` over ``hunter2`` does not; not in
    names (``next_line`` false), where ``:`` separates parts. In a URL (``uri``), quotes
    may be encoded (``%27``) and a word ends at an encoded space: ``kubectl exec`` sends
    ``sh -c 'TOKEN=$(curl ... 169.254.169.254 ...)'`` as one parameter, and the value
    ran to its end, taking with it the address the credential rules look for (found by
    review).
    """
    quoted = [_ESC_QUOTED, r"(')(?:[^'\"\\\r\n]|\\+[^\"\\])+'?"]
    if raw_quotes:
        quoted.append(r'(")(?:[^"\\\r\n]|\\.)+"?')
    if uri:
        quoted.extend(_URI_QUOTED)
    # Groups, numbered in this order (one that takes no part expands to ""): 1 the name;
    # on its line, 2 the assignment, 3 a block head and the opening quotes (two in
    # _ESC_QUOTED); on the next line, the colon, the line break, the opening quotes again
    # and the end of the value's line. Only after a colon: ``TOKEN=`` over ``OTHER=x`` in
    # an env file is an empty value.
    n = len(quoted) + 1
    same_line = (
        f"({_SPACE}*{assign}{_GAP}*(?:{_SCHEMES}{_GAP}+)?)"
        + f"(?:({_BLOCK_HEAD}){_LINE}|"
        + "|".join(quoted)
        + "|"
        + (value or (_URI_WORD if uri else r"[^\s\"'\\,;&{\[]+"))
        + ")"
    )
    before = "${1}${2}${3}" + "".join(f"${{{4 + i}}}" for i in range(n))
    after = before[len("${1}${2}${3}") :]
    regex = f"(?i){_BOUNDARY}({CREDENTIAL_KEY})(?:{same_line}"
    if next_line:
        regex += (
            f"|({_SPACE}*(?::|%3[Aa]){_GAP}*)({_NEXT_LINE})(?:"
            + "|".join(quoted)
            + f"|{_LINE_VALUE}{_LINE_END})"
        )
        quotes = "".join(f"${{{6 + n + i}}}" for i in range(n))
        before += f"${{{4 + n}}}${{{5 + n}}}" + quotes
        after += quotes + f"${{{6 + 2 * n}}}"
    return Pattern(name, regex + ")", before + REDACTED + after)


def _auth_header(*, raw_quotes: bool, names: bool = False, uri: bool = False) -> Pattern:
    """``Authorization: <scheme> <credentials>``, any scheme: all after the scheme word to
    the end of the header value (a line break, written or escaped, ``&`` in a URL, or the
    quote that ends the enclosing string). A quote right after ``=`` opens a parameter
    (``Digest username="u", response="..."``) and is taken with its closing quote.
    Not ``authorization.k8s.io/...`` (no ``:`` after the word) nor "RBAC: allowed by".
    ``Cookie:`` and ``Set-Cookie:`` the same way, all of their value (every cookie); in
    names (``names``), where ``:`` separates parts, only with a space after the ``:``. In
    a URL (``uri``), the value also ends at an encoded quote (``%22``, ``%27``): in
    ``sh -c 'curl -H "Authorization: Bearer x" http://169.254.169.254/...'`` the rest of
    the command went with it, and the credential rules saw nothing (found by review).
    """
    param = (
        r'\\"(?:' + _ESC_FIRST + _ESC_CHAR + r'*(?:\\")?|\\")'
        r'|\\\\\\"(?:' + _ESC_FIRST + _ESC_CHAR + r'*(?:\\\\\\")?|\\\\\\")'
    )
    if raw_quotes:
        param += r'|"[^"\r\n]*"?'
    return Pattern(
        "Authorization header with any scheme (token, ApiKey, Digest, AWS4-HMAC-SHA256, ...)"
        " and Cookie header",
        f"(?i){_BOUNDARY}((?:[A-Za-z0-9_\\-]*authorization{_HSPACE}*{_ASSIGN}{_HSPACE}*"
        + f"[A-Za-z][A-Za-z0-9_.\\-]*{_HSPACE}+"
        + f"|(?:set-)?cookie{_HSPACE}*{_ASSIGN}{_HSPACE}{'+' if names else '*'}))"
        + f"(?:={_HSPACE}*(?:{param})|"
        + (
            r"""[^"'\\&\r\n=%]|=|\\+[^"'\\nr]|""" + _escape_except("22", "27") + ")+"
            if uri
            else r"""[^"'\\&\r\n=]|=|\\+[^"'\\nr])+"""
        ),
        "${1}" + REDACTED,
    )


_BEARER = Pattern(
    "Bearer or Basic credential (whole token, including any $ or punctuation)",
    "(?i)" + _BOUNDARY + f"(bearer|basic){_SPACE}+" + r"[^\s\"'\\,;&]{8,}",
    "${1} " + REDACTED,
)
#: The same in a URL, where a token ends at an encoded space or quote too.
_URI_BEARER = Pattern(
    "Bearer or Basic credential in a URL-encoded command",
    "(?i)"
    + _BOUNDARY
    + f"(bearer|basic){_SPACE}+"
    + r"(?:[^\s\"'\\,;&%+]|"
    + _escape_except("20", "22", "27")
    + ")"
    + "{8,}",
    "${1} " + REDACTED,
)
_JWT = Pattern(
    "JSON Web Token (a service account's or an OIDC token, wherever it appears)",
    r"eyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*",
    REDACTED,
)
_QUERY_PARAM = Pattern(
    "credential query parameter in a URL (access_token=, sig=, password=, ...)",
    r"(?i)([?&;]" + CREDENTIAL_PARAM + r"=)[^&#\s\"'\\]*",
    "${1}" + REDACTED,
)
_URL_PASSWORD = Pattern(
    "password in a URL (scheme://user:password@host), up to the authority's last '@' as "
    "URL readers split it (p@ss@host)",
    "(?i)" + _BOUNDARY + r"([a-z][a-z0-9+.\-]*://[^/\s:@\"'\\]*:)[^/?#\s\"'\\]*@",
    "${1}" + REDACTED + "@",
)
_PEM = Pattern(
    "PEM private key (and PGP's private key block)",
    r"-----BEGIN ([A-Z ]*)PRIVATE KEY( BLOCK)?-----"
    r"(?:[^-\"\\]|\\+[^\"\\]|-(?:[^-\"\\]|\\+[^\"\\]))*"
    r"(?:-----END [A-Z ]*PRIVATE KEY(?: BLOCK)?-----)?",
    "-----BEGIN ${1}PRIVATE KEY${2}-----" + REDACTED,
)
_TOKEN_FORMAT = Pattern(
    "token of a known format, wherever it appears (GitHub ghp_/gho_/ghs_/github_pat_, "
    "GitLab glpat-, Slack xox*-, a Slack webhook URL's path, OpenAI and Anthropic sk-, "
    "Stripe sk_live_/rk_live_, Google AIza)",
    r"(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,}|xox[abposre]-[A-Za-z0-9-]{10,}"
    r"|glpat-[A-Za-z0-9_-]{20,}"
    r"|(hooks\.slack\.com/(?:services|workflows|triggers)/)[A-Za-z0-9/_-]+"
    # sk- keys are long runs of letters and digits with capitals in them: a Kubernetes
    # name is lower case, and `shop-sk-production-eu` was read as a key (found by review)
    r"|" + _BOUNDARY + r"(?:sk-(?:proj-|ant-[a-z0-9]+-)?"
    r"(?:[A-Za-z0-9_]{16,}[A-Z][A-Za-z0-9_]*|[A-Za-z0-9_]*[A-Z][A-Za-z0-9_]{16,})"
    r"|[sr]k_live_[A-Za-z0-9]{16,}|AIza[0-9A-Za-z_-]{35})" + _BOUNDARY + ")",
    "${1}" + REDACTED,
)


#: Text an XML element may hold, up to the next tag: escapes in JSON text, never a quote.
_XML_TEXT = r'(?:[^<"\\]|\\+[^"\\])+'
#: White space between XML tags, written or as JSON escapes it.
_XML_SPACE = r"(?:\s|\\+[tnr])*"
_XML_ELEMENT = Pattern(
    "XML element named like a credential (Maven's settings.xml password)",
    r"(?i)(<(?:[A-Za-z0-9_.\-]" + CREDENTIAL_KEY + "|" + _CREDENTIAL_WORD + r")>)" + _XML_TEXT,
    "${1}" + REDACTED,
)
_XML_PROPERTY = Pattern(
    "XML property named like a credential (a name then a value element: Hadoop's and "
    "Hive's site files)",
    r"(?i)(<name>"
    + _XML_SPACE
    + r"[A-Za-z0-9_.\-/]*(?:"
    + _CREDENTIAL_WORD
    + r"|secret\.key)"
    + _XML_SPACE
    + "</name>"
    + _XML_SPACE
    + "<value>)"
    + _XML_TEXT,
    "${1}" + REDACTED,
)
_EXEC_FLAG = Pattern(
    "credential-named flag or word with its value as the next word of an exec request's "
    "command (docker login --password, kubectl --token, aws configure set "
    "aws_secret_access_key)",
    # without dashes only after `set` (aws configure set KEY VALUE): `kubectl get secret
    # NAME` kept no NAME, and `cat /etc/shadow` no path (found by review)
    r"(?i)([?&]command=(?:-{1,2}|set&command=-{0,2})" + CREDENTIAL_KEY + r"&command=)[^&#\s\"'\\]*",
    "${1}" + REDACTED,
)
#: A word of an exec request's command, whether its own ``command=`` parameter or a word
#: of one (``sh -c 'mysql -pX'`` arrives as ``command=mysql+-pX``).
_EXEC_WORD_START = r"(?:[?&]command=|\+|%20)"
#: A %-escape but of a space or a tab, which end a word: `redis-cli%20-a%20pw%20ping` lost
#: the rest of the command with the password (found by review).
_ESCAPE_IN_WORD = r"%(?:0[0-8A-Fa-f]|[13-9A-Fa-f][0-9A-Fa-f]|2[1-9A-Fa-f])"
_EXEC_WORD = r"(?:[^&#\s\"'\\+%]|" + _ESCAPE_IN_WORD + ")*"
_EXEC_TOOL_PASSWORD = Pattern(
    "password given to a database client in an exec request's command (mysql -pX, redis-cli -a X)",
    r"(?i)("
    + _EXEC_WORD_START
    + r"(?:[^&#\s\"'\\+%]*/)?(?:(?:mysql|mariadb)[a-z]*(?:"
    + _EXEC_WORD_START
    + _EXEC_WORD
    + r")*?"
    + _EXEC_WORD_START
    + r"(?-i:-p)|redis-cli(?:"
    + _EXEC_WORD_START
    + _EXEC_WORD
    + r")*?"
    + _EXEC_WORD_START
    + r"(?-i:-a)"
    + _EXEC_WORD_START
    + r"))(?:[^&#\s\"'\\+%]|"
    + _ESCAPE_IN_WORD
    + ")+",
    "${1}" + REDACTED,
)


def _free_text(*, raw_quotes: bool, uri: bool = False) -> tuple[Pattern, ...]:
    return (
        Pattern(
            "credential-named JSON member (string, number or list of strings)",
            r'(?i)("' + CREDENTIAL_KEY + r'"\s*:\s*)(?:' + _STR0 + "|" + _LIST0 + "|" + _NUM0 + ")",
            '${1}"' + REDACTED + '"',
        ),
        Pattern(
            "credential-named JSON member escaped inside a string",
            r'(?i)(\\+"' + CREDENTIAL_KEY + r'\\+"\s*:\s*)(\\+")(?:[^"\\]|\\[^"])*(?:\\+")?',
            "${1}${2}" + REDACTED + "${2}",
        ),
        Pattern(
            "environment variable with a credential name ({name: DB_PASSWORD, value: ...})",
            r'(?i)("name"\s*:\s*"' + CREDENTIAL_KEY + r'"\s*,\s*"value"\s*:\s*)' + _STR0,
            '${1}"' + REDACTED + '"',
        ),
        Pattern(
            "environment variable with a credential name, escaped inside a string",
            r'(?i)(\\+"name\\+"\s*:\s*\\+"'
            + CREDENTIAL_KEY
            + r'\\+"\s*,\s*\\+"value\\+"\s*:\s*)(\\+")(?:[^"\\]|\\[^"])*(?:\\+")?',
            "${1}${2}" + REDACTED + "${2}",
        ),
        Pattern(
            "credential-named flag with its value as the next argument (a command's list)",
            r'(?i)("-{1,2}' + CREDENTIAL_KEY + r'"\s*,\s*)' + _STR0,
            '${1}"' + REDACTED + '"',
        ),
        Pattern(
            "credential-named flag with its value as the next argument, escaped inside a string",
            r'(?i)(\\+"-{1,2}' + CREDENTIAL_KEY + r'\\+"\s*,\s*)(\\+")(?:[^"\\]|\\[^"])*(?:\\+")?',
            "${1}${2}" + REDACTED + "${2}",
        ),
        _EXEC_FLAG,
        _EXEC_TOOL_PASSWORD,
        _XML_ELEMENT,
        _XML_PROPERTY,
        # Before the name patterns: a PEM key in a credential-named value
        # (``private_key: -----BEGIN ...``) would otherwise lose only its first word.
        _PEM,
        _auth_header(raw_quotes=raw_quotes, uri=uri),
        *(
            (
                _assigned(
                    "credential assigned with '=' in a URL-encoded command (a shell word)",
                    r"(?:=|%3[Dd])",
                    uri=True,
                ),
                _assigned(
                    "credential assigned with ':' in a URL-encoded command (a header line)",
                    r"(?::|%3[Aa])",
                    uri=True,
                    value=_URI_HEADER_VALUE,
                ),
            )
            if uri
            else (
                _assigned(
                    "credential assigned in free text (YAML or properties in a value, a "
                    "header line)",
                    raw_quotes=raw_quotes,
                ),
                Pattern(
                    "password of a user:password flag in a command line (curl -u, --user)",
                    # after curl or wget only: `docker run -u 1000:1000` is a uid (review)
                    r"((?:^|\s)(?:curl|wget)\s(?:[^\s\"'\\]+\s+)*?(?:-u|--user)(?:\s+|=)"
                    r"[A-Za-z0-9._\-@]+:)[^\s\"'\\]+",
                    "${1}" + REDACTED,
                ),
            )
        ),
        _URI_BEARER if uri else _BEARER,
        _JWT,
        _TOKEN_FORMAT,
        _QUERY_PARAM,
        _URL_PASSWORD,
    )


#: Applied to every free-text column that reaches the lake (user agent, URI, reasons,
#: quarantined lines), in this order.
PATTERNS: tuple[Pattern, ...] = _free_text(raw_quotes=True)
#: The same for the columns that hold JSON text (bodies, annotations): a quoted value only
#: as a JSON string holds one (escaped quotes, or single quotes), so the JSON stays valid.
JSON_PATTERNS: tuple[Pattern, ...] = _free_text(raw_quotes=False)
#: The same for the request URI, whose values are URL-encoded (see :func:`_assigned`), and a
#: password in a URL-encoded URL (an exec command's ``curl https://u:p@host``).
URI_PATTERNS: tuple[Pattern, ...] = (
    *_free_text(raw_quotes=True, uri=True),
    Pattern(
        "password of a user:password flag in a URL-encoded command (curl -u, --user)",
        r"((?:^|[?&=+]|%20)(?:-u|--user)(?:\+|%20|=|%3[Dd]|&command=)"
        r"(?:[A-Za-z0-9._\-]|%40)+(?::|%3[Aa]))"
        r"(?:[^&+%\s]|" + _escape_except("20", "22", "27") + ")+",
        "${1}" + REDACTED,
    ),
    Pattern(
        "password in a URL-encoded URL (scheme%3A%2F%2Fuser%3Apassword%40host)",
        r"(?i)([a-z][a-z0-9+.\-]*%3A%2F%2F"
        r"(?:[^%&\s/@:]|" + _escape_except("2F", "3A", "40") + ")*"
        r"%3A)(?:[^%&\s@]|" + _escape_except("40") + ")+%40",
        "${1}" + REDACTED + "%40",
    ),
)

#: Applied instead to names and identities (user, principal, namespace, object name...):
#: the patterns that only a credential matches, and ``=`` as the only assignment, since
#: ``:`` separates the parts of a name (``system:serviceaccount:oauth:proxy`` is the
#: ServiceAccount ``proxy`` of the namespace ``oauth``, not an ``oauth`` credential).
NAME_PATTERNS: tuple[Pattern, ...] = (
    _PEM,
    _auth_header(raw_quotes=True, names=True),
    _assigned("credential assigned with '=' in a name", r"(?:=|%3[Dd])", next_line=False),
    _BEARER,
    _JWT,
    _TOKEN_FORMAT,
    _QUERY_PARAM,
    _URL_PASSWORD,
)

# Members whose whole value is dropped in quarantined text, where the structure that tells a
# Secret's data from a ConfigMap's cannot be trusted (the line may be cut or garbled): Secret
# payloads, JSON-patch values, the annotations that embed whole objects or patches.
_QUARANTINE_MEMBER = (
    r"(?:data|stringData|binaryData|value|kubectl\.kubernetes\.io/last-applied-configuration"
    r"|patch\.webhook\.admission\.k8s\.io/[^\"\\]*)"
)
_OBJ = r'\{(?:[^{}"\\]|"(?:[^"\\]|\\.)*"?|\\.|\{(?:[^{}"\\]|"(?:[^"\\]|\\.)*"?|\\.)*\}?)*\}?'
#: A list, one level of nesting deep, possibly cut short (``"data": ["x", ...]``).
_LIST_ANY = (
    r'\[(?:[^\[\]"\\]|"(?:[^"\\]|\\.)*"?|\\.'
    r'|\[(?:[^\[\]"\\]|"(?:[^"\\]|\\.)*"?|\\.)*\]?)*\]?'
)

#: Applied to quarantined text (raw line and reason) before :data:`PATTERNS`.
QUARANTINE_PATTERNS: tuple[Pattern, ...] = (
    Pattern(
        "Secret data/stringData, patch values, last-applied and webhook-patch annotations",
        r'(?i)(\\*"'
        + _QUARANTINE_MEMBER
        + r'\\*"\s*:\s*)(?:'
        + "|".join((_OBJ, _LIST_ANY, _STR0, _STR_ESC))
        + ")",
        '${1}"' + REDACTED + '"',
    ),
    Pattern(
        "an object under a credential-named member, whole (in events only its values go)",
        r'(?i)(\\*"' + CREDENTIAL_KEY + r'\\*"\s*:\s*)' + _OBJ,
        '${1}"' + REDACTED + '"',
    ),
)

# --------------------------------------------------------------------------- text layer


def _any(patterns: Iterable[Pattern]) -> str:
    """One search regex for a set of patterns (capture groups are harmless in a search)."""
    return "|".join(f"(?:{p.regex})" for p in patterns)


#: What quarantined text (raw line, reason, source) goes through, in this order.
QUARANTINE_ALL = (*QUARANTINE_PATTERNS, *PATTERNS)
#: One search regex per pattern set (the four above).
_SEARCHES = {
    ps: _any(ps) for ps in (PATTERNS, JSON_PATTERNS, URI_PATTERNS, NAME_PATTERNS, QUARANTINE_ALL)
}


def _search_of(patterns: tuple[Pattern, ...]) -> str:
    return _SEARCHES.get(patterns) or _any(patterns)


#: Columns whose every value names one event: searched without the distinct pass.
PER_EVENT_COLUMNS = ("audit_id", "source_position")


def _strings(column: pl.Series) -> pl.Series:
    """The strings of a column: itself, or the items of a list column (``user_groups``)."""
    return column.explode() if column.dtype == pl.List(pl.String) else column


def _each(expr: pl.Expr, dtype: pl.DataType, apply: Callable[[pl.Expr], pl.Expr]) -> pl.Expr:
    """``apply`` to a string column, or to every item of a list column."""
    if dtype == pl.List(pl.String):
        return expr.list.eval(apply(pl.element()))
    return apply(expr)


def matching_rows(column: pl.Series, pattern: str) -> pl.Series | None:
    """Where ``column`` holds a match of ``pattern`` (booleans, null as False); None where
    no value does, the common case. A list column matches where any item does.

    The regex runs over the column's distinct values, not every row: user agents,
    annotation maps and authorization reasons repeat across a batch (41 distinct among
    200k), and the search over every row was a fifth of normalizing (0.43 CPU-seconds
    per 1M events, against 0.09). A column of all-different values costs the distinct
    pass on top: 1.4x the plain search (200k different annotation maps), so the columns
    that name one event each (:data:`PER_EVENT_COLUMNS`) are searched row by row.
    """
    distinct = _strings(column)
    if column.name not in PER_EVENT_COLUMNS:
        distinct = distinct.unique()
    hits = distinct.filter(distinct.str.contains(pattern).fill_null(False))
    if hits.is_empty():
        return None
    found = _each(pl.col(column.name), column.dtype, lambda e: e.is_in(hits.implode()))
    if column.dtype == pl.List(pl.String):
        found = found.list.any()
    return column.to_frame().select(found.fill_null(False)).to_series()


def columns_holding(df: pl.DataFrame, columns: Sequence[str], pattern: str) -> list[str]:
    """Those of ``columns`` where some value holds a match of ``pattern``."""
    return screen(df, [(columns, pattern)])[0]


def screen(df: pl.DataFrame, searches: Sequence[tuple[Sequence[str], str]]) -> list[list[str]]:
    """For each ``(columns, pattern)`` of ``searches``, those columns where some value holds
    a match of the pattern, all in one query.

    Each column is searched over its distinct values as :func:`matching_rows` searches:
    nearly every batch has no hit at all, and a query per column cost a small batch
    (``detect watch``'s, a test's) ~30 ms of fixed cost in some hundred tiny polars
    queries, more than the search itself; a query per search still cost 1.5 ms each.
    """
    exprs = []
    for k, (columns, pattern) in enumerate(searches):
        for c in columns:
            if df.schema[c] == pl.Null:  # all null (a hand-built frame): no text to hold one
                continue
            values = pl.col(c).explode() if df.schema[c] == pl.List(pl.String) else pl.col(c)
            if c not in PER_EVENT_COLUMNS:
                values = values.unique()
            exprs.append(values.str.contains(pattern).fill_null(False).any().alias(f"{k}\x00{c}"))
    found = df.select(exprs).row(0, named=True) if exprs else {}
    return [
        [c for c in columns if found.get(f"{k}\x00{c}")] for k, (columns, _) in enumerate(searches)
    ]


def redact_text_columns(
    df: pl.DataFrame,
    columns: Iterable[str],
    patterns: tuple[Pattern, ...] = PATTERNS,
    *,
    holding: list[str] | None = None,
) -> tuple[pl.DataFrame, pl.Series | None]:
    """Rewrite ``columns`` (strings, or lists of strings) where one of ``patterns`` hits;
    returns the frame and which rows changed.

    Search first, over whole columns (one query for all of them: :func:`columns_holding`);
    then only the rows that hit are taken out, rewritten pattern by pattern (skipping
    patterns none of them holds) and put back. ``None`` when nothing hit, the common case
    for a batch. ``holding``: the columns a :func:`screen` of this frame already found
    holding a match (the search is not run again).
    """
    columns = [c for c in columns if c in df.columns]
    search = _search_of(patterns)
    if holding is None:
        holding = columns_holding(df, columns, search)
    found = {c: rows for c in holding if (rows := matching_rows(df[c], search)) is not None}
    hit = list(found)
    if not hit:
        return df, None
    rows = pl.DataFrame(found).select(pl.any_horizontal(hit)).to_series()
    idx = rows.arg_true()
    sub = df[idx].select(hit)
    # The string columns' rows stacked into one series: each pattern is then tested, and
    # applied where present, once for all of them. Patterns are large regexes that polars
    # compiles at every use (0.2 to 1.3 ms each): tested column by column, they cost a
    # batch with a hit ~65 ms (4.7k events of Firehose samples with Secrets: 3.8 s).
    # Replacing in a column that does not hold the pattern changes nothing, so the text
    # is what pattern-by-pattern, column-by-column rewriting gives.
    strings = [c for c in hit if sub[c].dtype == pl.String]
    if strings:
        n = sub.height
        stacked = pl.concat([sub[c].alias("text") for c in strings])
        for p in patterns:
            if stacked.str.contains(p.regex).any():
                stacked = stacked.str.replace_all(p.regex, p.replacement)
        sub = sub.with_columns(stacked.slice(i * n, n).alias(c) for i, c in enumerate(strings))
    for c in (c for c in hit if c not in strings):  # lists of strings: rare (user_groups)
        for p in patterns:
            if _strings(sub[c]).str.contains(p.regex).any():
                sub = sub.with_columns(
                    _each(
                        pl.col(c),
                        sub[c].dtype,
                        lambda e, p=p: e.str.replace_all(p.regex, p.replacement),
                    )
                )
    return _put_back(df, idx, sub), rows


def _put_back(df: pl.DataFrame, idx: pl.Series, sub: pl.DataFrame) -> pl.DataFrame:
    """``df`` with rows ``idx`` of ``sub``'s columns replaced by ``sub``'s values.

    A scatter for strings; lists cannot be scattered, so those rows are joined back on
    their index (rare: a credential in ``user_groups`` or ``source_ips``).
    """
    lists = [c for c in sub.columns if sub[c].dtype == pl.List(pl.String)]
    out = df.with_columns(df[c].scatter(idx, sub[c]) for c in sub.columns if c not in lists)
    if not lists:
        return out
    new = sub.select(lists).with_columns(idx.cast(pl.UInt32).alias("_row"))
    joined = out.select(lists).with_row_index("_row").join(new, on="_row", how="left")
    return out.with_columns(
        pl.when(joined["_row"].is_in(idx.cast(pl.UInt32).implode()))
        .then(joined[f"{c}_right"])
        .otherwise(joined[c])
        .alias(c)
        for c in lists
    )


def redact_text(text: str, *, quarantine: bool = False, json: bool = False) -> str:
    """One string through the text layer (for callers outside a frame, and tests); ``json``
    for JSON text (a body), which must stay JSON."""
    df = pl.DataFrame({"t": [text]}, schema={"t": pl.String})
    patterns = QUARANTINE_ALL if quarantine else JSON_PATTERNS if json else PATTERNS
    out, _ = redact_text_columns(df, ["t"], patterns)
    return out["t"][0]


#: A JSON escape of printable ASCII (``\u0061``, ``\/``) after any run of backslashes (JSON
#: inside a string doubles them at each level), which :func:`_unescape_ascii` first makes
#: one backslash.
_ESCAPE_RUN = r"\\+(u00[2-7][0-9A-Fa-f]|/)"
#: Each escape and what it stands for: the character, but a quote or a backslash stays
#: escaped (``\u0022`` is ``\"``), so text that was JSON stays JSON and a quote hidden as
#: ``\u0022`` reads as the escaped quote every pattern knows.
_ASCII_ESCAPES: dict[str, str] = {
    "\\/": "/",
    **{
        f"\\u{code:04{case}}": {'"': '\\"', "\\": "\\\\"}.get(chr(code), chr(code))
        for code in range(0x20, 0x7F)
        for case in ("x", "X")
    },
}


def _unescape_ascii(column: str) -> pl.Expr:
    """The text with JSON's escapes of printable ASCII written out, at any depth.

    Quarantined text is not parsed, so a member named ``"d\u0061ta"`` or
    ``"p\u0061ssword"`` kept its value from every pattern, and so did one whose quotes were
    ``\u0022`` (found by review). Written out, the patterns see what a JSON reader (or a
    nested one) sees. The text stays JSON wherever it was: a quote or a backslash is
    written escaped. A literal ``\u0061`` in a string (an escaped backslash, then
    ``u0061``) is shown as ``a`` too: quarantined text is for reading, and a reading that
    hides a credential is the one to avoid.
    """
    one_backslash = pl.col(column).str.replace_all(_ESCAPE_RUN, r"\$1")
    return one_backslash.str.replace_many(list(_ASCII_ESCAPES), list(_ASCII_ESCAPES.values()))


def redact_quarantine(df: pl.DataFrame) -> pl.DataFrame:
    """Quarantine rows with credentials removed from the raw text, the reason and source.

    Raw text is often not JSON (that is why it is here): only text patterns apply, and the
    aggressive :data:`QUARANTINE_PATTERNS` drop every Secret-payload-shaped member whole.
    JSON's escapes of printable ASCII are written out first, so the stored text reads as a
    JSON reader (or a nested one) sees it.
    """
    if df.is_empty():
        return df
    columns = ["raw", "reason", "source"]
    df = df.with_columns(_unescape_ascii(c) for c in columns)
    return redact_text_columns(df, columns, QUARANTINE_ALL)[0]


# --------------------------------------------------------------------------- structure
_LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
_SECRET_KINDS = r"(?:Secret|SecretList|TokenRequest)"
#: A member naming a Secret kind, in JSON text at any depth of escaping (white space
#: around the name too: the API server may not check a kind it ignores).
_SECRET_KIND_TEXT = r'(?i)\\*"kind\\*"\s*:\s*\\*"\s*' + _SECRET_KINDS + r'\s*\\*"'
_SECRET_KIND_RE = re.compile(_SECRET_KIND_TEXT)
#: A Secret's payload member, in JSON text at any depth of escaping.
_SECRET_DATA_RE = re.compile(r'\\*"(?:data|stringData)\\*"\s*:')
#: Members of an object under a credential-named key (or of each object in a list there)
#: that hold the credential itself (``{password: {value: ...}}``). Only these, and only
#: its own members, go: the object is as often Kubernetes' own description of where a
#: credential is (a projected ``serviceAccountToken`` volume's ``expirationSeconds`` and
#: ``audience``, a ``secret`` volume's ``defaultMode``), and deeper down it is any data
#: (Helm values under ``auth:``; found by review).
VALUE_KEYS = frozenset(
    {"value", "val", "v", "data", "plain", "plaintext", "raw", "content", "contents", "text"}
    | {"string", "stringvalue", "secret", "secretvalue", "b64", "base64"}
)
#: Keys of an object that name what its ``value`` is: an environment variable
#: ``{name: DB_PASSWORD, value}``, a Keycloak credential ``{type: password, value}``, a
#: Helm or Argo parameter ``{key: api_token, value}``. A name with a ``/`` is a
#: Kubernetes key or type (a taint ``{key: example.com/auth, value}``, a Secret's type
#: ``kubernetes.io/service-account-token``), not a credential's name (found by review).
_NAMING_KEYS = ("name", "type", "key")
_PLAIN_CREDENTIAL_KEY = r"[A-Za-z0-9_.\-]*" + _CREDENTIAL_WORD
_VALUE_MEMBER = r"(?:" + "|".join(sorted(VALUE_KEYS)) + r")"

#: Rows whose bodies need the structured layer: anything naming a Secret/TokenRequest kind
#: (in any case, also escaped inside an annotation string), a credential key escaped inside
#: a string (the text layer handles those too, but cannot parse a quote inside an escaped
#: value), an object named like a credential (an environment variable or a header, whose
#: ``value`` the text layer finds only right after ``name``: JSON keeps no key order, and
#: hand-written patches and other clients put ``value`` first or another member between),
#: or a JSON-patch ``path`` whose last segment names a credential (``/data/db_password``,
#: ``/metadata/annotations/example.com~1api-token``: its ``value`` is the credential).
NEEDS_STRUCTURE = (
    _SECRET_KIND_TEXT
    + r'|\\+"'
    + CREDENTIAL_KEY
    + r'\\+"\s*:'
    # an object (or a list of them) under a credential key with a value member of its
    # own: a pod's `serviceAccountToken: {...}` is no such thing, and sending every pod
    # body to the structured layer made ingest 4.6x slower (found by review)
    + r'|\\*"'
    + CREDENTIAL_KEY
    + r'\\*"\s*:\s*\[?\s*\{[^{}]*?\\*"'
    + _VALUE_MEMBER
    + r'\\*"\s*:'
    + r'|\\*"(?:name|type|key)\\*"\s*:\s*\\*"'
    + _PLAIN_CREDENTIAL_KEY
    + r'\\*"'
    + r'|\\*"path\\*"\s*:\s*\\*"(?:[^"\\]|\\[^"])*(?:/|\\+/)[A-Za-z0-9_.\-~]*'
    + _CREDENTIAL_WORD
    + r'\\*"'
)


def is_credential_key(key: str) -> bool:
    """True when a JSON key names a credential (see :data:`CREDENTIAL_KEY`).

    Keys repeat across millions of bodies, so short ones are memoised; a long key (hostile
    input can make them megabytes) is checked uncached so the cache stays small.
    """
    if len(key) > 128:
        return _CREDENTIAL_KEY_RE.fullmatch(key) is not None
    return _is_credential_key_cached(key)


@functools.lru_cache(maxsize=4096)
def _is_credential_key_cached(key: str) -> bool:
    return _CREDENTIAL_KEY_RE.fullmatch(key) is not None


def _all_values(value: Any) -> Any:
    """A Secret payload with every value replaced and its keys kept."""
    if isinstance(value, dict):
        return dict.fromkeys(value, REDACTED)
    return REDACTED


def _credential_scalar(value: Any) -> bool:
    """A string or a number (not a boolean: ``auth: true`` holds no credential)."""
    return isinstance(value, (str, int, float)) and not isinstance(value, bool)


def _under_credential(value: Any) -> bool:
    """Redact in place the members of an object under a credential-named key, or of each
    object of a list there, that hold the credential (:data:`VALUE_KEYS`):
    ``{password: {value: ...}}`` was walked as any object and kept its value (found by
    review)."""
    objects = [value] if isinstance(value, dict) else value
    changed = False
    for obj in objects:
        if not isinstance(obj, dict):
            continue
        for key, member in obj.items():
            if key.lower() in VALUE_KEYS and _credential_value(member):
                obj[key] = _redacted_value(member)
                changed = True
    return changed


def _credential_value(value: Any) -> bool:
    """What a credential-named member holding a credential looks like: a string or a number,
    or a list of them (the shape of HTTP header maps)."""
    return _credential_scalar(value) or (
        isinstance(value, list) and all(_credential_scalar(v) for v in value) and bool(value)
    )


def _redacted_value(value: Any) -> Any:
    """A :func:`_credential_value` redacted: its shape kept (a list stays a list)."""
    return [REDACTED] * len(value) if isinstance(value, list) else REDACTED


def _unparsed_secret(text: str) -> bool:
    """Whether text that cannot be walked holds a Secret's payload: it names a Secret
    kind and has a ``data`` or ``stringData`` member (a manifest that only mentions a
    Secret is kept; found by review)."""
    return bool(_SECRET_KIND_RE.search(text)) and bool(_SECRET_DATA_RE.search(text))


def _nested(text: str, secret: bool, *, drop_unparsed: bool) -> tuple[str, bool]:
    """JSON inside a string (an annotation, a patch value): parse, walk, write back.

    Text that names a Secret kind but cannot be walked (JSON Lines, a comment before the
    JSON, ``NaN``, nesting deeper than orjson reads) is dropped: its ``data`` was kept
    whole (found by review)."""
    if text.lstrip()[:1] not in ("{", "["):  # JSON may start with white space (found by review)
        return (REDACTED, True) if _unparsed_secret(text) else (text, False)
    try:
        inner = orjson.loads(text)
    except orjson.JSONDecodeError:
        if drop_unparsed or _unparsed_secret(text):
            return REDACTED, True
        return text, False
    if _walk(inner, secret):
        try:
            return orjson.dumps(inner).decode(), True
        except orjson.JSONEncodeError:  # nested deeper than orjson writes
            return REDACTED, True
    return text, False


def _patch_op(op: dict[str, Any], secret: bool) -> bool:
    """One JSON-patch operation: its ``value`` is whatever ``path`` says it is. An item
    without ``op`` is taken as one too: the audit log records what the client sent."""
    if "value" not in op:
        return False
    path = str(op.get("path", ""))
    last = path.rsplit("/", 1)[-1].replace("~1", "/").replace("~0", "~")
    value = op["value"]
    if secret and path.startswith(("/data", "/stringData")):
        op["value"] = _all_values(value)
        return True
    if secret and path in ("", "/") and not isinstance(value, dict):
        op["value"] = REDACTED  # the whole Secret, as something that is not an object
        return True
    if is_credential_key(last) and value is not None and not isinstance(value, bool):
        op["value"] = _all_values(value)  # a number or an object too: the path says what it is
        return True
    if isinstance(value, str):
        new, changed = _nested(value, secret, drop_unparsed=secret and last == _LAST_APPLIED)
        op["value"] = new
        return changed
    if isinstance(value, (dict, list)):
        return _walk(value, secret)
    return False


def _walk(obj: Any, secret: bool) -> bool:
    """Redact in place; ``secret`` when the enclosing event is about the secrets resource.

    In a secrets event any ``data``/``stringData`` map is a Secret payload, whatever the
    object says its kind is (merge patches and ``Table`` rows often carry none).
    """
    changed = False
    if isinstance(obj, list):
        for item in obj:
            if isinstance(item, dict) and "path" in item and "value" in item:
                # its value as the path says, and the rest as any object (an Argo
                # parameter {name: DB_PASSWORD, path, value} is one: found by review)
                changed |= _patch_op(item, secret)
                changed |= _walk(item, secret)
            elif isinstance(item, (dict, list)):
                changed |= _walk(item, secret)
        return changed
    if not isinstance(obj, dict):
        return False
    kind = obj.get("kind")
    # the API server may not check a kind it ignores: "Secret " is a Secret (review)
    kind = kind.strip().lower() if isinstance(kind, str) else kind
    if kind == "secretlist":
        items = obj.get("items")
        if isinstance(items, list):
            for i, item in enumerate(items):
                if isinstance(item, dict):
                    changed |= _walk(item, True)
                elif item is not None:  # a Secret is an object: anything else goes whole
                    items[i] = REDACTED
                    changed = True
        elif isinstance(items, dict):
            changed |= _walk(items, True)
        elif items is not None:
            obj["items"] = REDACTED
            changed = True
    # In a secrets event every body but a list is a Secret, whatever kind it claims.
    is_secret = kind == "secret" or (secret and kind != "secretlist")
    status = obj.get("status")
    if kind == "tokenrequest" and isinstance(status, dict) and "token" in status:
        obj["status"]["token"] = REDACTED
        changed = True
    if _credential_scalar(obj.get("value")) and any(
        isinstance(named := obj.get(k), str) and "/" not in named and is_credential_key(named)
        for k in _NAMING_KEYS
    ):
        obj["value"] = REDACTED  # {name: DB_PASSWORD, value}, {type: password, value}
        changed = True
    for key, value in obj.items():
        if kind == "secretlist" and key == "items":
            continue
        if key in ("data", "stringData") and is_secret and value not in (None, {}):
            obj[key] = _all_values(value)  # a map keeps its keys; anything else goes whole
            changed = True
        elif is_credential_key(key) and _credential_value(value):
            obj[key] = _redacted_value(value)
            changed = True
        elif is_credential_key(key) and isinstance(value, (dict, list)):
            changed |= _under_credential(value)
            changed |= _walk(value, secret or (is_secret and key != "metadata"))
        elif isinstance(value, str):
            secret_here = secret or is_secret
            drop = secret_here and (key == _LAST_APPLIED or key.startswith("patch.webhook"))
            new, hit = _nested(value, secret_here, drop_unparsed=drop)
            if hit:
                obj[key] = new
                changed = True
        elif isinstance(value, (dict, list)):
            changed |= _walk(value, secret or (is_secret and key != "metadata"))
    return changed


def redact_json(
    text: str | None, *, secret: bool, drop_unparsed: bool | None = None
) -> tuple[str | None, bool]:
    """Redact one JSON document (a body or the annotations); returns (text, changed).

    ``secret`` when the event is about the secrets resource: then a body that is not JSON
    (a raw string) cannot be inspected and is dropped whole (``drop_unparsed``, default
    ``secret``).
    """
    if text is None:
        return None, False
    try:
        obj = orjson.loads(text)
        # A bare string or number, or a list of anything but objects (a JSON patch is a list
        # of operations): nothing says what it holds.
        if (
            secret
            and drop_unparsed is not False
            and not isinstance(obj, dict)
            and not (isinstance(obj, list) and all(isinstance(i, dict) for i in obj))
        ):
            return DROPPED, True
        changed = _walk(obj, secret)
    except orjson.JSONDecodeError:
        drop = secret if drop_unparsed is None else drop_unparsed
        return (DROPPED, True) if drop else (text, False)
    except RecursionError:
        # Nesting deeper than Python's stack (hostile input): what cannot be walked cannot
        # be shown to be clean, so it is dropped whole rather than stop the batch.
        return DROPPED, True
    if not changed:
        return text, False
    try:
        return orjson.dumps(obj).decode(), True
    except orjson.JSONEncodeError:  # nested deeper than orjson writes (255 levels)
        return DROPPED, True


# --------------------------------------------------------------------------- events
#: Event columns that hold free text from the request: the text layer's every pattern,
#: as :data:`JSON_PATTERNS` for those that hold JSON text.
TEXT_COLUMNS = (
    "request_uri",
    "user_agent",
    "reason",
    "annotations",
    "request_object",
    "response_object",
    "source",
    "source_position",
)
JSON_COLUMNS = ("annotations", "request_object", "response_object")
#: Every other string the input gave, lists of strings included, with :data:`NAME_PATTERNS`.
#: A credential is most often in a URI, a user agent or a body, but a hostile line can put
#: one in any field (a user name, an object name, a CloudWatch event id), and the lake
#: keeps what it is given. Not ``cluster`` (a checked name) or ``principal_kind`` (ours).
#: These columns repeat a few values a batch, so searching them costs their distinct
#: values (see :func:`matching_rows`).
NAME_COLUMNS = tuple(
    c
    for c, dtype in EVENT_COLUMNS.items()
    if dtype in (pl.String, pl.List(pl.String)) and c not in (*TEXT_COLUMNS, "principal_kind")
)
_STRUCTURED = ("request_object", "response_object", "annotations")


def redact_events(df: pl.DataFrame) -> pl.DataFrame:
    """Canonical event rows with every credential replaced and ``redacted`` set where so."""
    # the log keeps what the client sent: "Secrets", "secrets " (found by review)
    resource = pl.col("resource").str.strip_chars().str.to_lowercase()
    about_secrets = (resource == "secrets") | (
        (pl.col("resource") == "serviceaccounts") & (pl.col("subresource") == "token")
    )
    has_body = pl.col("request_object").is_not_null() | pl.col("response_object").is_not_null()
    no = pl.repeat(False, pl.len())
    webhook_patch = matching_rows(df["annotations"], "patch.webhook.admission.k8s.io/")
    # One query screens every column for every pattern set; only the JSON columns are
    # searched again, and only if the structure layer below rewrote some of their rows.
    plain = tuple(c for c in TEXT_COLUMNS if c not in (*JSON_COLUMNS, "request_uri"))
    text_sets = (
        (plain, PATTERNS),
        (("request_uri",), URI_PATTERNS),
        (JSON_COLUMNS, JSON_PATTERNS),
        (NAME_COLUMNS, NAME_PATTERNS),
    )
    text_sets = tuple((tuple(c for c in cols if c in df.columns), ps) for cols, ps in text_sets)
    in_structure, *holding = screen(
        df,
        [(_STRUCTURED, NEEDS_STRUCTURE), *((cols, _search_of(ps)) for cols, ps in text_sets)],
    )
    structured = [
        rows for c in in_structure if (rows := matching_rows(df[c], NEEDS_STRUCTURE)) is not None
    ]
    needs = (about_secrets & (has_body | (no if webhook_patch is None else webhook_patch))) | (
        pl.any_horizontal(structured) if structured else no
    )
    idx = df.select(pl.arg_where(needs.fill_null(False))).to_series()
    flag = df["redacted"].fill_null(False)
    if idx.len():
        rows = df[idx].select("resource", *_STRUCTURED)
        new: dict[str, list[str | None]] = {c: [] for c in _STRUCTURED}
        changed: list[bool] = []
        for resource, *texts in rows.iter_rows():
            any_change = False
            for c, text in zip(_STRUCTURED, texts, strict=True):
                # The annotations map is not a Secret body: never dropped whole.
                body = c != "annotations"
                out, hit = redact_json(
                    text,
                    secret=(resource or "").strip().lower() == "secrets",
                    drop_unparsed=None if body else False,
                )
                new[c].append(out)
                any_change |= hit
            changed.append(any_change)
        df = df.with_columns(
            *(df[c].scatter(idx, pl.Series(new[c], dtype=pl.String)) for c in _STRUCTURED)
        )
        flag = flag.scatter(idx, flag.gather(idx) | pl.Series(changed, dtype=pl.Boolean))
        holding[2] = None  # the JSON columns (the third set) changed: searched again
    df = df.with_columns(flag.alias("redacted"))
    for (columns, patterns), found in zip(text_sets, holding, strict=True):
        df, hit = redact_text_columns(df, columns, patterns, holding=found)
        if hit is not None:
            df = df.with_columns(df["redacted"] | hit)
    return df
