"""IAM identities as people read them, and as users type them.

EKS maps an IAM session onto a Kubernetes user and puts the identity in ``user.extra``; the
lake stores the principal of an IAM role session as the *canonical* role ARN plus the
session name (see :func:`detector.events.normalize.principal_exprs`)::

    arn:aws:iam::111122223333:role/developer/grace

Read as a path, that looks like a role named ``grace``. People think of it as "the
``developer`` role, used by session ``grace``" and type it either in that stored form or as
the STS ARN they see in CloudTrail and ``aws sts get-caller-identity``::

    arn:aws:sts::111122223333:assumed-role/developer/grace

This module is the one place that knows both forms: :func:`canonical_principal` turns what a
user typed into the stored form (so a filter or an allowlist entry matches), and
:func:`parse_principal` / :func:`display_principal` give renderers the role, the session and
the account. :func:`investigation_links` gives what an analyst opens next: the CloudTrail
lookup of the access key (the key id ties the Kubernetes session to the AWS API calls made
with the same credentials, as the EKS best-practices guide suggests) and console pages.

Everything here is pure string work: no AWS call, no lake access.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote

#: ``arn:PARTITION:sts::ACCOUNT:assumed-role/ROLE/SESSION`` (what STS and CloudTrail show).
#: The STS form as a user may type it in a pattern: globs in the account, role or session.
_STS_TYPED = re.compile(
    r"^arn:(?P<partition>aws[a-z-]*|\*):sts::(?P<account>[\d*?\[\]]+):assumed-role/"
    r"(?P<role>[^/]+)/(?P<session>.+)$"
)
_STS = re.compile(
    r"^arn:(?P<partition>aws[a-z-]*):sts::(?P<account>\d{12}):assumed-role/"
    r"(?P<role>[^/\s]+)/(?P<session>[^/\s]+)$"
)
#: ``arn:PARTITION:iam::ACCOUNT:role/[PATH/]NAME[/SESSION]`` or ``...:user/[PATH/]NAME``.
_IAM = re.compile(
    r"^arn:(?P<partition>aws[a-z-]*):iam::(?P<account>\d{12}):(?P<kind>role|user)/(?P<rest>\S+)$"
)
#: What :attr:`Principal.display` shows of an IAM role session or user, as a user may
#: type it back (copied from a table): ``developer (session grace)``, ``user alice``.
_DISPLAYED = re.compile(
    r"^(?:(?P<role>[\w+=,.@-]+) \(session (?P<session>[\w+=,.@-]+)\)|user (?P<user>[\w+=,.@-]+))$"
)
#: The prefix of the glob :func:`canonical_principal` makes of a displayed form: any
#: partition and account (the table does not show them).
ANY_ACCOUNT = "arn:*:iam::*"

#: The mark of a principal whose username looks like an ARN but carries no IAM identity
#: (see :func:`detector.events.normalize.principal_exprs`): shown as stored, never parsed
#: as the IAM identity it names, and given no investigation links to that identity.
UNVERIFIED = "unverified:"

_CONSOLE = {
    "aws": "console.aws.amazon.com",
    "aws-cn": "console.amazonaws.cn",
    "aws-us-gov": "console.amazonaws-us-gov.com",
}


@dataclass(frozen=True)
class Principal:
    """A principal split into what an analyst reads; ``raw`` is exactly what the lake holds."""

    raw: str
    kind: str  # "iam_role", "iam_user" or "other"
    account: str | None = None
    partition: str | None = None
    name: str | None = None  # role or user name
    session: str | None = None

    @property
    def display(self) -> str:
        """``developer (session grace)``; ``user alice``; anything else as stored."""
        if self.kind == "iam_role" and self.name:
            return f"{self.name} (session {self.session})" if self.session else self.name
        if self.kind == "iam_user" and self.name:
            return f"user {self.name}"
        return self.raw

    @property
    def role_arn(self) -> str | None:
        """The IAM role (or user) ARN without the session: what IAM policies name."""
        if self.kind == "iam_role" and self.name:
            return f"arn:{self.partition}:iam::{self.account}:role/{self.name}"
        if self.kind == "iam_user" and self.name:
            return f"arn:{self.partition}:iam::{self.account}:user/{self.name}"
        return None

    @property
    def sts_arn(self) -> str | None:
        """The STS assumed-role ARN, as CloudTrail's ``userIdentity.arn`` shows the session."""
        if self.kind == "iam_role" and self.name and self.session:
            role = f"{self.name}/{self.session}"
            return f"arn:{self.partition}:sts::{self.account}:assumed-role/{role}"
        return None


def parse_principal(principal: str | None) -> Principal:
    """Split a stored (or STS) principal into account, role or user name, and session.

    In the stored role form the session is the last path segment: session names cannot hold
    ``/`` (STS allows ``[\\w+=,.@-]``) and the canonical ARN EKS logs has no role path.

    >>> p = parse_principal("arn:aws:iam::111122223333:role/developer/grace")
    >>> (p.display, p.account)
    ('developer (session grace)', '111122223333')
    >>> parse_principal("system:serviceaccount:kube-system:coredns").display
    'system:serviceaccount:kube-system:coredns'
    """
    # Matched as stored, never stripped: the lake's IAM principals have no spaces, and a
    # username " arn:aws:iam::...:user/alice" is not alice.
    raw = text = principal or ""
    if m := _STS.fullmatch(text):
        return Principal(raw, "iam_role", m["account"], m["partition"], m["role"], m["session"])
    if m := _IAM.fullmatch(text):
        parts = m["rest"].split("/")
        if m["kind"] == "user":
            return Principal(raw, "iam_user", m["account"], m["partition"], parts[-1])
        name, session = (parts[-2], parts[-1]) if len(parts) >= 2 else (parts[0], None)
        return Principal(raw, "iam_role", m["account"], m["partition"], name, session)
    return Principal(raw or "-", "other")


def display_principal(principal: str | None) -> str:
    """What tables and reports show for a principal: ``developer (session grace)``."""
    if not principal:
        return "-"
    return parse_principal(principal).display


def canonical_principal(text: str) -> str:
    """What a user typed, in the form the lake stores (so filters and allowlists match).

    Accepts the STS form ``arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION`` and returns
    ``arn:aws:iam::ACCOUNT:role/ROLE/SESSION``; a glob over it (``assumed-role/ci-*/*``,
    an account of ``*``) is turned the same way, for rule lists and suppressions. Anything
    else (the stored form, a role ARN without a session, a Kubernetes user name) is
    returned as typed, stripped of spaces. The form tables show (``developer (session
    grace)``, ``user alice``) becomes a glob over every account (:data:`ANY_ACCOUNT`): typed
    back from a table, it matched nothing, silently.

    >>> canonical_principal("arn:aws:sts::111122223333:assumed-role/developer/grace")
    'arn:aws:iam::111122223333:role/developer/grace'
    >>> canonical_principal("arn:aws:sts::*:assumed-role/ci-*/*")
    'arn:aws:iam::*:role/ci-*/*'
    >>> canonical_principal(" system:anonymous ")
    'system:anonymous'
    >>> canonical_principal("developer (session grace)")
    'arn:*:iam::*:role/developer/grace'
    """
    text = text.strip()
    if m := _STS_TYPED.match(text):
        return f"arn:{m['partition']}:iam::{m['account']}:role/{m['role']}/{m['session']}"
    if m := _DISPLAYED.match(text):
        if m["user"]:
            return f"{ANY_ACCOUNT}:user/{m['user']}"
        return f"{ANY_ACCOUNT}:role/{m['role']}/{m['session']}"
    return text


@dataclass(frozen=True)
class Link:
    """Something an analyst runs or opens next, with a label that says what it shows."""

    label: str
    kind: str  # "command" or "url"
    target: str

    def to_dict(self) -> dict[str, str]:
        return {"label": self.label, "kind": self.kind, "target": self.target}


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def identity_summary(
    principal: str | None,
    access_key_ids: list[str] | tuple[str, ...] = (),
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    region: str | None = None,
) -> dict:
    """Everything about who it was, for JSON output and the report: both ARN forms, the
    account, the access keys seen and :func:`investigation_links`."""
    p = parse_principal(principal)
    keys = list(dict.fromkeys(k for k in access_key_ids if k))
    return {
        "principal": p.raw,
        "display": p.display,
        "kind": p.kind,
        "account": p.account,
        "name": p.name,
        "session": p.session,
        "role_arn": p.role_arn,
        "sts_arn": p.sts_arn,
        "access_key_ids": keys,
        "links": [
            link.to_dict()
            for link in investigation_links(principal, keys, start=start, end=end, region=region)
        ],
    }


def investigation_links(
    principal: str | None,
    access_key_ids: list[str] | tuple[str, ...] = (),
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    region: str | None = None,
) -> list[Link]:
    """The CloudTrail lookups and console pages for a principal and the keys it used.

    For each access key id: ``aws cloudtrail lookup-events`` on ``AccessKeyId`` over the
    window (CloudTrail's event history is per region: ``region`` is the cluster's) and the
    same filter in the CloudTrail console. For IAM identities: the role (or user) in the
    IAM console. Arguments are shell-quoted: keys and names come from untrusted logs.
    """
    p = parse_principal(principal)
    host = _CONSOLE.get(p.partition or "aws", _CONSOLE["aws"])
    regional = f"{region}.{host}" if region else host
    links: list[Link] = []
    for key in dict.fromkeys(k for k in access_key_ids if k):
        cmd = [
            "aws",
            "cloudtrail",
            "lookup-events",
            "--lookup-attributes",
            f"AttributeKey=AccessKeyId,AttributeValue={key}",
        ]
        if start is not None:
            cmd += ["--start-time", _iso(start)]
        if end is not None:
            cmd += ["--end-time", _iso(end)]
        if region:
            cmd += ["--region", region]
        links.append(Link(f"AWS API calls made with access key {key}", "command", shlex.join(cmd)))
        query = f"?region={quote(region, safe='')}" if region else ""
        fragment = f"#/events?AccessKeyId={quote(key, safe='')}"
        links.append(
            Link(
                f"CloudTrail event history for {key}",
                "url",
                f"https://{regional}/cloudtrail/home{query}{fragment}",
            )
        )
    if p.kind in ("iam_role", "iam_user") and p.name:
        section = "roles" if p.kind == "iam_role" else "users"
        links.append(
            Link(
                f"IAM {section[:-1]} {p.name} (account {p.account})",
                "url",
                f"https://{host}/iam/home#/{section}/details/{quote(p.name, safe='')}",
            )
        )
    return links
