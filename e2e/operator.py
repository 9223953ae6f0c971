"""Run slm-operator against the e2e cluster as real processes (the operator, killable and restartable; the
gateway), and helpers to watch them and to call the gateway."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from e2e.conftest import Cluster, wait_for
from e2e.replicas import Replicas

REPO = Path(__file__).resolve().parents[1]
GROUP, VERSION = "slm.io", "v1alpha1"
# what the chart (release `slm` in slm-system) creates for the gateway
SYSTEM_NS = "slm-system"
GATEWAY_SA = "slm-slm-operator-gateway"
ROUTE_USER_ROLE = "slm-slm-operator-route-user"
GATEWAY_SECRETS_ROLE = "slm-slm-operator-gateway-secrets"
GATEWAY_CONFIGMAPS_ROLE = "slm-slm-operator-gateway-configmaps"
STATUS_LEASE = "slm-slm-operator-gateway-status"  # the chart's Role lets the gateway hold this one Lease
GATEWAY_POD = "e2e-gateway-0"
API_KEY = "sk-e2e-gateway-0123456789"


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
    metrics_port: int = field(default_factory=free_port)
    # the Lease holder identity is POD_NAME: unique per replica (two replicas with one identity would both lead)
    name: str = field(default_factory=lambda: f"e2e-operator-{uuid.uuid4().hex[:6]}")
    # Run as this ServiceAccount of SYSTEM_NS with a token bound to a stand-in Pod named POD_NAME, as a replica of
    # the chart's Deployment does: a replica that takes the Lease over deletes the previous holder's Pod, which
    # revokes its token (controllers/leader.py, fence_out). Needs ``cluster``; None: the admin ``kubeconfig``.
    service_account: str | None = None
    cluster: Cluster | None = None
    stand_ins: list[str] = field(default_factory=list)

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"operator-{self.starts}.log"

    @property
    def pod_name(self) -> str:
        return f"{self.name}-{self.starts}"

    def _kubeconfig(self) -> str:
        if self.service_account is None:
            return self.kubeconfig
        assert self.cluster is not None, "service_account needs the cluster"
        self.stand_ins.append(self.pod_name)
        path = self.log_dir / f"{self.pod_name}.kubeconfig"
        return str(self.cluster.token_kubeconfig(SYSTEM_NS, self.service_account, path, pod=self.pod_name))

    def start(self) -> None:
        self.starts += 1
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO / "operator"),
            "SLM_RESYNC_SECONDS": "5",
            "POD_NAME": self.pod_name,
            "POD_NAMESPACE": SYSTEM_NS,
        }
        cmd = [
            sys.executable, "-m", "slm_operator", "run",
            "--kubeconfig", self._kubeconfig(),
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
        self._delete_stand_ins()

    def _delete_stand_ins(self) -> None:
        """The stand-in Pods of the runs that ended (a new leader may have deleted one already)."""
        if self.cluster is None:
            return
        running = self.pod_name if self.proc is not None and self.proc.poll() is None else None
        for pod in [p for p in self.stand_ins if p != running]:
            try:
                self.cluster.core.delete_namespaced_pod(pod, SYSTEM_NS, grace_period_seconds=0)
            except ApiException as exc:
                if exc.status != 404:
                    raise
            self.stand_ins.remove(pod)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)

    def logs(self) -> str:
        out = []
        for i in range(1, self.starts + 1):
            p = self.log_dir / f"operator-{i}.log"
            if p.exists():
                out.append(f"----- operator run {i} -----\n" + p.read_text(errors="replace")[-20000:])
        return "\n".join(out)


def kubectl_apply(cluster: Cluster, docs: list[dict[str, Any]] | str, namespace: str | None = None) -> str:
    text = docs if isinstance(docs, str) else yaml.safe_dump_all(docs)
    cmd = [str(cluster.bin_dir / "kubectl"), "--kubeconfig", cluster.kubeconfig, "apply", "-f", "-"]
    if namespace:
        cmd += ["-n", namespace]
    r = subprocess.run(cmd, input=text, capture_output=True, text=True)
    if r.returncode:
        raise AssertionError(f"kubectl apply failed: {r.stderr}")
    return r.stdout


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


# ------------------------------------------------------------------------------------------ the gateway


@dataclass
class GatewayProcess:
    """`slm-operator gateway` in in-cluster mode as a host process, with ``kubeconfig`` (the chart's gateway
    ServiceAccount's token: ``Cluster.token_kubeconfig``), dialling the replica stand-ins through ``dial_map``."""

    kubeconfig: Path
    dial_map: str
    store: str
    work: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    #: where it listens (the autoscaling e2e: the loopback twin of the chart's gateway pod, which the operator's
    #: autoscaler reads through its own --dial-map)
    host: str = "127.0.0.1"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def log(self) -> Path:
        return self.work / "gateway.log"

    def start(self) -> None:
        cmd = [
            sys.executable, "-m", "slm_operator", "gateway", "--kubeconfig", str(self.kubeconfig),
            "--listen", f"{self.host}:{self.port}", "--dial-map", self.dial_map,
            "--store", self.store, "--spool-dir", str(self.work / "spool"),
            "--salt-file", str(self.work / "salt"), "--log-level", "info",
            "--status-lease", f"{SYSTEM_NS}/{STATUS_LEASE}",
        ]  # fmt: skip
        (self.work / "salt").write_text(uuid.uuid4().hex)
        env = {**os.environ, "PYTHONPATH": str(REPO / "operator"), "POD_NAME": GATEWAY_POD}
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=self.log.open("wb"), stderr=subprocess.STDOUT
        )

        def ready() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.log.read_text()[-5000:]
            try:
                return urllib.request.urlopen(self.url + "/readyz", timeout=2).status == 200
            except OSError:
                return False

        wait_for(ready, 60, "the gateway's /readyz")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return str(self.json()["choices"][0]["message"]["content"])


def chat(
    url: str,
    model: str,
    *,
    token: str | None = None,
    task: str | None = None,
    content: str = "hello",
    timeout: float = 60,
    **extra: Any,
) -> Answer:
    """A chat completion through the gateway at ``url`` (``extra`` adds to or replaces the body's fields, e.g.
    ``messages``); ``task`` sends it as ``x-slm-task``."""
    body = {"model": model, "messages": [{"role": "user", "content": content}], **extra}
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if task is not None:
        headers["x-slm-task"] = task
    req = urllib.request.Request(
        url + "/v1/chat/completions", data=json.dumps(body).encode(), headers=headers
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return Answer(resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read())
    except urllib.error.HTTPError as exc:
        return Answer(exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read())


def grant_callers(cluster: Cluster, ns: str) -> tuple[str, str]:
    """Tokens of two ServiceAccounts of ``ns``: ``agent`` may use every route of ``ns``, ``stranger`` none;
    the gateway may read the namespace's Secrets and watch its ConfigMaps (the RoleBindings docs/gateway.md tells a
    namespace to create); the Secret ``agent-api-keys`` holds the hash of ``API_KEY``."""
    sas = [{"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": n, "namespace": ns}} for n in
           ("agent", "stranger")]  # fmt: skip
    bindings = [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": name, "namespace": ns},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": sa_ns}],
        }
        for name, role, sa, sa_ns in (
            ("agent-routes", ROUTE_USER_ROLE, "agent", ns),
            ("slm-gateway-secrets", GATEWAY_SECRETS_ROLE, GATEWAY_SA, SYSTEM_NS),
            ("slm-gateway-configmaps", GATEWAY_CONFIGMAPS_ROLE, GATEWAY_SA, SYSTEM_NS),
        )
    ]
    key = {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "agent-api-keys", "namespace": ns},
        "stringData": {"e2e-bot": "sha256:" + hashlib.sha256(API_KEY.encode()).hexdigest()},
    }  # fmt: skip
    kubectl_apply(cluster, [*sas, *bindings, key])
    return cluster.service_account_token(ns, "agent"), cluster.service_account_token(ns, "stranger")


def wait_served(replicas: Replicas, cluster: Cluster, ns: str, name: str, count: int, timeout: float) -> None:
    """Until the SLMDeployment ``name`` has ``count`` Running replica pods, each served by its stand-in."""

    def served() -> bool:
        pods = cluster.core.list_namespaced_pod(ns, label_selector=f"slm.io/deployment={name}").items
        running = [p for p in pods if p.status.phase == "Running" and p.status.pod_ip]
        return len(running) == count and all(p.metadata.uid in replicas.serving for p in running)

    wait_for(served, timeout, f"{ns}/{name}: {count} Running replicas, each with its stand-in", interval=0.5)
