"""Autoscaling on a real control plane (issue 14): the gateway's load drives an SLMDeployment's replicas, and a call
for a deployment at zero replicas is held by the gateway until the operator brought one back.

The harness of e2e/test_gateway.py: the chart installed with helm (RBAC, ServiceAccounts), the operator and the
gateway as host processes under the chart's ServiceAccounts, a stand-in (e2e/standin.py) per Running replica pod
on the loopback twin of its kwok IP. The autoscaler reads the gateway's ``/metrics`` at the IP of a gateway pod
(``--gateway-selector``): the chart's gateway pod (kwok gives it an IP, runs nothing) stands for it, and the host
gateway listens on that IP's loopback twin, which the operator reads through its ``--dial-map`` (as the gateway
dials the replicas). Replica pods are bound by the real scheduler on the two L4 nodes (one whole GPU each).

kwok marks a pod Ready the moment it runs, where a real replica is Ready only once vLLM answers; so the
stand-ins here start on a pod watch (not the harness's 0.3 s poll), ahead of the EndpointSlice that makes the
gateway send the held call (kube-controller-manager's write, the gateway's watch and its 0.2 s debounce).
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes import watch as k8s_watch
from prometheus_client.parser import text_string_to_metric_families

from e2e.conftest import Cluster, wait_for
from e2e.operator import (
    GATEWAY_SA,
    GROUP,
    SYSTEM_NS,
    VERSION,
    Answer,
    GatewayProcess,
    Operator,
    chat,
    custom,
    delete_quietly,
    free_port,
    get_dep,
    grant_callers,
    kubectl_apply,
    wait_served,
)
from e2e.replicas import KWOK_POD_CIDR, EventLoopThread, Replicas, random_loopback, serve
from e2e.standin import Behaviour, StandIn
from slm_operator.contract import ACTIVATION_ANNOTATION
from tests.test_argocd_health import health

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[1]
RELEASE = "slm"
POOL = "as-l4"
GATEWAY_SELECTOR = "app.kubernetes.io/component=gateway"
GATEWAY_PORT = 8080  # the chart's gateway.port: the container port named http the autoscaler reads
CONVERGE = 120.0
SCALE_TO_ZERO_AFTER = 30  # seconds: the smallest scaleToZeroAfter the API allows


class WatchedReplicas(Replicas):
    """Replicas whose stand-ins start on the pod watch event that shows the pod Running (see the module's
    docstring); a full sync (which also stops the stand-ins of deleted pods) after every other event."""

    def run_forever(self) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(Exception):  # an API hiccup: list and watch again
                self.sync()
                w = k8s_watch.Watch()
                for event in w.stream(
                    self.core.list_pod_for_all_namespaces,
                    label_selector="slm.io/deployment",
                    timeout_seconds=5,
                ):
                    if self.stop.is_set():
                        w.stop()
                        break
                    pod = event["object"]
                    running = (
                        event["type"] != "DELETED"
                        and pod.status.phase == "Running"
                        and pod.status.pod_ip
                        and not pod.metadata.deletion_timestamp
                    )
                    if running and pod.metadata.uid not in self.serving:
                        self.serve_pod(pod)  # at once, before the EndpointSlice reaches the gateway
                    else:
                        self.sync()


@dataclass
class Stack:
    cluster: Cluster
    gateway: GatewayProcess
    operator: Operator
    replicas: Replicas
    llm: StandIn
    llm_url: str
    ns: str
    token: str  # ServiceAccount ns/agent, which may use the namespace's routes
    idle_created: float = field(default_factory=time.monotonic)  # when the deployment `idle` was created


def _helm(cluster: Cluster, *args: str) -> None:
    helm = [str(cluster.bin_dir / "helm"), "--kubeconfig", cluster.kubeconfig]
    subprocess.run([*helm, *args], check=True, capture_output=True, text=True)


def deployment(name: str, ns: str, autoscaling: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "SLMDeployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "poolRef": {"name": POOL},
            "model": {"name": "qwen2.5-0.5b-instruct", "maxConcurrentSequences": 2},
            "replicas": 1,
            "qos": "Guaranteed",
            "autoscaling": autoscaling,
        },
    }


def route(name: str, ns: str, dep: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "SLMRoute",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"model": name, "backends": [{"name": "slm", "slmDeploymentRef": {"name": dep}}], **spec},
    }


def _pool_absent(cluster: Cluster) -> bool:
    try:
        custom(cluster.api).get_cluster_custom_object(GROUP, VERSION, "gpupools", POOL)
    except client.exceptions.ApiException as exc:
        return exc.status == 404
    return False


def _gateway_pod_ip(cluster: Cluster) -> str:
    def running() -> str | None:
        pods = cluster.core.list_namespaced_pod(SYSTEM_NS, label_selector=GATEWAY_SELECTOR).items
        ips = [p.status.pod_ip for p in pods if p.status.phase == "Running" and p.status.pod_ip]
        return ips[0] if len(ips) == 1 else None

    return wait_for(running, 60, "the chart's one gateway pod Running with a kwok IP")


@pytest.fixture(scope="module")
def stack(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:  # long: set-up
    work = tmp_path_factory.mktemp("autoscale")
    cluster.kubectl("apply", "-f", str(REPO / "crds"))
    cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
    for name in ("gpu-operator", SYSTEM_NS):
        with contextlib.suppress(client.exceptions.ApiException):
            cluster.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    _helm(cluster, "upgrade", "--install", RELEASE, str(REPO / "charts" / "slm-operator"), "--namespace",
          SYSTEM_NS, "--set", "crds.enabled=false", "--set", "agent.enabled=false", "--set",
          "operator.replicas=1", "--set", "gateway.replicas=1")  # fmt: skip
    loops = EventLoopThread()
    loopback = random_loopback()
    dial = f"{KWOK_POD_CIDR}={loopback}"
    replicas = WatchedReplicas(cluster.core, loops, loopback)
    threading.Thread(target=replicas.run_forever, daemon=True).start()
    operator = Operator(
        kubeconfig=cluster.kubeconfig,
        log_dir=work,
        service_account="slm-slm-operator",
        cluster=cluster,
        extra_args=["--autoscale-interval", "1", "--gateway-selector", GATEWAY_SELECTOR, "--dial-map", dial],
    )
    llm = StandIn("llm")
    llm_port = free_port()
    llm_runner = loops.run(serve(llm, "127.0.0.1", llm_port))
    ns = f"as-{uuid.uuid4().hex[:6]}"
    gateway: GatewayProcess | None = None
    try:
        delete_quietly(custom(cluster.api).delete_cluster_custom_object, GROUP, VERSION, "gpupools", POOL)
        wait_for(lambda: _pool_absent(cluster), 60, f"GPUPool {POOL} gone")
        pool = {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "GPUPool", "metadata": {"name": POOL},
            "spec": {"nodeSelector": {"matchLabels": {"nvidia.com/gpu.product": "NVIDIA-L4"}},
                     "sharing": {"mechanisms": ["Exclusive"]}},
        }  # fmt: skip
        kubectl_apply(cluster, [pool])
        cluster.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
        wait_for(lambda: cluster.core.read_namespaced_service_account("default", ns), 90, f"{ns}/default SA")
        token, _ = grant_callers(cluster, ns)
        operator.start()
        twin = replicas.dial(_gateway_pod_ip(cluster))
        gateway = GatewayProcess(
            kubeconfig=cluster.token_kubeconfig(SYSTEM_NS, GATEWAY_SA, work / "gateway.kc"),
            dial_map=dial,
            store=f"sqlite:///{work / 'usage.db'}",
            work=work,
            port=GATEWAY_PORT,
            host=twin,
        )
        gateway.start()
        stack = Stack(cluster, gateway, operator, replicas, llm, f"http://127.0.0.1:{llm_port}/v1", ns, token)
        # the deployment that scales to zero starts its quiet time now, while the burst test runs
        idle = deployment("idle", ns, {"minReplicas": 0, "maxReplicas": 1, "stableWindow": "6s",
                                       "panicWindow": "2s", "scaleDownDelay": "0s",
                                       "scaleToZeroAfter": f"{SCALE_TO_ZERO_AFTER}s"})  # fmt: skip
        fallback = {"backend": "llm"}
        llm_backend = {"name": "llm", "external": {"url": stack.llm_url, "model": "gpt-4o-mini"}}
        idle_route = route("idle", ns, "idle", fallback=fallback, timeouts={"activation": "2m"})
        idle_route["spec"]["backends"].append(llm_backend)
        kubectl_apply(cluster, [idle, idle_route])
        stack.idle_created = time.monotonic()
        yield stack
    finally:
        if gateway is not None:
            gateway.stop()
            print("----- gateway log -----\n" + gateway.log.read_text(errors="replace")[-20000:])
        print(operator.logs()[-20000:])
        replicas.close()
        with contextlib.suppress(Exception):
            loops.run(llm_runner.cleanup())
        loops.close()
        with contextlib.suppress(client.exceptions.ApiException):
            cluster.delete_pods(ns)
            cluster.core.delete_namespace(ns, grace_period_seconds=0)
        delete_quietly(custom(cluster.api).delete_cluster_custom_object, GROUP, VERSION, "gpupools", POOL)
        with contextlib.suppress(AssertionError):  # the operator's finalizer frees the nodes
            wait_for(lambda: _pool_absent(cluster), 60, f"GPUPool {POOL} deleted (its finalizer ran)")
        operator.stop()
        subprocess.run(
            [str(cluster.bin_dir / "helm"), "--kubeconfig", cluster.kubeconfig, "uninstall", RELEASE,
             "--namespace", SYSTEM_NS], capture_output=True,
        )  # fmt: skip


# ------------------------------------------------------------------------------------------ helpers


def bound_pods(stack: Stack, dep: str) -> list[client.V1Pod]:
    """The deployment's replica pods not being deleted, each bound to a node by the scheduler."""
    pods = stack.cluster.core.list_namespaced_pod(stack.ns, label_selector=f"slm.io/deployment={dep}").items
    return [p for p in pods if not p.metadata.deletion_timestamp]


def desired(stack: Stack, dep: str) -> int | None:
    auto = (get_dep(stack.cluster.api, stack.ns, dep).get("status") or {}).get("autoscaling") or {}
    value = auto.get("desiredReplicas")
    return int(value) if value is not None else None


def ready_endpoints(stack: Stack, route_name: str) -> float | None:
    """What the gateway's routing table holds: ready endpoints of the route's backend ``slm``."""
    with urllib.request.urlopen(stack.gateway.url + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    for family in text_string_to_metric_families(text):
        if family.name == "slm_gateway_backend_ready_endpoints":
            for sample in family.samples:
                if sample.labels == {"route": f"{stack.ns}/{route_name}", "backend": "slm"}:
                    return float(sample.value)
    return None


def scaled_events(stack: Stack, dep: str) -> list[str]:
    events = stack.cluster.core.list_namespaced_event(
        stack.ns, field_selector=f"involvedObject.name={dep},reason=Scaled"
    ).items
    return [e.message for e in sorted(events, key=lambda e: e.metadata.creation_timestamp)]


@dataclass
class Watcher:
    """Samples an SLMDeployment every 0.3 s: its spec.replicas and generation (the operator never writes them),
    its Argo CD health (deploy/argocd's health.lua in a real Lua interpreter)."""

    stack: Stack
    dep: str
    #: (spec.replicas, generation, health, its message)
    samples: list[tuple[int, int, str, str]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def __enter__(self) -> Watcher:
        def loop() -> None:
            while not self.stop.wait(0.3):
                with contextlib.suppress(client.exceptions.ApiException):
                    obj = get_dep(self.stack.cluster.api, self.stack.ns, self.dep)
                    h = health("SLMDeployment", obj)
                    self.samples.append(
                        (obj["spec"]["replicas"], obj["metadata"]["generation"], h["status"], h["message"])
                    )

        self.thread = threading.Thread(target=loop, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self.stop.set()
        assert self.thread is not None
        self.thread.join(10)

    def healths(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for _, _, h, _ in self.samples:
            out[h] = out.get(h, 0) + 1
        return out


# ------------------------------------------------------------------------------------------ scenarios


def test_a_burst_scales_a_deployment_up_and_back_down_without_touching_spec_replicas(stack: Stack) -> None:
    ns = stack.ns
    burst = deployment("burst", ns, {"minReplicas": 1, "maxReplicas": 3, "target": 2, "stableWindow": "6s",
                                     "panicWindow": "2s", "scaleDownDelay": "5s"})  # fmt: skip
    kubectl_apply(stack.cluster, [burst, route("burst", ns, "burst")])
    wait_served(stack.replicas, stack.cluster, ns, "burst", 1, CONVERGE)
    # the gateway answers 502 at once while its table has no ready endpoint (minReplicas 1: nothing to wake):
    # the burst starts once the gateway has seen the replica's EndpointSlice, as an agent's first call would
    wait_for(lambda: ready_endpoints(stack, "burst") == 1, 30, "the gateway sees burst's ready replica")
    generation = get_dep(stack.cluster.api, ns, "burst")["metadata"]["generation"]
    stack.replicas.behave(ns, "burst", Behaviour(delay=0.5))  # each call keeps a slot half a second
    stop = threading.Event()
    answers: list[Answer] = []

    def caller() -> None:
        while not stop.is_set():
            answers.append(chat(stack.gateway.url, "burst", token=stack.token, timeout=60))

    with Watcher(stack, "burst") as watcher, ThreadPoolExecutor(12) as pool:
        started = time.monotonic()
        callers = [pool.submit(caller) for _ in range(12)]  # 12 calls at once, target 2 per replica
        try:
            wait_for(lambda: desired(stack, "burst") == 3, 60, "the autoscaler asks for 3 replicas")
            wait_served(stack.replicas, stack.cluster, ns, "burst", 3, CONVERGE)
            up = time.monotonic() - started
            wait_for(
                lambda: len({a.text for a in answers[-30:] if a.status == 200}) == 3,
                30,
                "the three replicas answer calls",
            )
        finally:
            stop.set()
            for c in callers:
                c.result(90)
        assert all(p.spec.node_name for p in bound_pods(stack, "burst")), "bound by the scheduler"
        assert {p.spec.node_name for p in bound_pods(stack, "burst")} <= {"gpu-l4-0", "gpu-l4-1"}
        stopped = time.monotonic()
        wait_for(lambda: desired(stack, "burst") == 1, 90, "back to 1 replica once the load stopped")
        wait_for(lambda: len(bound_pods(stack, "burst")) == 1, 60, "the two extra replica pods deleted")
        down = time.monotonic() - stopped
        wait_for(lambda: watcher.samples and watcher.samples[-1][2] == "Healthy", 30, "Healthy at 1 replica")
    failed = [(a.status, a.body[:300]) for a in answers if a.status != 200]
    assert not failed, f"{len(failed)} of {len(answers)} calls of the burst failed: {failed[:3]}"
    assert {(r, g) for r, g, _, _ in watcher.samples} == {(1, generation)}, "spec.replicas is never changed"
    healths = watcher.healths()
    assert set(healths) == {"Healthy"}, f"Argo CD health stays Healthy through the burst: {healths}"
    messages = scaled_events(stack, "burst")
    assert any(m.startswith("1 -> ") for m in messages), messages
    assert any(" -> 1 replicas" in m for m in messages), messages
    print(f"burst: 1 -> 3 replicas Ready in {up:.1f} s; back to 1 in {down:.1f} s after the load stopped; "
          f"health samples {healths}")  # fmt: skip


def test_a_call_at_zero_replicas_is_held_until_a_replica_answers_it(stack: Stack) -> None:
    ns = stack.ns
    with Watcher(stack, "idle") as watcher:
        wait_for(
            lambda: desired(stack, "idle") == 0 and not bound_pods(stack, "idle"),
            SCALE_TO_ZERO_AFTER + 90,
            f"the idle deployment scaled to zero after {SCALE_TO_ZERO_AFTER} s without a call",
        )
        zero_after = time.monotonic() - stack.idle_created
        # the last pod gone (its stand-in stops when its deletion starts) and the gateway's table without it
        wait_for(lambda: not stack.cluster.core.list_namespaced_pod(ns, label_selector="slm.io/deployment=idle").items,
                 60, "the idle deployment's pod deleted")  # fmt: skip
        wait_for(lambda: ready_endpoints(stack, "idle") == 0, 30, "the gateway sees no ready replica of idle")
        wait_for(lambda: watcher.samples and watcher.samples[-1][2] == "Healthy", 30, "Healthy at zero")
        before = get_dep(stack.cluster.api, ns, "idle")
        started = time.monotonic()
        answer = chat(stack.gateway.url, "idle", token=stack.token, timeout=150)
        waited = time.monotonic() - started
    assert answer.status == 200, answer.body
    assert answer.headers["x-slm-backend"] == "slm" and "x-slm-fallback" not in answer.headers
    pods = bound_pods(stack, "idle")
    assert len(pods) == 1 and answer.text == f"hello from {pods[0].metadata.name}", "the SLM's answer"
    assert not stack.llm.requests, "the fallback was not used"
    after = get_dep(stack.cluster.api, ns, "idle")
    assert ACTIVATION_ANNOTATION in after["metadata"]["annotations"], "the gateway told the operator"
    assert after["metadata"]["generation"] == before["metadata"]["generation"]
    assert after["spec"]["replicas"] == 1
    assert desired(stack, "idle") == 1
    messages = scaled_events(stack, "idle")
    assert any(m.startswith("1 -> 0 replicas") for m in messages), messages
    assert any("a call waits at zero replicas" in m for m in messages), messages
    assert set(watcher.healths()) == {"Healthy"}, f"Healthy at zero and while waking: {watcher.healths()}"
    print(f"idle: zero {zero_after:.1f} s after creation; the held call answered by a new replica in "
          f"{waited:.1f} s")  # fmt: skip
