"""Shares that are already configured and free (docs/planner.md section 4.3, step 3a; docs/autoscaling.md).

An idle GPU whose current configuration already gives a replica a share needs no reconfiguration: a MIG GPU
whose instances include one of a fitting profile (no new ``nvidia.com/mig.config``, no drain), a GPU of a node
that is already in MPS mode with caps that hold the replica, or of a node already time-sliced. The packer
takes such a GPU before it opens a GPU that needs a new MIG layout or a node's sharing mode to change
(:func:`find_configured`). A GPU kept warm for a deployment (``Demand.warm``) goes to that deployment first and
to no other deployment in this step; other deployments take it only as their last new GPU
(:func:`free_gpu_of`, :func:`fresh_node`).
"""

from __future__ import annotations

from typing import NamedTuple

from slm_operator.planner.state import Context, Dep, Gpu, Node, mps_cap
from slm_operator.planner.vocabulary import (
    MIG,
    MPS,
    NODE_FREE,
    NODE_MPS,
    NODE_NONE,
    NODE_TIME_SLICING,
    ROLE_POOL,
    Mechanism,
)

#: nodes looked at when a fresh node without another deployment's warm GPU is preferred
_FRESH_SCAN = 16


class Configured(NamedTuple):
    """An idle GPU whose configuration gives the replica a share as it is."""

    gpu: Gpu
    kind: Mechanism
    #: MIG profile index, or -1
    profile: int
    #: MPS clients / time-slicing replicas per GPU of the node (0 for MIG)
    per_gpu: int


def node_per_gpu(ctx: Context, node: Node, kind: Mechanism) -> int:
    """MPS clients or time-slicing replicas per GPU the node has now (its planned mode, else its inventory)."""
    if node.mode in (NODE_MPS, NODE_TIME_SLICING) and node.n:
        return node.n
    inv = node.inv
    if kind == MPS:
        limit = min([ctx.policy.mps_max_clients_per_gpu] + [g.model.mps_max_clients for g in node.gpus])
    else:
        limit = ctx.policy.ts_max_replicas_per_gpu
    return max(2, min(inv.sharing_replicas or limit, limit))


def _usable(ctx: Context, g: Gpu, kind: Mechanism, dep: Dep) -> int:
    """Per-GPU count (or 1 for MIG) when the idle GPU gives ``dep`` a share of ``kind`` as configured, else 0."""
    node = g.node
    if g.role != ROLE_POOL or g.reps or g.mode is not None or g.frozen is not None or not node.schedulable:
        return 0
    if g not in node.free.get(g.key, ()):
        return 0
    if kind == MIG:
        return 1 if node.mode in (NODE_FREE, NODE_NONE, NODE_TIME_SLICING) else 0
    if node.whole or node.inv.sharing != ("MPS" if kind == MPS else "TimeSlicing"):
        return 0
    wanted_mode = NODE_MPS if kind == MPS else NODE_TIME_SLICING
    if node.mode not in (NODE_FREE, wanted_mode):
        return 0
    n = node_per_gpu(ctx, node, kind)
    if kind == MPS:
        return n if mps_cap(g.mem_mib, n) >= dep.size else 0
    return n if dep.size <= ctx.ts_capacity(g) else 0


def _idle(g: Gpu) -> bool:
    """Still idle and free on its node (entries of ``Context.configured`` go stale as GPUs are taken)."""
    return not g.reps and g.mode is None and g.frozen is None and g in g.node.free.get(g.key, ())


def _first(ctx: Context, gpus: list[Gpu], kind: Mechanism, dep: Dep, spread: bool) -> tuple[Gpu, int] | None:
    """The first GPU warm for nobody that gives ``dep`` the share (on a node without ``dep`` first when node
    spread applies)."""
    while gpus and not _idle(gpus[0]):
        del gpus[0]  # taken since it was indexed
    fallback: tuple[Gpu, int] | None = None
    for g in gpus:
        if g.warm is not None:
            continue
        n = _usable(ctx, g, kind, dep)
        if not n:
            continue
        if not (spread and dep.uid in g.node.deps):
            return g, n
        if fallback is None:
            fallback = (g, n)
    return fallback


def _warm(
    ctx: Context, dep: Dep, kind: Mechanism, model: str, profiles: tuple[int, ...]
) -> Configured | None:
    """A GPU kept warm for ``dep`` that gives it a share of ``kind`` on ``model`` as configured."""
    for w in dep.demand.warm:
        g = ctx.gpu_at.get((w.node, w.gpu_index))
        if g is None or g.warm != dep.key or g.key != model:
            continue
        if kind == MIG:
            counts = g.inv_counts
            for p in profiles:
                if counts is not None and counts[p] and _usable(ctx, g, MIG, dep):
                    return Configured(g, MIG, p, 0)
            continue
        n = _usable(ctx, g, kind, dep)
        if n:
            return Configured(g, kind, -1, n)
    return None


def find_configured(
    ctx: Context,
    dep: Dep,
    options: list[tuple[Mechanism, str, tuple[int, ...]]],
    spread: bool,
    warm_only: bool = False,
) -> Configured | None:
    """An idle GPU configured for one of ``options`` (kind, GPU model, MIG profiles to look for; best first):
    one kept warm for ``dep`` first, then (unless ``warm_only``) the first option with a GPU warm for nobody."""
    if dep.demand.warm:
        for kind, model, profiles in options:
            hit = _warm(ctx, dep, kind, model, profiles)
            if hit is not None:
                return hit
    if warm_only:
        return None
    for kind, model, profiles in options:
        if kind == MIG:
            for p in profiles:
                found = _first(ctx, ctx.configured.get((MIG, model, p), []), MIG, dep, spread)
                if found is not None:
                    return Configured(found[0], MIG, p, 0)
            continue
        found = _first(ctx, ctx.configured.get((kind, model), []), kind, dep, spread)
        if found is not None:
            return Configured(found[0], kind, -1, found[1])
    return None


def free_gpu_of(node: Node, model: str, dep: Dep) -> Gpu:
    """Take a free GPU of ``model`` from ``node`` for ``dep``: the lowest index, except that a GPU kept warm for
    another deployment comes last."""
    free = node.free[model]
    for i, g in enumerate(free):
        if g.warm is None or g.warm == dep.key:
            return free.pop(i)
    return free.pop(0)


def fresh_node(nodes: dict[int, Node], dep: Dep, any_warm: bool) -> Node:
    """A fresh node: the first one, or (while GPUs are kept warm) the first of a few without a GPU kept warm
    for another deployment."""
    first = next(iter(nodes.values()))
    if not any_warm:
        return first
    for i, node in enumerate(nodes.values()):
        if i >= _FRESH_SCAN:
            break
        if all(g.warm is None or g.warm == dep.key for g in node.gpus):
            return node
    return first
