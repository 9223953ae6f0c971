"""make bench-e2e: end-to-end scale figures on the local control plane (a benchmark, not a test).

Applies $BENCH_DEPLOYMENTS (200) SLMDeployments of $BENCH_REPLICAS (1) replicas at once to a fresh cluster (the
fleet of examples/nodes/: 2 x 8 H100, 1 x 8 A100, 2 x 4 L4 simulated GPUs, times $BENCH_FLEET; three GPUPools)
with slm-operator and the NVIDIA simulator running, and reports: the time from `kubectl apply` to every replica
pod Running, the operator's peak memory (VmHWM), Kubernetes API requests per planning pass (from the operator's
own metrics) and, with $BENCH_REST_SECONDS > 0, API requests per minute per pool at rest over that window once
everything runs. Writes JSON to $BENCH_OUT (default bench/out/e2e.json). $BENCH_OPERATOR_ARGS adds operator flags
(e.g. ``--configmap-sync-seconds 5`` to take the kubelet's ConfigMap sync wait out of the figure);
$BENCH_LOG_DIR keeps the operator's and the simulator's logs. The simulator runs with ``--mig-manager-pods`` and
``--config-volume-delay-seconds $BENCH_CONFIG_VOLUME_DELAY`` (90): its mig-manager sees the mig-parted ConfigMap as
late as a real kubelet's periodic volume sync shows it (``syncFrequency`` 1m + the cache's TTL), unless a change of
the node's mig-manager pod (the operator's refresh) makes the kubelet remount the volume sooner.
`make bench-e2e-1000` is issue 15's scale: 1,000 deployments x 2 replicas on 125 nodes (800 GPUs).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from e2e.operator import free_port  # noqa: E402

MODELS = ["qwen2.5-0.5b-instruct", "smollm2-360m-instruct", "llama-3.2-1b-instruct", "qwen2.5-1.5b-instruct"]
TIERS = ["Guaranteed", "Burstable", "BestEffort"]
# how late the simulated mig-manager sees the mig-parted ConfigMap without a refresh of its pod (seconds)
CONFIG_VOLUME_DELAY = os.environ.get("BENCH_CONFIG_VOLUME_DELAY", "90")


def sh(*cmd: str, **kw: Any) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout


def manifests(n: int, replicas: int = 1) -> list[dict[str, Any]]:
    pools = [
        ("bench-h100", "NVIDIA-H100-80GB-HBM3", ["MIG", "MPS", "TimeSlicing", "Exclusive"]),
        ("bench-a100", "NVIDIA-A100-SXM4-40GB", ["MIG", "MPS", "TimeSlicing", "Exclusive"]),
        ("bench-l4", "NVIDIA-L4", ["MPS", "TimeSlicing", "Exclusive"]),
    ]
    docs: list[dict[str, Any]] = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "bench"}}]
    for name, product, mech in pools:
        docs.append(
            {
                "apiVersion": "slm.io/v1alpha1",
                "kind": "GPUPool",
                "metadata": {"name": name},
                "spec": {
                    "nodeSelector": {"matchLabels": {"nvidia.com/gpu.product": product}},
                    "sharing": {"mechanisms": mech, "mps": {"maxClientsPerGPU": 16}},
                },
            }
        )
    for i in range(n):
        pool = pools[(0, 0, 0, 1, 2)[i % 5]][0]  # 60% on the 16 H100s, 20% each on the 8 A100s and the 8 L4s
        docs.append(
            {
                "apiVersion": "slm.io/v1alpha1",
                "kind": "SLMDeployment",
                "metadata": {"name": f"agent-{i:03d}", "namespace": "bench"},
                "spec": {
                    "poolRef": {"name": pool},
                    "model": {
                        "name": MODELS[i % len(MODELS)],
                        "maxContextTokens": 2048,
                        "maxConcurrentSequences": 4,
                    },
                    "replicas": replicas,
                    # Guaranteed needs hard isolation: a whole L4 (no MIG) per replica, so L4 takes the shareable tiers
                    "qos": TIERS[i % 3] if pool != "bench-l4" else TIERS[1 + i % 2],
                },
            }
        )
    return docs


def fleet(copies: int) -> list[dict[str, Any]]:
    """``copies - 1`` more of every node of examples/nodes/ (the cluster has the originals), named
    ``<node>-c<k>``: same GPUs and labels, so the simulator and the pools treat them alike."""
    originals = [
        d
        for f in sorted((REPO / "examples" / "nodes").glob("*.yaml"))
        for d in yaml.safe_load_all(f.read_text())
        if d
    ]
    out = []
    for k in range(1, copies):
        for node in originals:
            name = f"{node['metadata']['name']}-c{k:03d}"
            clone = json.loads(json.dumps(node))
            clone["metadata"]["name"] = name
            clone["metadata"]["labels"]["kubernetes.io/hostname"] = name
            out.append(clone)
    return out


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "slm_api_requests_total":
                out["requests"] = out.get("requests", 0.0) + s.value
            if s.name == "slm_reconcile_duration_seconds_count" and s.labels.get("resource") == "GPUPool":
                out["passes"] = out.get("passes", 0.0) + s.value
            if s.name == "slm_plan_duration_seconds_sum":
                out["planSeconds"] = out.get("planSeconds", 0.0) + s.value
            if s.name == "slm_replicas_placed":
                out["placed"] = out.get("placed", 0.0) + s.value
    return out


@dataclass
class Stack:
    """A fresh local control plane with the NVIDIA simulator and slm-operator running (their logs in log_dir)."""

    kubeconfig: str
    kc: list[str]
    operator: subprocess.Popen[bytes]
    metrics_port: int
    log_dir: Path

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        r = subprocess.run([*self.kc, *args], input=stdin, capture_output=True, text=True)
        if r.returncode:
            raise SystemExit(f"kubectl {' '.join(args[:2])} failed: {r.stderr}")
        return r.stdout

    def proc_status(self) -> dict[str, int]:
        """The operator's /proc/PID/status sizes in KiB (VmRSS, VmHWM) and its thread count."""
        out = {}
        for line in Path(f"/proc/{self.operator.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "Threads"):
                out[key] = int(value.split()[0])
        return out

    def cpu_seconds(self) -> float:
        """User + system CPU time the operator process has used (/proc/PID/stat)."""
        fields = Path(f"/proc/{self.operator.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def stack(name: str, resync_seconds: int = 30, copies: int = 1) -> Iterator[Stack]:
    """Start the stack (removing a cluster of that name first) with ``copies`` of the example fleet; stop and
    remove it on the way out."""
    bin_dir = Path(sh(str(REPO / "e2e/cluster/bin-dir.sh")).strip())
    sh(str(REPO / "e2e/cluster/down.sh"), name)
    kubeconfig = sh(str(REPO / "e2e/cluster/up.sh"), name).strip().splitlines()[-1]
    kc = [str(bin_dir / "kubectl"), "--kubeconfig", kubeconfig]
    procs: list[subprocess.Popen[bytes]] = []
    log_dir = Path(kubeconfig).parent
    try:
        sh(*kc, "apply", "-f", str(REPO / "crds"))
        sh(*kc, "wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
        sh(*kc, "apply", "-f", str(REPO / "deploy/priorityclasses.yaml"))
        if copies > 1:
            sh(*kc, "create", "-f", "-", input=yaml.safe_dump_all(fleet(copies)))
            sh(*kc, "wait", "--for=condition=Ready", "node", "--all", "--timeout=300s")
        for ns in ("gpu-operator", "slm-system"):
            sh(*kc, "create", "namespace", ns)
        env = {**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'operator'}"}
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "e2e.nvsim", "--kubeconfig", kubeconfig, "--namespace", "gpu-operator",
                 "--mig-manager-pods", "--config-volume-delay-seconds", CONFIG_VOLUME_DELAY],
                cwd=REPO, env=env, stdout=(log_dir / "nvsim.log").open("wb"), stderr=subprocess.STDOUT,
            )
        )  # fmt: skip
        port = free_port()
        op = subprocess.Popen(
            [sys.executable, "-m", "slm_operator", "run", "--kubeconfig", kubeconfig, "--namespace", "slm-system",
             "--metrics-listen", f"127.0.0.1:{port}", "--health-listen", "",
             *os.environ.get("BENCH_OPERATOR_ARGS", "").split()],
            cwd=REPO, env={**env, "SLM_RESYNC_SECONDS": str(resync_seconds)},
            stdout=(log_dir / "operator.log").open("wb"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        procs.append(op)
        time.sleep(3)
        yield Stack(kubeconfig, kc, op, port, log_dir)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        if keep := os.environ.get("BENCH_LOG_DIR"):  # the logs go with the cluster's folder otherwise
            Path(keep).mkdir(parents=True, exist_ok=True)
            for log in ("operator.log", "nvsim.log"):
                if (log_dir / log).exists():
                    shutil.copy(log_dir / log, Path(keep) / log)
        sh(str(REPO / "e2e/cluster/down.sh"), name)


def main() -> int:
    deployments = int(os.environ.get("BENCH_DEPLOYMENTS", "200"))
    per = int(os.environ.get("BENCH_REPLICAS", "1"))
    copies = int(os.environ.get("BENCH_FLEET", "1"))
    rest_seconds = float(os.environ.get("BENCH_REST_SECONDS", "0"))
    n = deployments * per
    out_path = Path(os.environ.get("BENCH_OUT", REPO / "bench" / "out" / "e2e.json"))
    with stack("bench-e2e", copies=copies) as st:
        kc, port = st.kc, st.metrics_port
        docs = manifests(deployments, per)
        t0 = time.monotonic()
        r = subprocess.run(
            [*kc, "apply", "-f", "-"], input=yaml.safe_dump_all(docs), capture_output=True, text=True
        )
        if r.returncode:
            raise SystemExit(f"kubectl apply failed: {r.stderr}")
        applied = time.monotonic() - t0
        deadline = t0 + 900
        running = placed_now = 0
        stable_since = time.monotonic()
        last = (-1, -1)
        created_at = placed_at = None
        while time.monotonic() < deadline:
            # the server prints the table (a few bytes a pod, no JSON of 2,000 pods for kubectl to decode each
            # second: on a 2-core machine that polling took CPU from what it measures)
            rows = sh(*kc, "get", "pods", "-n", "bench", "-l", "slm.io/pool", "--no-headers").splitlines()
            live = [r.split() for r in rows if r.strip()]
            running = sum(1 for r in live if r[2] == "Running")
            placed_now = int(scrape(port).get("placed", 0))
            now = time.monotonic() - t0
            if placed_at is None and placed_now >= n:
                placed_at = now
            if created_at is None and len(live) >= n:
                created_at = now
            if running >= n:
                break
            if (running, placed_now) != last:
                last, stable_since = (running, placed_now), time.monotonic()
            elif running == placed_now > 0 and time.monotonic() - stable_since > 20:
                break  # every placed replica runs and nothing changes any more: the rest does not fit
            elif time.monotonic() - stable_since > 90:
                break  # placed replicas whose pods do not run, for 90 s: reported as such
            time.sleep(2)
        # time until the last change (the final 20 s of watching nothing happen are not counted)
        elapsed = (time.monotonic() if running >= n else stable_since) - t0
        hwm_kib = st.proc_status()["VmHWM"]
        m = scrape(port)
        cpu_to_running = st.cpu_seconds()
        rest: dict[str, float] = {}
        if rest_seconds > 0:  # nothing changes any more: what does the operator still ask of the API server?
            time.sleep(15)  # the last statuses and the pool passes the final pods triggered
            before = scrape(port)
            time.sleep(rest_seconds)
            after = scrape(port)
            per_minute = (after.get("requests", 0) - before.get("requests", 0)) * 60 / rest_seconds
            rest = {
                "restSeconds": rest_seconds,
                "apiRequestsPerMinuteAtRest": round(per_minute, 1),
                "apiRequestsPerMinutePerPoolAtRest": round(per_minute / 3, 1),
            }
            hwm_kib = st.proc_status()["VmHWM"]
        deps = json.loads(sh(*kc, "get", "slmdeployments", "-n", "bench", "-o", "json"))["items"]
        placed = sum((d.get("status") or {}).get("placedReplicas", 0) for d in deps)
        row = {
            "deployments": deployments,
            "nodes": 5 * copies,
            "gpus": 32 * copies,
            "replicasWanted": n,
            "replicasPlaced": placed,
            "podsRunning": running,
            "placedNotRunning": max(0, placed - running),
            "applySeconds": round(applied, 2),
            "secondsToAllPlacedRunning": round(elapsed, 1),
            # when the plans had placed every replica, and when every replica pod existed (from the apply)
            "secondsToAllPlaced": placed_at and round(placed_at, 1),
            "secondsToAllPodsCreated": created_at and round(created_at, 1),
            "operatorCpuSecondsToRunning": round(cpu_to_running, 1),
            "planSeconds": round(m.get("planSeconds", 0.0), 1),
            "operatorPeakMemoryMiB": round(hwm_kib / 1024, 1),
            "apiRequests": int(m.get("requests", 0)),
            "planningPasses": int(m.get("passes", 0)),
            "apiRequestsPerPass": round(m.get("requests", 0) / max(1.0, m.get("passes", 1.0)), 1),
            **rest,
        }
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(row, indent=2) + "\n")
        print(json.dumps(row, indent=2))
        if running < n:
            print(
                f"{running}/{n} replicas Running: the rest did not fit (placed {placed}); see the SLMDeployments status"
            )
        return 0


if __name__ == "__main__":
    sys.exit(main())
