"""Leader election on a coordination.k8s.io/v1 Lease: several operator replicas, one active.

The follower blocks in :meth:`LeaderElector.acquire` until the Lease is free or expired; the leader renews it
every ``renew_seconds`` from a background thread and calls ``on_lost`` if it cannot (another replica took over,
or no renewal succeeded for ``renew_deadline_seconds``). Time comes from injectable clocks.

Fencing (controller-runtime's renew deadline, checked before every write): another replica may take the Lease
``lease_seconds`` after its last ``renewTime``; this one stops writing ``renew_deadline_seconds`` (fewer) after
it sent its last successful renewal. :meth:`LeaderElector.fence`, which :class:`Kube` calls before each write,
refuses a write past that deadline and calls ``on_lost``. A replica that was paused (SIGSTOP, a frozen VM, a
long GC) and resumes after another took over therefore writes nothing: its first write attempt, or its renewer
waking up, ends it, whichever comes first.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from kubernetes.client.exceptions import ApiException

from slm_operator.controllers.kube import Kube

log = logging.getLogger("slm_operator.leader")


def _fmt(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse(s: str | None) -> float:
    if not s:
        return 0.0
    s = s.rstrip("Z")
    fmt = "%Y-%m-%dT%H:%M:%S.%f" if "." in s else "%Y-%m-%dT%H:%M:%S"
    return datetime.strptime(s, fmt).replace(tzinfo=UTC).timestamp()


class LeadershipLost(Exception):
    """A write refused because this replica can no longer be sure it leads."""


class LeaderElector:
    def __init__(
        self,
        kube: Kube,
        namespace: str,
        name: str = "slm-operator-leader",
        identity: str | None = None,
        lease_seconds: int = 15,
        renew_seconds: float = 5.0,
        clock: Callable[[], float] = time.time,
        renew_deadline_seconds: float = 10.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.identity = identity or f"{socket.gethostname()}-{threading.get_native_id()}"
        self.lease_seconds = lease_seconds
        self.renew_seconds = renew_seconds
        self.clock = clock
        self.renew_deadline_seconds = min(renew_deadline_seconds, lease_seconds)
        self.monotonic = monotonic
        self._renewed_at: float | None = None  # monotonic time the last successful renewal was sent
        self._on_lost: Callable[[], None] | None = None
        self._stop = threading.Event()

    def _lease(self, holder: str, acquired: float, transitions: int) -> dict[str, Any]:
        now = self.clock()
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": {
                "holderIdentity": holder,
                "leaseDurationSeconds": self.lease_seconds,
                "acquireTime": _fmt(acquired),
                "renewTime": _fmt(now),
                "leaseTransitions": transitions,
            },
        }

    def try_acquire_or_renew(self) -> bool:
        """One attempt; True when this replica holds the lease afterwards."""
        res = self.kube.resource("coordination.k8s.io/v1", "Lease")
        cur = self.kube.get("coordination.k8s.io/v1", "Lease", self.name, self.namespace)
        now = self.clock()
        try:
            if cur is None:
                self.kube.create(self._lease(self.identity, now, 0))
                cur2 = self.kube.get("coordination.k8s.io/v1", "Lease", self.name, self.namespace)
                return bool(cur2 and cur2["spec"].get("holderIdentity") == self.identity)
            spec = cur.get("spec") or {}
            holder = spec.get("holderIdentity")
            expires = _parse(spec.get("renewTime")) + int(
                spec.get("leaseDurationSeconds") or self.lease_seconds
            )
            if holder not in (None, "", self.identity) and expires > now:
                return False
            transitions = int(spec.get("leaseTransitions") or 0) + (0 if holder == self.identity else 1)
            acquired = _parse(spec.get("acquireTime")) if holder == self.identity else now
            body = self._lease(self.identity, acquired, transitions)
            body["metadata"]["resourceVersion"] = cur["metadata"]["resourceVersion"]
            res.replace(body=body, namespace=self.namespace)  # 409 if someone else wrote first
            return True
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise

    def acquire(self, stop: threading.Event | None = None) -> bool:
        """Block until this replica leads (True) or ``stop`` is set (False)."""
        logged = False
        while not (stop and stop.is_set()):
            try:
                if self._renew():
                    log.info(
                        "became leader (lease %s/%s, identity %s)", self.namespace, self.name, self.identity
                    )
                    return True
            except ApiException as exc:
                log.warning("leader election: %s", exc.reason)
            if not logged:
                log.info("another replica leads; standing by")
                logged = True
            time.sleep(self.renew_seconds / 2)
        return False

    def _renew(self) -> bool:
        """One attempt; on success the fence moves to the time the attempt was sent (not when it returned)."""
        sent = self.monotonic()
        if not self.try_acquire_or_renew():
            return False
        self._renewed_at = sent
        return True

    def leading(self) -> bool:
        """Whether this replica may still write: it renewed the Lease less than the renew deadline ago."""
        at = self._renewed_at
        return at is not None and self.monotonic() - at < self.renew_deadline_seconds

    def fence(self) -> None:
        """Called before every write: past the renew deadline, call ``on_lost`` and refuse the write."""
        if self.leading():
            return
        at = self._renewed_at
        since = "never" if at is None else f"{self.monotonic() - at:.1f} s ago"
        log.error(
            "not writing: the Lease was last renewed %s (renew deadline %gs)",
            since,
            self.renew_deadline_seconds,
        )
        if self._on_lost is not None:
            self._on_lost()
        raise LeadershipLost(f"the Lease {self.namespace}/{self.name} was last renewed {since}")

    def keep_renewing(self, on_lost: Callable[[], None]) -> threading.Thread:
        self._on_lost = on_lost

        def loop() -> None:
            while not self._stop.wait(self.renew_seconds):
                try:
                    if self._renew():
                        continue
                    log.error("lost the lease to another replica")
                except Exception as exc:  # any failure to renew counts
                    log.warning("could not renew the lease: %s", exc)
                    if self.leading():
                        continue
                    log.error("could not renew the lease within %gs", self.renew_deadline_seconds)
                on_lost()
                return

        t = threading.Thread(target=loop, name="lease-renewer", daemon=True)
        t.start()
        return t

    def release(self) -> None:
        self._stop.set()
        try:
            cur = self.kube.get("coordination.k8s.io/v1", "Lease", self.name, self.namespace)
            if cur and (cur.get("spec") or {}).get("holderIdentity") == self.identity:
                self.kube.merge_patch(
                    "coordination.k8s.io/v1",
                    "Lease",
                    self.name,
                    {"spec": {"holderIdentity": None}},
                    self.namespace,
                )
        except Exception as exc:  # best effort on shutdown
            log.debug("lease release: %s", exc)
