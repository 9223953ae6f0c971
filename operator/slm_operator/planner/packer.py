"""The packer: tier-ordered first-fit-decreasing over shares, one replica at a time (docs/planner.md section 4).

Order: tiers by priority (Guaranteed, Burstable, BestEffort); within a tier, largest estimate first; equal
sizes interleave deployments (ordinal first) so that the replicas of one deployment land on different GPUs.
Running replicas are pinned first (``state.build_context``), so a plan with ``current`` only places the delta.
Before a tier is placed, its MIG demand becomes layout targets for the GPUs it will open (``targets.py``).

For one replica :meth:`Packer.place` tries, in order:

1. *zero cost* (:meth:`Packer._zero_cost`): a share on a GPU that already holds replicas. Holes first (a
   legal MIG instance on an open MIG GPU, a free instance of a frozen layout, a free MPS client slot whose cap
   holds the estimate), least wasted memory first; then room on a time-sliced GPU (best fit by free memory).
2. fewer MPS clients per GPU on a node, when that lets it fit on a GPU already in use
   (:meth:`Packer._fewer_mps_clients`).
3. *a new GPU* (:meth:`Packer._new_gpu`): the option with the most replicas of this size per GPU (MIG
   profile, MPS clients, time-slicing replicas, whole GPU; densities within 15 % of the best count as equal),
   ties to the GPU model with less memory; on a node that already has that mode before a fresh node.
4. fewer MPS clients on a free GPU of an MPS node; Burstable and BestEffort: a whole GPU (last resort).
5. second pass over the tier: the same GPU as another replica of the deployment, then (Guaranteed and
   Burstable) :meth:`Packer._preempt` lower-tier replicas (BestEffort first, fewest first).

Then :meth:`Packer.consolidate` empties lightly used GPUs where it can, and unplaced BestEffort replicas
:meth:`Packer.borrow` lendable reserved GPUs (whole GPUs). Open capacity is looked up in
:class:`~slm_operator.planner.capacity.CapacityIndex`.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple

from slm_operator.planner.capacity import BUCKET_SHIFT, FRESH, CapacityIndex
from slm_operator.planner.configured import find_configured, free_gpu_of, fresh_node
from slm_operator.planner.model import SpreadPolicy
from slm_operator.planner.state import (
    Context,
    Dep,
    Gpu,
    Node,
    Rep,
    attach,
    class_fits,
    detach,
    mps_cap,
    unfit_reason,
)
from slm_operator.planner.targets import MigTargets
from slm_operator.planner.tenants import EPS, TenantBook, estimate_of
from slm_operator.planner.vocabulary import (
    BEST_EFFORT,
    EXCLUSIVE,
    GUARANTEED,
    MIG,
    MPS,
    NODE_FREE,
    NODE_MPS,
    NODE_NONE,
    NODE_TIME_SLICING,
    ROLE_POOL,
    ROLE_RESERVED,
    TIME_SLICING,
    EvictionReason,
    Mechanism,
    Tier,
    UnplacedReason,
)

#: candidates looked at when preferring a node without the deployment
_SCAN = 8
#: least loaded GPUs the consolidation pass tries to empty
_CONSOLIDATE_MAX = 256
#: GPUs holding more replicas than this are not emptied by consolidation
_CONSOLIDATE_REPLICAS = 4
#: densities within this fraction of the best count as equal (``NewGpuOrder.TOLERANT``)
_DENSITY_TOLERANCE = 0.85
_KIND_ORDER = {MIG: 0, TIME_SLICING: 1, MPS: 2, EXCLUSIVE: 3}
#: BestEffort prefers time-slicing on ties: its leftover memory stays usable by other replicas
_KIND_ORDER_BEST_EFFORT = {
    TIME_SLICING: 0,
    MPS: 1,
    MIG: 2,
    EXCLUSIVE: 3,
}
#: evictions that gave the replica's GPU to a reservation or segment
_GROUP_EVICTIONS = frozenset(
    {EvictionReason.RESERVED_CAPACITY, EvictionReason.RESERVATION_CLAIMED, EvictionReason.SEGMENT_CAPACITY}
)
#: ``_preempt``: the whole GPU is freed and opened as a MIG GPU with the best profile
_OPEN_AS_MIG = -2


class NewGpuOrder(StrEnum):
    """How the new-GPU options of a replica class are ranked."""

    TOLERANT = "Tolerant"  # densities within 15 % of the best are equal; then less GPU memory
    MEMORY = "Memory"  # Guaranteed: least GPU memory per replica first; other tiers as DENSITY
    DENSITY = "Density"  # strictly most replicas per GPU first


@dataclass(frozen=True, slots=True)
class PackerOptions:
    """One variant of the packer (``run_heuristic`` keeps the best of a few)."""

    #: an open MPS node qualifies for a new GPU down to this percentage of the best clients per GPU
    mps_density_pct: int = 75
    #: node spread; None: the pool policy's
    spread: SpreadPolicy | None = None
    #: run the consolidation pass after all tiers
    consolidate: bool = True
    new_gpu_order: NewGpuOrder = NewGpuOrder.TOLERANT
    #: MIG layout targets while a tier's first pass runs
    mig_targets: bool = True


DEFAULT_OPTIONS = PackerOptions()


class NewGpuOption(NamedTuple):
    """A way to open a new GPU for a replica class."""

    kind: Mechanism
    model: str
    #: MIG profile index, MPS clients per GPU, or 0
    param: int
    #: replicas of the class per GPU
    density: int
    fresh_ok: bool


class _PreemptKey(NamedTuple):
    """Sort key of a way to preempt (lower first): lowest tier evicted first, fewest replicas, (pools with
    tenants: the lowest-priority replicas), lowest gid."""

    neg_best_rank: int
    evicted: int
    #: minus the priority position of the most important evicted replica (0 without tenants)
    neg_last: int
    gid: int


class _LowerMpsKey(NamedTuple):
    """Sort key of a way to lower an MPS node's clients per GPU (lower first)."""

    free_gpu: int  # 1 for a free GPU of the node, 0 for a GPU in use
    clients_lost: int
    gid: int


#: How good a zero-cost share is; lower is better, compared as a plain tuple, field by field:
#:
#: 0. node has the deployment: 1 when the node already holds the deployment and node spread applies
#: 1. time-sliced: 1 for room on a time-sliced GPU (holes, MIG instances and MPS client slots, come first)
#: 2. waste: memory of the share that the replica does not use
#: 3. emptiness: MIG, minus the memory slices in use once the instance is added (fullest layout first)
#:
#: Not a NamedTuple: the zero-cost search builds and compares a key per candidate, and a NamedTuple costs
#: ~150 ns more to build (``tuple.__new__``) and ~25 ns more per field read than a plain tuple and an index.
ZeroCostKey = tuple[int, int, int, int]

# NewGpuOption(...) runs a Python-level __new__ (~240 ns); every new packer builds the new-GPU options of each
# replica class, so they call tuple.__new__ (~100 ns)
_new_tuple = tuple.__new__

#: a share: (GPU, mechanism, MIG profile index or -1)
Choice = tuple[Gpu, Mechanism, int]
#: the best zero-cost share so far and its key
_Found = tuple[Choice, ZeroCostKey] | None


@dataclass(slots=True)
class ShareOptions:
    """Share options of one class of replicas (tier, size, explicit share)."""

    mig: dict[str, tuple[int, ...]]
    mps: dict[str, int]
    ts: tuple[str, ...]
    ex: set[str]
    #: new-GPU options, best first
    news: list[NewGpuOption]
    #: whole GPU only as a last resort (Burstable, BestEffort)
    ex_last: list[str]
    reason: tuple[UnplacedReason, str] | None


class Packer:
    """Places replicas one at a time (:meth:`place`) and runs a whole pass (:meth:`run`).

    The steps for one replica, in order: :meth:`_zero_cost` (room on a GPU already in use),
    :meth:`_fewer_mps_clients` on a GPU in use, :meth:`_new_gpu`, :meth:`_fewer_mps_clients` on a free GPU of an
    MPS node, a whole GPU as a last resort; then, in a second pass over the tier, the zero-cost step allowing a
    GPU shared with the deployment, and :meth:`_preempt`. After all tiers: :meth:`consolidate`,
    :meth:`_respread` and :meth:`borrow`. Open capacity is looked up in :class:`CapacityIndex`; MIG layout
    targets come from :class:`MigTargets`."""

    def __init__(self, ctx: Context, options: PackerOptions = DEFAULT_OPTIONS) -> None:
        self.ctx = ctx
        self.options = options
        self.spread = options.spread or ctx.policy.spread_nodes
        #: node spread applies (Preferred or Required), read in the zero-cost search
        self.spread_applies = self.spread != "Ignored"
        self.ts_limit = ctx.policy.ts_max_replicas_per_gpu
        self.targets = MigTargets()
        self.capacity = self._index()
        #: nodes and deployments changed since the caller started recording (incremental re-plans)
        self.touched_nodes: set[int] | None = None
        self.touched_deps: set[str] = set()
        #: (estimate, used GPUs only) -> the MPS epoch in which lowering clients per GPU failed for it
        self.mps_fail: dict[tuple[int, bool], int] = {}
        #: share options per replica class, and per deployment uid (a deployment's class never changes; a
        #: lookup by uid costs ~30 ns, building and hashing the class key ~200 ns, once per ``place``)
        self.options_cache: dict[tuple[int, int, str | None, str | None], ShareOptions] = {}
        self.dep_options: dict[int, ShareOptions] = {}
        #: largest GPU memory per model among reserved and segment GPUs
        self.reserved_models: dict[str, int] = {}
        for g in ctx.gpus:
            if g.role != ROLE_POOL:
                self.reserved_models[g.key] = max(self.reserved_models.get(g.key, 0), g.mem)
        self.profile_memory = {
            m: tuple(p.memory_bytes for p in model.mig_profiles) for m, model in ctx.models.items()
        }
        #: per GPU model: memory in MiB (ranks new-GPU options) and time-slicing budget in bytes
        self.memory_mib = {m: model.memory_mib for m, model in ctx.models.items()}
        self.ts_budget = {m: model.memory_bytes * ctx.ts_factor // 100 for m, model in ctx.models.items()}
        #: (GPU model, fitting MIG profiles) -> the new-GPU option with the densest of them
        self.densest_mig: dict[tuple[str, tuple[int, ...]], NewGpuOption] = {}
        #: tenant quotas (docs/tenants.md); None for a pool without tenants, which plans exactly as before
        self.book: TenantBook | None = None
        #: per deployment uid, GPU-equivalents of its best new-GPU share (pools with tenants)
        self.estimate: dict[int, float] = {}
        if ctx.policy.tenants:
            self.book = TenantBook(ctx)
            self.place = self._place_within_ceiling  # type: ignore[method-assign]

    def _index(self) -> CapacityIndex:
        """The capacity index (``guided.py`` indexes free GPUs by its guided node modes)."""
        return CapacityIndex(self.ctx, self.targets)

    # ------------------------------------------------------------------------------------------ driver

    def run(self) -> None:
        """Place every replica not placed yet: tier by tier, then consolidate, respread and borrow."""
        ctx = self.ctx
        if self.book is not None:
            self._run_tenants(self.book)
            return
        for tier in Tier:
            queue = [r for r in ctx.reps if r.dep.tier is tier and r.gpu is None and r.unplaced is None]
            queue.sort(key=lambda r: (-r.dep.size, r.ordinal, r.dep.order, r.dep.key))
            self._place_tier(queue)
        if self.options.consolidate and self.consolidate():
            # freed GPUs: spread again and give replicas that found no room another chance
            self._respread()
            waiting = [r for r in ctx.reps if r.gpu is None and r.unplaced is None]
            waiting.sort(key=lambda r: (r.dep.rank, -r.dep.size, r.ordinal, r.dep.order, r.dep.key))
            for r in waiting:
                if not self.place(r):
                    self.place(r, last_resort=True)
        self.borrow()
        for r in ctx.reps:
            if r.gpu is None and r.unplaced is None:
                r.unplaced = self.capacity_reason(r)

    def _run_tenants(self, book: TenantBook) -> None:
        """A pool with tenants: replicas within their tenant's quota tier by tier (as :meth:`run`), then the
        borrowers, idle capacity handed out by weight; then consolidate, respread, retry, borrow reserved
        GPUs, and the ceilings enforced on the result (docs/tenants.md)."""
        ctx = self.ctx
        estimate = self.estimate = self._estimates()
        book.classify(estimate)
        for tier in Tier:
            queue = [
                r
                for r in ctx.reps
                if r.dep.tier is tier and r.gpu is None and r.unplaced is None and not r.tborrow
            ]
            queue.sort(key=lambda r: (-r.dep.size, r.ordinal, r.dep.order, r.dep.key))
            self._place_tier(queue)
        # what was placed now counts what it holds, not its estimate (as the next pass will see it)
        book.classify(estimate)
        waiting = [r for r in ctx.reps if r.gpu is None and r.unplaced is None and r.tborrow]
        waiting.sort(key=lambda r: (r.dep.rank, -r.dep.size, r.ordinal, r.dep.order, r.dep.key))
        for r in book.borrow_order(waiting, estimate):
            if not self.place(r):
                self.place(r, last_resort=True)
        if self.options.consolidate and self.consolidate():
            self._respread()
        book.classify(estimate)
        waiting = [r for r in ctx.reps if r.gpu is None and r.unplaced is None]
        waiting.sort(key=lambda r: (r.tborrow, r.dep.rank, -r.dep.size, r.ordinal, r.dep.order, r.dep.key))
        for r in waiting:
            if not self.place(r):
                self.place(r, last_resort=True)
        self.borrow()
        self._enforce_ceilings(book)
        for r in ctx.reps:
            if r.gpu is None and r.unplaced is None:
                r.unplaced = self.capacity_reason(r)

    def _estimates(self) -> dict[int, float]:
        """Per deployment uid: GPU-equivalents of the share its best new-GPU option gives (1: none)."""
        out: dict[int, float] = {}
        for dep in self.ctx.deps:
            o = self.share_options(dep)
            if o.news:
                n = o.news[0]
                out[dep.uid] = estimate_of(self.ctx, dep, n.kind, n.model, n.param)
            else:
                out[dep.uid] = 1.0
        return out

    def _place_within_ceiling(self, r: Rep, last_resort: bool = False) -> bool:
        """:meth:`place` in a pool with tenants: undone (False) when the share takes the tenant beyond its
        ceiling."""
        done = Packer.place(self, r, last_resort)
        book = self.book
        if done and r.gpu is not None and book is not None and book.of(r.dep).room() < -EPS:
            self.remove(r)
            return False
        return done

    def _enforce_ceilings(self, book: TenantBook) -> None:
        """A tenant above its ceiling after packing (shares changed, or the ceiling was lowered): its
        lowest-priority replicas yield (``TenantQuota``) until it is within."""
        for r in sorted(self.ctx.reps, key=Rep.sort_key, reverse=True):
            t = book.of(r.dep)
            if r.gpu is None or t.room() >= -EPS:
                continue
            self.remove(r)
            msg = f"tenant {t.name} is at its ceiling of {t.ceiling:g} GPU-equivalents"
            r.unplaced = (UnplacedReason.TENANT_QUOTA, msg)
            if r.cur_gpu is not None:
                r.evicted = EvictionReason.TENANT_QUOTA
                r.evict_msg = msg

    def _place_tier(self, queue: list[Rep]) -> None:
        """One tier: a first pass (with MIG layout targets), then the last-resort pass for what is left."""
        if self.options.mig_targets:
            self.targets.plan(queue, self._opening_profile)
        later = [r for r in queue if not self.place(r)]
        if self.options.mig_targets:
            for gid in self.targets.drop():
                self.capacity.index_gpu(self.ctx.gpus[gid])
        for r in later:
            self.place(r, last_resort=True)

    def place(self, r: Rep, last_resort: bool = False) -> bool:
        """Place one replica; returns False when it is still unplaced. Sharing a GPU with another replica
        of the same deployment and preempting lower tiers are ``last_resort`` steps, taken in a second pass
        over the tier so that they never take capacity another replica of the tier could use without them."""
        o = self.share_options(r.dep)
        if o.reason is not None:
            r.unplaced = o.reason
            return True
        if last_resort:
            choice = self._zero_cost(r, o, same_gpu_ok=True)
            if choice is not None:
                self._put(r, *choice)
                return True
            claims = self.book is not None and not r.tborrow
            return (r.dep.tier is not BEST_EFFORT or claims) and self._preempt(r, o)
        if r.dep.demand.warm and self._configured(r, o, warm_only=True):
            return True
        choice = self._zero_cost(r, o, same_gpu_ok=False)
        if choice is not None:
            self._put(r, *choice)
            return True
        if o.mps and self._fewer_mps_clients(r, o, used_only=True):
            return True
        if self._configured(r, o):
            return True
        if self._new_gpu(r, o.news):
            return True
        if o.mps and self._fewer_mps_clients(r, o):
            return True
        return bool(o.ex_last and self._new_gpu(r, [_whole(m) for m in o.ex_last]))

    # ------------------------------------------------------------------------------------------ options

    def share_options(self, dep: Dep) -> ShareOptions:
        """The share options of the deployment's class (cached per class and per deployment)."""
        o = self.dep_options.get(dep.uid)
        if o is None:
            key = dep.class_key()
            o = self.options_cache.get(key)
            if o is None:
                o = self.options_cache[key] = self._share_options(dep)
            self.dep_options[dep.uid] = o
        return o

    def _class_fits(self, dep: Dep) -> tuple[dict[str, tuple[int, ...]], dict[str, int], set[str], set[str]]:
        """The shares the class may take (``state.class_fits``); ``guided.py`` narrows them to its guide's."""
        return class_fits(self.ctx, dep)

    def _share_options(self, dep: Dep) -> ShareOptions:
        mig, mps, ts, ex = self._class_fits(dep)
        news = [self._densest_mig(m, fits) for m, fits in mig.items()]
        news += [_new_tuple(NewGpuOption, (MPS, m, clients, clients, True)) for m, clients in mps.items()]
        for m in ts:
            density = min(self.ts_limit, self.ts_budget[m] // dep.size)
            if density >= 1:
                news.append(_new_tuple(NewGpuOption, (TIME_SLICING, m, 0, density, True)))
        ex_last: list[str] = []
        shared = bool(mig or mps or ts)
        memory_mib = self.memory_mib
        for m in sorted(ex, key=lambda k: (memory_mib[k], k)):
            if dep.tier is GUARANTEED or not shared:
                news.append(_whole(m))
            else:
                ex_last.append(m)
        news.sort(key=self._new_gpu_rank(dep, news))
        reason = None if (news or ex_last) else unfit_reason(self.ctx, dep)
        return ShareOptions(mig, mps, tuple(sorted(ts)), ex, news, ex_last, reason)

    def _new_gpu_rank(self, dep: Dep, news: list[NewGpuOption]) -> Callable[[NewGpuOption], tuple[Any, ...]]:
        """The sort key of the class's new-GPU options (lower first, no two options equal): most replicas per
        GPU, less GPU memory, kind (``_KIND_ORDER``), model; ``new_gpu_order`` says how density counts."""
        memory_mib = self.memory_mib
        kind_order = _KIND_ORDER_BEST_EFFORT if dep.tier is BEST_EFFORT else _KIND_ORDER

        def rank(option: NewGpuOption) -> tuple[int, int, int, str]:
            kind, model, _, density, _ = option
            return (-density, memory_mib[model], kind_order[kind], model)

        order = self.options.new_gpu_order
        if order is NewGpuOrder.MEMORY and dep.tier is GUARANTEED:
            # Guaranteed: least GPU memory per replica first (keeps large GPUs for memory-bound tiers)
            return lambda option: (memory_mib[option.model] / option.density, rank(option))
        if order is NewGpuOrder.TOLERANT:
            # densities within 15 % of the best count as equal: then the GPU model with less memory
            floor = _DENSITY_TOLERANCE * max((option.density for option in news), default=1)

            def tolerant(option: NewGpuOption) -> tuple[bool, int, tuple[int, int, int, str]]:
                close = option.density >= floor
                return (not close, memory_mib[option.model] if close else 0, rank(option))

            return tolerant
        return rank

    def _densest_mig(self, model: str, fits: tuple[int, ...]) -> NewGpuOption:
        """The new-GPU option with the fitting MIG profile with the most instances per GPU (cached)."""
        key = (model, fits)
        option = self.densest_mig.get(key)
        if option is None:
            option = self.densest_mig[key] = _densest_mig(self.ctx, model, fits)
        return option

    def _opening_profile(self, dep: Dep) -> tuple[str, int] | None:
        """The (GPU model, MIG profile) a replica of ``dep`` opens a new GPU with, if its best option is MIG."""
        o = self.share_options(dep)
        if o.reason is not None or not o.news or o.news[0].kind != MIG:
            return None
        return o.news[0].model, o.news[0].param

    # ------------------------------------------------------------------------------------------ zero cost

    def _pick(self, gpus: dict[int, Gpu], dep_uid: int, same_gpu_ok: bool) -> tuple[Gpu | None, int]:
        """First GPU without the deployment, preferring a node without it; (gpu, node-has-deployment)."""
        first: Gpu | None = None
        seen = 0
        for g in gpus.values():
            if not same_gpu_ok and dep_uid in g.deps:
                continue
            if dep_uid not in g.node.deps:
                return g, 0
            if first is None:
                first = g
            seen += 1
            if seen >= _SCAN:
                break
        return first, 1

    def _zero_cost(self, r: Rep, o: ShareOptions, same_gpu_ok: bool) -> Choice | None:
        """The best share on a GPU that already holds replicas (no new GPU), or None."""
        found: _Found = None
        if o.mig:
            found = self._mig_room(r.dep, o, same_gpu_ok, found)
        if o.mps and self.capacity.mps_caps:
            found = self._mps_room(r.dep, o, same_gpu_ok, found)
        if o.ts and (found is None or found[1][0] == 1):  # the best so far is on a node with the deployment
            found = self._time_sliced_room(r.dep, o, same_gpu_ok, found)
        return None if found is None else found[0]

    def _mig_room(self, dep: Dep, o: ShareOptions, same_gpu_ok: bool, found: _Found) -> _Found:
        """MIG: a legal instance on an open layout or a free instance of a frozen one, least waste first."""
        capacity = self.capacity
        spread = self.spread_applies
        for m, fits in o.mig.items():
            opened = capacity.mig_open.get(m)
            if not opened and not capacity.frozen_models.get(m):
                continue
            memory = self.profile_memory[m]
            for p in fits:
                waste = memory[p] - dep.size
                if found is not None:
                    best = found[1]  # (node has the deployment, time-sliced, waste, emptiness)
                    if (best[0] == 0 or not spread) and best[2] < waste:
                        break
                hit = False
                groups = capacity.accepting.get((m, p)) if opened else None
                if groups:
                    assert opened is not None
                    found, hit = self._open_layout_room(dep, opened, groups, p, waste, same_gpu_ok, found)
                frozen = capacity.mig_frozen.get((m, p))
                if frozen:
                    g, on_node = self._pick(frozen, dep.uid, same_gpu_ok)
                    if g is not None:
                        key = (on_node if spread else 0, 0, waste, 0)
                        if found is None or key < found[1]:
                            found = ((g, MIG, p), key)
                        hit = True
                if hit:
                    break
        return found

    def _open_layout_room(
        self,
        dep: Dep,
        opened: dict[int, dict[int, Gpu]],
        groups: list[tuple[int, int]],
        profile: int,
        waste: int,
        same_gpu_ok: bool,
        found: _Found,
    ) -> tuple[_Found, bool]:
        """An instance of ``profile`` on an open MIG layout, fullest layout first; (best so far, any found)."""
        spread = self.spread_applies
        hit = False
        for emptiness, group in groups:
            g, on_node = self._pick(opened[group], dep.uid, same_gpu_ok)
            if g is None:
                continue
            key = (on_node if spread else 0, 0, waste, emptiness)
            if found is None or key < found[1]:
                found = ((g, MIG, profile), key)
            hit = True
            if on_node == 0 or not spread:
                break
        return found, hit

    def _mps_room(self, dep: Dep, o: ShareOptions, same_gpu_ok: bool, found: _Found) -> _Found:
        """MPS: a free client slot whose cap holds the estimate, smallest cap first."""
        capacity = self.capacity
        caps = capacity.mps_caps
        spread = self.spread_applies
        i = bisect_left(caps, (dep.size,))
        looked = 0
        while i < len(caps):
            cap, m, clients = caps[i]
            i += 1
            if m not in o.mps:
                continue
            waste = cap - dep.size
            if found is not None:
                best = found[1]  # (node has the deployment, time-sliced, waste, emptiness)
                if best[1] == 0 and best[2] <= waste and best[0] == 0:
                    break
            g, on_node = self._pick(capacity.mps_open[(m, clients)], dep.uid, same_gpu_ok)
            if g is None:
                continue
            key = (on_node if spread else 0, 0, waste, 0)
            if found is None or key < found[1]:
                found = ((g, MPS, -1), key)
            looked += 1
            if on_node == 0 or not spread or looked >= _SCAN:
                break
        return found

    def _time_sliced_room(self, dep: Dep, o: ShareOptions, same_gpu_ok: bool, found: _Found) -> _Found:
        """Time-slicing: room on a time-sliced GPU, best fit by free memory."""
        capacity = self.capacity
        for m in o.ts:
            buckets = capacity.ts_buckets.get(m)
            if not buckets:
                continue
            j = bisect_left(buckets, dep.size >> BUCKET_SHIFT)
            done = False
            while j < len(buckets) and not done:
                found, done = self._time_sliced_bucket(
                    dep, capacity.ts_open[m][buckets[j]], same_gpu_ok, found
                )
                j += 1
        return found

    def _time_sliced_bucket(
        self, dep: Dep, gpus: dict[int, Gpu], same_gpu_ok: bool, found: _Found
    ) -> tuple[_Found, bool]:
        """The GPUs of one free-memory bucket; (best so far, whether to stop looking)."""
        spread = self.spread_applies
        ts_capacity = self.capacity.ts_capacity
        dep_uid = dep.uid
        for g in gpus.values():
            if not same_gpu_ok and dep_uid in g.deps:
                continue
            free = ts_capacity[g.gid] - g.ts_used
            if free < dep.size:
                continue
            on_node = 1 if dep_uid in g.node.deps else 0
            key = (on_node if spread else 0, 1, free - dep.size, 0)
            if found is None or key < found[1]:
                found = ((g, TIME_SLICING, -1), key)
            if on_node == 0 or not spread:
                return found, True
        return found, False

    # ------------------------------------------------------------------------------------------ new GPU

    def _new_gpu(self, r: Rep, news: list[NewGpuOption]) -> bool:
        """Open a new GPU with the best available option. ``Required`` spread looks through every option
        for a node without the deployment before it accepts one that has it; ``Preferred`` only within an
        option (fresh nodes count), so spreading never costs packing density."""
        required = self.spread == "Required"
        fallback: tuple[Node, NewGpuOption, int] | None = None
        for option in news:
            node, on_node, param = self._find_node(option, r.dep)
            if node is None:
                continue
            if on_node and required:
                if fallback is None:
                    fallback = (node, option, param)
                continue
            self._open(r, node, option, param)
            return True
        if fallback is not None:
            self._open(r, *fallback)
            return True
        return False

    def _find_node(self, option: NewGpuOption, dep: Dep) -> tuple[Node | None, int, int]:
        """A node with a free GPU of the option's model: (node, node-has-deployment, param).

        Nodes that already have the mode come before fresh nodes (next fit at node level: a node's spare GPUs
        are used before another node is given a mode). For MPS, an open node with fewer clients per GPU (a
        larger cap) qualifies while it keeps at least ``mps_density_pct`` of the best density.

        Node spread: a node without the deployment first. ``Preferred`` then accepts an open node that holds
        fewer than half of the deployment's replicas (so a deployment always spans at least two nodes when
        it has two or more replicas) before it gives a fresh node a mode; ``Required`` tries a fresh node
        before any node that has the deployment."""
        kind, m, param = option.kind, option.model, option.param
        search = _NodeSearch(self, kind, param, dep)
        if kind == MPS:
            low = max(2, -(-param * self.options.mps_density_pct // 100))
            keys: list[tuple[object, ...]] = [(MPS, m, n) for n in range(param, low - 1, -1)]
            # open MPS nodes with even fewer clients per GPU: only when no fresh node is left
            worse: list[tuple[object, ...]] = [(MPS, m, n) for n in range(low - 1, 1, -1)]
        else:
            keys = [(kind, m)]
            worse = []
        hit = search.scan(keys)
        if hit is not None:
            return hit[0], 0, hit[1]
        if search.soft is not None:
            return search.soft[0], 1, search.soft[1]
        if option.fresh_ok:
            fresh = self.capacity.nodes.get((FRESH, m))
            if fresh:
                return fresh_node(fresh, dep, self.ctx.any_warm), 0, param
        hit = search.scan(worse)
        if hit is not None:
            return hit[0], 0, hit[1]
        settled = search.soft or search.hard
        if settled is not None:
            return settled[0], 1, settled[1]
        return None, 1, param

    def _configured(self, r: Rep, o: ShareOptions, warm_only: bool = False) -> bool:
        """Step 3a: an idle GPU whose configuration already gives ``r`` a share (``configured.py``): a MIG
        instance of the profile a new GPU would get or of the smallest fitting one, an MPS or time-sliced GPU of
        a node already in that mode; only options as dense as a new GPU's (within 15 %), never a whole GPU.
        Only for a scale-up (a deployment with a running replica) or a GPU kept warm: a deployment placed
        from scratch opens GPUs as before, so re-planning a pool whose nodes were just configured for it (no
        pod running yet) gives the same plan, and the operator's second pass creates the pods the first one
        planned. ``warm_only`` (step 0, before the zero-cost step): only a GPU kept warm for the deployment."""
        if not r.dep.demand.warm and (not self.ctx.configured or not any(x.pinned for x in r.dep.reps)):
            return False
        wanted = self._configured_options(o)
        if not wanted:
            return False
        hit = find_configured(self.ctx, r.dep, wanted, self.spread_applies, warm_only)
        if hit is None:
            return False
        g, kind, prof, per_gpu = hit
        node = g.node
        node.free[g.key].remove(g)
        if kind == MIG:
            if node.mode == NODE_FREE:
                node.mode = NODE_NONE
            g.mode = MIG
            g.mig_state = 0
            assert g.inv_counts is not None
            g.frozen = g.inv_counts  # used as configured: no new layout
            g.free_inst = list(g.inv_counts)
        elif node.mode == NODE_FREE:
            node.mode = NODE_MPS if kind == MPS else NODE_TIME_SLICING
            node.n = per_gpu
        attach(self.ctx, r, g, kind, prof)
        self._touch(r, g)
        self.capacity.index_gpu(g)
        self.capacity.index_node(node)
        if self.book is not None:
            self.book.on_put(r)
        return True

    def _configured_options(self, o: ShareOptions) -> list[tuple[Mechanism, str, tuple[int, ...]]]:
        """The new-GPU options a configured GPU may stand in for: (kind, model, MIG profiles), best first."""
        if not o.news:
            return []
        floor = _DENSITY_TOLERANCE * o.news[0].density
        out: list[tuple[Mechanism, str, tuple[int, ...]]] = []
        for option in o.news:
            if option.density < floor or option.kind == EXCLUSIVE:
                continue
            profiles: tuple[int, ...] = ()
            if option.kind == MIG:
                fits = o.mig.get(option.model, ())
                profiles = tuple(dict.fromkeys(p for p in (option.param, *fits[:1]) if p in fits))
            out.append((option.kind, option.model, profiles))
        return out

    def _open(self, r: Rep, node: Node, option: NewGpuOption, param: int) -> None:
        """Open a new GPU of ``node`` for ``r`` as ``option`` says, with ``param`` as the node gives it (MPS: the
        node's clients per GPU); a GPU kept warm for another deployment last."""
        kind = option.kind
        g = free_gpu_of(node, option.model, r.dep) if self.ctx.any_warm else node.free[option.model].pop(0)
        if node.mode == NODE_FREE:
            if kind == MPS:
                node.mode, node.n = NODE_MPS, param
            elif kind == TIME_SLICING:
                node.mode, node.n = NODE_TIME_SLICING, self.ts_limit
            else:
                node.mode = NODE_NONE
        elif kind == TIME_SLICING and node.mode == NODE_NONE:
            node.mode, node.n = NODE_TIME_SLICING, self.ts_limit
        if kind == MIG:
            g.mode = MIG
            g.mig_state = 0
            self.targets.take(g, param)
        attach(self.ctx, r, g, kind, param if kind == MIG else -1)
        self._touch(r, g)
        self.capacity.index_gpu(g)
        self.capacity.index_node(node)
        if self.book is not None:
            self.book.on_put(r)

    # ------------------------------------------------------------------------------------------ attach/detach

    def _touch(self, r: Rep, g: Gpu) -> None:
        if self.touched_nodes is not None:
            self.touched_nodes.add(g.node.pos)
            self.touched_deps.add(r.dep.key)

    def _put(self, r: Rep, g: Gpu, mech: Mechanism, prof: int) -> None:
        attach(self.ctx, r, g, mech, prof)
        self._touch(r, g)
        self.capacity.index_gpu(g)
        if self.book is not None:
            self.book.on_put(r)

    def zero_cost_room(self, r: Rep) -> Choice | None:
        """The best zero-cost share for a replica that is off its GPU: room on a GPU that already holds
        replicas and not the deployment (``consolidate.py`` moves running replicas into it), or None."""
        return self._zero_cost(r, self.share_options(r.dep), same_gpu_ok=False)

    def new_gpu_room(self, r: Rep) -> bool:
        """Open a new GPU for a replica that is off its GPU, as :meth:`place` would (its new-GPU options, then
        a whole GPU as the last resort), on the nodes the capacity index offers (``consolidate.py`` drains
        nodes with the nodes in use fixed: ``CapacityIndex.set_fixed``)."""
        o = self.share_options(r.dep)
        if o.reason is not None:
            return False
        return self._new_gpu(r, o.news) or bool(
            o.ex_last and self._new_gpu(r, [_whole(m) for m in o.ex_last])
        )

    def put(self, r: Rep, g: Gpu, mech: Mechanism, prof: int) -> None:
        """Attach a replica to a share of ``g`` and re-index the GPU (``consolidate.py``)."""
        self._put(r, g, mech, prof)

    def remove(self, r: Rep) -> None:
        """Take a replica off its GPU; a GPU or node left empty is free again (layout and mode included)."""
        if self.book is not None:
            self.book.on_remove(r)
        g = detach(self.ctx, r)
        self._touch(r, g)
        node = g.node
        if not g.reps and g.role == ROLE_POOL:
            if g.frozen is not None:  # nothing runs on it any more: the layout may change again
                g.frozen = None
                g.free_inst = []
                g.mode = None
                g.mig_state = 0
            if node.schedulable:
                free = node.free.setdefault(g.key, [])
                free.append(g)
                free.sort(key=lambda x: x.index)
            if node.used == 0 and not node.whole and not any(x.role != ROLE_POOL for x in node.gpus):
                # nothing runs on the node any more: its sharing mode is free to change
                node.mode = NODE_FREE
                node.n = 0
                node.fixed = False
            self.capacity.index_node(node)
        self.capacity.index_gpu(g)

    def _reopen(self, g: Gpu, mech: Mechanism) -> None:
        """Take an empty GPU off its node's free list again before a replica goes back onto it."""
        node = g.node
        if not g.reps and g in node.free.get(g.key, []):
            node.free[g.key].remove(g)
            if mech == MIG:
                g.mode = MIG
                g.mig_state = 0
            self.capacity.index_node(node)

    # ------------------------------------------------------------------------------------------ MPS clients

    def _fewer_mps_clients(self, r: Rep, o: ShareOptions, used_only: bool = False) -> bool:
        """Give an MPS node fewer clients per GPU (larger caps) so that ``r`` fits. Caps only grow, so the
        clients already there keep fitting; allowed while no GPU of the node has more clients than the new
        value. ``used_only``: only a GPU that already holds replicas (no new GPU); otherwise a free GPU of the
        node qualifies too. Candidates come from the capacity index: MPS GPUs with free client slots whose cap
        is below the estimate, and MPS nodes with free GPUs."""
        memo = (r.dep.size, used_only)
        if self.mps_fail.get(memo) == self.capacity.mps_epoch:
            return False
        busiest: dict[int, int] = {}
        best = self._fewer_clients_on_used_gpu(r.dep, o, busiest)
        if best is None and not used_only:
            best = self._fewer_clients_on_free_gpu(o, busiest)
        if best is None:
            self.mps_fail[memo] = self.capacity.mps_epoch
            return False
        _, node, g, clients = best
        node.n = clients
        if self.touched_nodes is not None:
            self.touched_nodes.add(node.pos)
        for x in node.gpus:
            self.capacity.index_gpu(x)
        if not g.reps:
            node.free[g.key].remove(g)
        self._put(r, g, MPS, -1)
        self.capacity.index_node(node)
        self.capacity.mps_epoch += 1
        return True

    def _fewer_clients_on_used_gpu(
        self, dep: Dep, o: ShareOptions, busiest: dict[int, int]
    ) -> tuple[_LowerMpsKey, Node, Gpu, int] | None:
        """GPUs with free slots and a cap below the estimate (those with a larger cap were zero-cost already)."""
        limit = self.ctx.policy.mps_max_clients_per_gpu
        caps = self.capacity.mps_caps
        best: tuple[_LowerMpsKey, Node, Gpu, int] | None = None
        for _cap, m, clients in caps[: bisect_left(caps, (dep.size,))]:
            fewer = min(o.mps.get(m, 0), limit)
            if fewer < 2 or fewer >= clients:
                continue
            for g in self.capacity.mps_open[(m, clients)].values():
                if dep.uid in g.deps or len(g.reps) >= fewer or not g.node.schedulable:
                    continue
                if _busiest_mps_gpu(g.node, busiest) > fewer:
                    continue
                key = _LowerMpsKey(0, g.node.n - fewer, g.gid)
                if best is None or key < best[0]:
                    best = (key, g.node, g, fewer)
                break
        return best

    def _fewer_clients_on_free_gpu(
        self, o: ShareOptions, busiest: dict[int, int]
    ) -> tuple[_LowerMpsKey, Node, Gpu, int] | None:
        """Free GPUs of MPS nodes with more clients per GPU than the replica allows."""
        limit = self.ctx.policy.mps_max_clients_per_gpu
        best: tuple[_LowerMpsKey, Node, Gpu, int] | None = None
        for m, most_clients in o.mps.items():
            fewer = min(most_clients, limit)
            for clients in range(fewer + 1, limit + 1):
                for node in self.capacity.nodes.get((MPS, m, clients), {}).values():
                    if _busiest_mps_gpu(node, busiest) > fewer:
                        continue
                    g = node.free[m][0]
                    key = _LowerMpsKey(1, node.n - fewer, g.gid)
                    if best is None or key < best[0]:
                        best = (key, node, g, fewer)
                    break
        return best

    # ------------------------------------------------------------------------------------------ consolidation

    def consolidate(self) -> int:
        """Empty lightly used GPUs: move their replicas that are not running yet into free capacity on other
        used GPUs (a zero-cost share), least loaded GPU first; undo when one of them does not fit. Returns the
        number of GPUs freed. A GPU that holds the deployment it is kept warm for stays as it is."""
        candidates = [
            g
            for g in self.ctx.gpus
            if g.role == ROLE_POOL
            and g.reps
            and g.node.schedulable
            and not any(r.pinned or r.dep.key == g.warm for r in g.reps)
        ]
        candidates.sort(key=lambda g: (len(g.reps), sum(r.dep.size for r in g.reps) / g.mem, g.gid))
        freed = 0
        for g in candidates[:_CONSOLIDATE_MAX]:
            if g.reps and len(g.reps) <= _CONSOLIDATE_REPLICAS and self._empty_gpu(g):
                freed += 1
        return freed

    def _empty_gpu(self, g: Gpu) -> bool:
        """Move every replica of ``g`` to zero-cost room elsewhere, or put them all back and return False."""
        replicas = sorted(g.reps, key=lambda r: (-r.dep.size, r.dep.key, r.ordinal))
        before = [(r, r.mech or EXCLUSIVE, r.prof) for r in replicas]
        node = g.node
        node_state = (node.mode, node.n)
        for r in replicas:
            self.remove(r)
        moved: list[Rep] = []
        for r in replicas:
            choice = self._zero_cost(r, self.share_options(r.dep), same_gpu_ok=False)
            if choice is None or choice[0] is g:
                break
            self._put(r, *choice)
            moved.append(r)
        else:
            return True
        for r in moved:
            self.remove(r)
        if g in node.free.get(g.key, []):
            node.free[g.key].remove(g)
        node.mode, node.n = node_state
        for r, mech, prof in before:
            if mech == MIG and g.mode != MIG:
                g.mode = MIG
                g.mig_state = 0
            self._put(r, g, mech, prof)
        for x in node.gpus:
            self.capacity.index_gpu(x)
        self.capacity.index_node(node)
        return False

    def _respread(self) -> None:
        """After consolidation freed GPUs: replicas that share a GPU with another replica of their deployment
        (placed that way as a last resort) try again without sharing."""
        for r in self.ctx.reps:
            g = r.gpu
            if g is None or r.pinned or g.deps.get(r.dep.uid, 0) < 2:
                continue
            mech, prof = r.mech or EXCLUSIVE, r.prof
            self.remove(r)
            if not self.place(r):
                self._reopen(g, mech)
                self._put(r, g, mech, prof)

    # ------------------------------------------------------------------------------------------ preemption

    def _preempt(self, r: Rep, o: ShareOptions) -> bool:
        """Make room by evicting lower-tier replicas from one GPU: the cheapest way over the pool (lowest tier
        evicted first, then fewest replicas). The evicted replicas are placed again with their own tier."""
        best: tuple[tuple[int, _PreemptKey], Gpu, list[Rep], Mechanism, int] | None = None
        book = self.book
        for g in self.ctx.gpus:
            if g.role != ROLE_POOL or not g.reps or not g.node.schedulable or r.dep.uid in g.deps:
                continue
            if book is None:
                lower = [q for q in g.reps if q.dep.rank > r.dep.rank]
                lower.sort(key=Rep.sort_key, reverse=True)  # lowest priority first
            else:  # other tenants' borrowed replicas first (docs/tenants.md)
                lower = book.victims(r, g.reps)
            if not lower:
                continue
            for evict, mech, prof in self._preemptions(g, lower, r.dep, o):
                # with tenants, a way that evicts only borrowed replicas of other tenants comes first
                # and among them the lowest-priority replicas
                kept = last = 0
                if book is not None:
                    kept = sum(1 for q in evict if not book.reclaimable(r, q))
                    last = -min(book.pos[id(q)] for q in evict)
                key = (kept, _PreemptKey(-min(q.dep.rank for q in evict), len(evict), last, g.gid))
                if best is None or key < best[0]:
                    best = (key, g, evict, mech, prof)
        if best is None:
            return False
        _, g, evict, mech, prof = best
        for q in evict:
            self._yield(q, r)
        if prof == _OPEN_AS_MIG:  # the GPU is free now: open it as a MIG GPU with the best profile
            self._reopen(g, MIG)
            self._put(r, g, MIG, o.mig[g.key][0])
            return True
        self._reopen(g, mech)
        self._put(r, g, mech, prof)
        return True

    def _yield(self, q: Rep, r: Rep) -> None:
        """``q`` leaves its GPU for ``r``: reclaimed by ``r``'s tenant or preempted by its higher tier."""
        reclaimed = self.book is not None and self.book.reclaimable(r, q)
        self.remove(q)
        if reclaimed:
            assert self.book is not None
            tenant = self.book.of(r.dep).name
            q.evicted = EvictionReason.RECLAIMED_BY_TENANT
            q.evict_msg = (
                f"was borrowing beyond its tenant's quota; yielded to tenant {tenant} claiming its guaranteed "
                f"quota ({r.dep.tier} deployment {r.dep.key})"
            )
        else:
            q.evicted = EvictionReason.PREEMPTED_BY_HIGHER_TIER
            q.evict_msg = f"yielded to {r.dep.tier} deployment {r.dep.key}"

    def _preemptions(
        self, g: Gpu, lower: list[Rep], dep: Dep, o: ShareOptions
    ) -> list[tuple[list[Rep], Mechanism, int]]:
        """The ways to make room for ``dep`` on ``g`` by evicting some of its ``lower``-tier replicas."""
        ways: list[tuple[list[Rep], Mechanism, int]] = []
        fits = o.mig.get(g.key, ())
        if g.mode == MIG and fits:
            ways += _mig_preemptions(g, lower, fits, self.book is not None)
        elif g.mode == MPS and g.key in o.mps and mps_cap(g.mem_mib, g.node.n) >= dep.size:
            ways.append(([lower[0]], MPS, -1))
        elif g.mode == EXCLUSIVE and g.key in o.ex:
            ways.append(([lower[0]], EXCLUSIVE, -1))
        if len(lower) == len(g.reps):
            # the whole GPU can be freed
            if fits and g.node.mode != NODE_MPS:
                ways.append((list(lower), MIG, _OPEN_AS_MIG))
            elif g.key in o.ex and g.node.mode in (NODE_NONE, NODE_FREE):
                ways.append((list(lower), EXCLUSIVE, -1))
        return ways

    # ------------------------------------------------------------------------------------------ borrowing

    def borrow(self) -> None:
        """Unplaced BestEffort replicas borrow lendable reserved GPUs (one replica per GPU, whole GPU); a
        borrower keeps the GPU it is on."""
        ctx = self.ctx
        lendable = [
            g
            for g in ctx.gpus
            if g.role == ROLE_RESERVED and g.lendable and g.node.schedulable and not g.reps
        ]
        if not lendable:
            return
        waiting = [
            r
            for r in ctx.reps
            if r.dep.tier is BEST_EFFORT
            and r.gpu is None
            and r.unplaced is None
            and r.dep.mech in (None, EXCLUSIVE)
            and r.dep.profile is None
        ]
        lent = set(lendable)
        for r in waiting:  # replicas already on a lent GPU keep it
            g = r.cur_gpu
            if g is not None and g in lent and g.mem >= r.dep.size:
                self._lend(r, g, lendable)
                lent.discard(g)
        for r in waiting:
            if r.gpu is None:
                g = next((g for g in lendable if g.mem >= r.dep.size), None)
                if g is not None:
                    self._lend(r, g, lendable)

    def _lend(self, r: Rep, g: Gpu, lendable: list[Gpu]) -> None:
        attach(self.ctx, r, g, EXCLUSIVE)
        self._touch(r, g)
        lendable.remove(g)

    def capacity_reason(self, r: Rep) -> tuple[UnplacedReason, str]:
        """Why a replica that has share options found no room."""
        dep = r.dep
        if r.evicted == EvictionReason.RECLAIMED_BY_TENANT:
            return (UnplacedReason.RECLAIMED_BY_TENANT, f"{r.evict_msg}; no other GPU has room within quota")
        if self.book is not None:
            t = self.book.of(dep)
            if t.ceiling is not None and t.room() < self.estimate.get(dep.uid, 1.0) - EPS:
                return (
                    UnplacedReason.TENANT_QUOTA,
                    f"tenant {t.name} holds {t.used:.2f} of its ceiling of {t.ceiling:g} GPU-equivalents; "
                    "no share of this replica fits in the rest",
                )
        if r.evicted == EvictionReason.PREEMPTED_BY_HIGHER_TIER:
            return (
                UnplacedReason.PREEMPTED_BY_HIGHER_TIER,
                f"was running; {r.evict_msg} and no other GPU has room",
            )
        if r.evicted in _GROUP_EVICTIONS:
            return (UnplacedReason.RESERVED_CAPACITY, f"{r.evict_msg}; no other GPU has room")
        if self.reserved_models and any(mem >= dep.size for mem in self.reserved_models.values()):
            n_reserved = sum(1 for g in self.ctx.gpus if g.role != ROLE_POOL)
            borrow = (
                " (BestEffort may borrow only lendable, unclaimed reserved GPUs)"
                if dep.tier is BEST_EFFORT
                else ""
            )
            return (
                UnplacedReason.RESERVED_CAPACITY,
                f"the pool's unreserved GPUs are full; {n_reserved} GPUs are held by reservations or segments"
                + borrow,
            )
        o = self.share_options(dep)
        kinds = sorted({n.kind for n in o.news} | ({EXCLUSIVE} if o.ex_last else set()))
        higher = " after higher tiers were placed" if dep.tier is not GUARANTEED else ""
        if self.book is not None and r.tborrow:
            t = self.book.of(dep)
            higher = (
                f" (tenant {t.name} is beyond its guaranteed quota of {t.guaranteed:g} GPU-equivalents, so it "
                "only borrows idle capacity, and none is left)"
            )
        return (
            UnplacedReason.INSUFFICIENT_CAPACITY,
            f"no GPU in the pool has room for a {' or '.join(kinds)} share of "
            f"{dep.size / (1 << 30):.1f} GiB{higher}",
        )


class _NodeSearch:
    """``Packer._find_node``'s scan of open nodes: the first node without the deployment, and the best
    fallbacks seen on the way (``soft``: fewer than half of the deployment's replicas there; ``hard``: any)."""

    def __init__(self, packer: Packer, kind: Mechanism, param: int, dep: Dep) -> None:
        self.nodes = packer.capacity.nodes
        self.kind = kind
        self.param = param
        self.dep_uid = dep.uid
        self.per_node = max(1, (dep.replicas + 1) // 2)
        self.required = packer.spread == "Required"
        self.ignored = packer.spread == "Ignored"
        self.soft: tuple[Node, int] | None = None
        self.hard: tuple[Node, int] | None = None

    def scan(self, keys: list[tuple[object, ...]]) -> tuple[Node, int] | None:
        """(node, param) of the first node under ``keys`` without the deployment (any node when spread is
        ``Ignored``), looking at most ``_SCAN`` nodes per key."""
        for key in keys:
            opened = self.nodes.get(key)
            if not opened:
                continue
            for seen, n in enumerate(opened.values()):
                if seen >= _SCAN:
                    break
                have = n.deps.get(self.dep_uid, 0)
                candidate = (n, n.n if self.kind == MPS else self.param)
                if not have or self.ignored:
                    return candidate
                if have < self.per_node and not self.required:
                    if self.soft is None:
                        self.soft = candidate
                elif self.hard is None:
                    self.hard = candidate
        return None


def _whole(model: str) -> NewGpuOption:
    option: NewGpuOption = _new_tuple(NewGpuOption, (EXCLUSIVE, model, 0, 1, True))
    return option


def _densest_mig(ctx: Context, model: str, fits: tuple[int, ...]) -> NewGpuOption:
    """The fitting MIG profile with the most instances per GPU (the first among equals)."""
    gpu_model = ctx.models[model]
    best_profile, best_density = -1, 0
    for p in fits:
        profile = gpu_model.mig_profiles[p]
        density = min(profile.max_count, gpu_model.compute_slices // profile.compute_slices)
        if density > best_density:
            best_profile, best_density = p, density
    option: NewGpuOption = _new_tuple(NewGpuOption, (MIG, model, best_profile, best_density, True))
    return option


def _busiest_mps_gpu(node: Node, cache: dict[int, int]) -> int:
    """Most clients on one MPS GPU of the node (cached per search)."""
    most = cache.get(node.pos)
    if most is None:
        most = cache[node.pos] = max((len(g.reps) for g in node.gpus if g.mode == MPS), default=0)
    return most


def _mig_preemptions(
    g: Gpu, lower: list[Rep], fits: tuple[int, ...], in_order: bool = False
) -> list[tuple[list[Rep], Mechanism, int]]:
    """On a MIG GPU: take a lower-tier replica's instance of a fitting profile, or (layout not frozen) remove
    lower-tier instances, lowest tier and largest first, until a fitting profile fits the layout.
    ``in_order``: remove them in the order of ``lower`` (tenants: other tenants' borrowed replicas first)."""
    ways: list[tuple[list[Rep], Mechanism, int]] = []
    taken = next((q for q in lower if q.prof in fits), None)
    if taken is not None:
        ways.append(([taken], MIG, taken.prof))
    if g.frozen is not None:
        return ways
    geo = g.geo
    assert geo is not None
    counts = list(geo.states[g.mig_state])
    gone: list[Rep] = []
    order = (
        lower if in_order else sorted(lower, key=lambda q: (-q.dep.rank, -geo.profiles[q.prof].memory_slices))
    )
    for q in order:
        counts[q.prof] -= 1
        gone.append(q)
        state = geo.state_id[tuple(counts)]
        fitting = next((p for p in fits if geo.add[state][p] >= 0), -1)
        if fitting >= 0:
            ways.append((list(gone), MIG, fitting))
            break
    return ways
