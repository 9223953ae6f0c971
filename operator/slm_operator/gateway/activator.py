"""Scale from zero, the in-cluster gateway's side: tell the operator at once that a call waits for an SLMDeployment
at zero replicas, by merge-patching the annotation ``slm.io/activation-requested`` (an RFC 3339 time) on it.

The operator's SLMDeployment watch hands the new value to its autoscaler, which decides a replica at once instead of
at its next metrics poll (docs/autoscaling.md). One patch per deployment every
:data:`~slm_operator.routing.activation.ACTIVATION_REQUEST_SECONDS` at most (:func:`request_due`), however many
calls are held; the held calls themselves keep the deployment scaled up through ``slm_gateway_queued``. A failed
patch is logged and tried again by the next held call after that interval (the gateway needs ``patch`` on
``slmdeployments``: the chart grants it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from slm_operator.routing.activation import ACTIVATION_REQUEST_SECONDS, request_due

log = logging.getLogger("slm_operator.gateway")

#: (namespace, SLMDeployment name, RFC 3339 time) -> None; raises when the patch fails (called in a thread)
Patch = Callable[[str, str, str], None]


def rfc3339_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Activator:
    """``Gateway.activator`` in the cluster: called (on the event loop) for each held call."""

    def __init__(
        self,
        patch: Patch,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], str] = rfc3339_now,
        interval: float = ACTIVATION_REQUEST_SECONDS,
    ) -> None:
        self.patch = patch
        self.clock = clock
        self.now = now
        self.interval = interval
        self.last: dict[tuple[str, str], float] = {}  # (namespace, name) -> time of the last request
        self.tasks: set[asyncio.Task[None]] = set()

    def __call__(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        t = self.clock()
        if not request_due(self.last.get(key), t, self.interval):
            return
        self.last[key] = t
        task = asyncio.get_running_loop().create_task(self._request(namespace, name, self.now()))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _request(self, namespace: str, name: str, when: str) -> None:
        try:
            await asyncio.to_thread(self.patch, namespace, name, when)
        except Exception as exc:  # the next held call tries again; the held calls wait meanwhile
            log.warning(
                "requesting the activation of SLMDeployment %s/%s failed (the gateway needs `patch` on "
                "slmdeployments): %s",
                namespace,
                name,
                exc,
            )
            return
        log.info(
            "a call waits for SLMDeployment %s/%s at zero replicas: activation requested", namespace, name
        )
