"""``slm-operator gateway`` without ``-f``: the gateway as a Deployment in the cluster.

It watches SLMRoutes, SLMDeployments, FineTuneJobs (for the promotion of the routes' rules) and the EndpointSlices
of the operator's Services (no API call per request), and the ConfigMap of each route's task classifier with a watch of its own, reads the Secrets the routes name with
namespaced reads, patches the activation annotation of an SLMDeployment at zero replicas a call waits for
(:mod:`slm_operator.gateway.activator`), authenticates callers by API key or ServiceAccount token
(TokenReview) and authorises tokens with a SubjectAccessReview for ``use`` on the route, and writes the routes'
status. ``/readyz`` answers 200 once every watch has listed its objects and the first table is served.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from dataclasses import dataclass, field
from typing import Any

from slm_operator.gateway.activator import Activator
from slm_operator.gateway.cluster import KINDS, ClusterState
from slm_operator.gateway.kube import KubeApi, Sink, start_configmap_watch, start_watch
from slm_operator.gateway.kube_auth import KubeAuth
from slm_operator.gateway.lease import StatusLease
from slm_operator.gateway.server import Gateway
from slm_operator.gateway.standalone import Standalone, run_on, serve, settle_gc
from slm_operator.routing.endpoints import DialMap
from slm_operator.routing.table import NamespacedName, RouteTable


@dataclass
class InCluster:
    standalone: Standalone  # the gateway and where it listens
    api: KubeApi
    dial: DialMap = field(default_factory=DialMap)  # --dial-map
    lease: StatusLease | None = None  # --status-lease: only its holder writes route status


class ConfigMapWatches:
    """One watch thread per ConfigMap the routes' task classifiers live in: started when a route first names
    it, stopped when no route does (the thread ends at its watch's next event or timeout)."""

    def __init__(self, api: KubeApi, state: ClusterState, loop: asyncio.AbstractEventLoop) -> None:
        self.api = api
        self.state = state
        self.loop = loop
        self.stops: dict[NamespacedName, threading.Event] = {}

    def _sink(self, key: NamespacedName, stop: threading.Event) -> Sink:
        def sink(event: str, obj: Any) -> None:
            if not stop.is_set():
                self.loop.call_soon_threadsafe(self.state.handle_configmap, key, event, obj)

        return sink

    def follow(self, wanted: set[NamespacedName]) -> None:
        for key in sorted(wanted - set(self.stops)):
            stop = self.stops[key] = threading.Event()
            start_configmap_watch(self.api, key[0], key[1], self._sink(key, stop), stop)
        for key in set(self.stops) - wanted:
            self.stops.pop(key).set()

    def stop_all(self) -> None:
        self.follow(set())


def attach(gateway: Gateway, api: KubeApi) -> None:
    """Authenticate callers through the API server (API keys still work)."""
    gateway.auth = KubeAuth(api)


async def run_watches(state: ClusterState, api: KubeApi, stop: threading.Event) -> asyncio.Task[None]:
    """Start one watch thread per kind, feeding ``state`` on this loop; returns the Secret refresher's task."""
    loop = asyncio.get_running_loop()

    def sink_for(kind: str) -> Any:
        return lambda event, obj: loop.call_soon_threadsafe(state.handle, kind, event, obj)

    for kind in KINDS:
        start_watch(api, kind, sink_for(kind), stop)
    return asyncio.create_task(state.refresh_secrets_forever())


async def _ready_when_synced(state: ClusterState) -> None:
    while not (state.synced >= set(KINDS)):
        state.rebuilt.clear()
        await state.rebuilt.wait()
    state.gateway.ready = True


async def serve_in_cluster(s: InCluster, stop: asyncio.Event) -> None:
    gateway = s.standalone.gateway
    gateway.ready = False
    gateway.set_table(RouteTable())
    state = ClusterState(gateway, s.api, dial=s.dial)
    gateway.activator = Activator(s.api.request_activation)  # scale from zero: tell the operator at once
    threads_stop = threading.Event()
    tasks = []
    if s.lease is not None:
        state.writes_status = s.lease.holds
        tasks.append(asyncio.create_task(s.lease.hold_forever(state.dirty)))
    configmaps = ConfigMapWatches(s.api, state, asyncio.get_running_loop())
    state.follow_configmaps = configmaps.follow
    tasks.append(await run_watches(state, s.api, threads_stop))
    tasks.append(asyncio.create_task(state.promote_forever()))
    tasks.append(asyncio.create_task(_ready_when_synced(state)))
    try:
        await serve(s.standalone, stop, banner=False)
    finally:
        threads_stop.set()
        configmaps.stop_all()
        for task in tasks:
            task.cancel()


def run(s: InCluster, event_loop: str = "asyncio") -> int:
    """Serve until SIGINT or SIGTERM, on the event loop ``standalone.event_loop`` chose."""

    async def main() -> None:
        stop = asyncio.Event()
        running = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            running.add_signal_handler(sig, stop.set)
        await serve_in_cluster(s, stop)

    settle_gc()
    run_on(event_loop, main())
    return 0
