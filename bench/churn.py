"""Churn replay: a 1,000-GPU pool through rounds of 10 % change, re-planned the operator's way (stable: running
replicas stay) and with consolidation under a disruption budget (docs/planner.md §4.9, docs/benchmarks.md).

Each round changes 10 % of the deployments (``change_demands``: half scale by ±1-2 replicas, a quarter are
deleted and as many new ones arrive), then:

* ``churn``: ``plan_pool(policy, nodes, demands, current)`` with the replicas of the previous round running,
  the inventory as the previous plan left it (``apply_plan``);
* ``churn-consolidated``: the same re-plan, then ``consolidate`` with ``max_moves`` = the budget's share of the
  running replicas, the moves done, and a re-plan of the result (which must move nothing); again with what the
  budget has left, as the operator's next passes would once the moves are done, until a call moves nothing
  (at most ``CALLS`` calls per round).

One JSON row per round and method: ``gpusUsed`` after the round, ``gpusFresh`` (a fresh plan of the round's
demands), ``replicasMoved`` (replicas the re-plan evicted plus consolidation moves).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from bench.workloads import agentic_mix, change_demands

ROUNDS = 10
FRACTION = 0.10
#: share of the running replicas consolidation may move per round
BUDGET_PERCENT = 2.0
#: consolidate whenever the pool uses more GPUs than a fresh plan: the threshold is a trigger, and the churn of
#: the next round adds to whatever a round leaves (at 2 the pool drifted to 1.034, docs/benchmarks.md)
THRESHOLD_PERCENT = 0.0
#: consolidation calls per round at most (the operator's passes within the hour, each with what the budget has
#: left once the moves before are done)
CALLS = 4


def run_churn(
    pool: int = 1000,
    seed: int = 3,
    rounds: int = ROUNDS,
    budget_percent: float = BUDGET_PERCENT,
    threshold_percent: float = THRESHOLD_PERCENT,
) -> list[dict[str, Any]]:
    """The rows of both methods, round 0 (the first plan) to ``rounds``."""
    from slm_operator.planner import ConsolidationBudget, apply_plan, consolidate, plan_pool

    w = agentic_mix(pool, seed=seed)
    first = plan_pool(w.policy, w.nodes, w.demands)
    demands = w.demands
    state = {
        "churn": (apply_plan(w.nodes, first), first.placements()),
        "churn-consolidated": (apply_plan(w.nodes, first), first.placements()),
    }
    rows: list[dict[str, Any]] = []
    for method in state:
        rows.append(_row(w.name, pool, seed, method, 0, first.pool.gpus_used, first.pool.gpus_used, 0, 0))
    for rnd in range(1, rounds + 1):
        demands = change_demands(demands, FRACTION, seed=seed * 1000 + rnd)
        fresh = plan_pool(w.policy, w.nodes, demands).pool.gpus_used
        nodes, cur = state["churn"]
        plan = plan_pool(w.policy, nodes, demands, cur)
        state["churn"] = (apply_plan(nodes, plan), plan.placements())
        running = len(plan.placements())
        rows.append(
            _row(
                w.name,
                pool,
                seed,
                "churn",
                rnd,
                plan.pool.gpus_used,
                fresh,
                len(plan.pool.evictions),
                running,
            )
        )
        nodes, cur = state["churn-consolidated"]
        plan = plan_pool(w.policy, nodes, demands, cur)
        nodes, cur = apply_plan(nodes, plan), plan.placements()
        budget = ConsolidationBudget(
            max_moves=int(len(cur) * budget_percent / 100), threshold_percent=threshold_percent
        )
        running, before, used = len(cur), None, plan.pool.gpus_used
        moves = freed = nodes_freed = replan_moved = calls = break_first = 0
        seconds = cpu = 0.0
        # the operator's passes within the hour: consolidate, the moves done, again with what the budget has
        # left, until a call moves nothing (``CALLS`` at most)
        for _ in range(CALLS):
            left = budget.model_copy(update={"max_moves": budget.max_moves - moves})
            t0, c0 = time.perf_counter(), time.process_time()
            c = consolidate(w.policy, nodes, demands, cur, left)
            seconds, cpu = seconds + time.perf_counter() - t0, cpu + time.process_time() - c0
            calls += 1
            before = c.gpus_used if before is None else before
            after = plan_pool(w.policy, nodes, demands, c.placements)
            nodes, cur, used = apply_plan(nodes, after), after.placements(), after.pool.gpus_used
            if not c.moves:
                break
            moves += len(c.moves)
            break_first += sum(1 for m in c.moves if not m.make_before_break)
            freed, nodes_freed = freed + c.gpus_freed, nodes_freed + len(c.nodes_freed)
            replan_moved += len(after.pool.evictions)
        state["churn-consolidated"] = (nodes, cur)
        row = _row(
            w.name,
            pool,
            seed,
            "churn-consolidated",
            rnd,
            used,
            fresh,
            len(plan.pool.evictions) + moves + replan_moved,
            running,
        )
        row.update(
            consolidationMoves=moves,
            breakBeforeMakeMoves=break_first,
            consolidateCalls=calls,
            maxMoves=budget.max_moves,
            thresholdPercent=threshold_percent,
            gpusBeforeConsolidation=before,
            gpusFreed=freed,
            nodesFreed=nodes_freed,
            replanMovedAfterConsolidation=replan_moved,
            consolidateSeconds=round(seconds, 3),
            consolidateCpuSeconds=round(cpu, 3),
        )
        rows.append(row)
        print(
            f"  round {rnd:>2}: stable {rows[-2]['gpusUsed']} GPUs, consolidated {used} GPUs "
            f"({moves} moves, {break_first} break-before-make, of {budget.max_moves} allowed, {calls} calls, "
            f"{seconds:.2f} s, {cpu:.2f} s CPU), fresh {fresh}",
            file=sys.stderr,
        )
    return rows


def _row(
    workload: str,
    pool: int,
    seed: int,
    method: str,
    rnd: int,
    used: int,
    fresh: int,
    moved: int,
    running: int,
) -> dict[str, Any]:
    return {
        "workload": workload,
        "poolGPUs": pool,
        "seed": seed,
        "method": method,
        "round": rnd,
        "gpusUsed": used,
        "gpusFresh": fresh,
        "ratio": round(used / fresh, 3) if fresh else 1.0,
        "replicasMoved": moved,
        "runningReplicas": running,
        "movedPercent": round(100 * moved / running, 2) if running else 0.0,
    }


def report(rows: list[dict[str, Any]]) -> str:
    """Both methods side by side, one line per round."""
    by = {(r["method"], r["round"]): r for r in rows if r.get("method", "").startswith("churn")}
    lines = ["churn replay (10 % of deployments change per round): GPUs used / fresh plan, replicas moved"]
    lines.append(f"{'round':>5} {'fresh':>6} {'stable':>14} {'consolidated':>14} {'moved':>12}")
    for rnd in sorted({k[1] for k in by}):
        s, c = by.get(("churn", rnd)), by.get(("churn-consolidated", rnd))
        if s is None or c is None:
            continue
        lines.append(
            f"{rnd:>5} {s['gpusFresh']:>6} {s['gpusUsed']:>6} ({s['ratio']:.3f}) {c['gpusUsed']:>6} ({c['ratio']:.3f}) "
            f"{c['replicasMoved']:>5} ({c['movedPercent']:.2f}%)"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pool", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=ROUNDS)
    ap.add_argument("--budget-percent", type=float, default=BUDGET_PERCENT)
    ap.add_argument(
        "--threshold-percent",
        type=float,
        default=THRESHOLD_PERCENT,
        help="consolidate only when the pool uses more than this many percent GPUs above a fresh plan",
    )
    ap.add_argument("--json", action="store_true", help="print the rows as JSON lines")
    args = ap.parse_args(argv)
    rows = run_churn(args.pool, args.seed, args.rounds, args.budget_percent, args.threshold_percent)
    if args.json:
        for r in rows:
            print(json.dumps(r))
    print(report(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
