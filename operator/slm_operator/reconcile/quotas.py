"""Phase 4a: plan within the Kubernetes ResourceQuotas of the deployments' namespaces.

The API server's ResourceQuota admission refuses (403 ``exceeded quota``) a pod that would take a namespace's
usage of a quota'd resource above its ``hard`` limit. A replica pod counts, against every quota of its
namespace whose scopes match it, one ``pods`` / ``count/pods`` and one ``requests.<share resource>``: the
``nvidia.com/mig-<profile>``, ``nvidia.com/gpu.shared`` or ``nvidia.com/gpu`` it requests (render's
``share_resource``). Extended resources are quota'd only under the ``requests.`` prefix (Kubernetes docs,
"Resource Quotas", *Quota for extended resources*; the pod evaluator matches no other name for them, so a
``nvidia.com/gpu`` or ``limits.nvidia.com/gpu`` key is accepted by validation but limits nothing: it is
ignored here too). Other keys (``requests.cpu``, ``limits.memory``...) are left to the API server: the shell
turns its refusal into the same condition (docs/resource-quotas.md).

Which replicas a quota admits depends on the share the plan gives them (a quota on
``requests.nvidia.com/mig-1g.10gb`` limits only replicas placed on that profile), so the check runs on a plan:
:func:`quota_check` walks the plan's *new* replicas (those without a pod; a replica with a pod is already
counted in ``status.used`` and is never displaced by a quota) by tier, then creation order, then deployment
and ordinal, and admits each while every quota of its namespace has room for it. The core then re-plans with
each deployment's demand lowered by the replicas held back (``decide``), so the shares they would have held
stay free for others; a replica still held after the last re-plan is not created (:attr:`QuotaCheck.held`).
Room is ``min(spec.hard, status.hard) - status.used``: admission checks ``status.hard``, a lowered
``spec.hard`` is the owner's intent, and a quota whose status does not count a key yet admits nothing for it
(the API server refuses with ``status unknown for quota`` until it does).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Any

from slm_operator.api.quantity import QuantityError, parse_quantity
from slm_operator.contract import NVIDIA_PREFIX
from slm_operator.planner.model import Demand, Plan
from slm_operator.planner.vocabulary import TIER_RANK
from slm_operator.reconcile.moves import is_hold
from slm_operator.render import share_resource, share_resource_of
from slm_operator.views import ObjectView, PodView

POD_COUNT_KEYS = ("pods", "count/pods")
REQUESTS_PREFIX = "requests."
#: Plans per pass while quotas hold replicas back (the first plan and re-plans with lowered demands).
MAX_QUOTA_PLANS = 3


def tracked_key(key: str) -> bool:
    """A quota key that limits replica pods and that the core plans within: pod counts and the requests of
    NVIDIA extended resources."""
    return key in POD_COUNT_KEYS or key.startswith(REQUESTS_PREFIX + NVIDIA_PREFIX)


def pod_charge(resource: str) -> dict[str, int]:
    """What one replica pod requesting one ``resource`` counts against a quota, per key."""
    return {"pods": 1, "count/pods": 1, REQUESTS_PREFIX + resource: 1}


#: How the API server's ResourceQuota admission words a refusal (403): over a limit, a resource the quota
#: requires the pod to set (``failed quota: ...: must specify limits.cpu``), or usage not counted yet.
QUOTA_REFUSALS = ("exceeded quota:", "failed quota:", "status unknown for quota:")


def quota_refusal(status: int | None, message: str) -> bool:
    """Whether an API error refusing a pod came from a ResourceQuota."""
    return status == 403 and any(r in message for r in QUOTA_REFUSALS)


def refusal_message(pod_name: str, message: str) -> str:
    """The Placed message of every deployment whose new pods wait because the API server refused a replica pod
    of their namespace for a quota."""
    return (
        f"the API server refused replica pod {pod_name} of this namespace: {message}. New replica pods of the "
        f"namespace wait: raise the ResourceQuota named there, free some of it, or lower the replicas; they are "
        f"tried again when the quota changes"
    )


# ------------------------------------------------------------------------------------------ quotas
@dataclass(frozen=True)
class Quota:
    """The part of one ResourceQuota the core plans within."""

    namespace: str
    name: str
    hard: Mapping[str, Fraction]  # tracked key -> the lower of spec.hard and status.hard
    used: Mapping[str, Fraction]  # tracked key -> status.used; a key missing here is not counted yet
    scopes: tuple[str, ...] = ()
    scope_expressions: tuple[Mapping[str, Any], ...] = ()

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    def matches(self, priority_class: str) -> bool:
        """Whether the quota counts a replica pod (never terminating, never BestEffort, no cross-namespace
        affinity) of ``priority_class``; an unknown scope counts it (the safe side)."""
        for scope in self.scopes:
            if not _scope_matches(scope, "Exists", (), priority_class):
                return False
        for expr in self.scope_expressions:
            scope, op = str(expr.get("scopeName") or ""), str(expr.get("operator") or "")
            if not _scope_matches(scope, op, tuple(expr.get("values") or ()), priority_class):
                return False
        return True


#: Whether a replica pod is in each pod scope: it has no activeDeadlineSeconds, has requests, and no
#: cross-namespace affinity.
_REPLICA_IN_SCOPE = {
    "Terminating": False,
    "NotTerminating": True,
    "BestEffort": False,
    "NotBestEffort": True,
    "CrossNamespacePodAffinity": False,
}


def _scope_matches(scope: str, op: str, values: tuple[str, ...], priority_class: str) -> bool:
    if scope == "PriorityClass":
        if op == "In":
            return priority_class in values
        if op == "NotIn":
            return priority_class not in values
        if op == "Exists":
            return bool(priority_class)
        if op == "DoesNotExist":
            return not priority_class
        return True
    has = _REPLICA_IN_SCOPE.get(scope)
    if has is None:
        return True  # a scope this version does not know: count the pod (the safe side)
    return not has if op == "DoesNotExist" else has


def _quantities(raw: Mapping[str, Any] | None) -> dict[str, Fraction]:
    out: dict[str, Fraction] = {}
    for key, value in (raw or {}).items():
        if not tracked_key(str(key)):
            continue
        try:
            out[str(key)] = parse_quantity(value)
        except QuantityError:
            continue
    return out


def read_quotas(raw: Iterable[Mapping[str, Any]]) -> list[Quota]:
    """The ResourceQuotas that limit replica pods (those with a tracked key), by namespace and name."""
    out: list[Quota] = []
    for obj in raw:
        view = ObjectView(obj)
        spec = obj.get("spec") or {}
        status = obj.get("status") or {}
        spec_hard = _quantities(spec.get("hard"))
        if not spec_hard:
            continue
        status_hard = _quantities(status.get("hard"))
        hard = {k: min(v, status_hard[k]) if k in status_hard else v for k, v in spec_hard.items()}
        used = {k: v for k, v in _quantities(status.get("used")).items() if k in status_hard}
        selector = spec.get("scopeSelector") or {}
        out.append(
            Quota(
                namespace=view.namespace,
                name=view.name,
                hard=hard,
                used=used,
                scopes=tuple(str(s) for s in spec.get("scopes") or ()),
                scope_expressions=tuple(selector.get("matchExpressions") or ()),
            )
        )
    return sorted(out, key=lambda q: (q.namespace, q.name))


# ------------------------------------------------------------------------------------------ the check
@dataclass(frozen=True)
class Limit:
    """Why a deployment's replicas are held back: the first quota key that had no room for one of them."""

    quota: str  # "namespace/name"
    key: str
    hard: Fraction
    used: Fraction | None  # None: the quota's status does not count the key yet
    held: int  # replicas held back

    def message(self, placed: int, desired: int) -> str:
        """What the user reads in the Placed condition: which quota, which resource, what to do."""
        namespace, _, name = self.quota.partition("/")
        if self.used is None:
            why = (
                f"ResourceQuota {name} has not counted {self.key} yet (no status.used): the API server "
                f"refuses pods in namespace {namespace} until the quota controller has counted it"
            )
        else:
            why = (
                f"ResourceQuota {name} in namespace {namespace} allows {_fmt(self.hard)} {self.key}, "
                f"{_fmt(self.used)} used or taken by replicas placed first (tier, then age); each replica "
                f"needs 1"
            )
        return (
            f"{placed}/{desired} replicas placed; {self.held} held back: {why}. Raise spec.hard[{self.key}] "
            f"of the ResourceQuota, free some of it, or lower the replicas"
        )


def _fmt(v: Fraction) -> str:
    return str(v.numerator) if v.denominator == 1 else str(float(v))


@dataclass(frozen=True)
class QuotaCheck:
    """What the namespaces' quotas admit of one plan."""

    limits: Mapping[str, Limit] = field(default_factory=dict)  # deployment -> why replicas are held back
    held: frozenset[tuple[str, int]] = frozenset()  # (deployment, ordinal) of the plan not to create


@dataclass(frozen=True)
class _New:
    """A replica of the plan that needs room (no pod yet, or moving to a share of another resource)."""

    order: tuple[Any, ...]
    deployment: str
    ordinal: int
    namespace: str
    priority_class: str
    charge: Mapping[str, int]
    existing: bool  # it has a pod (on another share): its pod count is already used


def quota_check(
    quotas: Sequence[Quota],
    pods: Iterable[Mapping[str, Any]],
    plan: Plan,
    demands: Sequence[Demand],
    priority_classes: Mapping[str, str],
) -> QuotaCheck:
    """Which replicas of ``plan`` the quotas hold back (see the module docstring), and why, per deployment.

    A replica whose pod exists on another share (the plan moves it) is admitted first and never held: its
    new pod needs room only for the new share's resource, which newer replicas must then leave to it."""
    if not quotas:
        return QuotaCheck()
    by_ns: dict[str, list[Quota]] = {}
    for q in quotas:
        by_ns.setdefault(q.namespace, []).append(q)
    taken: dict[tuple[str, str], Fraction] = {}
    limits: dict[str, Limit] = {}
    held: set[tuple[str, int]] = set()
    for new in _new_replicas(pods, plan, demands, priority_classes):
        applying = [q for q in by_ns.get(new.namespace, ()) if q.matches(new.priority_class)]
        blocked = None if new.existing else _first_without_room(applying, new.charge, taken)
        if blocked is None:
            for q in applying:
                for key, n in new.charge.items():
                    taken[(q.ref, key)] = taken.get((q.ref, key), Fraction(0)) + n
            continue
        held.add((new.deployment, new.ordinal))
        before = limits.get(new.deployment)
        limits[new.deployment] = (
            Limit(blocked.quota, blocked.key, blocked.hard, blocked.used, 1)
            if before is None
            else Limit(before.quota, before.key, before.hard, before.used, before.held + 1)
        )
    return QuotaCheck(limits, frozenset(held))


def _first_without_room(
    applying: Sequence[Quota], charge: Mapping[str, int], taken: Mapping[tuple[str, str], Fraction]
) -> Limit | None:
    for q in applying:
        for key in sorted(charge):
            if key not in q.hard:
                continue
            if key not in q.used:
                return Limit(q.ref, key, q.hard[key], None, 0)
            in_use = q.used[key] + taken.get((q.ref, key), Fraction(0))
            if in_use + charge[key] > q.hard[key]:
                return Limit(q.ref, key, q.hard[key], in_use, 0)
    return None


def _new_replicas(
    pods: Iterable[Mapping[str, Any]],
    plan: Plan,
    demands: Sequence[Demand],
    priority_classes: Mapping[str, str],
) -> list[_New]:
    """The plan's replicas that need room: without a pod, or moving to a share of another resource."""
    have: dict[tuple[str, int], str] = {}
    for view in map(PodView, pods):
        rec = view.placement
        if rec is not None:
            known = rec.mechanism != "MIG" or bool(rec.mig_profile)
            have[(rec.deployment, rec.ordinal)] = (
                share_resource_of(rec.mechanism, rec.mig_profile) if known else ""
            )
    order = {d.deployment: (TIER_RANK[d.tier], d.order_key, d.deployment) for d in demands}
    out: list[_New] = []
    for g in plan.gpus:
        for r in g.replicas:
            if is_hold(r.deployment):  # the share a consolidation move's other pod holds: no new pod
                continue
            resource = share_resource(r)
            before = have.get((r.deployment, r.ordinal))
            if before == resource:
                continue
            charge = pod_charge(resource)
            if before is not None:  # moving to another resource: one more of it, the same pod count
                charge = {REQUESTS_PREFIX + resource: 1}
            rank = order.get(r.deployment, (TIER_RANK[r.qos], "", r.deployment))
            out.append(
                _New(
                    order=(before is None, *rank, r.ordinal),
                    deployment=r.deployment,
                    ordinal=r.ordinal,
                    namespace=r.deployment.partition("/")[0],
                    priority_class=priority_classes.get(r.qos, ""),
                    charge=charge,
                    existing=before is not None,
                )
            )
    return sorted(out, key=lambda n: n.order)


def lowered_demands(demands: Sequence[Demand], caps: Mapping[str, int]) -> list[Demand]:
    """``demands`` with each capped deployment's replicas lowered to its cap."""
    return [
        d.model_copy(update={"replicas": min(d.replicas, caps[d.deployment])}) if d.deployment in caps else d
        for d in demands
    ]


def merge_caps(caps: Mapping[str, int], demands: Sequence[Demand], check: QuotaCheck) -> dict[str, int]:
    """The caps after ``check``: each deployment's demand (as planned) less the replicas held back."""
    wanted = {d.deployment: min(d.replicas, caps.get(d.deployment, d.replicas)) for d in demands}
    out = dict(caps)
    for dep, limit in check.limits.items():
        out[dep] = max(0, wanted.get(dep, 0) - limit.held)
    return out


# ------------------------------------------------------------------------------------------ plan within them
@dataclass(frozen=True)
class QuotaPlan:
    """The plan made within the quotas, and what they hold back."""

    plan: Plan
    limits: Mapping[str, Limit]  # deployment -> why (and how many of) its replicas are held back
    held: frozenset[tuple[str, int]]  # replicas of ``plan`` that must not be created (see quota_check)
    caps: Mapping[str, int]  # deployment -> the replicas its demand was lowered to


def plan_within_quotas(
    plan_for: Callable[[Sequence[Demand], Mapping[str, int]], Plan],
    demands: Sequence[Demand],
    quotas: Sequence[Quota],
    pods: Sequence[Mapping[str, Any]],
    priority_classes: Mapping[str, str],
) -> QuotaPlan:
    """Plan (``plan_for(demands, caps)``), check the new replicas against the quotas, and plan again with the
    demands lowered by what they hold back, so the shares those replicas would have taken go to others; at most
    :data:`MAX_QUOTA_PLANS` plans (a re-plan may give a replica another share that a quota limits too), then
    what is still held back is not created. Without a quota that limits replica pods: one plan, as before.

    Lowering the demand rather than pinning another share is deliberate: which share a replica gets is the
    planner's choice from memory and tier, and a quota says how much a namespace may hold, not which share is
    right for a model; a user who wants a namespace on shares its quota allows pins ``spec.share``."""
    caps: dict[str, int] = {}
    limits: dict[str, Limit] = {}
    plan = plan_for(demands, caps)
    for attempt in range(MAX_QUOTA_PLANS):
        check = quota_check(quotas, pods, plan, lowered_demands(demands, caps), priority_classes)
        for dep, limit in check.limits.items():
            before = limits.get(dep)
            limits[dep] = limit if before is None else replace(before, held=before.held + limit.held)
        if not check.held or attempt == MAX_QUOTA_PLANS - 1:
            return QuotaPlan(_as_asked(plan, demands, caps, check.held), limits, check.held, caps)
        caps = merge_caps(caps, demands, check)
        plan = plan_for(lowered_demands(demands, caps), caps)
    raise AssertionError("unreachable")


def _as_asked(
    plan: Plan, demands: Sequence[Demand], caps: Mapping[str, int], held: Collection[tuple[str, int]]
) -> Plan:
    """``plan`` with each quota-limited deployment's ``desired`` back to what it asks for and ``placed`` less the
    replicas that are not created, so statuses and metrics (``slm_replicas_desired``, ``slm_replicas_unplaced``)
    count the replicas a quota holds back as not placed."""
    if not caps and not held:
        return plan
    asked = {d.deployment: d.replicas for d in demands}
    not_created: dict[str, int] = {}
    for dep, _ in held:
        not_created[dep] = not_created.get(dep, 0) + 1
    deployments = tuple(
        dp.model_copy(
            update={
                "desired": asked.get(dp.deployment, dp.desired),
                "placed": max(0, dp.placed - not_created.get(dp.deployment, 0)),
            }
        )
        if dp.deployment in caps or dp.deployment in not_created
        else dp
        for dp in plan.deployments
    )
    return plan.model_copy(update={"deployments": deployments})
