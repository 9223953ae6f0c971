"""``Capture``: the gateway hands each captured call to ``submit`` and forgets it; a worker redacts it and
writes it to the usage store, or to the spool while the store is slow or down, and replays the spool later.

Semantics (``docs/capture.md`` has the full statement):

* ``submit`` never blocks and never raises: it puts the record in a bounded in-memory queue, or counts it as
  dropped (``queue_full``) and returns False. Call it from the event loop's thread.
* One worker task takes what is queued (up to ``batch_size``), redacts it (the route's ``redact`` classes,
  through the injected sanitiser; a record whose redaction fails is dropped, never kept raw) in
  ``redact_processes`` processes, the batch split between them, or with 0 in a thread of this process, and
  writes the batch to the store within ``store_timeout``. A failed or slow write marks the store down: that
  batch and the next ones go to the spool (already redacted) until a retry (backing off from ``retry_min`` to
  ``retry_max`` seconds) succeeds. Replay is in spool order, one batch at a time between new batches; a record
  replayed twice (a crash between the store's commit and the cursor) is kept once, the store ignoring a known id.
* When the spool is full too, the batch in hand waits for the store, the queue fills, and ``submit`` drops.
* ``stop`` refuses new records, drains the queue to the store or the spool within ``drain_timeout``, and counts
  whatever is left as dropped (``stopped``). ``start`` replays what an earlier process left in the spool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry
from prometheus_client import Counter as PromCounter
from prometheus_client import Gauge as PromGauge

from slm_operator.capture.record import CaptureRecord
from slm_operator.capture.redact import (
    BatchRedactor,
    RedactedBatch,
    SanitizerFactory,
    default_sanitizer_factory,
)
from slm_operator.capture.spool import Spool, SpoolBatch
from slm_operator.capture.store import Store
from slm_operator.capture.stores import open_store

log = logging.getLogger(__name__)
T = TypeVar("T")

#: why a record was not kept (the ``reason`` label of slm_capture_dropped_total)
DROP_REASONS = (
    "queue_full",
    "spool_full",
    "redaction_failed",
    "store_rejected",
    "spool_corrupt",
    "stopped",
    "error",
)
DROP_LOG_INTERVAL = 10.0  # seconds between two warnings about drops
PARENT_CHECK_SECONDS = 1.0  # how often a redaction process checks that the gateway's process is still there


@dataclass(frozen=True)
class CaptureStats:
    queued: int  # accepted by submit()
    spooled: int  # appended to the spool
    dropped: int  # not kept, all reasons (dropped_by_reason)
    written: int  # acknowledged by the store, directly or from the spool
    replayed: int = 0  # of written, those that came from the spool
    store_errors: int = 0  # failed or timed-out store calls
    queue_depth: int = 0  # records in the queue now
    spool_bytes: int = 0  # size of the spool folder's segments now
    dropped_by_reason: dict[str, int] = field(default_factory=dict)


class CaptureMetrics:
    """The capture series (docs/observability.md), registered in ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.queued = PromCounter("slm_capture_queued", "Captured calls accepted by the queue", registry=r)
        self.written = PromCounter(
            "slm_capture_written",
            "Captured calls the usage store acknowledged (directly or replayed)",
            registry=r,
        )
        self.spooled = PromCounter(
            "slm_capture_spooled", "Captured calls written to the local spool", registry=r
        )
        self.replayed = PromCounter(
            "slm_capture_replayed", "Spooled calls the usage store acknowledged on replay", registry=r
        )
        self.dropped = PromCounter(
            "slm_capture_dropped", "Captured calls not kept, by reason", ["reason"], registry=r
        )
        self.store_errors = PromCounter(
            "slm_capture_store_errors", "Usage store writes that failed or timed out", registry=r
        )
        self.redactions = PromCounter(
            "slm_capture_redactions",
            "PII values replaced in captured calls, by class",
            ["pii_class"],
            registry=r,
        )
        self.queue_depth = PromGauge(
            "slm_capture_queue_depth", "Captured calls waiting in the queue", registry=r
        )
        self.spool_bytes = PromGauge("slm_capture_spool_bytes", "Bytes of the spool's segments", registry=r)
        for reason in DROP_REASONS:
            self.dropped.labels(reason)


class Capture:
    def __init__(
        self,
        store_url: str,
        *,
        spool_dir: Path,
        queue_size: int = 10000,
        sanitizer_factory: SanitizerFactory = default_sanitizer_factory,
        batch_size: int = 256,
        spool_max_bytes: int = 1 << 30,
        spool_segment_bytes: int = 16 << 20,
        spool_fsync: bool = True,
        store_timeout: float = 5.0,
        retry_min: float = 0.2,
        retry_max: float = 10.0,
        registry: CollectorRegistry | None = None,
        store: Store | None = None,
        redact_processes: int = 0,
    ) -> None:
        """``store_url`` as ``open_store`` takes it (ValueError for a bad one), or ``store`` to pass one built
        already. Metrics go to ``registry`` (a new one when None: ``self.registry``).

        ``redact_processes``: redact in that many processes (spawned, each with its own sanitisers; the
        ``sanitizer_factory`` must be picklable, a module-level function), so redaction never holds the
        interpreter lock of the process serving calls; 0 redacts in a thread of this process."""
        if redact_processes < 0:
            raise ValueError(f"redact_processes {redact_processes}: give 0 (a thread) or more processes")
        self.store = store if store is not None else open_store(store_url)
        self.spool_dir = Path(spool_dir)
        self.batch_size = batch_size
        self.store_timeout = store_timeout
        self.retry_min, self.retry_max = retry_min, retry_max
        self._spool_args: dict[str, Any] = {
            "max_bytes": spool_max_bytes,
            "segment_bytes": spool_segment_bytes,
            "fsync": spool_fsync,
        }
        self._sanitizer_factory = sanitizer_factory
        self.redact_processes = redact_processes
        self._redactor = BatchRedactor(sanitizer_factory)  # with redact_processes 0, in the redact thread
        self._problems: set[str] = set()  # sanitiser failures already logged
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = CaptureMetrics(self.registry)
        self._queue: asyncio.Queue[CaptureRecord] = asyncio.Queue(maxsize=queue_size)
        self.metrics.queue_depth.set_function(self._queue.qsize)
        self.metrics.spool_bytes.set_function(lambda: self._spool_bytes)
        self._counts: Counter[str] = Counter()
        self._dropped: Counter[str] = Counter()
        self._spool: Spool | None = None
        self._spool_bytes = 0
        self._backlog = False  # the spool holds records not yet replayed
        self._held: list[CaptureRecord] = []  # redacted, but neither the store nor the spool took them yet
        self._inflight = 0  # records taken from the queue and not yet placed
        self._store_ok = True
        self._backoff = retry_min
        self._retry_at = 0.0
        self._closed = False
        self._stopping = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._redact_pool: Executor = self._new_redact_pool()
        self._recovering = asyncio.Lock()  # parts whose redaction process died, sent again one at a time
        self._io_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="capture-spool")
        self._last_drop_log = 0.0
        self._unlogged_drops = 0

    # the gateway's side

    def submit(self, record: CaptureRecord) -> bool:
        """Queue a record for the store; never blocks, never raises. False: dropped (and counted)."""
        try:
            if self._closed:
                self._drop("stopped")
                return False
            self._queue.put_nowait(record)
        except asyncio.QueueFull:
            self._drop("queue_full")
            return False
        except Exception:  # submit must never fail the call it records
            log.exception("capture: submit failed")
            self._drop("error")
            return False
        self._counts["queued"] += 1
        self.metrics.queued.inc()
        return True

    @property
    def stats(self) -> CaptureStats:
        c = self._counts
        return CaptureStats(
            queued=c["queued"],
            spooled=c["spooled"],
            dropped=sum(self._dropped.values()),
            written=c["written"],
            replayed=c["replayed"],
            store_errors=c["store_errors"],
            queue_depth=self._queue.qsize(),
            spool_bytes=self._spool_bytes,
            dropped_by_reason=dict(self._dropped),
        )

    async def start(self) -> None:
        """Open the spool (replaying what an earlier process left), try the store, start the worker. A store
        that is down is not an error: records spool until it is up."""
        self._spool = await self._io(Spool, self.spool_dir, **self._spool_args)
        self._backlog, self._spool_bytes = await self._io(self._spool_state)
        if self._backlog:
            log.info("capture: %d bytes spooled by an earlier process will be replayed", self._spool_bytes)
        try:
            async with asyncio.timeout(self.store_timeout):
                await self.store.open()
        except Exception as exc:
            self._store_failed(exc)
        self._task = asyncio.create_task(self._run(), name="capture-worker")

    async def stop(self, drain_timeout: float = 10) -> None:
        """Refuse new records, drain the queue to the store or the spool, close the store."""
        self._closed = True
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await asyncio.wait({self._task}, timeout=drain_timeout)
            if not self._task.done():
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
        left = self._queue.qsize() + len(self._held) + self._inflight
        while not self._queue.empty():
            self._queue.get_nowait()
        self._held, self._inflight = [], 0
        if left:
            log.warning("capture: %d records not drained within %g s", left, drain_timeout)
            self._drop("stopped", left)
        try:
            await self.store.close()
        except Exception:
            log.exception("capture: closing the usage store failed")
        # redaction processes exit with the capture (waited for, briefly: one stuck in a batch is left to end)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await asyncio.to_thread(self._redact_pool.shutdown, wait=True, cancel_futures=True)
        self._io_pool.shutdown(wait=False)

    # the worker

    async def _run(self) -> None:
        while not (self._stopping and self._queue.empty() and not self._held):
            try:
                await self._step()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug in one step must not end capture; the records of the step are counted
                log.exception("capture: worker step failed")
                self._drop("error", self._inflight)
                self._inflight = 0
                await asyncio.sleep(self.retry_min)

    async def _step(self) -> None:
        if self._held:
            await self._place_held()
            if self._held:
                if self._stopping:
                    self._drop("spool_full", len(self._held))
                    self._held = []
                else:
                    await self._wait(max(0.0, self._retry_at - time.monotonic()))
                return
        batch = await self._take(self._idle_timeout())
        if batch:
            self._inflight = len(batch)  # counted as dropped by stop() if the worker is cancelled now
            await self._deliver(await self._redact(batch))
            self._inflight = 0
        if not self._stopping:
            await self._replay_some()

    def _idle_timeout(self) -> float | None:
        """How long to wait for new records: forever, unless spooled records wait for the store."""
        if not self._backlog:
            return None
        return 0.0 if self._store_ok else max(0.0, self._retry_at - time.monotonic())

    async def _take(self, timeout: float | None) -> list[CaptureRecord]:
        if self._queue.empty() and not self._stopping and timeout != 0.0:
            getter = asyncio.ensure_future(self._queue.get())
            waker = asyncio.ensure_future(self._wake.wait())
            done, pending = await asyncio.wait(
                {getter, waker}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            for task in pending:
                task.cancel()  # a cancelled get leaves its record in the queue
            if getter in done:
                return self._fill([getter.result()])
        return self._fill([])

    def _fill(self, batch: list[CaptureRecord]) -> list[CaptureRecord]:
        while len(batch) < self.batch_size and not self._queue.empty():
            batch.append(self._queue.get_nowait())
        return batch

    async def _wait(self, seconds: float) -> None:
        if not self._stopping:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    await self._wake.wait()

    def _new_redact_pool(self) -> Executor:
        if not self.redact_processes:
            return ThreadPoolExecutor(max_workers=1, thread_name_prefix="capture-redact")
        # spawned, not forked: this process runs an event loop and threads whose locks a fork would copy held
        return ProcessPoolExecutor(
            max_workers=self.redact_processes,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_redact_process,
            initargs=(self._sanitizer_factory,),
        )

    async def _redact(self, batch: list[CaptureRecord]) -> list[CaptureRecord]:
        if not any(r.redact for r in batch):
            return batch
        n = max(1, min(self.redact_processes, len(batch)))
        parts = [batch[i * len(batch) // n : (i + 1) * len(batch) // n] for i in range(n)]
        done = await asyncio.gather(*(self._redact_part(part) for part in parts))
        kept: list[CaptureRecord] = []
        for part in done:
            kept += part.kept
            for cls, count in part.counts.items():
                self.metrics.redactions.labels(cls).inc(count)
            for problem in set(part.problems) - self._problems:
                log.warning("capture: %s: the calls of its routes are dropped", problem)
                self._problems.add(problem)
            if part.failed:
                self._drop("redaction_failed", part.failed)
        return kept

    async def _redact_part(self, part: list[CaptureRecord]) -> RedactedBatch:
        """One part of a batch redacted in the thread or a process. When a redaction process dies (killed, out of
        memory, a crash on some input) the pool is replaced and the part's records are sent again one at a time,
        one part after another: a record that kills its process on both of its tries alone is dropped, the others
        are kept."""
        if not self.redact_processes:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._redact_pool, self._redactor, part)
        try:
            return await self._in_process(part)
        except BrokenProcessPool:
            pass
        out = RedactedBatch()
        async with self._recovering:
            for record in part:
                for _ in range(2):
                    try:
                        one = await self._in_process([record])
                        break
                    except BrokenProcessPool:
                        continue
                else:
                    one = RedactedBatch(failed=1)
                out.kept += one.kept
                out.failed += one.failed
                out.counts.update(one.counts)
                out.problems += one.problems
        return out

    async def _in_process(self, part: list[CaptureRecord]) -> RedactedBatch:
        pool = self._redact_pool
        try:
            return await asyncio.get_running_loop().run_in_executor(pool, _redact_in_process, part)
        except BrokenProcessPool:
            if pool is self._redact_pool:  # the first to see this pool broken replaces it
                log.warning("capture: a redaction process died; starting new ones")
                pool.shutdown(wait=False, cancel_futures=True)
                self._redact_pool = self._new_redact_pool()
            raise

    async def _deliver(self, records: list[CaptureRecord]) -> None:
        if not records:
            return
        if self._store_ok and await self._write(records):
            return
        self._held = await self._to_spool(records)

    async def _write(self, records: Sequence[CaptureRecord], *, replay: bool = False) -> bool:
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for returns the result, swallowing a
            # cancellation, when the write completes just as the worker is cancelled
            async with asyncio.timeout(self.store_timeout):
                result = await self.store.write(records)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._store_failed(exc)
            return False
        if not self._store_ok:
            log.info("capture: the usage store is back; replaying the spool")
        self._store_ok, self._backoff = True, self.retry_min
        kept = len(records) - len(result.rejected)
        self._count("written", kept)
        if replay:
            self._count("replayed", kept)
        if result.rejected:
            log.warning(
                "capture: the usage store rejected %d records: %s", len(result.rejected), result.rejected
            )
            self._drop("store_rejected", len(result.rejected))
        return True

    def _store_failed(self, exc: BaseException) -> None:
        self._count("store_errors")
        if self._store_ok:
            log.warning(
                "capture: the usage store failed (%s); spooling to %s until it is back",
                _describe(exc),
                self.spool_dir,
            )
        self._store_ok = False
        self._retry_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, self.retry_max)

    def _due(self) -> bool:
        return self._store_ok or time.monotonic() >= self._retry_at

    async def _to_spool(self, records: list[CaptureRecord]) -> list[CaptureRecord]:
        """Append what fits; returns the rest (held until the store or the spool takes it)."""
        n, self._spool_bytes = await self._io(self._spool_append, records)
        if n:
            self._backlog = True
            self._count("spooled", n)
        return records[n:]

    async def _place_held(self) -> None:
        if not self._due():
            return
        await self._replay_some()  # probes the store, and frees spool room when it is back
        if self._store_ok and await self._write(self._held):
            self._held = []
            return
        self._held = await self._to_spool(self._held)

    async def _replay_some(self) -> None:
        if not self._backlog or not self._due():
            return
        spool = self._spool
        assert spool is not None
        batch: SpoolBatch | None = await self._io(spool.read, self.batch_size)
        if batch is None:
            self._backlog = False
            return
        if batch.records and not await self._write(batch.records, replay=True):
            return
        self._backlog, self._spool_bytes = await self._io(self._spool_commit, batch)
        if batch.corrupt:
            self._drop("spool_corrupt", batch.corrupt)

    # the spool, in the I/O thread

    def _spool_state(self) -> tuple[bool, int]:
        assert self._spool is not None
        return self._spool.has_backlog(), self._spool.size_bytes

    def _spool_append(self, records: list[CaptureRecord]) -> tuple[int, int]:
        assert self._spool is not None
        n = self._spool.append([r.model_dump_json().encode() for r in records])
        return n, self._spool.size_bytes

    def _spool_commit(self, batch: SpoolBatch) -> tuple[bool, int]:
        assert self._spool is not None
        self._spool.commit(batch)
        return self._spool_state()

    async def _io(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        result: T = await loop.run_in_executor(self._io_pool, lambda: fn(*args, **kwargs))
        return result

    # counting

    def _count(self, what: str, n: int = 1) -> None:
        self._counts[what] += n
        getattr(self.metrics, what).inc(n)

    def _drop(self, reason: str, n: int = 1) -> None:
        self._dropped[reason] += n
        self.metrics.dropped.labels(reason).inc(n)
        self._unlogged_drops += n
        now = time.monotonic()
        if now - self._last_drop_log >= DROP_LOG_INTERVAL:
            log.warning(
                "capture: dropped %d calls (latest reason %s; totals %s)",
                self._unlogged_drops,
                reason,
                dict(self._dropped),
            )
            self._last_drop_log, self._unlogged_drops = now, 0


# a redaction process (``redact_processes``)

_process_redactor: BatchRedactor | None = None


def _start_redact_process(factory: SanitizerFactory) -> None:
    """A redaction process's start: it builds its sanitisers on first use. It ignores SIGINT and SIGTERM, which
    a terminal or ``kill`` of the process group sends it too: the gateway stops it once the queue is drained.
    It exits when the gateway's process is gone without stopping it (SIGKILL): nothing else would end it."""
    global _process_redactor
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _process_redactor = BatchRedactor(factory)
    parent = os.getppid()

    def exit_with_parent() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_SECONDS)
        os._exit(0)

    threading.Thread(target=exit_with_parent, name="exit-with-gateway", daemon=True).start()


def _redact_in_process(part: list[CaptureRecord]) -> RedactedBatch:
    assert _process_redactor is not None, "started by _start_redact_process"
    return _process_redactor(part)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
