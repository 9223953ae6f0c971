"""The packing heuristic: tier-ordered first-fit-decreasing over shares, with indexed open capacity.

Order: tiers by priority (Guaranteed, Burstable, BestEffort); within a tier, largest estimate first; equal
sizes interleave deployments (ordinal first) so that the replicas of one deployment land on different GPUs.
Running replicas are pinned first (``state.build_context``), so a plan with ``current`` only places the delta.
Before a tier is placed, its MIG demand is turned into layout targets for the GPUs it will open (a greedy
cover by maximal legal layouts, ``Packer._plan_targets``), so that profiles mix on a GPU instead of filling
GPUs one profile at a time.

For one replica the packer tries, in order (docs/planner.md section 4 has the details):

1. *zero cost*: a share on a GPU that already holds replicas, best fit. Holes first (a legal MIG instance
   on an open MIG GPU, a free instance of a frozen layout, a free MPS client slot whose cap holds the
   estimate), least wasted memory first; then room on a time-sliced GPU (best fit by free memory).
2. fewer MPS clients per GPU on a node, when that lets it fit on a GPU already in use.
3. *a new GPU*: the option with the most replicas of this size per GPU (MIG profile, MPS clients,
   time-slicing replicas, whole GPU; densities within 15 % of the best count as equal), ties to the GPU model
   with less memory; on a node that already has that mode (and MPS clients per GPU) before a fresh node.
4. Burstable and BestEffort: a whole GPU (last resort).
5. second pass over the tier: the same GPU as another replica of the deployment, then (Guaranteed and
   Burstable) preemption of lower-tier replicas (BestEffort first, fewest first).

Then a consolidation pass empties lightly used GPUs where it can, and unplaced BestEffort replicas borrow
lendable reserved GPUs (whole GPUs). ``run_heuristic`` keeps the best of a few variants (section 4.3).

Open capacity is indexed so that each step is a few dictionary lookups: open MIG GPUs by (model, layout
state, layout target) with the accepting groups per (model, profile) kept sorted, frozen MIG layouts by (model, free
profile), MPS GPUs with free clients by (model, clients per GPU) with a sorted list of caps, time-sliced GPUs
by (model, free-memory bucket), and nodes with free GPUs by (mode, model).
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from slm_operator.planner.assemble import build_plan
from slm_operator.planner.gc_pause import gc_paused
from slm_operator.planner.mig import Counts, MigGeometry, geometry
from slm_operator.planner.model import CurrentPlacement, Demand, NodeInventory, Plan, PoolPolicy
from slm_operator.planner.state import (
    Context,
    Dep,
    Gpu,
    Node,
    Rep,
    attach,
    build_context,
    class_fits,
    detach,
    mps_cap,
    unfit_reason,
)
from slm_operator.planner.vocabulary import (
    CAPACITY_REASONS,
    EvictionReason,
    GpuRole,
    Mechanism,
    NodeMode,
    UnplacedReason,
)

#: evictions that gave the replica's GPU to a reservation or segment
_GROUP_EVICTIONS = frozenset(
    {EvictionReason.RESERVED_CAPACITY, EvictionReason.RESERVATION_CLAIMED, EvictionReason.SEGMENT_CAPACITY}
)
_BUCKET_SHIFT = 28  # 256 MiB buckets of free time-slicing memory
_SCAN = 8  # candidates looked at when preferring a node without the deployment
_TARGET_STRIDE = 1 << 16  # open MIG layouts are keyed by target id * stride + layout state
_CONSOLIDATE_MAX = 256  # least loaded GPUs the consolidation pass tries to empty
#: pools up to this many GPUs are packed with a few variants of the heuristic and the best plan is kept
PORTFOLIO_MAX_GPUS = 512
_KIND_ORDER = {Mechanism.MIG: 0, Mechanism.TIME_SLICING: 1, Mechanism.MPS: 2, Mechanism.EXCLUSIVE: 3}
#: BestEffort prefers time-slicing on ties: its leftover memory stays usable by other replicas
_KIND_ORDER_BE = {Mechanism.TIME_SLICING: 0, Mechanism.MPS: 1, Mechanism.MIG: 2, Mechanism.EXCLUSIVE: 3}


@lru_cache(maxsize=16384)
def _target_room(model_key: str, want: Counts, have: Counts) -> frozenset[int]:
    """Profiles a GPU with layout target ``want`` may still take while it holds ``have``.

    An instance may fill a target slot of its own profile or of a profile at least as large in memory and
    compute slices (a replica that needs 1g.10gb takes a 1g.20gb slot rather than a bigger instance elsewhere;
    ``+me`` profiles only their own slots).
    The instances held are matched to slots largest first, each to the smallest slot that holds it; what the
    remaining slots hold is accepted. Nothing is accepted when the instances held do not match the target."""
    geo = geometry(model_key)
    assert geo is not None
    size = [(pr.memory_slices, pr.compute_slices) for pr in geo.profiles]
    slots = sorted((size[q], q) for q, c in enumerate(want) for _ in range(c))
    held = sorted((size[p] for p, c in enumerate(have) for _ in range(c)), reverse=True)
    for mem, cmp in held:
        for i, ((smem, scmp), _q) in enumerate(slots):
            if smem >= mem and scmp >= cmp:
                del slots[i]
                break
        else:
            return frozenset()
    return frozenset(
        p
        for p, (mem, cmp) in enumerate(size)
        if any(
            q == p or (smem >= mem and scmp >= cmp and not geo.profiles[p].media_extensions)
            for (smem, scmp), q in slots
        )
    )


@dataclass(slots=True)
class Opts:
    """Share options of one class of replicas (tier, size, explicit share)."""

    mig: dict[str, tuple[int, ...]]
    mps: dict[str, int]
    ts: tuple[str, ...]
    ex: set[str]
    #: new-GPU options, best first: (kind, model, param, density, fresh node allowed)
    news: list[tuple[str, str, int, int, bool]]
    #: whole GPU only as a last resort (Burstable, BestEffort)
    ex_last: list[str]
    reason: tuple[UnplacedReason, str] | None


class Packer:
    def __init__(
        self,
        ctx: Context,
        mps_density_pct: int = 75,
        spread: str | None = None,
        consolidate: bool = True,
        rank_mode: str = "tolerant",
        mig_targets: bool = True,
    ) -> None:
        self.ctx = ctx
        self.rank_mode = rank_mode
        self.mig_targets = mig_targets
        #: MIG layout targets of the tier being placed (see ``_plan_targets``): per model, [layout, copies
        #: left] in order; per GPU opened for one, its target id; the layout of each target id (id 0: none)
        self.target_pool: dict[str, list[list[Any]]] = {}
        self.mig_target: dict[int, int] = {}
        self.target_layouts: list[Counts] = [()]
        self.target_ids: dict[Counts, int] = {}
        #: nodes and deployments changed since the caller started recording (incremental re-plans)
        self.touched_nodes: set[int] | None = None
        self.touched_deps: set[str] = set()
        self.consolidate_pass = consolidate
        self.spread = spread or ctx.policy.spread_nodes
        self.ts_limit = ctx.policy.ts_max_replicas_per_gpu
        self.mps_density_pct = mps_density_pct
        self.mps_epoch = 0
        self.mps_fail: dict[tuple[int, bool], int] = {}
        self.mig_open: dict[str, dict[int, dict[int, Gpu]]] = {}
        #: per (model, profile): non-empty open layout states that accept the profile, as sorted
        #: (-memory slices after adding it, state): the fullest result first
        self.acc: dict[tuple[str, int], list[tuple[int, int]]] = {}
        self.mig_frozen: dict[tuple[str, int], dict[int, Gpu]] = {}
        self.mps_open: dict[tuple[str, int], dict[int, Gpu]] = {}
        self.mps_keys: list[tuple[int, str, int]] = []
        self.ts_open: dict[str, dict[int, dict[int, Gpu]]] = {}
        self.ts_bk: dict[str, list[int]] = {}
        self.nodes_ix: dict[tuple[Any, ...], dict[int, Node]] = {}
        self.opts_cache: dict[tuple[int, int, str | None, str | None], Opts] = {}
        self.reserved_models: dict[str, int] = {}
        self.prof_mem = {
            m: tuple(p.memory_bytes for p in model.mig_profiles) for m, model in ctx.models.items()
        }
        self.tscap = [ctx.ts_capacity(g) for g in ctx.gpus]
        self.frozen_models: dict[str, int] = {}
        for g in ctx.gpus:
            if g.role != GpuRole.POOL:
                self.reserved_models[g.key] = max(self.reserved_models.get(g.key, 0), g.mem)
            self._index_gpu(g)
        for n in ctx.nodes:
            self._index_node(n)

    # ------------------------------------------------------------------------------------------ indices

    def _unindex_gpu(self, g: Gpu) -> None:
        ix = g.ix
        if ix is None:
            return
        g.ix = None
        kind = ix[0]
        if kind == Mechanism.MIG:
            m, sk = ix[1], ix[2]
            d = self.mig_open[m][sk]
            del d[g.gid]
            if not d:
                del self.mig_open[m][sk]
                geo = g.geo
                assert geo is not None
                for p, nxt in self._accepts(geo, sk):
                    lst = self.acc[(m, p)]
                    del lst[bisect_left(lst, (-geo.slices[nxt], sk))]
        elif kind == "MIGF":
            m = ix[1]
            self.frozen_models[m] -= 1
            for p in ix[2:]:
                d = self.mig_frozen[(m, p)]
                del d[g.gid]
        elif kind == Mechanism.MPS:
            key = (ix[1], ix[2])
            d = self.mps_open[key]
            del d[g.gid]
            if not d:
                del self.mps_open[key]
                del self.mps_keys[bisect_left(self.mps_keys, (ix[3], ix[1], ix[2]))]
        elif kind == Mechanism.TIME_SLICING:
            m, b = ix[1], ix[2]
            d = self.ts_open[m][b]
            del d[g.gid]
            if not d:
                del self.ts_open[m][b]
                bk = self.ts_bk[m]
                del bk[bisect_left(bk, b)]

    def _index_gpu(self, g: Gpu) -> None:
        self._unindex_gpu(g)
        if g.role != GpuRole.POOL or not g.node.schedulable:
            return
        mode = g.mode
        m = g.key
        if mode == Mechanism.MIG:
            geo = g.geo
            assert geo is not None
            if g.frozen is not None:
                ps = tuple(p for p, c in enumerate(g.free_inst) if c > 0)
                if ps:
                    for p in ps:
                        self.mig_frozen.setdefault((m, p), {})[g.gid] = g
                    self.frozen_models[m] = self.frozen_models.get(m, 0) + 1
                    g.ix = ("MIGF", m, *ps)
            elif g.reps and not geo.maximal[g.st]:
                per = self.mig_open.setdefault(m, {})
                # open layouts are grouped by (state, layout target): a GPU with a target accepts only what
                # its target still has room for
                sk = self.mig_target.get(g.gid, 0) * _TARGET_STRIDE + g.st
                d = per.get(sk)
                if d is None:
                    d = per[sk] = {}
                    for p, nxt in self._accepts(geo, sk):
                        insort(self.acc.setdefault((m, p), []), (-geo.slices[nxt], sk))
                d[g.gid] = g
                g.ix = (Mechanism.MIG, m, sk)
        elif mode == Mechanism.MPS:
            self.mps_epoch += 1
            n = g.node.n
            if len(g.reps) < n:
                key = (m, n)
                d = self.mps_open.get(key)
                cap = mps_cap(g.mem_mib, n)
                if d is None:
                    d = self.mps_open[key] = {}
                    insort(self.mps_keys, (cap, m, n))
                d[g.gid] = g
                g.ix = (Mechanism.MPS, m, n, cap)
        elif mode == Mechanism.TIME_SLICING and len(g.reps) < g.node.n:
            free = self.tscap[g.gid] - g.ts_used
            if free > 0:
                b = free >> _BUCKET_SHIFT
                per = self.ts_open.setdefault(m, {})
                d = per.get(b)
                if d is None:
                    d = per[b] = {}
                    insort(self.ts_bk.setdefault(m, []), b)
                d[g.gid] = g
                g.ix = (Mechanism.TIME_SLICING, m, b)

    def _index_node(self, n: Node) -> None:
        ix = self.nodes_ix
        for key in n.ix:
            d = ix.get(key)
            if d is not None:
                d.pop(n.pos, None)
        n.ix = []
        if not n.schedulable:
            return
        for m, free in n.free.items():
            if not free:
                continue
            mig_ok = free[0].geo is not None
            keys: list[tuple[object, ...]] = []
            if n.mode == NodeMode.FREE:
                keys.append(("FRESH", m))
            elif n.mode == NodeMode.NONE:
                if mig_ok:
                    keys.append((Mechanism.MIG, m))
                keys.append((Mechanism.EXCLUSIVE, m))
                if not n.whole:
                    keys.append((Mechanism.TIME_SLICING, m))
            elif n.mode == NodeMode.TIME_SLICING:
                if mig_ok:
                    keys.append((Mechanism.MIG, m))
                keys.append((Mechanism.TIME_SLICING, m))
            else:
                keys.append((Mechanism.MPS, m, n.n))
            for key in keys:
                ix.setdefault(key, {})[n.pos] = n
            n.ix.extend(keys)

    def _accepts(self, geo: MigGeometry, sk: int) -> list[tuple[int, int]]:
        """(profile, next state) pairs an open layout group ``sk`` (target id * stride + state) accepts."""
        tid, st = divmod(sk, _TARGET_STRIDE)
        row = geo.add[st]
        if not tid:
            return [(p, nxt) for p, nxt in enumerate(row) if nxt >= 0]
        room = _target_room(geo.model_key, self.target_layouts[tid], geo.states[st])
        return [(p, nxt) for p, nxt in enumerate(row) if nxt >= 0 and p in room]

    # ------------------------------------------------------------------------------------------ MIG targets

    def _plan_targets(self, queue: list[Rep]) -> None:
        """Choose the MIG layouts for the GPUs this tier will open, from the tier's whole demand.

        Placing largest first, replicas of one MIG profile would fill GPUs by themselves: 4 x 1g.20gb uses all 8
        memory slices of an H100 but 4 of its 7 compute slices, 7 x 1g.10gb all compute slices but 7 memory
        slices, where 1g.20gb + 6 x 1g.10gb uses both. So before the tier is placed, the replicas are counted per
        (GPU model, profile they would open a GPU with), and a greedy cover picks maximal legal layouts that fill
        the most of a GPU (memory and compute slices) with that demand. A GPU opened for a profile takes the
        next such layout that contains it as its target and accepts only what the target still has room for;
        the targets are dropped when the tier's first pass is over (the tier's last-resort pass, later tiers
        and consolidation fill whatever is left)."""
        self.target_pool = {}
        per_dep: dict[int, list[Any]] = {}
        for r in queue:
            e = per_dep.get(r.dep.did)
            if e is None:
                per_dep[r.dep.did] = [r.dep, 1]
            else:
                e[1] += 1
        demand: dict[str, list[int]] = {}
        for dep, n in per_dep.values():
            o = self.opts(dep)
            if o.reason is not None or not o.news or o.news[0][0] != Mechanism.MIG:
                continue
            m, p = o.news[0][1], o.news[0][2]
            counts = demand.setdefault(m, [0] * len(self.ctx.models[m].mig_profiles))
            counts[p] += n
        for m, rem in sorted(demand.items()):
            geo = geometry(m)
            assert geo is not None
            weight = [
                pr.memory_slices / geo.memory_slices + pr.compute_slices / geo.compute_slices
                for pr in geo.profiles
            ]
            layouts = [st for i, st in enumerate(geo.states) if geo.maximal[i]]
            pool: list[list[Any]] = []
            while any(rem):
                best: Counts | None = None
                best_v = 0.0
                for lay in layouts:
                    v = sum(min(c, rem[p]) * weight[p] for p, c in enumerate(lay) if c)
                    if v > best_v + 1e-9:
                        best, best_v = lay, v
                if best is None:
                    break
                copies = min((rem[p] // c for p, c in enumerate(best) if c and rem[p] >= c), default=1)
                copies = max(1, copies)
                for p, c in enumerate(best):
                    rem[p] = max(0, rem[p] - c * copies)
                pool.append([best, copies])
            self.target_pool[m] = pool

    def _take_target(self, g: Gpu, prof: int) -> None:
        """Give a GPU opened for MIG profile ``prof`` the next layout target of its model that contains it."""
        self.mig_target.pop(g.gid, None)
        for entry in self.target_pool.get(g.key, ()):
            lay, left = entry
            if left > 0 and lay[prof] > 0:
                entry[1] = left - 1
                tid = self.target_ids.get(lay)
                if tid is None:
                    tid = self.target_ids[lay] = len(self.target_layouts)
                    self.target_layouts.append(lay)
                self.mig_target[g.gid] = tid
                return

    def _drop_targets(self) -> None:
        self.target_pool = {}
        targeted = [self.ctx.gpus[gid] for gid in self.mig_target]
        self.mig_target = {}
        for g in targeted:
            self._index_gpu(g)

    # ------------------------------------------------------------------------------------------ options

    def opts(self, dep: Dep) -> Opts:
        key = dep.class_key()
        o = self.opts_cache.get(key)
        if o is not None:
            return o
        ctx = self.ctx
        mig, mps, ts, ex = class_fits(ctx, dep)
        news: list[tuple[tuple[object, ...], tuple[str, str, int, int, bool]]] = []
        korder = _KIND_ORDER_BE if dep.rank == 2 else _KIND_ORDER
        for m, fits in mig.items():
            geo = ctx.models[m]
            best_p, best_d = -1, 0
            for p in fits:
                prof = geo.mig_profiles[p]
                d = min(prof.max_count, geo.compute_slices // prof.compute_slices)
                if d > best_d:
                    best_p, best_d = p, d
            news.append(
                (
                    (-best_d, ctx.models[m].memory_mib, korder[Mechanism.MIG], m),
                    (Mechanism.MIG, m, best_p, best_d, True),
                )
            )
        for m, nmax in mps.items():
            news.append(
                (
                    (-nmax, ctx.models[m].memory_mib, korder[Mechanism.MPS], m),
                    (Mechanism.MPS, m, nmax, nmax, True),
                )
            )
        for m in ts:
            cap = ctx.models[m].memory_bytes * ctx.ts_factor // 100
            d = min(self.ts_limit, cap // dep.size)
            if d >= 1:
                news.append(
                    (
                        (-d, ctx.models[m].memory_mib, korder[Mechanism.TIME_SLICING], m),
                        (Mechanism.TIME_SLICING, m, 0, d, True),
                    )
                )
        ex_last: list[str] = []
        shared = bool(mig or mps or ts)
        for m in sorted(ex, key=lambda k: (ctx.models[k].memory_mib, k)):
            if dep.rank == 0 or not shared:
                news.append(
                    (
                        (-1, ctx.models[m].memory_mib, korder[Mechanism.EXCLUSIVE], m),
                        (Mechanism.EXCLUSIVE, m, 0, 1, True),
                    )
                )
            else:
                ex_last.append(m)
        if self.rank_mode == "memory" and dep.rank == 0:
            # Guaranteed: least GPU memory per replica first (keeps large GPUs for memory-bound tiers)
            news.sort(key=lambda t: (ctx.models[t[1][1]].memory_mib / t[1][3], t[0]))
        elif self.rank_mode == "tolerant":
            # densities within 15 % of the best count as equal: then the GPU model with less memory
            top = max((t[1][3] for t in news), default=1)
            news.sort(key=lambda t: (t[1][3] < 0.85 * top, t[0][1] if t[1][3] >= 0.85 * top else 0, t[0]))
        else:
            news.sort(key=lambda t: t[0])
        reason = None if (news or ex_last) else unfit_reason(ctx, dep)
        o = Opts(mig, mps, tuple(sorted(ts)), ex, [t[1] for t in news], ex_last, reason)
        self.opts_cache[key] = o
        return o

    # ------------------------------------------------------------------------------------------ search

    def _pick(self, gpus: dict[int, Gpu], did: int, same_ok: bool) -> tuple[Gpu | None, int]:
        """First GPU without the deployment, preferring a node without it; (gpu, node-has-deployment)."""
        first: Gpu | None = None
        seen = 0
        for g in gpus.values():
            if not same_ok and did in g.deps:
                continue
            if did not in g.node.deps:
                return g, 0
            if first is None:
                first = g
            seen += 1
            if seen >= _SCAN:
                break
        return first, 1

    def _zero(self, r: Rep, o: Opts, same_ok: bool) -> tuple[Gpu, str, int] | None:
        did = r.dep.did
        size = r.dep.size
        pref = self.spread != "Ignored"
        best: tuple[Gpu, str, int] | None = None
        best_key: tuple[int, int, int, int] | None = None
        # MIG: open layouts and frozen free instances
        mig_frozen = self.mig_frozen
        for m, fits in o.mig.items():
            opened = self.mig_open.get(m)
            if not opened and not self.frozen_models.get(m):
                continue
            pm = self.prof_mem[m]
            for p in fits:
                waste = pm[p] - size
                if best_key is not None and (best_key[0] == 0 or not pref) and best_key[2] < waste:
                    break
                found = False
                acc = self.acc.get((m, p)) if opened else None
                if acc:
                    for neg_fill, st in acc:
                        g, nh = self._pick(opened[st], did, same_ok)  # type: ignore[index]
                        if g is None:
                            continue
                        key = (nh if pref else 0, 0, waste, neg_fill)
                        if best_key is None or key < best_key:
                            best, best_key = (g, Mechanism.MIG, p), key
                        found = True
                        if nh == 0 or not pref:
                            break
                fz = mig_frozen.get((m, p))
                if fz:
                    g, nh = self._pick(fz, did, same_ok)
                    if g is not None:
                        key = (nh if pref else 0, 0, waste, 0)
                        if best_key is None or key < best_key:
                            best, best_key = (g, Mechanism.MIG, p), key
                        found = True
                if found:
                    break
        # MPS: free client slots whose cap holds the estimate, smallest cap first
        if o.mps and self.mps_keys:
            keys = self.mps_keys
            i = bisect_left(keys, (size,))
            looked = 0
            while i < len(keys):
                cap, m, n = keys[i]
                i += 1
                if m not in o.mps:
                    continue
                waste = cap - size
                if best_key is not None and best_key[1] == 0 and best_key[2] <= waste and best_key[0] == 0:
                    break
                g, nh = self._pick(self.mps_open[(m, n)], did, same_ok)
                if g is None:
                    continue
                key = (nh if pref else 0, 0, waste, 0)
                if best_key is None or key < best_key:
                    best, best_key = (g, Mechanism.MPS, -1), key
                looked += 1
                if nh == 0 or not pref or looked >= _SCAN:
                    break
        # time-slicing: best fit by free memory
        if o.ts and (best_key is None or best_key[0] == 1):
            tscap = self.tscap
            for m in o.ts:
                bk = self.ts_bk.get(m)
                if not bk:
                    continue
                j = bisect_left(bk, size >> _BUCKET_SHIFT)
                done = False
                while j < len(bk) and not done:
                    for g in self.ts_open[m][bk[j]].values():
                        if not same_ok and did in g.deps:
                            continue
                        free = tscap[g.gid] - g.ts_used
                        if free < size:
                            continue
                        nh = 1 if did in g.node.deps else 0
                        key = (nh if pref else 0, 1, free - size, 0)
                        if best_key is None or key < best_key:
                            best, best_key = (g, Mechanism.TIME_SLICING, -1), key
                        if nh == 0 or not pref:
                            done = True
                            break
                    j += 1
        return best

    def _find_node(
        self, kind: str, m: str, param: int, fresh_ok: bool, dep: Dep
    ) -> tuple[Node | None, int, int]:
        """A node with a free GPU of model ``m`` for a new GPU of ``kind``: (node, node-has-deployment, param).

        Nodes that already have the mode come before fresh nodes (next fit at node level: a node's spare GPUs
        are used before another node is given a mode). For MPS, an open node with fewer clients per GPU (a
        larger cap) qualifies while it keeps at least ``mps_density_pct`` of the best density.

        Node spread: a node without the deployment first. ``Preferred`` then accepts an open node that holds
        fewer than half of the deployment's replicas (so a deployment always spans at least two nodes when
        it has two or more replicas) before it gives a fresh node a mode; ``Required`` tries a fresh node
        before any node that has the deployment."""
        did = dep.did
        soft: tuple[Node, int] | None = None
        hard: tuple[Node, int] | None = None
        required = self.spread == "Required"
        ignored = self.spread == "Ignored"
        per_node = max(1, (dep.replicas + 1) // 2)
        if kind == Mechanism.MPS:
            lo = max(2, -(-param * self.mps_density_pct // 100))
            keys: list[tuple[object, ...]] = [(Mechanism.MPS, m, n) for n in range(param, lo - 1, -1)]
            # open MPS nodes with even fewer clients per GPU: only when no fresh node is left
            worse: list[tuple[object, ...]] = [(Mechanism.MPS, m, n) for n in range(lo - 1, 1, -1)]
        else:
            keys = [(kind, m)]
            worse = []

        def scan(keys: list[tuple[object, ...]]) -> tuple[Node, int] | None:
            nonlocal soft, hard
            for key in keys:
                opened = self.nodes_ix.get(key)
                if not opened:
                    continue
                for seen, n in enumerate(opened.values()):
                    if seen >= _SCAN:
                        break
                    have = n.deps.get(did, 0)
                    cand = (n, n.n if kind == Mechanism.MPS else param)
                    if not have or ignored:
                        return cand
                    if have < per_node and not required:
                        if soft is None:
                            soft = cand
                    elif hard is None:
                        hard = cand
            return None

        hit = scan(keys)
        if hit is not None:
            return hit[0], 0, hit[1]
        if soft is not None:
            return soft[0], 1, soft[1]
        if fresh_ok:
            fresh = self.nodes_ix.get(("FRESH", m))
            if fresh:
                return next(iter(fresh.values())), 0, param
        hit = scan(worse)
        if hit is not None:
            return hit[0], 0, hit[1]
        if soft is not None:
            return soft[0], 1, soft[1]
        if hard is not None:
            return hard[0], 1, hard[1]
        return None, 1, param

    def _new(self, r: Rep, o: Opts, news: list[tuple[str, str, int, int, bool]]) -> bool:
        """Open a new GPU with the best available option. ``Required`` spread looks through every option
        for a node without the deployment before it accepts one that has it; ``Preferred`` only within an
        option (fresh nodes count), so spreading never costs packing density."""
        required = self.spread == "Required"
        fallback: tuple[Node, tuple[str, str, int, int, bool]] | None = None
        for opt in news:
            kind, m, param, dens, fresh_ok = opt
            node, nh, param = self._find_node(kind, m, param, fresh_ok, r.dep)
            if node is None:
                continue
            opt = (kind, m, param, dens, fresh_ok)
            if nh and required:
                if fallback is None:
                    fallback = (node, opt)
                continue
            self._open(r, node, opt)
            return True
        if fallback is not None:
            self._open(r, fallback[0], fallback[1])
            return True
        return False

    def _open(self, r: Rep, node: Node, opt: tuple[str, str, int, int, bool]) -> None:
        kind, m, param, _, _ = opt
        free = node.free[m]
        g = free.pop(0)
        if node.mode == NodeMode.FREE:
            if kind == Mechanism.MPS:
                node.mode, node.n = NodeMode.MPS, param
            elif kind == Mechanism.TIME_SLICING:
                node.mode, node.n = NodeMode.TIME_SLICING, self.ts_limit
            else:
                node.mode = NodeMode.NONE
        elif kind == Mechanism.TIME_SLICING and node.mode == NodeMode.NONE:
            node.mode, node.n = NodeMode.TIME_SLICING, self.ts_limit
        if kind == Mechanism.MIG:
            g.mode = Mechanism.MIG
            g.st = 0
            self._take_target(g, param)
        attach(self.ctx, r, g, kind, param if kind == Mechanism.MIG else -1)
        self._touch(r, g)
        self._index_gpu(g)
        self._index_node(node)

    def _touch(self, r: Rep, g: Gpu) -> None:
        if self.touched_nodes is not None:
            self.touched_nodes.add(g.node.pos)
            self.touched_deps.add(r.dep.key)

    def _put(self, r: Rep, g: Gpu, mech: Mechanism, prof: int) -> None:
        attach(self.ctx, r, g, mech, prof)
        self._touch(r, g)
        self._index_gpu(g)

    def _remove(self, q: Rep) -> None:
        g = detach(self.ctx, q)
        self._touch(q, g)
        node = g.node
        if not g.reps and g.role == GpuRole.POOL:
            if g.frozen is not None:  # nothing runs on it any more: the layout may change again
                g.frozen = None
                g.free_inst = []
                g.mode = None
                g.st = 0
            if node.schedulable:
                lst = node.free.setdefault(g.key, [])
                lst.append(g)
                lst.sort(key=lambda x: x.index)
            if node.used == 0 and not node.whole and not any(x.role != GpuRole.POOL for x in node.gpus):
                # nothing runs on the node any more: its sharing mode is free to change
                node.mode = NodeMode.FREE
                node.n = 0
                node.fixed = False
            self._index_node(node)
        self._index_gpu(g)

    def _lower_mps(self, r: Rep, o: Opts, used_only: bool = False) -> bool:
        """Give an MPS node fewer clients per GPU (larger caps) so that ``r`` fits. Caps only grow, so the
        clients already there keep fitting; allowed while no GPU of the node has more clients than the new
        value. ``used_only``: only a GPU that already holds replicas (no new GPU); otherwise a free GPU of the
        node qualifies too. Candidates come from the indices: MPS GPUs with free client slots whose cap is
        below the estimate, and MPS nodes with free GPUs."""
        size = r.dep.size
        did = r.dep.did
        memo = (size, used_only)
        if self.mps_fail.get(memo) == self.mps_epoch:
            return False
        limit = self.ctx.policy.mps_max_clients_per_gpu
        most_cache: dict[int, int] = {}

        def most(node: Node) -> int:
            v = most_cache.get(node.pos)
            if v is None:
                v = max((len(g.reps) for g in node.gpus if g.mode == Mechanism.MPS), default=0)
                most_cache[node.pos] = v
            return v

        best: tuple[tuple[int, int, int], Node, Gpu, int] | None = None
        # GPUs with free slots and a cap below the estimate (those with a larger cap were zero-cost already)
        hi = bisect_left(self.mps_keys, (size,))
        for _cap, m, n in self.mps_keys[:hi]:
            n_new = min(o.mps.get(m, 0), limit)
            if n_new < 2 or n_new >= n:
                continue
            for g in self.mps_open[(m, n)].values():
                if did in g.deps or len(g.reps) >= n_new or not g.node.schedulable:
                    continue
                node = g.node
                if most(node) > n_new:
                    continue
                key = (0, node.n - n_new, g.gid)
                if best is None or key < best[0]:
                    best = (key, node, g, n_new)
                break
        if best is None and not used_only:
            for m, nmax in o.mps.items():
                n_new = min(nmax, limit)
                for n in range(n_new + 1, limit + 1):
                    for node in self.nodes_ix.get((Mechanism.MPS, m, n), {}).values():
                        if most(node) > n_new:
                            continue
                        g = node.free[m][0]
                        key = (1, node.n - n_new, g.gid)
                        if best is None or key < best[0]:
                            best = (key, node, g, n_new)
                        break
        if best is None:
            self.mps_fail[memo] = self.mps_epoch
            return False
        _, node, g, n_new = best
        node.n = n_new
        if self.touched_nodes is not None:
            self.touched_nodes.add(node.pos)
        for x in node.gpus:
            self._index_gpu(x)
        if not g.reps:
            node.free[g.key].remove(g)
        self._put(r, g, Mechanism.MPS, -1)
        self._index_node(node)
        self.mps_epoch += 1
        return True

    # ------------------------------------------------------------------------------------------ consolidation

    def consolidate(self) -> int:
        """Empty lightly used GPUs: move their replicas that are not running yet into free capacity on other
        used GPUs (a zero-cost share), least loaded GPU first; undo when one of them does not fit. Returns the
        number of GPUs freed."""
        ctx = self.ctx
        cands = [
            g
            for g in ctx.gpus
            if g.role == GpuRole.POOL and g.reps and g.node.schedulable and not any(r.pinned for r in g.reps)
        ]
        cands.sort(key=lambda g: (len(g.reps), sum(r.dep.size for r in g.reps) / g.mem, g.gid))
        freed = 0
        for g in cands[:_CONSOLIDATE_MAX]:
            if not g.reps or len(g.reps) > 4:
                continue
            reps = sorted(g.reps, key=lambda r: (-r.dep.size, r.dep.key, r.ordinal))
            old = [(r, r.mech or Mechanism.EXCLUSIVE, r.prof) for r in reps]
            node = g.node
            node_state = (node.mode, node.n)
            for r in reps:
                self._remove(r)
            moved: list[Rep] = []
            ok = True
            for r in reps:
                o = self.opts(r.dep)
                c = self._zero(r, o, False)
                if c is None or c[0] is g:
                    ok = False
                    break
                self._put(r, *c)
                moved.append(r)
            if ok:
                freed += 1
                continue
            for r in moved:
                self._remove(r)
            if g in node.free.get(g.key, []):
                node.free[g.key].remove(g)
            node.mode, node.n = node_state
            for r, mech, prof in old:
                if mech == Mechanism.MIG and g.mode != Mechanism.MIG:
                    g.mode = Mechanism.MIG
                    g.st = 0
                self._put(r, g, mech, prof)
            for x in node.gpus:
                self._index_gpu(x)
            self._index_node(node)
        return freed

    def _respread(self) -> None:
        """After consolidation freed GPUs: replicas that share a GPU with another replica of their deployment
        (placed that way as a last resort) try again without sharing."""
        for r in self.ctx.reps:
            g = r.gpu
            if g is None or r.pinned or g.deps.get(r.dep.did, 0) < 2:
                continue
            old = (g, r.mech or Mechanism.EXCLUSIVE, r.prof)
            self._remove(r)
            if not self.place(r):
                og, mech, prof = old
                if not og.reps and og in og.node.free.get(og.key, []):
                    og.node.free[og.key].remove(og)
                    if mech == Mechanism.MIG:
                        og.mode = Mechanism.MIG
                        og.st = 0
                    self._index_node(og.node)
                self._put(r, og, mech, prof)

    # ------------------------------------------------------------------------------------------ preemption

    def _preempt(self, r: Rep, o: Opts) -> bool:
        rank = r.dep.rank
        size = r.dep.size
        did = r.dep.did
        best: tuple[tuple[int, int, int], Gpu, list[Rep], str, int] | None = None
        for g in self.ctx.gpus:
            if g.role != GpuRole.POOL or not g.reps or not g.node.schedulable or did in g.deps:
                continue
            lower = [q for q in g.reps if q.dep.rank > rank]
            if not lower:
                continue
            lower.sort(key=Rep.sort_key, reverse=True)  # lowest priority first
            m = g.key
            node = g.node
            cands: list[tuple[list[Rep], str, int]] = []
            fits = o.mig.get(m, ())
            if g.mode == Mechanism.MIG and fits:
                for q in lower:
                    if q.prof in fits:
                        cands.append(([q], Mechanism.MIG, q.prof))
                        break
                if g.frozen is None:
                    geo = g.geo
                    assert geo is not None
                    counts = list(geo.states[g.st])
                    gone: list[Rep] = []
                    for q in sorted(lower, key=lambda q: (-q.dep.rank, -geo.profiles[q.prof].memory_slices)):
                        counts[q.prof] -= 1
                        gone.append(q)
                        st = geo.state_id[tuple(counts)]
                        p_ok = next((p for p in fits if geo.add[st][p] >= 0), -1)
                        if p_ok >= 0:
                            cands.append((list(gone), Mechanism.MIG, p_ok))
                            break
            elif g.mode == Mechanism.MPS and m in o.mps and mps_cap(g.mem_mib, node.n) >= size:
                cands.append(([lower[0]], Mechanism.MPS, -1))
            elif g.mode == Mechanism.EXCLUSIVE and m in o.ex:
                cands.append(([lower[0]], Mechanism.EXCLUSIVE, -1))
            if len(lower) == len(g.reps):
                # the whole GPU can be freed
                if fits and node.mode != NodeMode.MPS:
                    cands.append((list(lower), Mechanism.MIG, -2))
                elif m in o.ex and node.mode in (NodeMode.NONE, NodeMode.FREE):
                    cands.append((list(lower), Mechanism.EXCLUSIVE, -1))
            for evict, mech, prof in cands:
                key = (-min(q.dep.rank for q in evict), len(evict), g.gid)
                if best is None or key < best[0]:
                    best = (key, g, evict, mech, prof)
        if best is None:
            return False
        _, g, evict, mech, prof = best
        for q in evict:
            self._remove(q)
            q.evicted = EvictionReason.PREEMPTED_BY_HIGHER_TIER
            q.evict_msg = f"yielded to {r.dep.tier} deployment {r.dep.key}"
        if prof == -2:  # the GPU is free now: open it as a MIG GPU with the best profile
            fits = o.mig[g.key]
            node = g.node
            if g in node.free.get(g.key, []):
                node.free[g.key].remove(g)
            g.mode = Mechanism.MIG
            g.st = 0
            self._put(r, g, Mechanism.MIG, fits[0])
            self._index_node(node)
            return True
        if not g.reps and g in g.node.free.get(g.key, []):
            g.node.free[g.key].remove(g)
            self._index_node(g.node)
            if mech == Mechanism.MIG:
                g.mode = Mechanism.MIG
                g.st = 0
        self._put(r, g, mech, prof)
        return True

    # ------------------------------------------------------------------------------------------ driver

    def place(self, r: Rep, last_resort: bool = False) -> bool:
        """Place one replica; returns False when it is still unplaced. Sharing a GPU with another replica
        of the same deployment and preempting lower tiers are ``last_resort`` steps, taken in a second pass
        over the tier so that they never take capacity another replica of the tier could use without them."""
        o = self.opts(r.dep)
        if o.reason is not None:
            r.unplaced = o.reason
            return True
        if not last_resort:
            c = self._zero(r, o, False)
            if c is not None:
                self._put(r, *c)
                return True
            if o.mps and self._lower_mps(r, o, used_only=True):
                return True
            if self._new(r, o, o.news):
                return True
            if o.mps and self._lower_mps(r, o):
                return True
            return bool(
                o.ex_last and self._new(r, o, [(Mechanism.EXCLUSIVE, m, 0, 1, True) for m in o.ex_last])
            )
        c = self._zero(r, o, True)
        if c is not None:
            self._put(r, *c)
            return True
        return r.dep.rank < 2 and self._preempt(r, o)

    def run(self) -> None:
        ctx = self.ctx
        for rank in (0, 1, 2):
            queue = [r for r in ctx.reps if r.dep.rank == rank and r.gpu is None and r.unplaced is None]
            queue.sort(key=lambda r: (-r.dep.size, r.ordinal, r.dep.order, r.dep.key))
            if self.mig_targets:
                self._plan_targets(queue)
            later = [r for r in queue if not self.place(r)]
            if self.mig_targets:
                self._drop_targets()
            for r in later:
                self.place(r, last_resort=True)
        if self.consolidate_pass and self.consolidate():
            # freed GPUs: spread again and give replicas that found no room another chance
            self._respread()
            waiting = [r for r in ctx.reps if r.gpu is None and r.unplaced is None]
            waiting.sort(key=lambda r: (r.dep.rank, -r.dep.size, r.ordinal, r.dep.order, r.dep.key))
            for r in waiting:
                if not self.place(r):
                    self.place(r, last_resort=True)
        self._borrow()
        for r in ctx.reps:
            if r.gpu is None and r.unplaced is None:
                r.unplaced = self._capacity_reason(r)

    def _borrow(self) -> None:
        ctx = self.ctx
        lend = [
            g
            for g in ctx.gpus
            if g.role == GpuRole.RESERVED and g.lendable and g.node.schedulable and not g.reps
        ]
        if not lend:
            return
        want = [
            r
            for r in ctx.reps
            if r.dep.rank == 2
            and r.gpu is None
            and r.unplaced is None
            and r.dep.mech in (None, Mechanism.EXCLUSIVE)
            and r.dep.profile is None
        ]
        # replicas already on a lent GPU keep it
        for r in want:
            g = r.cur_gpu
            if g is not None and g in lend and g.mem >= r.dep.size:
                attach(ctx, r, g, Mechanism.EXCLUSIVE)
                self._touch(r, g)
                lend.remove(g)
        for r in want:
            if r.gpu is not None:
                continue
            for g in lend:
                if g.mem >= r.dep.size:
                    attach(ctx, r, g, Mechanism.EXCLUSIVE)
                    self._touch(r, g)
                    lend.remove(g)
                    break

    def _capacity_reason(self, r: Rep) -> tuple[UnplacedReason, str]:
        dep = r.dep
        if r.evicted == EvictionReason.PREEMPTED_BY_HIGHER_TIER:
            return (
                UnplacedReason.PREEMPTED_BY_HIGHER_TIER,
                f"was running; {r.evict_msg} and no other GPU has room",
            )
        if r.evicted in _GROUP_EVICTIONS:
            return (UnplacedReason.RESERVED_CAPACITY, f"{r.evict_msg}; no other GPU has room")
        o = self.opts(dep)
        if self.reserved_models and any(mem >= dep.size for m, mem in self.reserved_models.items()):
            n_res = sum(1 for g in self.ctx.gpus if g.role != GpuRole.POOL)
            return (
                UnplacedReason.RESERVED_CAPACITY,
                f"the pool's unreserved GPUs are full; {n_res} GPUs are held by reservations or segments"
                + (
                    " (BestEffort may borrow only lendable, unclaimed reserved GPUs)" if dep.rank == 2 else ""
                ),
            )
        kinds = sorted({k for k, *_ in o.news} | ({"Exclusive"} if o.ex_last else set()))
        higher = " after higher tiers were placed" if dep.rank > 0 else ""
        return (
            UnplacedReason.INSUFFICIENT_CAPACITY,
            f"no GPU in the pool has room for a {' or '.join(kinds)} share of "
            f"{dep.size / (1 << 30):.1f} GiB{higher}",
        )


def _score(ctx: Context) -> tuple[int, ...]:
    """Lower is better: unplaced replicas by tier (capacity reasons), replicas moved, GPUs used."""
    un = [0, 0, 0]
    moved = 0
    for r in ctx.reps:
        if r.gpu is None:
            if r.unplaced is None or r.unplaced[0] in CAPACITY_REASONS:
                un[r.dep.rank] += 1
            if r.cur_gpu is not None:
                moved += 1
        elif r.cur_gpu is not None and (r.gpu is not r.cur_gpu or r.evicted):
            moved += 1
    used = sum(1 for g in ctx.gpus if g.reps)
    return (*un, moved, used)


def run_heuristic(
    policy: PoolPolicy,
    nodes: Sequence[NodeInventory],
    demands: Sequence[Demand],
    current: Iterable[CurrentPlacement] = (),
) -> Context:
    """Pack, and keep the best of a few variants (by unplaced replicas per tier, then replicas moved, then GPUs
    used; the first variant wins ties, so the result stays deterministic):

    * when replicas stay unplaced for lack of capacity: the same without node spread (spread is relaxed only
      when it makes a replica unplaceable);
    * pools up to ``PORTFOLIO_MAX_GPUS``, all with MIG layouts chosen replica by replica (no layout targets,
      as the packer was before targets; targets can cost a small pool a replica): the main variant, Guaranteed
      ranked by GPU memory per replica, strict density order (no tolerance), and MPS nodes reused down to half
      the best density. Small pools have few nodes, so the greedy's node-level choices matter more there, and
      each pass costs milliseconds."""
    cur = list(current)
    ctx = build_context(policy, nodes, demands, cur)
    Packer(ctx).run()
    best, best_score = ctx, _score(ctx)
    variants: list[dict[str, Any]] = []
    if policy.spread_nodes != "Ignored" and any(best_score[:3]):
        variants.append({"spread": "Ignored"})
    if len(ctx.gpus) <= PORTFOLIO_MAX_GPUS:
        # the variants without MIG layout targets keep every plan the packer made before targets existed
        variants += [
            {"mig_targets": False},
            {"rank_mode": "memory", "mig_targets": False},
            {"rank_mode": "density", "mig_targets": False},
            {"mps_density_pct": 50, "mig_targets": False},
        ]
        if variants[0].get("spread") == "Ignored":
            variants.append({"spread": "Ignored", "mig_targets": False})
    for kw in variants:
        alt = build_context(policy, nodes, demands, cur)
        Packer(alt, **kw).run()
        score = _score(alt)
        if score < best_score:
            best, best_score = alt, score
    return best


def heuristic_plan(
    policy: PoolPolicy,
    nodes: Sequence[NodeInventory],
    demands: Sequence[Demand],
    current: Iterable[CurrentPlacement] = (),
) -> Plan:
    """The heuristic's plan (``plan_pool`` without ``optimize``), with the garbage collector paused."""
    with gc_paused():
        return build_plan(run_heuristic(policy, nodes, demands, current))
