"""The operator's side of cheap scaling (docs/autoscaling.md, "Which share a new replica gets"): a scale-down
keeps the released share warm in ``status.warmShares``, a scale-up lands on it without a node relabel, and a
replica that waits for a node reconfiguration says how long that is expected to take."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta

from slm_operator.api.v1alpha1 import AutoscalingSpec, AutoscalingStatus, SLMDeployment
from slm_operator.contract import PLACEMENT_ANNOTATION
from slm_operator.inventory import deployment_key
from slm_operator.reconcile import Decisions, World, decide
from slm_operator.status import SCALE_UP_GRACE_SECONDS
from test_reconcile import NOW, _converge, _world

KEY = "agents/invoice-extractor"


def _later(minutes: float) -> str:
    t = datetime.fromisoformat(NOW.replace("Z", "+00:00")) + timedelta(minutes=minutes)
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _dep(w: World) -> SLMDeployment:
    return next(d for d in w.deployments if deployment_key(d) == KEY)


def _written(w: World, d: Decisions, now: str) -> World:
    """The next pass's world: statuses written, deleted pods gone (a fresh operator reads only this)."""
    deleted = {name for _, name, _ in d.pods_delete}
    w2 = copy.deepcopy(w)
    w2.now = now
    w2.pods = [p for p in w2.pods if p["metadata"]["name"] not in deleted]
    for dep in w2.deployments:
        st = d.deployment_statuses[deployment_key(dep)]
        auto = dep.status.autoscaling if dep.status else None
        dep.status = st.model_copy(update={"autoscaling": auto})
    return w2


def _autoscaled(w: World, desired: int) -> None:
    dep = _dep(w)
    dep.spec.autoscaling = AutoscalingSpec(min_replicas=1, max_replicas=3)
    assert dep.status is not None
    dep.status.autoscaling = AutoscalingStatus(desired_replicas=desired, reason="ScaledDown")


def _places(d: Decisions) -> dict[int, tuple[str, int]]:
    out = {}
    for g in d.plan.gpus:  # type: ignore[union-attr]
        for r in g.replicas:
            if r.deployment == KEY:
                out[r.ordinal] = (g.node, g.index)
    return out


def _converged_with_status() -> tuple[World, Decisions]:
    w, d = _converge()
    return _written(w, d, NOW), d


def test_a_released_share_is_kept_warm_and_a_scale_up_lands_on_it_without_a_relabel() -> None:
    w, d0 = _converged_with_status()
    before = _places(d0)
    assert len(before) == 3
    _autoscaled(w, 2)
    d1 = decide(w)
    assert len(d1.pods_delete) == 1 and d1.node_labels == {}
    warm = d1.deployment_statuses[KEY].warm_shares
    assert warm is not None and len(warm) == 1
    (share,) = warm
    assert share.until == _later(10)  # keepWarmFor defaults to 10m
    assert (share.node, share.gpu) == before[share.replica]
    assert share.replica not in _places(d1)

    # five minutes later, with only what the cluster holds (a restarted operator), the deployment scales up
    w2 = _written(w, d1, _later(5))
    _autoscaled(w2, 3)
    d2 = decide(w2)
    assert d2.node_labels == {}, "no node gets a new MIG config or sharing mode"
    (pod,) = d2.pods_create
    rec = json.loads(pod["metadata"]["annotations"][PLACEMENT_ANNOTATION])
    assert (rec["node"], rec["gpu"]) == (share.node, share.gpu)
    assert d2.deployment_statuses[KEY].warm_shares is None  # taken again


def test_warm_shares_run_out_after_keep_warm_for() -> None:
    w, _ = _converged_with_status()
    _autoscaled(w, 2)
    d1 = decide(w)
    assert d1.deployment_statuses[KEY].warm_shares
    w2 = _written(w, d1, _later(11))
    _autoscaled(w2, 2)
    assert decide(w2).deployment_statuses[KEY].warm_shares is None


def test_keep_warm_for_zero_keeps_nothing() -> None:
    w, _ = _converged_with_status()
    _autoscaled(w, 2)
    auto = _dep(w).spec.autoscaling
    assert auto is not None
    _dep(w).spec.autoscaling = auto.model_copy(update={"keep_warm_for": "0s"})
    assert decide(w).deployment_statuses[KEY].warm_shares is None


def test_a_replica_waiting_for_a_mig_reconfiguration_says_so_with_the_expected_time() -> None:
    w = _world(sync_seconds=90)
    d = decide(w)
    st = d.deployment_statuses[KEY]
    progressing = next(c for c in st.conditions or [] if c.type == "Progressing")
    assert progressing.reason == "WaitingForNodeReconfiguration"
    assert "needs a MIG reconfiguration of node gpu-h100-" in progressing.message
    # 90 s for the kubelet's ConfigMap sync, up to 5 min more for mig-manager's wait and a 1 min allowance
    assert "(drain of 0 pods; about 2-8 min expected)" in progressing.message


def _ready(d: Decisions) -> tuple[str, str, str]:
    c = next(c for c in d.deployment_statuses[KEY].conditions or [] if c.type == "Ready")
    return c.status.value, c.reason, c.message


def test_a_deployment_stays_ready_while_its_scale_up_starts_and_only_within_the_grace() -> None:
    """Argo CD reads Ready (docs/gitops.md): a scale-up adds capacity to a deployment that serves, so Ready
    stays True while minReplicas are ready; once the grace is over, a replica that never started shows."""
    w, _ = _converged_with_status()
    running = _dep(w).effective_replicas()
    _autoscaled(w, running + 1)
    dep = _dep(w)
    dep.spec.autoscaling = dep.spec.autoscaling.model_copy(update={"max_replicas": running + 1})  # type: ignore[union-attr]
    auto = _dep(w).status.autoscaling  # type: ignore[union-attr]
    _dep(w).status.autoscaling = auto.model_copy(update={"reason": "ScaledUp", "last_scale_time": NOW})  # type: ignore[union-attr]
    d = decide(w)
    assert len(_places(d)) == running + 1 and d.pods_create, "the new replica is placed and its pod created"
    status, reason, message = _ready(d)
    assert (status, reason) == ("True", "ScalingUp"), message
    assert f"{running}/{running + 1} replicas ready" in message and "minReplicas=1" in message
    w.now = _later(SCALE_UP_GRACE_SECONDS / 60 + 1)
    assert _ready(decide(w))[:2] == ("False", "PartiallyReady"), "past the grace every replica must be ready"


def test_a_scale_up_the_pool_cannot_hold_is_not_ready() -> None:
    w, _ = _converged_with_status()
    _autoscaled(w, 3)
    dep = _dep(w)
    dep.spec.autoscaling = dep.spec.autoscaling.model_copy(update={"max_replicas": 500})  # type: ignore[union-attr]
    dep.status.autoscaling = AutoscalingStatus(desired_replicas=500, reason="ScaledUp", last_scale_time=NOW)  # type: ignore[union-attr]
    d = decide(w)
    status, reason, _ = _ready(d)
    assert (status, reason) == ("False", "PartiallyReady")
    degraded = next(c for c in d.deployment_statuses[KEY].conditions or [] if c.type == "Degraded")
    assert degraded.status.value == "True" and "439 unplaced" in degraded.message, degraded.message
