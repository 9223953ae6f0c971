"""Consolidation under a disruption budget on a real control plane (issue 16; docs/consolidation.md): a pool
fragmented by deleting a deployment is consolidated within its budget, make-before-break, freeing a whole GPU and
a whole node (whose sharing configuration a new deployment then changes); no deployment ever has fewer ready
replicas than it wants, and Argo CD's health checks call the pool and the deployments Healthy throughout."""

from __future__ import annotations

import signal
from collections import Counter
from typing import Any

import pytest

from e2e.conftest import Cluster, wait_for
from e2e.operator import (
    GROUP,
    VERSION,
    Operator,
    custom,
    get_dep,
    kubectl_apply,
    placement,
    replica_pods,
)
from e2e.test_operator import (  # noqa: F401 (operator and pools are fixtures)
    CONVERGE,
    assert_pods_where_planned,
    dep,
    operator,
    pool,
    pools,
    scrape,
    wait_ready,
)
from slm_operator.contract import DEVICE_PLUGIN_CONFIG_LABEL, MOVE_ANNOTATION
from tests.test_argocd_health import health as argocd_health

pytestmark = pytest.mark.e2e

NODES = ("gpu-l4-0", "gpu-l4-1")
MODEL = "qwen2.5-0.5b-instruct"
SINGLES = "abcdefg"


def _where(cluster: Cluster, ns: str) -> dict[str, tuple[str, int]]:
    """Each live replica pod's "deployment/ordinal" -> (node, gpu)."""
    out = {}
    for p in replica_pods(cluster.core, ns):
        if p.metadata.deletion_timestamp is None:
            rec = placement(p)
            out[f"{rec['deployment'].split('/')[1]}/{rec['ordinal']}"] = (rec["node"], rec["gpu"])
    return out


def _ready_by_deployment(cluster: Cluster, ns: str) -> Counter[str]:
    ready: Counter[str] = Counter()
    for p in replica_pods(cluster.core, ns):
        conds = {c.type: c.status for c in p.status.conditions or []}
        if p.metadata.deletion_timestamp is None and conds.get("Ready") == "True":
            ready[p.metadata.labels["slm.io/deployment"]] += 1
    return ready


def _pool_obj(cluster: Cluster, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = custom(cluster.api).get_cluster_custom_object(GROUP, VERSION, "gpupools", name)
    return obj


def _fragment(cluster: Cluster, ns: str, pool_name: str) -> dict[str, tuple[str, int]]:
    """Seven single-replica deployments and m (two replicas) on the two L4 nodes, MPS with two clients per GPU:
    gpu-l4-0 full, m's replica 1 alone on gpu-l4-1; then `a` (on gpu-l4-0) is deleted. Returns the placements
    before the deletion."""
    budget = {"enabled": True, "maxMovesPerHour": 2, "readyTimeout": "5m"}
    spec = {
        "sharing": {"mechanisms": ["MPS"], "mps": {"maxClientsPerGPU": 2}},
        "disruption": {"consolidation": budget},
    }
    kubectl_apply(cluster, [pool(pool_name, product="NVIDIA-L4", **spec)])
    res = {"resources": {"gpuMemory": "9Gi"}}
    kubectl_apply(cluster, [*(dep(n, pool_name, MODEL, 1, "Burstable", **res) for n in SINGLES)], ns)
    kubectl_apply(cluster, [dep("m", pool_name, MODEL, 2, "Burstable", **res)], ns)
    for name in [*SINGLES, "m"]:
        wait_ready(cluster, ns, name)
    before = _where(cluster, ns)
    on_second = [r for r, (node, _) in before.items() if node == NODES[1]]
    assert on_second == ["m/1"], f"expected only m's replica 1 on {NODES[1]}: {before}"
    assert before["a/0"][0] == NODES[0]
    cluster.kubectl("delete", "-n", ns, "slmdeployment/a", "--wait=false")
    return before


def test_a_fragmented_pool_is_consolidated_make_before_break(
    cluster: Cluster,
    operator: Operator,  # noqa: F811
    pools: list[str],  # noqa: F811
    ns: str,
) -> None:
    """Seven single-replica deployments and one of two replicas fill gpu-l4-0 (MPS, two clients per GPU) and
    put m's second replica alone on gpu-l4-1. Deleting `a` leaves a free client on gpu-l4-0: the pool uses 5
    GPUs where a fresh plan uses 4, so m's replica 1 moves there make-before-break, and gpu-l4-1 holds nothing.
    A deployment that needs a whole GPU then gets gpu-l4-1, whose device-plugin config changes from MPS."""
    pools.append(f"consolidate-{ns}")
    before = _fragment(cluster, ns, pools[0])
    labels_before = cluster.labels(NODES[1]).get(DEVICE_PLUGIN_CONFIG_LABEL)
    wanted = {n: 1 for n in SINGLES[1:]} | {"m": 2}
    moved_pods: set[str] = set()
    healths: Counter[str] = Counter()

    def consolidated() -> bool:
        ready = _ready_by_deployment(cluster, ns)
        for name, n in wanted.items():  # no replica down, ever: the moving one included
            assert ready[name] >= n, f"{name}: {ready[name]} ready < {n} while consolidating"
        for p in replica_pods(cluster.core, ns):
            if MOVE_ANNOTATION in (p.metadata.annotations or {}):
                moved_pods.add(str(p.metadata.name))
        live = Counter(r.split("/")[0] for r in _where(cluster, ns))
        for name, n in live.items():
            assert n <= wanted.get(name, 0) + 1, f"{name} has {n} pods: more than one move at a time"
        obj = _pool_obj(cluster, pools[0])
        healths[argocd_health("GPUPool", obj)["status"]] += 1
        for name in wanted:
            healths[argocd_health("SLMDeployment", get_dep(cluster.api, ns, name))["status"]] += 1
        st = (obj.get("status") or {}).get("consolidation") or {}
        now = _where(cluster, ns)
        return (
            all(node == NODES[0] for node, _ in now.values())
            and len(now) == 8
            and st.get("gpusUsed") == st.get("gpusFresh") == 4
        )

    wait_for(consolidated, CONVERGE, "m's replica 1 moved onto gpu-l4-0, gpu-l4-1 empty", interval=0.5)
    assert set(healths) == {"Healthy"}, healths
    after = _where(cluster, ns)
    assert after["m/1"][0] == NODES[0] and {r: w for r, w in after.items() if r != "m/1"} == {
        r: w for r, w in before.items() if r not in ("a/0", "m/1")
    }, "only m's replica 1 moved"
    assert len(moved_pods) == 1, moved_pods

    # the budget's record, the condition and the events
    st = _pool_obj(cluster, pools[0])["status"]
    cons = st["consolidation"]
    assert cons["movesLastHour"] == 1 and cons["movesInFlight"] == 0
    (record,) = cons["recentMoves"]
    assert (record["deployment"], record["replica"], record["outcome"]) == (f"{ns}/m", 1, "Completed")
    assert record["source"].startswith(f"{NODES[1]}/") and record["target"].startswith(f"{NODES[0]}/")
    (cond,) = [c for c in st["conditions"] if c["type"] == "Consolidated"]
    assert (cond["status"], cond["reason"]) == ("True", "WithinThreshold")

    def events() -> set[str] | None:
        evs = cluster.core.list_namespaced_event(ns, field_selector="involvedObject.name=m").items
        reasons = {str(e.reason) for e in evs}
        return reasons if {"MoveStarted", "MoveCompleted"} <= reasons else None

    wait_for(events, 30, "MoveStarted and MoveCompleted events on m")
    samples = scrape(f"http://127.0.0.1:{operator.metrics_port}/metrics")
    ratio = [s for s in samples["slm_pool_fragmentation_ratio"].samples if s.labels["pool"] == pools[0]]
    assert [s.value for s in ratio] == [1.0]
    moves = {
        s.labels["outcome"]: s.value
        for s in samples["slm_consolidation_moves_total"].samples
        if s.labels.get("pool") == pools[0] and s.name.endswith("_total")
    }
    assert moves.get("InFlight") == 1 and moves.get("Completed") == 1, moves

    # gpu-l4-1 is free as a whole: a deployment that needs a whole GPU gets it, with a new sharing config
    patch = '{"spec": {"sharing": {"mechanisms": ["MPS", "Exclusive"]}}}'
    cluster.kubectl("patch", f"gpupool/{pools[0]}", "--type=merge", "-p", patch)
    kubectl_apply(cluster, [dep("big", pools[0], MODEL, 1, "Burstable", resources={"gpuMemory": "20Gi"})], ns)
    wait_ready(cluster, ns, "big")
    assert _where(cluster, ns)["big/0"][0] == NODES[1]
    assert cluster.labels(NODES[1]).get(DEVICE_PLUGIN_CONFIG_LABEL) != labels_before
    assert_pods_where_planned(cluster, ns)


def test_an_operator_killed_mid_move_finishes_it_without_a_duplicate(
    cluster: Cluster,
    operator: Operator,  # noqa: F811
    pools: list[str],  # noqa: F811
    ns: str,
) -> None:
    """The operator is SIGKILLed as soon as the move's new pod exists; the one that starts next reads the move
    from the pods, finishes it and records it once: one new pod, one move in the budget, nothing left behind."""
    pools.append(f"restart-{ns}")
    _fragment(cluster, ns, pools[0])

    def new_pod() -> list[str] | None:
        pods = replica_pods(cluster.core, ns, "m")
        moving = [p for p in pods if MOVE_ANNOTATION in (p.metadata.annotations or {})]
        return [str(p.metadata.name) for p in pods] if moving else None

    at_kill = wait_for(new_pod, CONVERGE, "the move's new pod created", interval=0.05)
    operator.kill(signal.SIGKILL)
    operator.start()
    print(f"pods of m when the operator was killed: {at_kill}")

    def done() -> bool:
        ready = _ready_by_deployment(cluster, ns)
        assert ready["m"] >= 2, f"m: {ready['m']} ready < 2 while the move finishes"
        now = _where(cluster, ns)
        st = (_pool_obj(cluster, pools[0]).get("status") or {}).get("consolidation") or {}
        pods = replica_pods(cluster.core, ns)
        return (
            len(now) == len(pods) == 8
            and all(node == NODES[0] for node, _ in now.values())
            and st.get("movesInFlight") == 0
            and st.get("movesLastHour") == 1
        )

    wait_for(done, CONVERGE + 60, "the move finished by the restarted operator", interval=0.5)
    moving = [
        p for p in replica_pods(cluster.core, ns, "m") if MOVE_ANNOTATION in (p.metadata.annotations or {})
    ]
    assert len(moving) == 1 and str(moving[0].metadata.name) in at_kill, (
        "the new pod is the one created before"
    )
    (record,) = _pool_obj(cluster, pools[0])["status"]["consolidation"]["recentMoves"]
    assert (record["replica"], record["outcome"]) == (1, "Completed")


def test_besteffort_replicas_move_break_before_make_where_only_their_node_configured_anew_frees_a_gpu(
    cluster: Cluster,
    operator: Operator,  # noqa: F811
    pools: list[str],  # noqa: F811
    ns: str,
) -> None:
    """Four BestEffort deployments fill two GPUs of gpu-l4-0 (MPS, two clients per GPU). The pool then allows
    four clients per GPU: one GPU would hold them all, but no client slot is free while they run and no other
    node is in the pool, so make-before-break frees nothing. The replicas move break-before-make: their old pods
    are deleted together, the node takes the new MPS config, and they start again on one GPU; events, the
    budget's record and the metric say so, and Argo CD calls everything Healthy once it is done."""
    name = f"bbm-{ns}"
    pools.append(name)
    budget = {"enabled": True, "maxMovesPerHour": 4, "readyTimeout": "5m"}
    spec = {
        "sharing": {"mechanisms": ["MPS"], "mps": {"maxClientsPerGPU": 2}},
        "disruption": {"consolidation": budget},
    }
    kubectl_apply(cluster, [pool(name, node=NODES[0], **spec)])
    res = {"resources": {"gpuMemory": "5Gi"}}
    names = ("bw", "bx", "by", "bz")  # not "y": YAML 1.1 reads it as a boolean
    kubectl_apply(cluster, [dep(n, name, MODEL, 1, "BestEffort", **res) for n in names], ns)
    for n in names:
        wait_ready(cluster, ns, n)
    before = _where(cluster, ns)
    assert len({gpu for _, gpu in before.values()}) == 2, before
    label_before = cluster.labels(NODES[0]).get(DEVICE_PLUGIN_CONFIG_LABEL)

    cluster.kubectl(
        "patch",
        f"gpupool/{name}",
        "--type=merge",
        "-p",
        '{"spec": {"sharing": {"mps": {"maxClientsPerGPU": 4}}}}',
    )

    def done() -> bool:
        now = _where(cluster, ns)
        ready = _ready_by_deployment(cluster, ns)
        st = (_pool_obj(cluster, name).get("status") or {}).get("consolidation") or {}
        return (
            len(now) == 4
            and len({gpu for _, gpu in now.values()}) == 1
            and all(ready[n] == 1 for n in names)
            and st.get("gpusUsed") == st.get("gpusFresh") == 1
        )

    wait_for(done, CONVERGE + 120, "the four replicas back on one GPU of gpu-l4-0", interval=0.5)
    assert cluster.labels(NODES[0]).get(DEVICE_PLUGIN_CONFIG_LABEL) != label_before
    st = _pool_obj(cluster, name)["status"]
    records = st["consolidation"]["recentMoves"]
    assert sorted((r["deployment"], r["outcome"]) for r in records) == [
        (f"{ns}/{n}", "BreakBeforeMake") for n in names
    ]
    assert all("break-before-make" in r["reason"] for r in records)

    def events() -> list[str] | None:
        evs = cluster.core.list_namespaced_event(ns).items
        moved = sorted(str(e.involved_object.name) for e in evs if e.reason == "MovedBreakBeforeMake")
        return moved if len(moved) >= 4 else None

    assert wait_for(events, 30, "MovedBreakBeforeMake events") == list(names)
    samples = scrape(f"http://127.0.0.1:{operator.metrics_port}/metrics")
    moves = {
        s.labels["outcome"]: s.value
        for s in samples["slm_consolidation_moves_total"].samples
        if s.labels.get("pool") == name and s.name.endswith("_total")
    }
    assert moves.get("BreakBeforeMake") == 4 and not moves.get("InFlight"), moves

    def healthy() -> bool:
        obj = _pool_obj(cluster, name)
        deps = [get_dep(cluster.api, ns, n) for n in names]
        return argocd_health("GPUPool", obj)["status"] == "Healthy" and all(
            argocd_health("SLMDeployment", d)["status"] == "Healthy" for d in deps
        )

    wait_for(healthy, 60, "Argo CD health Healthy after the moves")
    assert_pods_where_planned(cluster, ns)
