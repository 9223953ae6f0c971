"""The in-cluster gateway without a cluster: watch events fed by hand, an in-memory API for Secrets and status
writes, a fake reviewer for TokenReview and SubjectAccessReview. The real API calls are in e2e."""

from __future__ import annotations

import asyncio
import base64
import copy
import ipaddress
import threading
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import generate_latest

from e2e.standin import StandIn
from slm_operator.api.v1alpha1 import RulePhase
from slm_operator.contract import ADAPTER_ANNOTATION
from slm_operator.events import Event
from slm_operator.gateway.cluster import ClusterState, compare_resource_versions
from slm_operator.gateway.kube import SecretUnreadable, TokenResult
from slm_operator.gateway.kube_auth import KubeAuth, TtlCache, service_account_namespace
from slm_operator.gateway.lease import LEASE_SECONDS, StatusLease, claim
from slm_operator.gateway.server import Gateway, GatewayOptions
from slm_operator.routing.endpoints import endpoints_by_service, parse_dial_map
from slm_operator.routing.table import Endpoint, RouteTable, hash_api_key

KEY = "sk-cluster-0123456789"
SA_TOKEN = "eyJhbGciOi.sa-token-of-invoicer"
OTHER_TOKEN = "eyJhbGciOi.sa-token-of-stranger"


def route(name: str = "invoices", ns: str = "agents", rv: str = "1", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "gpt-4o-mini",
        "backends": [{"name": "slm", "slmDeploymentRef": {"name": "invoice-extractor"}}],
        "apiKeySecretRefs": [{"name": "callers"}],
        **spec,
    }
    return {
        "apiVersion": "slm.io/v1alpha1",
        "kind": "SLMRoute",
        "metadata": {"name": name, "namespace": ns, "generation": 1, "resourceVersion": rv},
        "spec": body,
    }


def deployment(name: str = "invoice-extractor", ns: str = "agents") -> dict[str, Any]:
    return {
        "apiVersion": "slm.io/v1alpha1",
        "kind": "SLMDeployment",
        "metadata": {"name": name, "namespace": ns, "resourceVersion": "1"},
        "spec": {
            "poolRef": {"name": "h100"},
            "model": {"name": "qwen2.5-3b-instruct", "maxConcurrentSequences": 4},
        },
    }


def endpoint_slice(
    service: str, ns: str, port: int, *ips: tuple[str, bool], name: str | None = None
) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name or f"{service}-abcde",
            "namespace": ns,
            "labels": {"kubernetes.io/service-name": service},
        },
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": [{"addresses": [ip], "conditions": {"ready": ready}} for ip, ready in ips],
    }


class FakeApi:
    """Secrets by (namespace, name); a 403 for namespaces that did not grant the gateway; recorded status writes."""

    def __init__(self) -> None:
        self.secrets: dict[tuple[str, str], dict[str, Any]] = {
            ("agents", "callers"): {
                "data": {"team-a": base64.b64encode(f"sha256:{hash_api_key(KEY)}".encode()).decode()}
            },
        }
        self.forbidden_namespaces: set[str] = set()
        self.reads: list[tuple[str, str]] = []
        self.writes: list[tuple[str, str, dict[str, Any]]] = []
        self.events: list[Event] = []
        self.lock = threading.Lock()
        #: the resourceVersion the last status write gave the route, as the API server answers it (None: the
        #: write answers no version, and the gateway does not guard against older watch events)
        self.version: int | None = None

    def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        with self.lock:
            self.reads.append((namespace, name))
        if namespace in self.forbidden_namespaces:
            raise SecretUnreadable(f"the gateway may not read Secret {namespace}/{name}: grant it `get`")
        return copy.deepcopy(self.secrets.get((namespace, name)))

    def patch_route_status(self, namespace: str, name: str, status: dict[str, Any]) -> str | None:
        with self.lock:
            self.writes.append((namespace, name, status))
            if self.version is None:
                return None
            self.version += 1
            return str(self.version)

    def post_event(self, event: Event) -> None:
        with self.lock:
            self.events.append(event)


class FakeReviewer:
    def __init__(self) -> None:
        self.users = {
            SA_TOKEN: "system:serviceaccount:agents:invoicer",
            OTHER_TOKEN: "system:serviceaccount:other:stranger",
        }
        self.allowed = {("system:serviceaccount:agents:invoicer", "agents", "invoices")}
        self.token_reviews = 0
        self.access_reviews = 0

    def token_review(self, token: str) -> TokenResult:
        self.token_reviews += 1
        user = self.users.get(token)
        if user is None:
            return TokenResult(False, error="invalid bearer token")
        return TokenResult(True, user, "uid-1", ("system:serviceaccounts",))

    def access_review(self, user: str, uid: str, groups: tuple[str, ...], namespace: str, route: str) -> bool:
        self.access_reviews += 1
        return (user, namespace, route) in self.allowed


def run(test: Callable[[ClusterState, FakeApi, dict[str, Any]], Awaitable[None]]) -> None:
    async def main() -> None:
        extractor = StandIn("extractor")
        standin = TestServer(extractor.app(), host="127.0.0.1")
        await standin.start_server()
        api = FakeApi()
        reviewer = FakeReviewer()
        gateway = Gateway(RouteTable(), auth=KubeAuth(reviewer), options=GatewayOptions(seed=1))
        state = ClusterState(gateway, api, now=lambda: "2026-01-01T00:00:00+00:00")
        server = TestServer(gateway.app(), host="127.0.0.1")
        await server.start_server()
        ctx = {
            "url": str(server.make_url("/v1")),
            "port": standin.port,
            "reviewer": reviewer,
            "extractor": extractor,
        }
        try:
            await test(state, api, ctx)
        finally:
            await server.close()
            await standin.close()

    asyncio.run(main())


async def settle(state: ClusterState) -> None:
    state.rebuilt.clear()
    await asyncio.wait_for(state.rebuilt.wait(), 5)


def sync_all(
    state: ClusterState,
    port: int,
    routes: list[dict[str, Any]] | None = None,
    finetunejobs: list[dict[str, Any]] | None = None,
) -> None:
    state.handle("slmroutes", "SYNC", routes if routes is not None else [route()])
    state.handle("slmdeployments", "SYNC", [deployment(), deployment(ns="support")])
    state.handle("finetunejobs", "SYNC", finetunejobs or [])
    state.handle(
        "endpointslices",
        "SYNC",
        [
            endpoint_slice("invoice-extractor", "agents", port, ("127.0.0.1", True), ("10.9.9.9", False)),
            endpoint_slice("invoice-extractor", "support", port, ("127.0.0.2", True)),
        ],
    )


async def call(url: str, token: str, model: str = "gpt-4o-mini") -> tuple[int, dict[str, str]]:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    async with (
        aiohttp.ClientSession() as s,
        s.post(url + "/chat/completions", json=body, headers={"Authorization": f"Bearer {token}"}) as r,
    ):
        await r.read()
        return r.status, dict(r.headers)


# ------------------------------------------------------------------------------------------------ the table


def test_watched_objects_become_the_table_and_calls_reach_ready_replicas() -> None:
    async def test(state: ClusterState, api: FakeApi, ctx: dict[str, Any]) -> None:
        sync_all(state, ctx["port"])
        await settle(state)
        r = state.gateway.table.routes["agents/invoices"]
        slm = r.backends["slm"]
        assert slm.max_concurrency == 4  # from the SLMDeployment
        assert [(e.url, e.ready) for e in slm.endpoints] == [
            (f"http://10.9.9.9:{ctx['port']}/v1", False),
            (f"http://127.0.0.1:{ctx['port']}/v1", True),
        ]
        status, headers = await call(ctx["url"], KEY)
        assert status == 200 and headers["x-slm-backend"] == "slm"
        # only the Secret the route names was read, in the route's namespace
        assert api.reads == [("agents", "callers")]

    run(test)


def test_a_route_never_reaches_a_deployment_in_another_namespace() -> None:
    async def test(state: ClusterState, api: FakeApi, ctx: dict[str, Any]) -> None:
        sync_all(state, ctx["port"])
        state.handle("slmdeployments", "DELETED", deployment())
        state.handle(
            "endpointslices",
            "DELETED",
            endpoint_slice("invoice-extractor", "agents", ctx["port"], name="invoice-extractor-abcde"),
        )
        await settle(state)
        slm = state.gateway.table.routes["agents/invoices"].backends["slm"]
        assert slm.problem_reason == "BackendNotFound" and slm.endpoints == ()
        status, _ = await call(ctx["url"], KEY)
        assert status == 502  # no endpoint: the support namespace's replica, same name, is not used

    run(test)


def test_status_is_written_when_it_changes_and_only_then() -> None:
    async def test(state: ClusterState, api: FakeApi, ctx: dict[str, Any]) -> None:
        sync_all(state, ctx["port"])
        await settle(state)
        assert len(api.writes) == 1
        ns, name, status = api.writes[0]
        assert (ns, name, status["readyBackends"]) == ("agents", "invoices", "1/1")
        conds = {c["type"]: c for c in status["conditions"]}
        assert conds["Ready"]["status"] == "True" and conds["Accepted"]["observedGeneration"] == 1
        # the watch shows the written status back: nothing new to write
        state.handle("slmroutes", "MODIFIED", {**route(rv="2"), "status": status})
        await settle(state)
        assert len(api.writes) == 1
        # the ready replica goes away: Ready turns False
        state.handle(
            "endpointslices",
            "MODIFIED",
            endpoint_slice("invoice-extractor", "agents", ctx["port"], ("127.0.0.1", False)),
        )
        await settle(state)
        assert len(api.writes) == 2
        ready = {c["type"]: c for c in api.writes[-1][2]["conditions"]}["Ready"]
        assert (ready["status"], ready["reason"]) == ("False", "BackendsNotReady")

    run(test)


def test_no_status_is_written_before_every_watch_has_listed() -> None:
    async def test(state: ClusterState, api: FakeApi, ctx: dict[str, Any]) -> None:
        state.handle("slmroutes", "SYNC", [route()])
        await settle(state)
        assert api.writes == []  # the deployments are not listed yet: BackendNotFound would be a lie
        assert "agents/invoices" in state.gateway.table.routes

    run(test)


def test_an_unreadable_secret_is_reported_on_the_route() -> None:
    async def test(state: ClusterState, api: FakeApi, ctx: dict[str, Any]) -> None:
        api.forbidden_namespaces.add("agents")
        sync_all(state, ctx["port"])
        await settle(state)
        accepted = {c["type"]: c for c in api.writes[-1][2]["conditions"]}["Accepted"]
        assert accepted["status"] == "False" and accepted["reason"] == "SecretNotFound"
        assert "may not read Secret agents/callers" in accepted["message"]
        status, _ = await call(ctx["url"], KEY)
        assert status == 401  # the key cannot be known
        api.forbidden_namespaces.clear()
        assert await state.read_secrets({("agents", "callers")}, again=True)
        state.dirty()
        await settle(state)
        assert (await call(ctx["url"], KEY))[0] == 200

    run(test)


def test_a_revoked_key_stops_working_after_the_secret_is_read_again() -> None:
    async def test(state: ClusterState, api: FakeApi, ctx: dict[str, Any]) -> None:
        sync_all(state, ctx["port"])
        await settle(state)
        assert (await call(ctx["url"], KEY))[0] == 200
        api.secrets[("agents", "callers")] = {"data": {}}
        assert await state.read_secrets({("agents", "callers")}, again=True)
        state.dirty()
        await settle(state)
        assert (await call(ctx["url"], KEY))[0] == 401

    run(test)


def test_a_deleted_route_is_no_longer_served() -> None:
    async def test(state: ClusterState, api: FakeApi, ctx: dict[str, Any]) -> None:
        sync_all(state, ctx["port"])
        await settle(state)
        state.handle("slmroutes", "DELETED", route())
        await settle(state)
        assert (await call(ctx["url"], SA_TOKEN))[0] == 404

    run(test)


# ------------------------------------------------------------------------------------------------ tokens


def test_service_accounts_are_authorised_by_rbac_and_reviews_are_cached() -> None:
    async def test(state: ClusterState, api: FakeApi, ctx: dict[str, Any]) -> None:
        sync_all(state, ctx["port"])
        await settle(state)
        reviewer = ctx["reviewer"]
        results = await asyncio.gather(*(call(ctx["url"], SA_TOKEN) for _ in range(10)))
        assert {s for s, _ in results} == {200}
        assert (reviewer.token_reviews, reviewer.access_reviews) == (1, 1)  # one review for the burst
        assert (await call(ctx["url"], OTHER_TOKEN))[0] == 403  # a valid token without `use` on the route
        assert (await call(ctx["url"], "eyJ.forged"))[0] == 401
        assert (await call(ctx["url"], KEY))[0] == 200  # API keys still work, without any review
        assert reviewer.token_reviews == 3

    run(test)


def test_a_caller_prefers_the_route_of_its_own_namespace() -> None:
    async def test(state: ClusterState, api: FakeApi, ctx: dict[str, Any]) -> None:
        sync_all(state, ctx["port"], routes=[route(), route(ns="other")])
        await settle(state)
        reviewer = ctx["reviewer"]
        reviewer.allowed |= {
            ("system:serviceaccount:other:stranger", "other", "invoices"),
            ("system:serviceaccount:other:stranger", "agents", "invoices"),
        }
        status, headers = await call(ctx["url"], OTHER_TOKEN)
        # other/invoices has no replica (its SLMDeployment is not in its namespace): 502, but from its own route
        assert (status, headers["x-slm-route"]) == (502, "other/invoices")

    run(test)


def test_ttl_cache_expires_and_shares_one_computation() -> None:
    now = [0.0]

    async def main() -> None:
        cache: TtlCache[int] = TtlCache(lambda: now[0])
        calls = 0

        async def compute() -> int:
            nonlocal calls
            calls += 1
            await asyncio.sleep(0.01)
            return calls

        values = await asyncio.gather(*(cache.get("k", compute, lambda v: 10.0) for _ in range(5)))
        assert values == [1] * 5 and calls == 1
        now[0] = 9.0
        assert await cache.get("k", compute, lambda v: 10.0) == 1
        now[0] = 11.0
        assert await cache.get("k", compute, lambda v: 10.0) == 2

        async def broken() -> int:
            raise RuntimeError("API server away")

        with pytest.raises(RuntimeError):
            await cache.get("x", broken, lambda v: 1.0)
        assert await cache.get("x", compute, lambda v: 1.0) == 3  # a failure is not cached

    asyncio.run(main())


def test_service_account_namespace() -> None:
    assert service_account_namespace("system:serviceaccount:agents:bot") == "agents"
    assert service_account_namespace("jane@example.com") is None
    assert service_account_namespace("system:serviceaccount:agents") is None


# ------------------------------------------------------------------------------------------------ slices


def test_endpoint_slices_give_ready_replicas_on_the_http_port() -> None:
    slices = [
        endpoint_slice("a", "ns", 8000, ("10.0.0.1", True), ("10.0.0.2", False)),
        {
            **endpoint_slice("a", "ns", 8000, ("10.0.0.3", True), name="a-2"),
            "endpoints": [
                {"addresses": ["10.0.0.3"], "conditions": {"ready": True, "terminating": True}},
                {"addresses": ["fd00::4"]},  # no conditions: ready
                {"addresses": []},
            ],
        },
        {**endpoint_slice("b", "ns", 8000, ("10.0.0.5", True)), "ports": [{"name": "metrics", "port": 9000}]},
        {"metadata": {"name": "x", "namespace": "ns"}, "ports": [], "endpoints": []},
    ]
    got = endpoints_by_service(slices)
    assert got == {
        ("ns", "a"): [
            Endpoint("http://10.0.0.1:8000/v1", True),
            Endpoint("http://10.0.0.2:8000/v1", False),
            Endpoint("http://10.0.0.3:8000/v1", False),
            Endpoint("http://[fd00::4]:8000/v1", True),
        ]
    }


@given(st.integers(0, 2**32 - 1), st.integers(8, 32))
def test_a_dial_map_keeps_the_offset_inside_the_network_and_leaves_the_rest(ip: int, prefix: int) -> None:
    dial = parse_dial_map([f"10.0.0.0/{prefix}=127.0.0.0/{prefix}"])
    address = ipaddress.IPv4Address(ip)
    src = ipaddress.ip_network(f"10.0.0.0/{prefix}")
    got = ipaddress.IPv4Address(dial.dial(str(address)))
    if address in src:
        assert got in ipaddress.ip_network(f"127.0.0.0/{prefix}") and int(got) - int(
            ipaddress.IPv4Address("127.0.0.0")
        ) == int(address) - int(src.network_address)
    else:
        assert got == address
    assert dial.dial("fd00::1") == "fd00::1" and dial.dial("not-an-ip") == "not-an-ip"


# ------------------------------------------------------------------------------------------------ promotion


def _rule_status(api: FakeApi) -> dict[str, Any]:
    (rule,) = api.writes[-1][2]["rules"]
    return dict(rule)


async def _counted(state: ClusterState, phase: RulePhase, compared: int = 0, served: int = 0) -> None:
    """Wait until the shadow copies of the calls made are compared (they run off the calls' path)."""
    for _ in range(200):
        c = state.gateway.tallies.counts(
            state.gateway.table.routes["agents/invoices"], {"invoices": phase}
        ).get("invoices")
        if c is not None and c.compared >= compared and c.served >= served:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"not counted: {state.gateway.tallies.tallies}")


def _promoted_route(llm_url: str, **promote: Any) -> dict[str, Any]:
    """The route of the promotion tests: rule invoices answered by the LLM, the SLM in shadow with promote."""
    backends = [
        {"name": "slm", "slmDeploymentRef": {"name": "invoice-extractor"}},
        {"name": "llm", "external": {"url": llm_url, "model": "big-llm"}},
    ]
    rule = {
        "name": "invoices",
        "backend": "llm",
        "shadow": {"backends": ["slm"], "percent": 100},
        "promote": {"backend": "slm", "minSamples": 5, "maxFallbackPercent": 20, **promote},
    }
    return route(backends=backends, rules=[rule], fallback={"backend": "llm", "when": ["Error"]})


async def _llm(ctx: dict[str, Any]) -> tuple[StandIn, TestServer]:
    """A stand-in LLM that answers as the SLM does (their answers agree)."""
    llm = StandIn("llm")
    server = TestServer(llm.app(), host="127.0.0.1")
    await server.start_server()
    ctx["extractor"].behaviour.content = llm.behaviour.content = '{"total": 12.5, "currency": "EUR"}'
    return llm, server


async def _agreeing_calls(state: ClusterState, ctx: dict[str, Any], n: int = 5) -> None:
    """``n`` calls of the rule in shadow, each answered by the LLM and compared with the SLM's copy."""
    for _ in range(n):
        status, headers = await call(ctx["url"], KEY)
        assert status == 200 and headers["x-slm-backend"] == "llm"
    await _counted(state, RulePhase.SHADOW, compared=n)


def test_a_rule_is_promoted_when_its_shadow_agrees_and_sent_back_when_it_falls_back() -> None:
    """S6: the status writer promotes the shadow SLM once enough of its answers agree with the LLM's, every
    call then goes to the SLM (falling back to the LLM), and too many fallbacks send it back; each change of
    phase is written into status.rules and announced with an Event on the SLMRoute. After the demotion the
    rule is not promoted again before its back-off is over, however well the SLM agrees."""

    clock = ["2026-01-01T00:00:00Z"]

    async def test(state: ClusterState, api: FakeApi, ctx: dict[str, Any]) -> None:
        state.now = lambda: clock[0]
        _llm_standin, llm_server = await _llm(ctx)
        slm: StandIn = ctx["extractor"]
        doc = _promoted_route(str(llm_server.make_url("/v1")))
        try:
            sync_all(state, ctx["port"], [doc])
            await settle(state)
            assert _rule_status(api)["phase"] == "Shadow" and _rule_status(api)["backend"] == "llm"
            for _ in range(5):
                status, headers = await call(ctx["url"], KEY)
                assert status == 200 and headers["x-slm-backend"] == "llm"
            await _counted(state, RulePhase.SHADOW, compared=5)
            await state.promote()
            rule_status = _rule_status(api)
            assert (rule_status["phase"], rule_status["backend"], rule_status["samples"]) == (
                "Serving",
                "slm",
                0,
            )
            (event,) = api.events
            assert (event.kind, event.namespace, event.name) == ("SLMRoute", "agents", "invoices")
            assert (event.type, event.reason) == ("Normal", "Promoted")
            assert "5 of 5 shadow answers of slm agreed (100 %" in event.message
            await settle(state)  # the table routes by the written phase
            assert 'slm_gateway_rule_phase{phase="Serving",route="agents/invoices",rule="invoices"} 1.0' in (
                generate_latest(state.gateway.metrics.registry).decode()
            )
            status, headers = await call(ctx["url"], KEY)
            assert status == 200 and headers["x-slm-backend"] == "slm" and "x-slm-fallback" not in headers
            await state.promote()
            assert len(api.events) == 1 and _rule_status(api)["phase"] == "Serving"
            slm.behaviour.status = 500  # the promoted SLM fails: its calls fall back to the LLM
            for _ in range(4):
                status, headers = await call(ctx["url"], KEY)
                assert headers["x-slm-backend"] == "llm" and headers["x-slm-fallback"] == "error"
            await _counted(state, RulePhase.SERVING, served=5)
            await state.promote()
            rule_status = _rule_status(api)
            assert (rule_status["phase"], rule_status["backend"]) == ("Shadow", "llm")
            assert [(e.type, e.reason) for e in api.events] == [
                ("Normal", "Promoted"),
                ("Warning", "Demoted"),
            ]
            assert "4 of 5 calls fell back to llm (80 %" in api.events[-1].message
            assert "not promoted again before 2026-01-01T00:10:00Z (back-off 10m after 1 demotion)" in (
                api.events[-1].message
            )
            assert (rule_status["demotions"], rule_status["retryAfter"]) == (1, "2026-01-01T00:10:00Z")
            await settle(state)
            # the SLM recovers and agrees again: still not promoted before retryAfter
            slm.behaviour.status = 200
            status, headers = await call(ctx["url"], KEY)
            assert status == 200 and headers["x-slm-backend"] == "llm" and "x-slm-fallback" not in headers
            await _agreeing_calls(state, ctx, 4)
            await _counted(state, RulePhase.SHADOW, compared=5)
            clock[0] = "2026-01-01T00:09:59Z"
            await state.promote()
            rule_status = _rule_status(api)
            assert (rule_status["phase"], rule_status["samples"]) == ("Shadow", 5) and len(api.events) == 2
            assert "not promoted before 2026-01-01T00:10:00Z" in rule_status["message"]
            clock[0] = "2026-01-01T00:10:00Z"
            await state.promote()
            assert _rule_status(api)["phase"] == "Serving" and api.events[-1].reason == "Promoted"
        finally:
            await llm_server.close()

    run(test)


def test_a_stale_watch_event_does_not_undo_a_promotion() -> None:
    """After the status writer promotes a rule, the watch may still deliver older versions of the route (here
    the status it wrote before the promotion, Shadow; or a list read before the write). They must not send the
    calls back to the LLM, nor let the next pass write Shadow back without a Demoted Event."""

    async def test(state: ClusterState, api: FakeApi, ctx: dict[str, Any]) -> None:
        api.version = 10  # the API server answers each status write with the route's new resourceVersion
        _llm_standin, llm_server = await _llm(ctx)
        doc = _promoted_route(str(llm_server.make_url("/v1")))
        try:
            sync_all(state, ctx["port"], [doc])
            await settle(state)
            shadow = api.writes[-1][2]  # written as version 11
            await _agreeing_calls(state, ctx)
            await state.promote()  # written as version 12
            serving = api.writes[-1][2]
            assert _rule_status(api)["phase"] == "Serving" and [e.reason for e in api.events] == ["Promoted"]
            await settle(state)

            def version(rv: str, status: dict[str, Any]) -> dict[str, Any]:
                return {**doc, "metadata": {**doc["metadata"], "resourceVersion": rv}, "status": status}

            async def still_serving() -> None:
                state.dirty()
                await settle(state)
                await state.promote()
                assert state.gateway.table.routes["agents/invoices"].phases == {"invoices": RulePhase.SERVING}
                status, headers = await call(ctx["url"], KEY)
                assert status == 200 and headers["x-slm-backend"] == "slm"
                assert all(rule["phase"] == "Serving" for rule in api.writes[-1][2]["rules"])
                assert [e.reason for e in api.events] == ["Promoted"]

            state.handle("slmroutes", "MODIFIED", version("11", shadow))  # the first write, delivered late
            await still_serving()
            state.handle("slmroutes", "SYNC", [version("11", shadow)])  # a list read before the promotion
            await still_serving()
            # the watch catches up: the promotion's own version is taken, and so is a newer one
            state.handle("slmroutes", "MODIFIED", version("12", serving))
            await still_serving()
            state.handle("slmroutes", "MODIFIED", version("100", shadow))  # someone wrote Shadow after it
            await settle(state)
            assert state.gateway.table.routes["agents/invoices"].phases == {"invoices": RulePhase.SHADOW}
        finally:
            await llm_server.close()

    run(test)


@pytest.mark.parametrize(
    ("a", "b", "order"),
    [
        ("11", "12", -1),
        ("12", "12", 0),
        ("100", "99", 1),  # by value, not by text
        ("99", "100", -1),
        ("123456789012345678901234567890", "123456789012345678901234567889", 1),
        ("", "12", None),
        ("012", "12", None),  # a leading zero is not a resourceVersion Kubernetes hands out
        ("abc", "12", None),
        ("0", "12", None),
    ],
)
def test_resource_versions_compare_as_kubernetes_defines_it(a: str, b: str, order: int | None) -> None:
    assert compare_resource_versions(a, b) == order


def finetunejob(rv: str, **conditions: tuple[str, str]) -> dict[str, Any]:
    """FineTuneJob tune-invoices promoting onto SLMDeployment invoice-extractor, conditions as type=(status,
    reason)."""
    return {
        "apiVersion": "slm.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "tune-invoices", "namespace": "agents", "resourceVersion": rv},
        "spec": {
            "poolRef": {"name": "h100"},
            "segment": "tuning",
            "baseModel": "qwen2.5-3b-instruct",
            "dataset": {"configMapRef": {"name": "calls"}},
            "output": {"pvc": {"claimName": "adapters", "path": "tune-invoices"}},
            "promote": {"slmDeploymentRef": {"name": "invoice-extractor"}},
        },
        "status": {
            "conditions": [
                {
                    "type": t,
                    "status": st_,
                    "reason": r,
                    "message": "",
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                }
                for t, (st_, r) in conditions.items()
            ]
        },
    }


def test_promotion_waits_for_the_finetunejob_and_counts_again_on_the_model_it_promoted() -> None:
    """Answers of the base model say nothing of the adapter a FineTuneJob trains for it: while the job runs the
    rule is not promoted (the message names the job); when the adapter is rolled onto the SLMDeployment the
    figures start again (a ModelChanged Event, measuredModel), and what was counted during the rollout is dropped
    when the job has finished; then the tuned SLM is promoted on its own answers."""

    async def test(state: ClusterState, api: FakeApi, ctx: dict[str, Any]) -> None:
        _llm_standin, llm_server = await _llm(ctx)
        doc = _promoted_route(str(llm_server.make_url("/v1")))
        training = finetunejob("1", Trained=("False", "Training"), Promoted=("False", "Waiting"))
        try:
            sync_all(state, ctx["port"], [doc], [training])
            await settle(state)
            await _agreeing_calls(state, ctx)
            await state.promote()
            rule = _rule_status(api)
            assert (rule["phase"], rule["samples"], rule["measuredModel"]) == (
                "Shadow",
                5,
                "qwen2.5-3b-instruct",
            )
            assert "not promoted while FineTuneJob tune-invoices has not finished" in rule["message"]
            assert api.events == []
            # the job passed its gate and rolls its adapter onto the deployment
            adapter = "pvc://adapters/tune-invoices"
            tuned = deployment()
            tuned["metadata"] = {
                **tuned["metadata"],
                "resourceVersion": "2",
                "annotations": {ADAPTER_ANNOTATION: adapter},
            }
            state.handle("slmdeployments", "MODIFIED", tuned)
            state.handle(
                "finetunejobs",
                "MODIFIED",
                finetunejob("2", Trained=("True", "JobComplete"), Promoted=("False", "Rolling")),
            )
            await settle(state)
            rule = _rule_status(api)
            assert (rule["phase"], rule["samples"]) == ("Shadow", 0)
            assert rule["measuredModel"] == f"qwen2.5-3b-instruct + {adapter}"
            (event,) = api.events
            assert (event.type, event.reason) == ("Normal", "ModelChanged")
            assert f"slm now serves qwen2.5-3b-instruct + {adapter}, not qwen2.5-3b-instruct" in event.message
            await _agreeing_calls(state, ctx)  # answers while the replicas roll: some on the old weights
            await state.promote()
            assert _rule_status(api)["phase"] == "Shadow" and len(api.events) == 1
            # every replica serves the adapter: the job is done, and the rollout's answers are dropped
            state.handle("finetunejobs", "MODIFIED", finetunejob("3", Promoted=("True", "Promoted")))
            await settle(state)
            rule = _rule_status(api)
            assert (rule["phase"], rule["samples"]) == ("Shadow", 0) and "FineTuneJob" not in rule["message"]
            await _agreeing_calls(state, ctx)
            await state.promote()
            assert _rule_status(api)["phase"] == "Serving"
            assert [e.reason for e in api.events] == ["ModelChanged", "Promoted"]
        finally:
            await llm_server.close()

    run(test)


def test_only_the_status_writer_decides_promotions() -> None:
    async def test(state: ClusterState, api: FakeApi, ctx: dict[str, Any]) -> None:
        state.writes_status = lambda: False  # another replica holds the Lease
        rule = {
            "name": "invoices",
            "backend": "slm",
            "shadow": {"backends": ["other"], "percent": 100},
            "promote": {"backend": "other", "minSamples": 1},
        }
        backends = [
            {"name": "slm", "slmDeploymentRef": {"name": "invoice-extractor"}},
            {"name": "other", "slmDeploymentRef": {"name": "invoice-extractor"}},
        ]
        sync_all(state, ctx["port"], [route(backends=backends, rules=[rule])])
        await settle(state)
        for _ in range(2):
            await call(ctx["url"], KEY)
        await _counted(state, RulePhase.SHADOW, compared=2)
        await state.promote()
        assert api.writes == [] and api.events == []

    run(test)


# ------------------------------------------------------------------------------------------------ status Lease


class FakeLeases:
    """One Lease store with resourceVersions, as the API server keeps it (a stale version conflicts)."""

    def __init__(self) -> None:
        self.leases: dict[tuple[str, str], dict[str, Any]] = {}
        self.version = 0

    def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.leases.get((namespace, name)))

    def write_lease(
        self, namespace: str, name: str, spec: dict[str, Any], resource_version: str | None
    ) -> bool:
        current = self.leases.get((namespace, name))
        if (current and current["metadata"]["resourceVersion"]) != resource_version:
            return False
        self.version += 1
        self.leases[(namespace, name)] = {"metadata": {"resourceVersion": str(self.version)}, "spec": spec}
        return True


def test_with_a_status_lease_only_its_holder_writes_and_another_takes_over_when_it_stops() -> None:
    clock = [1000.0]
    leases = FakeLeases()
    a = StatusLease(leases, "slm-system", "gw-status", "gateway-a", clock=lambda: clock[0])
    b = StatusLease(leases, "slm-system", "gw-status", "gateway-b", clock=lambda: clock[0])
    assert a.try_once() and not b.try_once()

    async def test(state: ClusterState, api: FakeApi, ctx: dict[str, Any]) -> None:
        state.writes_status = b.holds  # this gateway is replica b
        sync_all(state, ctx["port"])
        await settle(state)
        assert api.writes == []  # replica a writes the statuses
        clock[0] += LEASE_SECONDS - 1  # a keeps renewing: b still does not take over
        assert a.try_once() and not b.try_once()
        clock[0] += LEASE_SECONDS + 1  # a stopped renewing (it died): b takes over and catches up
        assert b.try_once() and not a.try_once()
        state.dirty()
        await settle(state)
        assert [(ns, name) for ns, name, _ in api.writes] == [("agents", "invoices")]

    run(test)
    assert leases.leases[("slm-system", "gw-status")]["spec"]["leaseTransitions"] == 1


@given(
    holder=st.sampled_from(["", "me", "other"]),
    renewed_ago=st.floats(-5, 100),
    term=st.integers(1, 60),
    transitions=st.integers(0, 10),
)
def test_a_lease_is_claimed_only_when_free_expired_or_already_held(
    holder: str, renewed_ago: float, term: int, transitions: int
) -> None:
    now = 10_000.0
    spec = {
        "holderIdentity": holder,
        "leaseDurationSeconds": term,
        "acquireTime": "2026-01-01T00:00:00.000000Z",
        "renewTime": datetime.fromtimestamp(now - renewed_ago, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "leaseTransitions": transitions,
    }
    got = claim(spec, "me", now)
    if holder == "other" and renewed_ago < term:
        assert got is None
        return
    assert got is not None and got["holderIdentity"] == "me"
    assert got["leaseTransitions"] == transitions + (1 if holder == "other" else 0)
    kept = holder == "me"
    assert (got["acquireTime"] == spec["acquireTime"]) == kept
    assert claim(None, "me", now) is not None
