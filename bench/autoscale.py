"""make bench-autoscale: what autoscaling saves on a bursty day, and what it costs in waiting (issue 14).

    python -m bench.autoscale                  # the replayed day, then the local control plane
    python -m bench.autoscale --no-cluster     # the replayed day only (pure, seconds)
    python -m bench.autoscale --start-delay 120 --seed 3

**Part 1, a replayed bursty day (pure).** A seeded 24 h load per deployment (calls in flight every 2 s tick:
a diurnal base, quiet nights, bursts of a few seconds to minutes; a handful of deployments of different sizes and
shapes, :data:`PROFILES`) is fed tick by tick through the operator's own :func:`slm_operator.autoscale.decide`
(default settings, ``maxReplicas`` = the fixed count, ``target`` = ``--utilization`` x the calls a replica serves
at once). A new replica holds its GPU share from the decision on and serves only ``--start-delay`` seconds later
(default 60 s, an assumed vLLM cold start of a small model); a scale-down frees the share at once. The baseline,
measured in the same run, is fixed replicas sized for each deployment's peak, ceil(peak / calls per replica).
Replica-hours (= GPU-share-hours) with autoscaling against fixed, and the cost: load above the ready replicas'
capacity (ready x calls per replica) waits in the gateway, counted as call-seconds over capacity, calls
that waited (call-seconds / ``--call-seconds``, the mean length of a call) and the longest spell over capacity.
The load is offered open loop (waiting calls do not slow the callers down).

**Part 2, the local control plane** (``--cluster``, the default): runs ``e2e/test_autoscale_bench.py`` under
pytest (the e2e harness is pytest fixtures): the time from a burst to the new replicas Ready, from the first call
at zero to its answer, and the stand-in server's own start time, over a few repetitions.

Results go to ``BENCH_OUT`` (default bench/out/autoscale.json); docs/benchmarks.md records them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from slm_operator.autoscale import Sample, Settings, State, decide

REPO = Path(__file__).resolve().parents[1]
TICK = 2.0  # seconds: the autoscaler's default --autoscale-interval
DAY = 24 * 3600.0


@dataclass(frozen=True)
class Profile:
    """One deployment's day: ``peak`` calls in flight at the busiest tick, ``target`` calls per replica."""

    name: str
    peak: int
    target: int
    day_start: float  # hour the working day starts (base load rises)
    day_end: float  # hour it ends (quiet night after)
    night_share: float  # base load at night, as a share of the day's base
    base_share: float  # the day's base load, as a share of the peak
    bursts: int  # bursts per day (on average)
    burst_minutes: float  # mean burst length


#: a handful of deployments of different sizes and shapes
PROFILES: tuple[Profile, ...] = (
    Profile("chat-assist", peak=64, target=8, day_start=7, day_end=20, night_share=0.05, base_share=0.45,
            bursts=12, burst_minutes=4),
    Profile("summarizer", peak=32, target=8, day_start=8, day_end=19, night_share=0.0, base_share=0.25,
            bursts=20, burst_minutes=2),
    Profile("extractor", peak=24, target=4, day_start=6, day_end=22, night_share=0.1, base_share=0.3,
            bursts=8, burst_minutes=6),
    Profile("router", peak=12, target=4, day_start=0, day_end=24, night_share=1.0, base_share=0.35,
            bursts=6, burst_minutes=1),
    Profile("nightly-batch", peak=16, target=8, day_start=1, day_end=4, night_share=0.0, base_share=0.6,
            bursts=2, burst_minutes=10),
    Profile("rare-tool", peak=4, target=2, day_start=9, day_end=17, night_share=0.0, base_share=0.0,
            bursts=10, burst_minutes=1),
)  # fmt: skip


def _in_day(hour: float, p: Profile) -> bool:
    return p.day_start <= hour < p.day_end


def bursty_day(p: Profile, seed: int, tick: float = TICK, seconds: float = DAY) -> list[int]:
    """Calls in flight at each tick of a day for ``p``: seeded (same arguments, same list), never negative, and
    the busiest tick is exactly ``p.peak`` (the series is scaled to it)."""
    rng = random.Random(f"{seed}/{p.name}")
    n = int(seconds // tick)
    base: list[float] = []
    for i in range(n):
        hour = (i * tick / 3600.0) % 24
        if _in_day(hour, p):
            # a smooth bump over the working day: 0 at its edges, 1 in its middle
            x = (hour - p.day_start) / max(p.day_end - p.day_start, 1e-9)
            level = p.base_share * (0.3 + 0.7 * math.sin(math.pi * x))
        else:
            level = p.base_share * p.night_share * 0.3
        base.append(level * p.peak)
    # bursts: mostly in the working day, each a plateau of a few seconds to minutes on top of the base
    for _ in range(max(1, round(rng.gauss(p.bursts, p.bursts**0.5)))):
        while True:
            start = rng.randrange(n)
            if _in_day((start * tick / 3600.0) % 24, p) or rng.random() < 0.1:
                break
        length = max(1, int(rng.expovariate(1 / (p.burst_minutes * 60)) / tick))
        height = p.peak * rng.uniform(0.4, 1.0)
        for i in range(start, min(n, start + length)):
            base[i] += height
    # Poisson-like noise around the mean, as integers
    load = [max(0, round(m + rng.gauss(0, math.sqrt(m)))) if m > 0 else 0 for m in base]
    top = max(load)
    if top == 0:
        load[0] = top = p.peak
    return [min(p.peak, round(x * p.peak / top)) for x in load]


@dataclass
class DayResult:
    deployment: str
    peak: int
    target: int
    min_replicas: int
    fixed_replicas: int
    fixed_replica_hours: float
    autoscale_replica_hours: float
    ratio: float  # autoscale / fixed
    max_replicas_used: int
    scale_changes: int
    call_seconds_over_capacity: float
    calls_waited: float
    longest_wait_spell_seconds: float
    seconds_at_zero: float


def replay(
    load: list[int],
    p: Profile,
    min_replicas: int,
    start_delay: float,
    call_seconds: float,
    tick: float = TICK,
    utilization: float = 1.0,
) -> DayResult:
    """Feed ``load`` through ``decide`` tick by tick; ready replicas follow the decision ``start_delay`` later.
    A replica serves ``p.target`` calls at once; the autoscaler's target is ``utilization`` x that."""
    fixed = math.ceil(p.peak / p.target)
    settings = Settings(min_replicas=min_replicas, max_replicas=fixed, target=p.target * utilization)
    state = State(desired=max(min_replicas, 1))
    ready = state.desired
    starting: list[float] = []  # times the replicas being started become ready
    samples: deque[Sample] = deque()
    held = over = spell = longest = at_zero = 0.0
    waited = 0.0
    used = changes = 0
    for i, offered in enumerate(load):
        now = i * tick
        ready += sum(1 for t in starting if t <= now)
        starting = [t for t in starting if t > now]
        capacity = ready * p.target
        excess = max(0.0, offered - capacity)
        samples.append(Sample(now, float(min(offered, capacity)), excess))
        while samples and samples[0].time <= now - settings.stable_window:
            samples.popleft()
        d = decide(list(samples), now, ready, settings, state, activation=offered > 0 and ready == 0)
        state = d.state
        changes += d.changed
        if d.desired > ready + len(starting):
            starting += [now + start_delay] * (d.desired - ready - len(starting))
        while d.desired < ready + len(starting):
            if starting:
                starting.pop()  # the newest start is cancelled first
            else:
                ready -= 1
        holding = ready + len(starting)  # a starting replica holds its share while it loads
        used = max(used, holding)
        held += holding * tick
        at_zero += tick if holding == 0 else 0.0
        over += excess * tick
        waited += excess * tick / call_seconds
        spell = spell + tick if excess > 0 else 0.0
        longest = max(longest, spell)
    hours = len(load) * tick / 3600.0
    return DayResult(
        deployment=p.name, peak=p.peak, target=p.target, min_replicas=min_replicas, fixed_replicas=fixed,
        fixed_replica_hours=round(fixed * hours, 3), autoscale_replica_hours=round(held / 3600.0, 3),
        ratio=round(held / 3600.0 / (fixed * hours), 3), max_replicas_used=used, scale_changes=changes,
        call_seconds_over_capacity=round(over, 1), calls_waited=round(waited, 1),
        longest_wait_spell_seconds=longest, seconds_at_zero=at_zero,
    )  # fmt: skip


def run_day(
    seed: int, start_delay: float, call_seconds: float, min_replicas: list[int], utilization: float = 1.0
) -> dict[str, Any]:
    rows: list[DayResult] = []
    offered: dict[str, float] = {}
    for p in PROFILES:
        load = bursty_day(p, seed)
        offered[p.name] = sum(load) * TICK
        rows += [replay(load, p, m, start_delay, call_seconds, TICK, utilization) for m in min_replicas]
    totals = []
    for m in min_replicas:
        mine = [r for r in rows if r.min_replicas == m]
        fixed = sum(r.fixed_replica_hours for r in mine)
        auto = sum(r.autoscale_replica_hours for r in mine)
        over = sum(r.call_seconds_over_capacity for r in mine)
        totals.append(
            {"minReplicas": m, "fixedReplicaHours": round(fixed, 2), "autoscaleReplicaHours": round(auto, 2),
             "ratio": round(auto / fixed, 3), "callSecondsOverCapacity": round(over, 1),
             "shareOfOfferedCallSecondsOverCapacity": round(over / sum(offered.values()), 5),
             "callsWaited": round(sum(r.calls_waited for r in mine), 1),
             "longestWaitSpellSeconds": max(r.longest_wait_spell_seconds for r in mine)}
        )  # fmt: skip
    return {"rows": [asdict(r) for r in rows], "totals": totals, "offeredCallSeconds": offered}


def table(day: dict[str, Any]) -> str:
    head = (
        f"{'deployment':<14} {'peak':>4} {'tgt':>3} {'min':>3} {'fixed':>5} {'fixed h':>8} {'auto h':>8} "
        f"{'ratio':>6} {'max':>3} {'changes':>7} {'call-s over':>11} {'calls waited':>12} {'longest s':>9}"
    )
    lines = [head]
    for r in day["rows"]:
        lines.append(
            f"{r['deployment']:<14} {r['peak']:>4} {r['target']:>3} {r['min_replicas']:>3} "
            f"{r['fixed_replicas']:>5} {r['fixed_replica_hours']:>8.1f} {r['autoscale_replica_hours']:>8.1f} "
            f"{r['ratio']:>6.3f} {r['max_replicas_used']:>3} {r['scale_changes']:>7} "
            f"{r['call_seconds_over_capacity']:>11.0f} {r['calls_waited']:>12.0f} "
            f"{r['longest_wait_spell_seconds']:>9.0f}"
        )
    for t in day["totals"]:
        lines.append(
            f"all (minReplicas {t['minReplicas']}): {t['autoscaleReplicaHours']:.1f} replica-hours with "
            f"autoscaling vs {t['fixedReplicaHours']:.1f} fixed: ratio {t['ratio']:.3f}; "
            f"{t['callSecondsOverCapacity']:.0f} call-seconds over capacity "
            f"({100 * t['shareOfOfferedCallSecondsOverCapacity']:.2f} % of the offered), "
            f"~{t['callsWaited']:.0f} calls waited, longest spell {t['longestWaitSpellSeconds']:.0f} s"
        )
    return "\n".join(lines)


def run_cluster(reps: int) -> dict[str, Any] | None:
    """Part 2: the pytest-driven measurement on the local control plane; its JSON, or None if it failed."""
    with tempfile.TemporaryDirectory(prefix="slm-bench-autoscale-") as tmp:
        out = Path(tmp) / "cluster.json"
        env = {**os.environ, "BENCH_AUTOSCALE_OUT": str(out), "BENCH_AUTOSCALE_REPS": str(reps),
               "SLM_E2E_CLUSTER": os.environ.get("SLM_E2E_CLUSTER", "bench-autoscale")}  # fmt: skip
        cmd = [sys.executable, "-m", "pytest", "-q", "-m", "e2e", "-p", "no:cacheprovider", "--timeout=900",
               str(REPO / "e2e" / "test_autoscale_bench.py")]  # fmt: skip
        r = subprocess.run(cmd, cwd=REPO, env=env)
        if r.returncode or not out.exists():
            print(f"the cluster part failed (pytest exit {r.returncode})")
            return None
        result: dict[str, Any] = json.loads(out.read_text())
        return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1, help="seed of the bursty day (default %(default)s)")
    parser.add_argument(
        "--start-delay",
        type=float,
        default=60.0,
        help="seconds from a scale-up decision to the replica Ready (default %(default)s: a vLLM cold start)",
    )
    parser.add_argument(
        "--call-seconds", type=float, default=2.0, help="mean length of a call (default %(default)s)"
    )
    parser.add_argument(
        "--utilization",
        type=float,
        default=1.0,
        help="autoscaler target as a share of a replica's concurrent calls (default %(default)s: the operator's "
        "default target, model.maxConcurrentSequences; Knative's default is 0.7)",
    )
    parser.add_argument(
        "--cluster",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure on the local control plane (default: on)",
    )
    parser.add_argument(
        "--reps", type=int, default=3, help="repetitions on the cluster (default %(default)s)"
    )
    args = parser.parse_args(argv)
    t0 = time.monotonic()
    day = run_day(args.seed, args.start_delay, args.call_seconds, [0, 1], args.utilization)
    print(f"replayed day: seed {args.seed}, {TICK:g} s ticks, start delay {args.start_delay:g} s, "
          f"autoscaler target {args.utilization:g} x a replica's calls, "
          f"calls of {args.call_seconds:g} s; baseline: fixed ceil(peak/target) replicas all day")  # fmt: skip
    print(table(day))
    print(f"({time.monotonic() - t0:.1f} s)")
    meta = {"python": platform.python_version(), "cpus": os.cpu_count(), "load": os.getloadavg(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}  # fmt: skip
    settings = {"seed": args.seed, "tickSeconds": TICK, "startDelaySeconds": args.start_delay,
                "targetUtilization": args.utilization,
                "callSeconds": args.call_seconds}  # fmt: skip
    result: dict[str, Any] = {
        "meta": meta,
        "day": {**settings, **day},
        "cluster": run_cluster(args.reps) if args.cluster else None,
    }
    if result["cluster"] is not None:
        print(json.dumps(result["cluster"], indent=2))
    out = Path(os.environ.get("BENCH_OUT", REPO / "bench" / "out" / "autoscale.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if not args.cluster or result["cluster"] is not None else 1


if __name__ == "__main__":
    sys.exit(main())
