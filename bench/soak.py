"""make soak: the operator under a steady churn on the local control plane (a benchmark, not a test; issue 15).

For SOAK_MINUTES (default 30) a seeded random loop creates, deletes and scales SLMDeployments in the three pools
of `make bench-e2e` (one action every SOAK_INTERVAL seconds, default 2; between 30 and 120 deployments), with the
operator and the NVIDIA simulator running. Every minute it samples the operator process: resident memory
(VmRSS), threads, open file descriptors, its API requests and planning passes (its own metrics). At the end it
waits for the fleet to settle and reports the growth of each from the first sample after a warm-up (5 min, or a
sixth of a shorter run) to the end, and every ERROR or WARNING line of the operator's log grouped by logger and
message (numbers and names masked), for a reader to explain. JSON to $BENCH_OUT (default bench/out/soak.json).
"""

from __future__ import annotations

import json
import os
import random
import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.e2e_scale import Stack, manifests, scrape, stack  # noqa: E402

MASK = re.compile(r"\b[0-9a-f]{5,}\b|\d+")  # hashes and numbers: pod names, ports, counts


def sample(st: Stack, started: float) -> dict[str, Any]:
    proc = st.proc_status()
    m = scrape(st.metrics_port)
    return {
        "minute": round((time.monotonic() - started) / 60, 1),
        "rssMiB": round(proc["VmRSS"] / 1024, 1),
        "threads": proc["Threads"],
        "fds": len(os.listdir(f"/proc/{st.operator.pid}/fd")),
        "apiRequests": int(m.get("requests", 0)),
        "planningPasses": int(m.get("passes", 0)),
    }


def act(st: Stack, rng: random.Random, alive: dict[str, dict[str, Any]], spare: list[dict[str, Any]]) -> str:
    """One random change: create (below 120), delete (above 30) or scale one deployment to 1-3 replicas."""
    choice = rng.choice(["create", "delete", "scale", "scale"])
    if (choice == "create" and len(alive) < 120 and spare) or len(alive) <= 30:
        doc = spare.pop(rng.randrange(len(spare)))
        alive[doc["metadata"]["name"]] = doc
        st.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(doc))
        return "create"
    name = rng.choice(sorted(alive))
    if choice == "delete" and len(alive) > 30:
        spare.append(alive.pop(name))
        st.kubectl("delete", "-n", "bench", "slmdeployment", name, "--wait=false")
        return "delete"
    replicas = rng.randint(1, 3)
    st.kubectl("scale", "-n", "bench", f"slmdeployment/{name}", f"--replicas={replicas}")
    return "scale"


def settle(st: Stack, timeout: float = 300) -> dict[str, int]:
    """Wait until every placed replica runs and nothing changed for 20 s; the final counts."""
    last: tuple[int, int] = (-1, -1)
    since = time.monotonic()
    deadline = since + timeout
    while time.monotonic() < deadline:
        pods = json.loads(st.kubectl("get", "pods", "-n", "bench", "-l", "slm.io/pool", "-o", "json"))[
            "items"
        ]
        running = sum(1 for p in pods if p["status"].get("phase") == "Running")
        deps = json.loads(st.kubectl("get", "slmdeployments", "-n", "bench", "-o", "json"))["items"]
        placed = sum((d.get("status") or {}).get("placedReplicas", 0) for d in deps)
        if (running, placed) != last:
            last, since = (running, placed), time.monotonic()
        elif running == placed and len(pods) == placed and time.monotonic() - since > 20:
            break
        time.sleep(2)
    wanted = sum(int(d["spec"]["replicas"]) for d in deps)
    return {
        "deployments": len(deps),
        "replicasWanted": wanted,
        "replicasPlaced": last[1],
        "podsRunning": last[0],
    }


def log_findings(path: Path) -> list[dict[str, Any]]:
    """ERROR and WARNING lines of the operator's log, grouped (numbers, hashes and quoted names masked)."""
    groups: Counter[tuple[str, str, str]] = Counter()
    for line in path.read_text(errors="replace").splitlines():
        parts = line.split(" ", 4)
        if len(parts) == 5 and parts[2] in ("ERROR", "WARNING"):
            groups[(parts[2], parts[3].rstrip(":"), MASK.sub("#", parts[4])[:160])] += 1
    return [
        {"level": lv, "logger": lg, "message": msg, "count": n} for (lv, lg, msg), n in groups.most_common()
    ]


def main() -> int:
    minutes = float(os.environ.get("SOAK_MINUTES", "30"))
    interval = float(os.environ.get("SOAK_INTERVAL", "2"))
    out_path = Path(os.environ.get("BENCH_OUT", REPO / "bench" / "out" / "soak.json"))
    rng = random.Random(int(os.environ.get("SOAK_SEED", "15")))
    docs = manifests(200)
    setup = [d for d in docs if d["kind"] != "SLMDeployment"]
    deps = [d for d in docs if d["kind"] == "SLMDeployment"]
    alive = {d["metadata"]["name"]: d for d in deps[:60]}
    spare = deps[60:]
    with stack("soak") as st:
        st.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(setup + list(alive.values())))
        started = time.monotonic()
        samples = [sample(st, started)]
        actions: Counter[str] = Counter()
        next_sample = started + 60
        while time.monotonic() - started < minutes * 60:
            actions[act(st, rng, alive, spare)] += 1
            time.sleep(interval)
            if time.monotonic() >= next_sample:
                samples.append(sample(st, started))
                print(json.dumps(samples[-1]), flush=True)
                next_sample += 60
        final = settle(st)
        samples.append(sample(st, started))
        warm = next(s for s in samples if s["minute"] >= min(5.0, minutes / 6))
        end = samples[-1]
        at_rest_before = scrape(st.metrics_port)["requests"]
        time.sleep(60)  # a minute at rest: the requests the operator makes with nothing changing
        at_rest = scrape(st.metrics_port)["requests"] - at_rest_before
        summary = {
            "minutes": minutes,
            "actions": dict(actions),
            "final": final,
            "growthFromWarmup": {k: round(end[k] - warm[k], 1) for k in ("rssMiB", "threads", "fds")},
            "warmup": warm,
            "end": end,
            "apiRequestsPerMinuteAtRest": int(at_rest),
            "logFindings": log_findings(st.log_dir / "operator.log"),
        }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps({"samples": samples, "summary": summary}, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
