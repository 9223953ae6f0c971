"""The only module that talks to the Kubernetes API (through the official client's DynamicClient).

Writes use server-side apply with the ``slm-operator`` field manager where slm-operator owns the object
(pods, Services, ConfigMap keys, node labels it sets); read-modify-write paths re-read and retry on 409.
A request the API server refuses with 429 Too Many Requests (API Priority and Fairness, the max-inflight limits)
is sent again after the server's Retry-After or a longer exponential back-off, a bounded number of times, as
client-go does: a throttled operator slows down instead of failing its pass at once or retrying in a tight loop.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import ConflictError, NotFoundError
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from slm_operator import metrics
from slm_operator.contract import FIELD_MANAGER
from slm_operator.events import event_body

log = logging.getLogger("slm_operator.kube")
T = TypeVar("T")
Items = list[dict[str, Any]]  # (``Kube.list`` shadows the builtin inside the class)


def retry_on_conflict(fn: Callable[[], T], attempts: int = 5) -> T:
    """Run a read-modify-write step again after a 409 Conflict (the step re-reads the object itself)."""
    for i in range(attempts):
        try:
            return fn()
        except (ConflictError, ApiException) as exc:
            if getattr(exc, "status", None) != 409 or i == attempts - 1:
                raise
            log.info("conflict, re-reading and retrying (%d/%d)", i + 1, attempts)
            time.sleep(0.05 * (i + 1))
    raise AssertionError("unreachable")


#: the verbs :attr:`Kube.fence` guards, and their HTTP methods
WRITE_VERBS = frozenset({"apply", "create", "delete", "update", "patch"})
SENDING_WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})

#: times a request refused with 429 is sent again before the caller sees the refusal (client-go: 10, with the
#: server's Retry-After only); with the back-off below a request gives up after waiting 1+2+4+8+8 s (times jitter)
THROTTLE_RETRIES = 5
#: longest wait before a re-send, whatever Retry-After says (seconds)
THROTTLE_MAX_WAIT = 8.0
#: the wait when the 429 carries no usable Retry-After (kube-apiserver sends 1)
DEFAULT_RETRY_AFTER = 1.0


def retry_after(exc: ApiException) -> float:
    """The seconds a 429's ``Retry-After`` header asks for (DEFAULT_RETRY_AFTER when absent or not a number)."""
    raw = (exc.headers or {}).get("Retry-After")
    try:
        seconds = float(raw) if raw is not None else DEFAULT_RETRY_AFTER
    except ValueError:
        return DEFAULT_RETRY_AFTER
    return seconds if seconds >= 0 else DEFAULT_RETRY_AFTER


def throttle_wait(attempt: int, after: float, jitter: float) -> float:
    """Seconds to wait before sending a request again that was refused with 429 for the ``attempt``-th time
    (0-based): the server's Retry-After ``after`` or, when longer, an exponential back-off from 1 s; at most
    THROTTLE_MAX_WAIT; times ``jitter`` (1 to 1.5), so that the concurrent pod creates of a pass, refused
    together, do not all come back at the same instant."""
    return min(THROTTLE_MAX_WAIT, max(after, 2.0**attempt)) * jitter


def _counted(verb: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Count a :class:`Kube` method's API requests (``Kube.requests``, slm_api_requests_total) and its failures
    by verb and HTTP status (slm_api_errors_total)."""

    def wrap(fn: Callable[..., T]) -> Callable[..., T]:
        def inner(self: Kube, *args: Any, **kw: Any) -> T:
            for attempt in range(THROTTLE_RETRIES + 1):
                if verb in WRITE_VERBS and self.fence is not None:
                    self.fence()  # raises when this replica may no longer write (leader.py: fencing)
                self.requests += 1
                metrics.count_api_request(verb)
                try:
                    return fn(self, *args, **kw)
                except ApiException as exc:
                    metrics.count_api_error(verb, exc.status or "unknown")
                    if exc.status != 429 or attempt == THROTTLE_RETRIES:
                        raise
                    wait = throttle_wait(attempt, retry_after(exc), self.jitter())
                    log.info("%s throttled by the API server (429), sending it again in %.1fs", verb, wait)
                    self.sleep(wait)
            raise AssertionError("unreachable")

        inner.__name__ = fn.__name__
        inner.__doc__ = fn.__doc__
        return inner

    return wrap


def _fenced_pool(pool: type[Any], connection: type[Any], kube: Kube) -> type[Any]:
    """A urllib3 connection pool class whose connections call ``kube.fence`` before sending any byte of a write."""

    class Fenced(connection):  # type: ignore[misc]
        _write = False

        def putrequest(self, method: str, url: str, *args: Any, **kw: Any) -> None:
            self._write = method in SENDING_WRITES
            super().putrequest(method, url, *args, **kw)

        def send(self, data: Any) -> None:
            if self._write and kube.fence is not None:
                kube.fence()
            super().send(data)

    return type(f"Fenced{pool.__name__}", (pool,), {"ConnectionCls": Fenced})


def _json(_client: Any, data: Any) -> Any:
    """The DynamicClient's serializer for our calls: the answer's JSON as it is. Its default, a ResourceInstance,
    copies every object into attribute objects first (for a list of 2,000 pods that more than doubled the memory
    the answer takes)."""
    return data


class Kube:
    """Typed-enough access to the resources slm-operator uses."""

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self._dyn: DynamicClient | None = None
        self._res: dict[tuple[str, str], Any] = {}
        self.requests = 0  # API requests made (for the bench: requests per reconcile)
        # called before every write; raises to refuse it (the leader's renew deadline: leader.py)
        self.fence: Callable[[], None] | None = None
        # the wait before re-sending a throttled request, and its jitter (injectable for tests)
        self.sleep: Callable[[float], None] = time.sleep
        self.jitter: Callable[[], float] = lambda: random.uniform(1.0, 1.5)
        # called with what the API server answered to each write (the watch caches: cache.py)
        self.on_write: Callable[[dict[str, Any]], None] | None = None
        self._fence_at_send()

    def _fence_at_send(self) -> None:
        """Check the fence once more as a write's first bytes leave, in its HTTP connection: a thread that passed
        the check in ``_counted`` and was then paused (SIGSTOP, a frozen VM) past the renew deadline must not send
        its write when it resumes. Checked at the socket, the window between the check and the send is a few
        bytecodes. The client must be this Kube's own (the Lease's renewals use another)."""
        manager = getattr(getattr(self.api, "rest_client", None), "pool_manager", None)
        if manager is None:
            return
        manager.clear()
        manager.pool_classes_by_scheme = {
            "http": _fenced_pool(HTTPConnectionPool, HTTPConnection, self),
            "https": _fenced_pool(HTTPSConnectionPool, HTTPSConnection, self),
        }

    def _wrote(self, obj: dict[str, Any]) -> dict[str, Any]:
        if self.on_write is not None:
            self.on_write(obj)
        return obj

    @property
    def dyn(self) -> DynamicClient:
        """The DynamicClient, made on first use (its discovery asks the API server)."""
        if self._dyn is None:
            self._dyn = DynamicClient(self.api)  # type: ignore[no-untyped-call]  # no annotations upstream
        return self._dyn

    def resource(self, api_version: str, kind: str) -> Any:
        key = (api_version, kind)
        if key not in self._res:
            self._res[key] = self.dyn.resources.get(api_version=api_version, kind=kind)
        return self._res[key]

    # -------------------------------------------------------------------------------------- reads

    def _list(
        self, api_version: str, kind: str, namespace: str | None, kw: dict[str, Any]
    ) -> tuple[Items, str]:
        res = self.resource(api_version, kind)
        out = (
            res.get(namespace=namespace, serializer=_json, **kw)
            if namespace
            else res.get(serializer=_json, **kw)
        )
        items: Items = out.get("items") or []
        for i in items:
            i.setdefault("apiVersion", api_version)
            i.setdefault("kind", kind)
        return items, str((out.get("metadata") or {}).get("resourceVersion") or "")

    @_counted("list")
    def list(
        self, api_version: str, kind: str, namespace: str | None = None, **kw: Any
    ) -> list[dict[str, Any]]:
        return self._list(api_version, kind, namespace, kw)[0]

    @_counted("list")
    def list_versioned(
        self, api_version: str, kind: str, namespace: str | None = None, **kw: Any
    ) -> tuple[Items, str]:
        """The objects and the list's resourceVersion (where a watch of them starts)."""
        return self._list(api_version, kind, namespace, kw)

    @_counted("get")
    def get(
        self, api_version: str, kind: str, name: str, namespace: str | None = None
    ) -> dict[str, Any] | None:
        try:
            obj: dict[str, Any] = self.resource(api_version, kind).get(
                name=name, namespace=namespace, serializer=_json
            )
            return obj
        except NotFoundError:
            return None

    # -------------------------------------------------------------------------------------- writes

    @_counted("apply")
    def apply(
        self, obj: dict[str, Any], *, status: bool = False, field_manager: str = FIELD_MANAGER
    ) -> dict[str, Any]:
        """Server-side apply (force: slm-operator owns the fields it sets). The autoscaler applies its part of
        an SLMDeployment's status as its own field manager, so the planner's applies leave it alone."""
        res = self.resource(obj["apiVersion"], obj["kind"])
        if status:
            res = res.status
        meta = obj["metadata"]
        out: dict[str, Any] = res.server_side_apply(
            body=obj,
            name=meta["name"],
            namespace=meta.get("namespace"),
            field_manager=field_manager,
            force_conflicts=True,
            serializer=_json,
        )
        return self._wrote(out)

    @_counted("create")
    def create(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        """Create; None when it already exists (a restart racing its own earlier create)."""
        try:
            out: dict[str, Any] = self.resource(obj["apiVersion"], obj["kind"]).create(
                body=obj,
                namespace=obj["metadata"].get("namespace"),
                field_manager=FIELD_MANAGER,
                serializer=_json,
            )
            return self._wrote(out)
        except ApiException as exc:
            if exc.status == 409:
                return None
            raise

    @_counted("delete")
    def delete(self, api_version: str, kind: str, name: str, namespace: str | None = None, **kw: Any) -> bool:
        try:
            self.resource(api_version, kind).delete(name=name, namespace=namespace, serializer=_json, **kw)
            return True
        except NotFoundError:
            return False

    @_counted("update")
    def replace(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Replace the whole object; its ``metadata.resourceVersion`` makes a stale write fail with 409."""
        out: dict[str, Any] = self.resource(obj["apiVersion"], obj["kind"]).replace(
            body=obj, namespace=obj["metadata"].get("namespace"), serializer=_json
        )
        return self._wrote(out)

    @_counted("patch")
    def merge_patch(
        self, api_version: str, kind: str, name: str, patch: dict[str, Any], namespace: str | None = None
    ) -> dict[str, Any] | None:
        try:
            out: dict[str, Any] = self.resource(api_version, kind).patch(
                body=patch,
                name=name,
                namespace=namespace,
                content_type="application/merge-patch+json",
                field_manager=FIELD_MANAGER,
                serializer=_json,
            )
            return self._wrote(out)
        except NotFoundError:
            return None

    def event(
        self, involved: dict[str, Any], type_: str, reason: str, message: str, component: str = "slm-operator"
    ) -> None:
        """A core/v1 Event on an object (deduplicated by the API server's aggregation on the client side)."""
        meta = involved["metadata"]
        ns = meta.get("namespace") or "default"
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        body = event_body(involved, type_, reason, message, component, now)
        if self.fence is not None:
            self.fence()
        try:
            self.requests += 1
            self.resource("v1", "Event").create(body=body, namespace=ns, serializer=_json)
        except ApiException as exc:  # events are best effort
            log.warning("could not post event %s on %s: %s", reason, meta["name"], exc.reason)

    def watch(self, api_version: str, kind: str, **kw: Any) -> Iterator[dict[str, Any]]:
        """One watch request (``timeout`` seconds at most): its events, each with ``type`` and ``raw_object``.
        Raises ApiException(410) when ``resource_version`` is too old (the caller lists again)."""
        self.requests += 1
        metrics.count_api_request("watch")
        res = self.resource(api_version, kind)
        timeout = kw.pop("timeout", None)
        # the DynamicClient's own watch wraps every event's object in a ResourceInstance: read the JSON as it is
        watcher = watch.Watch()  # type: ignore[no-untyped-call]  # kubernetes.watch has no annotations
        yield from watcher.stream(res.get, serialize=False, timeout_seconds=timeout, **kw)  # type: ignore[no-untyped-call]
