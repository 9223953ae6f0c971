"""The spool: what is appended is replayed once, in order, across segments and restarts; it stays bounded."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from slm_operator.capture import CaptureRecord
from slm_operator.capture.spool import Spool
from tests.test_capture_record import make_record


def line(r: CaptureRecord) -> bytes:
    return r.model_dump_json().encode()


def drain(spool: Spool, batch: int = 7) -> list[str]:
    ids: list[str] = []
    while (b := spool.read(batch)) is not None:
        ids += [r.id for r in b.records]
        spool.commit(b)
    return ids


def segments(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("segment-*.jsonl"))


def test_records_come_back_in_order_across_segments_and_the_folder_empties(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_bytes=2000)
    records = [make_record() for _ in range(40)]
    for i in range(0, 40, 5):
        assert spool.append([line(r) for r in records[i : i + 5]]) == 5
    assert len(segments(tmp_path)) > 3 and spool.has_backlog()
    assert spool.size_bytes == sum(p.stat().st_size for p in tmp_path.glob("segment-*"))
    assert drain(spool) == [r.id for r in records]
    assert not spool.has_backlog() and spool.size_bytes == 0 and segments(tmp_path) == []
    assert spool.read(10) is None


def test_append_writes_only_what_fits_in_max_bytes(tmp_path: Path) -> None:
    records = [make_record() for _ in range(10)]
    size = len(line(records[0])) + 1
    spool = Spool(tmp_path, max_bytes=size * 3 + size // 2)
    assert spool.append([line(r) for r in records]) == 3
    assert spool.append([line(records[3])]) == 0
    assert drain(spool) == [r.id for r in records[:3]]
    assert spool.append([line(r) for r in records[3:]]) == 3  # room again after replay


def test_a_restart_resumes_after_the_committed_cursor_and_rereads_what_was_not_committed(
    tmp_path: Path,
) -> None:
    records = [make_record() for _ in range(20)]
    spool = Spool(tmp_path)
    spool.append([line(r) for r in records])
    first = spool.read(5)
    assert first is not None
    spool.commit(first)
    second = spool.read(5)  # read and sent to the store, then the process dies before the commit
    assert second is not None

    again = Spool(tmp_path)
    assert again.has_backlog()
    assert drain(again) == [r.id for r in records[5:]]  # the uncommitted batch is sent again, never lost


def test_a_new_process_appends_to_a_new_segment_and_a_torn_last_line_is_skipped_and_counted(
    tmp_path: Path,
) -> None:
    records = [make_record() for _ in range(3)]
    Spool(tmp_path).append([line(r) for r in records[:2]])
    (old,) = segments(tmp_path)
    with open(tmp_path / old, "ab") as f:  # a crash in the middle of a write
        f.write(line(records[2])[:40])
    spool = Spool(tmp_path)
    spool.append([line(records[2])])
    assert len(segments(tmp_path)) == 2 and (tmp_path / old).read_bytes().count(b"\n") == 2
    batches = []
    while (b := spool.read(10)) is not None:
        batches.append(b)
        spool.commit(b)
    assert [r.id for b in batches for r in b.records] == [r.id for r in records]
    assert sum(b.corrupt for b in batches) == 1


def test_a_cursor_left_on_a_segment_deleted_before_the_crash_is_harmless(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_bytes=1)  # one segment per append
    records = [make_record() for _ in range(4)]
    for r in records:
        spool.append([line(r)])
    b = spool.read(10)
    assert b is not None
    spool.commit(b)
    assert drain(Spool(tmp_path)) == [r.id for r in records[1:]]


@settings(max_examples=60, deadline=None)
@given(
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("append"), st.integers(1, 6)),
            st.tuples(st.just("replay"), st.integers(1, 8)),
            st.tuples(st.just("crash"), st.integers(0, 1)),
        ),
        max_size=25,
    ),
    segment_bytes=st.sampled_from([1, 900, 4000, 1 << 20]),
)
def test_every_appended_record_is_replayed_in_order_at_least_once_and_once_when_committed(
    ops: list[tuple[str, int]], segment_bytes: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        _run_spool_ops(Path(tmp), ops, segment_bytes)


def _run_spool_ops(folder: Path, ops: list[tuple[str, int]], segment_bytes: int) -> None:
    spool = Spool(folder, segment_bytes=segment_bytes)
    appended: list[str] = []
    committed: list[str] = []
    for op, arg in ops:
        if op == "append":
            batch = [make_record() for _ in range(arg)]
            assert spool.append([line(r) for r in batch]) == len(batch)
            appended += [r.id for r in batch]
        elif op == "replay" and (b := spool.read(arg)) is not None:
            assert [r.id for r in b.records] == appended[len(committed) : len(committed) + len(b.records)]
            spool.commit(b)
            committed += [r.id for r in b.records]
        elif op == "crash":
            if arg:  # read a batch (sent to the store) but die before committing it
                spool.read(3)
            spool = Spool(folder, segment_bytes=segment_bytes)
    assert committed + drain(spool) == appended
    assert segments(folder) == [] and spool.size_bytes == 0
