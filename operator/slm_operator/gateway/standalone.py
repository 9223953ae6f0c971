"""``slm-operator gateway -f FILE...``: the gateway without a cluster, for local use and tests (like ``plan -f``).

SLMRoutes, Secrets (API-key hashes, external backends' keys) and ConfigMaps (the routes' task classifiers) come
from the files; SLMDeployment backends are found through ``--endpoint NAMESPACE/NAME=URL`` (repeat it for several
replicas), SLMDeployments in the files only lend their ``maxConcurrentSequences``. With ``--store`` calls are
captured (slm_operator.capture).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import secrets
import signal
import sys
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from slm_operator.capture import Capture, load_salt
from slm_operator.gateway.classifiers import ClassifierLoader
from slm_operator.gateway.metrics import GatewayMetrics
from slm_operator.gateway.server import Gateway, GatewayOptions
from slm_operator.manifests import ManifestError, load_manifests
from slm_operator.metrics import parse_listen
from slm_operator.routing.status import route_status
from slm_operator.routing.table import (
    Endpoint,
    NamespacedName,
    RouteTable,
    RouteWorld,
    build_table,
    classifier_ref,
    secret_data,
)

log = logging.getLogger("slm_operator.gateway")

SALT_FILE = "caller-salt"
SALT_BYTES = 32


class StandaloneError(Exception):
    """Bad input: the CLI prints it and exits 2."""


def endpoint_url(url: str) -> str:
    """A replica's OpenAI base URL: ``http://host:port`` gets ``/v1``; a URL with a path keeps it."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ValueError(f"{url!r} is not an http(s) URL such as http://127.0.0.1:8000")
    path = parts.path.rstrip("/") or "/v1"
    return f"{parts.scheme}://{parts.netloc}{path}"


def parse_endpoints(values: Sequence[str]) -> dict[NamespacedName, list[Endpoint]]:
    """``NAMESPACE/NAME=URL`` values, grouped by SLMDeployment (one endpoint per value, in order)."""
    out: dict[NamespacedName, list[Endpoint]] = {}
    for value in values:
        target, sep, url = value.partition("=")
        ns, slash, name = target.partition("/")
        if not sep or not slash or not ns or not name:
            raise StandaloneError(
                f"--endpoint {value!r}: give NAMESPACE/NAME=URL, e.g. agents/invoice-extractor=http://127.0.0.1:8001"
            )
        try:
            out.setdefault((ns, name), []).append(Endpoint(endpoint_url(url)))
        except ValueError as exc:
            raise StandaloneError(f"--endpoint {value!r}: {exc}") from None
    return out


def world_from_files(paths: Sequence[str], endpoints: dict[NamespacedName, list[Endpoint]]) -> RouteWorld:
    """SLMRoutes, SLMDeployments, Secrets and the routes' task classifiers from the files, with the given
    endpoints."""
    try:
        m = load_manifests(paths)
    except ManifestError as exc:
        raise StandaloneError(str(exc)) from None
    if not m.routes:
        raise StandaloneError(
            "no SLMRoute in the given files: the gateway needs at least one route (docs/gateway.md)"
        )
    wanted = {
        (r.metadata.namespace or "default", b.slm_deployment_ref.name)
        for r in m.routes
        for b in r.spec.backends
        if b.slm_deployment_ref is not None
    }
    stray = sorted(set(endpoints) - wanted)
    if stray:
        known = ", ".join(f"{ns}/{n}" for ns, n in sorted(wanted)) or "none"
        raise StandaloneError(
            f"--endpoint {stray[0][0]}/{stray[0][1]}: no route of the given files has this SLMDeployment as a "
            f"backend (a route only reaches deployments of its own namespace); the routes' deployments: {known}"
        )
    config_maps = {_ns_name(c): c for c in m.config_maps}
    refs = [ref for ref in map(classifier_ref, m.routes) if ref is not None]
    return RouteWorld(
        routes=m.routes,
        deployments={(d.metadata.namespace or "default", d.metadata.name): d for d in m.deployments},
        endpoints=endpoints,
        secrets={_ns_name(s): secret_data(s) for s in m.secrets},
        classifiers=ClassifierLoader().load(refs, config_maps),
    )


def _ns_name(obj: dict[str, Any]) -> NamespacedName:
    return obj["metadata"].get("namespace") or "default", obj["metadata"]["name"]


def read_salt(salt_file: str | None, spool_dir: Path) -> bytes:
    """The salt of caller hashes, read as ``usage erase --salt-file`` reads it (``load_salt``): ``--salt-file``,
    else ``SPOOL_DIR/caller-salt``, created with 64 random hex digits when missing."""
    path = Path(salt_file) if salt_file else spool_dir / SALT_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(SALT_BYTES))
        log.info("created the caller-hash salt %s (keep it: `usage erase` needs it)", path)
    try:
        salt: bytes = load_salt(path)
    except (OSError, ValueError) as exc:
        raise StandaloneError(f"--salt-file {path}: {exc}") from None
    if len(salt) < 16:
        raise StandaloneError(
            f"--salt-file {path}: a salt needs at least 16 bytes; this file has {len(salt)}"
        )
    return salt


@dataclass
class Standalone:
    gateway: Gateway
    host: str
    port: int


def summary(table: RouteTable) -> list[str]:
    """One line per route: its model and whether its backends resolve and have endpoints."""
    lines = []
    for key, route in sorted(table.routes.items()):
        conds = {c.type: c for c in route_status(route, None, "").conditions or []}
        ready, accepted = conds["Ready"], conds["Accepted"]
        state = "ready" if ready.status == "True" else f"not ready: {ready.message}"
        if accepted.status != "True":
            state = f"{accepted.reason}: {accepted.message}"
        lines.append(f"route {key}: model '{route.spec.model}', {state}")
    return lines


def options(
    store: str | None,
    spool_dir: str,
    salt_file: str | None,
    max_request_bytes: int,
    redact_processes: int = 1,
) -> tuple[Capture | None, GatewayMetrics, GatewayOptions]:
    """The capture, the metrics (the capture's series are in the same registry) and the options both modes
    build from their flags."""
    if max_request_bytes < 1024:
        raise StandaloneError(f"--max-request-bytes {max_request_bytes}: give at least 1024")
    if redact_processes < 0:
        raise StandaloneError(f"--redact-processes {redact_processes}: give 0 (a thread) or more processes")
    metrics = GatewayMetrics()
    if not store:
        if salt_file:
            raise StandaloneError(
                "--salt-file only salts the caller hashes of captured calls: give --store too"
            )
        return None, metrics, GatewayOptions(max_request_bytes=max_request_bytes)
    spool = Path(spool_dir)
    salt = read_salt(salt_file, spool)
    try:
        capture = Capture(
            store, spool_dir=spool, registry=metrics.registry, redact_processes=redact_processes
        )
    except ValueError as exc:
        raise StandaloneError(f"--store {store}: {exc}") from None
    return capture, metrics, GatewayOptions(max_request_bytes=max_request_bytes, salt=salt)


def listen_address(listen: str) -> tuple[str, int]:
    try:
        return parse_listen(listen)
    except ValueError as exc:
        raise StandaloneError(f"--listen: {exc}") from None


def build(
    files: Sequence[str],
    listen: str,
    endpoint_values: Sequence[str] = (),
    store: str | None = None,
    spool_dir: str = "slm-gateway-spool",
    salt_file: str | None = None,
    max_request_bytes: int = 8 << 20,
    redact_processes: int = 1,
) -> Standalone:
    """Everything ``gateway -f`` serves, checked: bad input raises StandaloneError with what to pass."""
    host, port = listen_address(listen)
    table = build_table(world_from_files(files, parse_endpoints(endpoint_values)))
    capture, metrics, opts = options(store, spool_dir, salt_file, max_request_bytes, redact_processes)
    return Standalone(Gateway(table, capture=capture, metrics=metrics, options=opts), host, port)


async def serve(s: Standalone, stop: asyncio.Event, banner: bool = True) -> None:
    """Serve until ``stop`` is set, then finish calls in flight and stop capture."""
    runner = web.AppRunner(s.gateway.app(), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, s.host, s.port)
        await site.start()
        for line in summary(s.gateway.table) if banner else []:
            print(line, file=sys.stderr)
        print(f"serving the OpenAI API on http://{s.host}:{s.port}/v1", file=sys.stderr, flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()


async def _serve_until_signalled(s: Standalone) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await serve(s, stop)


def event_loop(choice: str) -> str:
    """The event loop ``--event-loop`` names, checked: ``uvloop`` or ``asyncio`` (``auto``: uvloop when
    installed)."""
    if choice == "asyncio":
        return choice
    try:
        import uvloop  # noqa: F401
    except ImportError:
        if choice == "uvloop":
            raise StandaloneError(
                "--event-loop uvloop: uvloop is not installed here (it is a dependency on Linux and macOS: "
                "pip install uvloop), or use --event-loop asyncio"
            ) from None
        return "asyncio"
    return "uvloop"


#: the young generation's collection threshold while the gateway serves (CPython's default: 700)
GC_YOUNG_THRESHOLD = 10_000


def settle_gc() -> None:
    """Tune the garbage collector for serving calls, once, before serving (the gateway's process only).

    What exists now (modules, the routes of ``-f``) is collected once and frozen (``gc.freeze``): later
    collections no longer walk it. The young generation is collected every 10,000 net allocations of container
    objects instead of 700: a call allocates hundreds that reference counting frees, and with the defaults the
    collector ran about 140 times a second under load and took about a tenth of the gateway's CPU, with pauses
    of tens of milliseconds in the oldest generation (docs/benchmarks.md). Cycles are still collected: a
    collection runs after 10,000 net allocations, older generations as before.
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def run_on(loop: str, main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` to completion on a new event loop of the kind :func:`event_loop` chose."""
    if loop == "uvloop":
        import uvloop

        uvloop.run(main)
    else:
        asyncio.run(main)


def run(s: Standalone, event_loop: str = "asyncio") -> int:
    """Serve until SIGINT or SIGTERM, on the event loop :func:`event_loop` chose."""
    settle_gc()
    run_on(event_loop, _serve_until_signalled(s))
    return 0
