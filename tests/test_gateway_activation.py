"""Scale from zero at the gateway: a call for an SLMDeployment at zero replicas that autoscales from zero is held
until a replica is Ready (the EndpointSlice watch shows it), the operator is told once with the activation
annotation however many calls wait, and after ``timeouts.activation`` the caller gets the route's fallback or a
503 with ``Retry-After``. In-cluster mode without a cluster (watch events fed by hand, as in
tests/test_gateway_cluster.py); the pure decisions at the end."""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer
from hypothesis import given
from hypothesis import strategies as st

from e2e.standin import StandIn
from slm_operator.gateway.activator import Activator
from slm_operator.gateway.cluster import ClusterState
from slm_operator.gateway.kube_auth import KubeAuth
from slm_operator.gateway.server import Gateway, GatewayOptions
from slm_operator.routing.activation import (
    ACTIVATION_REQUEST_SECONDS,
    holds,
    released,
    request_due,
    unactivated,
)
from slm_operator.routing.table import Backend, BackendKind, Endpoint, RouteTable
from tests.test_gateway_cluster import KEY, FakeApi, FakeReviewer, deployment, endpoint_slice, route

NS = "agents"
HELD = 'slm_gateway_queued{backend="slm",route="agents/invoices"}'


class ActivationApi(FakeApi):
    """FakeApi that also records the activation patches (namespace, name, time)."""

    def __init__(self) -> None:
        super().__init__()
        self.activations: list[tuple[str, str, str]] = []

    def request_activation(self, namespace: str, name: str, when: str) -> None:
        with self.lock:
            self.activations.append((namespace, name, when))


def autoscaled(min_replicas: int = 0) -> dict[str, Any]:
    dep = deployment()
    dep["spec"]["autoscaling"] = {"minReplicas": min_replicas, "maxReplicas": 2}
    return dep


Ctx = dict[str, Any]


def run(
    test: Callable[[ClusterState, ActivationApi, Ctx], Awaitable[None]],
    routes: list[dict[str, Any]] | None = None,
    dep: dict[str, Any] | None = None,
) -> None:
    """The in-cluster gateway with the route agents/invoices over the SLMDeployment invoice-extractor, which has no
    endpoint yet; ``ctx["ready"]()`` publishes a ready replica (the stand-in ``extractor``) as the watch would."""

    async def main() -> None:
        extractor, llm = StandIn("extractor"), StandIn("llm")
        servers = [TestServer(s.app(), host="127.0.0.1") for s in (extractor, llm)]
        for s in servers:
            await s.start_server()
        api = ActivationApi()
        gateway = Gateway(RouteTable(), auth=KubeAuth(FakeReviewer()), options=GatewayOptions(seed=1))
        gateway.activator = Activator(api.request_activation)
        state = ClusterState(gateway, api)
        server = TestServer(gateway.app(), host="127.0.0.1")
        await server.start_server()
        state.handle("slmroutes", "SYNC", routes or [route()])
        state.handle("slmdeployments", "SYNC", [dep or autoscaled()])
        state.handle("finetunejobs", "SYNC", [])
        state.handle("endpointslices", "SYNC", [])
        await settle(state)

        def ready() -> None:
            slice_ = endpoint_slice("invoice-extractor", NS, servers[0].port, ("127.0.0.1", True))
            state.handle("endpointslices", "ADDED", slice_)

        ctx = {
            "url": str(server.make_url("/v1")),
            "llm_url": str(servers[1].make_url("/v1")),
            "extractor": extractor,
            "llm": llm,
            "ready": ready,
        }
        try:
            await test(state, api, ctx)
        finally:
            await server.close()
            for s in servers:
                await s.close()

    asyncio.run(main())


async def settle(state: ClusterState) -> None:
    state.rebuilt.clear()
    await asyncio.wait_for(state.rebuilt.wait(), 5)


async def chat(url: str) -> tuple[int, dict[str, str], dict[str, Any]]:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    async with (
        aiohttp.ClientSession() as s,
        s.post(url + "/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}) as r,
    ):
        return r.status, dict(r.headers), json.loads(await r.read())


async def metrics(url: str) -> str:
    async with aiohttp.ClientSession() as s, s.get(url.removesuffix("/v1") + "/metrics") as r:
        return await r.text()


async def until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 5) -> None:
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.02)


# ------------------------------------------------------------------------------------------------ the caller


def test_held_calls_are_answered_by_the_first_replica_and_the_operator_is_told_once() -> None:
    async def test(state: ClusterState, api: ActivationApi, ctx: Ctx) -> None:
        calls = [asyncio.create_task(chat(ctx["url"])) for _ in range(5)]

        async def all_held() -> bool:
            return f"{HELD} 5.0" in await metrics(ctx["url"])

        await until(all_held, "the five calls held, counted as queued for the autoscaler")
        assert not any(c.done() for c in calls)
        assert [(ns, name) for ns, name, _ in api.activations] == [(NS, "invoice-extractor")]
        ctx["ready"]()  # the first replica is Ready: the EndpointSlice watch shows it
        answers = await asyncio.gather(*calls)
        for status, headers, body in answers:
            assert status == 200 and headers["x-slm-backend"] == "slm" and "x-slm-fallback" not in headers
            assert body["choices"][0]["message"]["content"]
        assert len(ctx["extractor"].requests) == 5
        assert f"{HELD} 0.0" in await metrics(ctx["url"])
        assert len(api.activations) == 1, "one activation request for all the held calls"

    run(test, routes=[route(timeouts={"activation": "30s"})])


def test_without_a_replica_in_time_the_caller_gets_503_with_retry_after() -> None:
    async def test(state: ClusterState, api: ActivationApi, ctx: Ctx) -> None:
        status, headers, body = await chat(ctx["url"])
        assert status == 503 and headers["Retry-After"] == "15"
        assert body["error"]["code"] == "scaled_to_zero"
        assert "scaled to zero" in body["error"]["message"] and "300ms" in body["error"]["message"]
        assert len(api.activations) == 1
        text = await metrics(ctx["url"])
        assert (
            'slm_gateway_activation_waits_total{backend="slm",outcome="timeout",route="agents/invoices"} 1.0'
            in text
        )

    run(test, routes=[route(timeouts={"activation": "300ms"})])


def test_without_a_replica_in_time_the_route_falls_back() -> None:
    async def test(state: ClusterState, api: ActivationApi, ctx: Ctx) -> None:
        status, headers, _body = await chat(ctx["url"])
        assert status == 200
        assert (headers["x-slm-backend"], headers["x-slm-fallback"]) == ("llm", "scaled_to_zero")
        assert len(ctx["llm"].requests) == 1 and not ctx["extractor"].requests

    async def main_routes(state: ClusterState, api: ActivationApi, ctx: Ctx) -> None:
        doc = route(
            backends=[
                {"name": "slm", "slmDeploymentRef": {"name": "invoice-extractor"}},
                {"name": "llm", "external": {"url": ctx["llm_url"], "model": "big-llm"}},
            ],
            fallback={"backend": "llm", "when": ["Timeout"]},
            timeouts={"activation": "300ms"},
            rv="2",
        )
        state.handle("slmroutes", "MODIFIED", doc)
        await settle(state)
        await test(state, api, ctx)

    run(main_routes)


def test_a_held_call_waits_for_a_ready_replica_whose_server_does_not_accept_yet() -> None:
    """The EndpointSlice can show a replica Ready before its server listens (a start-up race): the held call is
    tried again on it until it answers, instead of failing over to the fallback."""

    async def test(state: ClusterState, api: ActivationApi, ctx: Ctx) -> None:
        late = StandIn("late")
        port = free_port()
        call = asyncio.create_task(chat(ctx["url"]))
        await until(lambda: _held(ctx["url"], 1), "the call held")
        state.handle(
            "endpointslices", "ADDED", endpoint_slice("invoice-extractor", NS, port, ("127.0.0.1", True))
        )
        await asyncio.sleep(0.5)  # the gateway sees the replica and is refused meanwhile
        assert not call.done(), "the refused connection did not end the call"
        server = TestServer(late.app(), host="127.0.0.1", port=port)
        await server.start_server()
        try:
            status, headers, _body = await call
        finally:
            await server.close()
        assert status == 200 and headers["x-slm-backend"] == "slm" and "x-slm-fallback" not in headers
        assert len(late.requests) == 1 and not ctx["llm"].requests

    async def with_fallback(state: ClusterState, api: ActivationApi, ctx: Ctx) -> None:
        doc = route(
            backends=[
                {"name": "slm", "slmDeploymentRef": {"name": "invoice-extractor"}},
                {"name": "llm", "external": {"url": ctx["llm_url"], "model": "big-llm"}},
            ],
            fallback={"backend": "llm"},
            timeouts={"activation": "30s"},
            rv="2",
        )
        state.handle("slmroutes", "MODIFIED", doc)
        await settle(state)
        await test(state, api, ctx)

    run(with_fallback)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _held(url: str, n: int) -> bool:
    return f"{HELD} {float(n)}" in await metrics(url)


def test_a_deployment_that_does_not_scale_to_zero_fails_at_once() -> None:
    async def test(state: ClusterState, api: ActivationApi, ctx: Ctx) -> None:
        status, _headers, body = await chat(ctx["url"])
        assert status == 502 and body["error"]["code"] == "error"
        assert "no ready endpoint" in body["error"]["message"]
        assert api.activations == []

    run(test, routes=[route(timeouts={"activation": "10s"})], dep=autoscaled(min_replicas=1))


def test_held_calls_are_bounded_by_the_backends_queue() -> None:
    async def test(state: ClusterState, api: ActivationApi, ctx: Ctx) -> None:
        first = asyncio.create_task(chat(ctx["url"]))

        async def held() -> bool:
            return f"{HELD} 1.0" in await metrics(ctx["url"])

        await until(held, "one call held")
        status, headers, body = await chat(ctx["url"])  # maxQueue 1: no room to wait
        assert status == 503 and headers["Retry-After"] == "1" and body["error"]["code"] == "overload"
        ctx["ready"]()
        status, _headers, _body = await first
        assert status == 200

    backends = [{"name": "slm", "slmDeploymentRef": {"name": "invoice-extractor"}, "maxQueue": 1}]
    run(test, routes=[route(backends=backends, timeouts={"activation": "30s"})])


def test_a_held_call_the_caller_gives_up_leaves_the_queue() -> None:
    async def test(state: ClusterState, api: ActivationApi, ctx: Ctx) -> None:
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.5)) as s:
            try:
                async with s.post(
                    ctx["url"] + "/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}
                ) as r:
                    await r.read()
            except TimeoutError:
                pass

        async def gone() -> bool:
            return f"{HELD} 0.0" in await metrics(ctx["url"])

        await until(gone, "the abandoned call no longer counted")

    run(test, routes=[route(timeouts={"activation": "30s"})])


# ------------------------------------------------------------------------------------------------ pure decisions


def _backend(scales: bool, ready: bool | None, problem: str | None = None) -> Backend:
    endpoints = () if ready is None else (Endpoint("http://10.0.0.1:8000/v1", ready=ready),)
    return Backend(
        "slm",
        BackendKind.SLM_DEPLOYMENT,
        "m",
        endpoints,
        scales_from_zero=scales,
        problem_reason=problem,
    )


def test_only_a_deployment_that_scales_from_zero_and_has_no_ready_replica_holds_calls() -> None:
    assert holds(_backend(True, None)) and holds(_backend(True, False))
    assert not holds(_backend(True, True))  # a ready replica: go
    assert not holds(_backend(False, None))  # may not be at zero on purpose: fail at once
    assert not holds(_backend(True, None, "BackendNotFound"))
    assert released(None) and released(_backend(True, True)) and not released(_backend(True, False))


@given(st.lists(st.floats(min_value=0, max_value=60, allow_nan=False), min_size=1, max_size=50).map(sorted))
def test_activation_requests_are_at_least_the_interval_apart(times: list[float]) -> None:
    last: float | None = None
    sent = []
    for t in times:
        if request_due(last, t):
            sent.append(t)
            last = t
    assert sent[0] == times[0]
    assert all(b - a >= ACTIVATION_REQUEST_SECONDS for a, b in itertools.pairwise(sent))
    # and none is skipped longer than needed: every call comes within the interval after a request
    assert all(any(0 <= t - s < ACTIVATION_REQUEST_SECONDS for s in sent) for t in times)


def test_the_answer_after_the_wait_says_what_happened_and_when_to_retry() -> None:
    answer = unactivated("agents/invoice-extractor", "2m")
    assert answer.status == 503 and int(answer.retry_after) > 0
    assert "agents/invoice-extractor" in answer.detail and "2m" in answer.detail
