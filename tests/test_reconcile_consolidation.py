"""Consolidation moves through the operator's decisions, without a cluster: a fragmented pool is consolidated
make-before-break within its disruption budget, a move that does not become Ready is abandoned, and a restarted
operator (a pass that starts from the cluster alone) finishes a move without duplicating or orphaning a pod."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from slm_operator.api.v1alpha1 import GPUPool, MoveOutcome, SLMDeployment
from slm_operator.contract import (
    DEVICE_PLUGIN_CONFIG_LABEL,
    GPU_REPLICAS_LABEL,
    MOVE_ANNOTATION,
    PLACEMENT_ANNOTATION,
    SHARING_STRATEGY_LABEL,
)
from slm_operator.planner import consolidate
from slm_operator.reconcile import Decisions, World, decide
from slm_operator.reconcile import consolidation as consolidation_module
from slm_operator.render import OperatorConfig
from slm_operator.status import CONSOLIDATED
from tests.test_argocd_health import health

ROOT = Path(__file__).resolve().parent.parent
NODE = "gpu-l4-0"


def _node() -> dict[str, Any]:
    docs = list(yaml.safe_load_all((ROOT / "examples" / "nodes" / "l4.yaml").read_text()))
    return copy.deepcopy(next(d for d in docs if d and d["metadata"]["name"] == NODE))


def _pool(**consolidation: Any) -> GPUPool:
    return GPUPool.model_validate(
        {
            "apiVersion": "slm.io/v1alpha1",
            "kind": "GPUPool",
            "metadata": {"name": "l4", "generation": 1, "uid": "pool-uid"},
            "spec": {
                "nodeSelector": {"matchLabels": {"kubernetes.io/hostname": NODE}},
                "sharing": {"mechanisms": ["MPS"], "mps": {"maxClientsPerGPU": 2}},
                "disruption": {"consolidation": {"enabled": True, **consolidation}},
            },
        }
    )


def _dep(name: str, replicas: int = 1, qos: str = "Burstable", minute: int = 0) -> SLMDeployment:
    return SLMDeployment.model_validate(
        {
            "apiVersion": "slm.io/v1alpha1",
            "kind": "SLMDeployment",
            "metadata": {
                "name": name,
                "namespace": "apps",
                "uid": f"uid-{name}",
                "generation": 1,
                "creationTimestamp": f"2026-11-26T09:{minute:02d}:00Z",
            },
            "spec": {
                "poolRef": {"name": "l4"},
                "model": {
                    "name": "qwen2.5-0.5b-instruct",
                    "maxContextTokens": 4096,
                    "maxConcurrentSequences": 8,
                },
                "replicas": replicas,
                "qos": qos,
                "resources": {"gpuMemory": "9Gi"},
            },
        }
    )


class Sim:
    """A pool's cluster as the operator sees it, advanced pass by pass: nodes apply their labels at once, a
    created pod runs (Ready unless ``unready`` says otherwise), a deleted pod terminates for one pass."""

    def __init__(self, pool: GPUPool, deps: list[SLMDeployment], minute: int = 0) -> None:
        self.pool = pool
        self.deps = deps
        self.nodes = [_node()]
        self.pods: list[dict[str, Any]] = []
        self.minute = minute
        self.unready: Callable[[dict[str, Any]], bool] = lambda pod: False
        self.history: list[Decisions] = []

    @property
    def now(self) -> str:
        return f"2026-11-26T{10 + self.minute // 60:02d}:{self.minute % 60:02d}:00Z"

    def world(self) -> World:
        return World(
            pool=self.pool.model_copy(deep=True),
            nodes=copy.deepcopy(self.nodes),
            deployments=[d.model_copy(deep=True) for d in self.deps],
            pods=copy.deepcopy(self.pods),
            foreign_gpu_pods=[],
            mig_configs={},
            now=self.now,
            cfg=OperatorConfig(configmap_sync_seconds=0.0),
        )

    def step(self, minutes: int = 1) -> Decisions:
        d = decide(self.world())
        self.history.append(d)
        self._apply(d)
        self.minute += minutes
        return d

    def _apply(self, d: Decisions) -> None:
        self.pods = [p for p in self.pods if not p["metadata"].get("deletionTimestamp")]
        gone = {(ns, name) for ns, name, _ in d.pods_delete}
        for p in self.pods:
            if (p["metadata"]["namespace"], p["metadata"]["name"]) in gone:
                p["metadata"]["deletionTimestamp"] = self.now
        for manifest in d.pods_create:
            pod = copy.deepcopy(manifest)
            rec = json.loads(pod["metadata"]["annotations"][PLACEMENT_ANNOTATION])
            pod["spec"]["nodeName"] = rec["node"]
            ready = "False" if self.unready(pod) else "True"
            pod["status"] = {"phase": "Running", "conditions": [{"type": "Ready", "status": ready}]}
            self.pods.append(pod)
        for node in self.nodes:
            labels = node["metadata"]["labels"]
            labels.update(d.node_labels.get(node["metadata"]["name"], {}))
            entry = (
                d.device_plugin_entries.get(labels.get(DEVICE_PLUGIN_CONFIG_LABEL, ""), {}).get("sharing")
                or {}
            )
            if "mps" in entry:
                labels[SHARING_STRATEGY_LABEL] = "mps"
                labels[GPU_REPLICAS_LABEL] = str(entry["mps"]["resources"][0]["replicas"])
            elif DEVICE_PLUGIN_CONFIG_LABEL in labels:
                labels[SHARING_STRATEGY_LABEL] = "none"
                labels[GPU_REPLICAS_LABEL] = "1"
        if d.pool_status is not None:
            self.pool = self.pool.model_copy(update={"status": d.pool_status})
        for dep in self.deps:
            st = d.deployment_statuses.get(f"{dep.metadata.namespace}/{dep.metadata.name}")
            if st is not None:
                dep.status = st

    def converge(self, passes: int = 6) -> None:
        for _ in range(passes):
            self.step()

    def gpus(self) -> dict[str, tuple[str, int]]:
        """Live pods' GPUs by pod name."""
        out = {}
        for p in self.pods:
            if p["metadata"].get("deletionTimestamp"):
                continue
            rec = json.loads(p["metadata"]["annotations"][PLACEMENT_ANNOTATION])
            out[p["metadata"]["name"]] = (rec["deployment"], rec["gpu"])
        return out


def _fragmented(qos: str = "Burstable", **consolidation: Any) -> Sim:
    """Four deployments, two per GPU (MPS, 2 clients each); deleting one on each GPU leaves two half-used GPUs
    that one GPU could hold."""
    sim = Sim(_pool(**consolidation), [_dep(n, qos=qos, minute=i) for i, n in enumerate("abcd")])
    sim.converge()
    used = {gpu for _, gpu in sim.gpus().values()}
    assert len(used) == 2, sim.gpus()
    by_gpu: dict[int, list[str]] = {}
    for dep, gpu in sim.gpus().values():
        by_gpu.setdefault(gpu, []).append(dep)
    drop = {sorted(deps)[0] for deps in by_gpu.values()}
    sim.deps = [d for d in sim.deps if f"apps/{d.metadata.name}" not in drop]
    sim.pods = [
        p
        for p in sim.pods
        if json.loads(p["metadata"]["annotations"][PLACEMENT_ANNOTATION])["deployment"] not in drop
    ]
    return sim


def _assert_healthy(sim: Sim, d: Decisions) -> None:
    """Argo CD's health checks (deploy/argocd) call the pool and every deployment Healthy."""
    assert d.pool_status is not None
    pool = {**sim.pool.model_dump(mode="json", by_alias=True, exclude_none=True)}
    pool["status"] = d.pool_status.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert health("GPUPool", pool)["status"] == "Healthy"
    for dep in sim.deps:
        obj = dep.model_dump(mode="json", by_alias=True, exclude_none=True)
        st = d.deployment_statuses[f"apps/{dep.metadata.name}"]
        obj["status"] = st.model_dump(mode="json", by_alias=True, exclude_none=True)
        assert health("SLMDeployment", obj)["status"] == "Healthy", (dep.metadata.name, obj["status"])


def test_a_fragmented_pool_is_consolidated_make_before_break() -> None:
    sim = _fragmented()
    d = sim.step()  # the move starts: a new pod on the other GPU, the old one kept
    started = [e for e in d.events if e.reason == "MoveStarted"]
    assert len(started) == 1, [e.reason for e in d.events]
    assert len(d.pods_create) == 1 and not d.pods_delete
    assert MOVE_ANNOTATION in d.pods_create[0]["metadata"]["annotations"]
    assert d.pool_status is not None and d.pool_status.consolidation is not None
    assert d.pool_status.consolidation.moves_in_flight == 1
    assert d.pool_status.consolidation.fragmentation_ratio == "2.000"
    assert d.pool_status.replicas_placed == 2, "the held target share is not a replica"
    remaining = {f"apps/{x.metadata.name}" for x in sim.deps}
    assert d.plan is not None and {x.deployment for x in d.plan.deployments} == remaining
    moved = started[0].name
    assert len([p for p in sim.pods if p["metadata"]["labels"]["slm.io/deployment"] == moved]) == 2
    _assert_healthy(sim, d)  # Argo CD: a move in flight is not a problem
    d = sim.step()  # the new pod is Ready: the old one goes
    assert [e.reason for e in d.events if e.reason.startswith("Move")] == ["MoveCompleted"]
    assert [r for _, _, r in d.pods_delete] == ["Consolidated"]
    assert not d.pods_create
    _assert_healthy(sim, d)
    sim.converge(3)
    assert len({gpu for _, gpu in sim.gpus().values()}) == 1, sim.gpus()
    final = sim.history[-1]
    assert final.pool_status is not None and final.pool_status.consolidation is not None
    c = final.pool_status.consolidation
    assert (c.gpus_used, c.gpus_fresh, c.moves_in_flight, c.moves_last_hour) == (1, 1, 0, 1)
    assert [m.outcome for m in c.recent_moves or []] == [MoveOutcome.COMPLETED]
    cond = next(x for x in final.pool_status.conditions or [] if x.type == CONSOLIDATED)
    assert cond.status == "True" and cond.reason == "WithinThreshold"
    assert not any(x.pods_create or x.pods_delete for x in sim.history[-2:])  # settled: nothing more moves
    assert not final.waiting, "a finished move keeps nothing in flight"


def _live_by_deployment(sim: Sim) -> dict[str, int]:
    out: dict[str, int] = {}
    for p in sim.pods:
        if not p["metadata"].get("deletionTimestamp"):
            dep = p["metadata"]["labels"]["slm.io/deployment"]
            out[dep] = out.get(dep, 0) + 1
    return out


def test_a_move_whose_new_pod_is_not_ready_in_time_is_abandoned_and_the_old_pod_kept() -> None:
    sim = _fragmented(readyTimeout="5m")
    sim.unready = lambda pod: MOVE_ANNOTATION in pod["metadata"]["annotations"]
    first = sim.step()
    after_start = len(sim.history)
    (started,) = [e for e in first.events if e.reason == "MoveStarted"]
    old = {n for n, (dep, _) in sim.gpus().items() if dep == f"apps/{started.name}"} - {
        p["metadata"]["name"] for p in first.pods_create
    }
    for _ in range(4):  # within the deadline: both pods kept, nothing deleted
        d = sim.step(minutes=1)
        assert not d.pods_delete
    d = sim.step(minutes=1)
    abandoned = [e for e in d.events if e.reason == "MoveAbandoned"]
    assert len(abandoned) == 1 and abandoned[0].type == "Warning" and abandoned[0].name == started.name
    assert [name for _, name, _ in d.pods_delete] == [p["metadata"]["name"] for p in first.pods_create]
    assert [r for _, _, r in d.pods_delete] == ["MoveAbandoned"]
    sim.converge(4)
    assert old <= set(sim.gpus()), "the old pod of an abandoned move keeps serving"
    c = sim.history[-1].pool_status.consolidation  # type: ignore[union-attr]
    assert c is not None and MoveOutcome.ABANDONED in [m.outcome for m in c.recent_moves or []]
    # the abandoned deployment is not moved again within the hour
    again = [
        e
        for x in sim.history[after_start:]
        for e in x.events
        if e.reason == "MoveStarted" and e.name == started.name
    ]
    assert not again


def test_a_restarted_operator_finishes_a_move_from_the_pods_alone() -> None:
    """The pool status that recorded the move is lost (e.g. the operator stopped before writing it): the next
    pass reads the move from the new pod's annotation, completes it and counts it against the budget once."""
    sim = _fragmented()
    sim.unready = lambda pod: MOVE_ANNOTATION in pod["metadata"]["annotations"]
    sim.step()
    sim.pool = sim.pool.model_copy(update={"status": None})
    d = sim.step()
    assert not d.pods_create and not d.pods_delete, "in flight: nothing duplicated, nothing deleted"
    assert d.pool_status is not None and d.pool_status.consolidation is not None
    assert d.pool_status.consolidation.moves_in_flight == 1
    for p in sim.pods:  # the new pod becomes Ready
        p["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
    d = sim.step()
    assert [r for _, _, r in d.pods_delete] == ["Consolidated"]
    sim.converge(3)
    assert max(_live_by_deployment(sim).values()) == 1
    assert len({gpu for _, gpu in sim.gpus().values()}) == 1
    c = sim.history[-1].pool_status.consolidation  # type: ignore[union-attr]
    assert c is not None and c.moves_last_hour == 1


def test_no_move_without_budget_or_in_quiet_hours() -> None:
    for consolidation, reason in (
        ({"maxMovesPerHour": 0}, "BudgetExhausted"),
        (
            {"quietHours": [{"start": "22:00", "end": "12:00"}]},
            "QuietHours",
        ),  # crosses midnight; now is ~10:06
        ({"enabled": False}, "Disabled"),
    ):
        sim = _fragmented(**consolidation)
        d = sim.step()
        assert not d.pods_create and not d.pods_delete
        cond = next(x for x in d.pool_status.conditions or [] if x.type == CONSOLIDATED)  # type: ignore[union-attr]
        assert (cond.status, cond.reason) == ("False", reason)
        c = d.pool_status.consolidation  # type: ignore[union-attr]
        assert c is not None and (c.gpus_used, c.gpus_fresh, c.gpus_freeable) == (2, 1, 1)


def test_a_moving_deployments_other_replicas_keep_serving() -> None:
    """At no pass is a replica of a deployment without a live pod while another replica of it moves, and no
    deployment ever has more than one extra pod (one move at a time)."""
    sim = Sim(
        _pool(maxMovesPerHour=10), [_dep("a", replicas=3), _dep("b", 2, minute=1), _dep("c", 3, minute=2)]
    )
    sim.converge()
    sim.deps = [d for d in sim.deps if d.metadata.name != "b"]
    sim.pods = [p for p in sim.pods if p["metadata"]["labels"]["slm.io/deployment"] != "b"]
    for _ in range(12):
        sim.step()
        live = _live_by_deployment(sim)
        for dep in sim.deps:
            assert dep.spec.replicas <= live.get(dep.metadata.name, 0) <= dep.spec.replicas + 1
    moves = [e for x in sim.history for e in x.events if e.reason == "MoveStarted"]
    assert moves, "the pool is fragmented: something moves"
    c = sim.history[-1].pool_status.consolidation  # type: ignore[union-attr]
    assert c is not None and c.gpus_used == c.gpus_fresh


def test_a_besteffort_replica_without_room_moves_break_before_make(monkeypatch: pytest.MonkeyPatch) -> None:
    """The planner says a move has no free target while its replica still holds its share: a BestEffort
    replica stops first, then starts on its target once its old pod is gone; another tier does not move."""

    def no_room(*args: Any, **kwargs: Any) -> Any:
        out = consolidate(*args, **kwargs)
        moves = tuple(m.model_copy(update={"make_before_break": False}) for m in out.moves)
        return out.model_copy(update={"moves": moves})

    monkeypatch.setattr(consolidation_module, "consolidate", no_room)
    burstable = _fragmented()
    d = burstable.step()
    assert not d.pods_create and not d.pods_delete, "a Burstable replica never moves break-before-make"

    sim = _fragmented("BestEffort")
    left = set(_live_by_deployment(sim))
    d = sim.step()
    assert [e.reason for e in d.events if e.reason.startswith("Move")] == ["MovedBreakBeforeMake"]
    assert [r for _, _, r in d.pods_delete] == ["Consolidated"] and not d.pods_create
    sim.converge(4)
    assert len({gpu for _, gpu in sim.gpus().values()}) == 1, sim.gpus()
    assert _live_by_deployment(sim) == dict.fromkeys(left, 1)
    c = sim.history[-1].pool_status.consolidation  # type: ignore[union-attr]
    assert c is not None and [m.outcome for m in c.recent_moves or []] == [MoveOutcome.BREAK_BEFORE_MAKE]


def _crowded(qos: str) -> Sim:
    """Four 5 GiB deployments on two GPUs of an MPS node configured for two clients per GPU (the pool allowed
    two); then the pool allows four: one GPU could hold them all, but no client slot is free while they run."""
    sim = Sim(_pool(maxMovesPerHour=10), [_dep(n, qos=qos, minute=i) for i, n in enumerate("abcd")])
    for dep in sim.deps:
        dep.spec.resources.gpu_memory = "5Gi"  # type: ignore[union-attr]
    sim.converge()
    assert len({gpu for _, gpu in sim.gpus().values()}) == 2, sim.gpus()
    spec = sim.pool.spec.model_copy(deep=True)
    spec.sharing.mps.max_clients_per_gpu = 4  # type: ignore[union-attr]
    sim.pool = sim.pool.model_copy(update={"spec": spec})
    return sim


def test_besteffort_replicas_stop_first_where_only_their_own_node_configured_anew_frees_a_gpu() -> None:
    """The planner drains the node in place: the four BestEffort pods are deleted in one pass (events
    `MovedBreakBeforeMake` naming why), the node gets its new MPS config once they are gone, and they start
    again on one GPU, their SLMDeployment status saying why they are down meanwhile; the pool then uses one
    GPU, and each deployment was down once, never twice. Burstable
    replicas in the same spot never stop first: nothing moves."""
    burstable = _crowded("Burstable")
    burstable.converge(3)
    assert not any(d.pods_delete for d in burstable.history[-3:])
    assert len({gpu for _, gpu in burstable.gpus().values()}) == 2

    sim = _crowded("BestEffort")
    d = sim.step()
    events = [e for e in d.events if e.reason == "MovedBreakBeforeMake"]
    assert sorted(e.name for e in events) == list("abcd"), [e.reason for e in d.events]
    assert all("break-before-make" in e.message and "configured anew" in e.message for e in events)
    assert sorted(r for _, _, r in d.pods_delete) == ["Consolidated"] * 4 and not d.pods_create
    c = d.pool_status.consolidation  # type: ignore[union-attr]
    assert c is not None and [m.outcome for m in c.recent_moves or []] == [MoveOutcome.BREAK_BEFORE_MAKE] * 4
    d = sim.step()  # the old pods are gone: the node takes its new config, the replicas wait for it
    st = d.deployment_statuses["apps/a"]
    waiting = [p for p in st.placements or [] if p.state == "Waiting"]
    assert waiting and waiting[0].reason.startswith("moving break-before-make from gpu-l4-0/"), st.placements
    progressing = next(x for x in st.conditions or [] if x.type == "Progressing")
    assert "break-before-make" in progressing.message
    assert d.pool_status.consolidation.gpus_used == 1  # type: ignore[union-attr]
    for _ in range(5):
        sim.step()
        assert all(n <= 1 for n in _live_by_deployment(sim).values())
    assert _live_by_deployment(sim) == dict.fromkeys("abcd", 1)
    assert len({gpu for _, gpu in sim.gpus().values()}) == 1, sim.gpus()
    final = sim.history[-1]
    assert not final.pods_create and not final.pods_delete
    c = final.pool_status.consolidation  # type: ignore[union-attr]
    assert c is not None and (c.gpus_used, c.gpus_fresh, c.moves_last_hour) == (1, 1, 4)
