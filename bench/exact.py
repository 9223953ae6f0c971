"""What the operator's exact solver costs on small pools: the measurements behind its default limits.

    python -m bench.exact                              # pools of 4, 8 and 16 GPUs, 2 and 4 replicas per GPU
    python -m bench.exact --pools 8,16 --seeds 10 --budget 30

For each pool size, load (replicas per GPU) and seed of the benchmark's agentic mix (``bench/workloads.py``),
``solve_exact`` runs with one worker, the heuristic plan as its hint and a wall-clock cap of ``--budget``
seconds, as the operator's portfolio runs it (docs/planner.md §5.1). A row per instance: CP-SAT's status, its
wall time and deterministic time (the unit of ``--exact-budget``), and the GPUs and placed replicas of both
plans. The summary per size says how often CP-SAT proved the optimum and how long it took at most.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

from bench.workloads import agentic_mix


def one(pool: int, rpg: float, seed: int, budget: float) -> dict[str, Any]:
    """One instance: the heuristic's plan and CP-SAT's result with their costs."""
    from slm_operator.planner import plan_pool, solve_exact

    w = agentic_mix(pool, seed=seed, replicas_per_gpu=rpg)
    res = solve_exact(w.policy, w.nodes, w.demands, time_budget_s=budget, stable=True)
    heur = plan_pool(w.policy, w.nodes, w.demands)
    plan = res.plan
    return {
        "gpus": pool,
        "replicasPerGpu": rpg,
        "seed": seed,
        "replicas": w.replicas,
        "status": res.status,
        "wallSeconds": round(res.wall_seconds, 3),
        "deterministicSeconds": round(res.deterministic_seconds, 3),
        "gpusUsed": plan.pool.gpus_used,
        "replicasPlaced": plan.pool.replicas_placed,
        "heuristicGpusUsed": heur.pool.gpus_used,
        "heuristicReplicasPlaced": heur.pool.replicas_placed,
    }


def summary(rows: list[dict[str, Any]]) -> str:
    """One line per (GPUs, replicas per GPU): proven / instances, the slowest proof, the plans compared."""
    out = [
        "| GPUs | replicas/GPU | replicas | proven optimal | slowest proof (wall s / det. s) "
        "| exact better than heuristic |",
        "|---|---|---|---|---|---|",
    ]
    keys = sorted({(r["gpus"], r["replicasPerGpu"]) for r in rows})
    for gpus, rpg in keys:
        sel = [r for r in rows if r["gpus"] == gpus and r["replicasPerGpu"] == rpg]
        proven = [r for r in sel if r["status"] == "OPTIMAL"]
        slow = max(proven, key=lambda r: r["wallSeconds"]) if proven else None
        better = sum(
            1
            for r in sel
            if r["status"] in ("OPTIMAL", "FEASIBLE")
            and (r["replicasPlaced"], -r["gpusUsed"])
            > (r["heuristicReplicasPlaced"], -r["heuristicGpusUsed"])
        )
        reps = f"{min(r['replicas'] for r in sel)}-{max(r['replicas'] for r in sel)}"
        cost = f"{slow['wallSeconds']:.2f} / {slow['deterministicSeconds']:.2f}" if slow else "-"
        out.append(f"| {gpus} | {rpg:g} | {reps} | {len(proven)}/{len(sel)} | {cost} | {better} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.exact", description=__doc__.split("\n\n")[0])
    ap.add_argument("--pools", default="4,8,16", help="pool sizes in GPUs (default %(default)s)")
    ap.add_argument("--load", default="2,4", help="replicas per GPU (default %(default)s)")
    ap.add_argument("--seeds", type=int, default=5, help="seeds 1..N per size and load (default %(default)s)")
    ap.add_argument(
        "--budget", type=float, default=20.0, help="wall-clock cap per solve (default %(default)s)"
    )
    args = ap.parse_args(argv)
    rows = []
    for pool in (int(x) for x in args.pools.split(",")):
        for rpg in (float(x) for x in args.load.split(",")):
            for seed in range(1, args.seeds + 1):
                row = one(pool, rpg, seed, args.budget)
                print(json.dumps(row), file=sys.stderr, flush=True)
                rows.append(row)
    meta = {
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "loadAverage": [round(x, 2) for x in os.getloadavg()],
        "command": " ".join(["python -m bench.exact", *(argv if argv is not None else sys.argv[1:])]),
    }
    out = Path(os.environ.get("BENCH_OUT", "bench/out/exact.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    print(summary(rows))
    print(json.dumps(meta))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
