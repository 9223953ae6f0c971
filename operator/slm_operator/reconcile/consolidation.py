"""Phases 3b and 9b: consolidation. Pick the moves that free whole GPUs within the pool's disruption budget
(before the plan, so that the plan holds their targets), then run every move's state machine against the plan:
start, complete or abandon moves, with their events and the pool status's record.

The planner chooses *which* replicas move (:func:`slm_operator.planner.consolidate`); this module decides
*when* (the budget: :mod:`slm_operator.reconcile.budget`) and carries them out make-before-break
(:mod:`slm_operator.reconcile.moves`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from slm_operator.api.v1alpha1 import (
    ConsolidationMove,
    ConsolidationStatus,
    GPUPoolStatus,
    MoveOutcome,
)
from slm_operator.contract import MOVE_ANNOTATION, PLACEMENT_ANNOTATION
from slm_operator.events import Event
from slm_operator.inventory import deployment_key
from slm_operator.planner import Consolidation, ConsolidationBudget, Move, consolidate
from slm_operator.planner.model import CurrentPlacement, Demand, NodeInventory, Plan, PoolPolicy
from slm_operator.reconcile.budget import (
    abandoned_recently,
    held_back,
    merge_history,
    moves_left,
    parse_time,
)
from slm_operator.reconcile.inputs import Sizings
from slm_operator.reconcile.moves import (
    MOVE_ABANDONED,
    MOVE_COMPLETED,
    MOVE_STARTED,
    MOVED_BREAK_BEFORE_MAKE,
    MOVED_OFF,
    MoveNote,
    Phase,
    PlannerView,
    ReplicaMove,
    busy_deployments,
    find_moves,
    gpu_name,
    held_in_plan,
    hold_of,
    is_hold,
    move_record,
    planner_view,
    startable,
)
from slm_operator.reconcile.podsets import DesiredPod
from slm_operator.reconcile.world import MoveActions, ReplicaKey, World
from slm_operator.render import replica_pod
from slm_operator.status import CONSOLIDATED, set_condition
from slm_operator.views import PodView


@dataclass(frozen=True)
class ConsolidationStep:
    """What phase 3b decided: the planner's inputs with the moves in flight and those starting now."""

    view: PlannerView
    moves: tuple[ReplicaMove, ...]  # the moves the pods show
    starting: tuple[Move, ...]  # moves the consolidation step picked in this pass
    result: Consolidation
    history: tuple[ConsolidationMove, ...]  # the last hour's moves before this pass
    held_back: str  # why no move may start now ("" when some may)
    now: datetime


def _now(world: World) -> datetime:
    t = parse_time(world.now)
    assert t is not None, f"World.now is not RFC 3339: {world.now!r}"
    return t


def plan_consolidation(
    world: World,
    policy: PoolPolicy,
    nodes: Sequence[NodeInventory],
    demands: Sequence[Demand],
    current: Sequence[CurrentPlacement],
) -> ConsolidationStep:
    """Read the moves in flight from the pods, then let the planner pick new ones within the budget: the
    hourly moves left (none when off or in quiet hours), never a deployment that is busy (a move under way, a
    replica not ready, a pod terminating, a move abandoned within the hour)."""
    now = _now(world)
    cp = world.pool.spec.disruption.consolidation
    pods = [PodView(p) for p in world.pods]
    moves = find_moves(pods, now, timedelta(seconds=cp.ready_timeout_seconds))
    old = world.pool.status.consolidation if world.pool.status else None
    history = merge_history(
        old.recent_moves or [] if old else [],
        [m.record() for m in moves],
        _placed_at(current),
        now,
    )
    current = _break_before_make_current(world, history, current)
    view = planner_view(demands, current, moves)
    busy = busy_deployments(pods, view.current, view.demands, moves) | view.holds
    budget = ConsolidationBudget(
        max_moves=moves_left(cp, history, now),
        threshold_percent=float(cp.threshold_percent),
        break_before_make_tiers=("BestEffort",) if cp.best_effort_break_before_make else (),
        busy=busy | abandoned_recently(history, now),
    )
    result = consolidate(policy, nodes, view.demands, view.current, budget)
    starting = startable(result.moves, budget.break_before_make_tiers)
    view = view.with_moves(
        (ReplicaKey(m.deployment, m.ordinal), m.source, m.target, m.make_before_break) for m in starting
    )
    return ConsolidationStep(view, moves, starting, result, tuple(history), held_back(cp, history, now), now)


def _placed_at(current: Sequence[CurrentPlacement]) -> dict[tuple[str, int], str]:
    return {(c.deployment, c.ordinal): gpu_name(c) for c in current}


def _break_before_make_current(
    world: World, history: Sequence[ConsolidationMove], current: Sequence[CurrentPlacement]
) -> list[CurrentPlacement]:
    """A BestEffort replica moving break-before-make has no live pod (its old one may still be terminating, or
    be gone while its node takes a new config): it counts on the target its move record names until its new
    pod runs there. Also when nothing else remembers it (its SLMDeployment status shows it waiting, with no
    place), as long as its deployment still wants that replica."""
    targets: dict[tuple[str, int], tuple[str, int, ConsolidationMove]] = {}
    for m in history:  # oldest first: the latest move of a replica wins
        node, _, gpu = m.target.rpartition("/")
        if m.outcome == MoveOutcome.BREAK_BEFORE_MAKE and m.target_mechanism is not None and gpu.isdigit():
            targets[(m.deployment, m.replica)] = (node, int(gpu), m)
    live = {
        (rec.deployment, rec.ordinal)
        for p in map(PodView, world.pods)
        if p.live and (rec := p.placement) is not None
    }
    wanted = {deployment_key(d): d.effective_replicas() for d in world.deployments}
    out = []
    for c in current:
        t = targets.get((c.deployment, c.ordinal))
        out.append(
            c if t is None or (c.deployment, c.ordinal) in live else _at_target(c.deployment, c.ordinal, t)
        )
    have = {(c.deployment, c.ordinal) for c in current}
    for (dep, ordinal), t in sorted(targets.items()):
        if (dep, ordinal) not in have | live and ordinal < wanted.get(dep, 0):
            out.append(_at_target(dep, ordinal, t))
    return out


def _at_target(deployment: str, ordinal: int, t: tuple[str, int, ConsolidationMove]) -> CurrentPlacement:
    node, gpu, m = t
    assert m.target_mechanism is not None
    return CurrentPlacement(
        deployment=deployment,
        ordinal=ordinal,
        node=node,
        gpu_index=gpu,
        mechanism=m.target_mechanism,
        mig_profile=m.target_mig_profile,
    )


# ------------------------------------------------------------------------------------------ 9b. carry out moves
def target_pods(
    world: World, step: ConsolidationStep, plan: Plan, sizings: Sizings
) -> dict[ReplicaKey, DesiredPod]:
    """The new pod of each make-before-break move starting now, rendered from the plan's hold of its target
    (the share, MPS limits and node as the plan has them) and annotated with the move's note."""
    owners = {deployment_key(d): d for d in world.deployments}
    starting = {ReplicaKey(m.deployment, m.ordinal): m for m in step.starting if m.make_before_break}
    out: dict[ReplicaKey, DesiredPod] = {}
    for g in plan.gpus:
        for r in g.replicas:
            key = hold_of(r.deployment) if is_hold(r.deployment) else None
            move = starting.get(key) if key is not None else None
            owner = owners.get(key.deployment) if key is not None else None
            sizing = sizings.by_deployment.get(key.deployment) if key is not None else None
            if key is None or move is None or owner is None or sizing is None:
                continue
            if (g.node, g.index) != (move.target.node, move.target.gpu_index):
                continue
            placement = r.model_copy(update={"deployment": key.deployment, "ordinal": key.ordinal})
            pod = replica_pod(
                owner, placement, g.node, g.index, g.product, world.pool.metadata.name, sizing, world.cfg
            )
            source = _source_annotation(world, key, move.source)
            if not source:
                continue
            note = MoveNote(source=source, started=world.now, reason=move.reason)
            pod["metadata"]["annotations"][MOVE_ANNOTATION] = note.to_annotation()
            out[key] = DesiredPod(key, g.node, pod)
    return out


def _source_annotation(world: World, key: ReplicaKey, source: CurrentPlacement) -> str:
    """The ``slm.io/placement`` annotation of the live pod the move replaces ("" when there is none)."""
    pod = _live_pod(world, key, source)
    return str(pod.annotations.get(PLACEMENT_ANNOTATION, "")) if pod is not None else ""


def begin_moves(world: World, step: ConsolidationStep, plan: Plan) -> MovePass:
    """Run each move's state machine against the plan (a move whose target the plan no longer holds is
    abandoned) and start the break-before-make moves (their old pod is deleted): the pods to keep and to
    delete before phase 7 decides the rest."""
    acts = MovePass(world, plan)
    for m in step.moves:
        acts.advance(m)
    for mv in step.starting:
        if not mv.make_before_break:
            acts.start(mv, None)
    return acts


def finish_moves(
    acts: MovePass, step: ConsolidationStep, created: Mapping[ReplicaKey, Mapping[str, Any]]
) -> MoveActions:
    """Start the make-before-break moves whose new pod is created in this pass (``created``: the others wait
    for their node and are picked again), and report: events, the last hour's moves, the pool's distance from a
    fresh plan."""
    for mv in step.starting:
        if mv.make_before_break:
            acts.start(mv, created.get(ReplicaKey(mv.deployment, mv.ordinal)))
    history = merge_history(step.history, acts.records, _placed_at(list(acts.plan.placements())), step.now)
    r = step.result
    status = ConsolidationStatus(
        gpus_used=r.gpus_used,
        gpus_fresh=r.gpus_fresh,
        gpus_freeable=max(0, r.gpus_used - r.gpus_fresh),
        fragmentation_ratio=f"{r.ratio:.3f}",
        moves_in_flight=sum(1 for h in history if h.outcome == MoveOutcome.IN_FLIGHT),
        moves_last_hour=len(history),
        recent_moves=history or None,
    )
    if acts.started:
        acts.events.append(_pool_event(acts.world, step, acts.started))
    return MoveActions(
        keep=frozenset(acts.keep),
        create=tuple(dict(p) for k, p in created.items() if k in acts.started_keys),
        delete=tuple(acts.delete),
        events=tuple(acts.events),
        status=status,
        outcomes=dict(acts.outcomes),
        gpus_freed=acts.gpus_freed,
        waiting=bool(step.moves or acts.started),
    )


class MovePass:
    """The actions and records of one pass's moves, built move by move."""

    def __init__(self, world: World, plan: Plan) -> None:
        self.world = world
        self.plan = plan
        self.uids = {deployment_key(d): d.metadata.uid for d in world.deployments}
        self.keep: set[tuple[str, str]] = set()
        self.delete: list[tuple[str, str, str]] = []
        self.events: list[Event] = []
        self.records: list[ConsolidationMove] = []
        self.outcomes: dict[str, int] = {}
        self.started: list[Move] = []
        self.started_keys: set[ReplicaKey] = set()
        self.gpus_freed = 0

    def _event(self, key: ReplicaKey, type_: str, reason: str, message: str) -> None:
        ns, _, name = key.deployment.partition("/")
        text = f"replica {key.ordinal}: {message}"
        self.events.append(
            Event("SLMDeployment", ns, name, type_, reason, text, self.uids.get(key.deployment))
        )

    def _count(self, outcome: str) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    def advance(self, m: ReplicaMove) -> None:
        """One move the pods show, one step along."""
        phase = m.phase
        if phase == Phase.IN_FLIGHT and not held_in_plan(self.plan, m.key, m.target):
            phase = Phase.ABANDON
        where = f"{gpu_name(m.source)} to {gpu_name(m.target)}"
        tgt = (m.target_pod.namespace, m.target_pod.name)
        src = (m.source_pod.namespace, m.source_pod.name) if m.source_pod is not None else None
        if phase == Phase.IN_FLIGHT:
            self.keep |= {tgt, *([src] if src else [])}
        elif phase == Phase.COMPLETE and src is not None:
            self.keep |= {tgt, src}
            self.delete.append((*src, MOVED_OFF))
            self._event(m.key, "Normal", MOVE_COMPLETED, f"moved from {where}: {m.note.reason}")
            self._count(MoveOutcome.COMPLETED)
            self.gpus_freed += self._emptied(m.source)
        elif phase == Phase.ABANDON:
            self.keep |= {tgt, *([src] if src else [])}
            self.delete.append((*tgt, MOVE_ABANDONED))
            why = (
                "its new pod was not Ready in time"
                if m.phase == Phase.ABANDON
                else "the plan no longer holds its target share"
            )
            self._event(
                m.key, "Warning", MOVE_ABANDONED, f"move from {where} abandoned ({why}); kept where it runs"
            )
            self._count(MoveOutcome.ABANDONED)
        outcome = {Phase.IN_FLIGHT: MoveOutcome.IN_FLIGHT, Phase.ABANDON: MoveOutcome.ABANDONED}.get(phase)
        self.records.append(m.record(outcome))

    def _emptied(self, source: CurrentPlacement) -> int:
        """1 when the move leaves its source GPU with nothing but holds of pods on their way out."""
        g = self.plan.gpu(source.node, source.gpu_index)
        return 1 if g is not None and all(is_hold(r.deployment) for r in g.replicas) else 0

    def start(self, mv: Move, pod: Mapping[str, Any] | None) -> None:
        """A move the consolidation step picked: make-before-break when its new pod is created now (else it
        waits for its node and is picked again), break-before-make by deleting the old pod."""
        key = ReplicaKey(mv.deployment, mv.ordinal)
        where = f"{gpu_name(mv.source)} to {gpu_name(mv.target)}"
        if mv.make_before_break:
            if pod is None:
                return
            self._event(key, "Normal", MOVE_STARTED, f"moving from {where} (make-before-break): {mv.reason}")
            outcome = MoveOutcome.IN_FLIGHT
        else:
            old = _live_pod(self.world, key, mv.source)
            if old is None:
                return
            self.keep.add((old.namespace, old.name))
            self.delete.append((old.namespace, old.name, MOVED_OFF))
            self._event(
                key,
                "Normal",
                MOVED_BREAK_BEFORE_MAKE,
                f"moving from {where} (break-before-make): {mv.reason}",
            )
            outcome = MoveOutcome.BREAK_BEFORE_MAKE
        self._count(outcome)
        self.started.append(mv)
        self.started_keys.add(key)
        self.records.append(move_record(key, mv.source, mv.target, self.world.now, outcome, mv.reason))


def explain_break_before_make(
    world: World,
    acts: MoveActions,
    waiting: Mapping[str, Mapping[int, str]],
    created: Sequence[Mapping[str, Any]],
) -> dict[str, dict[int, str]]:
    """``waiting`` (deployment -> replica -> why its pod waits) with each replica that moves break-before-make
    and has no pod now (its old pod deleted, its new one not created yet) saying so first, so that the
    SLMDeployment's placements and Progressing condition tell why the replica is down."""
    out = {dep: dict(by_replica) for dep, by_replica in waiting.items()}
    present = {
        (rec.deployment, rec.ordinal)
        for p in (*(PodView(p) for p in world.pods if PodView(p).live), *map(PodView, created))
        if (rec := p.placement) is not None
    }
    gone = {(ns, name) for ns, name, _ in acts.delete}
    present -= {
        (rec.deployment, rec.ordinal)
        for p in map(PodView, world.pods)
        if (p.namespace, p.name) in gone and (rec := p.placement) is not None
    }
    records = acts.status.recent_moves if acts.status is not None else None
    for m in records or []:
        if m.outcome != MoveOutcome.BREAK_BEFORE_MAKE or (m.deployment, m.replica) in present:
            continue
        why = (
            f"moving break-before-make from {m.source} to {m.target} (consolidation: BestEffort, stopped first "
            "because no share was free while it ran)"
        )
        by_replica = out.setdefault(m.deployment, {})
        earlier = by_replica.get(m.replica)
        by_replica[m.replica] = f"{why}; {earlier}" if earlier else why
    return out


def _live_pod(world: World, key: ReplicaKey, where: CurrentPlacement) -> PodView | None:
    for p in map(PodView, world.pods):
        rec = p.placement
        if (
            rec is not None
            and p.live
            and ReplicaKey(rec.deployment, rec.ordinal) == key
            and (rec.node, rec.gpu) == (where.node, where.gpu_index)
        ):
            return p
    return None


def _pool_event(world: World, step: ConsolidationStep, started: Sequence[Move]) -> Event:
    r = step.result
    message = (
        f"started {len(started)} move(s) to free {r.gpus_freed} GPU(s): the pool uses {r.gpus_used} GPUs, a "
        f"fresh plan {r.gpus_fresh} (ratio {r.ratio:.3f})"
    )
    if r.nodes_freed:
        message += f"; frees node(s) {', '.join(r.nodes_freed)}"
    return Event(
        "GPUPool", None, world.pool.metadata.name, "Normal", "Consolidating", message, world.pool.metadata.uid
    )


def report_consolidation(world: World, st: GPUPoolStatus, acts: MoveActions, step: ConsolidationStep) -> None:
    """``status.consolidation`` and the ``Consolidated`` condition: True while the pool is within its threshold
    of a fresh plan; else False, with what consolidation does about it (moves under way) or why it does nothing
    (off, quiet hours, hourly budget spent, no move frees a GPU)."""
    if not st.conditions or acts.status is None:
        return  # the pool could not be planned: nothing to compare
    st.consolidation = acts.status
    r = step.result
    cp = world.pool.spec.disruption.consolidation
    figures = f"the pool uses {r.gpus_used} GPUs, a fresh plan of the same demand {r.gpus_fresh}"
    within = r.gpus_used <= r.gpus_fresh * (1 + cp.threshold_percent / 100)
    if within:
        result = (True, "WithinThreshold", f"{figures} (threshold {cp.threshold_percent} %)")
    elif acts.status.moves_in_flight:
        moving = f"{acts.status.moves_in_flight} move(s) under way to free {r.gpus_freed} GPU(s)"
        result = (False, "Consolidating", f"{figures}; {moving}")
    else:
        reason = step.held_back or ("NoMoveFreesAGPU" if not r.moves else "Consolidating")
        why = {
            "Disabled": "consolidation is off (`spec.disruption.consolidation.enabled`)",
            "QuietHours": "no move starts in quiet hours",
            "BudgetExhausted": f"the hourly budget ({cp.max_moves_per_hour} moves) is spent",
            "NoMoveFreesAGPU": r.message or "no move of a replica that may move now frees a whole GPU",
        }.get(reason, "moves are starting")
        result = (False, reason, f"{figures}; {why}")
    status, reason, message = result
    st.conditions = set_condition(
        st.conditions, CONSOLIDATED, status, reason, message, world.pool.metadata.generation, world.now
    )
