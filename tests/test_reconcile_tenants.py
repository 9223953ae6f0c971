"""A pool with tenants, without a cluster (the example of examples/tenants/): namespaces map deployments to
tenants by their labels, the pool status lists each tenant's quota and usage, and when one tenant claims its
guarantee the replicas another tenant borrowed yield, with Events and conditions that name the tenant."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from slm_operator.api.v1alpha1 import UnmatchedNamespaces
from slm_operator.contract import PLACEMENT_ANNOTATION
from slm_operator.inventory import pool_tenants, tenant_of
from slm_operator.manifests import load_manifests
from slm_operator.reconcile import Decisions, World, decide
from slm_operator.render import OperatorConfig
from test_reconcile import _apply_node_configs, _running

ROOT = Path(__file__).resolve().parent.parent
NOW = "2026-11-26T10:00:00Z"
POOL = "shared-a100"


def _world(
    replicas: dict[str, int] | None = None,
    pods: list[dict[str, Any]] | None = None,
    nodes: Any = None,
    mig_configs: dict[str, Any] | None = None,
    namespaces: dict[str, dict[str, str]] | None = None,
) -> World:
    m = load_manifests([ROOT / "examples"])
    pool = next(p for p in m.pools if p.metadata.name == POOL)
    deps = [d for d in m.deployments if d.spec.pool_ref.name == POOL]
    for i, d in enumerate(deps):
        d.metadata.uid = f"uid-{i}"
        d.metadata.generation = 1
        d.metadata.creation_timestamp = f"2026-11-26T09:{i:02d}:00Z"
        d.spec.replicas = (replicas or {}).get(d.metadata.name, d.spec.replicas)
    if namespaces is None:
        namespaces = m.namespace_labels()
    return World(
        pool=pool,
        nodes=nodes if nodes is not None else copy.deepcopy(m.nodes),
        deployments=deps,
        pods=pods or [],
        foreign_gpu_pods=[],
        mig_configs=mig_configs or {},
        now=NOW,
        cfg=OperatorConfig(configmap_sync_seconds=0.0),
        namespaces=namespaces,
    )


def _converge(replicas: dict[str, int] | None = None) -> tuple[World, Decisions]:
    w = _world(replicas)
    d1 = decide(w)
    configs = dict(d1.mig_entries)
    w2 = _world(replicas, nodes=_apply_node_configs(w, d1), mig_configs=configs)
    d2 = decide(w2)
    w3 = _world(replicas, pods=_running(d2.pods_create), nodes=w2.nodes, mig_configs=configs)
    return w3, decide(w3)


def _condition(d: Decisions, key: str, type_: str) -> Any:
    st = d.deployment_statuses[key]
    return next(c for c in st.conditions or [] if c.type == type_)


def _replica(pod: dict[str, Any]) -> tuple[str, int]:
    rec = json.loads(pod["metadata"]["annotations"][PLACEMENT_ANNOTATION])
    return rec["deployment"], rec["ordinal"]


def test_the_pool_status_lists_each_tenants_quota_and_usage() -> None:
    _, d = _converge()
    st = d.pool_status
    assert st is not None and st.tenants is not None
    tenants = {t.name: t for t in st.tenants}
    assert set(tenants) == {"search", "ads"}  # `Refuse`: no default tenant
    assert (tenants["search"].guaranteed, tenants["search"].ceiling) == ("4", "6")
    assert (tenants["search"].used_guaranteed, tenants["search"].used_borrowed) == ("1", "0")
    assert (tenants["ads"].used_guaranteed, tenants["ads"].used_borrowed) == ("2", "4")
    assert tenants["ads"].replicas_borrowed == 8 and tenants["ads"].memory_borrowed != "0"
    assert st.tenant_summary == "search 1/4 ads 6/2"
    over = next(c for c in st.conditions or [] if c.type == "QuotaOvercommitted")
    assert over.status == "False" and "6 of 8" in over.message


def test_a_tenant_claiming_its_guarantee_makes_the_borrowed_replicas_of_another_yield() -> None:
    w, d = _converge()
    assert not d.pods_delete
    running = {_replica(p): p for p in w.pods}
    # search scales its ranker to 8 replicas (4 GPU-equivalents, its guarantee): ads borrowed the room
    w2 = _world({"ranker": 8}, pods=w.pods, nodes=w.nodes, mig_configs=w.mig_configs)
    d2 = decide(w2)
    assert d2.plan is not None
    search = next(t for t in d2.plan.tenants if t.name == "search")
    assert search.used_guaranteed == 4 and search.replicas_unplaced == 0
    gone = {
        _replica(p) for p in running.values() if p["metadata"]["name"] in {n for _, n, _ in d2.pods_delete}
    }
    assert gone and all(dep == "ads/ad-copy" for dep, _ in gone)
    ads_before = next(t for t in d.plan.tenants if t.name == "ads") if d.plan else None
    assert ads_before is not None
    assert {o for _, o in gone} <= set(ads_before.borrowed["ads/ad-copy"]), "only borrowed replicas yield"
    # Events and the condition name the tenant that claimed its guarantee
    yielded = [e for e in d2.events if e.reason == "Yielded"]
    assert len(yielded) == len(gone) and all("tenant search" in e.message for e in yielded)
    placed = _condition(d2, "ads/ad-copy", "Placed")
    assert (
        placed.status == "False"
        and placed.reason == "ReclaimedByTenant"
        and "tenant search" in placed.message
    )
    replicas = {r.replica: r for r in d2.deployment_statuses["ads/ad-copy"].placements or []}
    assert {replicas[o].reason for _, o in gone} == {"ReclaimedByTenant"}
    # on the next pass the yielded replicas are simply unplaced; the condition keeps naming the tenant
    ads = next(x for x in w2.deployments if x.metadata.name == "ad-copy")
    ads.status = d2.deployment_statuses["ads/ad-copy"]
    deleted = {n for _, n, _ in d2.pods_delete}
    w3 = _world({"ranker": 8}, pods=[p for p in w.pods if p["metadata"]["name"] not in deleted], nodes=w.nodes,
                mig_configs=w.mig_configs)  # fmt: skip
    w3.deployments = [ads if x.metadata.name == "ad-copy" else x for x in w3.deployments]
    again = _condition(decide(w3), "ads/ad-copy", "Placed")
    assert again.reason == "ReclaimedByTenant" and "tenant search" in again.message


def test_namespaces_map_to_tenants_by_label_then_the_default_tenant_or_refusal() -> None:
    w = _world()
    pool = w.pool
    assert tenant_of(pool, "search", {"team": "search"}) == "search"
    assert tenant_of(pool, "other", {"team": "nobody"}) is None  # Refuse
    default = pool.model_copy(
        update={
            "spec": pool.spec.model_copy(update={"unmatched_namespaces": UnmatchedNamespaces.DEFAULT_TENANT})
        }
    )
    assert tenant_of(default, "other", None) == "default"
    assert [t.name for t in pool_tenants(default)] == ["search", "ads", "default"]


def test_a_deployment_no_tenant_covers_is_refused_with_a_condition_that_says_how_to_fix_it() -> None:
    d = decide(_world(namespaces={"search": {"team": "search"}, "ads": {}}))
    placed = _condition(d, "ads/ad-copy", "Placed")
    assert placed.status == "False" and placed.reason == "NoTenant"
    assert "label the namespace" in placed.message
    assert d.plan is not None and d.plan.deployment("ads/ad-copy") is None


def test_pods_of_replicas_within_quota_are_never_deleted_when_another_tenant_claims() -> None:
    w, _ = _converge()
    w2 = _world({"ranker": 8}, pods=w.pods, nodes=w.nodes, mig_configs=w.mig_configs)
    d2 = decide(w2)
    deleted = {n for _, n, _ in d2.pods_delete}
    kept = [_replica(p) for p in w.pods if p["metadata"]["name"] not in deleted]
    assert ("search/ranker", 0) in kept and ("search/ranker", 1) in kept
    assert {("ads/ad-copy", o) for o in range(4)} <= set(kept)  # ads's guaranteed 2 (4 x 0.5)
