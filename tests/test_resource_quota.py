"""Kubernetes ResourceQuotas on pods and ``nvidia.com/*`` requests: the operator plans within them, never creates
a pod the API server would refuse for one, never removes a running replica for one, and says so in the
deployment's conditions (docs/resource-quotas.md)."""

from __future__ import annotations

import copy
import json
from fractions import Fraction
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kubernetes.client.exceptions import ApiException

from fake_kube import FakeKube
from slm_operator.contract import GPU_RESOURCE, NVIDIA_PREFIX, QOS_LABEL, SHARED_GPU_RESOURCE, mig_resource
from slm_operator.controllers import handlers
from slm_operator.controllers.context import OperatorContext
from slm_operator.controllers.finetune import FineTuneReconciler
from slm_operator.controllers.pools import PoolReconciler
from slm_operator.reconcile import Decisions, World, decide
from slm_operator.reconcile.quotas import pod_charge, quota_refusal, read_quotas
from slm_operator.views import PodView
from test_controllers import CFG, _cluster, _condition, _gpu_operator_applies, _pods_run
from test_reconcile import _apply_node_configs, _running, _world

NS = "agents"
MIG_1G10 = mig_resource("1g.10gb")


def _quota(
    name: str, hard: dict[str, str], used: dict[str, Any] | None = None, **spec: Any
) -> dict[str, Any]:
    """A ResourceQuota as the API server holds it once its controller has counted it (``used``)."""
    status: dict[str, Any] = {"hard": dict(hard)}
    status["used"] = {k: "0" for k in hard} | {k: str(v) for k, v in (used or {}).items()}
    return {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"hard": dict(hard), **spec},
        "status": status,
    }


def _resource(pod: dict[str, Any]) -> str:
    requests = pod["spec"]["containers"][0]["resources"]["requests"]
    return str(next(k for k in requests if k.startswith(NVIDIA_PREFIX)))


def _counted(quota: dict[str, Any], pods: list[dict[str, Any]]) -> dict[str, Any]:
    """The quota with ``status.used`` as the quota controller counts it from the namespace's pods."""
    out = copy.deepcopy(quota)
    used = {k: 0 for k in out["spec"]["hard"]}
    pc_in = {
        v
        for e in (out["spec"].get("scopeSelector") or {}).get("matchExpressions") or []
        for v in e.get("values") or []
    }
    for pod in pods:
        if pc_in and pod["spec"].get("priorityClassName") not in pc_in:
            continue
        for key, n in pod_charge(_resource(pod)).items():
            if key in used:
                used[key] += n
    out["status"]["used"] = {k: str(v) for k, v in used.items()}
    return out


def _configured(quotas: list[dict[str, Any]]) -> World:
    """The example h100 pool once its nodes report the planned configuration, no pod yet, with ``quotas``."""
    w = _world()
    d = decide(w)
    w2 = _world(nodes=_apply_node_configs(w, d), mig_configs=dict(d.mig_entries))
    w2.resource_quotas = quotas
    return w2


def _placed(d: Decisions, dep: str) -> dict[str, Any]:
    st = d.deployment_statuses[f"{NS}/{dep}"]
    c = next(c for c in st.conditions or [] if c.type == "Placed")
    return {"status": c.status.value, "reason": c.reason, "message": c.message, "placed": st.placed_replicas}


# ------------------------------------------------------------------------------------------ the pure core


def test_a_pod_quota_admits_replicas_by_tier_then_age_and_the_rest_say_which_quota_holds_them() -> None:
    d = decide(_configured([_quota("team-pods", {"pods": "6"})]))
    created = [PodView(p) for p in d.pods_create]
    assert len(created) == 6
    # The Guaranteed deployments of the example (code-reviewer 1, invoice-extractor 3, tool-caller 2) go first.
    assert {p.labels[QOS_LABEL] for p in created} == {"Guaranteed"}
    held = _placed(d, "intent-router")
    assert held["status"] == "False" and held["reason"] == "ResourceQuotaExceeded"
    assert held["placed"] == 0
    assert "ResourceQuota team-pods" in held["message"] and "pods" in held["message"]
    assert "0/4 replicas placed; 4 held back" in held["message"]
    degraded = next(
        c for c in d.deployment_statuses[f"{NS}/intent-router"].conditions or [] if c.type == "Degraded"
    )
    assert degraded.status.value == "True" and degraded.reason == "ResourceQuotaExceeded"
    assert _placed(d, "invoice-extractor")["reason"] == "AllReplicasPlaced"
    # the plan (and so slm_replicas_desired / slm_replicas_unplaced) counts held replicas as not placed
    router = d.plan.deployment(f"{NS}/intent-router") if d.plan else None
    assert router is not None and (router.desired, router.placed) == (4, 0)
    warnings = [e for e in d.events if e.name == "intent-router" and e.reason == "Unplaceable"]
    assert warnings and "ResourceQuotaExceeded" in warnings[0].message


def test_a_quota_on_one_mig_profile_limits_only_the_replicas_on_that_profile() -> None:
    d = decide(_configured([_quota("slices", {f"requests.{MIG_1G10}": "4"})]))
    by_resource: dict[str, int] = {}
    for p in d.pods_create:
        by_resource[_resource(p)] = by_resource.get(_resource(p), 0) + 1
    assert by_resource.get(MIG_1G10, 0) <= 4
    # invoice-extractor (Guaranteed, 3 replicas on 1g.10gb) is admitted before intent-router (Burstable).
    assert _placed(d, "invoice-extractor")["placed"] == 3
    router = _placed(d, "intent-router")
    assert router["reason"] == "ResourceQuotaExceeded" and f"requests.{MIG_1G10}" in router["message"]
    # Replicas on other shares are all created, as without the quota.
    free = decide(_configured([]))
    others = {p["metadata"]["name"] for p in free.pods_create if _resource(p) != MIG_1G10}
    assert others <= {p["metadata"]["name"] for p in d.pods_create} | _renamed(free, d)


def _renamed(free: Decisions, d: Decisions) -> set[str]:
    """Pods of ``free`` whose replica ``d`` creates under another name (the re-plan gave it another GPU)."""
    have = {_replica(p) for p in d.pods_create}
    return {p["metadata"]["name"] for p in free.pods_create if _replica(p) in have}


def _replica(pod: dict[str, Any]) -> tuple[str, int]:
    rec = PodView(pod).placement
    assert rec is not None
    return rec.deployment, rec.ordinal


def test_quotas_without_pod_or_nvidia_keys_change_nothing() -> None:
    plain = decide(_configured([]))
    other = decide(
        _configured(
            [
                _quota("compute", {"requests.cpu": "1", "limits.memory": "1Gi", "count/services": "1"}),
                # Not enforced for extended resources by the API server (only requests.<name> is): ignored.
                _quota("unenforced", {GPU_RESOURCE: "0", f"limits.{MIG_1G10}": "0"}),
            ]
        )
    )
    assert other.pods_create == plain.pods_create
    assert other.deployment_statuses == plain.deployment_statuses
    assert read_quotas([_quota("compute", {"requests.cpu": "1"})]) == []


def test_a_quota_not_counted_yet_admits_no_new_replica_and_says_so() -> None:
    q = _quota("fresh", {"pods": "100"})
    del q["status"]["used"]
    d = decide(_configured([q]))
    assert d.pods_create == []
    msg = _placed(d, "invoice-extractor")["message"]
    assert "has not counted pods yet" in msg


def test_a_scoped_quota_counts_only_the_pods_of_its_priority_class() -> None:
    scoped = _quota(
        "besteffort-only",
        {"pods": "0"},
        scopeSelector={
            "matchExpressions": [
                {"scopeName": "PriorityClass", "operator": "In", "values": ["slm-besteffort"]}
            ]
        },
    )
    d = decide(_configured([scoped]))
    assert {PodView(p).labels[QOS_LABEL] for p in d.pods_create} == {"Guaranteed", "Burstable"}
    assert _placed(d, "json-repair")["reason"] == "ResourceQuotaExceeded"
    assert _placed(d, "doc-qa")["reason"] == "AllReplicasPlaced"


def test_running_replicas_are_never_removed_for_a_quota_and_a_scale_up_is_held() -> None:
    w = _configured([])
    pods = _running(decide(w).pods_create)
    full = _counted(_quota("team-pods", {"pods": "5"}), [])
    w3 = _configured([_counted(full, pods)])  # 18 pods run; the quota was lowered to 5 afterwards
    w3.pods = pods
    d = decide(w3)
    assert d.pods_delete == [] and d.pods_create == []
    assert all(_placed(d, n)["status"] == "True" for n in ("intent-router", "json-repair"))
    router = next(x for x in w3.deployments if x.metadata.name == "intent-router")
    router.spec.replicas = 5
    d = decide(w3)
    assert d.pods_delete == [] and d.pods_create == []
    held = _placed(d, "intent-router")
    assert held["reason"] == "ResourceQuotaExceeded" and "4/5 replicas placed; 1 held back" in held["message"]


def _settle(
    quota: dict[str, Any], pods: list[dict[str, Any]], w: World, passes: int = 4
) -> tuple[list[dict[str, Any]], Decisions]:
    """Passes as in a cluster: the quota counted from the pods, nodes configured as labelled, pods running."""
    d = Decisions()
    for _ in range(passes):
        w = _world(nodes=w.nodes, mig_configs={**w.mig_configs, **d.mig_entries})
        w.pods = pods
        w.resource_quotas = [_counted(quota, pods)]
        d = decide(w)
        gone = {(ns, name) for ns, name, _ in d.pods_delete}
        pods = _running(
            [p for p in pods if (PodView(p).namespace, PodView(p).name) not in gone] + d.pods_create
        )
        w.nodes = _apply_node_configs(w, d)
    return pods, d


def test_raising_the_quota_lets_the_held_replicas_in() -> None:
    w = _configured([])
    pods, d = _settle(_quota("team-pods", {"pods": "6"}), [], w)
    assert len(pods) == 6 and _placed(d, "intent-router")["reason"] == "ResourceQuotaExceeded"
    pods, d = _settle(_quota("team-pods", {"pods": "30"}), pods, w)
    assert len(pods) == 18
    for status in d.deployment_statuses.values():
        assert next(c for c in status.conditions or [] if c.type == "Placed").status.value == "True"


KEYS = [
    "pods",
    *(
        f"requests.{r}"
        for r in (MIG_1G10, mig_resource("3g.40gb"), mig_resource("1g.20gb"), SHARED_GPU_RESOURCE)
    ),
]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    hard=st.dictionaries(st.sampled_from(KEYS), st.integers(0, 12), min_size=1),
    used_before=st.integers(0, 3),
)
def test_the_namespace_never_holds_more_than_its_quota_admits(hard: dict[str, int], used_before: int) -> None:
    """Whatever the quota, the pods the operator creates (with ``used_before`` already used by other pods of the
    namespace) never take a key above its hard limit, pass after pass."""
    base = _quota("q", {k: str(v) for k, v in hard.items()})
    others = {k: min(used_before, v) for k, v in hard.items()}
    pods: list[dict[str, Any]] = []
    for _ in range(3):
        counted = _counted(base, pods)
        counted["status"]["used"] = {k: str(int(v) + others[k]) for k, v in counted["status"]["used"].items()}
        w = _configured([counted])
        w.pods = pods
        d = decide(w)
        gone = {(ns, name) for ns, name, _ in d.pods_delete}
        pods = _running(
            [p for p in pods if (PodView(p).namespace, PodView(p).name) not in gone] + d.pods_create
        )
        total = _counted(base, pods)["status"]["used"]
        for key, limit in hard.items():
            assert int(total[key]) + others[key] <= max(limit, others[key]), (key, total, hard)


def test_read_quotas_takes_the_lower_of_spec_and_status_hard() -> None:
    q = _quota("q", {"pods": "4"})
    q["spec"]["hard"]["pods"] = "2"  # lowered; the quota controller has not synced status.hard yet
    (quota,) = read_quotas([q])
    assert quota.hard["pods"] == Fraction(2)


# ------------------------------------------------------------------------------------------ the shell


class _QuotaRefusingKube(FakeKube):
    """The fake API, refusing replica pods beyond ``limit`` as ResourceQuota admission does for requests.memory
    (a quota the core does not plan within)."""

    limit = 2

    def create(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        if obj["kind"] == "Pod" and len(self.of_kind("Pod")) >= self.limit:
            self.requests += 1
            self.writes.append(("create-refused", "Pod", obj["metadata"]["name"]))
            exc = ApiException(status=403, reason="Forbidden")
            exc.body = json.dumps(
                {
                    "message": 'pods "x" is forbidden: exceeded quota: memory, requested: requests.memory=4Gi, '
                    "used: requests.memory=8Gi, limited: requests.memory=8Gi"
                }
            )
            raise exc
        return super().create(obj)


def test_the_shell_plans_within_the_quotas_it_lists() -> None:
    fake = _cluster(_quota("team-pods", {"pods": "6"}))
    pools = PoolReconciler(fake.as_kube(), CFG)
    pools.reconcile("h100")
    _gpu_operator_applies(fake)
    pools.reconcile("h100")
    assert len(fake.of_kind("Pod")) == 6
    placed = _condition(fake.peek("SLMDeployment", "intent-router", NS), "Placed")
    assert placed["reason"] == "ResourceQuotaExceeded" and "team-pods" in placed["message"]


def test_a_pod_the_api_server_refuses_for_a_quota_becomes_the_condition_not_a_retry_storm() -> None:
    # the quota the API server enforces: on memory, which the core does not plan within
    fake = _QuotaRefusingKube(*_cluster(_quota("team-memory", {"requests.memory": "8Gi"})).objects.values())
    pools = PoolReconciler(fake.as_kube(), CFG)
    pools.reconcile("h100")
    _gpu_operator_applies(fake)
    pools.reconcile("h100")
    assert len(fake.of_kind("Pod")) == 2
    assert sum(1 for w in fake.writes if w[0] == "create-refused") == 1, "one refusal per namespace and pass"
    refused = [
        d
        for d in fake.of_kind("SLMDeployment")
        if "status" in d and _condition(d, "Placed")["reason"] == "ResourceQuotaExceeded"
    ]
    assert refused, "a deployment whose pod was refused says so"
    assert "exceeded quota: memory" in _condition(refused[0], "Placed")["message"]
    _pods_run(fake)
    pools.reconcile("h100")
    before = len(fake.writes)
    pools.reconcile("h100")
    statuses = [w for w in fake.writes[before:] if w[0] == "apply-status" and w[1] == "SLMDeployment"]
    assert statuses == [], "a pass refused again rewrites no status"
    assert sum(1 for w in fake.writes[before:] if w[0] == "create-refused") == 1
    assert quota_refusal(403, "status unknown for quota: q, resources: pods")
    assert not quota_refusal(403, "pods is forbidden: User cannot create")


def test_a_quota_change_wakes_the_pools_and_a_repeat_does_not() -> None:
    fake = _cluster()
    kube = fake.as_kube()
    ctx = OperatorContext(
        kube=kube, cfg=CFG, pools=PoolReconciler(kube, CFG), finetune=FineTuneReconciler(kube, "t:1", None)
    )
    ev = ctx.pool_trigger("h100")
    q = _quota("team-pods", {"pods": "6"})
    for body, woken in ((q, True), (q, False)):
        ev.clear()
        handlers.quota_event(ctx, "MODIFIED", body)
        assert ev.is_set() is woken
    used = copy.deepcopy(q)
    used["status"]["used"]["pods"] = "1"  # a pod of the namespace came or went: usage is what changed
    ev.clear()
    handlers.quota_event(ctx, "MODIFIED", used)
    assert ev.is_set()


def test_a_quota_scoped_to_pods_replicas_are_not_changes_nothing() -> None:
    """Replica pods are never Terminating (no activeDeadlineSeconds) nor BestEffort (they request resources)."""
    plain = decide(_configured([]))
    for scopes in (["Terminating"], ["BestEffort"], ["NotTerminating", "BestEffort"]):
        d = decide(_configured([_quota("scoped", {"pods": "0"}, scopes=scopes)]))
        assert d.pods_create == plain.pods_create, scopes
    d = decide(_configured([_quota("scoped", {"pods": "0"}, scopes=["NotBestEffort"])]))
    assert d.pods_create == []


TIER_RANK = {"Guaranteed": 0, "Burstable": 1, "BestEffort": 2}


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pods=st.integers(0, 18))
def test_a_pod_quota_holds_back_lower_tiers_before_higher_ones(pods: int) -> None:
    """With room for ``pods`` replica pods, the namespace settles on exactly ``min(pods, 18)`` (every replica of
    the example fits the pool), and no replica runs while a replica of a higher tier is held back."""
    running, d = _settle(_quota("team-pods", {"pods": str(pods)}), [], _configured([]))
    assert len(running) == min(pods, 18)
    created = [TIER_RANK[PodView(p).labels[QOS_LABEL]] for p in running]
    held = [
        TIER_RANK[dep.spec.qos.value]
        for dep in _configured([]).deployments
        if _placed(d, dep.metadata.name)["reason"] == "ResourceQuotaExceeded"
    ]
    assert not held or max(created, default=-1) <= min(held)
