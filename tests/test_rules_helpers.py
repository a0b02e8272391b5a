"""Raw audit Event builders shared by the rules tests (no tests here): the factories' event
(tests/factories.py) cut down to what a rule looks at, normalized the real way through
detector.events.normalize."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import polars as pl
from factories import audit_id as factory_audit_id
from factories import iso, make_event

from detector.events.normalize import events_from_dicts

T0 = datetime(2026, 11, 27, 10, 1, tzinfo=UTC)
_ids = itertools.count(1)


def sa(ns: str, name: str) -> dict[str, Any]:
    """A service account's identity as the API server logs it (with its pod)."""
    return {
        "username": f"system:serviceaccount:{ns}:{name}",
        "uid": "5d3f1c9e-0000-4000-8000-00000000abcd",
        "groups": [
            "system:serviceaccounts",
            f"system:serviceaccounts:{ns}",
            "system:authenticated",
        ],
        "extra": {"authentication.kubernetes.io/pod-name": [f"{name}-7d9f8-abcde"]},
    }


def iam(session: str = "alice", role: str = "eng-admin") -> dict[str, Any]:
    """An EKS IAM-role identity: username from aws-auth, ARN and session in user.extra."""
    return {
        "username": role,
        "uid": f"aws-iam-authenticator:111122223333:AROAEXAMPLE{role}",
        "groups": ["system:authenticated", "eng"],
        "extra": {
            "arn": [f"arn:aws:sts::111122223333:assumed-role/{role}/{session}"],
            "canonicalArn": [f"arn:aws:iam::111122223333:role/{role}"],
            "sessionName": [session],
        },
    }


def ev(
    verb: str,
    resource: str | None = None,
    *,
    ns: str | None = None,
    name: str | None = None,
    sub: str | None = None,
    user: str | dict[str, Any] = "alice",
    code: int = 200,
    stage: str = "ResponseComplete",
    body: dict[str, Any] | list[Any] | None = None,
    uri: str | None = None,
    at: datetime | None = None,
    audit_id: str | None = None,
    ip: str = "203.0.113.7",
    decision: str | None = "allow",
    group: str | None = None,
) -> dict[str, Any]:
    """One audit.k8s.io/v1 Event with just the fields a rule looks at."""
    if uri is None:
        prefix = f"/apis/{group}/v1" if group else "/api/v1"
        parts = [prefix]
        if ns and resource != "namespaces":
            parts.append(f"namespaces/{ns}")
        if resource:
            parts.append(resource)
        if name:
            parts.append(name)
        if sub:
            parts.append(sub)
        uri = "/".join(parts)
    at = at or T0
    n = next(_ids)
    event = make_event(
        n,
        at=at + timedelta(milliseconds=5),
        level="RequestResponse" if body is not None else "Metadata",
        auditID=audit_id or factory_audit_id(n),
        stage=stage,
        requestURI=uri,
        verb=verb,
        user={"username": user} if isinstance(user, str) else user,
        sourceIPs=[ip],
        userAgent="kubectl/v1.31.0 (linux/amd64) kubernetes/abc",
        responseStatus={"code": code},
        requestReceivedTimestamp=iso(at),
    )
    del event["objectRef"], event["annotations"]  # set below only when asked for
    if resource:
        ref: dict[str, Any] = {"resource": resource, "apiVersion": "v1"}
        if group:
            ref["apiGroup"] = group
        if ns:
            ref["namespace"] = ns
        if name:
            ref["name"] = name
        if sub:
            ref["subresource"] = sub
        event["objectRef"] = ref
    if decision:
        event["annotations"] = {"authorization.k8s.io/decision": decision}
    if body is not None:
        event["requestObject"] = body
    return event


def exec_ev(command: list[str], *, verb: str = "create", user: Any = "alice", **kw: Any) -> dict:
    """An exec session into shop/p running ``command`` (kubectl's ``command=`` parameters),
    as logged when it opened."""
    query = "&".join(f"command={quote(c, safe='')}" for c in command)
    uri = f"/api/v1/namespaces/shop/pods/p/exec?{query}&container=app&stdin=true"
    kw = {"code": 101, "stage": "ResponseStarted", "uri": uri, **kw}
    return ev(verb, "pods", ns="shop", name="p", sub="exec", user=user, **kw)


def denials(user: str, n: int, start: datetime = T0) -> list[dict[str, Any]]:
    """``n`` requests of ``user`` denied by authorization (403), a second apart from ``start``."""
    return [
        ev(
            "get",
            "pods",
            ns="a",
            code=403,
            user=user,
            decision="forbid",
            at=start + timedelta(seconds=i),
        )
        for i in range(n)
    ]


def frame(*events: dict[str, Any]) -> pl.DataFrame:
    return events_from_dicts(list(events), cluster="test")


def pod_spec(
    *,
    image: str = "nginx:1.27",
    privileged: bool | None = None,
    init_privileged: bool | None = None,
    host_path: str | None = None,
    host_pid: bool = False,
    host_network: bool = False,
) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "app", "image": image}
    if privileged is not None:
        container["securityContext"] = {"privileged": privileged, "capabilities": {"add": []}}
    spec: dict[str, Any] = {"containers": [container]}
    if init_privileged is not None:
        spec["initContainers"] = [
            {"name": "init", "image": "busybox", "securityContext": {"privileged": init_privileged}}
        ]
    if host_path:
        spec["volumes"] = [{"name": "h", "hostPath": {"type": "", "path": host_path}}]
        container["volumeMounts"] = [{"name": "h", "mountPath": "/host"}]
    if host_pid:
        spec["hostPID"] = True
    if host_network:
        spec["hostNetwork"] = True
    return spec


def pod(ns: str = "default", **kw: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "namespace": ns},
        "spec": pod_spec(**kw),
    }


def workload(kind: str, ns: str = "default", **kw: Any) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": kind,
        "metadata": {"name": "w", "namespace": ns},
        "spec": {
            "replicas": 1,
            "template": {"metadata": {"labels": {"a": "b"}}, "spec": pod_spec(**kw)},
        },
    }


def binding(kind: str, role: str, *subjects: tuple[str, str], ns: str | None = None):
    meta: dict[str, Any] = {"name": "b"}
    if ns:
        meta["namespace"] = ns
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": kind,
        "metadata": meta,
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [
            {
                "kind": k,
                "name": n,
                **({"namespace": ns or "default"} if k == "ServiceAccount" else {}),
            }
            for k, n in subjects
        ],
    }


def role(kind: str, resources: list[str], verbs: list[str], name: str = "r"):
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": kind,
        "metadata": {"name": name},
        "rules": [{"apiGroups": [""], "resources": resources, "verbs": verbs}],
    }


def addresses(column: list[str | None]) -> pl.DataFrame:
    """``source_ip`` and the ``source_ips`` it was the first of, as normalization gives."""
    return pl.DataFrame(
        {"source_ip": column, "source_ips": [[a] if a is not None else None for a in column]},
        schema={"source_ip": pl.String, "source_ips": pl.List(pl.String)},
    )


def test_addresses_keep_their_answers_across_chunks_and_past_the_memory_bound(monkeypatch):
    """source_in remembers each address's answer between the chunks polars hands it (a
    range read file by file) and starts over past KNOWN_ADDRESSES: every row's answer is
    still ipaddress's, whichever chunk it came in and whatever was forgotten meanwhile."""
    import ipaddress

    from detector.rules import iplists

    monkeypatch.setattr(iplists, "KNOWN_ADDRESSES", 3)
    chunks = [
        ["10.0.0.1", "8.8.8.8", None],
        ["10.0.0.1", "172.16.5.4", "1.1.1.1"],  # one known, two new: past the bound
        ["8.8.8.8", "192.168.1.1", "not-an-address", "10.0.0.1"],
    ]
    frame = pl.concat([addresses(c) for c in chunks], rechunk=False)
    assert frame["source_ip"].n_chunks() == 3
    got = frame.select(iplists.source_in("non_public")).to_series().to_list()

    def private(address: str | None) -> bool | None:
        try:
            ip = ipaddress.ip_address(address or "")
        except ValueError:
            return None
        return any(ip in ipaddress.ip_network(n) for n in iplists.NON_PUBLIC)

    assert got == [private(a) for c in chunks for a in c]
    assert got[:3] == [True, False, None]


def test_plain_ip_lists_give_the_same_answers_as_the_checked_parser(tmp_path):
    """The integer fast path (AWS snapshot, deny lists) and ipaddress agree on membership."""
    from detector.rules import iplists

    lst = tmp_path / "deny.txt"
    lst.write_text(
        "# comment\n10.1.2.3\n10.1.2.0/24  # host bits below\n10.1.3.7/23\n"
        "192.168.0.0/16\n192.168.5.0/24\n203.0.113.9/32\n"
    )
    fast = iplists._plain_intervals([lst])
    checked = iplists.intervals(iplists.read_networks(lst))
    assert fast is not None
    probes = [0, 167838207, 167838208, 167838211, 167838719, 167838720, 3232235520]
    probes += [3232301055, 3232301056, 3405803785, 3405803786, 2**32 - 1]
    df = pl.DataFrame({"n": pl.Series(probes, dtype=pl.UInt32)})
    assert df.select(iplists.in_intervals(pl.col("n"), fast.starts, fast.ends)).equals(
        df.select(iplists.in_intervals(pl.col("n"), checked.starts, checked.ends))
    )
    # IPv6, in the shipped snapshot too: every interval's edges and either side of them
    aws = iplists._plain_intervals([iplists.aws_ranges_path()])
    assert aws is not None and len(aws.starts) > 0 and len(aws.v6_starts) > 1000
    slow = iplists.intervals(iplists.read_networks(iplists.aws_ranges_path()))
    edges = [*slow.v6_starts, *slow.v6_ends]
    probes6 = [e + d for e in edges for d in (-1, 0, 1)] + [0, 2**128 - 1]
    assert [aws.holds_v6(p) for p in probes6] == [slow.holds_v6(p) for p in probes6]
    lst.write_text("10.1.2.3\n2001:db8::/32\n2600:1f00::/40\n")
    v6 = iplists._plain_intervals([lst])
    assert v6 is not None and v6.v6_starts == (0x20010DB8 << 96, 0x26001F00 << 96)
    for bad in ("010.1.2.3", "2001:db8::/129", "fe80::1%eth0/64", "2001:db8::/-1"):
        lst.write_text(bad + "\n")  # ipaddress refuses these, or reads them otherwise
        assert iplists._plain_intervals([lst]) is None, bad


def test_hostile_source_addresses_are_answered_none_and_the_rest_still_right():
    """sourceIPs holds whatever the log wrote: a megabyte of text, an address with a tail,
    nulls. Each is no address (None, which every rule reads as false); the real addresses
    among them keep their answers, in chunk after chunk (answers remembered between
    chunks are only those of address-sized texts)."""
    from detector.rules import iplists

    huge = "9" * 1_000_000
    chunks = [[huge, "10.1.2.3", None], ["10.1.2.3 " + "x" * 100, "8.8.8.8", huge]]
    frame = pl.concat([addresses(c) for c in chunks], rechunk=False)
    got = frame.select(iplists.source_in("non_public")).to_series().to_list()
    assert got == [None, True, None, None, False, None]
