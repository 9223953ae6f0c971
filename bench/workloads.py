"""Seeded workload generator for the packing benchmark: an "agentic mix" of small models on mixed GPU pools.

Deployments are drawn from the SLM catalog (0.5B-9B parameters) with BF16/FP8/INT4 weights, 4k-32k contexts,
1-8 concurrent sequences and 1-8 replicas; tiers ~30% Guaranteed / 40% Burstable / 30% BestEffort. Each
deployment's memory comes from ``slm_operator.sizing.estimate_memory``. Pools mix H100-80GB, A100-40GB,
H200-141GB (8 GPUs per node) and L4 (4 per node) nodes; demand is scaled to ~5 replicas per GPU.
Everything is a pure function of (pool size, seed): the same arguments give the same workload.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from slm_operator.catalog import slm_models
from slm_operator.planner.model import Demand, GpuInventory, NodeInventory, PoolPolicy
from slm_operator.sizing import Quantization, estimate_memory

#: node pattern (model key, GPUs per node), repeated until the pool has the wanted number of GPUs
NODE_PATTERN: tuple[tuple[str, int], ...] = (
    ("H100-80GB", 8),
    ("A100-40GB", 8),
    ("H200-141GB", 8),
    ("L4", 4),
)
QUANTS = (("BF16", 0.4), ("FP8", 0.3), ("INT4", 0.3))
CONTEXTS = ((4096, 0.4), (8192, 0.3), (16384, 0.2), (32768, 0.1))
CONCURRENCY = ((1, 0.3), (2, 0.3), (4, 0.25), (8, 0.15))
REPLICAS = ((1, 0.25), (2, 0.25), (3, 0.15), (4, 0.12), (5, 0.08), (6, 0.06), (7, 0.05), (8, 0.04))
TIERS = (("Guaranteed", 0.3), ("Burstable", 0.4), ("BestEffort", 0.3))

#: the policy every benchmark pool uses (see docs/benchmarks.md)
BENCH_POLICY = PoolPolicy(
    name="bench",
    mps_max_clients_per_gpu=16,
    ts_max_replicas_per_gpu=16,
    memory_oversubscription_percent=100,
)


@dataclass(frozen=True)
class Workload:
    name: str
    pool_gpus: int
    seed: int
    policy: PoolPolicy
    nodes: tuple[NodeInventory, ...]
    demands: tuple[Demand, ...]

    @property
    def replicas(self) -> int:
        return sum(d.replicas for d in self.demands)


def _pick(rng: random.Random, table: tuple[tuple[object, float], ...]) -> object:
    x = rng.random() * sum(w for _, w in table)
    for v, w in table:
        x -= w
        if x < 0:
            return v
    return table[-1][0]


def make_pool(n_gpus: int) -> tuple[NodeInventory, ...]:
    """Nodes following NODE_PATTERN until the pool has exactly ``n_gpus`` GPUs (the last node may be partial)."""
    nodes: list[NodeInventory] = []
    total = 0
    i = 0
    while total < n_gpus:
        model, per = NODE_PATTERN[i % len(NODE_PATTERN)]
        k = min(per, n_gpus - total)
        nodes.append(
            NodeInventory(
                name=f"node-{i:05d}-{model.lower()}",
                gpus=tuple(GpuInventory(index=j, model=model) for j in range(k)),
            )
        )
        total += k
        i += 1
    return tuple(nodes)


def _catalog() -> list[tuple[str, object]]:
    out = []
    for m in slm_models():
        p = m.architecture.parameters
        if 0.45e9 <= p <= 9.5e9:
            out.append((m.name, m.architecture))
    out.sort(key=lambda t: t[0])
    return out


def random_demand(rng: random.Random, i: int) -> Demand:
    cat = _catalog()
    name, arch = cat[rng.randrange(len(cat))]
    quant = str(_pick(rng, QUANTS))
    ctx = int(_pick(rng, CONTEXTS))  # type: ignore[call-overload]
    ctx = min(ctx, arch.max_context_tokens)  # type: ignore[attr-defined]
    conc = int(_pick(rng, CONCURRENCY))  # type: ignore[call-overload]
    est = estimate_memory(arch, Quantization(quant), ctx, conc)  # type: ignore[arg-type]
    return Demand(
        deployment=f"team-{i % 37:02d}/{name}-{quant.lower()}-{i:06d}",
        tier=_pick(rng, TIERS),  # type: ignore[arg-type]
        replicas=int(_pick(rng, REPLICAS)),  # type: ignore[call-overload]
        memory_bytes=est.total_bytes,
        order_key=f"2026-01-01T00:00:00Z-{i:06d}",
    )


def agentic_mix(pool_gpus: int, seed: int = 1, replicas_per_gpu: float = 5.0) -> Workload:
    rng = random.Random(seed * 1_000_003 + pool_gpus)
    demands: list[Demand] = []
    total = 0
    i = 0
    while total < replicas_per_gpu * pool_gpus:
        d = random_demand(rng, i)
        demands.append(d)
        total += d.replicas
        i += 1
    return Workload(
        name=f"agentic-mix-{pool_gpus}",
        pool_gpus=pool_gpus,
        seed=seed,
        policy=BENCH_POLICY,
        nodes=make_pool(pool_gpus),
        demands=tuple(demands),
    )


def change_demands(demands: tuple[Demand, ...], fraction: float, seed: int) -> tuple[Demand, ...]:
    """Change ``fraction`` of the deployments: half of them scale (±1-2 replicas), a quarter are deleted and
    the same number of new deployments arrive."""
    rng = random.Random(seed)
    out = list(demands)
    n = max(1, round(len(out) * fraction))
    idx = sorted(rng.sample(range(len(out)), n))
    removed: set[int] = set()
    for k, j in enumerate(idx):
        d = out[j]
        if k % 4 == 3:
            removed.add(j)
        else:
            delta = rng.choice((-2, -1, 1, 2))
            out[j] = d.model_copy(update={"replicas": max(0, d.replicas + delta)})
    kept = [d for j, d in enumerate(out) if j not in removed]
    base = 1_000_000 + 10_000 * seed
    for k in range(len(removed)):
        kept.append(random_demand(rng, base + k))
    return tuple(kept)
