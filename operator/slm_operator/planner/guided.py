"""Plans packed from the node-aware program's incumbent (``nodemip.Guide``; docs/planner.md §5.2).

The heuristic places tier by tier, so the tier placed first takes the shares that would serve a later tier
best (at 1,000 GPUs: Burstable fills the large GPUs' MPS nodes, and BestEffort then time-slices smaller GPUs),
and it decides node modes one GPU at a time. The node-aware program decides for all tiers at once which nodes
take which mode and which classes take which shares, and its optimum is within a few GPUs of a plan. This
packer follows it:

1. **Node modes.** Free nodes get the modes the guide gives their group (model, GPUs per node), as many as it
   says (nodes where replicas run keep theirs and count against their mode); other free nodes stay free.
2. **Quotas.** Each class may take each kind of share (mechanism, GPU model, MPS clients per node) as many
   times as the guide's volume solution says, rounded; running replicas spend their class's quota first.
3. **MIG layouts, whole GPUs at a time.** Each GPU the guide gives a MIG layout gets that layout's instances,
   each filled by a replica whose class has quota for the profile (higher tier first, then larger).
4. **Time-sliced GPUs, whole GPUs at a time.** The guide's time-sliced replicas of a GPU model fill that
   model's time-sliced GPUs one GPU at a time, each step taking the largest replica that leaves room for the
   smallest ones in the slots still free (so memory and the replica limit run out together: first fit
   decreasing fills memory with a few large replicas and strands slots).
5. **Guided pass.** Tier by tier as the packer does, each replica restricted to its class's shares with quota
   left and to the guided nodes in their modes (no mode change, no fewer MPS clients), and no last resort.
6. **Open pass.** Guided nodes nothing went to are free again; then the packer's own pass for every replica
   still waiting, with no restriction (a guide is a volume solution: some replicas always remain), and
   consolidation.

The plan is legal whatever the guide says (the guide only narrows and orders the packer's own choices), so a
stale guide, one for other demands, costs packing quality and nothing else; ``portfolio.py`` keeps the better
of this plan and the heuristic's. Pools with tenants are packed as the heuristic does. Pure.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Sequence

from slm_operator.planner.assemble import build_plan
from slm_operator.planner.capacity import CapacityIndex
from slm_operator.planner.gc_pause import gc_paused
from slm_operator.planner.mig import geometry
from slm_operator.planner.model import CurrentPlacement, Demand, NodeInventory, Plan, PoolPolicy
from slm_operator.planner.nodemip import Guide, ShareKind
from slm_operator.planner.packer import (
    DEFAULT_OPTIONS,
    Choice,
    NewGpuOption,
    Packer,
    PackerOptions,
    ShareOptions,
    _Found,
    _NodeSearch,
)
from slm_operator.planner.state import (
    Context,
    Dep,
    Gpu,
    Node,
    Rep,
    build_context,
    class_fits,
)
from slm_operator.planner.targets import MigTargets
from slm_operator.planner.vocabulary import (
    BEST_EFFORT,
    EXCLUSIVE,
    MIG,
    MPS,
    NODE_FREE,
    NODE_MPS,
    NODE_NONE,
    NODE_TIME_SLICING,
    ROLE_POOL,
    TIER_RANK,
    TIME_SLICING,
    Tier,
)

#: a quota is spent when less than this much of it is left (volumes are fractional)
_HALF = 0.5


class _GuidedIndex(CapacityIndex):
    """While the guided passes run, a free GPU is offered only as its guided node's mode gives it."""

    def __init__(self, ctx: Context, targets: MigTargets, guiding: bool) -> None:
        self.guiding = guiding
        super().__init__(ctx, targets)

    def node_keys(self, n: Node, model: str, mig_capable: bool) -> list[tuple[object, ...]]:
        if not self.guiding:
            return super().node_keys(n, model, mig_capable)
        if n.mode == NODE_FREE:
            return []
        if n.mode == NODE_MPS:
            return [(MPS, model, n.n)]
        if n.mode == NODE_TIME_SLICING:
            return [(TIME_SLICING, model)]
        keys: list[tuple[object, ...]] = [(MIG, model)] if mig_capable else []
        keys.append((EXCLUSIVE, model))
        return keys


def _kind(r: Rep) -> ShareKind:
    """The kind of share a placed replica holds, as the guide names it."""
    g = r.gpu
    assert g is not None and r.mech is not None
    if r.mech == MIG:
        return (MIG.value, g.key, r.prof)
    if r.mech == MPS:
        return (MPS.value, g.key, g.node.n)
    return (r.mech.value, g.key, 0)


def _pool_gpus(n: Node) -> list[Gpu]:
    return [g for g in n.gpus if g.role == ROLE_POOL]


class GuidedPacker(Packer):
    """The packer, following a :class:`Guide` (module docstring)."""

    def __init__(self, ctx: Context, guide: Guide, options: PackerOptions = DEFAULT_OPTIONS) -> None:
        self.guide = guide
        #: pools with tenants are packed as the heuristic does
        self.guiding = not ctx.policy.tenants
        #: nodes given a mode by the guide (free again at the end when nothing was placed there)
        self.preset: list[Node] = []
        super().__init__(ctx, options)  # presets the nodes' modes, then indexes (``_index``)
        #: per class (tier rank, size): replicas each kind of share may still take
        self.quota: dict[tuple[int, int], dict[ShareKind, float]] = {}
        for (tier, size), shares in guide.shares.items():
            self.quota[(TIER_RANK[Tier(tier)], size)] = dict(shares)
        for r in ctx.reps:
            if r.gpu is not None and r.gpu.role == ROLE_POOL:
                self._spend(r)
        #: the shares of the replica being placed: allowed kinds, and MPS (model, clients per GPU)
        self.allow: frozenset[ShareKind] = frozenset()
        self.mps_ns: frozenset[tuple[str, int]] = frozenset()
        self.guided_options: dict[tuple[object, ...], ShareOptions] = {}
        self.fits: dict[int, tuple[dict[str, tuple[int, ...]], dict[str, int], set[str], set[str]]] = {}

    # ------------------------------------------------------------------------------------------ setup

    def _index(self) -> CapacityIndex:
        if self.guiding:
            self._preset_nodes()
        self.guided_index = _GuidedIndex(self.ctx, self.targets, self.guiding)
        return self.guided_index

    def _preset_nodes(self) -> None:
        """Give free nodes the guide's modes, group by group; nodes in use count against their own mode."""
        groups: dict[tuple[str, int], list[Node]] = {}
        for n in self.ctx.nodes:
            gpus = _pool_gpus(n)
            models = {g.key for g in gpus}
            if n.schedulable and len(models) == 1:
                groups.setdefault((gpus[0].key, len(gpus)), []).append(n)
        for group, members in sorted(groups.items()):
            wanted = dict(self.guide.node_modes.get(group, {}))
            free = []
            for n in members:
                if n.mode == NODE_FREE:
                    free.append(n)
                    continue
                mode = (n.mode.value, n.n if n.mode == NODE_MPS else 0)
                if wanted.get(mode, 0) > 0:
                    wanted[mode] -= 1
            model = self.ctx.models[group[0]]
            order = sorted(
                (
                    (mode, count)
                    for mode, count in wanted.items()
                    if self._legal_mode(mode, model.mps_max_clients)
                ),
                key=lambda kv: (kv[0][0] != "MPS", -kv[0][1], kv[0][0]),
            )
            i = 0
            for (kind, clients), count in order:
                for n in free[i : i + max(0, count)]:
                    if kind == NODE_MPS.value:
                        n.mode, n.n = NODE_MPS, clients
                    elif kind == NODE_TIME_SLICING.value:
                        n.mode, n.n = NODE_TIME_SLICING, self.ts_limit
                    else:
                        n.mode = NODE_NONE
                    self.preset.append(n)
                i += max(0, count)

    def _legal_mode(self, mode: tuple[str, int], model_clients: int) -> bool:
        """A mode the policy allows now (a guide solved for another policy may name one it does not)."""
        kind, clients = mode
        if kind == NODE_MPS.value:
            limit = min(self.ctx.policy.mps_max_clients_per_gpu, model_clients)
            return MPS in self.ctx.allowed and 2 <= clients <= limit
        if kind == NODE_TIME_SLICING.value:
            return TIME_SLICING in self.ctx.allowed
        return kind == NODE_NONE.value

    def _spend(self, r: Rep) -> None:
        q = self.quota.get((r.dep.rank, r.dep.size))
        if q is not None:
            kind = _kind(r)
            if kind in q:
                q[kind] -= 1

    # ------------------------------------------------------------------------------------------ driver

    def run(self) -> None:
        if not self.guiding:
            super().run()
            return
        waiting = [r for r in self.ctx.reps if r.gpu is None and r.unplaced is None]
        self._mig_bins()
        self._time_sliced_bins()
        for tier in Tier:
            queue = [r for r in self.ctx.reps if r.dep.tier is tier and r.gpu is None and r.unplaced is None]
            queue.sort(key=lambda r: (-r.dep.size, r.ordinal, r.dep.order, r.dep.key))
            for r in queue:
                self.place(r)
        self.guiding = self.guided_index.guiding = False
        self.options_cache.clear()
        self.dep_options.clear()
        for r in waiting:
            if r.gpu is None:
                r.unplaced = None
        for n in self.preset:  # guided nodes nothing went to are free for the open pass
            if not n.used and not n.whole:
                n.mode, n.n = NODE_FREE, 0
        for n in self.ctx.nodes:
            self.capacity.index_node(n)
        super().run()

    def _shares(self, r: Rep, g: Gpu) -> bool:
        """Whether ``r`` would share ``g`` with its deployment (or, under ``Required`` spread, ``g``'s node)."""
        uid = r.dep.uid
        return uid in g.deps or (self.spread == "Required" and uid in g.node.deps)

    def _fits(self, dep: Dep) -> tuple[dict[str, tuple[int, ...]], dict[str, int], set[str], set[str]]:
        """Every share the class may take (unnarrowed): the whole-GPU steps place only what is legal."""
        fits = self.fits.get(dep.uid)
        if fits is None:
            fits = self.fits[dep.uid] = class_fits(self.ctx, dep)
        return fits

    def _queue(self) -> list[Rep]:
        """Replicas still waiting, in the packer's order: tier, then larger first."""
        reps = [r for r in self.ctx.reps if r.gpu is None and r.unplaced is None]
        reps.sort(key=lambda r: (r.dep.rank, -r.dep.size, r.ordinal, r.dep.order, r.dep.key))
        return reps

    def _mig_bins(self) -> None:
        """Step 3: the guide's MIG layouts, a GPU at a time, on the guided nodes' free GPUs."""
        for m, layouts in sorted(self.guide.mig_layouts.items()):
            geo = geometry(m)
            if geo is None:
                continue
            waiting: dict[int, list[Rep]] = {}
            for r in self._queue():
                q = self.quota.get((r.dep.rank, r.dep.size))
                for p in self._fits(r.dep)[0].get(m, ()):
                    kind = (MIG.value, m, p)
                    if q is not None and q.get(kind, 0) >= _HALF:
                        q[kind] -= 1
                        waiting.setdefault(p, []).append(r)
                        break
            on_ts = self.guide.mig_on_time_slicing.get(m, 0)
            gpus = [n for n in self.ctx.nodes if n.mode == NODE_NONE and n.free.get(m)]
            gpus += [n for n in self.ctx.nodes if n.mode == NODE_TIME_SLICING and n.free.get(m)][:on_ts]
            nodes = iter(gpus)
            node: Node | None = next(nodes, None)
            for counts, copies in sorted(layouts.items(), key=lambda kv: (-max(kv[0]), kv[0])):
                profiles = [p for p in range(len(counts)) for _ in range(counts[p])]
                profiles.sort(key=lambda p: -geo.profiles[p].memory_bytes)
                for _ in range(copies):
                    while node is not None and not node.free.get(m):
                        node = next(nodes, None)
                    if node is None:
                        break
                    self._fill_mig(node, m, profiles, waiting)
            for p, reps in waiting.items():
                for r in reps:
                    q = self.quota[(r.dep.rank, r.dep.size)]
                    q[(MIG.value, m, p)] += 1

    def _fill_mig(self, node: Node, m: str, profiles: list[int], waiting: dict[int, list[Rep]]) -> None:
        """One GPU of ``node`` with the instances ``profiles``, each given the first waiting replica of its
        profile whose deployment is not on the GPU yet."""
        g = node.free[m][0]
        opened = False
        for p in profiles:
            reps = waiting.get(p)
            if not reps:
                continue
            i = next((i for i, r in enumerate(reps) if not self._shares(r, g)), -1)
            if i < 0:
                continue
            r = reps.pop(i)
            if not opened:
                self._open(r, node, NewGpuOption(MIG, m, p, 1, True), p)
                opened = True
            else:
                self._put(r, g, MIG, p)

    def _time_sliced_bins(self) -> None:
        """Step 4: the guide's time-sliced replicas, a GPU at a time, on the guided nodes' free GPUs."""
        limit = self.ts_limit
        by_model: dict[str, list[Rep]] = {}
        for r in self._queue():
            if r.dep.tier is not BEST_EFFORT:
                continue
            q = self.quota.get((r.dep.rank, r.dep.size))
            ts = self._fits(r.dep)[2]
            for kind, left in (q or {}).items():
                if kind[0] == TIME_SLICING.value and kind[1] in ts and left >= _HALF:
                    q[kind] -= 1  # type: ignore[index]
                    by_model.setdefault(kind[1], []).append(r)
                    break
        for m, reps in sorted(by_model.items()):
            reps.sort(key=lambda r: (r.dep.size, r.dep.key, r.ordinal))
            sizes = [r.dep.size for r in reps]
            option = NewGpuOption(TIME_SLICING, m, 0, limit, True)
            for node in [n for n in self.ctx.nodes if n.mode == NODE_TIME_SLICING]:
                while reps and node.free.get(m):
                    if not self._fill_time_sliced(node, node.free[m][0], option, reps, sizes):
                        break
            for r in reps:
                self.quota[(r.dep.rank, r.dep.size)][(TIME_SLICING.value, m, 0)] += 1

    def _fill_time_sliced(
        self, node: Node, g: Gpu, option: NewGpuOption, reps: list[Rep], sizes: list[int]
    ) -> bool:
        """Fill one free GPU: each step the largest replica that leaves room for the smallest ones in the free
        slots still to fill. ``reps`` is sorted by size, ``sizes`` its sizes; returns whether any was placed."""
        free, slots = self.capacity.ts_capacity[g.gid], self.ts_limit
        placed = 0
        while slots and reps:
            keep = min(slots - 1, len(reps) - 1)
            i = bisect_right(sizes, free - sum(sizes[:keep])) - 1
            if i < keep:  # too little room to keep: the largest that fits
                i = bisect_right(sizes, free) - 1
            while i >= 0 and self._shares(reps[i], g):
                i -= 1
            if i < 0:
                break
            r = reps.pop(i)
            sizes.pop(i)
            if not placed:
                self._open(r, node, option, 0)
            else:
                self._put(r, g, TIME_SLICING, -1)
            placed += 1
            free -= r.dep.size
            slots -= 1
        return placed > 0

    # ------------------------------------------------------------------------------------------ step 5

    def place(self, r: Rep, last_resort: bool = False) -> bool:
        if not self.guiding:
            return super().place(r, last_resort)
        q = self.quota.get((r.dep.rank, r.dep.size))
        allow = frozenset(k for k, v in q.items() if v >= _HALF) if q else frozenset()
        if not allow:
            return False
        self.allow = allow
        self.mps_ns = frozenset((k[1], k[2]) for k in allow if k[0] == MPS.value)
        super().place(r)
        if r.gpu is None:
            r.unplaced = None
            return False
        self._spend(r)
        return True

    def share_options(self, dep: Dep) -> ShareOptions:
        if not self.guiding:
            return super().share_options(dep)
        key = (dep.class_key(), frozenset((k[0], k[1]) for k in self.allow))
        o = self.guided_options.get(key)
        if o is None:
            o = self.guided_options[key] = self._share_options(dep)
        return o

    def _class_fits(self, dep: Dep) -> tuple[dict[str, tuple[int, ...]], dict[str, int], set[str], set[str]]:
        mig, mps, ts, ex = super()._class_fits(dep)
        if not self.guiding:
            return mig, mps, ts, ex
        allow = {(k[0], k[1]) for k in self.allow}
        return (
            {m: fits for m, fits in mig.items() if (MIG.value, m) in allow},
            {m: n for m, n in mps.items() if (MPS.value, m) in allow},
            {m for m in ts if (TIME_SLICING.value, m) in allow},
            {m for m in ex if (EXCLUSIVE.value, m) in allow},
        )

    def _fewer_mps_clients(self, r: Rep, o: ShareOptions, used_only: bool = False) -> bool:
        return False if self.guiding else super()._fewer_mps_clients(r, o, used_only)

    def _find_node(self, option: NewGpuOption, dep: Dep) -> tuple[Node | None, int, int]:
        if not self.guiding or option.kind != MPS:
            return super()._find_node(option, dep)
        search = _NodeSearch(self, option.kind, option.param, dep)
        # the guide's client counts for the class that still hold it (the option's count is the most that do)
        clients = sorted((n for m, n in self.mps_ns if m == option.model and n <= option.param), reverse=True)
        hit = search.scan([(MPS, option.model, n) for n in clients])
        if hit is not None:
            return hit[0], 0, hit[1]
        settled = search.soft or search.hard
        if settled is not None:
            return settled[0], 1, settled[1]
        return None, 1, option.param

    def _mps_room(self, dep: Dep, o: ShareOptions, same_gpu_ok: bool, found: _Found) -> _Found:
        if not self.guiding:
            return super()._mps_room(dep, o, same_gpu_ok, found)
        capacity = self.capacity
        for cap, m, clients in capacity.mps_caps:
            if cap < dep.size or (m, clients) not in self.mps_ns:
                continue
            g, on_node = self._pick(capacity.mps_open[(m, clients)], dep.uid, same_gpu_ok)
            if g is None:
                continue
            key = (on_node if self.spread_applies else 0, 0, cap - dep.size, 0)
            choice: Choice = (g, MPS, -1)
            if found is None or key < found[1]:
                found = (choice, key)
            if on_node == 0:
                break
        return found


def guided_context(
    policy: PoolPolicy,
    nodes: Sequence[NodeInventory],
    demands: Sequence[Demand],
    guide: Guide,
    current: Iterable[CurrentPlacement] = (),
) -> Context:
    """The packed context of a guided plan (the caller releases it)."""
    ctx = build_context(policy, nodes, demands, list(current))
    GuidedPacker(ctx, guide).run()
    return ctx


def guided_plan(
    policy: PoolPolicy,
    nodes: Sequence[NodeInventory],
    demands: Sequence[Demand],
    guide: Guide,
    current: Iterable[CurrentPlacement] = (),
) -> Plan:
    """The plan :class:`GuidedPacker` packs from ``guide``, with the garbage collector paused."""
    with gc_paused():
        ctx = guided_context(policy, nodes, demands, guide, current)
        try:
            return build_plan(ctx).model_copy(update={"solver": "guided"})
        finally:
            ctx.release()


__all__ = ["GuidedPacker", "guided_context", "guided_plan"]
