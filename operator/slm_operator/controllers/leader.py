"""Leader election on a coordination.k8s.io/v1 Lease: several operator replicas, one active.

The follower blocks in :meth:`LeaderElector.acquire` until the Lease is free or expired; the leader renews it
every ``renew_seconds`` from a background thread and calls ``on_lost`` if it cannot (another replica took over,
or no renewal succeeded for ``renew_deadline_seconds``). Time comes from injectable clocks.

Fencing (controller-runtime's renew deadline, checked before every write): another replica may take the Lease
``lease_seconds`` after its last ``renewTime``; this one stops writing ``renew_deadline_seconds`` (fewer) after
it sent its last successful renewal. :meth:`LeaderElector.fence`, which :class:`Kube` calls before each write,
refuses a write past that deadline and calls ``on_lost``. A replica that was paused (SIGSTOP, a frozen VM, a
long GC) and resumes after another took over therefore starts no write: its first write attempt, or its renewer
waking up, ends it, whichever comes first.

A check in the client cannot be atomic with the send: a thread frozen between the two sends its write when the
process resumes. So the API server fences too (:meth:`LeaderElector.fence_out`): a replica that takes the Lease
over from another whose Lease expired deletes that replica's Pod at once (grace 0). The token a Pod mounts is
bound to it, and kube-apiserver refuses a bound token whose Pod is gone (pkg/serviceaccount/claims.go); it may
still accept one it authenticated in the last ``AUTH_CACHE_SECONDS`` from its cache, so the new leader waits
until that long after the old one's renew deadline before it writes. Its Deployment replaces the Pod with one
that stands by.
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

#: how long kube-apiserver accepts a token it authenticated without checking it again (its token cache,
#: TokenSuccessCacheTTL, 10 s: pkg/kubeapiserver/options/authentication.go)
AUTH_CACHE_SECONDS = 10.0


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
        pod_namespace: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
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
        #: the namespace of this replica's Pod (named ``identity``); None: not in a Pod, no one is fenced out
        self.pod_namespace = pod_namespace
        self.sleep = sleep
        #: the holder and renewTime of the Lease this replica took over after it expired (``fence_out``)
        self.took_over: tuple[str, float] | None = None

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
            if holder not in (None, "", self.identity):  # expired, not released: it may still be running
                self.took_over = (holder, _parse(spec.get("renewTime")))
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
                if self._renew() and self._fenced_out():
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

    def _fenced_out(self) -> bool:
        """After taking an expired Lease over: fence the previous holder out, then renew once more (the wait
        counts against this replica's own deadline). True when this replica may start writing."""
        if self.took_over is None:
            return True
        holder, renewed = self.took_over
        self.took_over = None
        try:
            self.fence_out(holder, renewed)
        except ApiException as exc:  # leading without the fence beats not leading at all
            log.warning(
                "could not fence the previous leader %s out (%s %s): a write it had in flight may still land",
                holder,
                exc.status,
                exc.reason,
            )
        return self._renew()

    def fence_out(self, holder: str, renewed: float) -> None:
        """Delete the Pod of ``holder`` (grace 0), whose Lease expired (last renewed at ``renewed``, wall clock),
        so that the API server refuses its token from now on; then wait out the API server's token cache: a write
        it started before its renew deadline may still be authenticated from there for ``AUTH_CACHE_SECONDS``.
        Only a Pod of this replica's namespace that runs as this replica's ServiceAccount is deleted."""
        if self.pod_namespace is None:
            return
        mine = self.kube.get("v1", "Pod", self.identity, self.pod_namespace)
        theirs = self.kube.get("v1", "Pod", holder, self.pod_namespace)
        if mine is None:
            log.warning(
                "no Pod %s/%s of this replica: not fencing %s out", self.pod_namespace, self.identity, holder
            )
            return
        if theirs is None:
            log.info("previous leader %s: no Pod of it to fence out in %s", holder, self.pod_namespace)
            return
        account = (mine.get("spec") or {}).get("serviceAccountName")
        if (theirs.get("spec") or {}).get("serviceAccountName") != account:
            log.warning("previous leader %s: its Pod does not run as %s; not deleting it", holder, account)
            return
        options = {"gracePeriodSeconds": 0, "preconditions": {"uid": theirs["metadata"]["uid"]}}
        self.kube.delete("v1", "Pod", holder, self.pod_namespace, body=options)
        log.warning(
            "fenced out the previous leader %s: deleted its Pod, so the API server refuses its token", holder
        )
        wait = renewed + self.renew_deadline_seconds + AUTH_CACHE_SECONDS - self.clock()
        if wait > 0:
            log.info("waiting %.1fs for the API server's token cache to forget %s", wait, holder)
            self.sleep(wait)

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
