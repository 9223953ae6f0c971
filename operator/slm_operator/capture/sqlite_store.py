"""The embedded usage store: one SQLite file (``sqlite:///path/usage.db``), for one replica and the demo.

The standard library's ``sqlite3``, driven from one dedicated thread that owns the connection: every call is a
job for that thread (``run_in_executor``), so the event loop never waits on the disk. aiosqlite would do the
same with a thread and a queue of its own; this way there is no extra dependency and a whole batch is one job.
WAL mode, so exports and the CLI read while the gateway writes; ``synchronous=FULL``, so a committed batch
survives a power cut like a spooled one does; a 5 s busy timeout for a CLI prune running beside the gateway.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from slm_operator.capture.record import CaptureRecord
from slm_operator.capture.store import (
    COLUMNS,
    TABLE,
    Store,
    WriteResult,
    cutoff,
    pending_migrations,
    record_values,
    row_record,
)

T = TypeVar("T")
# errors about the data of a record (an integer too big for SQLite, a constraint), not about the database
_RECORD_ERRORS = (sqlite3.IntegrityError, sqlite3.DataError, OverflowError)
PAGE = 500
_INSERT = (
    f"INSERT INTO {TABLE} ({', '.join(COLUMNS)}) VALUES ({', '.join('?' for _ in COLUMNS)}) "
    "ON CONFLICT (id) DO NOTHING"
)


def sqlite_time(t: datetime) -> str:
    """UTC text that sorts as time: ``2026-05-01T12:00:00.000000Z``."""
    return t.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def split_statements(script: str) -> list[str]:
    """A migration script as single statements (sqlite3 executes one at a time; executescript would commit)."""
    statements, buf = [], ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            statements.append(buf.strip())
            buf = ""
    if buf.strip() and any(not ln.strip().startswith("--") for ln in buf.splitlines() if ln.strip()):
        raise ValueError(f"migration ends with an incomplete statement: {buf.strip()[:80]!r}")
    return statements


class SQLiteStore(Store):
    def __init__(self, path: Path, *, busy_timeout: float = 5.0) -> None:
        self.path = Path(path)
        self.url = f"sqlite://{self.path}" if self.path.is_absolute() else f"sqlite:{self.path}"
        self.busy_timeout = busy_timeout
        self._conn: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="capture-sqlite")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self.path, isolation_level=None, timeout=self.busy_timeout, check_same_thread=False
            )
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
                self._migrate(conn)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version "
                "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
            )
            current = conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()[0]
            for mig in pending_migrations("sqlite", current):
                for statement in split_statements(mig.sql):
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_version VALUES (?, ?, ?)",
                    (mig.version, mig.name, sqlite_time(datetime.now(UTC))),
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    async def open(self) -> None:
        await self._call(self._connection)

    async def close(self) -> None:
        if self._executor is None:
            return
        await self._call(self._close)
        self._executor.shutdown(wait=False)
        self._executor = None

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def write(self, records: Sequence[CaptureRecord]) -> WriteResult:
        return await self._call(self._write, list(records))

    def _write(self, records: list[CaptureRecord]) -> WriteResult:
        rows = []
        for record in records:  # JSON encoding here, in the store's thread, not on the event loop
            values = list(record_values(record))
            values[1] = sqlite_time(record.time)
            rows.append(values)
        try:
            return WriteResult(self._insert(rows))
        except _RECORD_ERRORS:
            pass
        inserted, rejected = 0, []
        for row in rows:  # find the records at fault; keep the others
            try:
                inserted += self._insert([row])
            except _RECORD_ERRORS:
                rejected.append(row[0])
        return WriteResult(inserted, tuple(rejected))

    def _insert(self, rows: list[list[Any]]) -> int:
        conn = self._connection()
        before = conn.total_changes
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(_INSERT, rows)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return conn.total_changes - before

    async def export(
        self,
        since: datetime | None = None,
        until: datetime | None = None,
        route: str | None = None,
        task: str | None = None,
    ) -> AsyncIterator[CaptureRecord]:
        after: tuple[str, str] | None = None
        while True:
            records, after = await self._call(self._page, since, until, (route, task), after)
            for record in records:
                yield record
            if after is None:
                return

    def _page(
        self,
        since: datetime | None,
        until: datetime | None,
        of: tuple[str | None, str | None],
        after: tuple[str, str] | None,
    ) -> tuple[list[CaptureRecord], tuple[str, str] | None]:
        """One page of ``export``; ``of`` is (route, task), each optional."""
        where, args = ["1 = 1"], []
        if since is not None:
            where.append("time >= ?")
            args.append(sqlite_time(since))
        if until is not None:
            where.append("time < ?")
            args.append(sqlite_time(until))
        for column, value in zip(("route", "task"), of, strict=True):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if after is not None:
            where.append("(time > ? OR (time = ? AND id > ?))")
            args += [after[0], after[0], after[1]]
        rows = (
            self._connection()
            .execute(
                f"SELECT {', '.join(COLUMNS)} FROM {TABLE} WHERE {' AND '.join(where)} "
                f"ORDER BY time, id LIMIT {PAGE}",
                args,
            )
            .fetchall()
        )
        last = (rows[-1][1], rows[-1][0]) if len(rows) == PAGE else None
        return [row_record(row) for row in rows], last

    async def tag_tasks(self, tasks: Sequence[tuple[str, str]]) -> int:
        return await self._call(self._tag, tasks)

    def _tag(self, tasks: Sequence[tuple[str, str]]) -> int:
        conn = self._connection()
        before = conn.total_changes
        conn.execute("BEGIN")
        try:
            conn.executemany(
                f"UPDATE {TABLE} SET task = ? WHERE id = ? AND task IS NULL", [(t, i) for i, t in tasks]
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return conn.total_changes - before

    async def delete_older_than(self, days: float, *, now: datetime | None = None) -> int:
        return await self._call(self._delete, "time < ?", sqlite_time(cutoff(days, now)))

    async def erase_caller(self, caller_hash: str) -> int:
        return await self._call(self._delete, "caller = ?", caller_hash)

    def _delete(self, condition: str, arg: str) -> int:
        return self._connection().execute(f"DELETE FROM {TABLE} WHERE {condition}", (arg,)).rowcount

    async def schema_version(self) -> int:
        return await self._call(self._scalar, "SELECT coalesce(max(version), 0) FROM schema_version")

    async def count(self) -> int:
        return await self._call(self._scalar, f"SELECT count(*) FROM {TABLE}")

    def _scalar(self, sql: str) -> int:
        return int(self._connection().execute(sql).fetchone()[0])
