"""The production usage store: PostgreSQL through asyncpg (``postgresql://user@host:port/db``).

A connection pool shared by the capture worker and exports; a batch is one ``INSERT ... SELECT FROM unnest(...)
ON CONFLICT (id) DO NOTHING`` (one round trip, whatever the batch size; the status line says how many rows were
new). The password comes from the URL, ``PGPASSWORD`` or a ``.pgpass`` file (asyncpg reads libpq's variables).
Migrations run under a transaction-scoped advisory lock, so several gateway replicas starting together
migrate once. The pool is created on first use and again after it failed, so a server that was down when the
gateway started is used as soon as it is up.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg

from slm_operator.capture.record import CaptureRecord
from slm_operator.capture.store import (
    COLUMNS,
    JSON_COLUMNS,
    TABLE,
    Store,
    WriteResult,
    cutoff,
    pending_migrations,
    record_values,
    row_record,
)

PAGE = 500
MIGRATION_LOCK = 0x736C_6D63  # pg_advisory_xact_lock key of the schema migration ("slmc")
_TYPES = {
    "stream": "boolean",
    "time": "timestamptz",
    "status": "integer",
    "prompt_tokens": "integer",
    "completion_tokens": "integer",
    "record_version": "integer",
    "ttft_ms": "float8",
    "total_ms": "float8",
    "redact": "jsonb",
    "request": "jsonb",
    "response": "jsonb",
}
_INSERT = (
    f"INSERT INTO {TABLE} ({', '.join(COLUMNS)}) SELECT * FROM unnest("
    + ", ".join(f"${n}::{_TYPES.get(col, 'text')}[]" for n, col in enumerate(COLUMNS, 1))
    + ") ON CONFLICT (id) DO NOTHING"
)


# PostgreSQL's text and jsonb cannot hold U+0000 (a tool's binary output may): it becomes U+FFFD.
_JSON_NUL = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")
# SQLSTATE classes that blame the record, not the server: data exception, integrity, program limit (too big)
_RECORD_SQLSTATE = ("22", "23", "54")


def _pg_value(value: Any, col: str) -> Any:
    if not isinstance(value, str):
        return value
    if col in JSON_COLUMNS:
        return _JSON_NUL.sub(r"\1\\ufffd", value)
    return value.replace("\x00", "\ufffd")


def _rows(records: Sequence[CaptureRecord]) -> list[tuple[Any, ...]]:
    return [tuple(_pg_value(v, c) for v, c in zip(record_values(r), COLUMNS, strict=True)) for r in records]


def _columns(rows: Sequence[tuple[Any, ...]]) -> list[list[Any]]:
    """One list per column (what unnest takes)."""
    return [list(col) for col in zip(*rows, strict=True)] if rows else [[] for _ in COLUMNS]


def _is_record_error(exc: BaseException) -> bool:
    return (
        isinstance(exc, asyncpg.PostgresError) and str(getattr(exc, "sqlstate", ""))[:2] in _RECORD_SQLSTATE
    )


def _affected(status: str) -> int:
    """Rows counted in a command status such as ``INSERT 0 7`` or ``DELETE 3``."""
    return int(status.rsplit(" ", 1)[-1])


class PostgresStore(Store):
    def __init__(
        self, url: str, *, pool_size: int = 4, connect_timeout: float = 5.0, command_timeout: float = 30.0
    ) -> None:
        self.url = url
        self.pool_size = pool_size
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self._pool: asyncpg.Pool | None = None
        self._lock = asyncio.Lock()

    async def _get_pool(self) -> asyncpg.Pool:
        async with self._lock:
            if self._pool is None:
                pool = await asyncpg.create_pool(
                    self.url,
                    min_size=1,
                    max_size=self.pool_size,
                    timeout=self.connect_timeout,
                    command_timeout=self.command_timeout,
                )
                try:
                    await self._migrate(pool)
                except BaseException:
                    await pool.close()
                    raise
                self._pool = pool
            return self._pool

    @staticmethod
    async def _migrate(pool: asyncpg.Pool) -> None:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version "
                "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL)"
            )
            current = await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_version")
            for mig in pending_migrations("postgresql", current):
                await conn.execute(mig.sql)
                await conn.execute(
                    "INSERT INTO schema_version VALUES ($1, $2, $3)", mig.version, mig.name, datetime.now(UTC)
                )

    async def open(self) -> None:
        await self._get_pool()

    async def close(self) -> None:
        async with self._lock:
            if self._pool is not None:
                pool, self._pool = self._pool, None
                await pool.close()

    async def write(self, records: Sequence[CaptureRecord]) -> WriteResult:
        if not records:
            return WriteResult(0)
        # JSON encoding off the event loop: a batch of long conversations is CPU work
        rows = await asyncio.get_running_loop().run_in_executor(None, _rows, records)
        pool = await self._get_pool()
        try:
            return WriteResult(_affected(await pool.execute(_INSERT, *_columns(rows))))
        except asyncpg.PostgresError as exc:
            if not _is_record_error(exc):
                raise
        inserted, rejected = 0, []
        for row in rows:  # find the records at fault; keep the others
            try:
                inserted += _affected(await pool.execute(_INSERT, *_columns([row])))
            except asyncpg.PostgresError as exc:
                if not _is_record_error(exc):
                    raise
                rejected.append(row[0])
        return WriteResult(inserted, tuple(rejected))

    async def export(
        self,
        since: datetime | None = None,
        until: datetime | None = None,
        route: str | None = None,
        task: str | None = None,
    ) -> AsyncIterator[CaptureRecord]:
        where, args = ["TRUE"], []
        conditions = (("time >= ", since), ("time < ", until), ("route = ", route), ("task = ", task))
        for condition, value in conditions:
            if value is not None:
                args.append(value)
                where.append(f"{condition}${len(args)}")
        sql = f"SELECT {', '.join(COLUMNS)} FROM {TABLE} WHERE {' AND '.join(where)} ORDER BY time, id"
        pool = await self._get_pool()
        async with pool.acquire() as conn, conn.transaction():
            async for row in conn.cursor(sql, *args, prefetch=PAGE):
                yield row_record(tuple(row))

    async def tag_tasks(self, tasks: Sequence[tuple[str, str]]) -> int:
        if not tasks:
            return 0
        pool = await self._get_pool()
        ids, names = [i for i, _ in tasks], [t for _, t in tasks]
        result = await pool.execute(
            f"UPDATE {TABLE} AS c SET task = v.task FROM unnest($1::text[], $2::text[]) AS v(id, task) "
            "WHERE c.id = v.id AND c.task IS NULL",
            ids,
            names,
        )
        return _affected(result)

    async def delete_older_than(self, days: float, *, now: datetime | None = None) -> int:
        pool = await self._get_pool()
        return _affected(await pool.execute(f"DELETE FROM {TABLE} WHERE time < $1", cutoff(days, now)))

    async def erase_caller(self, caller_hash: str) -> int:
        pool = await self._get_pool()
        return _affected(await pool.execute(f"DELETE FROM {TABLE} WHERE caller = $1", caller_hash))

    async def schema_version(self) -> int:
        pool = await self._get_pool()
        return int(await pool.fetchval("SELECT coalesce(max(version), 0) FROM schema_version"))

    async def count(self) -> int:
        pool = await self._get_pool()
        return int(await pool.fetchval(f"SELECT count(*) FROM {TABLE}"))
