"""The heuristic mode: the packer (``packer.py``) run in a few variants, the best plan kept (docs/planner.md
section 4.3)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

from slm_operator.planner.assemble import build_plan
from slm_operator.planner.gc_pause import gc_paused
from slm_operator.planner.model import CurrentPlacement, Demand, NodeInventory, Plan, PoolPolicy
from slm_operator.planner.packer import NewGpuOrder, Packer, PackerOptions
from slm_operator.planner.state import Context, build_context
from slm_operator.planner.vocabulary import CAPACITY_REASONS

#: pools up to this many GPUs are packed with a few variants of the heuristic and the best plan is kept
PORTFOLIO_MAX_GPUS = 512


class Score(NamedTuple):
    """How good a packing is; lower is better, compared field by field."""

    unplaced_guaranteed: int
    unplaced_burstable: int
    unplaced_best_effort: int
    moved: int
    gpus_used: int


def _score(ctx: Context) -> Score:
    """Lower is better: unplaced replicas by tier (capacity reasons), replicas moved, GPUs used."""
    unplaced = [0, 0, 0]
    moved = 0
    for r in ctx.reps:
        if r.gpu is None:
            if r.unplaced is None or r.unplaced[0] in CAPACITY_REASONS:
                unplaced[r.dep.rank] += 1
            if r.cur_gpu is not None:
                moved += 1
        elif r.cur_gpu is not None and (r.gpu is not r.cur_gpu or r.evicted):
            moved += 1
    used = sum(1 for g in ctx.gpus if g.reps)
    return Score(unplaced[0], unplaced[1], unplaced[2], moved, used)


def _variants(policy: PoolPolicy, n_gpus: int, unplaced: bool) -> list[PackerOptions]:
    """The packer variants tried after the main one, in order (the first best wins ties)."""
    variants: list[PackerOptions] = []
    if policy.spread_nodes != "Ignored" and unplaced:
        variants.append(PackerOptions(spread="Ignored"))
    if n_gpus <= PORTFOLIO_MAX_GPUS:
        # the variants without MIG layout targets keep every plan the packer made before targets existed
        variants += [
            PackerOptions(mig_targets=False),
            PackerOptions(new_gpu_order=NewGpuOrder.MEMORY, mig_targets=False),
            PackerOptions(new_gpu_order=NewGpuOrder.DENSITY, mig_targets=False),
            PackerOptions(mps_density_pct=50, mig_targets=False),
        ]
        if variants[0].spread == "Ignored":
            variants.append(PackerOptions(spread="Ignored", mig_targets=False))
    return variants


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
    cur = list(current)  # iterated once per variant
    ctx = build_context(policy, nodes, demands, cur)
    Packer(ctx).run()
    best, best_score = ctx, _score(ctx)
    for options in _variants(policy, len(ctx.gpus), unplaced=any(best_score[:3])):
        alt = build_context(policy, nodes, demands, cur)
        Packer(alt, options).run()
        score = _score(alt)
        if score < best_score:
            best, alt, best_score = alt, best, score
        alt.release()
    return best


def heuristic_plan(
    policy: PoolPolicy,
    nodes: Sequence[NodeInventory],
    demands: Sequence[Demand],
    current: Iterable[CurrentPlacement] = (),
) -> Plan:
    """The heuristic's plan (``plan_pool`` without ``optimize``), with the garbage collector paused."""
    with gc_paused():
        ctx = run_heuristic(policy, nodes, demands, current)
        try:
            return build_plan(ctx)
        finally:
            ctx.release()
