"""Which SLMDeployment holds which share on this node, from the replica pods the operator created (pure).

The operator labels every replica pod ``slm.io/deployment`` (SLMDeployment name), ``slm.io/qos`` (tier) and
``slm.io/replica`` (ordinal) and annotates it ``slm.io/placement`` (JSON: ``deployment`` "namespace/name",
``ordinal``, ``node``, ``gpu``, ``mechanism``, ``migProfile``, ``memoryBytes``).

MIG devices cannot be told apart from the pod alone (the device plugin picks the instance of the profile),
so :func:`attribute_mig` names an owner for a MIG instance only when it is unambiguous: all pods placed on
that GPU with that profile belong to one deployment and either there are as many instances of the profile
as pods, or exactly as many of them run processes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from slm_operator.agent.model import Inventory
from slm_operator.contract import DEPLOYMENT_LABEL, QOS_LABEL
from slm_operator.views import PodView


@dataclass(frozen=True)
class Owner:
    namespace: str
    deployment: str
    tier: str


@dataclass(frozen=True)
class PodShare:
    """The share one replica pod holds on this node."""

    pod: str
    owner: Owner
    replica: int
    gpu: int
    mechanism: str
    mig_profile: str | None
    memory_bytes: int | None


def pod_share(pod: Mapping[str, Any], node: str) -> PodShare | None:
    """The share of one pod (a dict in the API's JSON form), or None if it holds none on ``node``."""
    view = PodView(pod)
    rec = view.placement
    if view.finished or rec is None or rec.node != node:
        return None
    namespace = view.namespace or (rec.deployment.split("/", 1)[0] if "/" in rec.deployment else "default")
    name = view.labels.get(DEPLOYMENT_LABEL) or rec.deployment.split("/", 1)[-1]
    return PodShare(
        pod=view.name,
        owner=Owner(namespace=namespace, deployment=name, tier=view.labels.get(QOS_LABEL) or ""),
        replica=rec.ordinal,
        gpu=rec.gpu,
        mechanism=rec.mechanism,
        mig_profile=rec.mig_profile,
        memory_bytes=rec.memory_bytes,
    )


def pod_shares(pods: Iterable[Mapping[str, Any]], node: str) -> list[PodShare]:
    """Shares of the replica pods on ``node``, sorted by GPU, deployment and replica."""
    out = [s for s in (pod_share(p, node) for p in pods) if s is not None]
    out.sort(key=lambda s: (s.gpu, s.owner.namespace, s.owner.deployment, s.replica, s.pod))
    return out


def attribute_mig(inv: Inventory, shares: Iterable[PodShare]) -> dict[tuple[int, int], Owner]:
    """(GPU index, position in ``mig_instances``) -> owner, for the MIG instances whose owner is certain."""
    by_key: dict[tuple[int, str], list[PodShare]] = {}
    for s in shares:
        if s.mechanism == "MIG" and s.mig_profile:
            by_key.setdefault((s.gpu, s.mig_profile), []).append(s)
    out: dict[tuple[int, int], Owner] = {}
    for g in inv.gpus:
        for profile in sorted({m.profile for m in g.mig_instances or ()}):
            pods = by_key.get((g.index, profile), [])
            owners = {p.owner for p in pods}
            if len(owners) != 1:
                continue
            positions = [i for i, m in enumerate(g.mig_instances or ()) if m.profile == profile]
            busy = [i for i in positions if (g.mig_instances or ())[i].process_count]
            if len(busy) == len(pods):
                chosen = busy
            elif len(positions) == len(pods):
                chosen = positions
            else:
                continue
            owner = next(iter(owners))
            for i in chosen:
                out[(g.index, i)] = owner
    return out
