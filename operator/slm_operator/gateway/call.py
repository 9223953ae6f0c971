"""One call through the gateway: what the handler found out (:class:`Call`) and how an attempt ended (:class:`Outcome`)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from slm_operator.api.v1alpha1 import RulePhase
from slm_operator.contract import BACKEND_HEADER, FALLBACK_HEADER, ROUTE_HEADER, TASK_HEADER
from slm_operator.gateway.auth import Caller
from slm_operator.routing.fallback import FailureReason, checks_json
from slm_operator.routing.features import RequestFeatures
from slm_operator.routing.table import CompiledRoute

CHAT = "/chat/completions"
COMPLETIONS = "/completions"


@dataclass
class Call:
    request: web.Request
    path: str  # CHAT or COMPLETIONS, appended to an endpoint's base URL
    body: dict[str, Any]
    route: CompiledRoute
    caller: Caller
    identity: str
    task: str | None
    task_label: str
    features: RequestFeatures
    started: float  # loop time
    started_wall: float  # time.time() at arrival, for the capture record
    capture: bool = False  # sampled for capture
    record_id: str = ""  # the capture record's id (it decides the sampling)
    charged_tokens: int = 0
    #: set when shadow copies were sent: resolved with the answer the caller got (None: it failed or came from
    #: a fallback), which the shadows compare theirs with
    primary_answer: asyncio.Future[dict[str, Any] | None] | None = None
    #: a call of a rule with ``promote``: the rule, the phase it was routed in, the shadow backend whose
    #: agreement counts for it, and while the promoted backend serves, the rule's own backend (its fallback)
    rule: str | None = None
    phase: RulePhase | None = None
    measured: str | None = None
    promoted_from: str | None = None
    #: (backend, loop time): the call was held for that backend's first replica (scale from zero); until then a
    #: refused connection to it is tried again (a replica may be Ready before its server accepts), not failed
    warming: tuple[str, float] | None = None

    def checks_json(self, backend: str) -> bool:
        """Whether ``backend``'s answer to this call is checked for JSON (where an invalid one falls back)."""
        return checks_json(self.route.spec, backend, self.promoted_from)

    @property
    def keeps_answer(self) -> bool:
        """Whether the whole answer is needed after it is sent (capture, shadow comparison)."""
        return self.capture or self.primary_answer is not None


@dataclass
class Outcome:
    """How one attempt on one backend ended. ``reason`` set: it failed (a fallback may follow); ``committed``
    set: a streamed answer was already sent to the caller."""

    backend: str
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    reason: FailureReason | None = None
    detail: str = ""
    committed: web.StreamResponse | None = None
    ttft: float | None = None  # seconds from the call's arrival to the first byte sent (committed streams)
    usage: dict[str, Any] | None = None
    completion_estimate: int = 0  # streamed chunks, when the backend reports no usage
    answer: dict[str, Any] | None = None  # the parsed answer (non-streamed) for capture
    stream_bytes: bytes | None = None  # the streamed answer, kept for capture
    fallback: FailureReason | None = None  # why this answer comes from the fallback backend
    cut: str | None = None  # a committed stream ended early: "error", "timeout" or "client"


def response_headers(call: Call, backend: str, fallback: FailureReason | None) -> dict[str, str]:
    """The ``x-slm-*`` headers of an answer (docs/gateway.md)."""
    out = {ROUTE_HEADER: call.route.key, BACKEND_HEADER: backend}
    if fallback is not None:
        out[FALLBACK_HEADER] = fallback.value
    if call.task:
        out[TASK_HEADER] = call.task
    return out
