"""Operator metrics (slm_operator.metrics), the docs' metric list and the Grafana dashboard."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from slm_operator import metrics as operator_metrics
from slm_operator.agent.fake import fleet
from slm_operator.agent.metrics import AgentMetrics
from slm_operator.agent.pods import pod_shares
from slm_operator.agent.read import read_inventory
from slm_operator.capture import Capture
from slm_operator.gateway.metrics import GatewayMetrics
from slm_operator.metrics import (
    Fragmentation,
    NodeConfigStates,
    OperatorMetrics,
    parse_listen,
    serve,
    split_deployment,
)
from slm_operator.planner import (
    Demand,
    Eviction,
    GpuInventory,
    NodeInventory,
    Plan,
    PoolPolicy,
    Reservation,
    Segment,
    plan_pool,
)
from slm_operator.planner.model import TenantPolicy

GiB = 1 << 30
ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "charts" / "slm-operator" / "dashboards" / "slm-operator.json"
DOC = ROOT / "docs" / "observability.md"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def samples(registry: CollectorRegistry) -> Samples:
    return parse(generate_latest(registry).decode())


def series(registry: CollectorRegistry, name: str, **labels: str) -> dict[frozenset[tuple[str, str]], float]:
    return {ls: v for (n, ls), v in samples(registry).items() if n == name and set(labels.items()) <= ls}


def one(registry: CollectorRegistry, name: str, **labels: str) -> float:
    found = series(registry, name, **labels)
    assert len(found) == 1, f"{name}{labels}: {found}"
    return next(iter(found.values()))


POLICY = PoolPolicy(
    name="p1",
    reservations=(Reservation(name="fallback", gpus=1, lend_to="BestEffort", claimed=0),),
    segments=(Segment(name="ft", gpus=1),),
)
NODES = [NodeInventory(name="n1", gpus=tuple(GpuInventory(index=i, model="H100-80GB") for i in range(4)))]
DEMANDS = [
    Demand(deployment="a/chat", tier="Guaranteed", replicas=2, memory_bytes=30 * GiB),
    Demand(deployment="a/emb", tier="Burstable", replicas=3, memory_bytes=8 * GiB),
    Demand(deployment="b/be", tier="BestEffort", replicas=2, memory_bytes=70 * GiB),
    Demand(deployment="b/huge", tier="Burstable", replicas=1, memory_bytes=200 * GiB),
]


@pytest.fixture(scope="module")
def plan() -> Plan:
    return plan_pool(POLICY, NODES, DEMANDS)


@pytest.fixture
def m() -> OperatorMetrics:
    return OperatorMetrics(CollectorRegistry())


def test_observe_plan_sets_every_gauge(m: OperatorMetrics, plan: Plan) -> None:
    m.observe_plan("p1", plan, 0.042, POLICY)
    r = m.registry
    for d in plan.deployments:
        ns, name = d.deployment.split("/")
        labels = {"pool": "p1", "namespace": ns, "deployment": name, "tier": d.qos}
        assert one(r, "slm_replicas_desired", **labels) == d.desired
        assert one(r, "slm_replicas_placed", **labels) == d.placed
        assert one(r, "slm_replicas_unplaced", **labels) == d.desired - d.placed
    assert one(r, "slm_replicas_unplaced", deployment="huge", tier="Burstable") == 1
    assert one(r, "slm_replicas_unplaced", deployment="be", tier="BestEffort") == 1
    unplaced_by_tier: dict[str, float] = {}
    for ls, v in series(r, "slm_replicas_unplaced").items():
        unplaced_by_tier[dict(ls)["tier"]] = unplaced_by_tier.get(dict(ls)["tier"], 0) + v
    assert unplaced_by_tier == {"Guaranteed": 0, "Burstable": 1, "BestEffort": 1}
    assert sum(unplaced_by_tier.values()) == plan.pool.replicas_unplaced

    modes = {dict(ls)["mode"]: v for ls, v in series(r, "slm_pool_gpus", pool="p1").items()}
    assert modes == {**dict.fromkeys(operator_metrics.GPU_MODES, 0.0), **plan.pool.gpus_by_mode}
    assert sum(modes.values()) == plan.pool.gpus_total

    p = plan.pool
    assert one(r, "slm_pool_memory_total_bytes", pool="p1") == p.memory_total_bytes
    assert one(r, "slm_pool_memory_used_gpus_bytes", pool="p1") == p.memory_used_gpus_bytes
    assert one(r, "slm_pool_memory_allocated_bytes", pool="p1") == p.memory_allocated_bytes
    assert one(r, "slm_pool_memory_share_bytes", pool="p1") == p.memory_share_bytes
    assert one(r, "slm_pool_memory_free_bytes", pool="p1") == p.memory_free_bytes
    assert one(r, "slm_pool_memory_stranded_bytes", pool="p1") == p.memory_stranded_bytes
    assert p.memory_stranded_bytes > 0

    assert one(r, "slm_reservation_gpus", pool="p1", reservation="fallback") == 1
    assert one(r, "slm_reservation_gpus_lent", pool="p1", reservation="fallback") == p.gpus_borrowed == 1
    assert one(r, "slm_reservation_gpus_claimed", pool="p1", reservation="fallback") == 0
    assert one(r, "slm_segment_gpus", pool="p1", segment="ft") == 1

    assert one(r, "slm_plan_duration_seconds_count", pool="p1") == 1
    assert one(r, "slm_plan_duration_seconds_sum", pool="p1") == pytest.approx(0.042)
    assert one(r, "slm_plan_duration_seconds_bucket", pool="p1", le="0.05") == 1
    assert one(r, "slm_plan_duration_seconds_bucket", pool="p1", le="0.025") == 0
    assert one(r, "slm_plan_timestamp_seconds", pool="p1") > 1.7e9
    assert one(r, "slm_plan_method", pool="p1", method="heuristic") == 1
    assert one(r, "slm_plan_method", pool="p1", method="exact") == 0
    m.observe_plan("p1", plan.model_copy(update={"solver": "exact", "optimal": True}), 0.01, POLICY)
    r = m.registry
    assert one(r, "slm_plan_method", pool="p1", method="exact") == 1
    assert one(r, "slm_plan_method", pool="p1", method="heuristic") == 0


def test_series_of_vanished_deployments_are_removed(m: OperatorMetrics, plan: Plan) -> None:
    m.observe_plan("p1", plan, 0.01, POLICY)
    assert len(series(m.registry, "slm_replicas_desired", pool="p1")) == 4
    smaller = plan_pool(POLICY, NODES, DEMANDS[:2])
    m.observe_plan("p1", smaller, 0.01, POLICY)
    r = m.registry
    assert {dict(ls)["deployment"] for ls in series(r, "slm_replicas_desired", pool="p1")} == {"chat", "emb"}
    assert {dict(ls)["deployment"] for ls in series(r, "slm_replicas_unplaced")} == {"chat", "emb"}
    assert len(series(r, "slm_pool_gpus", pool="p1")) == len(operator_metrics.GPU_MODES)  # modes stay, at 0
    assert one(r, "slm_reservation_gpus_lent", reservation="fallback") == 0
    assert one(r, "slm_plan_duration_seconds_count", pool="p1") == 2


def test_tenant_usage_and_quota_per_pool_tenant(m: OperatorMetrics) -> None:
    policy = POLICY.model_copy(
        update={
            "tenants": (TenantPolicy(name="a", guaranteed=1, ceiling=3), TenantPolicy(name="b", guaranteed=1))
        }
    )
    dem = [d.model_copy(update={"tenant": d.deployment.split("/")[0]}) for d in DEMANDS]
    tplan = plan_pool(policy, NODES, dem)
    m.observe_plan("p1", tplan, 0.01, policy)
    r = m.registry
    a = next(t for t in tplan.tenants if t.name == "a")
    assert one(r, "slm_tenant_quota_gpu_equivalents", tenant="a", limit="guaranteed") == 1
    assert one(r, "slm_tenant_quota_gpu_equivalents", tenant="a", limit="ceiling") == 3
    assert series(r, "slm_tenant_quota_gpu_equivalents", tenant="b", limit="ceiling") == {}  # no ceiling
    assert one(r, "slm_tenant_used_gpu_equivalents", tenant="a", kind="guaranteed") == a.used_guaranteed
    assert one(r, "slm_tenant_used_gpu_equivalents", tenant="a", kind="borrowed") == a.used_borrowed
    assert a.used_guaranteed + a.used_borrowed > 1  # a borrows beyond its quota
    assert one(r, "slm_tenant_memory_bytes", tenant="a", kind="borrowed") == a.memory_borrowed_bytes > 0
    b = next(t for t in tplan.tenants if t.name == "b")
    assert (
        one(r, "slm_tenant_replicas_unplaced", tenant="b") == b.replicas_unplaced >= 1
    )  # b/huge fits no GPU
    m.observe_plan("p1", plan_pool(POLICY, NODES, DEMANDS), 0.01, POLICY)  # tenants removed from the pool
    assert series(r, "slm_tenant_used_gpu_equivalents") == {}


def test_pools_are_independent_and_forgotten(m: OperatorMetrics, plan: Plan) -> None:
    m.observe_plan("p1", plan, 0.01, POLICY)
    m.observe_plan("p2", plan, 0.01)
    assert one(m.registry, "slm_reservation_gpus", pool="p2") == 1
    assert series(m.registry, "slm_reservation_gpus_claimed", pool="p2") == {}  # no policy given
    m.forget_pool("p1")
    for name in (
        "slm_replicas_desired",
        "slm_pool_gpus",
        "slm_pool_memory_total_bytes",
        "slm_reservation_gpus",
    ):
        assert series(m.registry, name, pool="p1") == {}, name
        assert series(m.registry, name, pool="p2"), name


def test_planned_evictions(m: OperatorMetrics, plan: Plan) -> None:
    evictions = (
        Eviction(
            deployment="a/x",
            ordinal=0,
            qos="BestEffort",
            node="n1",
            gpu_index=3,
            reason="ReservationClaimed",
            message="m",
        ),
        Eviction(
            deployment="a/x",
            ordinal=1,
            qos="BestEffort",
            node="n1",
            gpu_index=3,
            reason="ReservationClaimed",
            message="m",
        ),
        Eviction(
            deployment="a/y",
            ordinal=0,
            qos="Burstable",
            node="n1",
            gpu_index=0,
            reason="Defragmentation",
            message="m",
            to_node="n1",
            to_gpu=1,
        ),
    )
    with_ev = plan.model_copy(update={"pool": plan.pool.model_copy(update={"evictions": evictions})})
    m.observe_plan("p1", with_ev, 0.01)
    assert one(m.registry, "slm_plan_evictions", reason="ReservationClaimed", action="yield") == 2
    assert one(m.registry, "slm_plan_evictions", reason="Defragmentation", action="move") == 1
    m.observe_plan("p1", plan, 0.01)
    assert series(m.registry, "slm_plan_evictions") == {}
    # executed evictions are counted by the shell, one call per deleted pod
    for e in evictions:
        m.count_plan_eviction(e)
    m.count_eviction("Defragmentation", "Burstable")
    m.count_yield("PreemptedByHigherTier", "BestEffort")
    assert one(m.registry, "slm_yields_total", reason="ReservationClaimed", tier="BestEffort") == 2
    assert one(m.registry, "slm_yields_total", reason="PreemptedByHigherTier", tier="BestEffort") == 1
    assert one(m.registry, "slm_evictions_total", reason="Defragmentation", tier="Burstable") == 2


def test_node_config_gauges_follow_the_pass_and_go_with_the_pool(m: OperatorMetrics, plan: Plan) -> None:
    """What the SLMNodeConfigStuckPending and SLMMigConfigFailed alerts read: 1 per node while it waits or
    failed, 0 once configured; a node no longer planned and a deleted pool take their series with them."""
    waiting = NodeConfigStates(("n1", "n2"), {"n1": "node n1: MIG config c is pending"}, {})
    m.observe_plan("p1", plan, 0.01, node_states=waiting)
    assert one(m.registry, "slm_node_config_pending", pool="p1", node="n1") == 1
    assert one(m.registry, "slm_node_config_pending", pool="p1", node="n2") == 0
    assert one(m.registry, "slm_node_mig_config_failed", pool="p1", node="n1") == 0
    m.observe_plan(
        "p1", plan, 0.01, node_states=NodeConfigStates(("n1",), {"n1": "failed"}, {"n1": "c-retry2"})
    )
    assert one(m.registry, "slm_node_mig_config_failed", pool="p1", node="n1") == 1
    assert series(m.registry, "slm_node_config_pending", node="n2") == {}
    m.forget_pool("p1")
    assert series(m.registry, "slm_node_config_pending") == {}
    assert series(m.registry, "slm_node_mig_config_failed") == {}


def test_reconcile_duration_and_api_errors(m: OperatorMetrics) -> None:
    m.observe_reconcile("GPUPool", 0.2)
    m.observe_reconcile("GPUPool", 3.0)
    with m.time_reconcile("SLMDeployment"):
        pass
    r = m.registry
    assert one(r, "slm_reconcile_duration_seconds_count", resource="GPUPool") == 2
    assert one(r, "slm_reconcile_duration_seconds_sum", resource="GPUPool") == pytest.approx(3.2)
    assert one(r, "slm_reconcile_duration_seconds_bucket", resource="GPUPool", le="0.25") == 1
    assert one(r, "slm_reconcile_duration_seconds_bucket", resource="GPUPool", le="+Inf") == 2
    assert one(r, "slm_reconcile_duration_seconds_count", resource="SLMDeployment") == 1
    m.count_api_error("patch", 409)
    m.count_api_error("patch", "409")
    m.count_api_error("list", 500)
    assert one(r, "slm_api_errors_total", verb="patch", code="409") == 2
    assert one(r, "slm_api_errors_total", verb="list", code="500") == 1


def test_module_level_api_uses_the_default_registry(plan: Plan) -> None:
    operator_metrics.observe_plan("module-test", plan, 0.5)
    operator_metrics.observe_reconcile("module-test", 0.1)
    operator_metrics.count_api_error("get", 404)
    r = operator_metrics.REGISTRY
    assert one(r, "slm_plan_duration_seconds_count", pool="module-test") >= 1
    operator_metrics.forget_pool("module-test")
    assert series(r, "slm_replicas_desired", pool="module-test") == {}


def test_serve_over_http(m: OperatorMetrics, plan: Plan) -> None:
    m.observe_plan("p1", plan, 0.01)
    server, _ = serve("127.0.0.1:0", m.registry)
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode()
    finally:
        server.shutdown()
        server.server_close()
    got = parse(text)
    assert got[("slm_pool_memory_total_bytes", frozenset({("pool", "p1")}))] == plan.pool.memory_total_bytes
    assert not any(name.startswith("python_") for name, _ in got)  # a dedicated registry, not the global one


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("127.0.0.1:9400", ("127.0.0.1", 9400)),
        ("0.0.0.0:8000", ("0.0.0.0", 8000)),
        (":9400", ("0.0.0.0", 9400)),
        ("[::1]:9400", ("::1", 9400)),
    ],
)
def test_parse_listen(listen: str, expected: tuple[str, int]) -> None:
    assert parse_listen(listen) == expected


@pytest.mark.parametrize("listen", ["9400", "host:", "host:port", "h:70000"])
def test_parse_listen_rejects(listen: str) -> None:
    with pytest.raises(ValueError, match="host:port"):
        parse_listen(listen)


def test_split_deployment() -> None:
    assert split_deployment("team-a/chat") == ("team-a", "chat")
    assert split_deployment("chat") == ("default", "chat")


# ------------------------------------------------------------------------- conventions, docs, dashboard


def _families(registry: CollectorRegistry) -> dict[str, str]:
    """family name -> type, as exposed (without prometheus-client's automatic ``*_created`` series)."""
    families = text_string_to_metric_families(generate_latest(registry).decode())
    return {f.name: f.type for f in families if not f.name.endswith("_created")}


def _all_families(plan: Plan) -> dict[str, str]:
    m = OperatorMetrics(CollectorRegistry())
    m.observe_plan("p1", plan, 0.01, POLICY, Fragmentation(1.5, 2, 1))
    m.count_moves("p1", {"Completed": 1}, 1)
    m.observe_mig_rollbacks("p1", {"n": True})
    m.count_mig_manager_refreshes("p1", 2)
    m.observe_reconcile("GPUPool", 0.01)
    m.count_eviction("Defragmentation", "Burstable")
    m.count_yield("ReservationClaimed", "BestEffort")
    m.count_api_error("get", 500)
    with_ev = plan.model_copy(
        update={
            "pool": plan.pool.model_copy(
                update={
                    "evictions": (
                        Eviction(
                            deployment="a/x",
                            ordinal=0,
                            qos="BestEffort",
                            node="n",
                            gpu_index=0,
                            reason="ReservationClaimed",
                            message="",
                        ),
                    )
                }
            )
        }
    )
    m.observe_plan("p2", with_ev, 0.01)
    nvml = fleet("mixed", "n1")
    nvml.init()
    inv = read_inventory(nvml, "n1")
    pod: dict[str, Any] = {
        "metadata": {
            "name": "p-0",
            "namespace": "ns",
            "labels": {"slm.io/deployment": "d", "slm.io/qos": "Burstable"},
            "annotations": {
                "slm.io/placement": json.dumps(
                    {
                        "deployment": "ns/d",
                        "ordinal": 0,
                        "node": "n1",
                        "gpu": 1,
                        "mechanism": "Exclusive",
                        "memoryBytes": 1,
                    }
                )
            },
        }
    }
    a = AgentMetrics("n1")
    a.observe_inventory(inv, pod_shares([pod], "n1"), 1.0)
    a.gpu_read_errors.labels("n1", "0").inc()
    return {**_families(m.registry), **_families(a.registry), **_families(_gateway_metrics().registry)}


def _gateway_metrics() -> GatewayMetrics:
    """A gateway registry with a sample of every series (tests/test_gateway.py checks them against real calls)."""
    g = GatewayMetrics(CollectorRegistry())
    g.observe_call("agents/r", "slm", "t", 200, 0.5, 0.1, 10, 5)
    for metric, labels in (
        (g.fallbacks, ("agents/r", "slm", "error")),
        (g.retries, ("agents/r", "slm")),
        (g.streams_cut, ("agents/r", "slm", "error")),
        (g.rate_limited, ("agents/r", "requests")),
        (g.rejected, ("401",)),
        (g.shadows, ("agents/r", "llm", "ok")),
        (g.captured, ("agents/r", "true")),
        (g.classifier_tags, ("agents/r", "t")),
    ):
        g.child(metric, *labels).inc()
    g.child(g.endpoints_ready, "agents/r", "slm").set(1)
    g.child(g.classifier_loaded, "agents/r").set(1)
    g.load_from(SimpleNamespace(keys=["agents/r/slm"], busy={"agents/r/slm": 2}, queued=lambda key: 1))
    # the capture pipeline registers its series in the gateway's registry
    Capture("sqlite:///unused.db", spool_dir=Path("unused"), registry=g.registry)
    return g


def test_metric_names_follow_prometheus_conventions(plan: Plan) -> None:
    families = _all_families(plan)
    assert len(families) >= 35
    for name, kind in families.items():
        assert name.startswith("slm_"), name
        assert re.fullmatch(r"[a-z][a-z0-9_]*", name), name
        if kind == "counter":
            assert not name.endswith("_total"), f"{name}: the exposition adds _total"
        if "duration" in name or "timestamp" in name:
            assert name.endswith("_seconds"), name
        if "memory" in name and kind == "gauge" and not name.endswith("_ratio"):
            assert name.endswith("_bytes"), name
        if "utilization" in name:
            assert name.endswith("_ratio"), name


def test_docs_list_every_metric(plan: Plan) -> None:
    doc = DOC.read_text()
    documented = set(re.findall(r"^\| `(slm_[a-z0-9_]+)` \|", doc, flags=re.M))
    exposed = {f"{n}_total" if k == "counter" else n for n, k in _all_families(plan).items()}
    assert exposed == documented, (
        f"undocumented: {sorted(exposed - documented)}; stale: {sorted(documented - exposed)}"
    )


def test_dashboard_uses_only_existing_metrics(plan: Plan) -> None:
    board = json.loads(DASHBOARD.read_text())
    panels = [p for p in board["panels"] if p.get("type") != "row"]
    titles = {p["title"] for p in panels}
    for wanted in (
        "Pool utilisation",
        "Stranded memory",
        "Unplaced replicas per tier",
        "Reservation use",
        "Memory per share",
    ):
        assert any(t.startswith(wanted) for t in titles), wanted
    families = _all_families(plan)
    known = set(families)
    for f, k in families.items():
        if k == "counter":
            known.add(f + "_total")
        if k == "histogram":
            known |= {f + "_bucket", f + "_sum", f + "_count"}
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for p in panels:
        assert p["targets"], p["title"]
        for t in p["targets"]:
            used = set(re.findall(r"\bslm_[a-z0-9_]+", t["expr"]))
            assert used, f"{p['title']}: {t['expr']}"
            assert used <= known, f"{p['title']}: unknown {used - known}"
    doc = DOC.read_text()
    for title in titles:
        assert title in doc, f"panel {title!r} is not described in docs/observability.md"


def test_fragmentation_gauges_follow_the_pool_and_go_with_it(plan: Plan) -> None:
    """The fragmentation ratio is a gauge per pool, set with the plan, and removed when the pool is."""
    reg = CollectorRegistry()
    m = OperatorMetrics(reg)
    m.observe_plan("p1", plan, 0.01, POLICY, Fragmentation(1.25, 4, 1))
    assert reg.get_sample_value("slm_pool_fragmentation_ratio", {"pool": "p1"}) == 1.25
    assert reg.get_sample_value("slm_pool_gpus_fresh", {"pool": "p1"}) == 4
    m.count_moves("p1", {"Completed": 2, "Abandoned": 1}, 1)
    assert reg.get_sample_value("slm_consolidation_moves_total", {"pool": "p1", "outcome": "Completed"}) == 2
    assert reg.get_sample_value("slm_consolidation_gpus_freed_total", {"pool": "p1"}) == 1
    m.forget_pool("p1")
    assert reg.get_sample_value("slm_pool_fragmentation_ratio", {"pool": "p1"}) is None


def test_mig_rollbacks_are_counted_once_per_rollback_and_the_held_nodes_follow_the_pool() -> None:
    """A rollback counts in the pass it starts, not in the passes of its back-off; the held-nodes gauge is the
    pool's last pass and goes with the pool."""
    reg = CollectorRegistry()
    m = OperatorMetrics(reg)
    m.observe_mig_rollbacks("p1", {"gpu-1": True})
    m.observe_mig_rollbacks("p1", {"gpu-1": False})
    m.observe_mig_rollbacks("p1", {"gpu-1": False, "gpu-2": True})
    assert reg.get_sample_value("slm_mig_rollbacks_total", {"pool": "p1", "node": "gpu-1"}) == 1
    assert reg.get_sample_value("slm_mig_rollbacks_total", {"pool": "p1", "node": "gpu-2"}) == 1
    assert reg.get_sample_value("slm_mig_nodes_held", {"pool": "p1"}) == 2
    m.observe_mig_rollbacks("p1", {})
    assert reg.get_sample_value("slm_mig_nodes_held", {"pool": "p1"}) == 0
    m.forget_pool("p1")
    assert reg.get_sample_value("slm_mig_nodes_held", {"pool": "p1"}) is None
