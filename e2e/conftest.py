"""Fixtures of the e2e suite: a real control plane (e2e/cluster/up.sh), the NVIDIA-stack simulator and the host
kubelet.

* ``cluster`` (session): brings the cluster up (``SLM_E2E_REUSE=1`` reuses/keeps a running one, by default the
  cluster ``slm``; otherwise a fresh ``slm-e2e`` is created and deleted at the end; ``SLM_E2E_CLUSTER`` picks
  the name, ``SLM_E2E_KEEP=1`` keeps it), starts ``python -m e2e.nvsim`` and ``python -m e2e.hostkubelet``
  (which runs the containers of pods labelled ``FINETUNE_JOB_LABEL`` as host processes; kwok leaves those pods
  alone) as subprocesses and yields a :class:`Cluster` (kubeconfig path, API clients, helpers).
* ``ns``: a fresh namespace per test; afterwards its pods are deleted (and waited for) and the namespace is
  deleted (kube-controller-manager's namespace controller finishes that in the background).
* ``gpu_nodes``: for tests that change node configs: afterwards deletes the test's pods and puts every GPU
  node back to ``all-disabled`` / no sharing (and removes the simulator ConfigMaps).

On a test failure the simulator's and the host kubelet's logs, the logs of the namespace's host-run containers,
the namespace's events and the GPU nodes' events are printed.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from e2e.hostkubelet.runtime import kill_all
from slm_operator.contract import FINETUNE_JOB_LABEL

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "e2e" / "cluster"
GPU_OPERATOR_NS = "gpu-operator"
MIG_CONFIG_MAP = "slm-mig-parted-config"
DP_CONFIG_MAP = "slm-device-plugin-config"
MIG_CONFIG = "nvidia.com/mig.config"
MIG_STATE = "nvidia.com/mig.config.state"
DP_CONFIG = "nvidia.com/device-plugin.config"
# the simulated fleet (examples/nodes/*.yaml): name -> (physical GPUs, MIG-capable)
GPU_NODES = {
    "gpu-h100-0": (8, True),
    "gpu-h100-1": (8, True),
    "gpu-a100-0": (8, True),
    "gpu-l4-0": (4, False),
    "gpu-l4-1": (4, False),
}

NODES_DIR = REPO / "examples" / "nodes"
# kwok acts as the kubelet of the nodes with this label only (e2e/cluster/env.sh): removing it from a node is how
# a test takes the node's kubelet away
KWOK_NODE_LABEL = os.environ.get("SLM_KWOK_NODE_LABEL", "type=kwok")

# the images the host kubelet runs (e2e/hostkubelet/images.py: Dockerfile -> .venv, Dockerfile.trainer -> .venv-train)
OPERATOR_IMAGE = "ghcr.io/slm-operator/slm-operator:e2e"
TRAINER_IMAGE = "ghcr.io/slm-operator/trainer:e2e"
# hostPath prefix of the e2e PersistentVolumes; the host kubelet maps it to <cluster dir>/volumes
PV_HOST_PREFIX = "/var/lib/slm-e2e"

# the simulator's stand-ins for the GPU Operator's mig-manager DaemonSet pods (--mig-manager-pods), in GPU_OPERATOR_NS
MIG_MANAGER_SELECTOR = "app=nvidia-mig-manager"

# mig-manager sees the mig-parted ConfigMap this late (a mounted volume the kubelet syncs periodically); the
# operator under test is started with a longer --configmap-sync-seconds (e2e/operator.py)
CONFIG_VOLUME_DELAY = 3.0


def documented_mig_strategy() -> str:
    """The ClusterPolicy ``mig.strategy`` docs/install.md installs the GPU Operator with ("" = left unset): the
    simulated device plugin and GFD get it as their ``MIG_STRATEGY`` env, as the GPU Operator does."""
    text = (REPO / "docs" / "install.md").read_text()
    command = text[text.index("helm upgrade --install gpu-operator") :].split("```")[0]
    m = re.search(r"--set mig\.strategy=(\S*)", command)
    return m.group(1).strip("\"'") if m else ""


def _proc_state(proc: Path) -> str:
    """The state letter of /proc/PID/stat ("Z": a zombie, exited but not yet reaped by its parent)."""
    try:
        return (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"


T = TypeVar("T")


def wait_for(check: Callable[[], T], timeout: float, what: str, interval: float = 0.1) -> T:
    """Poll ``check`` until it returns something truthy (returned) or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check()
        except ApiException as e:  # transient (e.g. 404 before creation): keep polling
            last = e
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
        time.sleep(interval)


@dataclass
class LabelRecorder:
    """Records every value a node label takes, from a watch started before the change is made."""

    core: client.CoreV1Api
    node: str
    key: str
    values: list[str | None] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _started: threading.Event = field(default_factory=threading.Event)

    _seen: int = 0

    def start(self) -> LabelRecorder:
        node = self.core.read_node(self.node)
        self.values.append((node.metadata.labels or {}).get(self.key))
        rv = node.metadata.resource_version
        self._seen = int(rv)
        threading.Thread(target=self._run, args=(rv,), daemon=True).start()
        self._started.wait(5)
        return self

    def _run(self, rv: str) -> None:
        w = watch.Watch()
        self._started.set()
        while not self._stop.is_set():
            try:
                for ev in w.stream(
                    self.core.list_node,
                    field_selector=f"metadata.name={self.node}",
                    resource_version=rv,
                    timeout_seconds=5,
                ):
                    rv = ev["object"].metadata.resource_version
                    value = (ev["object"].metadata.labels or {}).get(self.key)
                    if value != self.values[-1]:
                        self.values.append(value)
                    self._seen = int(rv)
                    if self._stop.is_set():
                        return
            except Exception:
                if self._stop.is_set():
                    return
                time.sleep(0.1)

    def stop(self, timeout: float = 60) -> list[str | None]:
        """Stop once the watch has caught up with the node as it is now, and return the values seen.

        A poll can see a label change before the watch delivers it (CI saw ``['success', 'pending']``
        where the node already said ``failed``), so stopping at once could drop the last values.
        """
        # etcd-backed resourceVersions are increasing integers; the tests run against etcd
        now = int(self.core.read_node(self.node).metadata.resource_version)
        wait_for(
            lambda: self._seen >= now, timeout, f"label watch on {self.node} reaching resourceVersion {now}"
        )
        self._stop.set()
        return self.values


@dataclass
class Cluster:
    name: str
    kubeconfig: str
    bin_dir: Path
    api: client.ApiClient
    sim_log: Path
    hostkubelet_log: Path
    core: client.CoreV1Api = field(init=False)
    apps: client.AppsV1Api = field(init=False)
    sim: subprocess.Popen[bytes] | None = field(init=False, default=None)
    hostkubelet: subprocess.Popen[bytes] | None = field(init=False, default=None)
    host_pvs: dict[str, list[str]] = field(init=False, default_factory=dict)  # namespace -> PVs made for it

    def __post_init__(self) -> None:
        self.core = client.CoreV1Api(self.api)
        self.apps = client.AppsV1Api(self.api)

    @property
    def dir(self) -> Path:
        """The cluster's folder (e2e/cluster/env.sh CLUSTER_DIR): kubeconfig, kwok, hostkubelet/, volumes/."""
        return Path(self.kubeconfig).parent

    # ---- control-plane faults --------------------------------------------------------------------------------

    def crash_component(self, component: str, down_seconds: float = 2.0, timeout: float = 90) -> None:
        """SIGKILL one control-plane process kwokctl started (``etcd``, ``kube-apiserver``, ...), keep it down
        ``down_seconds``, then start it again with the same command line, working directory and environment,
        as a supervisor (systemd, the kubelet of a static pod) would. Its new pid goes into kwokctl's pid file,
        so e2e/cluster/down.sh still stops it; its output goes on into kwokctl's log of it. Returns once the
        API server answers /readyz again."""
        kwok = self.dir / "kwok" / "clusters" / self.name
        pid_file = kwok / "pids" / f"{component}.pid"
        pid = int(pid_file.read_text().strip())
        proc = Path(f"/proc/{pid}")
        argv = [a.decode() for a in (proc / "cmdline").read_bytes().split(b"\0") if a]
        env = dict(
            kv.decode().split("=", 1) for kv in (proc / "environ").read_bytes().split(b"\0") if b"=" in kv
        )
        cwd = os.readlink(proc / "cwd")
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not proc.exists() or "Z" in _proc_state(proc), 30, f"{component} killed")
        time.sleep(down_seconds)
        with (kwok / "logs" / f"{component}.log").open("ab") as log:
            new = subprocess.Popen(
                argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        pid_file.write_text(str(new.pid))

        def ready() -> bool:
            r = subprocess.run(
                [str(self.bin_dir / "kubectl"), "--kubeconfig", self.kubeconfig, "get", "--raw", "/readyz"],
                capture_output=True,
                text=True,
            )
            return r.stdout.strip() == "ok"

        wait_for(ready, timeout, f"the API server ready after {component} restarted", interval=0.5)

    # ---- the host kubelet ------------------------------------------------------------------------------------

    def start_hostkubelet(self) -> None:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        }
        cmd = [sys.executable, "-m", "e2e.hostkubelet", "--kubeconfig", self.kubeconfig,
               "--label", FINETUNE_JOB_LABEL, "--host-path", f"{PV_HOST_PREFIX}={self.dir / 'volumes'}"]  # fmt: skip
        with self.hostkubelet_log.open("a") as log:
            self.hostkubelet = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)

    def stop_hostkubelet(self, kill: bool = False) -> None:
        """Stop (or SIGKILL) the host kubelet; its containers keep running, as under a restarted kubelet."""
        if self.hostkubelet is None:
            return
        if kill:
            self.hostkubelet.kill()
        else:
            self.hostkubelet.terminate()
        try:
            self.hostkubelet.wait(10)
        except subprocess.TimeoutExpired:
            self.hostkubelet.kill()
            self.hostkubelet.wait()
        self.hostkubelet = None

    def host_volume(self, namespace: str, claim: str) -> Path:
        """A PersistentVolumeClaim ``claim`` bound to a hostPath PersistentVolume of its own (below
        PV_HOST_PREFIX), and the host folder where the host kubelet keeps its data. The PV is deleted with the
        test's namespace (the shared ones of e2e/cluster/volumes.yaml fail once their claim is deleted: their
        Delete reclaim policy has no deleter here)."""
        pv_name = f"{namespace}-{claim}"
        host = f"{PV_HOST_PREFIX}/{pv_name}"
        pv = {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": pv_name, "labels": {"slm.io/e2e": "true"}},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": "",
                "claimRef": {"namespace": namespace, "name": claim},
                "hostPath": {"path": host},
            },
        }
        self.core.create_persistent_volume(pv)
        self.host_pvs.setdefault(namespace, []).append(pv_name)
        pvc = {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": claim, "namespace": namespace},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "1Gi"}},
                "storageClassName": "",
                "volumeName": pv_name,
            },
        }
        self.core.create_namespaced_persistent_volume_claim(namespace, pvc)
        path = self.dir / "volumes" / pv_name
        path.mkdir(parents=True, exist_ok=True)  # so the test can put files there before a pod runs
        return path

    def delete_host_volumes(self, namespace: str) -> None:
        for name in self.host_pvs.pop(namespace, []):
            with contextlib.suppress(ApiException):
                self.core.delete_persistent_volume(name)

    def container_logs(self, namespace: str, lines: int = 40) -> list[str]:
        """The last lines of every host-run container's log of the namespace (e2e/hostkubelet/runtime.py)."""
        out = []
        for log in sorted((self.dir / "hostkubelet" / "pods").glob(f"{namespace}_*/*/0.log")):
            out.append(f"----- {log.parent.parent.name}/{log.parent.name} -----")
            out += log.read_text(errors="replace").splitlines()[-lines:]
        return out

    # ---- the simulator process -------------------------------------------------------------------------------

    def start_simulator(self, apply_delay: float = 1, mig_strategy_env: str | None = None) -> None:
        """``mig_strategy_env``: the simulated ClusterPolicy's mig.strategy (None: what docs/install.md sets)."""
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        }
        cmd = [sys.executable, "-m", "e2e.nvsim", "--kubeconfig", self.kubeconfig, "--namespace", GPU_OPERATOR_NS,
               "--apply-delay-seconds", str(apply_delay), "--resync-seconds", "20",
               "--mig-strategy-env", documented_mig_strategy() if mig_strategy_env is None else mig_strategy_env,
               "--config-volume-delay-seconds", str(CONFIG_VOLUME_DELAY), "--mig-manager-pods"]  # fmt: skip
        with self.sim_log.open("a") as log:
            self.sim = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)

    def stop_simulator(self, kill: bool = False) -> None:
        if self.sim is None:
            return
        if kill:
            self.sim.kill()
        else:
            self.sim.terminate()
        try:
            self.sim.wait(10)
        except subprocess.TimeoutExpired:
            self.sim.kill()
            self.sim.wait()
        self.sim = None

    # ---- helpers used by the tests ---------------------------------------------------------------------------

    def kubectl(self, *args: str) -> str:
        cmd = [str(self.bin_dir / "kubectl"), "--kubeconfig", self.kubeconfig, *args]
        return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout

    def token_kubeconfig(
        self, namespace: str, service_account: str, path: Path, pod: str | None = None
    ) -> Path:
        """A kubeconfig at ``path`` that authenticates as the ServiceAccount (a token from the TokenRequest API),
        so a process run with it has exactly the RBAC a pod of that ServiceAccount would have. With ``pod``, the
        token is bound to a stand-in Pod of that name (created here, gated so that it is never scheduled), as the
        token a Pod mounts is: the API server refuses it once that Pod is deleted."""
        token = self.service_account_token(namespace, service_account, pod)
        admin = yaml.safe_load(Path(self.kubeconfig).read_text())
        cluster_name = admin["clusters"][0]["name"]
        path.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": admin["clusters"],
                    "users": [{"name": service_account, "user": {"token": token}}],
                    "contexts": [
                        {"name": "sa", "context": {"cluster": cluster_name, "user": service_account}}
                    ],
                    "current-context": "sa",
                }
            )
        )
        return path

    def service_account_token(self, namespace: str, service_account: str, pod: str | None = None) -> str:
        bound: tuple[str, ...] = ()
        if pod is not None:
            self.core.create_namespaced_pod(
                namespace,
                {
                    "metadata": {"name": pod},
                    "spec": {
                        "serviceAccountName": service_account,
                        "schedulingGates": [{"name": "slm.io/e2e-stand-in"}],
                        "containers": [{"name": "process", "image": "stand-in"}],
                    },
                },
            )
            bound = ("--bound-object-kind", "Pod", "--bound-object-name", pod)
        return self.kubectl(
            "-n", namespace, "create", "token", service_account, "--duration=4h", *bound
        ).strip()

    def node(self, name: str) -> client.V1Node:
        return self.core.read_node(name)

    def labels(self, name: str) -> dict[str, str]:
        return dict(self.node(name).metadata.labels or {})

    def annotations(self, name: str) -> dict[str, str]:
        return dict(self.node(name).metadata.annotations or {})

    def nvidia_resources(self, name: str) -> dict[str, int]:
        """nvidia.com/* allocatable of a node (capacity must agree)."""
        status = self.node(name).status
        alloc = {k: int(v) for k, v in (status.allocatable or {}).items() if k.startswith("nvidia.com/")}
        cap = {k: int(v) for k, v in (status.capacity or {}).items() if k.startswith("nvidia.com/")}
        assert alloc == cap, f"{name}: allocatable {alloc} != capacity {cap}"
        return alloc

    def nonzero_resources(self, name: str) -> dict[str, int]:
        """nvidia.com/* resources the device plugin advertises (a resource it stopped advertising stays at 0)."""
        return {k: v for k, v in self.nvidia_resources(name).items() if v}

    def set_labels(self, name: str, labels: dict[str, str | None]) -> None:
        self.core.patch_node(name, {"metadata": {"labels": labels}})

    def record_label(self, name: str, key: str) -> LabelRecorder:
        return LabelRecorder(self.core, name, key).start()

    def put_config_map(
        self, name: str, data: dict[str, str], namespace: str = GPU_OPERATOR_NS, synced: bool = True
    ) -> None:
        """Write a ConfigMap; ``synced``: then wait as long as the kubelet takes to show it to mig-manager."""
        body = client.V1ConfigMap(metadata=client.V1ObjectMeta(name=name, namespace=namespace), data=data)
        try:
            self.core.create_namespaced_config_map(namespace, body)
        except ApiException as e:
            if e.status != 409:
                raise
            self.core.replace_namespaced_config_map(name, namespace, body)
        if synced and name == MIG_CONFIG_MAP:
            time.sleep(CONFIG_VOLUME_DELAY + 0.5)

    def mig_manager_pods(self) -> dict[str, list[client.V1Pod]]:
        """The simulator's mig-manager pods that are not being deleted, by node."""
        pods = self.core.list_namespaced_pod(GPU_OPERATOR_NS, label_selector=MIG_MANAGER_SELECTOR).items
        out: dict[str, list[client.V1Pod]] = {}
        for p in pods:
            if not p.metadata.deletion_timestamp:
                out.setdefault(p.spec.node_name, []).append(p)
        return out

    def annotate_pod(self, namespace: str, name: str, annotations: dict[str, str | None]) -> None:
        self.core.patch_namespaced_pod(name, namespace, {"metadata": {"annotations": annotations}})

    def node_events(self, name: str) -> list[client.CoreV1Event]:
        sel = f"involvedObject.kind=Node,involvedObject.name={name}"
        return self.core.list_event_for_all_namespaces(field_selector=sel).items

    def wait_node_event(
        self, name: str, reason: str, contains: str = "", timeout: float = 60
    ) -> client.CoreV1Event:
        def find() -> client.CoreV1Event | None:
            for ev in self.node_events(name):
                if ev.reason == reason and contains in (ev.message or ""):
                    return ev
            return None

        return wait_for(find, timeout, f"event {reason} on node {name} containing {contains!r}")

    def wait_mig_state(self, name: str, config_name: str, state: str, timeout: float = 90) -> dict[str, str]:
        """Wait until mig-manager finished with ``config_name`` (observed annotation) in ``state``."""

        def done() -> dict[str, str] | None:
            node = self.node(name)
            labels = node.metadata.labels or {}
            observed = (node.metadata.annotations or {}).get("nvsim.slm.io/mig-config-observed", "")
            if labels.get(MIG_STATE) == state and f'"name":"{config_name}"' in observed:
                return labels
            return None

        return wait_for(done, timeout, f"{name}: mig config {config_name} -> {state}")

    def pod(
        self,
        namespace: str,
        name: str,
        limits: dict[str, str],
        node: str | None = None,
    ) -> client.V1Pod:
        spec = client.V1PodSpec(
            containers=[
                client.V1Container(
                    name="main",
                    image="registry.invalid/slm/never-pulled:1",  # kwok never pulls images
                    resources=client.V1ResourceRequirements(limits=limits, requests=limits),
                )
            ],
            node_selector={"kubernetes.io/hostname": node} if node else None,
            termination_grace_period_seconds=0,
        )
        body = client.V1Pod(metadata=client.V1ObjectMeta(name=name, namespace=namespace), spec=spec)
        return self.core.create_namespaced_pod(namespace, body)

    def wait_pod_running(self, namespace: str, name: str, timeout: float = 90) -> client.V1Pod:
        def running() -> client.V1Pod | None:
            pod = self.core.read_namespaced_pod(name, namespace)
            return pod if pod.status.phase == "Running" else None

        return wait_for(running, timeout, f"pod {namespace}/{name} Running")

    def delete_pods(self, namespace: str, timeout: float = 30) -> None:
        """Delete the namespace's workloads and pods and wait until no pod is left."""
        with contextlib.suppress(ApiException):
            self.apps.delete_collection_namespaced_replica_set(namespace)
        with contextlib.suppress(ApiException):  # a Job (a FineTuneJob's training) would recreate its pods
            client.BatchV1Api(self.api).delete_collection_namespaced_job(
                namespace, propagation_policy="Background"
            )

        def gone() -> bool:
            if not self.core.list_namespaced_pod(namespace).items:
                return True
            self.core.delete_collection_namespaced_pod(namespace, grace_period_seconds=0)
            return False

        wait_for(gone, timeout, f"pods of {namespace} deleted", interval=0.2)

    def reset_gpu_nodes(self, timeout: float = 60) -> None:
        """Every GPU node back to all-disabled MIG / default device-plugin config, simulator ConfigMaps gone."""
        for cm in (MIG_CONFIG_MAP, DP_CONFIG_MAP):
            with contextlib.suppress(ApiException):
                self.core.delete_namespaced_config_map(cm, GPU_OPERATOR_NS)
        for name, (_, mig) in GPU_NODES.items():
            labels: dict[str, str | None] = {DP_CONFIG: None}
            if mig:
                labels[MIG_CONFIG] = "all-disabled"
            self.set_labels(name, labels)
        for name, (gpus, mig) in GPU_NODES.items():
            if mig:
                self._wait_mig_disabled(name, timeout)

            def baseline(name: str = name, gpus: int = gpus) -> bool:
                res = self.nvidia_resources(name)
                return res.get("nvidia.com/gpu") == gpus and all(
                    v == 0 for k, v in res.items() if k != "nvidia.com/gpu"
                )

            wait_for(baseline, timeout, f"{name} back to {gpus} whole GPUs")

    def _wait_mig_disabled(self, name: str, timeout: float) -> None:
        """Wait for ``all-disabled`` to be applied. mig-manager stays at ``failed`` until the label changes, and
        the reset sets the label the node may already have (a change refused while a pod still held a MIG
        device), so a node left at ``failed`` gets what docs/operations.md tells a user to do: restart
        mig-manager (here: the simulator), which applies the label again."""
        try:
            self.wait_mig_state(name, "all-disabled", "success", timeout)
        except AssertionError as exc:
            node = self.node(name).metadata
            state = (node.labels or {}).get(MIG_STATE)
            if state != "failed":
                observed = (node.annotations or {}).get("nvsim.slm.io/mig-config-observed")
                raise AssertionError(f"{exc} (state {state!r}, mig-manager observed {observed})") from None
            self.stop_simulator()
            self.start_simulator()
            try:
                self.wait_mig_state(name, "all-disabled", "success", timeout)
            except AssertionError as again:  # say what still holds the node's devices
                pods = self.core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={name}").items
                held = [
                    f"{p.metadata.namespace}/{p.metadata.name} ({p.status.phase})"
                    for p in pods
                    if any(
                        k.startswith("nvidia.com/")
                        for c in p.spec.containers
                        for k in ((c.resources and c.resources.limits) or {})
                    )
                ]
                raise AssertionError(
                    f"{again} (after a mig-manager restart; pods with NVIDIA devices: {held})"
                ) from None

    def diagnostics(self, namespace: str | None) -> str:
        out = ["", "===== nvsim log (last 80 lines) ====="]
        with contextlib.suppress(OSError):
            out += self.sim_log.read_text().splitlines()[-80:]
        out.append("===== hostkubelet log (last 80 lines) =====")
        with contextlib.suppress(OSError):
            out += self.hostkubelet_log.read_text().splitlines()[-80:]
        if namespace:
            out.append(f"===== host-run container logs in namespace {namespace} =====")
            out += self.container_logs(namespace)
            out.append(f"===== events in namespace {namespace} =====")
            with contextlib.suppress(ApiException):
                for ev in self.core.list_namespaced_event(namespace).items:
                    out.append(
                        f"{ev.type} {ev.reason} {ev.involved_object.kind}/{ev.involved_object.name}: {ev.message}"
                    )
        out.append("===== GPU node events =====")
        for name in GPU_NODES:
            with contextlib.suppress(ApiException):
                for ev in self.node_events(name):
                    out.append(f"{name}: {ev.type} {ev.reason}: {ev.message}")
        return "\n".join(out)


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"rep_{rep.when}", rep)


def _failed(request: pytest.FixtureRequest) -> bool:
    rep = getattr(request.node, "rep_call", None)
    return bool(rep and rep.failed)


def _print_diagnostics_once(request: pytest.FixtureRequest, cluster: Cluster, namespace: str | None) -> None:
    if _failed(request) and not getattr(request.node, "_e2e_diagnostics", False):
        request.node._e2e_diagnostics = True
        print(cluster.diagnostics(namespace))


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    reuse = os.environ.get("SLM_E2E_REUSE") == "1"
    name = os.environ.get("SLM_E2E_CLUSTER") or ("slm" if reuse else "slm-e2e")
    keep = reuse or os.environ.get("SLM_E2E_KEEP") == "1"
    if not reuse:
        subprocess.run([str(SCRIPTS / "down.sh"), name], check=True)
    env = {**os.environ, "SLM_HOSTRUN_LABEL": FINETUNE_JOB_LABEL, "PYTHON": sys.executable}
    up = subprocess.run(
        [str(SCRIPTS / "up.sh"), name], check=True, stdout=subprocess.PIPE, text=True, env=env
    )
    kubeconfig = up.stdout.strip().splitlines()[-1]
    bin_dir = Path(
        subprocess.run(
            [str(SCRIPTS / "bin-dir.sh")], check=True, capture_output=True, text=True
        ).stdout.strip()
    )
    api = config.new_client_from_config(config_file=kubeconfig)

    logs = tmp_path_factory.mktemp("harness")
    c = Cluster(
        name=name,
        kubeconfig=kubeconfig,
        bin_dir=bin_dir,
        api=api,
        sim_log=logs / "nvsim.log",
        hostkubelet_log=logs / "hostkubelet.log",
    )
    c.start_simulator()
    c.start_hostkubelet()
    try:
        # the simulator has looked at every GPU node once it wrote its device-plugin status annotation
        for node in GPU_NODES:
            wait_for(
                lambda node=node: "nvsim.slm.io/device-plugin-status" in c.annotations(node),
                90,
                f"nvsim to reconcile {node}",
            )
        if reuse:
            c.reset_gpu_nodes()
        yield c
    finally:
        c.stop_simulator()
        c.stop_hostkubelet()
        kill_all(c.dir / "hostkubelet")  # the containers outlive the host kubelet (their shims do)
        api.close()
        if not keep:
            subprocess.run([str(SCRIPTS / "down.sh"), name], check=False)


@pytest.fixture
def ns(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    cluster.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    # pods need the namespace's default ServiceAccount (ServiceAccount admission); KCM creates it
    wait_for(lambda: cluster.core.read_namespaced_service_account("default", name), 90, f"{name}/default SA")
    yield name
    _print_diagnostics_once(request, cluster, name)
    # pods first (kwok's pod-delete stage is fast), so no test sees another test's pods on a node; the
    # namespace itself is left to the namespace controller (its deletion takes ~5 s, nobody waits for it)
    cluster.delete_pods(name)
    cluster.core.delete_namespace(name, grace_period_seconds=0)
    cluster.delete_host_volumes(name)


@pytest.fixture
def gpu_nodes(cluster: Cluster, ns: str, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    yield cluster
    _print_diagnostics_once(request, cluster, ns)
    cluster.delete_pods(ns)
    cluster.reset_gpu_nodes()
