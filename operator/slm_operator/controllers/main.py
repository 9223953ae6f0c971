"""``slm-operator run``: leader election, then kopf with the handlers of :mod:`handlers`."""

from __future__ import annotations

import asyncio
import copy
import logging
import os
import signal
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import kopf
from kubernetes import client

from slm_operator import metrics
from slm_operator.controllers import handlers  # noqa: F401  # registers the kopf handlers
from slm_operator.controllers.autoscaler import Autoscaler
from slm_operator.controllers.cache import ClusterCache
from slm_operator.controllers.context import OperatorContext, memo_for
from slm_operator.controllers.finetune import FineTuneReconciler
from slm_operator.controllers.handlers import watch_handlers
from slm_operator.controllers.kube import Kube
from slm_operator.controllers.leader import LeaderElector
from slm_operator.controllers.pools import PoolReconciler
from slm_operator.kubeconfig import load_config
from slm_operator.render import OperatorConfig
from slm_operator.routing.endpoints import parse_dial_map

log = logging.getLogger("slm_operator")


class Health:
    """``/healthz`` and ``/readyz`` from process start, for the leader and for a replica standing by.

    A standby replica is healthy and ready (it is ready to take over); a leader is healthy while its kopf loop
    runs. Serving this before the Lease is won keeps the kubelet from restarting standby replicas.
    """

    def __init__(self) -> None:
        self.state = "starting"

    def serve(self, listen: str) -> None:
        host, _, port = listen.rpartition(":")
        health = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                ok = health.state in ("standby", "leading")
                if self.path not in ("/healthz", "/readyz"):
                    self.send_response(404)
                    self.end_headers()
                    return
                body = f"{health.state}\n".encode()
                self.send_response(200 if ok else 503)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:  # probes every few seconds: keep the log quiet
                return

        server = ThreadingHTTPServer((host.strip("[]") or "0.0.0.0", int(port)), Handler)
        threading.Thread(target=server.serve_forever, name="health", daemon=True).start()


def autoscaler_of(
    args: Any, kube: Kube, cache: ClusterCache, on_change: Callable[[str], None]
) -> Autoscaler | None:
    """The autoscaler the flags ask for (None: ``--autoscale-interval 0``)."""
    if args.autoscale_interval <= 0:
        return None
    return Autoscaler(
        kube,
        args.namespace,
        cache=cache,
        gateway_selector=args.gateway_selector,
        interval=args.autoscale_interval,
        dial=parse_dial_map(getattr(args, "dial_map", [])),
        on_change=on_change,
    )


#: connections kept for the watch caches' client: one long watch per reflector, and their lists
WATCH_CONNECTIONS = 24


def watch_client(api: client.ApiClient) -> client.ApiClient:
    """A client of its own for the watch caches, on the same configuration: each of their watches holds a
    connection for minutes, which must not take the ones the passes' writes need (and the caches never write:
    the fence of the writes' client is not theirs to check)."""
    conf = copy.deepcopy(api.configuration)
    conf.connection_pool_maxsize = WATCH_CONNECTIONS
    return client.ApiClient(conf)


def operator_context(args: Any, api: client.ApiClient, kube: Kube, cfg: OperatorConfig) -> OperatorContext:
    """The reconcilers, reading one set of watch caches (started by :func:`start_caches`)."""
    cache = ClusterCache(
        Kube(watch_client(api)),
        cfg,
        gateway_namespace=args.namespace,
        gateway_selector=args.gateway_selector,
    )
    context = OperatorContext(
        kube=kube,
        cfg=cfg,
        pools=PoolReconciler(kube, cfg, cache),
        finetune=FineTuneReconciler(kube, args.trainer_image, args.priority_class_finetune or None, cache),
    )
    context.autoscaler = autoscaler_of(args, kube, cache, context.trigger)
    return context


def start_caches(context: OperatorContext) -> None:
    """Fill the watch caches and keep them: their events wake the pools, our writes' answers go into them."""
    cache = context.pools.cache
    watch_handlers(context)
    context.kube.on_write = cache.observe
    cache.start(cache.planner_reflectors())
    if context.autoscaler is not None:
        cache.start(cache.autoscaler_reflectors())


def run(args: Any) -> int:
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # kopf logs every handler success at INFO; keep the operator's own decisions readable.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    logging.getLogger("kopf.activities").setLevel(logging.WARNING)
    api = load_config(args.kubeconfig)
    kube = Kube(api)
    cfg = OperatorConfig.from_flags(args)
    health = Health()
    if args.health_listen:
        health.serve(args.health_listen)
    if args.metrics_listen:
        metrics.serve(args.metrics_listen)
    context = operator_context(args, api, kube, cfg)

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    elector = None
    if args.leader_elect:
        # the Lease is renewed through a client of its own: every other write is fenced by it (leader.py)
        # in a Pod (POD_NAME: the chart's Deployment), the identity is the Pod's name, and a replica that takes
        # an expired Lease over deletes the previous holder's Pod: its Pod-bound token stops working (fence_out)
        pod = os.environ.get("POD_NAME") or None
        elector = LeaderElector(
            Kube(client.ApiClient(copy.deepcopy(api.configuration))),
            args.namespace,
            identity=pod,
            pod_namespace=(os.environ.get("POD_NAMESPACE") or args.namespace) if pod else None,
        )
        health.state = "standby"
        if not elector.acquire(stop):
            return 0
        elector.keep_renewing(_exit_at_once)
        kube.fence = elector.fence
    health.state = "leading"
    start_caches(context)  # once this replica leads (a standby holds nothing), before kopf starts the passes
    loop = asyncio.new_event_loop()

    async def main() -> None:
        stop_flag = asyncio.Event()

        def watch_stop() -> None:
            stop.wait()
            loop.call_soon_threadsafe(stop_flag.set)

        threading.Thread(target=watch_stop, daemon=True).start()
        autoscaler = None
        if context.autoscaler is not None:  # the leader's only: this loop runs once the Lease is won
            autoscaler = asyncio.create_task(context.autoscaler.run(stop_flag))
        try:
            await kopf.operator(clusterwide=True, stop_flag=stop_flag, memo=memo_for(context))
        finally:
            if autoscaler is not None:
                stop_flag.set()
                await asyncio.gather(autoscaler, return_exceptions=True)

    try:
        loop.run_until_complete(main())
    finally:
        health.state = "stopping"
        context.pools.cache.stop()
        if elector is not None:
            elector.release()
        loop.close()
    return 0


def _exit_at_once() -> None:
    """Leadership lost, or not renewed in time: exit now, as controller-runtime's manager does, so that neither
    a handler nor kopf itself (finalizers, progress annotations) writes after another replica may lead; the
    Deployment starts a fresh process, which stands by."""
    log.error("leadership lost; exiting at once so that no write of this replica lands after another leads")
    logging.shutdown()
    os._exit(1)
