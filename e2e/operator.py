"""Run slm-operator against the e2e cluster as a real process (killable, restartable), and helpers to watch it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

REPO = Path(__file__).resolve().parents[1]
GROUP, VERSION = "slm.io", "v1alpha1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Operator:
    kubeconfig: str
    log_dir: Path
    extra_args: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    kubeconfig_override: str | None = None
    metrics_port: int = field(default_factory=free_port)

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"operator-{self.starts}.log"

    def start(self) -> None:
        self.starts += 1
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO / "operator"),
            "SLM_RESYNC_SECONDS": "5",
            "POD_NAME": f"e2e-operator-{self.starts}",
        }
        cmd = [
            sys.executable, "-m", "slm_operator", "run",
            "--kubeconfig", self.kubeconfig_override or self.kubeconfig,
            "--namespace", "slm-system", "--leader-elect",
            "--health-listen", f"127.0.0.1:{free_port()}",
            "--metrics-listen", f"127.0.0.1:{self.metrics_port}",
            "--configmap-sync-seconds", "5",  # > the simulator's CONFIG_VOLUME_DELAY (e2e/conftest.py)
            *self.extra_args,
        ]  # fmt: skip
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(30)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)

    def logs(self) -> str:
        out = []
        for i in range(1, self.starts + 1):
            p = self.log_dir / f"operator-{i}.log"
            if p.exists():
                out.append(f"----- operator run {i} -----\n" + p.read_text(errors="replace")[-20000:])
        return "\n".join(out)


def custom(api: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api)


def get_dep(api: client.ApiClient, ns: str, name: str) -> dict[str, Any]:
    return custom(api).get_namespaced_custom_object(GROUP, VERSION, ns, "slmdeployments", name)


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == type_:
            return dict(c)
    return None


def is_true(obj: dict[str, Any], type_: str) -> bool:
    c = condition(obj, type_)
    return bool(
        c and c.get("status") == "True" and c.get("observedGeneration") == obj["metadata"].get("generation")
    )


def replica_pods(core: client.CoreV1Api, ns: str, dep: str | None = None) -> list[client.V1Pod]:
    sel = f"slm.io/deployment={dep}" if dep else "slm.io/pool"
    return [
        p for p in core.list_namespaced_pod(ns, label_selector=sel).items if not p.metadata.deletion_timestamp
    ]


def placement(pod: client.V1Pod) -> dict[str, Any]:
    return dict(json.loads(pod.metadata.annotations["slm.io/placement"]))


def delete_quietly(fn: Any, *args: Any, **kw: Any) -> None:
    try:
        fn(*args, **kw)
    except ApiException as exc:
        if exc.status != 404:
            raise


def llm_fallback_pod(ns: str, node: str, gpus: int) -> client.V1Pod:
    """The LLM fallback's pod: the reservation's PriorityClass, ``gpus`` whole GPUs of ``node``. Its priority lets
    the real scheduler preempt what borrows the reserved GPUs (BestEffort replicas, FineTuneJob trainers)."""
    gpu = {"nvidia.com/gpu": str(gpus)}
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name="llm-fallback", namespace=ns),
        spec=client.V1PodSpec(
            priority_class_name="slm-llm-fallback",
            node_selector={"kubernetes.io/hostname": node},
            containers=[
                client.V1Container(
                    name="llm",
                    image="registry.invalid/llm:1",
                    resources=client.V1ResourceRequirements(limits=gpu, requests=gpu),
                )
            ],
            termination_grace_period_seconds=0,
        ),
    )
