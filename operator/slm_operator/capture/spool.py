"""The spool: redacted records on local disk while the store is slow or down, replayed in order later.

Synchronous file I/O, used from one thread at a time (``Capture`` runs every call in its own I/O thread).

Layout of the spool folder:

* ``segment-000000000001.jsonl``, ``segment-000000000002.jsonl``, ...: append-only files of one redacted
  ``CaptureRecord`` JSON per line. A process appends only to a segment it created itself (a new one after every
  start), so a line torn by a crash of an earlier process stays at the end of a closed segment, where reading
  skips it (counted as corrupt). A segment is closed at ``segment_bytes`` and deleted once fully replayed.
* ``cursor.json``: ``{"segment": N, "offset": BYTES}``, how far replay has got (written after the store
  committed the records, by write-then-rename).

Durability: ``append`` fsyncs the segment after each batch (one fsync for the whole batch: the worker batches
whatever queued up while the previous fsync ran, so the cost per record falls as the rate rises), and the folder
when a segment is created, so a spooled record survives a crash of the node, not only of the process. The cursor
is not fsynced: a cursor that falls behind after a crash only re-sends records the store already has, and the
store ignores them by id. ``max_bytes`` bounds the folder; ``append`` writes only what fits.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from slm_operator.capture.record import CaptureRecord

SEGMENT = re.compile(r"^segment-(\d{12})\.jsonl$")
CURSOR = "cursor.json"


@dataclass(frozen=True)
class SpoolBatch:
    """Records read from one segment, from the cursor up to ``end`` (commit it once the store has them)."""

    records: list[CaptureRecord]
    segment: int
    end: int
    corrupt: int  # lines that were not a record (a torn last line, a damaged file): skipped


def _segment_name(seq: int) -> str:
    return f"segment-{seq:012d}.jsonl"


class Spool:
    def __init__(
        self, directory: Path, *, max_bytes: int = 1 << 30, segment_bytes: int = 16 << 20, fsync: bool = True
    ) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.fsync = fsync
        self.directory.mkdir(parents=True, exist_ok=True)
        self._sizes: dict[int, int] = {}  # segment -> bytes on disk, oldest first
        for path in sorted(self.directory.iterdir()):
            m = SEGMENT.match(path.name)
            if m:
                self._sizes[int(m.group(1))] = path.stat().st_size
        self._read_seq, self._read_off = self._load_cursor()
        for seq in [s for s in self._sizes if s < self._read_seq]:  # replayed before a crash, not yet deleted
            self._remove(seq)
        self._active: int | None = None  # the segment this process appends to
        self._next_seq = max([*self._sizes, self._read_seq]) + 1

    def _load_cursor(self) -> tuple[int, int]:
        try:
            doc = json.loads((self.directory / CURSOR).read_text())
            return int(doc["segment"]), int(doc["offset"])
        except (OSError, ValueError, KeyError, TypeError):
            return (min(self._sizes) if self._sizes else 0), 0

    @property
    def size_bytes(self) -> int:
        return sum(self._sizes.values())

    def has_backlog(self) -> bool:
        """Whether records wait to be replayed."""
        return any(
            size > (self._read_off if seq == self._read_seq else 0) for seq, size in self._sizes.items()
        )

    def append(self, lines: Sequence[bytes]) -> int:
        """Append JSON lines (redacted records); returns how many were written: a prefix of ``lines``, fewer
        than all when the spool would grow past ``max_bytes``."""
        room = self.max_bytes - self.size_bytes
        data: list[bytes] = []
        for line in lines:
            if len(line) + 1 > room:
                break
            data.append(line + b"\n")
            room -= len(line) + 1
        if not data:
            return 0
        if self._active is None or self._sizes[self._active] >= self.segment_bytes:
            self._open_segment()
        assert self._active is not None
        blob = b"".join(data)
        with open(self.directory / _segment_name(self._active), "ab") as f:
            f.write(blob)
            f.flush()
            if self.fsync:
                os.fsync(f.fileno())
        self._sizes[self._active] += len(blob)
        return len(data)

    def _open_segment(self) -> None:
        seq = self._next_seq
        self._next_seq += 1
        (self.directory / _segment_name(seq)).touch(exist_ok=False)
        self._sizes[seq] = 0
        self._active = seq
        if self.fsync:
            fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def read(self, max_records: int) -> SpoolBatch | None:
        """The next records to replay (at most ``max_records``, from one segment), or None when none wait."""
        for seq, size in self._sizes.items():
            start = self._read_off if seq == self._read_seq else 0
            if size > start:
                return self._read_segment(seq, start, size, max_records)
        return None

    def _read_segment(self, seq: int, start: int, size: int, max_records: int) -> SpoolBatch:
        records: list[CaptureRecord] = []
        corrupt = 0
        pos = start
        with open(self.directory / _segment_name(seq), "rb") as f:
            f.seek(start)
            while len(records) < max_records and pos < size:
                line = f.readline(size - pos)
                pos += len(line)
                if not line.endswith(b"\n"):  # torn by a crash: the rest of the file is this one line
                    corrupt += 1
                    continue
                try:
                    records.append(CaptureRecord.model_validate_json(line))
                except ValidationError:
                    corrupt += 1
        return SpoolBatch(records=records, segment=seq, end=pos, corrupt=corrupt)

    def commit(self, batch: SpoolBatch) -> None:
        """The store has ``batch``: move the cursor past it, and delete its segment once wholly replayed."""
        self._read_seq, self._read_off = batch.segment, batch.end
        if batch.end >= self._sizes.get(batch.segment, 0):
            self._remove(batch.segment)
            if self._active == batch.segment:
                self._active = None
        (self.directory / f"{CURSOR}.tmp").write_text(
            json.dumps({"segment": self._read_seq, "offset": self._read_off})
        )
        os.replace(self.directory / f"{CURSOR}.tmp", self.directory / CURSOR)

    def _remove(self, seq: int) -> None:
        (self.directory / _segment_name(seq)).unlink(missing_ok=True)
        self._sizes.pop(seq, None)
