"""The autoscaler's shell (slm_operator.controllers.autoscaler) against the in-memory API server: it reads the
gateway's own /metrics text, writes status.autoscaling as its own field manager, posts Scaled Events, wakes the
pool, and keeps its status fields when the planner writes the rest of the status."""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from fake_kube import FakeKube
from slm_operator.api.v1alpha1 import SLMDeployment, SLMDeploymentStatus
from slm_operator.controllers.autoscaler import Autoscaler, gateway_urls, parse_gateway_metrics
from slm_operator.controllers.shell import strip
from slm_operator.gateway.metrics import GatewayMetrics
from slm_operator.metrics import OperatorMetrics
from slm_operator.routing.endpoints import parse_dial_map

NS = "team"


def deployment(autoscaling: dict[str, Any] | None, replicas: int = 1, ready: int = 1) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "poolRef": {"name": "h100"},
        "model": {"name": "qwen2.5-3b-instruct", "maxConcurrentSequences": 4},
        "replicas": replicas,
    }
    if autoscaling is not None:
        spec["autoscaling"] = autoscaling
    return {
        "apiVersion": "slm.io/v1alpha1",
        "kind": "SLMDeployment",
        "metadata": {"name": "qwen", "namespace": NS},
        "spec": spec,
        "status": {"replicas": ready, "readyReplicas": ready},
    }


ROUTE = {
    "apiVersion": "slm.io/v1alpha1",
    "kind": "SLMRoute",
    "metadata": {"name": "chat", "namespace": NS},
    "spec": {"model": "chat", "backends": [{"name": "small", "slmDeploymentRef": {"name": "qwen"}}]},
}


def gateway_pod(name: str, ip: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "slm-system",
            "labels": {"app.kubernetes.io/component": "gateway"},
        },
        "spec": {"containers": [{"name": "gateway", "ports": [{"name": "http", "containerPort": 8443}]}]},
        "status": {"phase": "Running", "podIP": ip},
    }


def gateway_text(in_flight: int, queued: int) -> str:
    """What a gateway replica really serves: GatewayMetrics over a dispatcher with one backend's load."""
    key = f"{NS}/chat/small"
    dispatcher = SimpleNamespace(keys=[key], busy={key: in_flight}, queued=lambda k: queued)
    m = GatewayMetrics(CollectorRegistry())
    m.load_from(dispatcher)
    return generate_latest(m.registry).decode()


class Clock:
    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        return self.t


def setup(
    autoscaling: dict[str, Any] | None, loads: dict[str, tuple[int, int]], ready: int = 1
) -> tuple[FakeKube, Autoscaler, list[str], Clock, OperatorMetrics]:
    kube = FakeKube(
        deployment(autoscaling, ready=ready),
        ROUTE,
        gateway_pod("gw-a", "10.0.0.1"),
        gateway_pod("gw-b", "10.0.0.2"),
    )
    woken: list[str] = []
    clock = Clock()

    async def fetch(url: str) -> str:
        if url not in loads:
            raise ConnectionRefusedError(url)
        return gateway_text(*loads[url])

    metrics = OperatorMetrics(CollectorRegistry())
    scaler = Autoscaler(
        kube.as_kube(),
        "slm-system",
        interval=2.0,
        on_change=woken.append,
        clock=clock,
        fetch=fetch,
        metrics=metrics,
    )
    return kube, scaler, woken, clock, metrics


A, B = "http://10.0.0.1:8443/metrics", "http://10.0.0.2:8443/metrics"


def test_the_gateways_own_metrics_parse_into_load_per_route_backend() -> None:
    assert parse_gateway_metrics(gateway_text(3, 2)) == {(f"{NS}/chat", "small"): (3.0, 2.0)}
    pods = [gateway_pod("a", "10.0.0.1"), {**gateway_pod("b", "10.0.0.2"), "status": {"phase": "Pending"}}]
    assert gateway_urls(pods) == [A]


def test_a_dial_map_reads_gateway_pods_at_their_mapped_address() -> None:
    """``run --dial-map``: on a local cluster (kwok's fake pod IPs) the gateway answers on a loopback twin."""
    kube, scaler, _woken, _clock, _metrics = setup({"minReplicas": 1, "maxReplicas": 6}, {})
    twin = "http://127.0.2.1:8443/metrics"
    scaler.dial = parse_dial_map(["10.0.0.0/24=127.0.2.0/24"])
    read: list[str] = []

    async def fetch(url: str) -> str:
        read.append(url)
        return gateway_text(12, 0)

    asyncio.run(scaler.tick(fetch))
    assert sorted(read) == [twin, "http://127.0.2.2:8443/metrics"]
    assert kube.peek("SLMDeployment", "qwen", NS)["status"]["autoscaling"]["desiredReplicas"] > 1


def test_a_pass_reads_every_gateway_and_writes_the_decision_with_an_event() -> None:
    kube, scaler, woken, clock, metrics = setup({"minReplicas": 1, "maxReplicas": 6}, {A: (8, 4), B: (6, 2)})
    asyncio.run(scaler.tick())
    st = kube.peek("SLMDeployment", "qwen", NS)["status"]
    # 20 calls on 1 ready replica with target 4 (maxConcurrentSequences): a burst, capped at 4x ready per step
    assert st["autoscaling"]["desiredReplicas"] == 4
    assert st["autoscaling"]["reason"] == "ScaledUp" and st["autoscaling"]["panic"] is True
    assert st["autoscaling"]["message"].startswith(
        "1 -> 4 replicas (bounds 1-6): 20.0 calls in flight or queued on average over 1m"
    )
    assert st["readyReplicas"] == 1, "the planner's fields are left alone"
    assert kube.events == [
        {
            "involved": "qwen",
            "kind": "SLMDeployment",
            "type": "Normal",
            "reason": "Scaled",
            "message": st["autoscaling"]["message"],
        }
    ]
    assert woken == ["h100"], "the pool plans for the new count at once"
    assert metrics.autoscaler_desired.labels(NS, "qwen")._value.get() == 4
    assert metrics.autoscaler_decisions.labels(NS, "qwen", "up")._value.get() == 1
    dep = SLMDeployment.model_validate(strip(kube.peek("SLMDeployment", "qwen", NS)))
    assert dep.effective_replicas() == 4 and dep.spec.replicas == 1, "spec.replicas is never written"
    # the next pass with the same figures changes nothing and writes nothing
    writes = len(kube.writes)
    clock.t += 2
    asyncio.run(scaler.tick())
    assert kube.peek("SLMDeployment", "qwen", NS)["status"]["autoscaling"]["desiredReplicas"] >= 4
    assert len(kube.events) in (1, 2) and all(e["reason"] == "Scaled" for e in kube.events)
    assert len(kube.writes) - writes <= 1


def test_an_unreachable_gateway_is_counted_and_none_holds_the_decision() -> None:
    kube, scaler, woken, _, metrics = setup({"minReplicas": 1, "maxReplicas": 6}, {})
    asyncio.run(scaler.tick())
    st = kube.peek("SLMDeployment", "qwen", NS)["status"]["autoscaling"]
    assert (st["desiredReplicas"], st["reason"]) == (1, "NoMetrics")
    assert st["message"] == "no load figures from the gateway: keeping 1 replicas"
    assert metrics.autoscaler_scrape_errors._value.get() == 2
    assert kube.events == [] and woken == []


def test_the_planners_status_write_keeps_the_autoscalers_fields() -> None:
    from slm_operator.controllers.pools import PoolReconciler
    from slm_operator.render import OperatorConfig

    kube, scaler, _, _, _ = setup({"minReplicas": 1, "maxReplicas": 6}, {A: (8, 0)})
    asyncio.run(scaler.tick())
    dep = SLMDeployment.model_validate(strip(kube.peek("SLMDeployment", "qwen", NS)))
    planner_status = SLMDeploymentStatus(
        replicas=2, ready_replicas=2, desired_replicas=dep.effective_replicas()
    )
    PoolReconciler(kube.as_kube(), OperatorConfig())._write_status(dep, planner_status)
    st = kube.peek("SLMDeployment", "qwen", NS)["status"]
    assert st["readyReplicas"] == 2 and st["desiredReplicas"] == 2
    assert st["autoscaling"]["desiredReplicas"] == 2 and st["autoscaling"]["reason"] == "ScaledUp"


def test_activation_scales_a_deployment_at_zero_to_one_at_once() -> None:
    kube, scaler, woken, clock, _ = setup(
        {"minReplicas": 0, "maxReplicas": 3}, {A: (0, 0), B: (0, 0)}, ready=0
    )
    obj = kube.peek("SLMDeployment", "qwen", NS)
    obj["spec"]["replicas"] = 0
    asyncio.run(scaler.tick())
    assert kube.peek("SLMDeployment", "qwen", NS)["status"]["autoscaling"]["desiredReplicas"] == 0
    assert not scaler.request_activation(f"{NS}/qwen", "2020-01-01T00:00:00Z"), "an old request is history"
    assert scaler.request_activation(f"{NS}/qwen")
    clock.t += 0.5
    asyncio.run(scaler.tick())
    st = kube.peek("SLMDeployment", "qwen", NS)["status"]["autoscaling"]
    assert (st["desiredReplicas"], st["reason"]) == (1, "Activated")
    assert st["message"].startswith("0 -> 1 replicas: a call waits at zero replicas")
    assert kube.events[-1]["reason"] == "Scaled" and woken == ["h100"]


def test_an_activation_wakes_the_running_loop_without_waiting_for_the_next_poll() -> None:
    """The gateway's request comes in on the watch's thread; the loop (here polling once an hour) decides at once."""
    kube, scaler, _woken, _clock, _ = setup({"minReplicas": 0, "maxReplicas": 3}, {A: (0, 0)}, ready=0)
    kube.peek("SLMDeployment", "qwen", NS)["spec"]["replicas"] = 0
    scaler.interval = 3600.0

    def autoscaling() -> dict[str, Any]:
        return dict(kube.peek("SLMDeployment", "qwen", NS).get("status", {}).get("autoscaling") or {})

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.create_task(scaler.run(stop))
        while autoscaling().get("desiredReplicas") != 0:  # the first pass
            await asyncio.sleep(0.01)
        threading.Thread(target=scaler.request_activation, args=(f"{NS}/qwen",)).start()
        async with asyncio.timeout(30):  # a generous bound; without the wake-up it would take an hour
            while autoscaling().get("desiredReplicas") != 1:
                await asyncio.sleep(0.01)
        assert autoscaling()["reason"] == "Activated"
        stop.set()
        await loop

    asyncio.run(main())


def test_the_deployment_watch_hands_the_gateways_activation_to_the_autoscaler() -> None:
    from slm_operator.controllers.context import OperatorContext
    from slm_operator.controllers.handlers import deployment_event

    calls: list[tuple[str, str | None]] = []
    ctx = OperatorContext(kube=FakeKube().as_kube(), cfg=None, pools=None, finetune=None)  # type: ignore[arg-type]
    ctx.autoscaler = SimpleNamespace(request_activation=lambda k, t: calls.append((k, t)))  # type: ignore[assignment]
    ctx.triggers["h100"] = __import__("threading").Event()
    body = deployment({"minReplicas": 0, "maxReplicas": 2}, replicas=0, ready=0)
    body["metadata"]["generation"] = 1
    deployment_event(ctx, "ADDED", body)
    assert calls == []
    body["metadata"]["annotations"] = {"slm.io/activation-requested": "2030-01-01T00:00:00Z"}
    deployment_event(ctx, "MODIFIED", body)
    assert calls == [(f"{NS}/qwen", "2030-01-01T00:00:00Z")]
    deployment_event(ctx, "MODIFIED", body)
    assert len(calls) == 1, "the same request once"


def test_removing_autoscaling_gives_its_status_back_and_plans_for_spec_replicas() -> None:
    kube, scaler, woken, _, _ = setup({"minReplicas": 1, "maxReplicas": 6}, {A: (8, 0)})
    asyncio.run(scaler.tick())
    obj = kube.peek("SLMDeployment", "qwen", NS)
    del obj["spec"]["autoscaling"]
    woken.clear()
    asyncio.run(scaler.tick())
    st = kube.peek("SLMDeployment", "qwen", NS)["status"]
    assert "autoscaling" not in st and st["readyReplicas"] == 1
    assert woken == ["h100"]
    assert (
        SLMDeployment.model_validate(strip(kube.peek("SLMDeployment", "qwen", NS))).effective_replicas() == 1
    )
