"""Consolidation: move a few running replicas so that whole GPUs (and nodes) become free (docs/planner.md §4.9).

The planner is stable by design: a re-plan keeps every running replica where it is (§4.1), so under churn the
pool drifts away from what a fresh plan of the same demand would use (the churn replay in docs/benchmarks.md:
1.093 x after ten rounds of 10 % change at 1,000 GPUs). :func:`consolidate` compares the current placement
with a fresh plan and, when the pool uses more GPUs than the fresh plan by more than the budget's threshold,
chooses a small set of moves that empty whole GPUs, cheapest first, within the budget's number of moves.

How: the running replicas are pinned as in a re-plan (``state.build_context``, MIG layouts of GPUs in use
frozen even under ``repartition: Allowed``, so a target is always an instance that exists already), and the
packer's zero-cost search (``Packer.zero_cost_room``) looks for room for each replica of a candidate GPU on
another GPU in use; a replica that finds none may take the MIG instance, MPS client slot or time-slicing room
of a replica of the same or a cheaper tier that moves into room elsewhere first. A GPU is emptied only when every replica on it finds room; otherwise nothing
of it moves. Candidates are tried cheapest first (``_cost``): fewest replicas (the budget counts moves), least
memory held, then the sum of the moves' costs (BestEffort before Burstable before Guaranteed, replicas on MIG
last), the worst tier, GPUs of nodes with fewer GPUs in use (so whole nodes empty and may change their sharing
mode or MIG layouts).
It stops when the pool would use no more GPUs than the fresh plan or the budget is spent.

Then, if the goal is not met, whole nodes are drained (``_Run.drain_nodes``): every replica of a node moves,
into room in use or onto new GPUs the packer opens on nodes where nothing runs (configured anew) or on MPS and
time-sliced nodes as configured, when the pool then uses fewer GPUs; alone, or as a pair whose first node,
emptied, is planned again for the second node's replicas (``Move.after_node``). A drain may move two replicas
of one deployment; the operator starts the second once the first is done (``reconcile.moves.startable``).

Every target is a share that is free while every source is still held, in the state where every earlier move
is done: a move is make-before-break (the new replica starts on its target and becomes Ready before the old
one is deleted), and no move needs a config change of a node where a replica runs (a drain's new GPUs are on
nodes where nothing runs when the move starts).

Except, when the budget lets a tier break first (``ConsolidationBudget.break_before_make_tiers``, BestEffort
only) and the goal is still not met: a node is drained *in place* (``_Run._drain_in_place``). Its replicas
that may not break first (other tiers, a second replica of a deployment) move elsewhere make-before-break;
then the node is planned again as a node without replicas, and its BestEffort replicas take room anywhere, the
node included. Those that land back on it move break-before-make (``Move.make_before_break`` False,
``Move.after_node`` their own node): their old shares are freed first (the node is empty: it may take a new
sharing mode, clients per GPU or MIG layouts), then they start on their targets. Pure: pydantic only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from pydantic import Field

from slm_operator.planner.gc_pause import gc_paused
from slm_operator.planner.heuristic import heuristic_plan
from slm_operator.planner.mig import Counts
from slm_operator.planner.model import CurrentPlacement, Demand, NodeInventory, PoolPolicy, Tier, _Model
from slm_operator.planner.packer import Choice, Packer, PackerOptions, ShareOptions
from slm_operator.planner.state import Context, Gpu, Node, Rep, build_context, mps_cap
from slm_operator.planner.vocabulary import (
    BEST_EFFORT,
    DISRUPTION,
    MIG,
    MPS,
    ROLE_POOL,
    TIME_SLICING,
    Mechanism,
    NodeMode,
)

#: GPUs holding more replicas than this are not emptied (more moves than one freed GPU is worth)
MAX_MOVES_PER_GPU = 16
#: replicas tried per move that makes room for another (``_Run._via_move``)
_CHAIN_TRIES = 8
#: nodes tried as the first of a pair of drains (``_Run._drain_pairs``), cheapest first
_PAIR_FIRSTS = 8


class ConsolidationBudget(_Model):
    """What consolidation may do in one step (the pool's disruption budget, as the controller computes it)."""

    #: replicas that may move in this step (what the hourly budget has left)
    max_moves: int = Field(ge=0)
    #: act only when the pool uses more GPUs than a fresh plan by more than this percentage
    threshold_percent: float = Field(default=2.0, ge=0)
    #: tiers whose replicas may move break-before-make (stop first, then start on a target that is only free
    #: once they are gone: a node drained in place); only BestEffort ever does, () turns it off
    break_before_make_tiers: tuple[Tier, ...] = ("BestEffort",)
    #: deployments with a replica moving or not Ready now: never moved (one replica of a deployment at a time)
    busy: frozenset[str] = frozenset()


class Move(_Model):
    """One replica moving from its share to another (same deployment and ordinal)."""

    deployment: str
    ordinal: int
    tier: Tier
    source: CurrentPlacement
    target: CurrentPlacement
    #: the target share is free while the source is still held: the new replica starts before the old goes;
    #: False (BestEffort only): the old replica stops first, and the new one starts once its node (``after_node``,
    #: drained in place) is empty and configured anew; the moves back onto one node stop together
    make_before_break: bool
    #: human text, e.g. "frees GPU node-3/2 (2 moves)"
    reason: str
    #: a node that earlier moves empty and that takes a new sharing mode or MIG layouts for this move's target:
    #: the move starts only once no replica runs there any more (``reconcile.moves.startable``); for a
    #: break-before-make move, its own node
    after_node: str | None = None


class Consolidation(_Model):
    """The result of :func:`consolidate`: how far the pool is from a fresh plan, and the moves that close it."""

    #: GPUs the current placement uses (GPUs of the pool's inventory holding a running replica)
    gpus_used: int
    #: GPUs a fresh plan (``plan_pool`` without ``current``) of the same demands uses
    gpus_fresh: int
    #: GPUs emptied once every move is done
    gpus_freed: int
    #: nodes left without any replica once every move is done (their sharing mode and MIG layouts may change)
    nodes_freed: tuple[str, ...] = ()
    #: in execution order, cheapest first; at most ``budget.max_moves``; at most one per deployment, except in
    #: node drains (a second move of a deployment there starts once the first is done)
    moves: tuple[Move, ...] = ()
    #: every running replica's placement after all moves (the ``current`` of the next plan)
    placements: tuple[CurrentPlacement, ...] = ()
    #: why there are no (more) moves, for the pool's status: "within 2% of a fresh plan", ...
    message: str = ""

    @property
    def ratio(self) -> float:
        """Fragmentation ratio: current GPUs / fresh-plan GPUs (1.0 when the fresh plan uses none)."""
        return self.gpus_used / self.gpus_fresh if self.gpus_fresh else 1.0


def consolidate(
    policy: PoolPolicy,
    nodes: Sequence[NodeInventory],
    demands: Sequence[Demand],
    current: Iterable[CurrentPlacement],
    budget: ConsolidationBudget,
) -> Consolidation:
    """Choose moves that free whole GPUs when the pool uses more GPUs than a fresh plan by more than
    ``budget.threshold_percent`` (see the module docstring). Deterministic: the same inputs give the same
    moves. The garbage collector is paused meanwhile, as for a planning pass (``gc_pause.py``)."""
    with gc_paused():
        return _consolidate(policy, nodes, demands, list(current), budget)


def _consolidate(
    policy: PoolPolicy,
    nodes: Sequence[NodeInventory],
    demands: Sequence[Demand],
    current: list[CurrentPlacement],
    budget: ConsolidationBudget,
) -> Consolidation:
    cur = sorted(current, key=lambda c: (c.deployment, c.ordinal, c.node, c.gpu_index))
    fresh = heuristic_plan(policy, nodes, demands).pool.gpus_used
    # the MIG layouts of GPUs in use stay as they are: a target is an instance that exists already
    ctx = build_context(policy.model_copy(update={"repartition": "Never"}), nodes, demands, cur)
    used = len({(c.node, c.gpu_index) for c in cur if (c.node, c.gpu_index) in ctx.gpu_at})
    try:
        return _consolidate_in(ctx, cur, budget, used, fresh)
    finally:
        ctx.release()


def _consolidate_in(
    ctx: Context, cur: list[CurrentPlacement], budget: ConsolidationBudget, used: int, fresh: int
) -> Consolidation:
    base = Consolidation(gpus_used=used, gpus_fresh=fresh, gpus_freed=0, placements=tuple(cur))
    if used <= fresh * (1 + budget.threshold_percent / 100):
        return base.model_copy(update={"message": f"within {budget.threshold_percent:g}% of a fresh plan"})
    if budget.max_moves <= 0:
        return base.model_copy(update={"message": "the disruption budget allows no move now"})
    run = _Run(ctx, cur, budget, goal=used - fresh)
    run.empty_gpus()
    run.drain_nodes()
    moves = run.ordered_moves()
    placements = _after(cur, moves)
    freed_nodes = tuple(
        n.name
        for n in ctx.nodes
        if n.used == 0 and n.name in run.nodes_in_use and (n.schedulable or n.name in run.drained)
    )
    message = (
        f"{len(moves)} moves free {run.freed} GPUs"
        if moves
        else "no GPU can be emptied into free room within the budget"
    )
    return base.model_copy(
        update={
            "gpus_freed": run.freed,
            "nodes_freed": freed_nodes,
            "moves": moves,
            "placements": placements,
            "message": message,
        }
    )


#: one move: (replica, its source placement, its target share)
_Step = tuple[Rep, CurrentPlacement, Choice]


@dataclass
class _Group:
    """The moves that empty ``sources`` (one GPU, or the GPUs in use of a drained node), in execution order,
    and the GPUs they free (for a drained node: its GPUs in use less the GPUs its replicas opened elsewhere)."""

    key: tuple[int, ...]
    sources: list[Gpu]
    steps: list[_Step]
    freed: int
    #: the node a drain empties (None: one GPU emptied)
    node: Node | None = None
    #: a node drained before, whose new config the moves need (they wait until it is empty)
    after: Node | None = None
    #: drained in place: the moves back onto ``node`` are break-before-make (``_Run._drain_in_place``)
    break_first: bool = False


class _Run:
    """One consolidation: the packer over the pinned running replicas, and the groups of moves found."""

    def __init__(self, ctx: Context, cur: list[CurrentPlacement], budget: ConsolidationBudget, goal: int):
        self.ctx = ctx
        self.packer = Packer(ctx, PackerOptions(consolidate=False))
        self.budget = budget
        self.goal = goal
        self.left = budget.max_moves
        self.freed = 0
        self.moved_deps: set[str] = set(budget.busy)
        self.nodes_in_use = {n.name for n in ctx.nodes if n.used}
        #: GPUs with a frozen MIG layout or MPS clients (a replica there may make room for another: ``_via_move``)
        self.trade_gpus = [
            g
            for g in ctx.gpus
            if g.role == ROLE_POOL
            and ((g.mode == MIG and g.frozen is not None) or g.mode in (MPS, TIME_SLICING))
        ]
        self.groups: list[_Group] = []
        #: names of the nodes drained (unschedulable for the rest of the run: nothing may move onto them)
        self.drained: set[str] = set()
        #: replica classes for which ``_via_move`` found nothing
        self.no_chain: set[tuple[int, int, str | None, str | None]] = set()
        kept = {(r.dep.key, r.ordinal) for r in ctx.reps if r.pinned}
        # GPUs with a running replica the planner does not keep (scaled down, displaced): its share is still
        # held, so nothing moves to or from such a GPU
        self.blocked = {
            g.gid
            for c in cur
            if (c.deployment, c.ordinal) not in kept and (g := ctx.gpu_at.get((c.node, c.gpu_index)))
        }

    def candidates(self) -> list[tuple[tuple[int, ...], Gpu]]:
        """GPUs that may be emptied, cheapest first (``_cost``)."""
        out = []
        for g in self.ctx.gpus:
            reps = g.reps
            if (
                not reps
                or len(reps) > MAX_MOVES_PER_GPU
                or g.role != ROLE_POOL
                or not g.node.schedulable
                or g.gid in self.blocked
                or any(not r.pinned or r.dep.key in self.budget.busy or r.dep.key == g.warm for r in reps)
                or len({r.dep.key for r in reps}) < len(reps)
            ):
                continue
            out.append((_cost(g), g))
        out.sort(key=lambda t: t[0])
        return out

    def _done(self) -> bool:
        return self.freed >= self.goal or self.left <= 0

    def _movable(self, g: Gpu, taken: set[str] | None = None) -> bool:
        """``g`` still holds only replicas that were running there and whose deployment has not moved yet."""
        return bool(g.reps) and all(
            r.pinned
            and r.gpu is r.cur_gpu
            and r.dep.key not in self.moved_deps
            and not (taken and r.dep.key in taken)
            for r in g.reps
        )

    def empty_gpus(self) -> None:
        """Empty candidate GPUs cheapest first until the goal is met or the budget is spent."""
        for key, g in self.candidates():
            if self._done():
                return
            if len(g.reps) > self.left or not self._movable(g):
                continue
            result = self._empty(g)
            if result is None:
                continue
            self.groups.append(_Group(key, [g], result, 1))
            self.left -= len(result)
            self.freed += 1
            self.moved_deps.update(r.dep.key for r, _, _ in result)

    def _empty(self, g: Gpu) -> list[_Step] | None:
        """Move every replica of ``g`` into room on other GPUs in use, within the budget; else undo and return
        None. The source stays held meanwhile: no target is on it. A replica that finds no room may take the
        MIG instance, MPS client slot or time-slicing room of a cheaper replica that moves into room elsewhere first
        (``_via_move``): two moves, the first one's source is the second one's target."""
        packer = self.packer
        before = [(r, r.mech, r.prof) for r in g.reps]
        saved = (g.node.mode, g.node.n, g.node.fixed, g.frozen, list(g.free_inst))
        reps = sorted(g.reps, key=lambda r: (-r.dep.size, r.dep.key, r.ordinal))
        for r in reps:
            packer.remove(r)
        taken = {r.dep.key for r in reps}
        steps: list[_Step] = []
        ok = True
        for r in reps:
            assert r.cur is not None
            choice = packer.zero_cost_room(r)
            if choice is not None and self._legal_target(choice, g):
                packer.put(r, *choice)
                steps.append((r, r.cur, choice))
                continue
            chain = self._via_move(r, g, taken) if len(steps) + 2 <= self.left else None
            if chain is None:
                ok = False
                break
            steps += chain
        if ok and len(steps) <= self.left:
            return steps
        self._undo(steps, g)
        self._restore(g, before, saved)
        return None

    def _via_move(self, r: Rep, source: Gpu, taken: set[str]) -> list[_Step] | None:
        """Room for ``r`` made by moving a replica of the same or a cheaper tier out of a share ``r`` fits (a
        MIG instance of a fitting profile, an MPS client slot whose cap holds it, time-slicing room) into
        zero-cost room elsewhere: [its move, ``r``'s move], or None."""
        packer = self.packer
        o = packer.share_options(r.dep)
        key = r.dep.class_key()
        if not (o.mig or o.mps or o.ts) or key in self.no_chain:
            return None
        for b in self._holders(r, source, o, taken):
            gpu, mech, prof = b.gpu, b.mech, b.prof
            assert gpu is not None and mech is not None and b.cur is not None and r.cur is not None
            packer.remove(b)
            packer.put(r, gpu, mech, prof)  # r takes the share first, so that b looks elsewhere
            choice = packer.zero_cost_room(b)
            if choice is None or choice[0] is gpu or not self._legal_target(choice, source):
                packer.remove(r)
                packer.put(b, gpu, mech, prof)
                continue
            packer.put(b, *choice)
            taken.add(b.dep.key)
            return [(b, b.cur, choice), (r, r.cur, (gpu, mech, prof))]
        # room is only ever taken during a run (an undone attempt leaves the state as it was), so a class that
        # found no replica to trade places with finds none later either
        self.no_chain.add(key)
        return None

    def _holders(
        self,
        r: Rep,
        source: Gpu,
        o: ShareOptions,
        taken: set[str],
    ) -> list[Rep]:
        """Replicas whose share ``r`` fits (frozen MIG instances, MPS client slots, a time-sliced GPU's room once
        they leave), cheapest to move first (lowest tier, smallest), on GPUs that keep another replica (their
        layout and mode stay)."""
        mig, mps = o.mig, o.mps
        ts_capacity = self.packer.capacity.ts_capacity
        out = []
        for g in self.trade_gpus:
            if g is source or len(g.reps) < 2 or g.gid in self.blocked or r.dep.uid in g.deps:
                continue
            profiles: tuple[int, ...] = ()
            if g.mode == MIG:
                profiles = mig.get(g.key, ())
                if not profiles or g.frozen is None:
                    continue
            elif g.mode == TIME_SLICING:
                if g.key not in o.ts:
                    continue
            elif not (g.key in mps and mps[g.key] >= g.node.n and mps_cap(g.mem_mib, g.node.n) >= r.dep.size):
                continue
            for b in g.reps:
                if (
                    (g.mode != MIG or b.prof in profiles)
                    and (g.mode != TIME_SLICING or g.ts_used - b.dep.size + r.dep.size <= ts_capacity[g.gid])
                    and b.dep.rank >= r.dep.rank
                    and b.pinned
                    and b.gpu is b.cur_gpu
                    and b.dep.key not in self.moved_deps
                    and b.dep.key not in taken
                ):
                    out.append(((-b.dep.rank, b.dep.size, g.gid, b.dep.key, b.ordinal), b))
        out.sort(key=lambda t: t[0])
        return [b for _, b in out[:_CHAIN_TRIES]]

    def _undo(self, steps: list[_Step], source: Gpu) -> None:
        """Take back ``steps`` (latest first); a replica moved out of its share to make room returns to it (the
        replicas of ``source`` are put back by ``_restore``)."""
        packer = self.packer
        for r, src, _ in reversed(steps):
            packer.remove(r)
            home = r.cur_gpu
            if home is source or home is None:
                continue
            if src.mechanism == MIG and home.geo is not None and src.mig_profile:
                packer.put(r, home, MIG, home.geo.index[src.mig_profile])
            else:
                packer.put(r, home, Mechanism(src.mechanism), -1)

    def _legal_target(self, choice: Choice, source: Gpu) -> bool:
        """A target on another GPU in use, not blocked; for MIG a free instance of a frozen layout (it exists
        already: no reconfiguration of a GPU in use)."""
        target, mech, _ = choice
        if target is source or target.gid in self.blocked:
            return False
        return mech != MIG or target.frozen is not None

    def _restore(
        self, g: Gpu, before: list[tuple[Rep, Mechanism | None, int]], saved: tuple[object, ...]
    ) -> None:
        """Put the replicas back on ``g`` exactly as they were (frozen layout and node mode included)."""
        node = g.node
        free = node.free.get(g.key, [])
        if g in free:
            free.remove(g)
        g.frozen = None
        for r, mech, prof in before:
            assert mech is not None
            self.packer.put(r, g, mech, prof)
        node.mode, node.n, node.fixed, g.frozen, g.free_inst = saved  # type: ignore[assignment]
        for x in node.gpus:
            self.packer.capacity.index_gpu(x)
        self.packer.capacity.index_node(node)

    # ------------------------------------------------------------------------------------------ node drain

    def drain_nodes(self) -> None:
        """Empty whole nodes while the goal is not met and the budget lasts (docs/planner.md §4.9, node drain).

        A node's replicas all move: into zero-cost room on GPUs in use (as :meth:`empty_gpus`), else onto a new
        GPU the packer opens (its new-GPU options, densest first) on a node with no replica (any sharing mode
        or MIG layout: nothing runs there) or on a free GPU of an MPS or time-sliced node in use as that node is
        configured; never on a node that must change its config while a replica runs there. A drain is kept
        when the pool then uses fewer GPUs (the node's GPUs in use less the GPUs opened): alone
        (:meth:`_drain_alone`), or followed by the drain of a second node whose replicas the first node, empty
        and planned again from scratch, takes denser than they sit now (:meth:`_drain_pairs`)."""
        if self._done():
            return
        capacity = self.packer.capacity
        capacity.set_fixed(self.ctx, frozenset(n.pos for n in self.ctx.nodes if n.name in self.nodes_in_use))
        for group in self.groups:  # a GPU emptied above still runs its replicas until their moves are done
            for g in group.sources:
                self._close(g)
        self._drain_alone()
        self._drain_pairs()
        if self.budget.break_before_make_tiers:
            self._drain_in_place_all()

    def _drain_alone(self) -> None:
        """Nodes whose drain alone frees GPUs (:meth:`_drain_each`)."""
        self._drain_each(
            lambda node: self._drain([node]),
            lambda node, steps, saved: self._undo_drain(steps, saved),
            lambda key, node, steps, net: self._keep_drain(key, node, steps, net, None),
        )

    def _drain_in_place_all(self) -> None:
        """Nodes drained in place (:meth:`_drain_in_place`, :meth:`_drain_each`) when make-before-break left the
        goal unmet. A kept node stays configured as planned for what moved onto it (no later move changes that)."""

        def undo(node: Node, steps: list[_Step], saved: list[_NodeState]) -> None:
            self._close_drained(node)
            self._undo_drain(steps, saved)

        def keep(key: tuple[int, ...], node: Node, steps: list[_Step], net: int) -> None:
            self._keep_drain(key, node, steps, net, None, break_first=True)
            capacity = self.packer.capacity
            capacity.fixed = capacity.fixed | {node.pos}
            capacity.index_node(node)

        self._drain_each(self._drain_in_place, undo, keep)

    def _drain_each(
        self,
        attempt: Callable[[Node], tuple[list[_Step], int, list[_NodeState]] | None],
        undo: Callable[[Node, list[_Step], list[_NodeState]], None],
        keep: Callable[[tuple[int, ...], Node, list[_Step], int], None],
    ) -> None:
        """Each candidate node is drained by ``attempt`` once and undone to score it (moves per GPU freed); then
        the best are drained for good (``keep``), cheapest first, each tried again in the state the earlier ones
        left."""
        if self._done():
            return
        scored = []
        for key, node in self._node_candidates():
            trial = attempt(node)
            if trial is None:
                continue
            steps, net, saved = trial
            undo(node, steps, saved)
            if net > 0:
                scored.append(((-(-len(steps) // net), *key), node))
        scored.sort(key=lambda t: t[0])
        for key, node in scored:
            if self._done():
                return
            trial = attempt(node) if self._drainable(node) else None
            if trial is None:
                continue
            steps, net, saved = trial
            if net <= 0 or len(steps) > self.left:
                undo(node, steps, saved)
                continue
            keep(key, node, steps, net)

    def _drain_pairs(self) -> None:
        """Two drains that free GPUs together: the first node (one of the ``_PAIR_FIRSTS`` cheapest) is drained
        and opened again as a node without replicas, so that the packer may give it any sharing mode or MIG
        layouts; then the second node is drained, onto it or elsewhere. The pair with the fewest moves per GPU
        freed is kept, until the goal is met, the budget is spent or no pair frees a GPU. The second node's
        moves wait for the first node's (``Move.after_node``): its new config needs it empty."""
        while not self._done():
            best: tuple[tuple[int, ...], Node, Node] | None = None
            for xkey, x in self._node_candidates()[:_PAIR_FIRSTS]:
                trial = self._drain([x])
                if trial is None:
                    continue
                xsteps, xnet, xsaved = trial
                self._open_drained(x)
                for ykey, y in self._node_candidates():
                    if len(xsteps) + sum(len(g.reps) for g in y.gpus) > self.left:
                        continue
                    ytrial = self._drain([y])
                    if ytrial is None:
                        continue
                    ysteps, ynet, ysaved = ytrial
                    self._undo_drain(ysteps, ysaved)
                    net = xnet + ynet
                    if net > 0:
                        score = (-(-(len(xsteps) + len(ysteps)) // net), *xkey, *ykey)
                        if best is None or score < best[0]:
                            best = (score, x, y)
                self._close_drained(x)
                self._undo_drain(xsteps, xsaved)
            if best is None or not self._pair(best[0], best[1], best[2]):
                return

    def _pair(self, key: tuple[int, ...], x: Node, y: Node) -> bool:
        """Drain ``x``, open it again, drain ``y``, and keep both when they free GPUs within the budget."""
        trial = self._drain([x])
        if trial is None:
            return False
        xsteps, xnet, xsaved = trial
        self._open_drained(x)
        ytrial = self._drain([y]) if self._drainable(y) else None
        if ytrial is None or xnet + ytrial[1] <= 0 or len(xsteps) + len(ytrial[0]) > self.left:
            if ytrial is not None:
                self._undo_drain(ytrial[0], ytrial[2])
            self._close_drained(x)
            self._undo_drain(xsteps, xsaved)
            return False
        self._keep_drain(key, x, xsteps, xnet, None)
        self._keep_drain(key, y, ytrial[0], ytrial[1], x)
        # x is configured anew for what moved onto it: no later move may change that
        capacity = self.packer.capacity
        capacity.fixed = capacity.fixed | {x.pos}
        capacity.index_node(x)
        return True

    def _open_drained(self, node: Node) -> None:
        """Offer a drained node's GPUs again, as a node without replicas (any mode or layout)."""
        node.schedulable = True
        node.free = {}
        for g in node.gpus:
            if g.role == ROLE_POOL and not g.reps:
                node.free.setdefault(g.key, []).append(g)
        capacity = self.packer.capacity
        capacity.fixed = capacity.fixed - {node.pos}
        capacity.index_node(node)

    def _close_drained(self, node: Node) -> None:
        """Undo :meth:`_open_drained` (before the drain itself is undone)."""
        node.schedulable = False
        node.free = {}
        capacity = self.packer.capacity
        capacity.fixed = capacity.fixed | {node.pos}
        capacity.index_node(node)

    def _keep_drain(
        self,
        key: tuple[int, ...],
        node: Node,
        steps: list[_Step],
        net: int,
        after: Node | None,
        break_first: bool = False,
    ) -> None:
        """Record a drain done for good."""
        sources = [g for g in node.gpus if any(r.cur_gpu is g for r, _, _ in steps)]
        self.groups.append(_Group(key, sources, steps, net, node, after, break_first))
        self.left -= len(steps)
        self.freed += net
        self.moved_deps.update(r.dep.key for r, _, _ in steps)
        self.drained.add(node.name)

    def _node_candidates(self) -> list[tuple[tuple[int, ...], Node]]:
        """Nodes that may be drained, cheapest first: the sum of the moves' costs per GPU in use, the worst
        tier, the number of replicas, the node's position."""
        out = []
        for node in self.ctx.nodes:
            if not self._drainable(node):
                continue
            reps = [r for g in node.gpus for r in g.reps]
            weight = sum(_move_weight(r) for r in reps)
            worst = max(DISRUPTION[r.dep.tier] for r in reps)
            key: tuple[int, ...] = (weight * 100 // node.used, worst, len(reps), node.pos)
            out.append((key, node))
        out.sort(key=lambda t: t[0])
        return out

    def _drainable(self, node: Node) -> bool:
        """A schedulable node in use, all pool GPUs, none kept warm or blocked, whose replicas all run there
        still, are kept, of deployments not busy or moved and distinct, and no more than the budget left."""
        if not node.used or not node.schedulable or node.name in self.drained:
            return False
        reps = []
        for g in node.gpus:
            if g.role != ROLE_POOL or g.gid in self.blocked or (g.warm is not None and g.reps):
                return False
            reps += g.reps
        if len(reps) > self.left:
            return False
        return all(r.pinned and r.gpu is r.cur_gpu and r.dep.key not in self.moved_deps for r in reps)

    def _close(self, g: Gpu) -> None:
        """Offer a free GPU no more in this run (its replicas leave it only once their moves are done)."""
        free = g.node.free.get(g.key, [])
        if g in free:
            free.remove(g)
            self.packer.capacity.index_node(g.node)

    def _drain(self, nodes: Sequence[Node]) -> tuple[list[_Step], int, list[_NodeState]] | None:
        """Move every replica of ``nodes`` elsewhere (highest tier first, largest first, as the packer places)
        with the nodes closed; returns (the moves, GPUs freed net, what :meth:`_undo_drain` needs), or None
        (the state as before)."""
        packer = self.packer
        reps = sorted((r for node in nodes for g in node.gpus for r in g.reps), key=_drain_order)
        saved = [_save_node(node) for node in nodes]
        before = sum(n.used for n in self.ctx.nodes)
        for node in nodes:
            node.schedulable = False
        for r in reps:
            packer.remove(r)
        steps: list[_Step] = []
        for r in reps:
            if not self._place_drained(r, steps):
                self._undo_drain(steps, saved)
                return None
        return steps, before - sum(n.used for n in self.ctx.nodes), saved

    def _place_drained(self, r: Rep, steps: list[_Step], home: Node | None = None) -> bool:
        """Put a drained replica into zero-cost room (``_drain_target``, or any share of ``home``: the node
        drained in place, empty and planned again) or onto a new GPU, and record its move; False when nothing
        takes it."""
        assert r.cur is not None
        choice = self.packer.zero_cost_room(r)
        if choice is not None and (self._drain_target(choice) or choice[0].node is home):
            self.packer.put(r, *choice)
        elif not self.packer.new_gpu_room(r):
            return False
        assert r.gpu is not None and r.mech is not None
        steps.append((r, r.cur, (r.gpu, r.mech, r.prof)))
        return True

    def _drain_in_place(self, node: Node) -> tuple[list[_Step], int, list[_NodeState]] | None:
        """Drain ``node`` and plan it again for its own BestEffort replicas (break-before-make,
        docs/planner.md §4.9 step 7): the replicas that may not break first (other tiers, a second replica of a
        deployment) move elsewhere make-before-break with the node closed, as :meth:`_drain` moves them; then
        the node is opened as a node without replicas (any sharing mode, clients per GPU or MIG layout) and the
        replicas that may break first take room anywhere, the node included. Returns as :meth:`_drain`, with
        the node open (undo: :meth:`_close_drained`, then :meth:`_undo_drain`), or None (the state as before,
        also when no replica may break first)."""
        packer = self.packer
        reps = sorted((r for g in node.gpus for r in g.reps), key=_drain_order)
        first: list[Rep] = []
        seen: set[str] = set()
        for r in reps:
            if (
                r.dep.tier == BEST_EFFORT
                and r.dep.tier in self.budget.break_before_make_tiers
                and r.dep.key not in seen
            ):
                first.append(r)
            seen.add(r.dep.key)
        if not first:
            return None
        saved = [_save_node(node)]
        before = sum(n.used for n in self.ctx.nodes)
        node.schedulable = False
        for r in reps:
            packer.remove(r)
        steps: list[_Step] = []
        ok = all(self._place_drained(r, steps) for r in reps if r not in first)
        if ok:
            self._open_drained(node)
            ok = all(self._place_drained(r, steps, node) for r in first)
            if not ok:
                self._close_drained(node)
        if not ok:
            self._undo_drain(steps, saved)
            return None
        return steps, before - sum(n.used for n in self.ctx.nodes), saved

    def _drain_target(self, choice: Choice) -> bool:
        """A zero-cost share a drained replica may take: not blocked; on MIG a free instance of a frozen layout
        or of a GPU opened in this run on a node without replicas (its layout is new: nothing runs there)."""
        target, mech, _ = choice
        if target.gid in self.blocked:
            return False
        return mech != MIG or target.frozen is not None or target.node.name not in self.nodes_in_use

    def _undo_drain(self, steps: list[_Step], saved: list[_NodeState]) -> None:
        """Take back a drain: the moved replicas off their targets, the nodes' replicas back exactly as they
        were (layouts, mode and free GPUs included)."""
        packer = self.packer
        for r, _, _ in reversed(steps):
            packer.remove(r)
        for st in saved:
            node = st.node
            node.schedulable = True
            for g, _, _ in st.gpus:
                g.frozen = None
            for r, home, mech, prof in st.reps:
                assert home is not None and mech is not None
                packer.put(r, home, mech, prof)
            node.mode, node.n, node.fixed = st.mode, st.n, st.fixed
            node.free = st.free
            for g, frozen, free_inst in st.gpus:
                g.frozen, g.free_inst = frozen, free_inst
                packer.capacity.index_gpu(g)
            packer.capacity.index_node(node)

    def ordered_moves(self) -> tuple[Move, ...]:
        """The moves in execution order: groups cheapest first (the order they were found in), and within a
        group the order found (a move that makes room comes before the move into that room)."""
        out: list[Move] = []
        for group in self.groups:
            where = ", ".join(f"{g.node.name}/{g.index}" for g in group.sources)
            n = len(group.steps)
            reason = f"frees GPU {where} ({n} move{'s' if n > 1 else ''})"
            if group.node is not None:
                reason = _drain_reason(group)
            emptied = sorted({g.node.name for g in group.sources if not g.node.used})
            if emptied:
                reason += f"; node {', '.join(emptied)} holds no replica afterwards"
            after = group.after.name if group.after is not None else None
            # drained in place: every make-before-break move off the node comes before the moves back onto it
            steps = sorted(group.steps, key=lambda step: group.break_first and step[2][0].node is group.node)
            for r, src, choice in steps:
                if group.break_first and choice[0].node is group.node:
                    # back onto its own node, planned again: its old share goes first (break-before-make)
                    assert group.node is not None
                    out.append(_move(r, src, choice, reason, group.node.name, make_before_break=False))
                    continue
                out.append(_move(r, src, choice, reason, after if choice[0].node is group.after else None))
        return tuple(out)


def _drain_reason(group: _Group) -> str:
    """Why a drained node's replicas move (``ordered_moves``)."""
    assert group.node is not None
    n = len(group.steps)
    text = (
        f"empties node {group.node.name} ({len(group.sources)} GPUs in use, {n} move{'s' if n > 1 else ''}) "
        "so that its sharing mode and MIG layouts can be planned again"
    )
    if group.after is not None:
        text += f"; partly onto node {group.after.name}, emptied first and planned again"
    if group.break_first:
        text += (
            "; no share is free for its BestEffort replicas while they run, so they stop first and start on it "
            "again once it is empty and configured anew (break-before-make)"
        )
    if group.freed > 0:
        text += f"; the pool uses {group.freed} GPU{'s' if group.freed > 1 else ''} fewer"
    else:
        text += "; the node drained after it frees GPUs"
    return text


@dataclass
class _NodeState:
    """What a drain changes on its node, to put it back (``_Run._undo_drain``)."""

    node: Node
    mode: NodeMode
    n: int
    fixed: bool
    free: dict[str, list[Gpu]]
    gpus: list[tuple[Gpu, Counts | None, list[int]]]
    reps: list[tuple[Rep, Gpu | None, Mechanism | None, int]]


def _drain_order(r: Rep) -> tuple[int, int, str, int]:
    """The order a drain places its replicas in: highest tier first, largest first, as the packer places."""
    return (r.dep.rank, -r.dep.size, r.dep.key, r.ordinal)


def _save_node(node: Node) -> _NodeState:
    """What a drain of ``node`` changes, to put it back."""
    return _NodeState(
        node=node,
        mode=node.mode,
        n=node.n,
        fixed=node.fixed,
        free={k: list(v) for k, v in node.free.items()},
        gpus=[(g, g.frozen, list(g.free_inst)) for g in node.gpus],
        reps=[(r, r.gpu, r.mech, r.prof) for g in node.gpus for r in g.reps],
    )


def _move(
    r: Rep,
    src: CurrentPlacement,
    choice: Choice,
    reason: str,
    after: str | None = None,
    make_before_break: bool = True,
) -> Move:
    target, mech, prof = choice
    profile = target.geo.profiles[prof].name if mech == MIG and target.geo is not None else None
    dst = CurrentPlacement(
        deployment=r.dep.key,
        ordinal=r.ordinal,
        node=target.node.name,
        gpu_index=target.index,
        mechanism=mech,
        mig_profile=profile,
    )
    return Move(
        deployment=r.dep.key,
        ordinal=r.ordinal,
        tier=r.dep.demand.tier,
        source=src,
        target=dst,
        make_before_break=make_before_break,
        reason=reason,
        after_node=after,
    )


def _cost(g: Gpu) -> tuple[int, ...]:
    """How costly it is to empty ``g`` (lower first): its replicas (the moves it takes: the budget counts
    moves, so the fewest moves per GPU freed go first), the memory they hold (per mille of the GPU: the less
    room they take elsewhere, the more is left for the next GPUs), then the sum of the moves' costs
    (``_move_weight``: a BestEffort move costs least, a Guaranteed one most, a replica on MIG one more), the
    worst tier on it, GPUs in use on its node (whole nodes empty first), position."""
    worst = max(DISRUPTION[r.dep.tier] for r in g.reps)
    load = sum(r.dep.size for r in g.reps) * 1000 // g.mem
    weight = sum(_move_weight(r) for r in g.reps)
    return (len(g.reps), load, weight, worst, g.node.used, g.gid)


def _move_weight(r: Rep) -> int:
    """The cost of moving one replica: its tier's disruption (BestEffort 1, Burstable 2, Guaranteed 3), one
    more on MIG (its source instance is what a layout change needs)."""
    return DISRUPTION[r.dep.tier] + (1 if r.mech == MIG else 0)


def _after(cur: list[CurrentPlacement], moves: tuple[Move, ...]) -> tuple[CurrentPlacement, ...]:
    """The current placements with every move done."""
    target = {(m.deployment, m.ordinal): m.target for m in moves}
    return tuple(target.get((c.deployment, c.ordinal), c) for c in cur)
