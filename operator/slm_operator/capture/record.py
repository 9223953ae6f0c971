"""One captured call (``CaptureRecord``, schema version 1) and the pure decisions about it.

Pure: no I/O. The gateway builds a record per call it decides to capture (``sampled``), the capture worker
redacts it and a store keeps it; ``docs/capture.md`` says what each field holds.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

#: the version of CaptureRecord's fields (``schema_version`` of every record, in the spool and in exports)
RECORD_SCHEMA_VERSION: Literal[1] = 1


class CaptureRecord(BaseModel):
    """One captured call. ``caller`` is already a salted hash (``caller_hash``), never the raw identity."""

    model_config = ConfigDict(extra="ignore")

    schema_version: Literal[1] = RECORD_SCHEMA_VERSION
    id: str = Field(min_length=1, max_length=128, description="uuid4 hex, set by the gateway")
    time: datetime = Field(description="request start, UTC")
    route: str = Field(description='"namespace/name" of the SLMRoute')
    task: str | None = None
    backend: str = Field(description="backend name in the route")
    model: str = Field(description="model string the caller sent")
    request: dict[str, Any] = Field(description="the request body (messages, tools, response_format, ...)")
    response: dict[str, Any] | None = Field(description="the response body; a stream reassembled")
    stream: bool
    status: int = Field(description="HTTP status returned to the caller")
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    ttft_ms: float | None = None
    total_ms: float
    fallback_reason: str | None = Field(
        None, description='None, "error", "timeout", "overload", "invalid_json"'
    )
    caller: str = Field(description="salted hash of the caller identity")
    redact: list[str] = Field(default_factory=list, description="PII classes the capture worker redacts")

    @field_validator("time")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        """A naive time is taken as UTC; an aware one is converted to UTC (stores compare times as UTC)."""
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def sampled(record_id: str, rate: float) -> bool:
    """Whether a call is captured at the route's sample ``rate`` (0..1).

    Decided by a hash of the record id, not a random draw: every gateway replica and a rerun decide the same
    for the same id, and a test can tell which ids are kept.
    """
    if rate >= 1.0:
        return True
    if rate <= 0.0:
        return False
    digest = hashlib.sha256(record_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") < rate * 2**64
