"""MITRE ATT&CK names for the technique IDs the rules give, for what sinks show.

OCSF's ``attacks[].technique`` is an object with an id *and* a name (py-ocsf-models requires
the name), and a sub-technique (``T1098.006``) is an object of its own under its parent
technique. The rules carry only the id; the names are ATT&CK's (Enterprise, Containers
matrix), kept here so that a rule file stays one line per mapping. A test checks every
shipped rule's technique is named; an id a user's rule gives that is not here is shown as
its id.
"""

from __future__ import annotations

#: ATT&CK technique and sub-technique names by id.
TECHNIQUES: dict[str, str] = {
    "T1005": "Data from Local System",
    "T1027": "Obfuscated Files or Information",
    "T1036": "Masquerading",
    "T1036.005": "Match Legitimate Resource Name or Location",
    "T1053": "Scheduled Task/Job",
    "T1053.007": "Container Orchestration Job",
    "T1069": "Permission Groups Discovery",
    "T1070": "Indicator Removal",
    "T1078": "Valid Accounts",
    "T1078.001": "Default Accounts",
    "T1098": "Account Manipulation",
    "T1098.001": "Additional Cloud Credentials",
    "T1098.006": "Additional Container Cluster Roles",
    "T1110": "Brute Force",
    "T1133": "External Remote Services",
    "T1134": "Access Token Manipulation",
    "T1136": "Create Account",
    "T1190": "Exploit Public-Facing Application",
    "T1485": "Data Destruction",
    "T1489": "Service Stop",
    "T1528": "Steal Application Access Token",
    "T1531": "Account Access Removal",
    "T1546": "Event Triggered Execution",
    "T1552": "Unsecured Credentials",
    "T1552.001": "Credentials In Files",
    "T1552.007": "Container API",
    "T1557": "Adversary-in-the-Middle",
    "T1562": "Impair Defenses",
    "T1562.001": "Disable or Modify Tools",
    "T1564": "Hide Artifacts",
    "T1565": "Data Manipulation",
    "T1565.001": "Stored Data Manipulation",
    "T1572": "Protocol Tunneling",
    "T1595": "Active Scanning",
    "T1609": "Container Administration Command",
    "T1610": "Deploy Container",
    "T1611": "Escape to Host",
    "T1613": "Container and Resource Discovery",
}


def technique_objects(uid: str) -> dict[str, dict[str, str]]:
    """``{"technique": {...}}``, with ``"sub_technique"`` for a sub-technique, as OCSF's
    MITRE ATT&CK object holds them.

    >>> technique_objects("T1098.006")["sub_technique"]
    {'uid': 'T1098.006', 'name': 'Additional Container Cluster Roles'}
    >>> technique_objects("T1611")
    {'technique': {'uid': 'T1611', 'name': 'Escape to Host'}}
    """
    parent = uid.split(".", 1)[0]
    out = {"technique": {"uid": parent, "name": TECHNIQUES.get(parent, parent)}}
    if parent != uid:
        out["sub_technique"] = {"uid": uid, "name": TECHNIQUES.get(uid, uid)}
    return out
