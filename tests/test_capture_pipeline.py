"""``Capture``'s queue, spool and replay: a call is never slowed, and a record is kept exactly once or counted
as dropped. The store is the real SQLite store; ``Switchable`` adds only a way to take it down or slow it."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from slm_operator.capture import Capture, CaptureRecord, WriteResult
from slm_operator.capture.pipeline import DROP_REASONS
from slm_operator.capture.sqlite_store import SQLiteStore
from slm_operator.sanitize import Sanitizer
from tests.test_capture_record import make_record


class Switchable(SQLiteStore):
    """The SQLite store, which refuses connections while ``down``, acknowledges ``ack_delay`` seconds after
    committing (a slow store), and with ``hang_after_commit`` never acknowledges (the process dies there)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.down = False
        self.ack_delay = 0.0
        self.hang_after_commit = False
        self.calls = 0

    async def open(self) -> None:
        if self.down:
            raise ConnectionRefusedError("usage store down")
        await super().open()

    async def write(self, records: Sequence[CaptureRecord]) -> WriteResult:
        self.calls += 1
        if self.down:
            raise ConnectionRefusedError("usage store down")
        result = await super().write(records)
        if self.hang_after_commit:
            await asyncio.Event().wait()
        await asyncio.sleep(self.ack_delay)
        return result


def capture(tmp_path: Path, store: SQLiteStore, **kw: Any) -> Capture:
    kw.setdefault("retry_min", 0.01)
    kw.setdefault("retry_max", 0.05)
    kw.setdefault("batch_size", 16)
    return Capture("unused", spool_dir=tmp_path / "spool", store=store, registry=CollectorRegistry(), **kw)


async def until(cond: Callable[[], bool], what: str, limit: float = 30.0) -> None:
    """Wait for ``cond`` (not a timing assertion: the limit only stops a test that would hang)."""
    deadline = time.monotonic() + limit
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.005)


async def stored_ids(path: Path) -> list[str]:
    return [r.id for r in await stored_records(path)]


async def stored_records(path: Path) -> list[CaptureRecord]:
    async with SQLiteStore(path) as s:
        return [r async for r in s.export()]


def metric(c: Capture, name: str, **labels: str) -> float:
    value = c.registry.get_sample_value(name, labels)
    assert value is not None, name
    return value


def run(body: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(body())


def test_records_reach_the_store_redacted_off_the_event_loop(tmp_path: Path) -> None:
    threads: set[str] = set()

    class Recording(Sanitizer):
        def sanitize_record(self, value: Any) -> Any:
            threads.add(threading.current_thread().name)
            return super().sanitize_record(value)

    async def body() -> None:
        c = capture(tmp_path, SQLiteStore(tmp_path / "usage.db"), sanitizer_factory=Recording)
        await c.start()
        sent = [make_record(redact=["Email"]) for _ in range(50)] + [make_record() for _ in range(5)]
        assert all(c.submit(r) for r in sent)
        await c.stop()
        async with SQLiteStore(tmp_path / "usage.db") as s:
            kept = {r.id: r async for r in s.export()}
        assert set(kept) == {r.id for r in sent}
        assert all("jane@corp.example" not in kept[r.id].model_dump_json() for r in sent[:50])
        assert "jane@corp.example" in kept[sent[-1].id].model_dump_json()  # no classes asked, none redacted
        st = c.stats
        assert (st.queued, st.written, st.spooled, st.dropped) == (55, 55, 0, 0)
        assert metric(c, "slm_capture_written_total") == 55
        assert metric(c, "slm_capture_redactions_total", pii_class="Email") == 100
        assert threads and threading.main_thread().name not in threads

    run(body)


def test_store_down_spools_redacted_records_and_replays_each_exactly_once_when_it_is_back(
    tmp_path: Path,
) -> None:
    async def body() -> None:
        store = Switchable(tmp_path / "usage.db")
        store.down = True
        c = capture(tmp_path, store)
        await c.start()
        sent = [make_record(redact=["Email"]) for _ in range(300)]
        for i in range(0, 300, 30):  # a stream of calls while the store is down
            assert all(c.submit(r) for r in sent[i : i + 30])
            await asyncio.sleep(0.001)
        await until(lambda: c.stats.spooled == 300, "every record spooled")
        spooled = b"".join(p.read_bytes() for p in (tmp_path / "spool").glob("segment-*.jsonl"))
        assert spooled.count(b"\n") == 300 and b"jane@corp.example" not in spooled  # never raw PII on disk
        assert c.stats.spool_bytes == len(spooled) == metric(c, "slm_capture_spool_bytes")
        assert c.stats.store_errors >= 1 and c.stats.written == 0

        store.down = False
        await until(lambda: c.stats.written == 300, "the spool replayed")
        await c.stop()
        ids = await stored_ids(tmp_path / "usage.db")
        assert sorted(ids) == sorted(r.id for r in sent)  # each once
        st = c.stats
        assert (st.queued, st.spooled, st.replayed, st.written, st.dropped) == (300, 300, 300, 300, 0)
        assert st.spool_bytes == 0 and list((tmp_path / "spool").glob("segment-*")) == []

    run(body)


def test_a_crash_in_the_middle_of_a_replay_leaves_no_duplicate_and_no_gap(tmp_path: Path) -> None:
    sent = [make_record() for _ in range(200)]

    async def first_process() -> None:  # the store is down: everything goes to the spool, then a clean stop
        store = Switchable(tmp_path / "usage.db")
        store.down = True
        c = capture(tmp_path, store)
        await c.start()
        for r in sent:
            c.submit(r)
        await c.stop()
        assert c.stats.spooled == 200 and c.stats.dropped == 0

    async def second_process() -> None:  # replays; the store commits a batch, then the process dies
        store = Switchable(tmp_path / "usage.db")
        c = capture(tmp_path, store)
        await c.start()
        await until(lambda: store.calls >= 3, "three replayed batches")
        store.hang_after_commit = True
        await until(lambda: store.calls >= 4, "a batch committed but not acknowledged")
        assert c._task is not None
        c._task.cancel()  # killed: no drain, no cursor update for that batch
        await asyncio.gather(c._task, return_exceptions=True)
        assert 0 < len(await stored_ids(tmp_path / "usage.db")) < 200

    async def third_process() -> None:  # starts, finds the spool, replays the rest
        c = capture(tmp_path, SQLiteStore(tmp_path / "usage.db"))
        await c.start()
        await until(lambda: not c._backlog, "the spool replayed")
        await c.stop()
        assert c.stats.replayed > 0

    run(first_process)
    run(second_process)
    run(third_process)
    ids = asyncio.run(stored_ids(tmp_path / "usage.db"))
    assert len(ids) == 200 and set(ids) == {r.id for r in sent}
    assert list((tmp_path / "spool").glob("segment-*")) == []


def test_a_slow_store_is_spooled_around_and_a_late_commit_is_not_kept_twice(tmp_path: Path) -> None:
    async def body() -> None:
        store = Switchable(tmp_path / "usage.db")
        store.ack_delay = 0.5  # commits, but answers after the 0.05 s timeout
        c = capture(tmp_path, store, store_timeout=0.05)
        await c.start()
        sent = [make_record() for _ in range(40)]
        for r in sent:
            c.submit(r)
        await until(lambda: c.stats.spooled == 40, "spooled around the slow store")
        store.ack_delay = 0.0
        await until(lambda: not c._backlog and c._store_ok, "replayed")
        await c.stop()
        ids = await stored_ids(tmp_path / "usage.db")
        assert sorted(ids) == sorted(r.id for r in sent)

    run(body)


def test_when_queue_and_spool_are_full_records_are_dropped_and_counted(tmp_path: Path) -> None:
    async def body() -> None:
        store = Switchable(tmp_path / "usage.db")
        store.down = True
        size = len(make_record().model_dump_json()) + 1
        c = capture(tmp_path, store, queue_size=10, spool_max_bytes=size * 25, batch_size=4)
        await c.start()
        results = [c.submit(make_record()) for _ in range(30)]  # no await: the worker cannot take any yet
        assert results == [True] * 10 + [False] * 20
        assert c.stats.dropped_by_reason == {"queue_full": 20}
        submitted = 30
        for _ in range(10_000):  # calls keep coming: the spool fills, then the queue behind it
            if c.stats.spooled == 25 and c.stats.queue_depth == 10:
                break
            submitted += 1
            c.submit(make_record())
            await asyncio.sleep(0.001)
        assert c.stats.spooled == 25 and c.stats.queue_depth == 10
        assert not c.submit(make_record())
        submitted += 1
        await c.stop()
        st = c.stats
        assert st.spooled == 25 and st.written == 0
        assert st.queued + st.dropped_by_reason["queue_full"] == submitted
        assert st.spooled + st.dropped_by_reason["spool_full"] == st.queued  # never silently lost
        assert c.submit(make_record()) is False and c.stats.dropped_by_reason["stopped"] == 1
        assert (
            metric(c, "slm_capture_dropped_total", reason="queue_full") == st.dropped_by_reason["queue_full"]
        )
        assert (
            metric(c, "slm_capture_dropped_total", reason="spool_full") == st.dropped_by_reason["spool_full"]
        )

        c2 = capture(tmp_path, SQLiteStore(tmp_path / "usage.db"))  # the spooled ones arrive later
        await c2.start()
        await until(lambda: c2.stats.replayed == 25, "the spool replayed")
        await c2.stop()
        assert len(await stored_ids(tmp_path / "usage.db")) == 25

    run(body)


def test_a_record_whose_redaction_fails_is_dropped_not_kept_raw(tmp_path: Path) -> None:
    async def body() -> None:
        c = capture(tmp_path, SQLiteStore(tmp_path / "usage.db"))
        await c.start()
        good, bad = make_record(redact=["Email"]), make_record(redact=["Horoscope"])
        assert c.submit(good) and c.submit(bad)
        await c.stop()
        assert await stored_ids(tmp_path / "usage.db") == [good.id]
        assert c.stats.dropped_by_reason == {"redaction_failed": 1}

    run(body)


def test_stop_drains_within_the_timeout_and_counts_what_is_left(tmp_path: Path) -> None:
    async def body() -> None:
        store = Switchable(tmp_path / "usage.db")
        await store.open()
        store.hang_after_commit = True  # the first write never returns
        c = capture(tmp_path, store, batch_size=5)
        await c.start()
        for _ in range(20):
            c.submit(make_record())
        await until(lambda: store.calls == 1, "the first write")
        await c.stop(drain_timeout=0.2)
        st = c.stats
        assert st.dropped_by_reason == {"stopped": 20} and st.written == 0

    run(body)


def test_a_store_down_at_start_is_not_an_error(tmp_path: Path) -> None:
    async def body() -> None:
        store = Switchable(tmp_path / "usage.db")
        store.down = True
        c = capture(tmp_path, store)
        await c.start()
        c.submit(make_record())
        await until(lambda: c.stats.spooled == 1, "spooled")
        store.down = False
        await until(lambda: c.stats.written == 1, "written once the store is up")
        await c.stop()

    run(body)


def test_every_drop_reason_is_exported_at_zero_before_any_drop(tmp_path: Path) -> None:
    """So that an alert on rate(slm_capture_dropped_total[5m]) has a series to watch from the start."""
    c = capture(tmp_path, SQLiteStore(tmp_path / "usage.db"))
    values = {
        s.labels["reason"]: s.value
        for m in c.registry.collect()
        if m.name == "slm_capture_dropped"
        for s in m.samples
        if s.name.endswith("_total")
    }
    assert values == dict.fromkeys(DROP_REASONS, 0.0)


class InProcessTag:
    """A picklable sanitiser factory for ``redact_processes``: every string becomes ``redacted in PID``, and a
    request whose content says ``die`` kills the process redacting it (as an out-of-memory kill would)."""

    def __init__(self, classes: Sequence[str]) -> None:
        self.classes = list(classes)

    def sanitize_record(self, value: Any) -> tuple[Any, Counter[str]]:
        if "die" in json.dumps(value):
            os._exit(1)
        return json.loads(
            re.sub(r'"[^"]*@[^"]*"', f'"redacted in {os.getpid()}"', json.dumps(value))
        ), Counter({"Email": 2})


def _pids(kept: dict[str, CaptureRecord]) -> set[int]:
    return {int(m) for r in kept.values() for m in re.findall(r"redacted in (\d+)", r.model_dump_json())}


def test_redaction_processes_redact_beside_the_gateway_and_a_killed_one_loses_no_record(
    tmp_path: Path,
) -> None:
    async def body() -> None:
        c = capture(
            tmp_path, SQLiteStore(tmp_path / "usage.db"), sanitizer_factory=InProcessTag, redact_processes=2
        )
        await c.start()
        first = [make_record(redact=["Email"]) for _ in range(40)]
        assert all(c.submit(r) for r in first)
        await until(lambda: c.stats.written == 40, "the first records kept")
        kept = {r.id: r for r in (await stored_records(tmp_path / "usage.db"))}
        pids = _pids(kept)
        assert pids and os.getpid() not in pids and len(pids) <= 2  # redacted in the two processes, not here
        assert all("jane@corp.example" not in r.model_dump_json() for r in kept.values())

        os.kill(next(iter(pids)), signal.SIGKILL)  # a redaction process dies between two batches
        more = [make_record(redact=["Email"]) for _ in range(40)]
        for r in more:
            assert c.submit(r)
            await asyncio.sleep(0)
        # a record that kills its redaction process every time is dropped after one new try; the others are kept
        poison = make_record(redact=["Email"], request={"messages": [{"role": "user", "content": "die"}]})
        assert c.submit(poison)
        await c.stop()
        kept = {r.id: r for r in (await stored_records(tmp_path / "usage.db"))}
        assert set(kept) == {r.id for r in first + more}
        assert all("jane@corp.example" not in r.model_dump_json() for r in kept.values())
        assert os.getpid() not in _pids(kept)
        st = c.stats
        assert (st.written, st.dropped, st.dropped_by_reason) == (80, 1, {"redaction_failed": 1})
        assert metric(c, "slm_capture_redactions_total", pii_class="Email") == 160

    run(body)


def test_redact_processes_must_not_be_negative(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="redact_processes -1: give 0"):
        capture(tmp_path, SQLiteStore(tmp_path / "usage.db"), redact_processes=-1)
