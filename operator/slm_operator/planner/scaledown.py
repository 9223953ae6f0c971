"""Which replicas a scale-down removes, and which ordinals a deployment's replicas have (docs/planner.md
section 4.8, docs/autoscaling.md).

A deployment's replicas are numbered, and each replica pod carries its number; a scale-down removes the
replicas whose removal frees the most, not simply the highest numbers, so the numbers of a deployment's
replicas may have gaps (replicas 0 and 2 after a scale-down from 3 to 2). The rule, one removal at a time:

1. a replica whose GPU is no longer in the pool (it would have to move anyway);
2. a replica whose GPU is then wholly free (the GPU can take any other share, or be reconfigured);
3. among those, one whose node then holds no replica at all (its sharing mode may change, it may be drained);
4. the most free share of its GPU's memory once it is gone (memory the shares left on the GPU hold);
5. the newest replica (highest ordinal).

Scale-ups reuse the lowest free ordinals. Pure and deterministic; :func:`replica_ordinals` is used by
``state.build_context`` (stateless plans) and ``invariants.check_plan``, :func:`removal_order` also by the
incremental planner.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from slm_operator.catalog import gpu_by_key
from slm_operator.planner.mig import geometry
from slm_operator.planner.model import CurrentPlacement, Demand, NodeInventory, PoolPolicy

GpuKey = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Held:
    """One running replica as the scale-down sees it: where it is and how much of its GPU's memory it holds."""

    deployment: str
    ordinal: int
    gpu: GpuKey
    held_bytes: int


@dataclass(frozen=True, slots=True)
class RemovalKey:
    """How much removing one replica frees; higher is removed first (compared field by field)."""

    gpu_gone: bool
    gpu_freed: bool
    node_freed: bool
    free_fraction: float
    ordinal: int


def removal_key(
    candidate: Held, on_gpu: Sequence[Held], gpu_memory: Mapping[GpuKey, int], node_replicas: int
) -> RemovalKey:
    """What removing ``candidate`` frees: ``on_gpu`` are the replicas on its GPU now (``candidate`` among
    them), ``gpu_memory`` the memory of each pool GPU, ``node_replicas`` the replicas on its node now."""
    memory = gpu_memory.get(candidate.gpu)
    if memory is None:
        return RemovalKey(True, True, True, 1.0, candidate.ordinal)
    left = [h for h in on_gpu if h is not candidate]
    used = sum(h.held_bytes for h in left)
    free = max(0.0, (memory - used) / memory)
    return RemovalKey(False, not left, node_replicas <= 1, free, candidate.ordinal)


@dataclass(frozen=True, slots=True)
class HeldIndex:
    """The running replicas by GPU, by node (counts) and by deployment (built once per plan)."""

    by_gpu: dict[GpuKey, list[Held]]
    per_node: dict[str, int]
    by_dep: dict[str, list[Held]]

    @classmethod
    def of(cls, held: Sequence[Held]) -> HeldIndex:
        by_gpu: dict[GpuKey, list[Held]] = {}
        per_node: dict[str, int] = {}
        by_dep: dict[str, list[Held]] = {}
        for h in held:
            by_gpu.setdefault(h.gpu, []).append(h)
            per_node[h.gpu[0]] = per_node.get(h.gpu[0], 0) + 1
            by_dep.setdefault(h.deployment, []).append(h)
        return cls(by_gpu, per_node, by_dep)


def removal_order(
    deployment: str,
    remove: int,
    held: Sequence[Held],
    gpu_memory: Mapping[GpuKey, int],
    index: HeldIndex | None = None,
) -> list[int]:
    """The ordinals of ``deployment`` to remove, ``remove`` of them, one at a time by :class:`RemovalKey`
    (the replicas ``held`` on the pool now, ``index`` their :class:`HeldIndex` if built already; each removal
    changes what the next one frees)."""
    idx = index or HeldIndex.of(held)
    mine = list(idx.by_dep.get(deployment, ()))
    by_gpu = {h.gpu: list(idx.by_gpu[h.gpu]) for h in mine}  # copies: the index is shared
    per_node = {h.gpu[0]: idx.per_node[h.gpu[0]] for h in mine}
    removed: list[int] = []
    for _ in range(min(remove, len(mine))):
        best = max(
            mine,
            key=lambda h: _as_tuple(removal_key(h, by_gpu[h.gpu], gpu_memory, per_node[h.gpu[0]])),
        )
        removed.append(best.ordinal)
        mine.remove(best)
        by_gpu[best.gpu].remove(best)
        per_node[best.gpu[0]] -= 1
    return removed


def _as_tuple(k: RemovalKey) -> tuple[bool, bool, bool, float, int]:
    return (k.gpu_gone, k.gpu_freed, k.node_freed, k.free_fraction, k.ordinal)


def fill_ordinals(kept: Iterable[int], replicas: int) -> tuple[int, ...]:
    """The kept ordinals (at most ``replicas`` of them) and the lowest free ones up to ``replicas``, sorted."""
    out = sorted(set(kept))[:replicas]
    taken = set(out)
    o = 0
    while len(out) < replicas:
        if o not in taken:
            out.append(o)
        o += 1
    return tuple(sorted(out))


def held_replicas(
    policy: PoolPolicy,
    nodes: Sequence[NodeInventory],
    demands: Sequence[Demand],
    current: Iterable[CurrentPlacement],
) -> tuple[list[Held], dict[GpuKey, int]]:
    """The running replicas of the pool's deployments (one per deployment and ordinal) with the memory their
    shares hold, and the memory of every GPU in the inventory."""
    gpu_memory: dict[GpuKey, int] = {}
    gpu_model: dict[GpuKey, str] = {}
    sharing: dict[str, int] = {}
    for n in nodes:
        if n.sharing == "MPS":
            sharing[n.name] = max(2, n.sharing_replicas or policy.mps_max_clients_per_gpu)
        for g in n.gpus:
            try:
                gpu_memory[(n.name, g.index)] = gpu_by_key(g.model).memory_bytes
            except KeyError:
                continue
            gpu_model[(n.name, g.index)] = g.model
    sizes = {d.deployment: d.memory_bytes for d in demands}
    out: list[Held] = []
    seen: set[tuple[str, int]] = set()
    for c in sorted(current, key=lambda c: (c.deployment, c.ordinal, c.node, c.gpu_index)):
        if c.deployment not in sizes or (c.deployment, c.ordinal) in seen:
            continue
        seen.add((c.deployment, c.ordinal))
        key = (c.node, c.gpu_index)
        memory = gpu_memory.get(key, 0)
        if c.mechanism == "MIG":
            held = _mig_bytes(gpu_model.get(key), c.mig_profile, sizes[c.deployment])
        elif c.mechanism == "MPS":
            held = memory // sharing.get(c.node, policy.mps_max_clients_per_gpu)
        elif c.mechanism == "TimeSlicing":
            held = sizes[c.deployment]
        else:
            held = memory
        out.append(Held(c.deployment, c.ordinal, key, held))
    return out, gpu_memory


def _mig_bytes(model: str | None, profile: str | None, fallback: int) -> int:
    geo = geometry(model) if model else None
    if geo is None or profile is None or profile not in geo.index:
        return fallback
    return geo.profiles[geo.index[profile]].memory_bytes


def replica_ordinals(
    policy: PoolPolicy,
    nodes: Sequence[NodeInventory],
    demands: Sequence[Demand],
    current: Iterable[CurrentPlacement],
) -> dict[str, tuple[int, ...]]:
    """Per deployment, the ordinals of its wanted replicas: the running ones (all of them when there are no
    more than wanted, else those left after :func:`removal_order`), then the lowest free ordinals."""
    held, gpu_memory = held_replicas(policy, nodes, demands, current)
    index = HeldIndex.of(held)
    out: dict[str, tuple[int, ...]] = {}
    for d in demands:
        running = [h.ordinal for h in index.by_dep.get(d.deployment, ())]
        extra = len(running) - d.replicas
        gone = set(removal_order(d.deployment, extra, held, gpu_memory, index)) if extra > 0 else set()
        out[d.deployment] = fill_ordinals((o for o in running if o not in gone), d.replicas)
    return out
