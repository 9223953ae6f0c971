"""The capacity index: pool GPUs and nodes with free capacity, by what they can still take.

Every step of the packer is a few dictionary lookups here instead of a scan of the pool
(docs/planner.md section 4.4):

* open MIG GPUs by (model, layout group), a layout group being (layout target id, layout state); per (model,
  profile) a sorted list of the non-empty groups that accept the profile, fullest result first;
* frozen MIG layouts by (model, free profile);
* MPS GPUs with free client slots by (model, clients per GPU), with a sorted list of their caps;
* time-sliced GPUs with room by (model, 256 MiB bucket of free memory);
* nodes with free GPUs by (mode they can give a new GPU, model[, MPS clients per GPU]).

:meth:`CapacityIndex.index_gpu` / :meth:`CapacityIndex.index_node` must be called after a GPU or node changed.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from typing import Any

from slm_operator.planner.mig import MigGeometry
from slm_operator.planner.state import Context, Gpu, Node, mps_cap
from slm_operator.planner.targets import MigTargets, target_room
from slm_operator.planner.vocabulary import (
    EXCLUSIVE,
    MIG,
    MPS,
    NODE_FREE,
    NODE_MPS,
    NODE_NONE,
    NODE_TIME_SLICING,
    ROLE_POOL,
    TIME_SLICING,
)

#: free time-slicing memory is bucketed by 256 MiB
BUCKET_SHIFT = 28
#: open MIG layouts are grouped by target id * stride + layout state
TARGET_STRIDE = 1 << 16
#: index kind of a GPU with a frozen MIG layout (the other kinds are mechanisms)
FROZEN_MIG = "FrozenMIG"
#: node index kind of a node without a mode yet
FRESH = "Fresh"


class CapacityIndex:
    """Indexes of the pool's open capacity; see the module docstring."""

    def __init__(self, ctx: Context, targets: MigTargets) -> None:
        self.targets = targets
        #: open MIG GPUs: model -> layout group -> {gid: GPU}
        self.mig_open: dict[str, dict[int, dict[int, Gpu]]] = {}
        #: per (model, profile): non-empty layout groups that accept the profile, as sorted
        #: (-memory slices after adding it, layout group): the fullest result first
        self.accepting: dict[tuple[str, int], list[tuple[int, int]]] = {}
        #: frozen MIG layouts with a free instance: (model, profile) -> {gid: GPU}
        self.mig_frozen: dict[tuple[str, int], dict[int, Gpu]] = {}
        #: GPUs with a frozen layout and a free instance, per model
        self.frozen_models: dict[str, int] = {}
        #: MPS GPUs with a free client slot: (model, clients per GPU) -> {gid: GPU}
        self.mps_open: dict[tuple[str, int], dict[int, Gpu]] = {}
        #: the keys of ``mps_open`` as sorted (cap, model, clients per GPU)
        self.mps_caps: list[tuple[int, str, int]] = []
        #: bumped whenever an MPS GPU is indexed (memo of failed client lowering)
        self.mps_epoch = 0
        #: time-sliced GPUs with room: model -> free-memory bucket -> {gid: GPU}
        self.ts_open: dict[str, dict[int, dict[int, Gpu]]] = {}
        #: the buckets of ``ts_open`` per model, sorted
        self.ts_buckets: dict[str, list[int]] = {}
        #: time-slicing memory budget per gid
        self.ts_capacity = [ctx.ts_capacity(g) for g in ctx.gpus]
        #: nodes with a free GPU: (kind, model[, MPS clients per GPU]) -> {node pos: node}
        self.nodes: dict[tuple[Any, ...], dict[int, Node]] = {}
        #: positions of nodes whose config must not change (consolidation: replicas run there): a free GPU
        #: of such a node is only offered as what the node's sharing mode gives as it is (``set_fixed``)
        self.fixed: frozenset[int] = frozenset()
        for g in ctx.gpus:
            self.index_gpu(g)
        for n in ctx.nodes:
            self.index_node(n)

    # ------------------------------------------------------------------------------------------ GPUs

    def index_gpu(self, g: Gpu) -> None:
        """(Re-)index a GPU by what it can still take."""
        self._unindex_gpu(g)
        if g.role != ROLE_POOL or not g.node.schedulable:
            return
        mode = g.mode
        if mode == MIG:
            geo = g.geo
            assert geo is not None
            if g.frozen is not None:
                self._index_frozen(g)
            elif g.reps and not geo.maximal[g.mig_state]:
                self._index_open_mig(g, geo)
        elif mode == MPS:
            self._index_mps(g)
        elif mode == TIME_SLICING and len(g.reps) < g.node.n:
            self._index_time_sliced(g)

    def _index_frozen(self, g: Gpu) -> None:
        free = tuple(p for p, c in enumerate(g.free_inst) if c > 0)
        if not free:
            return
        for p in free:
            self.mig_frozen.setdefault((g.key, p), {})[g.gid] = g
        self.frozen_models[g.key] = self.frozen_models.get(g.key, 0) + 1
        g.indexed_as = (FROZEN_MIG, g.key, *free)

    def _index_open_mig(self, g: Gpu, geo: MigGeometry) -> None:
        # open layouts are grouped by (layout target, state): a GPU with a target accepts only what its target
        # still has room for
        per_group = self.mig_open.setdefault(g.key, {})
        group = self.targets.of_gpu.get(g.gid, 0) * TARGET_STRIDE + g.mig_state
        gpus = per_group.get(group)
        if gpus is None:
            gpus = per_group[group] = {}
            for p, next_state in self.accepts(geo, group):
                insort(self.accepting.setdefault((g.key, p), []), (-geo.slices[next_state], group))
        gpus[g.gid] = g
        g.indexed_as = (MIG, g.key, group)

    def _index_mps(self, g: Gpu) -> None:
        self.mps_epoch += 1
        clients = g.node.n
        if len(g.reps) >= clients:
            return
        key = (g.key, clients)
        gpus = self.mps_open.get(key)
        cap = mps_cap(g.mem_mib, clients)
        if gpus is None:
            gpus = self.mps_open[key] = {}
            insort(self.mps_caps, (cap, g.key, clients))
        gpus[g.gid] = g
        g.indexed_as = (MPS, g.key, clients, cap)

    def _index_time_sliced(self, g: Gpu) -> None:
        free = self.ts_capacity[g.gid] - g.ts_used
        if free <= 0:
            return
        bucket = free >> BUCKET_SHIFT
        per_bucket = self.ts_open.setdefault(g.key, {})
        gpus = per_bucket.get(bucket)
        if gpus is None:
            gpus = per_bucket[bucket] = {}
            insort(self.ts_buckets.setdefault(g.key, []), bucket)
        gpus[g.gid] = g
        g.indexed_as = (TIME_SLICING, g.key, bucket)

    def _unindex_gpu(self, g: Gpu) -> None:
        entry = g.indexed_as
        if entry is None:
            return
        g.indexed_as = None
        kind = entry[0]
        if kind == MIG:
            self._unindex_open_mig(g, entry[1], entry[2])
        elif kind == FROZEN_MIG:
            model = entry[1]
            self.frozen_models[model] -= 1
            for p in entry[2:]:
                del self.mig_frozen[(model, p)][g.gid]
        elif kind == MPS:
            key = (entry[1], entry[2])
            gpus = self.mps_open[key]
            del gpus[g.gid]
            if not gpus:
                del self.mps_open[key]
                del self.mps_caps[bisect_left(self.mps_caps, (entry[3], entry[1], entry[2]))]
        elif kind == TIME_SLICING:
            model, bucket = entry[1], entry[2]
            gpus = self.ts_open[model][bucket]
            del gpus[g.gid]
            if not gpus:
                del self.ts_open[model][bucket]
                buckets = self.ts_buckets[model]
                del buckets[bisect_left(buckets, bucket)]

    def _unindex_open_mig(self, g: Gpu, model: str, group: int) -> None:
        gpus = self.mig_open[model][group]
        del gpus[g.gid]
        if gpus:
            return
        del self.mig_open[model][group]
        geo = g.geo
        assert geo is not None
        for p, next_state in self.accepts(geo, group):
            groups = self.accepting[(model, p)]
            del groups[bisect_left(groups, (-geo.slices[next_state], group))]

    def accepts(self, geo: MigGeometry, group: int) -> list[tuple[int, int]]:
        """(profile, next state) pairs an open layout group (target id * stride + state) accepts."""
        target, state = divmod(group, TARGET_STRIDE)
        row = geo.add[state]
        if not target:
            return [(p, next_state) for p, next_state in enumerate(row) if next_state >= 0]
        room = target_room(geo.model_key, self.targets.layouts[target], geo.states[state])
        return [(p, next_state) for p, next_state in enumerate(row) if next_state >= 0 and p in room]

    # ------------------------------------------------------------------------------------------ nodes

    def index_node(self, n: Node) -> None:
        """(Re-)index a node by the new GPUs it can give: per free GPU model, the modes it may take there."""
        nodes = self.nodes
        for key in n.indexed_as:
            indexed = nodes.get(key)
            if indexed is not None:
                indexed.pop(n.pos, None)
        n.indexed_as = []
        if not n.schedulable:
            return
        for model, free in n.free.items():
            if not free:
                continue
            keys = self.node_keys(n, model, mig_capable=free[0].geo is not None)
            for key in keys:
                nodes.setdefault(key, {})[n.pos] = n
            n.indexed_as.extend(keys)

    def node_keys(self, n: Node, model: str, mig_capable: bool) -> list[tuple[object, ...]]:
        """The index keys of a node with a free GPU of ``model`` (``guided.py`` narrows them to its modes)."""
        if n.pos in self.fixed:
            return _fixed_node_keys(n, model)
        return _node_keys(n, model, mig_capable)

    def set_fixed(self, ctx: Context, positions: frozenset[int]) -> None:
        """Offer the free GPUs of the nodes at ``positions`` only as shares their node config gives now (no
        MIG layout, no sharing mode or clients per GPU changes there), and re-index every node."""
        self.fixed = positions
        for n in ctx.nodes:
            self.index_node(n)


def _fixed_node_keys(n: Node, model: str) -> list[tuple[object, ...]]:
    """The index keys of a node whose config must not change: another GPU of its MPS or time-slicing mode."""
    if n.mode == NODE_MPS:
        return [(MPS, model, n.n)]
    if n.mode == NODE_TIME_SLICING:
        return [(TIME_SLICING, model)]
    return []


def _node_keys(n: Node, model: str, mig_capable: bool) -> list[tuple[object, ...]]:
    """The index keys of a node with a free GPU of ``model``: what a new GPU there may become."""
    if n.mode == NODE_FREE:
        return [(FRESH, model)]
    if n.mode == NODE_MPS:
        return [(MPS, model, n.n)]
    keys: list[tuple[object, ...]] = [(MIG, model)] if mig_capable else []
    if n.mode == NODE_NONE:
        keys.append((EXCLUSIVE, model))
        if not n.whole:
            keys.append((TIME_SLICING, model))
    else:
        keys.append((TIME_SLICING, model))
    return keys
