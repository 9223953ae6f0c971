"""A minimal stand-in for ``slm_operator.capture`` (built in parallel on another branch), for the gateway's tests.

It has the interface the gateway uses (``CaptureRecord``, ``Capture``, ``caller_hash``,
``reassemble_chat_stream``) and keeps submitted records in memory. tests/conftest.py installs it only when the real
module cannot be imported; once the real one is merged, the tests run against it and this file can go.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from pydantic import BaseModel


class CaptureRecord(BaseModel):
    id: str
    time: datetime
    route: str
    task: str | None
    backend: str
    model: str
    request: dict[str, Any]
    response: dict[str, Any] | None
    stream: bool
    status: int
    prompt_tokens: int | None
    completion_tokens: int | None
    ttft_ms: float | None
    total_ms: float
    fallback_reason: str | None
    caller: str
    redact: list[str] = []


@dataclass
class CaptureStats:
    queued: int = 0
    spooled: int = 0
    dropped: int = 0
    written: int = 0


#: the series the real pipeline registers (docs/capture.md, "Metrics")
COUNTERS = ("queued", "written", "spooled", "replayed", "dropped", "store_errors", "redactions")
GAUGES = ("queue_depth", "spool_bytes")


class Capture:
    def __init__(
        self,
        store_url: str,
        *,
        spool_dir: Path,
        queue_size: int = 10000,
        sanitizer_factory: Any = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.store_url = store_url
        self.spool_dir = spool_dir
        self.queue_size = queue_size
        self.records: list[CaptureRecord] = []
        self.started = False
        self.refuse = False
        self.registry = registry if registry is not None else CollectorRegistry()
        labels = {"dropped": ["reason"], "redactions": ["pii_class"]}
        for name in COUNTERS:
            Counter(f"slm_capture_{name}", name, labels.get(name, []), registry=self.registry)
        for name in GAUGES:
            Gauge(f"slm_capture_{name}", name, registry=self.registry)

    async def start(self) -> None:
        self.started = True

    async def stop(self, drain_timeout: float = 10) -> None:
        self.started = False

    def submit(self, record: CaptureRecord) -> bool:
        if self.refuse:
            return False
        self.records.append(record)
        return True

    @property
    def stats(self) -> CaptureStats:
        return CaptureStats(queued=0, written=len(self.records))


def caller_hash(identity: str, salt: bytes) -> str:
    if not salt:
        raise ValueError("the caller-hash salt is empty")
    return hmac.new(salt, identity.encode(), hashlib.sha256).hexdigest()


def load_salt(path: Path) -> bytes:
    salt = Path(path).read_bytes().rstrip(b"\r\n")
    if not salt:
        raise ValueError(f"{path}: the salt file is empty; put at least 16 random bytes in it")
    return salt


def sampled(record_id: str, rate: float) -> bool:
    if rate >= 1.0:
        return True
    if rate <= 0.0:
        return False
    return int.from_bytes(hashlib.sha256(record_id.encode()).digest()[:8], "big") < rate * 2**64


def reassemble_chat_stream(chunks: Iterable[dict[str, Any]]) -> dict[str, Any]:
    content: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    finish = None
    usage = None
    first: dict[str, Any] = {}
    for chunk in chunks:
        first = first or chunk
        usage = chunk.get("usage") or usage
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("content"):
                content.append(delta["content"])
            for tc in delta.get("tool_calls") or []:
                slot = calls.setdefault(
                    tc.get("index", 0),
                    {"id": None, "type": "function", "function": {"name": "", "arguments": ""}},
                )
                slot["id"] = tc.get("id") or slot["id"]
                fn = tc.get("function") or {}
                slot["function"]["name"] += fn.get("name") or ""
                slot["function"]["arguments"] += fn.get("arguments") or ""
            finish = choice.get("finish_reason") or finish
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(content) if content or not calls else None,
    }
    if calls:
        message["tool_calls"] = [calls[i] for i in sorted(calls)]
    return {
        "id": first.get("id"),
        "object": "chat.completion",
        "model": first.get("model"),
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": usage,
    }
