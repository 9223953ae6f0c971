"""``slm-operator agent``: poll NVML, publish the inventory on the Node when it changed, serve metrics.

The loop is :class:`Agent` (one :meth:`Agent.poll` per interval) and :func:`run_daemon` (start-up, the
no-driver policy, the metrics server, the stop event); :func:`run` wires them to the command line. The agent
never changes a GPU setting.

Exit codes: 0 stopped (SIGTERM/SIGINT) or ``--once`` succeeded; 2 bad input (no node name, bad ``--listen``,
no kubeconfig); 3 no usable NVIDIA driver (``--no-driver=exit``, and always with ``--once``); 4 ``--once``
could not list the GPUs.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from slm_operator.agent.interface import Nvml, NvmlError
from slm_operator.agent.metrics import AgentMetrics
from slm_operator.agent.model import Inventory
from slm_operator.agent.pods import PodShare, pod_shares
from slm_operator.agent.read import read_inventory

if TYPE_CHECKING:  # the kubernetes client is imported only when the daemon connects
    from slm_operator.agent.kube import PodSource, Publisher

log = logging.getLogger("slm_operator.agent")

EXIT_OK = 0
EXIT_BAD_INPUT = 2
EXIT_NO_DRIVER = 3
EXIT_READ_FAILED = 4
NO_DRIVER_MODES = ("exit", "idle")


class AgentConfigError(ValueError):
    """Bad command-line input; the CLI prints it on one line and exits with 2."""


@dataclass
class Agent:
    """One node's agent: read, export, publish-if-changed. ``poll()`` is one iteration (tests call it)."""

    nvml: Nvml
    node: str
    metrics: AgentMetrics
    publisher: Publisher | None = None
    pods: PodSource | None = None
    clock: Callable[[], float] = time.time
    #: re-read the Node's annotation every this many polls (someone may have removed or changed it)
    resync_polls: int = 20
    last_published: str | None = None
    _publisher_read: bool = field(default=False, repr=False)
    _shares: list[PodShare] = field(default_factory=list, repr=False)
    _pods_failing: bool = field(default=False, repr=False)
    _polls: int = field(default=0, repr=False)
    _gpu_errors: dict[int, str] = field(default_factory=dict, repr=False)

    def poll(self) -> Inventory | None:
        self._polls += 1
        if self.resync_polls > 0 and self._polls % self.resync_polls == 0:
            self._publisher_read = False
        try:
            inventory = read_inventory(self.nvml, self.node)
        except NvmlError as exc:
            log.warning("cannot list the GPUs: %s", exc)
            self.metrics.read_failures.labels(self.node).inc()
            return None
        errors = {g.index: g.error for g in inventory.gpus if g.error}
        for index, error in errors.items():  # log changes only: a lost GPU fails on every poll
            if self._gpu_errors.get(index) != error:
                log.warning("GPU %d: %s", index, error)
        for index in self._gpu_errors.keys() - errors.keys():
            log.info("GPU %d reads without errors again", index)
        self._gpu_errors = errors
        if self.pods is not None:
            try:
                self._shares = pod_shares(self.pods.pods(), self.node)
                self._pods_failing = False
            except Exception as exc:  # API unreachable or RBAC: keep the last known owners, warn once
                log.log(
                    logging.DEBUG if self._pods_failing else logging.WARNING,
                    "cannot list the pods of node %s (metrics lose the deployment/tier labels): %s",
                    self.node,
                    exc,
                )
                self._pods_failing = True
        self.metrics.observe_inventory(inventory, self._shares, self.clock())
        self.publish(inventory)
        return inventory

    def publish(self, inventory: Inventory) -> bool:
        """Write the annotation if it differs from what is there; True if it was written."""
        if self.publisher is None:
            return False
        text = inventory.annotation_json()
        if not self._publisher_read:
            try:
                self.last_published = self.publisher.current()
                self._publisher_read = True
            except Exception as exc:
                log.warning("cannot read node %s: %s", self.node, exc)
        if text == self.last_published:
            return False
        try:
            self.publisher.publish(text)
        except Exception as exc:
            log.warning("cannot annotate node %s: %s", self.node, exc)
            self.metrics.publishes.labels(self.node, "error").inc()
            return False
        self.last_published = text
        self._publisher_read = True
        self.metrics.publishes.labels(self.node, "ok").inc()
        log.info("published the GPU inventory of node %s (%d GPUs)", self.node, len(inventory.gpus))
        return True


def _no_driver_line(node: str, exc: NvmlError, mode: str, interval: float) -> str:
    if mode == "idle":
        then = f"idling: metrics report slm_agent_nvml_up 0 and NVML is retried every {interval:g}s (--no-driver=idle)"
    else:
        then = f"exiting with code {EXIT_NO_DRIVER} (--{'once' if mode == 'once' else 'no-driver=exit'})"
    return f"no usable NVIDIA driver on node {node or '(unnamed)'}: {exc}; {then}"


def run_once(nvml: Nvml, node: str | None, out: Any = None) -> int:
    """``--once``: read every GPU, print the full inventory JSON on stdout."""
    out = out if out is not None else sys.stdout
    try:
        nvml.init()
    except NvmlError as exc:
        log.error("%s", _no_driver_line(node or "", exc, "once", 0))
        return EXIT_NO_DRIVER
    try:
        inventory = read_inventory(nvml, node)
    except NvmlError as exc:
        log.error("cannot list the GPUs: %s", exc)
        return EXIT_READ_FAILED
    finally:
        nvml.shutdown()
    out.write(json.dumps(inventory.to_dict(), indent=2) + "\n")
    return EXIT_OK


def run_daemon(
    nvml: Nvml,
    node: str,
    metrics: AgentMetrics,
    connect: Callable[[], tuple[Publisher | None, PodSource | None]],
    *,
    listen: str = "127.0.0.1:9400",
    interval: float = 15.0,
    no_driver: str = "idle",
    stop: threading.Event | None = None,
    serve: Callable[[str, Any], tuple[Any, Any]] | None = None,
) -> int:
    """The agent's life: NVML start (or the no-driver policy), metrics server, poll until ``stop``."""
    if no_driver not in NO_DRIVER_MODES:
        raise AgentConfigError(f"--no-driver must be one of {', '.join(NO_DRIVER_MODES)}, not {no_driver!r}")
    if serve is None:
        from slm_operator.metrics import serve as serve_registry

        serve = serve_registry
    stop = stop if stop is not None else threading.Event()
    server: Any = None

    def start_server() -> None:
        nonlocal server
        if listen and server is None:
            try:
                server, _ = serve(listen, metrics.registry)
            except (ValueError, OSError) as exc:
                raise AgentConfigError(f"--listen {listen!r}: {exc}") from None
            log.info("serving metrics on http://%s/metrics", listen)

    initialised = False
    try:
        try:
            nvml.init()
            initialised = True
        except NvmlError as exc:
            log.error("%s", _no_driver_line(node, exc, no_driver, interval))
            if no_driver == "exit":
                return EXIT_NO_DRIVER
        publisher, pods = connect()  # configuration only: no API call yet
        if not initialised:
            metrics.gpus.set_nvml_up(False)
            start_server()
            if not _wait_for_nvml(nvml, stop, interval):
                return EXIT_OK
            initialised = True
        start_server()
        agent = Agent(nvml=nvml, node=node, metrics=metrics, publisher=publisher, pods=pods)
        log.info("agent of node %s: polling NVML every %gs", node, interval)
        while True:
            agent.poll()
            if stop.wait(interval):
                return EXIT_OK
    finally:
        if initialised:
            nvml.shutdown()
        if server is not None:
            server.shutdown()
            server.server_close()


def _wait_for_nvml(nvml: Nvml, stop: threading.Event, interval: float) -> bool:
    """``--no-driver=idle``: retry NVML every ``interval`` until it answers (True) or ``stop`` is set (False)."""
    while not stop.wait(interval):
        try:
            nvml.init()
        except NvmlError as again:
            log.debug("NVML still unavailable: %s", again)
            continue
        log.info("NVML is available now")
        return True
    return False


def run(args: Any) -> int:
    """Entry point of ``slm-operator agent`` (``args`` from the CLI parser)."""
    from slm_operator.agent.factory import make_nvml

    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    node = (args.node_name or "").strip()
    if args.interval_seconds <= 0:
        raise AgentConfigError("--interval-seconds must be greater than 0")
    nvml = make_nvml(node or "fake")
    if args.once:
        return run_once(nvml, node or None)
    if not node:
        raise AgentConfigError("the node name is missing: pass --node-name or set $NODE_NAME (downward API)")

    def connect() -> tuple[Publisher | None, PodSource | None]:
        from slm_operator.agent.kube import KubePodSource, NodeAnnotationPublisher
        from slm_operator.kubeconfig import load_config

        try:
            api = load_config(args.kubeconfig)
        except Exception as exc:
            raise AgentConfigError(f"no Kubernetes configuration: {exc}") from None
        return NodeAnnotationPublisher(api, node), KubePodSource(api, node)

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    metrics = AgentMetrics(node)
    return run_daemon(
        nvml,
        node,
        metrics,
        connect,
        listen=args.listen,
        interval=float(args.interval_seconds),
        no_driver=args.no_driver,
        stop=stop,
    )
