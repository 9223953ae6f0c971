"""Packing benchmark: slm-operator's planner versus what users do today, on the same workloads in one run.

    python -m bench.packing            # pools of 10, 100, 1,000 and 10,000 GPUs (< 10 minutes on 2 cores)
    python -m bench.packing --quick    # pools of 10, 100 and 1,000 GPUs, fewer exact instances

Every (pool, method) runs in its own subprocess, so that planning time and peak memory are measured alone:
``planSeconds`` is wall time of the method only (the workload is generated before the clock starts) and
``peakMemoryMiB`` is the growth of the subprocess's peak RSS (``resource.getrusage``) during the method.
After the pools, the churn replay (``bench/churn.py``, skipped with ``--no-churn``): the 1,000-GPU pool
through 10 rounds of 10 % change, re-planned the operator's way (``method: "churn"``) and with consolidation
under a disruption budget (``method: "churn-consolidated"``), one row per round.
Rows go to the JSON file named by ``BENCH_OUT`` (default ``bench/out/results.json``); docs/benchmarks.md
explains every column and records the measured numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.churn import report as churn_report
from bench.churn import run_churn
from bench.workloads import Workload, agentic_mix, change_demands

POOLS = (10, 100, 1000, 10000)
QUICK_POOLS = (10, 100, 1000)
METHODS = (
    "slm-operator",
    "whole-gpu",
    "static-mig-balanced",
    "time-slicing-4",
    "memory-binpack",
    "lower-bound",
)
#: small pools where the exact solver can prove optimality: (GPUs, replicas per GPU)
EXACT_POOLS = ((4, 2.0), (8, 2.0))
SEED = 1
#: the churn replay's seed (issue 16 measured the drift on seed 3)
CHURN_SEED = 3


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / (1 << 20)


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _legal_violations(w: Workload, plan: Any) -> int:
    from slm_operator.planner import check_plan

    return len(check_plan(plan, w.policy, w.nodes, w.demands))


def mig_relayout(plan: Any) -> dict[str, list[int]]:
    """Diagnostic (after the clock stops): per GPU model, [MIG GPUs the plan uses, the fewest GPUs whose legal
    layouts hold the same MIG instances] (CP-SAT over the model's maximal layouts, 10 s each; node spread,
    node modes and the tiers' order ignored). The difference is what a better choice of MIG layouts alone
    could save with the plan's own choice of GPU model and profile per replica."""
    from collections import Counter

    from ortools.sat.python import cp_model

    from slm_operator.planner.mig import geometry

    demand: dict[str, Counter[str]] = {}
    used: Counter[str] = Counter()
    for g in plan.gpus:
        if g.mode != "MIG" or not g.replicas:
            continue
        used[g.product] += 1
        demand.setdefault(g.product, Counter()).update(i.profile for i in g.mig_instances if i.deployment)
    out: dict[str, list[int]] = {}
    for m, counts in sorted(demand.items()):
        geo = geometry(m)
        assert geo is not None
        layouts = [st for i, st in enumerate(geo.states) if geo.maximal[i]]
        model = cp_model.CpModel()
        z = [model.NewIntVar(0, used[m], f"z{j}") for j in range(len(layouts))]
        for name, c in counts.items():
            pi = geo.index[name]
            model.Add(sum(z[j] * lay[pi] for j, lay in enumerate(layouts) if lay[pi]) >= c)
        model.Minimize(sum(z))
        solver = cp_model.CpSolver()
        solver.parameters.max_time_in_seconds = 10
        solver.parameters.num_workers = 1
        status = solver.Solve(model)
        best = int(solver.ObjectiveValue()) if status in (cp_model.OPTIMAL, cp_model.FEASIBLE) else used[m]
        out[m] = [used[m], best]
    return out


def run_one(
    pool: int, method: str, seed: int, replicas_per_gpu: float, exact_budget: float
) -> dict[str, Any]:
    """Run one method on one workload in this process; returns a result row."""
    from bench import baselines
    from slm_operator.planner import plan_pool

    w = agentic_mix(pool, seed=seed, replicas_per_gpu=replicas_per_gpu)
    base_rss = _rss_mib()
    base_peak = _peak_mib()
    row: dict[str, Any] = {
        "workload": w.name,
        "seed": seed,
        "poolGPUs": pool,
        "method": method,
        "replicasTotal": w.replicas,
        "deployments": len(w.demands),
    }
    t0 = time.perf_counter()
    c0 = time.process_time()
    if method == "slm-operator":
        plan = plan_pool(w.policy, w.nodes, w.demands)
        dt = time.perf_counter() - t0
        row["planCpuSeconds"] = round(time.process_time() - c0, 4)
        plan = _guided(w, plan, row)
        row.update(
            gpusUsed=plan.pool.gpus_used,
            replicasPlaced=plan.pool.replicas_placed,
            memoryUsedGpusBytes=plan.pool.memory_used_gpus_bytes,
            memoryAllocatedBytes=plan.pool.memory_allocated_bytes,
            memoryStrandedBytes=plan.pool.memory_stranded_bytes,
            gpusByMode=plan.pool.gpus_by_mode,
        )
        peak = _peak_mib()
        row["violations"] = _legal_violations(w, plan)
        row["migRelayout"] = mig_relayout(plan)
    elif method == "exact":
        from slm_operator.planner.exact import solve_exact

        res = solve_exact(w.policy, w.nodes, w.demands, time_budget_s=exact_budget, workers=1)
        dt = time.perf_counter() - t0
        peak = _peak_mib()
        plan = res.plan
        row.update(
            gpusUsed=plan.pool.gpus_used,
            replicasPlaced=plan.pool.replicas_placed,
            memoryUsedGpusBytes=plan.pool.memory_used_gpus_bytes,
            memoryAllocatedBytes=plan.pool.memory_allocated_bytes,
            status=res.status,
            optimal=plan.optimal,
            violations=_legal_violations(w, plan),
        )
    elif method == "lower-bound":
        lb = baselines.lower_bound(w.policy, w.nodes, w.demands)
        dt = time.perf_counter() - t0
        peak = _peak_mib()
        # the tighter bounds, for reference (not timed: the target names the volume bound); both are valid, so
        # the plan's ratio to the node-aware one is the nearer measure of what is left to gain
        lay = baselines.layout_bound(w.policy, w.nodes, w.demands)
        node = baselines.node_bound(w.policy, w.nodes, w.demands)
        row.update(
            gpusUsed=lb.gpus,
            replicasPlaced=w.replicas if lb.feasible else None,
            lpValue=round(lb.lp_value, 3),
            memoryBound=lb.memory_bound,
            computeBound=lb.compute_bound,
            slotBound=lb.slot_bound,
            feasible=lb.feasible,
            layoutBound=lay.gpus if lay.feasible else None,
            layoutLpValue=round(lay.lp_value, 3),
            nodeBound=node.gpus if node.feasible else None,
            nodeBoundValue=round(node.value, 3),
            nodeBoundOptimal=node.optimal,
        )
    else:
        fn = {
            "whole-gpu": baselines.whole_gpu,
            "static-mig-balanced": baselines.static_mig_balanced,
            "time-slicing-4": baselines.time_slicing,
            "memory-binpack": baselines.memory_binpack,
        }[method]
        r = fn(w.policy, w.nodes, w.demands)
        dt = time.perf_counter() - t0
        peak = _peak_mib()
        row.update(
            gpusUsed=r.gpus_used,
            replicasPlaced=r.replicas_placed,
            violations=r.violations,
            memoryUsedGpusBytes=r.memory_used_gpus_bytes,
            memoryAllocatedBytes=r.memory_allocated_bytes,
        )
        if method == "whole-gpu":
            row["gpusNeeded"] = baselines.whole_gpu_needed(w.demands, w.nodes)
    row["planSeconds"] = round(dt, 4)
    # CPU time of the method (wall time above includes waiting for a CPU on a shared machine); for the exact
    # solver and the slm-operator row it also includes check_plan, so it is only reported for baselines
    if method not in ("exact", "slm-operator"):
        row["planCpuSeconds"] = round(time.process_time() - c0, 4)
    row["peakMemoryMiB"] = round(max(0.0, peak - max(base_peak, base_rss)), 1)
    return row


def _guided(w: Workload, heur: Any, row: dict[str, Any]) -> Any:
    """The operator's plan for a pool in the guided range (``GuideLimits``, docs/planner.md §5.2): the
    node-aware program solved as the operator's worker process does (its CPU reported apart, as
    ``guideCpuSeconds``: it never runs in a pass), then the pass's choice between the heuristic's plan and the
    guided one. ``planCpuSeconds`` then counts both packings, as the pass does."""
    from slm_operator.planner.guided import guided_plan
    from slm_operator.planner.nodemip import solve_node_mip
    from slm_operator.planner.portfolio import GuideLimits, better_guided, solver_installed

    limits = GuideLimits()
    if not limits.admits(w.policy, w.nodes) or not solver_installed():
        return heur
    c0 = time.process_time()
    mip = solve_node_mip(w.policy, w.nodes, w.demands, limits.time_limit_s)
    c1 = time.process_time()
    row.update(
        heuristicGpusUsed=heur.pool.gpus_used, guideStatus=mip.status, guideCpuSeconds=round(c1 - c0, 2)
    )
    if mip.guide is None:
        return heur
    guided = guided_plan(w.policy, w.nodes, w.demands, mip.guide)
    row["planCpuSeconds"] = round(row["planCpuSeconds"] + time.process_time() - c1, 4)
    row.update(guidedGpusUsed=guided.pool.gpus_used, guideGpus=mip.guide.gpus)
    return guided if better_guided(guided, heur, []) else heur


def run_incremental(pool: int, seed: int) -> dict[str, Any]:
    """Re-plan time after one deployment changes, and replicas of other deployments moved by a 10% change."""
    from slm_operator.planner import IncrementalPlanner, apply_plan, plan_pool

    w = agentic_mix(pool, seed=seed)
    plan1 = plan_pool(w.policy, w.nodes, w.demands)
    nodes2 = apply_plan(w.nodes, plan1)
    cur = plan1.placements()
    # one deployment scales up by one replica (the smallest change the operator reacts to)
    k = len(w.demands) // 2
    one = list(w.demands)
    one[k] = one[k].model_copy(update={"replicas": one[k].replicas + 1})
    stateless = []
    for _ in range(3):
        t0 = time.perf_counter()
        plan_one = plan_pool(w.policy, nodes2, one, cur)
        stateless.append(time.perf_counter() - t0)
    moved_one = sum(len(d.moved) for d in plan_one.deployments if d.deployment != one[k].deployment)
    incremental = []
    for _ in range(3):
        planner = IncrementalPlanner(w.policy, w.nodes, w.demands)
        t0 = time.perf_counter()
        inc_plan = planner.update(one)
        incremental.append(time.perf_counter() - t0)
    same_result = inc_plan.pool.gpus_used == plan_one.pool.gpus_used
    # 10% of the deployments change (scale, delete, add)
    changed = change_demands(w.demands, 0.10, seed=seed + 100)
    before = {d.deployment: d for d in w.demands}
    after = {d.deployment: d for d in changed}
    same = {key for key in before if key in after and before[key] == after[key]}
    t0 = time.perf_counter()
    plan2 = plan_pool(w.policy, nodes2, changed, cur)
    t_ten = time.perf_counter() - t0
    running_other = sum(1 for c in cur if c.deployment in same)
    moved_other = sum(1 for e in plan2.pool.evictions if e.deployment in same)
    planner = IncrementalPlanner(w.policy, w.nodes, w.demands)
    t0 = time.perf_counter()
    inc2 = planner.update(changed)
    t_ten_inc = time.perf_counter() - t0
    moved_other_inc = sum(1 for e in inc2.pool.evictions if e.deployment in same)
    return {
        "workload": w.name,
        "poolGPUs": pool,
        "method": "slm-operator-incremental",
        "oneChangeReplanSeconds": round(min(incremental), 4),
        "oneChangeStatelessReplanSeconds": round(min(stateless), 4),
        "oneChangeOtherReplicasMoved": moved_one,
        "oneChangeSameResultAsStateless": same_result,
        "tenPercentReplanSeconds": round(t_ten, 4),
        "tenPercentIncrementalSeconds": round(t_ten_inc, 4),
        "tenPercentChangedDeployments": len(w.demands) - len(same),
        "otherRunningReplicas": running_other,
        "otherReplicasMoved": moved_other,
        "otherReplicasMovedIncremental": moved_other_inc,
        "otherReplicasMovedPercent": round(100 * moved_other / max(1, running_other), 3),
        "gpusUsedBefore": plan1.pool.gpus_used,
        "gpusUsedAfter": plan2.pool.gpus_used,
        "gpusUsedAfterIncremental": inc2.pool.gpus_used,
    }


def _subprocess(args: list[str], timeout: float) -> Any:
    cmd = [sys.executable, "-m", "bench.packing", *args]
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(root), str(root / "operator"), env.get("PYTHONPATH", "")])
    )
    out = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _ratio(a: float | None, b: float | None) -> str:
    if not a or not b:
        return "-"
    return f"{a / b:.3f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="pools of 10, 100 and 1,000 GPUs only")
    ap.add_argument(
        "--pools", type=str, default="", help="comma-separated pool sizes (overrides the defaults)"
    )
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--exact-budget", type=float, default=30.0, help="CP-SAT seconds per exact instance")
    ap.add_argument(
        "--one", nargs=5, metavar=("POOL", "METHOD", "SEED", "RPG", "BUDGET"), help=argparse.SUPPRESS
    )
    ap.add_argument("--incremental", nargs=2, metavar=("POOL", "SEED"), help=argparse.SUPPRESS)
    ap.add_argument("--churn", nargs=2, metavar=("POOL", "SEED"), help=argparse.SUPPRESS)
    ap.add_argument("--no-churn", action="store_true", help="skip the churn replay (bench/churn.py)")
    args = ap.parse_args(argv)
    if args.one:
        pool, method, seed, rpg, budget = args.one
        print(json.dumps(run_one(int(pool), method, int(seed), float(rpg), float(budget))))
        return 0
    if args.incremental:
        print(json.dumps(run_incremental(int(args.incremental[0]), int(args.incremental[1]))))
        return 0
    if args.churn:
        print(json.dumps(run_churn(int(args.churn[0]), int(args.churn[1]))))
        return 0
    pools = (
        tuple(int(p) for p in args.pools.split(",")) if args.pools else (QUICK_POOLS if args.quick else POOLS)
    )
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for pool in pools:
        for method in METHODS:
            row = _subprocess(["--one", str(pool), method, str(args.seed), "5.0", "0"], timeout=600)
            rows.append(row)
            print(
                f"  {pool:>6} GPUs  {method:<22} {row.get('gpusUsed')!s:>6} GPUs  "
                f"{row.get('replicasPlaced')!s:>6}/{row['replicasTotal']} placed  {row['planSeconds']:.3f}s",
                file=sys.stderr,
            )
        if pool == 10:
            row = _subprocess(
                ["--one", "10", "exact", str(args.seed), "5.0", str(args.exact_budget)], timeout=600
            )
            rows.append(row)
    # small pools where the optimum is known
    seeds = (1, 2, 3) if args.quick else (1, 2, 3, 4, 5)
    for pool, rpg in EXACT_POOLS:
        for seed in seeds:
            for method in ("slm-operator", "exact", "lower-bound"):
                row = _subprocess(
                    ["--one", str(pool), method, str(seed), str(rpg), str(args.exact_budget)], timeout=600
                )
                row["workload"] = f"agentic-mix-small-{pool}"
                rows.append(row)
    inc_pool = 1000 if 1000 in pools else max(pools)
    inc = _subprocess(["--incremental", str(inc_pool), str(args.seed)], timeout=600)
    rows.append(inc)
    if not args.no_churn:
        # churn replay: 10 rounds of 10 % change, stable re-plan vs consolidation (bench/churn.py; seed 3 as in
        # issue 16); a JSON list of rows, one per round and method
        churn = _subprocess(["--churn", str(inc_pool), str(CHURN_SEED)], timeout=1200)
        rows.extend(churn)
    total = time.perf_counter() - started
    out = Path(os.environ.get("BENCH_OUT", "bench/out/results.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "loadAverage": [round(x, 2) for x in os.getloadavg()],
        "command": " ".join(["python -m bench.packing", *(argv if argv is not None else sys.argv[1:])]),
        "seconds": round(total, 1),
    }
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    print(report(rows, meta))
    return 0


def report(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        f"# packing benchmark ({meta['machine']}; {meta['seconds']} s; load average at the end "
        f"{meta.get('loadAverage')})",
        "",
    ]
    by: dict[tuple[str, int, int], dict[str, dict[str, Any]]] = {}
    for r in rows:
        if "method" in r and r.get("method") != "slm-operator-incremental" and "round" not in r:
            by.setdefault((r["workload"], r["poolGPUs"], r.get("seed", SEED)), {})[r["method"]] = r
    hdr = (
        f"{'workload':<24} {'GPUs':>6} {'method':<22} {'used':>6} {'placed':>13} {'viol':>5} {'util':>6} "
        f"{'sec':>8} {'cpu s':>8} {'MiB':>7}"
    )
    lines.append(hdr)
    for (wl, pool, seed), methods in sorted(by.items(), key=lambda t: (t[0][1], t[0][0], t[0][2])):
        for name, r in methods.items():
            util = (
                f"{r['memoryAllocatedBytes'] / r['memoryUsedGpusBytes']:.2f}"
                if r.get("memoryUsedGpusBytes")
                else "-"
            )
            placed = f"{r.get('replicasPlaced')}/{r['replicasTotal']}"
            lines.append(
                f"{wl + ('' if seed == SEED else f' s{seed}'):<24} {pool:>6} {name:<22} {r.get('gpusUsed')!s:>6} "
                f"{placed:>13} {r.get('violations', '-')!s:>5} {util:>6} {r['planSeconds']:>8.3f} "
                f"{r.get('planCpuSeconds', float('nan')):>8.3f} {r['peakMemoryMiB']:>7.1f}"
            )
    lines.append("")
    lines.append(
        "ratios (slm-operator GPUs used / other; whole-gpu: GPUs it needs for every replica / slm-operator)"
    )
    for (wl, _pool, seed), m in sorted(by.items(), key=lambda t: (t[0][1], t[0][0], t[0][2])):
        s = m.get("slm-operator")
        if not s:
            continue
        parts = [f"{wl}{'' if seed == SEED else f' s{seed}'}"]
        lb = m.get("lower-bound")
        if lb:
            parts.append(f"vs LB {_ratio(s['gpusUsed'], lb['gpusUsed'])}")
            if lb.get("layoutBound"):
                parts.append(f"vs MIG-layout LB {_ratio(s['gpusUsed'], lb['layoutBound'])}")
            if lb.get("nodeBound"):
                parts.append(f"vs node-aware LB {_ratio(s['gpusUsed'], lb['nodeBound'])}")
        if s.get("guideStatus"):
            parts.append(
                f"heuristic {s['heuristicGpusUsed']}, guided {s.get('guidedGpusUsed', '-')} GPUs (guide "
                f"{s['guideStatus']}, {s['guideCpuSeconds']} s CPU in the worker)"
            )
        relayout = s.get("migRelayout") or {}
        saved = sum(a - b for a, b in relayout.values())
        if saved:
            parts.append(f"better MIG layouts alone would save {saved} GPUs")
        ex = m.get("exact")
        if ex:
            tag = "" if ex.get("optimal") else " (not proven optimal)"
            parts.append(
                f"vs exact {_ratio(s['gpusUsed'], ex['gpusUsed'])}{tag}, placed {s['replicasPlaced']}/{ex['replicasPlaced']}"
            )
        wg = m.get("whole-gpu")
        if wg:
            parts.append(
                f"whole-gpu needs {wg.get('gpusNeeded')} = {_ratio(wg.get('gpusNeeded'), s['gpusUsed'])}x"
            )
        for b in ("static-mig-balanced", "time-slicing-4", "memory-binpack"):
            if b in m:
                o = m[b]
                parts.append(
                    f"{b} {_ratio(s['gpusUsed'], o['gpusUsed'])} ({o['replicasPlaced']}/{o['replicasTotal']} placed, "
                    f"{o.get('violations', 0)} illegal)"
                )
        lines.append("  " + "; ".join(parts))
    if any(str(r.get("method", "")).startswith("churn") for r in rows):
        lines.append("")
        lines.append(churn_report(rows))
    for r in rows:
        if r.get("method") == "slm-operator-incremental":
            lines.append("")
            lines.append(
                f"incremental at {r['poolGPUs']} GPUs: one deployment +1 replica re-planned in "
                f"{r['oneChangeReplanSeconds'] * 1000:.1f} ms with IncrementalPlanner.update "
                f"({r['oneChangeStatelessReplanSeconds'] * 1000:.0f} ms with plan_pool(current=...); "
                f"{r['oneChangeOtherReplicasMoved']} other replicas moved)"
            )
            lines.append(
                f"  10% of deployments changed ({r['tenPercentChangedDeployments']}): plan_pool re-plan "
                f"{r['tenPercentReplanSeconds'] * 1000:.0f} ms (incremental {r['tenPercentIncrementalSeconds'] * 1000:.0f} ms), "
                f"{r['otherReplicasMoved']} of {r['otherRunningReplicas']} other running replicas moved "
                f"({r['otherReplicasMovedPercent']}%; incremental: {r['otherReplicasMovedIncremental']}); "
                f"GPUs {r['gpusUsedBefore']} -> {r['gpusUsedAfter']} (incremental {r['gpusUsedAfterIncremental']})"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
