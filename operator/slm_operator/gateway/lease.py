"""Which gateway replica writes SLMRoute status: the holder of a coordination.k8s.io/v1 Lease (``--status-lease``).

Every replica computes the same statuses; without a Lease each writes the ones that differ from what the route
shows. With ``--status-lease NAMESPACE/NAME`` only the replica holding the Lease writes; the others serve calls
as before and take over when the holder stops renewing (it died, or lost the API server) for a lease duration.
:func:`claim` is the decision, pure; :class:`StatusLease` reads and writes the Lease through the API.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

log = logging.getLogger("slm_operator.gateway")

LEASE_SECONDS = 15  # a holder that has not renewed for this long may be replaced
RENEW_SECONDS = 5.0  # how often the holder renews (and the others try)


def _fmt(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse(s: Any) -> float:
    if not isinstance(s, str) or not s:
        return 0.0
    try:
        return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def claim(
    spec: Mapping[str, Any] | None, me: str, now: float, duration: int = LEASE_SECONDS
) -> dict[str, Any] | None:
    """The Lease spec that makes ``me`` the holder at ``now``, or None while another holder's term runs."""
    spec = spec or {}
    holder = spec.get("holderIdentity") or ""
    term = int(spec.get("leaseDurationSeconds") or duration)
    if holder not in ("", me) and _parse(spec.get("renewTime")) + term > now:
        return None
    mine = holder == me
    return {
        "holderIdentity": me,
        "leaseDurationSeconds": duration,
        "acquireTime": spec.get("acquireTime") if mine and spec.get("acquireTime") else _fmt(now),
        "renewTime": _fmt(now),
        "leaseTransitions": int(spec.get("leaseTransitions") or 0) + (1 if holder and not mine else 0),
    }


class LeaseApi(Protocol):
    def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    def write_lease(
        self, namespace: str, name: str, spec: dict[str, Any], resource_version: str | None
    ) -> bool: ...  # False when another writer came first (409)


class StatusLease:
    def __init__(
        self,
        api: LeaseApi,
        namespace: str,
        name: str,
        identity: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.api, self.namespace, self.name, self.identity, self.clock = api, namespace, name, identity, clock
        self.held_until = 0.0  # this replica may write until then (a renew period before its term ends)

    def holds(self) -> bool:
        return self.clock() < self.held_until

    def try_once(self) -> bool:
        """Take or renew the Lease once (blocking: run it in a thread); True when this replica holds it."""
        now = self.clock()
        current = self.api.get_lease(self.namespace, self.name)
        spec = claim((current or {}).get("spec"), self.identity, now)
        version = ((current or {}).get("metadata") or {}).get("resourceVersion")
        if spec is not None and self.api.write_lease(self.namespace, self.name, spec, version):
            self.held_until = now + LEASE_SECONDS - RENEW_SECONDS
        else:
            self.held_until = 0.0
        return self.holds()

    async def hold_forever(self, on_gained: Callable[[], None]) -> None:
        """Keep trying and renewing; ``on_gained`` when this replica becomes the writer (statuses to catch up)."""
        while True:
            was = self.holds()
            try:
                await asyncio.to_thread(self.try_once)
            except Exception as exc:  # the API server is away: the term runs out unless a renewal succeeds
                log.warning("status Lease %s/%s: %s", self.namespace, self.name, exc)
            if self.holds() and not was:
                log.info(
                    "this replica (%s) writes the routes' status (Lease %s/%s)",
                    self.identity,
                    self.namespace,
                    self.name,
                )
                on_gained()
            elif was and not self.holds():
                log.info(
                    "another replica writes the routes' status now (Lease %s/%s)", self.namespace, self.name
                )
            await asyncio.sleep(RENEW_SECONDS)
