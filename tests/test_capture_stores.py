"""Both usage stores (SQLite, and a real PostgreSQL server: tests/postgres.py) keep the same promises: schema
created and versioned on open, a record kept once per id, exports in time order with filters, retention,
erasure of one caller, and one bad record never holding back a batch."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from slm_operator.capture import CaptureRecord, Store, StoreError, open_store
from slm_operator.capture.postgres_store import PostgresStore
from slm_operator.capture.sqlite_store import SQLiteStore
from tests.postgres import PostgresServer, postgres_server
from tests.test_capture_record import make_record

T0 = datetime(2026, 5, 1, tzinfo=UTC)
_db_numbers = itertools.count()


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    with postgres_server() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite://{tmp_path}/usage.db"
    server: PostgresServer = request.getfixturevalue("pg")
    return server.create_database(f"t{next(_db_numbers)}_{uuid.uuid4().hex[:6]}")


def run(url: str, body: Callable[[Store], Any]) -> Any:
    async def main() -> Any:
        async with open_store(url) as store:
            return await body(store)

    return asyncio.run(main())


async def export_all(store: Store, **kw: Any) -> list[CaptureRecord]:
    return [r async for r in store.export(**kw)]


def records(n: int, **over: Any) -> list[CaptureRecord]:
    return [make_record(time=T0 + timedelta(minutes=i), **over) for i in range(n)]


def test_open_urls() -> None:
    assert isinstance(open_store("sqlite:///var/lib/slm/usage.db"), SQLiteStore)
    assert open_store("sqlite:///var/lib/slm/usage.db").path == Path("/var/lib/slm/usage.db")  # type: ignore[attr-defined]
    assert open_store("sqlite:usage.db").path == Path("usage.db")  # type: ignore[attr-defined]
    assert isinstance(open_store("postgresql://slm@db:5432/usage"), PostgresStore)
    assert isinstance(open_store("postgres://slm@db/usage"), PostgresStore)
    for bad, says in [
        ("mysql://db/usage", "unsupported store URL"),
        ("sqlite://host/usage.db", "no host"),
        ("sqlite:///", "no database file"),
    ]:
        with pytest.raises(ValueError, match=says):
            open_store(bad)


def test_the_schema_is_created_on_open_versioned_and_not_reapplied(store_url: str) -> None:
    async def body(store: Store) -> None:
        assert await store.schema_version() == 2 and await store.count() == 0
        await store.close()
        await store.open()  # a second open finds version 2 and applies nothing
        assert await store.schema_version() == 2

    run(store_url, body)


def test_a_store_with_a_newer_schema_is_refused_with_what_to_do(store_url: str) -> None:
    async def bump(store: Store) -> None:
        if isinstance(store, SQLiteStore):
            await store._call(
                lambda: store._connection().execute("INSERT INTO schema_version VALUES (7, 'x', 'now')")
            )
        else:
            assert isinstance(store, PostgresStore)
            pool = await store._get_pool()
            await pool.execute("INSERT INTO schema_version VALUES (7, 'x', now())")

    run(store_url, bump)
    with pytest.raises(StoreError, match=r"version 7, newer than this slm-operator knows \(2\): upgrade"):
        run(store_url, lambda store: store.count())


def test_a_record_is_kept_once_per_id_and_comes_back_whole(store_url: str) -> None:
    batch = records(5)
    batch[2] = batch[2].model_copy(
        update={"response": None, "task": None, "ttft_ms": 3.25, "fallback_reason": "invalid_json",
                "request": {"messages": [{"role": "user", "content": "héllo ✓ \u2028 \"quoted\""}],
                            "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
                "redact": ["Email", "PhoneNumber"], "stream": True, "prompt_tokens": 7, "completion_tokens": 0}
    )  # fmt: skip

    async def body(store: Store) -> list[Any]:
        first = await store.write(batch)
        later = [make_record(time=T0 + timedelta(hours=1)) for _ in range(2)]
        again = await store.write(batch[1:] + later)  # a replay overlapping what is there
        return [first, again, await store.count(), await export_all(store)]

    first, again, count, exported = run(store_url, body)
    assert (first.inserted, again.inserted, count) == (5, 2, 7)
    assert exported[:5] == sorted(batch, key=lambda r: (r.time, r.id))


def test_export_is_in_time_order_and_filters_by_time_and_route(store_url: str) -> None:
    a = records(700, route="agents/a")  # more than one page (500) of the SQLite store
    b = [r.model_copy(update={"id": uuid.uuid4().hex, "route": "agents/b"}) for r in a[:50]]

    async def body(store: Store) -> list[list[CaptureRecord]]:
        await store.write(a[::-1])  # written newest first
        await store.write(b)
        return [
            await export_all(store),
            await export_all(store, route="agents/a"),
            await export_all(store, since=T0 + timedelta(minutes=10), until=T0 + timedelta(minutes=20)),
            await export_all(store, route="agents/b", since=T0 + timedelta(minutes=45)),
        ]

    everything, only_a, window, late_b = run(store_url, body)
    assert len(everything) == 750 and [r.time for r in everything] == sorted(r.time for r in everything)
    assert [r.id for r in only_a] == [r.id for r in a]
    assert [r.time for r in window] == [T0 + timedelta(minutes=m) for m in range(10, 20) for _ in range(2)]
    assert [r.id for r in late_b] == [r.id for r in b[45:]]


def test_tagging_sets_a_task_only_where_there_is_none_and_export_filters_by_it(store_url: str) -> None:
    """What `advise --apply` does to a store (tag the calls it assigned), and what a FineTuneJob with
    `usageStore.task` exports."""
    untagged = records(6, route="agents/a", task=None)
    sent = make_record(time=T0 + timedelta(hours=2), route="agents/a", task="from-header")

    async def body(store: Store) -> list[Any]:
        await store.write([*untagged, sent])
        tagged = await store.tag_tasks(
            [(r.id, "t-invoice") for r in untagged[:4]]
            + [(sent.id, "t-invoice"), ("no-such-id", "t-invoice")]
        )
        again = await store.tag_tasks([(untagged[0].id, "t-other")])
        return [
            tagged,
            again,
            await export_all(store, task="t-invoice"),
            await export_all(store, route="agents/a", task="from-header"),
            await export_all(store, route="agents/b", task="t-invoice"),
            await store.tag_tasks([]),
        ]

    tagged, again, invoice, header, other_route, none = run(store_url, body)
    assert (tagged, again, none) == (4, 0, 0)  # the caller's own task and an earlier tag are kept
    assert [r.id for r in invoice] == [r.id for r in untagged[:4]] and {r.task for r in invoice} == {
        "t-invoice"
    }
    assert [r.id for r in header] == [sent.id] and other_route == []


def test_retention_deletes_what_is_older_than_the_days(store_url: str) -> None:
    old = [make_record(time=T0 - timedelta(days=d)) for d in (40, 31, 29, 1)]

    async def body(store: Store) -> list[Any]:
        await store.write(old)
        deleted = await store.delete_older_than(30, now=T0)
        return [deleted, [r.id for r in await export_all(store)], await store.delete_older_than(0, now=T0)]

    deleted, left, rest = run(store_url, body)
    assert deleted == 2 and left == [old[2].id, old[3].id] and rest == 2


def test_erasure_deletes_every_record_of_one_caller_and_nothing_else(store_url: str) -> None:
    mine, theirs = records(4, caller="aaaa"), records(3, caller="bbbb")

    async def body(store: Store) -> list[Any]:
        await store.write(mine + theirs)
        return [await store.erase_caller("aaaa"), await export_all(store), await store.erase_caller("aaaa")]

    erased, left, again = run(store_url, body)
    assert erased == 4 and {r.caller for r in left} == {"bbbb"} and len(left) == 3 and again == 0


def test_a_record_the_store_cannot_hold_is_rejected_alone(store_url: str) -> None:
    batch = records(4)
    batch[1] = batch[1].model_copy(update={"prompt_tokens": 2**70})  # no integer column holds it

    async def body(store: Store) -> list[Any]:
        return [await store.write(batch), [r.id for r in await export_all(store)]]

    result, kept = run(store_url, body)
    assert result.rejected == (batch[1].id,) and result.inserted == 3
    assert kept == [batch[0].id, batch[2].id, batch[3].id]


def test_text_postgresql_cannot_hold_is_kept_with_a_replacement_character(store_url: str) -> None:
    record = make_record(
        request={"messages": [{"role": "tool", "content": "bytes \u0000 here, a literal \\u0000 too"}]},
        model="m\u0000",
    )

    async def body(store: Store) -> list[CaptureRecord]:
        await store.write([record])
        return await export_all(store)

    (back,) = run(store_url, body)
    if store_url.startswith("sqlite"):
        assert back == record
    else:
        assert back.request["messages"][0]["content"] == "bytes \ufffd here, a literal \\u0000 too"
        assert back.model == "m\ufffd"


def test_sqlite_store_uses_wal_and_creates_its_folder(tmp_path: Path) -> None:
    path = tmp_path / "new" / "usage.db"
    run(f"sqlite://{path}", lambda store: store.count())
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
