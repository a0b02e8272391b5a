"""configmap-credentials on real ConfigMaps: Helm charts' scripts and settings name
credentials all the time without holding one; the rule reports a ConfigMap that holds one.

tests/data/configmaps/real-configmaps.yaml holds ConfigMaps from public charts and
repositories, each annotated with its source and with what it is (``expect``): benign
(variable references, file paths, secret references, prose) or credential (a literal
value). Ingest redacts every credential value before the rules see it, so each case goes
through the real normalizer, as a lake would hold it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from test_rules_helpers import ev, iam

from detector.events.normalize import events_from_dicts
from detector.rules import evaluate_rules, load_ruleset

REAL = Path(__file__).parent / "data" / "configmaps" / "real-configmaps.yaml"
RULE = "configmap-credentials"

#: Where the rule and a document's annotation disagree, and why (docs/rules.md says so too).
KNOWN_MISSES = {
    # OWASP WrongSecrets hides its secret under a key with no credential word in it.
    "secrets-file",
}
KNOWN_FALSE_ALARMS = {
    # JCasC's password: "${chart-admin-password}" is a reference in YAML double quotes;
    # once the value is redacted it reads as password: "<redacted>", a quoted literal.
    "jenkins-jenkins-jcasc-config",
}


@pytest.fixture(scope="module")
def ruleset():
    return load_ruleset().only(RULE)


def created(data: dict[str, str], name: str = "app", ns: str = "shop") -> dict[str, Any]:
    """A person creating a ConfigMap holding ``data``."""
    body = {"kind": "ConfigMap", "metadata": {"name": name, "namespace": ns}, "data": data}
    user = iam("alice", "platform-admin")
    return ev("create", "configmaps", ns=ns, name=name, code=201, body=body, user=user)


def fires(ruleset, *events: dict[str, Any]) -> bool:
    frame = events_from_dicts(list(events), cluster="test")
    return evaluate_rules(frame, ruleset).findings.height > 0


def test_real_charts_configmaps_fire_only_where_a_credential_is_written(ruleset):
    """Bitnami's Redis, MongoDB and PostgreSQL scripts, Keycloak's settings, Argo CD's
    and Argo Workflows' config (Falco's rule fires on 9 of these 11) stay quiet; the
    literal passwords, keys and connection strings of public manifests are reported."""
    docs = [d for d in yaml.safe_load_all(REAL.read_text()) if d]
    got, want = set(), set()
    for doc in docs:
        meta = doc["metadata"]
        name = meta["name"]
        assert meta["annotations"]["expect"] in ("benign", "credential"), name
        if meta["annotations"]["expect"] == "credential":
            want.add(name)
        if fires(ruleset, created(doc["data"], name=name, ns=meta.get("namespace", "default"))):
            got.add(name)
    assert len(docs) == 17
    assert got == (want - KNOWN_MISSES) | KNOWN_FALSE_ALARMS


@pytest.mark.parametrize(
    "data",
    [
        {"DB_PASSWORD": "hunter2"},
        {"AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG"},
        {"app.properties": "db.user=app\ndb.password=hunter2\n"},
        {"app.ini": "[db]\npassword = hunter2\n"},
        {"config.yaml": "db:\n  password: hunter2\n"},
        {"config.yaml": 'db:\n  password: "hunter2"\n'},
        {"config.yaml": "db:\n  password: 'hunter2'\n"},
        {"config.json": '{"db": {"password": "hunter2"}}'},
        {"backup.sh": "#!/bin/sh\nPGPASSWORD='hunter2' pg_dump app\n"},
        {"DATABASE_URL": "postgresql://app:hunter2@db:5432/app"},
        {"aws.env": "AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE\n"},
        {"aws_access_key_id": "MY-ID"},
        {"config.yaml": "db:\n  password:\n    hunter2  # TODO: rotate\n"},
        {"config.yaml": "db:\n  password: |\n    hunter2\n"},
        {
            "hive-site.xml": "<property>\n  <name>javax.jdo.option.ConnectionPassword</name>\n"
            "  <value>hunter2</value>\n</property>"
        },
    ],
)
def test_a_credential_written_into_a_configmap_fires(ruleset, data):
    assert fires(ruleset, created(data))


@pytest.mark.parametrize(
    "data",
    [
        {"DB_PASSWORD_FILE": "/etc/secrets/db-password"},
        {"probe.sh": '#!/bin/bash\nexport REDISCLI_AUTH="$REDIS_PASSWORD"\n'},
        {"start.sh": 'PGPASSWORD="${POSTGRES_PASSWORD}" psql -U app -c "select 1"\n'},
        {"entry.sh": 'if [ -z "$PASSWORD" ]; then echo "password is required"; fi\n'},
        {"config.yaml": "db:\n  passwordSecret:\n    name: db\n    key: password\n"},
        {"settings.xml": "<server><id>r</id><password>${env.REPO_PASSWORD}</password></server>"},
        {"policy.yaml": "passwordPattern: ^.{8,32}$\n"},
        {"README": "Keep the password in a Secret, never in a ConfigMap."},
        {"DATABASE_URL": "postgresql://db:5432/app"},
        {"AWS_REGION": "us-west-2", "LOG_LEVEL": "INFO"},
    ],
)
def test_a_configmap_that_only_names_a_credential_does_not_fire(ruleset, data):
    assert not fires(ruleset, created(data))


def test_the_value_is_gone_from_the_lake_the_rule_reads(ruleset):
    """The rule sees the redacted text, never the credential (docs/security.md)."""
    frame = events_from_dicts([created({"app.properties": "db.password=hunter2\n"})])
    (body,) = frame["request_object"].to_list()
    assert "hunter2" not in body and "<redacted>" in body
