"""The event factory: one builder for every ``audit.k8s.io/v1`` Event the simulator logs.

Why: the API server fills an Event the same way for every request (URI and objectRef from
the resource, level from the body, two stages for long-running requests, failure statuses
with the server's wording); benign traffic and attacks describe *what* happens and leave
*how it is logged* to :class:`EventFactory`, so both are logged identically.
"""

from __future__ import annotations

import base64
import random
import time
from typing import Any

import numpy as np

from detector.simulate.actors import (
    FORBID,
    HEX_DIGITS,
    POD_SUFFIX_ALPHABET,
    RESOURCES,
    SUCCESS_STATUS,
    UNAUTHORIZED_STATUS,
    US,
    Actor,
    Resource,
)
from detector.simulate.world import Pod, World

# --------------------------------------------------------------------------------------------
# Event factory
# --------------------------------------------------------------------------------------------


class AuditIds:
    """UUID-shaped audit IDs drawn in blocks from a numpy generator (fast, deterministic)."""

    __slots__ = ("_hex", "_i", "_n", "_rng")

    def __init__(self, rng: np.random.Generator) -> None:
        self._rng = rng
        self._hex = ""
        self._i = 0
        self._n = 0

    def __call__(self) -> str:
        if self._i >= self._n:
            a = self._rng.integers(0, 256, size=(4096, 16), dtype=np.uint8)
            a[:, 6] = (a[:, 6] & 0x0F) | 0x40
            a[:, 8] = (a[:, 8] & 0x3F) | 0x80
            self._hex = a.tobytes().hex()
            self._i, self._n = 0, 4096
        h, o = self._hex, self._i * 32
        self._i += 1
        return f"{h[o : o + 8]}-{h[o + 8 : o + 12]}-{h[o + 12 : o + 16]}-{h[o + 16 : o + 20]}-{h[o + 20 : o + 32]}"  # noqa: E501


class EventFactory:
    """Builds Event dicts into ``buf`` as ``(stageTimestamp_us, event, stream)`` tuples."""

    def __init__(self, world: World, rng: np.random.Generator, rnd: random.Random) -> None:
        self.world = world
        self.rng = rng
        self.rnd = rnd
        self.ids = AuditIds(rng)
        self.buf: list[tuple[int, dict[str, Any], int]] = []
        self._tcache: dict[int, str] = {}
        self._refs: dict[tuple[Any, ...], tuple[str, dict[str, str]]] = {}
        self._iplists: dict[str, list[str]] = {}

    # -- formatting ---------------------------------------------------------------------------
    def ts(self, at_us: int) -> str:
        """RFC 3339 with microseconds and ``Z``, as the API server writes; the
        ``YYYY-MM-DDTHH:MM:`` prefix is cached per minute (strftime is the slow part)."""
        m, frac = divmod(at_us, 60 * US)
        p = self._tcache.get(m)
        if p is None:
            if len(self._tcache) > 4096:
                self._tcache.clear()
            p = time.strftime("%Y-%m-%dT%H:%M:", time.gmtime(m * 60))
            self._tcache[m] = p
        sec, frac = divmod(frac, US)
        return f"{p}{sec:02d}.{frac:06d}Z"

    def ref(
        self, res: str, namespace: str | None, name: str | None, sub: str | None
    ) -> tuple[str, dict[str, str]]:
        """(request path, objectRef) of a resource reference, memoized: both are the same
        for every request to the same object, and the objectRef dict is shared."""
        key = (res, namespace, name, sub)
        hit = self._refs.get(key)
        if hit is None:
            r = RESOURCES[res]
            p = r.base
            o = {"resource": r.resource}
            if namespace and r.namespaced:
                p += f"/namespaces/{namespace}"
                o["namespace"] = namespace
            p += f"/{r.resource}"
            if name:
                p += f"/{name}"
                o["name"] = name
            if sub:
                p += f"/{sub}"
            if r.group:
                o["apiGroup"] = r.group
            o["apiVersion"] = r.version
            if sub:
                o["subresource"] = sub
            if len(self._refs) > 100_000:
                self._refs.clear()
            hit = self._refs[key] = (p, o)
        return hit

    def path(self, res: str, namespace: str | None) -> str:
        """The collection path of ``res`` (in ``ns``), for list/watch URIs with selectors."""
        return self.ref(res, namespace, None, None)[0]

    def suffix(self, length: int = 5) -> str:
        return "".join(self.rnd.choices(POD_SUFFIX_ALPHABET, k=length))

    def uuid(self) -> str:
        h = "".join(self.rnd.choices(HEX_DIGITS, k=32))
        return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:]}"

    def iplist(self, ip: str) -> list[str]:
        lst = self._iplists.get(ip)
        if lst is None:
            lst = self._iplists[ip] = [ip]
        return lst

    def rv(self, at_us: int) -> int:
        return 180_000_000 + (at_us // 40_000) % 700_000_000 + self.rnd.randrange(50)

    def watch_q(self, at_us: int, secs: int, selector: str = "") -> str:
        sel = f"&fieldSelector={selector}" if selector else ""
        return (
            f"?allowWatchBookmarks=true{sel}&resourceVersion={self.rv(at_us)}"
            f"&timeout={secs // 60}m{secs % 60}s&timeoutSeconds={secs}&watch=true"
        )

    # -- the one event builder ---------------------------------------------------------------
    def req(
        self,
        at_us: int,
        actor: Actor,
        verb: str,
        res: str | None = None,
        namespace: str | None = None,
        name: str | None = None,
        sub: str | None = None,
        *,
        code: int = 200,
        query: str = "",
        uri: str | None = None,
        level: str | None = None,
        request_object: Any = None,
        response_object: Any = None,
        ip: str | None = None,
        ua: str | None = None,
        lat: int | None = None,
        dur: int | None = None,
        ann: dict[str, str] | None = None,
        imp: dict[str, Any] | None = None,
        stream: int | None = None,
    ) -> str:
        """Log one request; return its audit ID.

        ``dur`` marks a long-running request (watch, exec, port-forward): it is logged at
        ``ResponseStarted`` and again at ``ResponseComplete`` ``dur`` microseconds later,
        with the same audit ID, exactly as the API server does.
        """
        rnd = self.rnd
        aid = self.ids()
        if res is not None:
            r: Resource | None = RESOURCES[res]
            path, oref = self.ref(res, namespace, name, sub)
            if uri is None:
                if verb == "create" and name and not sub:
                    # The URI of a create names the collection; the server copies the new
                    # object's name into objectRef.
                    path = self.ref(res, namespace, None, None)[0]
                uri = path + query
        else:
            r = oref = None
            assert uri is not None
        if ip is None:
            ips = actor.ips
            ip = ips[0] if len(ips) == 1 else ips[int(rnd.random() * len(ips))]
        if lat is None:
            lat = 900 + int(rnd.random() ** 3 * (60_000 if verb in ("list", "create") else 25_000))
        if level is None:
            if response_object is not None:
                level = "RequestResponse"
            elif request_object is not None:
                level = "Request"
            elif r is None or r.resource in ("secrets", "configmaps", "tokenreviews"):
                level = "Metadata"
            elif verb in ("get", "list", "watch"):
                level = "Request"
            else:
                level = "Metadata"
        ev: dict[str, Any] = {
            "kind": "Event",
            "apiVersion": "audit.k8s.io/v1",
            "level": level,
            "auditID": aid,
            "stage": "ResponseComplete" if dur is None else "ResponseStarted",
            "requestURI": uri,
            "verb": verb,
            "user": actor.user if code != 401 else {},
        }
        if imp is not None:
            ev["impersonatedUser"] = imp
        ev["sourceIPs"] = self.iplist(ip)
        ev["userAgent"] = ua or actor.ua
        if oref is not None:
            ev["objectRef"] = oref
        if code in SUCCESS_STATUS:
            ev["responseStatus"] = SUCCESS_STATUS[code]
        else:
            ev["responseStatus"] = self.failure(
                code, verb, r, namespace, name, sub, uri, imp or actor.user
            )
        if request_object is not None:
            ev["requestObject"] = request_object
        if response_object is not None:
            ev["responseObject"] = response_object
        ev["requestReceivedTimestamp"] = self.ts(at_us)
        ev["stageTimestamp"] = self.ts(at_us + lat)
        if code == 401:
            # Failed authentication: logged once, at ResponseStarted, with no user and no
            # authorization decision.
            ev["stage"] = "ResponseStarted"
            dur = None
        elif code == 403:
            ev["annotations"] = ann or FORBID
        else:
            ev["annotations"] = ann or actor.allow
        s = stream if stream is not None else (0 if rnd.random() < 0.5 else 1)
        self.buf.append((at_us + lat, ev, s))
        if dur is not None:
            done = dict(ev)
            done["stage"] = "ResponseComplete"
            done["stageTimestamp"] = self.ts(at_us + dur)
            self.buf.append((at_us + dur, done, s))
        return aid

    def failure(
        self,
        code: int,
        verb: str,
        resource: Resource | None,
        namespace: str | None,
        name: str | None,
        sub: str | None,
        uri: str,
        user: dict[str, Any],
    ) -> dict[str, Any]:
        if code == 401:
            return UNAUTHORIZED_STATUS
        if resource is None:
            path = uri.split("?", 1)[0]
            return {
                "metadata": {},
                "status": "Failure",
                "message": f'forbidden: User "{user.get("username", "")}" cannot {verb} path '
                f'"{path}"',
                "reason": "Forbidden",
                "details": {},
                "code": code,
            }
        what = f"{resource.resource}/{sub}" if sub else resource.resource
        details: dict[str, Any] = {"name": name, "group": resource.group, "kind": resource.resource}
        if not name:
            del details["name"]
        if not resource.group:
            del details["group"]
        if code == 404:
            return {
                "metadata": {},
                "status": "Failure",
                "message": f'{resource.resource} "{name}" not found',
                "reason": "NotFound",
                "details": details,
                "code": 404,
            }
        if code == 409:
            return {
                "metadata": {},
                "status": "Failure",
                "message": "Operation cannot be fulfilled on "
                f"{resource.resource}.{resource.group or 'core'} "
                f'"{name}": the object has been modified; please apply your changes to the '
                "latest version and try again",
                "reason": "Conflict",
                "details": details,
                "code": 409,
            }
        obj = f'{resource.resource} "{name}"' if name else resource.resource
        scope = (
            f'in the namespace "{namespace}"'
            if namespace and resource.namespaced
            else "at the cluster scope"
        )
        return {
            "metadata": {},
            "status": "Failure",
            "message": f'{obj} is forbidden: User "{user.get("username", "")}" cannot {verb} '
            f'resource "{what}" in API group "{resource.group}" {scope}',
            "reason": "Forbidden",
            "details": details,
            "code": 403,
        }

    # -- bodies -------------------------------------------------------------------------------
    def jwt(self) -> str:
        """A JWT-shaped token (random, never valid) for TokenRequest responses."""
        rb = self.rng.bytes
        head = base64.urlsafe_b64encode(
            b'{"alg":"RS256","kid":"' + rb(20).hex().encode() + b'"}'
        ).rstrip(b"=")
        body = base64.urlsafe_b64encode(rb(330)).rstrip(b"=")
        sig = base64.urlsafe_b64encode(rb(256)).rstrip(b"=")
        return b".".join((head, body, sig)).decode()

    def b64(self, length: int) -> str:
        return base64.b64encode(self.rng.bytes(length)).decode()

    def token_request(
        self, at_us: int, namespace: str, sa: str, seconds: int, bound: Pod | None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        spec: dict[str, Any] = {
            "audiences": ["https://kubernetes.default.svc"],
            "expirationSeconds": seconds,
            "boundObjectRef": None,
        }
        if bound is not None:
            spec["boundObjectRef"] = {
                "kind": "Pod",
                "apiVersion": "v1",
                "name": bound.name,
                "uid": bound.uid,
            }
        rq = {
            "kind": "TokenRequest",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"creationTimestamp": None},
            "spec": spec,
            "status": {"token": "", "expirationTimestamp": None},
        }
        rs = {
            "kind": "TokenRequest",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {
                "name": sa,
                "namespace": namespace,
                "creationTimestamp": self.ts(at_us)[:19] + "Z",
            },
            "spec": spec,
            "status": {
                "token": self.jwt(),
                "expirationTimestamp": self.ts(at_us + seconds * US)[:19] + "Z",
            },
        }
        return rq, rs


def pod_body(
    pod: Pod, image: str, *, privileged: bool = False, host: bool = False, uid: str | None = None
) -> dict[str, Any]:
    """A Pod object as a controller or a user sends it (spec trimmed to what matters)."""
    container: dict[str, Any] = {
        "name": pod.app,
        "image": image,
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
        "volumeMounts": [
            {
                "name": "kube-api-access",
                "readOnly": True,
                "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
            },
        ],
        "imagePullPolicy": "IfNotPresent",
    }
    volumes: list[dict[str, Any]] = [
        {
            "name": "kube-api-access",
            "projected": {
                "sources": [
                    {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                    {
                        "configMap": {
                            "name": "kube-root-ca.crt",
                            "items": [{"key": "ca.crt", "path": "ca.crt"}],
                        }
                    },
                ]
            },
        },
    ]
    spec: dict[str, Any] = {"serviceAccountName": pod.sa}
    if host:
        spec["hostNetwork"] = True
        volumes += [
            {"name": "log-dir", "hostPath": {"path": "/var/log", "type": ""}},
            {
                "name": "xtables-lock",
                "hostPath": {"path": "/run/xtables.lock", "type": "FileOrCreate"},
            },
        ]
        container["volumeMounts"] += [{"name": "log-dir", "mountPath": "/var/log"}]
    if privileged:
        container["securityContext"] = {"privileged": True}
    else:
        container["securityContext"] = {
            "allowPrivilegeEscalation": False,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        }
    spec["containers"] = [container]
    spec["volumes"] = volumes
    spec["restartPolicy"] = "Always"
    meta: dict[str, Any] = {"name": pod.name, "namespace": pod.ns, "labels": {"app": pod.app}}
    if uid:
        meta["uid"] = uid
    return {"kind": "Pod", "apiVersion": "v1", "metadata": meta, "spec": spec}
