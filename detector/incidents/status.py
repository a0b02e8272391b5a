"""The workflow statuses of findings and incidents and what each maps to outside.

One table so every sink agrees: OCSF ``status_id`` (Detection Finding), Security Hub's
``Workflow.Status``, and whether the status is still delivered at all.
"""

from __future__ import annotations

from detector.errors import UsageError

NEW = "new"
ACKNOWLEDGED = "acknowledged"
SUPPRESSED = "suppressed"
RESOLVED = "resolved"

STATUSES = (NEW, ACKNOWLEDGED, SUPPRESSED, RESOLVED)

#: OCSF 1.x finding status_id: 1 New, 2 In Progress, 3 Suppressed, 4 Resolved.
OCSF_STATUS_ID = {NEW: 1, ACKNOWLEDGED: 2, SUPPRESSED: 3, RESOLVED: 4}
OCSF_STATUS_NAME = {
    NEW: "New",
    ACKNOWLEDGED: "In Progress",
    SUPPRESSED: "Suppressed",
    RESOLVED: "Resolved",
}

#: ASFF Workflow.Status values.
ASFF_WORKFLOW = {
    NEW: "NEW",
    ACKNOWLEDGED: "NOTIFIED",
    SUPPRESSED: "SUPPRESSED",
    RESOLVED: "RESOLVED",
}

#: Statuses whose changes still reach sinks (an acknowledged incident that grows is news).
DELIVERED = frozenset({NEW, ACKNOWLEDGED})
#: Statuses that close an incident: sent, as a closing update, only to a sink that had it.
CLOSED = frozenset({SUPPRESSED, RESOLVED})

#: What a person may set from the CLI (suppressed comes from suppressions as code only).
SETTABLE = {"ack": ACKNOWLEDGED, "acknowledge": ACKNOWLEDGED, "resolve": RESOLVED, "reopen": NEW}


class UnknownId(UsageError):
    """No finding or incident starts with the given id."""


class AmbiguousId(UsageError):
    """More than one finding or incident starts with the given prefix."""


def resolve_prefix(prefix: str, ids: list[str], what: str) -> str:
    """The one id in ``ids`` that starts with ``prefix`` (ids are hex: case-insensitive)."""
    p = prefix.strip().lower()
    if len(p) < 4:
        raise UnknownId(f"{what} id {prefix!r} is too short: give at least 4 characters")
    matches = sorted({i for i in ids if i.startswith(p)})
    if not matches:
        raise UnknownId(f"no {what} with id starting {prefix!r}")
    if len(matches) > 1:
        shown = ", ".join(matches[:5])
        raise AmbiguousId(f"{what} id {prefix!r} matches {len(matches)} ({shown}): give more")
    return matches[0]
