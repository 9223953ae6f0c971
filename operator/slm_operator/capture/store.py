"""What every usage store does (``Store``), the schema's migrations, and the row <-> record mapping.

A store keeps redacted ``CaptureRecord``s in one table, ``captured_calls``, whose primary key is the record id:
``write`` inserts and ignores an id it already has, so a batch sent twice (replay after a crash, a write that
timed out but committed) is kept once. The schema is versioned: ``schema_version`` holds one row per applied
migration, and the migrations are the ordered SQL files in ``migrations/<dialect>/NNNN_name.sql`` of this
package, applied in one transaction each when a store is opened. ``docs/capture.md`` documents the tables.
"""

from __future__ import annotations

import abc
import json
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import resources
from types import TracebackType
from typing import Any, Self

from slm_operator.capture.record import CaptureRecord

TABLE = "captured_calls"
#: the columns of ``captured_calls``, in the order ``record_values`` gives them
COLUMNS = (
    "id",
    "time",
    "route",
    "task",
    "backend",
    "model",
    "stream",
    "status",
    "prompt_tokens",
    "completion_tokens",
    "ttft_ms",
    "total_ms",
    "fallback_reason",
    "caller",
    "redact",
    "request",
    "response",
    "record_version",
)
JSON_COLUMNS = frozenset({"redact", "request", "response"})
_MIGRATION = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class StoreError(Exception):
    """The store cannot be used as it is (e.g. its schema is newer than this slm-operator)."""


@dataclass(frozen=True)
class WriteResult:
    """What ``Store.write`` did: ``inserted`` new rows (ids already present are not counted), and the ids of
    records the store refused on their own merits (data it cannot hold): those are not kept. A batch with
    such a record is retried one record at a time, so one bad record never holds the others back."""

    inserted: int
    rejected: tuple[str, ...] = ()


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations(dialect: str) -> list[Migration]:
    """The package's migrations for ``dialect`` ("sqlite" or "postgresql"), in version order (1, 2, ...)."""
    folder = resources.files("slm_operator.capture").joinpath("migrations", dialect)
    found = []
    for entry in folder.iterdir():
        m = _MIGRATION.match(entry.name)
        if m:
            found.append(Migration(int(m.group(1)), m.group(2), entry.read_text(encoding="utf-8")))
    found.sort(key=lambda mig: mig.version)
    if [mig.version for mig in found] != list(range(1, len(found) + 1)):
        raise StoreError(f"migrations of {dialect} are not numbered 1, 2, ...: {[m.version for m in found]}")
    return found


def pending_migrations(dialect: str, current: int) -> list[Migration]:
    """The migrations to apply to a store at version ``current``; StoreError when it is newer than we know."""
    known = migrations(dialect)
    latest = known[-1].version if known else 0
    if current > latest:
        raise StoreError(
            f"the store's schema is version {current}, newer than this slm-operator knows ({latest}): "
            "upgrade slm-operator before using this store"
        )
    return [m for m in known if m.version > current]


def record_values(record: CaptureRecord) -> tuple[Any, ...]:
    """The record as ``COLUMNS`` values; JSON columns as JSON text, ``time`` as an aware UTC datetime."""
    values = []
    for col in COLUMNS:
        if col == "record_version":
            values.append(record.schema_version)
            continue
        value = getattr(record, col)
        if col in JSON_COLUMNS and value is not None:
            value = json.dumps(value, ensure_ascii=False)
        values.append(value)
    return tuple(values)


def row_record(row: Sequence[Any]) -> CaptureRecord:
    """A row of ``COLUMNS`` (JSON columns as text) back into a record."""
    doc = dict(zip(COLUMNS, row, strict=True))
    for col in JSON_COLUMNS:
        if isinstance(doc[col], str):
            doc[col] = json.loads(doc[col])
    doc["schema_version"] = doc.pop("record_version")
    return CaptureRecord.model_validate(doc)


def cutoff(days: float, now: datetime | None = None) -> datetime:
    """The time before which ``delete_older_than(days)`` deletes."""
    if days < 0:
        raise ValueError(f"days must be 0 or more, not {days}")
    return (now or datetime.now(UTC)) - timedelta(days=days)


class Store(abc.ABC):
    """A usage store. Opening is lazy and repeatable: every operation first (re)connects and migrates, so a
    store that was down when the process started is used as soon as it is back."""

    url: str

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect, and create or migrate the schema (idempotent)."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def write(self, records: Sequence[CaptureRecord]) -> WriteResult:
        """Insert the records in one transaction; ids already present are ignored. Raises when the store is
        unreachable or fails as a whole (the caller retries the batch later)."""

    @abc.abstractmethod
    def export(
        self,
        since: datetime | None = None,
        until: datetime | None = None,
        route: str | None = None,
        task: str | None = None,
    ) -> AsyncIterator[CaptureRecord]:
        """Records with ``since <= time < until`` (either bound optional), of one route and one task if given,
        oldest first (ties by id)."""

    @abc.abstractmethod
    async def tag_tasks(self, tasks: Sequence[tuple[str, str]]) -> int:
        """Set the task of each (record id, task) whose record has none yet (a task the caller sent, or an
        earlier tag, is never overwritten); returns how many records were tagged."""

    @abc.abstractmethod
    async def delete_older_than(self, days: float, *, now: datetime | None = None) -> int:
        """Delete records older than ``days`` days; returns how many."""

    @abc.abstractmethod
    async def erase_caller(self, caller_hash: str) -> int:
        """Delete every record of one caller (its salted hash); returns how many."""

    @abc.abstractmethod
    async def schema_version(self) -> int:
        """The version of the applied schema (0 for an empty database)."""

    @abc.abstractmethod
    async def count(self) -> int:
        """How many records the store holds."""

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
