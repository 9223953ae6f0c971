"""The replica stand-ins of the gateway's e2e tests and of `make demo`: one OpenAI-compatible stand-in
(e2e/standin.py) for each Running replica pod (pods labelled ``slm.io/deployment``), answering as the pod
(``hello from POD``).

kwok gives pods fake IPs from 10.0.0.0/24, and the API server refuses loopback addresses in EndpointSlices
(docs/e2e.md section 7), so a pod keeps its kwok IP and its stand-in listens on the same offset in a loopback /24
(``--loopback``), on the pod's ``http`` container port; the gateway dials it there with
``--dial-map 10.0.0.0/24=<that /24>``. Run ``python -m e2e.replicas --kubeconfig K --loopback 127.42.0.0/24``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import random
import sys
import threading
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from kubernetes import client, config

from e2e.standin import Behaviour, StandIn

KWOK_POD_CIDR = ipaddress.ip_network("10.0.0.0/24")  # kwok's default pod-ready stage (docs/e2e.md)


def random_loopback() -> ipaddress.IPv4Network:
    """A loopback /24 of its own per run, so two e2e runs on one machine do not share replica addresses."""
    return ipaddress.IPv4Network(f"127.{random.randint(16, 250)}.{random.randint(0, 255)}.0/24")


class EventLoopThread:
    """An asyncio loop in a thread: the stand-ins' servers run on it while the tests block."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


async def serve(standin: StandIn, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(standin.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


@dataclass
class Replicas:
    """One stand-in per Running replica pod (pods labelled slm.io/deployment), on the pod IP's loopback twin.

    Stand-ins of one SLMDeployment share one :class:`Behaviour`, which a test sets with :meth:`behave`."""

    core: client.CoreV1Api
    loops: EventLoopThread
    loopback: ipaddress.IPv4Network
    behaviours: dict[tuple[str, str], Behaviour] = field(default_factory=dict)
    # pod uid -> (namespace, deployment, stand-in, its server)
    serving: dict[str, tuple[str, str, StandIn, web.AppRunner]] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)
    verbose: bool = False  # a line on stderr per stand-in started or stopped

    def dial(self, pod_ip: str) -> str:
        offset = int(ipaddress.ip_address(pod_ip)) - int(KWOK_POD_CIDR.network_address)
        return str(self.loopback.network_address + offset)

    def behave(self, namespace: str, deployment: str, behaviour: Behaviour | None = None) -> Behaviour:
        b = self.behaviours.setdefault((namespace, deployment), Behaviour())
        new = behaviour or Behaviour()
        for name in Behaviour.__dataclass_fields__:
            setattr(b, name, getattr(new, name))
        return b

    def received(self, namespace: str, deployment: str) -> int:
        return sum(
            len(s.requests) for ns, dep, s, _ in self.serving.values() if (ns, dep) == (namespace, deployment)
        )

    def sync(self) -> None:
        pods = self.core.list_pod_for_all_namespaces(label_selector="slm.io/deployment").items
        live = {}
        for p in pods:
            running = p.status.phase == "Running" and p.status.pod_ip and not p.metadata.deletion_timestamp
            if running and ipaddress.ip_address(p.status.pod_ip) in KWOK_POD_CIDR:
                live[p.metadata.uid] = p
        for uid in set(self.serving) - set(live):
            ns, _, standin, runner = self.serving.pop(uid)
            self.loops.run(runner.cleanup())
            self._say(f"stopped the stand-in of pod {ns}/{standin.name}")
        for uid, p in live.items():
            if uid not in self.serving:
                self.serve_pod(p)

    def serve_pod(self, p: client.V1Pod) -> None:
        """Start the stand-in of the Running replica pod ``p`` on its IP's loopback twin."""
        uid = p.metadata.uid
        dep = p.metadata.labels["slm.io/deployment"]
        port = next((cp.container_port for cp in p.spec.containers[0].ports or [] if cp.name == "http"), 8000)
        behaviour = self.behaviours.setdefault((p.metadata.namespace, dep), Behaviour())
        standin = StandIn(p.metadata.name, behaviour)
        address = self.dial(p.status.pod_ip)
        runner = self.loops.run(serve(standin, address, port))
        self.serving[uid] = (p.metadata.namespace, dep, standin, runner)
        self._say(
            f"pod {p.metadata.namespace}/{p.metadata.name} ({p.status.pod_ip}) served on {address}:{port}"
        )

    def _say(self, line: str) -> None:
        if self.verbose:
            print(line, file=sys.stderr, flush=True)

    def run_forever(self) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(Exception):  # an API hiccup: the next round syncs again
                self.sync()
            self.stop.wait(0.3)

    def close(self) -> None:
        self.stop.set()
        for *_, runner in self.serving.values():
            with contextlib.suppress(Exception):
                self.loops.run(runner.cleanup())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument(
        "--loopback", required=True, help="loopback /24 the stand-ins listen on, e.g. 127.42.0.0/24"
    )
    args = parser.parse_args(argv)
    loopback = ipaddress.ip_network(args.loopback)
    if not loopback.is_loopback or loopback.prefixlen != KWOK_POD_CIDR.prefixlen:
        parser.error(f"--loopback {loopback} must be a /{KWOK_POD_CIDR.prefixlen} inside 127.0.0.0/8")
    api = config.new_client_from_config(config_file=args.kubeconfig)
    replicas = Replicas(client.CoreV1Api(api), EventLoopThread(), loopback, verbose=True)
    print(f"serving a stand-in for every Running replica pod on {loopback}", file=sys.stderr, flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        replicas.run_forever()
    replicas.close()


if __name__ == "__main__":
    main()
