"""`make bench-advise`: the advisor on 100,000 captured calls, and the task classifier's cost per request.

1. Writes N synthetic agent calls (``slm-operator traces``, default 100,000 over 24 hours) to a temporary file.
2. Runs ``slm-operator advise`` on them in a child process, with the example pools, nodes and route (``-f``), and
   reads its wall time and peak memory (``ru_maxrss`` of the child). Targets: at most 60 s and 2 GiB.
3. Scores the tasks it found against the generator's labels (adjusted Rand index, noise as its own group).
4. Loads the classifier the run published (the ConfigMap under ``manifests/``) and tags every request with it,
   timing each call to ``tag``; target: at most 1 ms per request.

Prints one table and writes JSON to ``$BENCH_OUT`` (default ``bench/out/advise.json``). A benchmark, not a
test: the targets are printed beside the measurements, never asserted.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from sklearn.metrics import adjusted_rand_score

from slm_operator.advisor.classifier import TaskClassifier
from slm_operator.advisor.traces import generate, write_jsonl
from slm_operator.contract import TASK_CLASSIFIER_KEY

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
CALLS = int(os.environ.get("BENCH_CALLS", "100000"))
TAG_SAMPLE = 10_000


def _advise(calls: Path, out: Path) -> tuple[float, int, str]:
    """Wall seconds, peak RSS in bytes and stdout of one `advise` run in a child process."""
    cmd = [
        sys.executable, "-m", "slm_operator", "advise", "--from", str(calls), "-o", str(out),
        "-f", str(EXAMPLES / "10-pools.yaml"), "-f", str(EXAMPLES / "nodes"), "-f", str(EXAMPLES / "40-slmroutes.yaml"),
        "--pool", "h100", "--llm-price", "2.5,10",
    ]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"advise failed ({done.returncode}): {done.stderr}")
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return wall, peak_kib * 1024, done.stdout.strip()


def _classifier(out: Path) -> TaskClassifier:
    for path in (out / "manifests").glob("*configmap-slm-task-classifier.yaml"):
        return TaskClassifier.from_json(yaml.safe_load(path.read_text())["data"][TASK_CLASSIFIER_KEY])
    raise SystemExit("advise published no classifier ConfigMap")


def _tag_times(classifier: TaskClassifier, records: list[dict[str, Any]]) -> list[float]:
    times = []
    for r in records[:TAG_SAMPLE]:
        start = time.perf_counter()
        classifier.tag(r["request"])
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    records = generate(CALLS, seed=0, route="agents/agent-llm", hours=24)
    labels = {r["id"]: r["label"] for r in records}
    with tempfile.TemporaryDirectory() as tmp:
        calls = Path(tmp) / "calls.jsonl"
        with calls.open("w") as f:
            write_jsonl(records, f)
        size = calls.stat().st_size
        out = Path(tmp) / "advice"
        wall, peak, said = _advise(calls, out)
        assigned = [json.loads(line) for line in (out / "assignments.jsonl").read_text().splitlines()]
        ari = adjusted_rand_score(
            [labels[a["id"]] for a in assigned], [a["task"] or "noise" for a in assigned]
        )
        tag = _tag_times(_classifier(out), records)
    p50 = statistics.median(tag) * 1e3
    p99 = sorted(tag)[int(0.99 * len(tag)) - 1] * 1e3
    rows = [
        ("advise wall time", f"{wall:.1f} s", "<= 60 s", wall <= 60),
        ("advise peak memory", f"{peak / 2**30:.2f} GiB", "<= 2 GiB", peak <= 2 * 2**30),
        ("adjusted Rand index", f"{ari:.3f}", ">= 0.8", ari >= 0.8),
        ("classifier tag p50", f"{p50:.3f} ms", "<= 1 ms", p50 <= 1),
        ("classifier tag p99", f"{p99:.3f} ms", "<= 1 ms", p99 <= 1),
    ]
    print(f"advise on {CALLS:,} calls ({size / 2**20:.0f} MiB of JSON lines) on {platform.node()}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}")  # fmt: skip
    print(f"advise said: {said}")
    print(f"{'measure':<22} {'measured':>12} {'target':>10}  met")
    for name, value, target, met in rows:
        print(f"{name:<22} {value:>12} {target:>10}  {'yes' if met else 'NO'}")
    dest = Path(os.environ.get("BENCH_OUT", ROOT / "bench" / "out" / "advise.json"))
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(
        json.dumps(
            {
                "calls": CALLS,
                "wall_s": wall,
                "peak_bytes": peak,
                "ari": ari,
                "tag_ms_p50": p50,
                "tag_ms_p99": p99,
                "advise": said,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
