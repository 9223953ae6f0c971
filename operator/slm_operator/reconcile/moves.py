"""Consolidation moves in flight, read from the replica pods: a pure state machine.

A make-before-break move of replica ``k`` of deployment ``D`` from share S to share T:

1. **start** - the pass whose consolidation step picks the move holds T for the replica and creates the new pod
   on T, annotated ``slm.io/move`` (:class:`MoveNote`: the placement of the pod it replaces, when it started,
   why). The old pod keeps serving.
2. **in flight** - both pods exist; the planner sees the replica on S and T *held* (a hold: a one-replica demand
   pinned to T, :func:`planner_view`), so that nothing else takes either share.
3. **complete** - the new pod is Ready: the old one is deleted. Deletion is graceful: the pod leaves the
   Service's EndpointSlices (the gateway routes only to ready endpoints) before vLLM gets SIGTERM, and finishes
   the calls in flight. The planner now sees the replica on T and S held until the old pod is gone.
4. **abandon** - the new pod is not Ready within ``readyTimeout``, or the plan no longer holds T (a higher tier
   took it): the new pod is deleted and the old one keeps serving. The planner sees the replica on S and T held
   until the new pod is gone.

Everything is derived from the pods (and their ``slm.io/move`` annotation), so a restarted operator picks a
move up where it was and nothing is duplicated or orphaned: a new pod whose old pod is gone is simply the
replica, an old pod whose new pod is gone is simply the replica.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from slm_operator.api.v1alpha1 import ConsolidationMove, MoveOutcome
from slm_operator.contract import MOVE_ANNOTATION, PLACEMENT_ANNOTATION, PlacementRecord
from slm_operator.inventory import placement_of
from slm_operator.planner import Move
from slm_operator.planner.model import CurrentPlacement, Demand, Plan, ShareRequest
from slm_operator.reconcile.budget import parse_time
from slm_operator.reconcile.world import ReplicaKey
from slm_operator.views import PodView

#: A hold's deployment key: the deployment's key, this mark and the replica's ordinal. ``/`` and ``#`` never
#: both appear in a deployment key otherwise (namespace and name are DNS labels).
HOLD_MARK = "#moving-"

MOVE_STARTED = "MoveStarted"
MOVE_COMPLETED = "MoveCompleted"
MOVE_ABANDONED = "MoveAbandoned"
MOVED_BREAK_BEFORE_MAKE = "MovedBreakBeforeMake"
#: why the pod is deleted (the ``pods_delete`` reason, the operator's log)
MOVED_OFF = "Consolidated"


@dataclass(frozen=True)
class MoveNote:
    """The ``slm.io/move`` annotation of a move's new pod."""

    source: str  # the slm.io/placement annotation of the pod it replaces
    started: str  # RFC 3339
    reason: str = ""

    def to_annotation(self) -> str:
        return json.dumps(
            {"source": self.source, "started": self.started, "reason": self.reason}, sort_keys=True
        )

    @classmethod
    def from_annotation(cls, raw: str | None) -> MoveNote | None:
        """The note in ``raw``, or None when it is absent or not a note (never raises)."""
        if not raw:
            return None
        try:
            data = json.loads(raw)
            return cls(str(data["source"]), str(data["started"]), str(data.get("reason") or ""))
        except (ValueError, KeyError, TypeError):
            return None


class Phase(StrEnum):
    IN_FLIGHT = "InFlight"  # the new pod starts; the old one serves
    COMPLETE = "Complete"  # the new pod is Ready: delete the old one now
    ABANDON = "Abandon"  # the new pod missed its deadline: delete it now
    SETTLING = "Settling"  # the move completed; the old pod is terminating
    UNWINDING = "Unwinding"  # the move was abandoned; the new pod is terminating


def move_phase(*, source_live: bool, target_live: bool, target_ready: bool, expired: bool) -> Phase:
    """The state machine of one move, from its two pods and its deadline. A Ready new pod wins over the
    deadline (it made it); a new pod that is gone or terminating means the move was abandoned."""
    if not target_live:
        return Phase.UNWINDING
    if not source_live:
        return Phase.SETTLING
    if target_ready:
        return Phase.COMPLETE
    return Phase.ABANDON if expired else Phase.IN_FLIGHT


@dataclass(frozen=True)
class ReplicaMove:
    """One move the pods show: its replica, its two pods (the old one may be gone) and its phase."""

    key: ReplicaKey
    note: MoveNote
    source: CurrentPlacement
    target: CurrentPlacement
    source_pod: PodView | None
    target_pod: PodView
    phase: Phase

    @property
    def on_target(self) -> bool:
        """The replica counts as running on the target (the planner's current placement)."""
        return self.phase in (Phase.COMPLETE, Phase.SETTLING)

    @property
    def held(self) -> tuple[CurrentPlacement, PodView] | None:
        """The share the replica's other pod holds while it exists, and that pod."""
        other = self.source_pod if self.on_target else self.target_pod
        if other is None or other.finished:
            return None
        return (self.source if self.on_target else self.target), other

    @property
    def deletes(self) -> tuple[PodView, str] | None:
        """The pod this pass deletes, and why."""
        if self.phase == Phase.COMPLETE and self.source_pod is not None:
            return self.source_pod, MOVED_OFF
        if self.phase == Phase.ABANDON:
            return self.target_pod, MOVE_ABANDONED
        return None

    def record(self, outcome: MoveOutcome | None = None) -> ConsolidationMove:
        """The pool status's record of this move."""
        if outcome is None:
            outcome = {
                Phase.IN_FLIGHT: MoveOutcome.IN_FLIGHT,
                Phase.ABANDON: MoveOutcome.ABANDONED,
                Phase.UNWINDING: MoveOutcome.ABANDONED,
            }.get(self.phase, MoveOutcome.COMPLETED)
        return move_record(self.key, self.source, self.target, self.note.started, outcome, self.note.reason)


def move_record(
    key: ReplicaKey,
    source: CurrentPlacement,
    target: CurrentPlacement,
    started: str,
    outcome: MoveOutcome,
    reason: str,
) -> ConsolidationMove:
    return ConsolidationMove(
        deployment=key.deployment,
        replica=key.ordinal,
        source=gpu_name(source),
        target=gpu_name(target),
        target_mechanism=target.mechanism,
        target_mig_profile=target.mig_profile,
        started=started,
        outcome=outcome,
        reason=reason[:512],
    )


def gpu_name(p: CurrentPlacement) -> str:
    return f"{p.node}/{p.gpu_index}"


def _placement(rec: PlacementRecord) -> CurrentPlacement | None:
    try:
        return placement_of(rec)
    except ValueError:
        return None


def find_moves(pods: Iterable[PodView], now: datetime, timeout: timedelta) -> tuple[ReplicaMove, ...]:
    """Every move the pods show: a pod with a ``slm.io/move`` note that replaces another placement of its
    replica (the newest such pod of a replica, should there be several)."""
    by_key: dict[ReplicaKey, list[PodView]] = {}
    for pod in pods:
        rec = pod.placement
        if rec is not None and not pod.finished:
            by_key.setdefault(ReplicaKey(rec.deployment, rec.ordinal), []).append(pod)
    out: list[ReplicaMove] = []
    for key, group in sorted(by_key.items()):
        move = _move_of(key, group, now, timeout)
        if move is not None:
            out.append(move)
    return tuple(out)


def _move_of(
    key: ReplicaKey, group: Sequence[PodView], now: datetime, timeout: timedelta
) -> ReplicaMove | None:
    noted = [
        (note, p)
        for p in group
        if (note := MoveNote.from_annotation(p.annotations.get(MOVE_ANNOTATION))) is not None
        and note.source != p.annotations.get(PLACEMENT_ANNOTATION)
    ]
    if not noted:
        return None
    note, target_pod = max(noted, key=lambda np: (np[0].started, not np[1].deleting))
    source_pod = next(
        (p for p in group if p.annotations.get(PLACEMENT_ANNOTATION) == note.source and p is not target_pod),
        None,
    )
    src_rec = PlacementRecord.from_annotation(note.source)
    tgt_rec = target_pod.placement
    source = _placement(src_rec) if src_rec else None
    target = _placement(tgt_rec) if tgt_rec else None
    if source is None or target is None:
        return None
    started = parse_time(note.started)
    expired = started is None or now - started >= timeout
    phase = move_phase(
        source_live=source_pod is not None and source_pod.live,
        target_live=target_pod.live,
        target_ready=target_pod.ready,
        expired=expired,
    )
    if source_pod is None:
        return (
            None  # the old pod is gone: the new pod is simply the replica (or is going, and so is the move)
        )
    return ReplicaMove(key, note, source, target, source_pod, target_pod, phase)


# ------------------------------------------------------------------------------------------ the planner's view
def hold_key(key: ReplicaKey) -> str:
    return f"{key.deployment}{HOLD_MARK}{key.ordinal}"


def is_hold(deployment: str) -> bool:
    return HOLD_MARK in deployment


def hold_of(deployment: str) -> ReplicaKey | None:
    """The replica a hold's deployment key stands for."""
    dep, mark, ordinal = deployment.rpartition(HOLD_MARK)
    return ReplicaKey(dep, int(ordinal)) if mark and ordinal.isdigit() else None


def hold(key: ReplicaKey, where: CurrentPlacement, demand: Demand) -> tuple[Demand, CurrentPlacement]:
    """A one-replica demand pinned to ``where`` (the share the replica's other pod holds) and its placement."""
    name = hold_key(key)
    d = Demand(
        deployment=name,
        tier=demand.tier,
        replicas=1,
        memory_bytes=demand.memory_bytes,
        share=ShareRequest(mechanism=where.mechanism, mig_profile=where.mig_profile),
        order_key=demand.order_key,
    )
    return d, where.model_copy(update={"deployment": name, "ordinal": 0})


@dataclass(frozen=True)
class PlannerView:
    """What the planner plans with while moves are under way."""

    demands: tuple[Demand, ...]  # the deployments' demands, then one per hold
    current: tuple[CurrentPlacement, ...]  # each moving replica where it counts, then the holds
    holds: frozenset[str]  # the holds' deployment keys

    def with_moves(
        self, started: Iterable[tuple[ReplicaKey, CurrentPlacement, CurrentPlacement, bool]]
    ) -> PlannerView:
        """The view once moves start in this pass: ``(replica, source, target, make_before_break)``. A
        make-before-break move holds its target; a break-before-make one counts on its target already."""
        moves = {key: (source, target, mbb) for key, source, target, mbb in started}
        demands = {d.deployment: d for d in self.demands}
        current: list[CurrentPlacement] = []
        extra: list[tuple[Demand, CurrentPlacement]] = []
        for c in self.current:
            key = ReplicaKey(c.deployment, c.ordinal)
            if key not in moves:
                current.append(c)
                continue
            _, target, mbb = moves[key]
            if not mbb:
                current.append(target)
                continue
            current.append(c)
            if c.deployment in demands:
                extra.append(hold(key, target, demands[c.deployment]))
        return PlannerView(
            demands=(*self.demands, *(d for d, _ in extra)),
            current=(*current, *(p for _, p in extra)),
            holds=self.holds | {d.deployment for d, _ in extra},
        )


def planner_view(
    demands: Sequence[Demand], current: Sequence[CurrentPlacement], moves: Sequence[ReplicaMove]
) -> PlannerView:
    """The planner's inputs with every move in flight: its replica where it counts (the old share until the new
    pod is Ready, then the new one) and the share its other pod holds as a hold, for as long as that pod exists.
    A replica whose deployment has no demand any more gets no hold (its pods are deleted anyway)."""
    by_key = {m.key: m for m in moves}
    by_dep = {d.deployment: d for d in demands}
    out: list[CurrentPlacement] = []
    holds: list[tuple[Demand, CurrentPlacement]] = []
    for c in current:
        move = by_key.get(ReplicaKey(c.deployment, c.ordinal))
        if move is None:
            out.append(c)
            continue
        out.append(move.target if move.on_target else move.source)
        held = move.held
        if held is not None and c.deployment in by_dep:
            holds.append(hold(move.key, held[0], by_dep[c.deployment]))
    return PlannerView(
        demands=(*demands, *(d for d, _ in holds)),
        current=(*out, *(p for _, p in holds)),
        holds=frozenset(d.deployment for d, _ in holds),
    )


def held_in_plan(plan: Plan, key: ReplicaKey, where: CurrentPlacement) -> bool:
    """The plan keeps the replica's hold on ``where`` (else a higher tier took the share: abandon the move)."""
    g = plan.gpu(where.node, where.gpu_index)
    return g is not None and any(r.deployment == hold_key(key) for r in g.replicas)


def without_holds(plan: Plan) -> Plan:
    """The plan as users see it (statuses, metrics): holds are not deployments, nor replicas to count (their
    shares stay on their GPUs: a pod still occupies them)."""
    holds = [d for d in plan.deployments if is_hold(d.deployment)]
    if not holds:
        return plan
    desired, placed = sum(d.desired for d in holds), sum(d.placed for d in holds)
    p = plan.pool
    pool = p.model_copy(
        update={
            "evictions": tuple(e for e in p.evictions if not is_hold(e.deployment)),
            "replicas_desired": p.replicas_desired - desired,
            "replicas_placed": p.replicas_placed - placed,
            "replicas_unplaced": p.replicas_unplaced - (desired - placed),
        }
    )
    deployments = tuple(d for d in plan.deployments if not is_hold(d.deployment))
    return plan.model_copy(update={"deployments": deployments, "pool": pool})


def busy_deployments(
    pods: Iterable[PodView],
    current: Sequence[CurrentPlacement],
    demands: Sequence[Demand],
    moves: Sequence[ReplicaMove],
) -> frozenset[str]:
    """Deployments that must not move now (the planner's ``busy``): one with a move under way, a pod
    terminating, a replica without a ready pod, or fewer running replicas than it wants. At most one replica of
    a deployment moves at a time, and only while all its others serve."""
    ready: set[ReplicaKey] = set()
    busy = {m.key.deployment for m in moves}
    for pod in pods:
        rec = pod.placement
        if rec is None:
            continue
        if pod.deleting:
            busy.add(rec.deployment)
        elif pod.ready:
            ready.add(ReplicaKey(rec.deployment, rec.ordinal))
    have: dict[str, int] = {}
    for c in current:
        have[c.deployment] = have.get(c.deployment, 0) + 1
        if ReplicaKey(c.deployment, c.ordinal) not in ready:
            busy.add(c.deployment)
    busy |= {d.deployment for d in demands if have.get(d.deployment, 0) != d.replicas}
    return frozenset(busy)


def startable(moves: Sequence[Move], break_before_make_tiers: Sequence[str]) -> tuple[Move, ...]:
    """The moves that start together now: the planner's moves in execution order, up to the first one that
    cannot start yet. A move may count on room an earlier move leaves behind (its target is on an earlier
    move's source GPU: a chain), which exists only once that move is done; a move onto a node that earlier
    moves empty so that it takes a new config (``Move.after_node``: a node drain) waits for them too; a node
    drain may move two replicas of one deployment, and the second waits for the first (one replica of a
    deployment at a time); and a break-before-make move of a tier that may not move so is not made, nor
    anything after it. The rest is proposed again on a later pass.

    Break-before-make moves back onto their own node (a node drained in place: ``after_node`` is their source
    node) start all together or not at all: their old pods are deleted in the same pass, so the node is empty
    and may take its new config before any of them starts again. They wait while a make-before-break move off
    that node is in the batch (its old pod keeps running until its new one is Ready)."""
    out: list[Move] = []
    sources: set[tuple[str, int]] = set()
    source_nodes: set[str] = set()
    held_nodes: set[str] = set()  # source nodes of make-before-break moves: their old pods still run
    deployments: set[str] = set()
    i = 0
    while i < len(moves):
        m = moves[i]
        group = [m]
        if not m.make_before_break and m.after_node == m.source.node:
            group = [x for x in moves[i:] if not x.make_before_break and x.after_node == m.after_node]
            if tuple(group) != tuple(moves[i : i + len(group)]) or m.after_node in held_nodes:
                break
        elif (m.target.node, m.target.gpu_index) in sources or (
            m.after_node is not None and m.after_node in source_nodes
        ):
            break
        names = [x.deployment for x in group]
        if len(set(names)) < len(names) or deployments & set(names):
            break
        if any(not x.make_before_break and x.tier not in break_before_make_tiers for x in group):
            break
        for x in group:
            out.append(x)
            sources.add((x.source.node, x.source.gpu_index))
            source_nodes.add(x.source.node)
            if x.make_before_break:
                held_nodes.add(x.source.node)
            deployments.add(x.deployment)
        i += len(group)
    return tuple(out)
