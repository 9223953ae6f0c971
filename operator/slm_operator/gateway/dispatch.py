"""Slots per endpoint and the queue per backend: least outstanding requests with a bounded wait.

Calls in flight are counted per endpoint URL, across routes (two routes sending to the same replicas share its
``maxConcurrency``). A call that finds every endpoint of its backend at the cap waits in the backend's queue
(at most ``maxQueue`` calls) until a slot frees or its first-byte deadline passes. A call for a backend at zero
replicas that scales from zero (:func:`slm_operator.routing.activation.holds`) is held until the routing table
shows a ready endpoint (:meth:`Dispatcher.index` wakes it); held calls count as queued (the autoscaler reads
them) and share the ``maxQueue`` bound. Single-threaded: it lives on the gateway's event loop.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable

from slm_operator.routing.activation import released
from slm_operator.routing.balance import pick_endpoint
from slm_operator.routing.table import Backend


class QueueFull(Exception):
    """Every endpoint is at its cap and the backend's queue is full (an ``Overload``)."""


class NoEndpoint(Exception):
    """The backend has no ready endpoint (an ``Error``)."""


class Dispatcher:
    def __init__(self) -> None:
        self.in_flight: dict[str, int] = {}  # endpoint URL -> calls in flight
        self.busy: dict[str, int] = {}  # backend key -> its calls in flight (the metrics read it)
        self.keys: list[str] = []  # every backend key of the routing table
        self._waiters: dict[str, deque[asyncio.Future[None]]] = {}  # backend key -> calls waiting
        self._backends_of: dict[str, set[str]] = {}  # endpoint URL -> backend keys that use it
        #: backend key -> calls held for its first ready replica (scale from zero)
        self._held: dict[str, list[asyncio.Future[None]]] = {}
        self._rotor = 0

    def index(self, backends: Iterable[tuple[str, Backend]]) -> None:
        """Remember which backends use which endpoint (called when the routing table changes)."""
        out: dict[str, set[str]] = {}
        keys = []
        now: dict[str, Backend] = {}
        for key, b in backends:
            keys.append(key)
            now[key] = b
            for e in b.endpoints:
                out.setdefault(e.url, set()).add(key)
        self._backends_of = out
        self.keys = keys
        for key, held in self._held.items():
            if released(now.get(key)):
                for fut in held:
                    if not fut.done():
                        fut.set_result(None)

    def queued(self, key: str) -> int:
        """Calls waiting for a slot of the backend, or held for its first ready replica."""
        q = self._waiters.get(key)
        return (len(q) if q else 0) + self.held(key)

    def held(self, key: str) -> int:
        h = self._held.get(key)
        return len(h) if h else 0

    async def hold(self, key: str, backend: Backend) -> None:
        """Wait until :meth:`index` shows the backend with a ready endpoint (or gone); the caller bounds the wait
        with a timeout. Raises :class:`QueueFull` when ``maxQueue`` calls wait already."""
        if self.queued(key) >= backend.max_queue:
            raise QueueFull(f"backend {backend.name}: {self.queued(key)} calls are waiting already")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        held = self._held.setdefault(key, [])
        held.append(fut)
        try:
            await fut
        finally:
            held.remove(fut)
            if not held and self._held.get(key) is held:
                del self._held[key]

    def try_acquire(self, key: str, backend: Backend, exclude: frozenset[str] = frozenset()) -> str | None:
        """Take a slot on the least loaded ready endpoint (not in ``exclude`` if another is free), or None."""
        urls = backend.ready_urls
        if not urls:
            return None
        loads = [self.in_flight.get(u, 0) for u in urls]
        skip = frozenset(i for i, u in enumerate(urls) if u in exclude)
        if len(skip) == len(urls):
            skip = frozenset()  # every endpoint was tried: try one again (a stale keep-alive connection)
        self._rotor += 1
        i = pick_endpoint(loads, backend.max_concurrency, self._rotor % len(urls), skip)
        if i is None and skip:
            i = pick_endpoint(loads, backend.max_concurrency, self._rotor % len(urls))
        if i is None:
            return None
        self.in_flight[urls[i]] = loads[i] + 1
        self.busy[key] = self.busy.get(key, 0) + 1
        return urls[i]

    async def acquire(self, key: str, backend: Backend, exclude: frozenset[str] = frozenset()) -> str:
        """A slot, waiting in the backend's queue when needed; the caller bounds the wait with a timeout.

        Raises :class:`NoEndpoint` without a ready endpoint and :class:`QueueFull` when the queue is full.
        """
        if not backend.ready_urls:
            raise NoEndpoint(f"backend {backend.name} has no ready endpoint")
        url = self.try_acquire(key, backend, exclude)
        if url is not None:
            return url
        queue = self._waiters.setdefault(key, deque())
        if len(queue) >= backend.max_queue:
            raise QueueFull(f"backend {backend.name}: {len(queue)} calls are waiting already")
        while True:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            queue.append(fut)
            try:
                await fut
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled():
                    self._wake(key)  # woken, but leaving: the slot goes to the next call
                else:
                    self._discard(key, fut)
                raise
            url = self.try_acquire(key, backend, exclude)
            if url is not None:
                return url

    def _discard(self, key: str, fut: asyncio.Future[None]) -> None:
        queue = self._waiters.get(key)
        if queue is not None and fut in queue:
            queue.remove(fut)

    def release(self, key: str, url: str) -> None:
        """Give a slot back and wake one call waiting for a backend that uses this endpoint."""
        self.busy[key] = self.busy.get(key, 1) - 1
        n = self.in_flight.get(url, 0) - 1
        if n > 0:
            self.in_flight[url] = n
        else:
            self.in_flight.pop(url, None)
        for key in sorted(self._backends_of.get(url, ())):
            if self._wake(key):
                return

    def _wake(self, key: str) -> bool:
        queue = self._waiters.get(key)
        while queue:
            fut = queue.popleft()
            if not fut.done():
                fut.set_result(None)
                return True
        return False
