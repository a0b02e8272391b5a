"""What each sink receives for one alert (an incident at one version), as plain dicts.

Pure functions, no I/O: the same alert always gives the same bytes, so a retried or
re-sent delivery is recognisably the same one (``key`` = ``<incident_id>:v<version>``,
and every payload carries it). Examples of each payload are in docs/alerts.md.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from detector import __version__
from detector.controls import ONE_LINE, clip
from detector.incidents.group import Incident
from detector.incidents.status import ASFF_WORKFLOW, CLOSED, OCSF_STATUS_ID, OCSF_STATUS_NAME
from detector.rules.attack import technique_objects

PRODUCT = "audit-detector"
VENDOR = "audit-detector"
#: uuid5 namespace for falcosidekick's ``uuid``: stable per alert key.
_NS = uuid.UUID("6f1c5e8a-4a8e-4b7e-9c1d-2d7a1e0b9f31")

FALCO_PRIORITY = {
    "critical": "Critical",
    "high": "Error",
    "medium": "Warning",
    "low": "Notice",
    "info": "Informational",
}
OCSF_SEVERITY_ID = {"info": 1, "low": 2, "medium": 3, "high": 4, "critical": 5}
OCSF_SEVERITY = {
    "info": "Informational",
    "low": "Low",
    "medium": "Medium",
    "high": "High",
    "critical": "Critical",
}
#: ``Alert.kind`` of a digest (:mod:`detector.delivery.storm`), and ``Incident.key_kind``
#: of the summary it carries.
DIGEST = "digest"
EVENTBRIDGE_DETAIL_TYPE = {
    "new": "Audit Detector Incident Created",
    "update": "Audit Detector Incident Updated",
    DIGEST: "Audit Detector Alert Digest",
}
#: ASFF's TTPs namespace has these ATT&CK tactics; others fall back to a behaviour type.
ASFF_TTPS = {
    "Initial Access",
    "Execution",
    "Persistence",
    "Privilege Escalation",
    "Defense Evasion",
    "Credential Access",
    "Discovery",
    "Lateral Movement",
    "Collection",
    "Command and Control",
}


@dataclass(frozen=True)
class Alert:
    """One incident at one version, to one or more sinks; ``kind`` is new or update.

    A ``digest`` stands for the alerts it ``folded`` past a sink's hourly budget
    (:mod:`detector.delivery.storm`): its incident is a summary of theirs.
    """

    incident: Incident
    kind: str  # "new", "update" or "digest"
    lake: str = "./lake"
    folded: tuple[Alert, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.incident.incident_id}:v{self.incident.version}"

    @property
    def who(self) -> str:
        inc = self.incident
        return inc.key if inc.key_kind == "source_ip" else (inc.principal or inc.key)

    @property
    def open_command(self) -> str:
        """The command that shows the incident; for a digest, that lists what it folds."""
        if self.folded:
            since = _iso(self.incident.first_seen)
            return f"detect incidents --lake {self.lake} --since {since}"
        return f"detect incidents show {self.incident.incident_id} --lake {self.lake}"


def _iso(ts: datetime | None) -> str | None:
    if ts is None:
        return None
    return ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _ms(ts: datetime | None) -> int | None:
    return None if ts is None else int(ts.timestamp() * 1000)


def reasons(inc: Incident, limit: int = 8) -> list[str]:
    """One line per finding, worst first: what an analyst reads before opening it.

    Each at most :data:`REASON_CHARS` characters: a finding's title quotes what a request
    carried (a user agent, a name).
    """
    rows = sorted(inc.timeline, key=lambda t: (-t["severity_rank"], t["time"]))
    out = []
    for t in rows[:limit]:
        tag = f" [suppressed by {t['suppression']}]" if t.get("suppression") else ""
        line = f"{t['severity']}: {t['title']} ({t['detector']}, {_iso(t['time'])}){tag}"
        out.append(clip(line, REASON_CHARS))
    if len(rows) > limit:
        out.append(f"... and {len(rows) - limit} more finding(s)")
    return out


# --------------------------------------------------------------------------- bounds
# An incident quotes what whoever sent the API server a request chose: user agents, names,
# namespaces from a URL path. A receiver refuses an alert over its limits whole (SNS and
# EventBridge take 256 KB, a Slack section 3,000 characters), so what a sink is sent is
# bounded whatever the lake holds: texts and list entries are cut, lists keep their first
# entries and say how many there were (`truncated`). The lake keeps everything
# (`detect incidents show`). Worst case, every character escaped by JSON as \u00XX: well
# under 256 KB (tests/test_payload_bounds.py).
TEXT_CHARS = 2048
REASON_CHARS = 512
ITEM_CHARS = 256
LIST_ITEMS = 20
FINDING_IDS = 100
#: A digest names every incident it folds (:mod:`detector.delivery.storm` folds at most
#: this many into one): 2,000 ids of 20 characters are 46 KB of JSON.
DIGEST_IDS = 2000


def _listed(
    values: Sequence[str], name: str, cut: dict[str, int], items: int = LIST_ITEMS
) -> list[str]:
    """The first ``items`` values, each clipped; the whole count goes in ``cut`` when cut."""
    if len(values) > items:
        cut[name] = len(values)
    return [clip(v, ITEM_CHARS) for v in values[:items]]  # type: ignore[misc]


def _bounded(inc: Incident) -> dict[str, Any]:
    """The incident's free texts and lists as a sink may be sent them (see above)."""
    cut: dict[str, int] = {}
    out = {
        "severity_reason": clip(inc.severity_reason, TEXT_CHARS),
        "title": clip(inc.title, TEXT_CHARS),
        "principal": clip(inc.principal, TEXT_CHARS),
        "source_ips": _listed(inc.source_ips, "source_ips", cut),
        "namespaces": _listed(inc.namespaces, "namespaces", cut),
        "tactics": _listed(inc.tactics, "tactics", cut),
        "techniques": _listed(inc.techniques, "techniques", cut),
        "detectors": _listed(inc.detectors, "detectors", cut),
        "finding_ids": _listed(
            inc.finding_ids,
            "finding_ids",
            cut,
            DIGEST_IDS if inc.key_kind == DIGEST else FINDING_IDS,
        ),
        "reasons": reasons(inc),
    }
    out["truncated"] = cut
    return out


def shortened(inc: Incident) -> Incident:
    """``inc`` as little as an alert can say, in printable ASCII: what a sink is sent when
    it refused the whole alert (a size or a character it would not take), so that the
    incident is still heard of and the rest is in the lake (``detect incidents show``).
    Smaller than any full alert of the same incident: its title, principal and worst
    finding cut short, one address and namespace, three detectors and finding ids; a
    digest keeps the ids of every incident it folds (delivered, they are recorded)."""

    def plain(text: str | None, limit: int) -> str | None:
        if text is None:
            return None
        cut = text if len(text) <= limit else text[: limit - 3] + "..."
        return "".join(c if " " <= c <= "~" else "?" for c in cut)

    worst = sorted(inc.timeline, key=lambda t: (-t["severity_rank"], t["time"]))[:1]
    return replace(
        inc,
        title=f"{plain(inc.title, 60)} [shortened]",
        principal=plain(inc.principal, 120),
        severity_reason=plain(inc.severity_reason, 80) or "",
        source_ips=[plain(v, 45) or "" for v in inc.source_ips[:1]],
        namespaces=[plain(v, 63) or "" for v in inc.namespaces[:1]],
        tactics=inc.tactics[:3],
        techniques=inc.techniques[:3],
        detectors=[plain(v, 64) or "" for v in inc.detectors[:3]],
        # a digest's ids are what it delivers: every one stays, or none is delivered
        finding_ids=inc.finding_ids if inc.key_kind == DIGEST else inc.finding_ids[:3],
        timeline=[{**t, "title": plain(t["title"], 80)} for t in worst],
    )


def incident_doc(alert: Alert) -> dict[str, Any]:
    """The incident as JSON: SNS message, EventBridge detail, the webhook's full record.

    ``truncated`` (only when something was cut): list name -> how many entries it had.
    """
    inc = alert.incident
    b = _bounded(inc)
    doc = {
        "schema": "audit-detector/incident/v1",
        "kind": alert.kind,
        "idempotency_key": alert.key,
        "incident_id": inc.incident_id,
        "version": inc.version,
        "status": inc.status,
        "severity": inc.severity,
        "base_severity": inc.base_severity,
        "severity_reason": b["severity_reason"],
        "title": b["title"],
        "cluster": inc.cluster,
        "principal": b["principal"],
        "principal_kind": inc.principal_kind,
        "grouped_by": inc.key_kind,
        "source_ips": b["source_ips"],
        "namespaces": b["namespaces"],
        "first_seen": _iso(inc.first_seen),
        "last_seen": _iso(inc.last_seen),
        "tactics": b["tactics"],
        "techniques": b["techniques"],
        "detectors": b["detectors"],
        "finding_ids": b["finding_ids"],
        "reasons": b["reasons"],
        "open": alert.open_command,
    }
    if b["truncated"]:
        doc["truncated"] = b["truncated"]
    return doc


# --------------------------------------------------------------------------- webhook
def falcosidekick(alert: Alert) -> dict[str, Any]:
    """A Falco event as falcosidekick accepts it on ``POST /`` (its ``types.FalcoPayload``).

    ``rule`` is the worst finding's detector, so falcosidekick's per-rule routing and
    Falco's rule-name filters keep working; ``output_fields`` uses Falco's k8saudit field
    names where one exists (``ka.user.name``, ``ka.sourceips``) and ``detect.*`` for ours.
    """
    inc = alert.incident
    b = _bounded(inc)
    worst = max(inc.timeline, key=lambda t: t["severity_rank"]) if inc.timeline else {}
    priority = FALCO_PRIORITY[inc.severity]
    # A digest has no one principal: no `user=None` in the text people read.
    # One line people read, control characters shown (a line break in a principal forged
    # a second line in falcosidekick's syslog and Loki outputs); output_fields stay raw.
    who = f"user={_line(b['principal'])} " if b["principal"] else ""
    output = (
        f"{_iso(inc.last_seen)}: {priority} {_line(b['title'])} ({who}"
        f"cluster={inc.cluster} incident={inc.incident_id} version={inc.version})"
    )
    event = {
        "uuid": str(uuid.uuid5(_NS, alert.key)),
        "output": output,
        "priority": priority,
        "rule": worst.get("detector", PRODUCT),
        "time": _iso(inc.last_seen),
        "source": "k8saudit",
        "hostname": inc.cluster,
        "tags": [
            "k8s",
            PRODUCT,
            f"incident_{alert.kind}",
            *[t.lower().replace(" ", "_") for t in b["tactics"]],
            *b["techniques"],
        ],
        "output_fields": {
            "ka.user.name": b["principal"],
            "ka.sourceips": b["source_ips"],
            "ka.target.namespace": b["namespaces"][0] if len(inc.namespaces) == 1 else None,
            "detect.incident.id": inc.incident_id,
            "detect.incident.version": inc.version,
            "detect.incident.kind": alert.kind,
            "detect.idempotency_key": alert.key,
            "detect.severity": inc.severity,
            "detect.severity_reason": b["severity_reason"],
            "detect.status": inc.status,
            "detect.cluster": inc.cluster,
            "detect.first_seen": _iso(inc.first_seen),
            "detect.tactics": b["tactics"],
            "detect.detectors": b["detectors"],
            "detect.finding_ids": b["finding_ids"],
            "detect.reasons": b["reasons"],
            "detect.open": alert.open_command,
        },
    }
    if b["truncated"]:
        event["output_fields"]["detect.truncated"] = b["truncated"]
    return event


# --------------------------------------------------------------------------- slack
def slack(alert: Alert) -> dict[str, Any]:
    """An incoming-webhook message: title, severity, cluster, principal, reasons, command.

    Incoming webhooks cannot edit a message, so an update is a new message that says
    "update" and carries the same incident id. Every text from the lake is shown on one
    line (a line break in a principal drew a field of its own) and escaped, the top-level
    ``text`` too (Slack reads it as mrkdwn for the notification: ``<!channel>`` in a user
    agent pinged the channel), and kept within Block Kit's limits after escaping (a
    header 150 characters, a field 2,000, a section 3,000): Slack refuses a message past
    them whole.
    """
    inc = alert.incident
    if alert.kind == DIGEST:
        head = "Alert digest"
    elif alert.kind == "new":
        head = "New incident"
    elif inc.status in CLOSED:
        head = f"Incident {inc.status} (v{inc.version})"
    else:
        head = f"Incident updated (v{inc.version})"
    text = f"[{inc.severity.upper()}] {head}: {_line(inc.title)}"
    lines = "\n".join(f"• {_line(r)}" for r in reasons(inc, limit=5))
    fields = [
        (
            "Severity",
            f"{inc.severity}"
            + (f" (raised from {inc.base_severity})" if inc.base_severity != inc.severity else ""),
        ),
        ("Cluster", inc.cluster or "-"),
        ("Principal", _line(inc.principal or "-")),
        ("Source IPs", _line(", ".join(inc.source_ips[:3]) or "-")),
        ("Window", f"{_iso(inc.first_seen)} to {_iso(inc.last_seen)}"),
        ("Tactics", " → ".join(inc.tactics) or "-"),
    ]
    folds = [_folded_block(inc.finding_ids)] if alert.kind == DIGEST else []
    return {
        "text": _esc(text, SLACK_TEXT),
        # no preview fetched of an address a client put in a name or a user agent
        "unfurl_links": False,
        "unfurl_media": False,
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": clip(text, SLACK_HEADER)}},
            {
                "type": "section",
                "fields": [
                    _mrkdwn(f"*{k}*\n{_esc(v, SLACK_FIELD - len(k) - 3)}") for k, v in fields
                ],
            },
            {
                "type": "section",
                "text": _mrkdwn(f"*Why*\n{_esc(lines, SLACK_SECTION - 6)}"),
            },
            {
                "type": "context",
                "elements": [
                    _mrkdwn(f"Open: `{_esc(alert.open_command, SLACK_FIELD)}` · id {alert.key}")
                ],
            },
            *folds,
        ],
    }


def _folded_block(ids: list[str]) -> dict[str, Any]:
    """A digest's folded incident ids, as many as a block's 3,000 characters hold (about
    130), then how many more: what the channel was told of, by id."""
    shown: list[str] = []
    size = len("Folds: ") + len(" and 9999 more")
    for i in ids:
        if size + len(i) + 2 > SLACK_SECTION:
            break
        shown.append(i)
        size += len(i) + 2
    more = f" and {len(ids) - len(shown)} more" if len(shown) < len(ids) else ""
    text = "Folds: " + ", ".join(_esc(i, ITEM_CHARS) for i in shown) + more
    return {"type": "context", "elements": [_mrkdwn(text)]}


def _mrkdwn(text: str) -> dict[str, Any]:
    """A Block Kit mrkdwn text taken as written (``verbatim``): by default Slack turns
    addresses into links and parses mentions and channel names, so a URL a client put in
    a user agent or a name showed as a live link in the alert (found by review)."""
    return {"type": "mrkdwn", "text": text, "verbatim": True}


#: Block Kit's limits (characters): a header's plain text, a section field, a section's
#: text; and the notification text we send (Slack's own limit is 40,000).
SLACK_HEADER = 150
SLACK_FIELD = 2000
SLACK_SECTION = 3000
SLACK_TEXT = 3000
_MRKDWN = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
_MRKDWN_TABLE = str.maketrans(_MRKDWN)


def _line(text: str) -> str:
    """``text`` on one line: control characters and line breaks shown as ``\\n``."""
    return text.translate(ONE_LINE)


def _esc(text: str, limit: int) -> str:
    """Slack mrkdwn escaping (&, <, >: principals may contain them), at most ``limit``
    characters once escaped, cut before an escape rather than inside one."""
    whole = text.translate(_MRKDWN_TABLE)
    if len(whole) <= limit:
        return whole
    out: list[str] = []
    size = 0
    for char in text:
        piece = _MRKDWN.get(char, char)
        if size + len(piece) > limit - 1:
            out.append("…")
            break
        out.append(piece)
        size += len(piece)
    return "".join(out)


# --------------------------------------------------------------------------- SNS / EventBridge
def sns_subject(alert: Alert) -> str:
    """SNS subjects: printable ASCII, at most 100 characters (SNS refuses a subject with a
    line break or any control character, and the alert with it)."""
    raw = f"[{alert.incident.severity}] {alert.incident.title}"[:100]
    return "".join(c if " " <= c <= "~" else " " if c in "\t\n\r" else "?" for c in raw)


def eventbridge_entry(alert: Alert, source: str, bus: str) -> dict[str, Any]:
    import orjson

    return {
        "Source": source,
        "DetailType": EVENTBRIDGE_DETAIL_TYPE[alert.kind],
        "Detail": orjson.dumps(incident_doc(alert)).decode(),
        "EventBusName": bus,
        "Time": alert.incident.last_seen,
    }


# --------------------------------------------------------------------------- Security Hub
def asff_id(inc: Incident) -> str:
    """The same finding Id for every version: Security Hub updates it in place."""
    return f"{PRODUCT}/{inc.cluster or 'cluster'}/{inc.incident_id}"


def asff(
    alert: Alert,
    account_id: str,
    region: str,
    product_arn: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    inc = alert.incident
    now = now or datetime.now(UTC)
    types = [f"TTPs/{t}" for t in inc.tactics if t in ASFF_TTPS]
    if "Impact" in inc.tactics:
        types.append("Effects/Resource Consumption")
    if not types:
        types = ["Unusual Behaviors/User"]
    description = " | ".join([inc.severity_reason, *reasons(inc, limit=4)])
    return {
        "SchemaVersion": "2018-10-08",
        "Id": asff_id(inc),
        "ProductArn": product_arn
        or f"arn:aws:securityhub:{region}:{account_id}:product/{account_id}/default",
        "GeneratorId": f"{PRODUCT}/incidents",
        "AwsAccountId": account_id,
        "Types": types,
        "FirstObservedAt": _iso(inc.first_seen),
        "LastObservedAt": _iso(inc.last_seen),
        "CreatedAt": _iso(inc.created_at or now),
        "UpdatedAt": _iso(now),
        "Severity": {"Label": inc.severity.upper(), "Original": inc.severity},
        "Title": _line(inc.title)[:256],
        "Description": _line(description)[:1024],
        "Resources": [
            {
                "Type": "Other",
                "Id": f"kubernetes-cluster/{inc.cluster or 'cluster'}",
                "Region": region,
                "Details": {
                    "Other": {
                        "principal": _line(inc.principal or "")[:1024],
                        "grouped_by": inc.key_kind,
                    }
                },
            }
        ],
        "ProductFields": {
            "audit-detector/incident_id": inc.incident_id,
            "audit-detector/version": str(inc.version),
            "audit-detector/idempotency_key": alert.key,
            "audit-detector/open": alert.open_command[:2048],
        },
        "Workflow": {"Status": ASFF_WORKFLOW[inc.status]},
        "RecordState": "ARCHIVED" if inc.status == "resolved" else "ACTIVE",
    }


# --------------------------------------------------------------------------- OCSF
_OCSF_ACTIVITY = {1: "Create", 2: "Update", 3: "Close"}


def ocsf(
    alert: Alert, *, account_id: str | None = None, region: str | None = None
) -> dict[str, Any]:
    """An OCSF 1.x Detection Finding (class 2004): create on new, update on a new version,
    close when the incident was resolved or suppressed (OCSF's activity 3, with status
    Resolved or Suppressed)."""
    inc = alert.incident
    # Bounded as every sink's alert: a 150 KB principal made a 1.8 MB record, past what
    # log shippers and CloudWatch (1 MB an event) take (found by review).
    b = _bounded(inc)
    activity = 1 if alert.kind in ("new", DIGEST) else 3 if inc.status in CLOSED else 2
    activity_name = _OCSF_ACTIVITY[activity]
    attacks = [
        {
            "tactic": {"name": t["tactic"]},
            **(technique_objects(t["technique"]) if t.get("technique") else {}),
        }
        for t in inc.timeline
        if t.get("tactic")
    ]
    seen: set[str] = set()
    unique_attacks = []
    for a in attacks:
        k = repr(a)
        if k not in seen:
            seen.add(k)
            unique_attacks.append(a)
    record: dict[str, Any] = {
        "activity_id": activity,
        "activity_name": activity_name,
        "category_uid": 2,
        "category_name": "Findings",
        "class_uid": 2004,
        "class_name": "Detection Finding",
        "type_uid": 2004 * 100 + activity,
        "type_name": f"Detection Finding: {activity_name}",
        "time": _ms(inc.updated_at or inc.last_seen),
        "start_time": _ms(inc.first_seen),
        "end_time": _ms(inc.last_seen),
        "count": len(inc.timeline),
        "severity_id": OCSF_SEVERITY_ID[inc.severity],
        "severity": OCSF_SEVERITY[inc.severity],
        "status_id": OCSF_STATUS_ID[inc.status],
        "status": OCSF_STATUS_NAME[inc.status],
        "message": b["title"],
        "metadata": {
            "version": "1.5.0",
            "uid": alert.key,
            "correlation_uid": inc.incident_id,
            "product": {"name": PRODUCT, "vendor_name": VENDOR, "version": __version__},
            "labels": [f"cluster:{inc.cluster}", f"grouped_by:{inc.key_kind}"],
        },
        "finding_info": {
            "uid": inc.incident_id,
            "title": b["title"],
            "desc": b["severity_reason"],
            "created_time": _ms(inc.created_at or inc.first_seen),
            "modified_time": _ms(inc.updated_at),
            "first_seen_time": _ms(inc.first_seen),
            "last_seen_time": _ms(inc.last_seen),
            "types": b["detectors"],
            "data_sources": ["kubernetes audit log"],
            **({"attacks": unique_attacks} if unique_attacks else {}),
        },
        "resources": [
            {
                "type": "Kubernetes Cluster",
                "uid": inc.cluster,
                "name": inc.cluster,
                **({"region": region} if region else {}),
            }
        ],
        "evidences": [
            {
                "name": "principal",
                "data": {
                    "principal": b["principal"],
                    "principal_kind": inc.principal_kind,
                    "source_ips": b["source_ips"],
                    "namespaces": b["namespaces"],
                },
            }
        ],
        "unmapped": {
            "finding_ids": b["finding_ids"],
            "reasons": b["reasons"],
            "open": alert.open_command,
            **({"truncated": b["truncated"]} if b["truncated"] else {}),
        },
    }
    if account_id or region:
        record["cloud"] = {
            "provider": "AWS",
            **({"region": region} if region else {}),
            **(
                {
                    "account": {
                        "uid": account_id,
                        "type_id": 10,
                        "type": "AWS Account",
                        "name": account_id,
                    }
                }
                if account_id
                else {}
            ),
        }
    return record
