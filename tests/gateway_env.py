"""In-process gateway set-ups for the tests: stand-in backends on 127.0.0.1, a route, an API key, the gateway."""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer

from e2e.standin import Behaviour, StandIn
from slm_operator.api.v1alpha1 import SLMRoute
from slm_operator.gateway.server import Gateway, GatewayOptions
from slm_operator.routing.table import (
    ClassifierRef,
    Endpoint,
    LoadedClassifier,
    RouteWorld,
    build_table,
    hash_api_key,
)

KEY = "sk-team-a-0123456789"  # granted on agents/invoices
OTHER_KEY = "sk-team-b-0123456789"  # granted only on agents/chat
NS = "agents"


def closed_port() -> int:
    """A port nothing listens on (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def route_doc(name: str, model: str, llm_url: str, secret: str = "callers", **spec: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "apiVersion": "slm.io/v1alpha1",
        "kind": "SLMRoute",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "model": model,
            "backends": [
                {"name": "slm", "slmDeploymentRef": {"name": "invoice-extractor"}},
                {"name": "canary", "slmDeploymentRef": {"name": "invoice-extractor-v2"}},
                {
                    "name": "llm",
                    "external": {
                        "url": llm_url,
                        "model": "big-llm",
                        "apiKeySecretRef": {"name": "llm-key", "key": "apiKey"},
                    },
                },
            ],
            "apiKeySecretRefs": [{"name": secret}],
        },
    }
    doc["spec"].update(json.loads(json.dumps(spec).replace('"{llm}"', json.dumps(llm_url))))
    return doc


@dataclass
class Env:
    url: str  # the gateway's base URL (…/v1)
    gateway: Gateway
    slm: StandIn
    canary: StandIn
    llm: StandIn
    session: aiohttp.ClientSession
    capture: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    async def post(
        self, path: str, body: dict[str, Any], key: str | None = KEY, **headers: str
    ) -> tuple[aiohttp.ClientResponse, bytes]:
        h = dict(headers)
        if key is not None:
            h["Authorization"] = f"Bearer {key}"
        async with self.session.post(self.url + path, json=body, headers=h) as resp:
            return resp, await resp.read()

    async def chat(
        self, key: str | None = KEY, task: str | None = None, **body: Any
    ) -> tuple[aiohttp.ClientResponse, bytes]:
        doc = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "read this invoice"}], **body}
        return await self.post("/chat/completions", doc, key, **({"x-slm-task": task} if task else {}))

    async def metrics(self) -> str:
        async with self.session.get(self.url.removesuffix("/v1") + "/metrics") as resp:
            return await resp.text()


async def _serve(app: Any) -> TestServer:
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


@contextlib.asynccontextmanager
async def gateway_env(
    spec: dict[str, Any] | None = None,
    *,
    slm_endpoints: list[str] | None = None,
    capture: Any = None,
    max_request_bytes: int = 1 << 20,
    extra_routes: list[dict[str, Any]] | None = None,
    slm_replicas: int = 1,
    classifiers: Mapping[ClassifierRef, LoadedClassifier] | None = None,
    status: dict[str, Any] | None = None,
) -> AsyncIterator[Env]:
    """Stand-ins ``slm``, ``canary`` and ``llm``, the route agents/invoices (model gpt-4o-mini) over them, the
    route agents/chat (model chat, only OTHER_KEY), and the gateway in front. ``classifiers``: the task
    classifiers the routes' ``taskClassifier`` find (as the shell loaded them); ``status``: the status of
    agents/invoices (e.g. its rules' promotion phases, which the gateway routes by)."""
    standins = {n: StandIn(n, Behaviour()) for n in ("slm", "canary", "llm")}
    standins.update({f"slm-{i}": StandIn(f"slm-{i}", Behaviour()) for i in range(2, slm_replicas + 1)})
    servers = {n: await _serve(s.app()) for n, s in standins.items()}
    urls = {n: str(s.make_url("/v1")) for n, s in servers.items()}
    docs = [route_doc("invoices", "gpt-4o-mini", urls["llm"], **(spec or {}))]
    if status is not None:
        docs[0]["status"] = status
    docs.append(route_doc("chat", "chat", urls["llm"], secret="others"))
    docs += extra_routes or []
    world = RouteWorld(
        routes=[SLMRoute.model_validate(d) for d in docs],
        endpoints={
            (NS, "invoice-extractor"): [Endpoint(u) for u in (slm_endpoints or [])]
            + [Endpoint(u) for n, u in urls.items() if n.startswith("slm")],
            (NS, "invoice-extractor-v2"): [Endpoint(urls["canary"])],
        },
        secrets={
            (NS, "callers"): {"team-a": "sha256:" + hash_api_key(KEY)},
            (NS, "others"): {"team-b": "sha256:" + hash_api_key(OTHER_KEY)},
            (NS, "llm-key"): {"apiKey": "sk-upstream-secret"},
        },
        classifiers=classifiers or {},
    )
    gw = Gateway(
        build_table(world),
        capture=capture,
        options=GatewayOptions(max_request_bytes=max_request_bytes, salt=b"pepper", seed=7),
    )
    server = await _serve(gw.app())
    session = aiohttp.ClientSession()
    try:
        env = Env(
            str(server.make_url("/v1")),
            gw,
            standins["slm"],
            standins["canary"],
            standins["llm"],
            session,
            capture,
        )
        env.extra["replicas"] = [s for n, s in standins.items() if n.startswith("slm")]
        yield env
    finally:
        await session.close()
        await server.close()
        for s in servers.values():
            await s.close()
