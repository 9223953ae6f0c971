"""Per-caller limits as token buckets: pure state transitions with the time passed in.

A bucket holds up to one minute's allowance and refills continuously (``per_minute / 60`` per second), so a
caller may burst a minute's worth and then goes at the configured rate. Requests cost 1 each and are admitted
while a whole request is left. Tokens are charged twice: the prompt estimate when the call starts (admitted
while the bucket is not in debt), then the difference to the backend's reported usage when it ends, which
may put the bucket in debt; a caller in debt waits until it is repaid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from slm_operator.api.v1alpha1 import CallerLimits


@dataclass(frozen=True, slots=True)
class Bucket:
    level: float  # what is left; negative = debt
    updated: float  # time of the last change (seconds, any monotonic clock)


def refill(bucket: Bucket | None, now: float, per_minute: int) -> Bucket:
    """The bucket at ``now`` (a new one is full)."""
    if bucket is None:
        return Bucket(level=float(per_minute), updated=now)
    elapsed = max(now - bucket.updated, 0.0)
    return Bucket(level=min(float(per_minute), bucket.level + elapsed * per_minute / 60.0), updated=now)


def wait_for(bucket: Bucket, need: float, per_minute: int) -> float:
    """Seconds until ``bucket`` holds ``need`` (0 when it does)."""
    missing = need - bucket.level
    return 0.0 if missing <= 0 else missing * 60.0 / per_minute


@dataclass(frozen=True, slots=True)
class CallerState:
    requests: Bucket | None = None
    tokens: Bucket | None = None


@dataclass(frozen=True, slots=True)
class Admission:
    state: CallerState
    admitted: bool
    retry_after: float = 0.0  # seconds, when not admitted
    limit: str = ""  # "requests" or "tokens", when not admitted

    @property
    def retry_after_header(self) -> str:
        """``Retry-After`` in whole seconds, at least 1."""
        return str(max(1, math.ceil(self.retry_after)))


def admit(state: CallerState, limits: CallerLimits | None, now: float, prompt_tokens: int) -> Admission:
    """Admit a call (charging one request and its prompt estimate) or say how long to wait."""
    if limits is None:
        return Admission(state=state, admitted=True)
    req, tok = state.requests, state.tokens
    if limits.requests_per_minute is not None:
        req = refill(req, now, limits.requests_per_minute)
        if req.level < 1.0:
            wait = wait_for(req, 1.0, limits.requests_per_minute)
            return Admission(CallerState(req, tok), False, wait, "requests")
    if limits.tokens_per_minute is not None:
        tok = refill(tok, now, limits.tokens_per_minute)
        if tok.level <= 0.0:
            # the wait until the debt is repaid and one token is available
            wait = wait_for(tok, 1.0, limits.tokens_per_minute)
            return Admission(CallerState(req, tok), False, wait, "tokens")
        tok = Bucket(tok.level - prompt_tokens, now)
    if req is not None:
        req = Bucket(req.level - 1.0, now)
    return Admission(CallerState(req, tok), True)


def settle(
    state: CallerState, limits: CallerLimits | None, now: float, charged: int, used: int
) -> CallerState:
    """Correct the token charge of a finished call: ``charged`` at admission, ``used`` as reported."""
    if limits is None or limits.tokens_per_minute is None or state.tokens is None:
        return state
    tok = refill(state.tokens, now, limits.tokens_per_minute)
    return CallerState(state.requests, Bucket(tok.level - (used - charged), now))


def idle(state: CallerState, limits: CallerLimits | None, now: float) -> bool:
    """Whether the state is back to full buckets (the shell may forget it)."""
    if limits is None:
        return True
    if state.requests is not None and limits.requests_per_minute is not None:
        r = refill(state.requests, now, limits.requests_per_minute)
        if r.level < limits.requests_per_minute:
            return False
    if state.tokens is not None and limits.tokens_per_minute is not None:
        t = refill(state.tokens, now, limits.tokens_per_minute)
        if t.level < limits.tokens_per_minute:
            return False
    return True
