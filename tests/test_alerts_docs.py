"""docs/alerts.md stays true: each payload example has exactly the fields the code sends,
every sink type and status is documented, and the incident figures add up."""

from __future__ import annotations

import json
import re
import sys
from datetime import timedelta
from pathlib import Path

import polars as pl
import pytest
from alerts_data import T0, W, finding, frames

from detector.delivery import payloads
from detector.delivery.config import TYPES
from detector.detect.evaluate import EvalReport, Scenario
from detector.incidents.evaluate import incident_figures
from detector.incidents.group import group
from detector.incidents.status import STATUSES
from detector.lake.incidents import INCIDENT_COLUMNS

DOC = Path(__file__).resolve().parent.parent / "docs" / "alerts.md"
ROLE = "arn:aws:iam::111122223333:role/dev"


def _examples() -> dict[str, dict]:
    text = DOC.read_text()
    out = {}
    for title, body in re.findall(r"### ([^\n]+)\n(?:(?!### ).)*?```json\n(.*?)\n```", text, re.S):
        out[title] = json.loads(body)
    return out


def _alert() -> payloads.Alert:
    df, ev = frames(
        [
            finding(ROLE, T0, tactic="Discovery", detector="rule:a"),
            finding(ROLE, T0 + W, severity="high", detector="rule:b"),
        ]
    )
    (inc,), _ = group(df, [], events=ev)
    return payloads.Alert(inc, "new")


@pytest.mark.parametrize(
    ("heading", "build"),
    [
        ("The incident document", payloads.incident_doc),
        ("Webhook", payloads.falcosidekick),
        ("Slack", payloads.slack),
        ("EventBridge", lambda a: payloads.eventbridge_entry(a, "s", "b")),
        ("Security Hub", lambda a: payloads.asff(a, "111122223333", "eu-west-1")),
        ("OCSF", lambda a: payloads.ocsf(a, account_id="1", region="r")),
    ],
)
def test_each_payload_example_has_the_fields_the_code_sends(heading, build):
    examples = _examples()
    (key,) = [k for k in examples if k.startswith(heading)]
    assert set(examples[key]) == set(build(_alert()))


def test_every_sink_status_and_incident_column_is_documented():
    text = DOC.read_text()
    for t in TYPES:
        assert f'type = "{t}"' in text or f'type = "{t}"' in text, t
    for s in STATUSES:
        assert f"| {s} |" in text
    for col in INCIDENT_COLUMNS:
        assert f"`{col}`" in text, col


def test_incident_figures_count_attacks_and_benign_incidents():
    attacker = "arn:aws:iam::1:role/attacker"
    rows = [
        finding(attacker, T0, severity="high", detector="rule:a"),
        finding(attacker, T0 + W, severity="medium"),  # same incident
        finding(attacker, T0 + timedelta(hours=8), severity="high"),  # second incident
        finding("arn:aws:iam::1:role/ci", T0, severity="low"),  # benign alert
        finding("arn:aws:iam::1:role/ops", T0, severity="info"),  # a record, not delivered
    ]
    df, ev = frames(rows)
    scenario = Scenario(
        "s1",
        "token-theft",
        attacker,
        "Credential Access",
        None,
        T0,
        T0 + timedelta(hours=9),
        frozenset(),
    )
    report = EvalReport(
        train=(T0, T0),
        test=(T0, T0 + timedelta(days=2)),
        findings=df,
        events=ev,
        in_test=[scenario],
        attackers={attacker},
    )
    f = incident_figures(report)
    assert (f.incidents, f.reached, f.max_per_attack, f.benign) == (3, 1, 2, 1)
    assert f.benign_per_day == 0.5 and f.unmatched == 1 and f.targets_met
    # a third incident about the same attack breaks the "at most 2 per attack" target
    more, more_ev = frames([finding(attacker, T0 + timedelta(hours=16), severity="high")])
    report.findings = pl.concat([df, more])
    report.events = pl.concat([ev, more_ev])
    scenario_long = Scenario(
        "s1", "token-theft", attacker, None, None, T0, T0 + timedelta(days=1), frozenset()
    )
    report.in_test = [scenario_long]
    worse = incident_figures(report)
    assert worse.max_per_attack == 3 and not worse.targets_met


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__]))
