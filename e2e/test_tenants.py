"""Tenants on a real control plane (issue 17; docs/tenants.md): tenant A fills a pool by borrowing; tenant B's
Guaranteed deployment arrives and A's borrowed replicas yield until B has its guarantee; A's replicas within its
own quota never move; the statuses and Events explain every yield."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from e2e.conftest import Cluster, wait_for
from e2e.operator import GROUP, VERSION, Operator, condition, custom, get_dep, kubectl_apply, replica_pods
from e2e.test_operator import (  # noqa: F401 (operator and pools are fixtures)
    CONVERGE,
    assert_pods_where_planned,
    dep,
    operator,
    pool,
    pools,
    wait_ready,
)
from slm_operator.contract import PLACEMENT_ANNOTATION, REPLICA_LABEL

pytestmark = pytest.mark.e2e

MODEL = "qwen2.5-0.5b-instruct"
WHOLE = {"gpuMemory": "60Gi"}  # a 7g.80gb instance: 1 GPU-equivalent on an H100


@pytest.fixture
def ns_b(cluster: Cluster) -> Iterator[str]:
    """A second namespace, for tenant B."""
    name = f"e2e-b-{uuid.uuid4().hex[:8]}"
    cluster.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    wait_for(lambda: cluster.core.read_namespaced_service_account("default", name), 90, f"{name}/default SA")
    yield name
    cluster.delete_pods(name)
    cluster.core.delete_namespace(name, grace_period_seconds=0)


def _label(cluster: Cluster, ns: str, tenant: str) -> None:
    cluster.kubectl("label", "namespace", ns, f"tenant={tenant}", "--overwrite")


def _where(cluster: Cluster, ns: str, name: str) -> dict[str, tuple[str, str]]:
    """Replica ordinal -> (pod name, node/gpu) of the running pods."""
    out: dict[str, tuple[str, str]] = {}
    for p in replica_pods(cluster.core, ns, name):
        if p.status.phase == "Running" and not p.metadata.deletion_timestamp:
            ann = p.metadata.annotations or {}
            out[p.metadata.labels[REPLICA_LABEL]] = (p.metadata.name, ann.get(PLACEMENT_ANNOTATION, ""))
    return out


def _pool_tenants(cluster: Cluster, name: str) -> dict[str, dict[str, Any]]:
    obj = custom(cluster.api).get_cluster_custom_object(GROUP, VERSION, "gpupools", name)
    return {t["name"]: t for t in (obj.get("status") or {}).get("tenants") or []}


def test_borrowed_replicas_yield_to_another_tenants_guarantee(
    cluster: Cluster,
    operator: Operator,  # noqa: F811
    pools: list[str],  # noqa: F811
    ns: str,
    ns_b: str,
) -> None:
    _label(cluster, ns, "a")
    _label(cluster, ns_b, "b")
    pools.append(f"tenants-{ns}")
    tenants = [
        {"name": "a", "namespaces": {"matchLabels": {"tenant": "a"}}, "guaranteed": "2", "ceiling": "8"},
        {"name": "b", "namespaces": {"matchLabels": {"tenant": "b"}}, "guaranteed": "4"},
    ]
    kubectl_apply(
        cluster,
        [pool(pools[0], node="gpu-h100-0", sharing={"mechanisms": ["MIG"]}, tenants=tenants,
              unmatchedNamespaces="Refuse")],
    )  # fmt: skip
    # A fills the 8 GPUs: 2 within its quota, 6 borrowed
    kubectl_apply(cluster, [dep("fill", pools[0], MODEL, 8, "Guaranteed", resources=WHOLE)], ns)
    wait_ready(cluster, ns, "fill")
    before = _where(cluster, ns, "fill")
    assert len(before) == 8
    wait_for(
        lambda: _pool_tenants(cluster, pools[0]).get("a", {}).get("usedBorrowed") == "6",
        CONVERGE,
        "pool status: a borrows 6",
    )

    # B's Guaranteed deployment claims its guarantee of 4 GPUs
    kubectl_apply(cluster, [dep("claim", pools[0], MODEL, 4, "Guaranteed", resources=WHOLE)], ns_b)
    wait_ready(cluster, ns_b, "claim")
    after = _where(cluster, ns, "fill")
    assert len(after) == 4
    # A's replicas within its own quota (0 and 1, the first by priority) never moved: same pods, same GPUs
    for ordinal in ("0", "1"):
        assert after[ordinal] == before[ordinal]

    # the pool status: B has its guarantee, A its own and what is left to borrow
    t = wait_for(
        lambda: (lambda s: s if s.get("b", {}).get("usedGuaranteed") == "4" else None)(
            _pool_tenants(cluster, pools[0])
        ),
        CONVERGE,
        "pool status: b holds its guarantee",
    )
    assert (t["a"]["usedGuaranteed"], t["a"]["usedBorrowed"], t["a"]["replicasUnplaced"]) == ("2", "2", 4)
    # A's deployment says why, naming the tenant that claimed its guarantee
    placed = condition(get_dep(cluster.api, ns, "fill"), "Placed")
    assert placed is not None and placed["status"] == "False" and placed["reason"] == "ReclaimedByTenant"
    assert "tenant b" in placed["message"]
    events = [
        e
        for e in cluster.core.list_namespaced_event(ns).items
        if e.reason == "Yielded" and e.involved_object.name == "fill"
    ]
    assert len(events) >= 4 and all("tenant b" in e.message for e in events)
    assert_pods_where_planned(cluster, ns)
    assert_pods_where_planned(cluster, ns_b)
