"""Synthetic Amazon EKS kube-apiserver audit traffic with labeled attack scenarios.

Why this exists: detection code needs data with ground truth, and real audit logs with
labeled attacks are rare and sensitive. The simulator writes raw ``audit.k8s.io/v1`` Event
JSON in exactly the shape the API server (and EKS control-plane logging) emits, so that
everything downstream -- ingest, the lake, features, the model, rules and evaluation -- runs
on the same code path as real data.

What is in the traffic:

* benign actors: kubelets (``system:node:*`` through IAM, Node authorizer), the controller
  manager (and its per-controller service accounts), the scheduler, ``eks:*`` control-plane
  components, kube-system / monitoring / ingress / cert-manager / application service
  accounts, an Argo CD controller, a CI deployer IAM role (one STS session per pipeline run)
  and human engineers behind shared IAM roles (work hours in their own time zone, office or
  VPN addresses, kubectl user agents, 403s and 404s, occasional exec, port-forward, late
  nights, weekend on-call, a new engineer joining half-way through, a node joining);
* ten attack scenarios (:data:`SCENARIOS`), each injected once and labeled with the audit
  IDs it produced (see :attr:`Simulation.labels`).

Design choices that matter to callers:

* Deterministic: every random draw comes from generators seeded by ``seed``; audit IDs are
  UUID-shaped strings drawn from those generators, never ``uuid4``. Same arguments, same
  bytes.
* Memory-bounded and fast: events are generated one UTC hour at a time, sorted by
  ``stageTimestamp`` and handed out; only events whose stage lies in a later hour (the end
  of a watch or an exec session) are carried over. Nested parts of events (``user``,
  ``objectRef``, ``sourceIPs``, status and annotation objects) are shared between events to
  keep this cheap, so treat yielded events as read-only.
* Output in four input formats the ingest side must read: kube-apiserver ``audit.log``
  (NDJSON, optionally gzip), ``aws logs filter-log-events`` JSON pages, CloudWatch Logs
  export-task objects and CloudWatch-subscription records delivered by Firehose to S3.

How the package reads, in data-flow order:

* :mod:`~detector.simulate.actors`: API resources, user objects, control-plane actors;
* :mod:`~detector.simulate.world`: the cluster fixed per seed (nodes, pods, people, streams);
* :mod:`~detector.simulate.factory`: the one Event builder everything logs through;
* :mod:`~detector.simulate.kubectl`: what each human kubectl command logs;
* :mod:`~detector.simulate.benign`: the benign processes (kubelets, controllers, CI, people);
* :mod:`~detector.simulate.attacks`: the attack scenarios and their labels;
* :mod:`~detector.simulate.simulation`: the hour-by-hour driver (:func:`simulate`);
* :mod:`~detector.simulate.writers`: the four output formats and ``labels.json``
  (:func:`write_simulation`), framed by :mod:`detector.sources.formats`.
"""

from __future__ import annotations

from detector.simulate.actors import ACCOUNT_ID, REGION, principal_of
from detector.simulate.attacks import SCENARIOS
from detector.simulate.simulation import EventBatch, Simulation, default_end, simulate
from detector.simulate.writers import FORMATS, SimulationSummary, write_simulation

__all__ = [
    "ACCOUNT_ID",
    "FORMATS",
    "REGION",
    "SCENARIOS",
    "EventBatch",
    "Simulation",
    "SimulationSummary",
    "default_end",
    "principal_of",
    "simulate",
    "write_simulation",
]
