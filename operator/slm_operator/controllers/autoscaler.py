"""The autoscaler's shell: read the gateway replicas' load, run :func:`slm_operator.autoscale.decide`, write the
decision (docs/autoscaling.md).

Every ``interval`` seconds (on the leader only: it runs in the operator's event loop, which exists only once the
Lease is won) one pass

1. lists the SLMDeployments with ``spec.autoscaling`` (none: nothing else is read), the SLMRoutes and the
   gateway's pods (``--gateway-selector`` in the operator's namespace);
2. reads ``/metrics`` of every Running gateway pod at once (aiohttp, a short timeout; no Prometheus in the path)
   and sums ``slm_gateway_in_flight`` and ``slm_gateway_queued`` per SLMDeployment over the routes' backends
   that name it;
3. decides each deployment's replicas and, when the decision changes (or at least every
   ``STATUS_REFRESH_SECONDS``), applies ``status.autoscaling`` as the field manager ``slm-operator-autoscaler``
   (the planner's status applies neither send nor drop it), posts a ``Scaled`` Event with the figures and wakes
   the pool's planning pass at once.

Scale from zero: the gateway sets the annotation ``slm.io/activation-requested`` on the SLMDeployment when it
holds a call for a deployment without a ready replica; the operator's SLMDeployment watch calls
:meth:`Autoscaler.request_activation`, which wakes the loop for a pass that asks for at least one replica.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from slm_operator import metrics as operator_metrics
from slm_operator.api.v1alpha1 import AutoscalingStatus, SLMDeployment, SLMRoute
from slm_operator.autoscale import (
    Decision,
    GatewayLoad,
    Sample,
    Settings,
    State,
    backends_by_deployment,
    decide,
    deployment_loads,
)
from slm_operator.contract import API_VERSION, AUTOSCALER_FIELD_MANAGER
from slm_operator.controllers.cache import ClusterCache
from slm_operator.controllers.kube import Kube
from slm_operator.controllers.shell import strip
from slm_operator.inventory import deployment_key
from slm_operator.render import OperatorConfig
from slm_operator.routing.endpoints import NO_DIAL, DialMap
from slm_operator.views import ObjectView, PodView

log = logging.getLogger("slm_operator.autoscaler")

#: the status is written on a change of the decision, and at least this often while it holds (fresh figures,
#: ``lastActiveTime`` for a new leader)
STATUS_REFRESH_SECONDS = 60.0
#: an activation annotation older than this is history (e.g. seen again when the operator restarts)
ACTIVATION_FRESH_SECONDS = 120.0
#: longest wait for one gateway's /metrics
SCRAPE_TIMEOUT_SECONDS = 2.0
DEFAULT_GATEWAY_SELECTOR = "app.kubernetes.io/component=gateway"
DEFAULT_GATEWAY_PORT = 8080

Fetch = Callable[[str], Awaitable[str]]


def rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def parse_gateway_metrics(text: str) -> dict[tuple[str, str], tuple[float, float]]:
    """``slm_gateway_in_flight`` and ``slm_gateway_queued`` of one gateway replica, per (route, backend)."""
    out: dict[tuple[str, str], tuple[float, float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name not in ("slm_gateway_in_flight", "slm_gateway_queued"):
            continue
        for s in family.samples:
            key = (s.labels.get("route", ""), s.labels.get("backend", ""))
            f, q = out.get(key, (0.0, 0.0))
            if family.name == "slm_gateway_in_flight":
                f += s.value
            else:
                q += s.value
            out[key] = (f, q)
    return out


def gateway_urls(
    pods: Iterable[Mapping[str, Any]], default_port: int = DEFAULT_GATEWAY_PORT, dial: DialMap = NO_DIAL
) -> list[str]:
    """``http://<pod IP>:<port>/metrics`` of every Running, not deleting gateway pod (the port named ``http``),
    the IP dialled as ``dial`` maps it (``run --dial-map``, local clusters only)."""
    urls = []
    for raw in pods:
        pod = PodView(raw)
        ip = pod.status.get("podIP")
        if pod.phase != "Running" or pod.deleting or not ip:
            continue
        ip = dial.dial(str(ip))
        port = default_port
        for c in pod.spec.get("containers") or []:
            for p in c.get("ports") or []:
                if p.get("name") == "http" and p.get("containerPort"):
                    port = int(p["containerPort"])
        host = f"[{ip}]" if ":" in ip else ip
        urls.append(f"http://{host}:{port}/metrics")
    return sorted(urls)


class Autoscaler:
    def __init__(
        self,
        kube: Kube,
        namespace: str,
        *,
        cache: ClusterCache | None = None,
        gateway_selector: str = DEFAULT_GATEWAY_SELECTOR,
        interval: float = 2.0,
        on_change: Callable[[str], None] = lambda pool: None,
        clock: Callable[[], float] = time.time,
        fetch: Fetch | None = None,
        metrics: operator_metrics.OperatorMetrics | None = None,
        dial: DialMap = NO_DIAL,
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        self.gateway_selector = gateway_selector
        # what each pass reads: SLMDeployments, SLMRoutes, gateway pods (not started: from the API server)
        self.cache = cache or ClusterCache(
            kube, OperatorConfig(), gateway_namespace=namespace, gateway_selector=gateway_selector
        )
        self.dial = dial  # --dial-map: where gateway pods of mapped addresses are read
        self.interval = interval
        self.on_change = on_change
        self.clock = clock
        self._fetch = fetch
        self.metrics = metrics or operator_metrics.METRICS
        self.states: dict[str, State] = {}
        self.samples: dict[str, deque[Sample]] = {}
        self._last_write: dict[str, float] = {}
        self._activations: set[str] = set()
        self._lock = threading.Lock()
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------------------------ scale from zero

    def request_activation(self, deployment: str, requested: str | None = None) -> bool:
        """A call waits for ``deployment`` ("namespace/name") at zero replicas (the gateway's annotation, set at
        ``requested``): wake the loop for a pass that asks for one replica at least. Safe from any thread;
        False when the request is too old to act on."""
        at = parse_time(requested) if requested else self.clock()
        if at is None or self.clock() - at > ACTIVATION_FRESH_SECONDS:
            return False
        with self._lock:
            self._activations.add(deployment)
        if self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)
        return True

    # ------------------------------------------------------------------------------ the loop

    async def run(self, stop: asyncio.Event) -> None:
        """Passes every ``interval`` seconds, or at once on an activation, until ``stop`` is set."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=SCRAPE_TIMEOUT_SECONDS)
        ) as session:
            fetch = self._fetch or _fetcher(session)
            while not stop.is_set():
                self._wake.clear()
                try:
                    await self.tick(fetch)
                except Exception:  # a failed pass is retried at the next interval; the loop must not die
                    log.exception("autoscaler pass failed")
                waits = [asyncio.ensure_future(e.wait()) for e in (stop, self._wake)]
                await asyncio.wait(waits, timeout=self.interval, return_when=asyncio.FIRST_COMPLETED)
                for w in waits:
                    w.cancel()

    async def tick(self, fetch: Fetch | None = None) -> None:
        """One pass: read the load, decide every autoscaled deployment, write what changed."""
        fetch = fetch or self._fetch
        assert fetch is not None, "tick needs a fetch function outside run()"
        deps = await asyncio.to_thread(self._autoscaled)
        keys = {deployment_key(d) for d in deps}
        for gone in [k for k in self.states if k not in keys]:
            self._forget(gone)
        if not deps:
            return
        routes, urls = await asyncio.to_thread(self._routes_and_gateways)
        reports = await self._scrape(fetch, urls)
        now = self.clock()
        loads = deployment_loads(reports, backends_by_deployment(routes)) if reports else {}
        with self._lock:
            activations, self._activations = self._activations, set()
        for dep in deps:
            key = deployment_key(dep)
            settings = Settings.of_deployment(dep)
            assert settings is not None
            history = self.samples.setdefault(key, deque())
            if reports:  # no gateway answered: no sample, the last decision holds
                f, q = loads.get(key, (0.0, 0.0))
                history.append(Sample(now, f, q))
            while history and history[0].time <= now - settings.stable_window:
                history.popleft()
            state = self.states.get(key) or initial_state(dep)
            ready = dep.status.ready_replicas if dep.status is not None else 0
            d = decide(list(history), now, ready, settings, state, activation=key in activations)
            self.states[key] = d.state
            self.metrics.observe_autoscale(key, d.desired, d.direction)
            if d.changed:
                log.info("%s: %s", key, d.message)
            await asyncio.to_thread(self._write, dep, d, now)

    # ------------------------------------------------------------------------------ reads

    def _autoscaled(self) -> list[SLMDeployment]:
        out = []
        for raw in self.cache.deployments.items():
            try:
                dep = SLMDeployment.model_validate(strip(raw))
            except ValidationError as exc:
                log.warning("skipping SLMDeployment %s: %s", ObjectView(raw).name, exc)
                continue
            if dep.spec.autoscaling is not None and not ObjectView(raw).deleting:
                out.append(dep)
            elif dep.status is not None and dep.status.autoscaling is not None:
                self._release(dep)  # autoscaling was removed: give its status fields up
        return out

    def _routes_and_gateways(self) -> tuple[list[SLMRoute], list[str]]:
        routes = []
        for raw in self.cache.routes.items():
            try:
                routes.append(SLMRoute.model_validate(strip(raw)))
            except ValidationError as exc:
                log.warning("skipping SLMRoute %s: %s", ObjectView(raw).name, exc)
        pods = self.cache.gateways.items()
        return routes, gateway_urls(pods, dial=self.dial)

    async def _scrape(self, fetch: Fetch, urls: list[str]) -> list[GatewayLoad]:
        async def one(url: str) -> GatewayLoad | None:
            try:
                return parse_gateway_metrics(await fetch(url))
            except Exception as exc:  # unreachable, slow or garbled: decide on the others
                log.debug("cannot read %s: %s", url, exc)
                self.metrics.autoscaler_scrape_errors.inc()
                return None

        results = await asyncio.gather(*(one(u) for u in urls))
        return [r for r in results if r is not None]

    # ------------------------------------------------------------------------------ writes

    def _write(self, dep: SLMDeployment, d: Decision, now: float) -> None:
        key = deployment_key(dep)
        old = dep.status.autoscaling if dep.status is not None else None
        st = AutoscalingStatus(
            desired_replicas=d.desired,
            reason=d.reason,
            message=d.message[:1024],
            panic=d.panic,
            last_scale_time=rfc3339(d.state.last_scale) if d.state.last_scale is not None else None,
            last_active_time=rfc3339(d.state.last_active) if d.state.last_active is not None else None,
        )
        same = old is not None and (old.desired_replicas, old.reason, old.panic) == (
            d.desired,
            d.reason,
            d.panic,
        )
        if same and now - self._last_write.get(key, 0.0) < STATUS_REFRESH_SECONDS:
            return
        meta = {"name": dep.metadata.name, "namespace": dep.metadata.namespace}
        body = {"apiVersion": API_VERSION, "kind": "SLMDeployment", "metadata": meta}
        self.kube.apply(
            {**body, "status": {"autoscaling": st.to_k8s()}},
            status=True,
            field_manager=AUTOSCALER_FIELD_MANAGER,
        )
        self._last_write[key] = now
        if d.changed:
            self.kube.event({**body, "metadata": dep.metadata.to_k8s()}, "Normal", "Scaled", d.message)
        if d.desired != dep.effective_replicas():
            self.on_change(dep.spec.pool_ref.name)  # plan for it now, not at the next resync

    def _release(self, dep: SLMDeployment) -> None:
        meta = {"name": dep.metadata.name, "namespace": dep.metadata.namespace}
        body = {"apiVersion": API_VERSION, "kind": "SLMDeployment", "metadata": meta, "status": {}}
        self.kube.apply(body, status=True, field_manager=AUTOSCALER_FIELD_MANAGER)
        self.on_change(dep.spec.pool_ref.name)

    def _forget(self, key: str) -> None:
        self.states.pop(key, None)
        self.samples.pop(key, None)
        self._last_write.pop(key, None)
        self.metrics.forget_autoscaled(key)


def initial_state(dep: SLMDeployment) -> State:
    """A deployment this process has not decided yet: from its status (a new leader), else spec.replicas."""
    st = dep.status.autoscaling if dep.status is not None else None
    return State(
        desired=dep.effective_replicas(),
        last_active=parse_time(st.last_active_time) if st is not None else None,
        last_scale=parse_time(st.last_scale_time) if st is not None else None,
    )


def _fetcher(session: aiohttp.ClientSession) -> Fetch:
    async def fetch(url: str) -> str:
        async with session.get(url) as resp:
            resp.raise_for_status()
            return await resp.text()

    return fetch
