"""The capture record, the caller hash, the sampling decision, the export time bounds and redaction."""

from __future__ import annotations

import hashlib
import hmac
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from slm_operator.capture import CaptureRecord, caller_hash, load_salt, sampled
from slm_operator.capture.redact import redact_record
from slm_operator.sanitize import Sanitizer
from slm_operator.timebound import parse_time_bound


def make_record(**over: Any) -> CaptureRecord:
    base: dict[str, Any] = {
        "id": uuid.uuid4().hex,
        "time": datetime(2026, 5, 1, 12, 0, tzinfo=UTC),
        "route": "agents/support",
        "task": "triage",
        "backend": "qwen",
        "model": "gpt-4o",
        "request": {"messages": [{"role": "user", "content": "mail jane@corp.example please"}]},
        "response": {"choices": [{"message": {"role": "assistant", "content": "sent to jane@corp.example"}}]},
        "stream": False,
        "status": 200,
        "total_ms": 12.5,
        "caller": "c0ffee",
    }
    return CaptureRecord(**{**base, **over})


def test_caller_hash_is_hmac_sha256_of_the_identity_keyed_by_the_salt() -> None:
    identity = "system:serviceaccount:agents:support-bot"
    h = caller_hash(identity, b"pepper")
    assert h == hmac.new(b"pepper", identity.encode(), hashlib.sha256).hexdigest()
    assert len(h) == 64 and identity not in h
    assert h != hashlib.sha256(identity.encode()).hexdigest()  # not guessable without the salt
    assert caller_hash(identity, b"other salt") != h  # a new salt unlinks old hashes
    assert caller_hash("system:serviceaccount:agents:other", b"pepper") != h
    with pytest.raises(ValueError, match="salt is empty"):
        caller_hash(identity, b"")


def test_salt_file_read_the_same_with_or_without_a_trailing_newline(tmp_path: Path) -> None:
    (tmp_path / "echo").write_bytes(b"s3cret-salt\n")
    (tmp_path / "printf").write_bytes(b"s3cret-salt")
    assert load_salt(tmp_path / "echo") == load_salt(tmp_path / "printf") == b"s3cret-salt"
    (tmp_path / "empty").write_bytes(b"\n")
    with pytest.raises(ValueError, match="salt file is empty"):
        load_salt(tmp_path / "empty")


@given(st.floats(0, 1))
def test_sampling_keeps_about_the_rate_and_decides_the_same_for_the_same_id(rate: float) -> None:
    ids = [uuid.UUID(int=i * 7919 + 1).hex for i in range(2000)]
    kept = [i for i in ids if sampled(i, rate)]
    assert abs(len(kept) - rate * len(ids)) <= 0.06 * len(ids)
    assert kept == [i for i in ids if sampled(i, rate)]  # deterministic: every replica agrees
    assert all(sampled(i, 1.0) for i in ids) and not any(sampled(i, 0.0) for i in ids)


def test_a_lower_rate_keeps_a_subset_of_a_higher_one() -> None:
    ids = [uuid.uuid4().hex for _ in range(500)]
    assert {i for i in ids if sampled(i, 0.2)} <= {i for i in ids if sampled(i, 0.5)}


def test_record_time_is_utc() -> None:
    cest = timezone(timedelta(hours=2))
    assert make_record(time=datetime(2026, 5, 1, 14, 0, tzinfo=cest)).time == datetime(
        2026, 5, 1, 12, 0, tzinfo=UTC
    )
    assert make_record(time=datetime(2026, 5, 1, 12, 0)).time.tzinfo == UTC
    assert make_record().schema_version == 1


def test_time_bounds_take_iso_times_and_durations() -> None:
    now = datetime(2026, 5, 8, 12, 0, tzinfo=UTC)
    assert parse_time_bound("7d", now) == datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    assert parse_time_bound("90m", now) == datetime(2026, 5, 8, 10, 30, tzinfo=UTC)
    assert parse_time_bound("2026-05-01", now) == datetime(2026, 5, 1, tzinfo=UTC)
    assert parse_time_bound("2026-05-01T14:00:00+02:00", now) == datetime(2026, 5, 1, 12, tzinfo=UTC)
    with pytest.raises(ValueError, match="neither an ISO 8601 time"):
        parse_time_bound("last tuesday", now)


def test_redaction_replaces_pii_in_request_and_response_and_counts_it() -> None:
    record = make_record(redact=["Email"])
    clean, counts = redact_record(record, Sanitizer(["Email"]))
    assert "jane@corp.example" not in clean.model_dump_json()
    assert clean.request["messages"][0]["content"] == "mail <EMAIL_1> please"  # one pseudonym per value
    assert counts == Counter({"Email": 2})
    assert clean.id == record.id and clean.caller == record.caller
    assert record.request["messages"][0]["content"] == "mail jane@corp.example please"  # input untouched
    assert (
        redact_record(make_record(), Sanitizer(["Email"]))[0].request == make_record().request
    )  # no classes


def test_an_unknown_pii_class_is_refused_rather_than_ignored() -> None:
    with pytest.raises(ValueError, match="Horoscope"):
        Sanitizer(["Email", "Horoscope"])
