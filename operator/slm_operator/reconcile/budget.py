"""The consolidation disruption budget, as pure functions of the GPUPool and the time: quiet hours, the moves
left in the hour, the deployments that must not move now, and the move history the pool status keeps.

The budget lives in the cluster, not in the operator's memory: the moves started within the last hour are
``status.consolidation.recentMoves`` of the GPUPool, merged every pass with the moves the replica pods record
(``slm.io/move``), so that a restarted operator neither forgets a move nor counts one twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta

from slm_operator.api.v1alpha1 import (
    ConsolidationMove,
    ConsolidationPolicy,
    MoveOutcome,
    QuietWindow,
)

HOUR = timedelta(hours=1)


def parse_time(text: str) -> datetime | None:
    """An RFC 3339 time, or None when it is not one (a record we cannot date is dropped, never trusted)."""
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo is not None else None


def _minutes(hhmm: str) -> int:
    hours, _, minutes = hhmm.partition(":")
    return int(hours) * 60 + int(minutes)


def in_quiet_hours(windows: Iterable[QuietWindow], now: datetime) -> QuietWindow | None:
    """The daily UTC window ``now`` falls in (start inclusive, end exclusive; a window whose end is before its
    start crosses midnight), or None."""
    minute = now.hour * 60 + now.minute
    for w in windows:
        start, end = _minutes(w.start), _minutes(w.end)
        inside = start <= minute < end if start < end else (minute >= start or minute < end)
        if inside:
            return w
    return None


def recent(history: Iterable[ConsolidationMove], now: datetime) -> list[ConsolidationMove]:
    """The moves started within the hour before ``now`` (or, clock skew, after it), oldest first."""
    out = []
    for m in history:
        started = parse_time(m.started)
        if started is not None and started > now - HOUR:
            out.append(m)
    return sorted(out, key=lambda m: (m.started, m.deployment, m.replica))


def moves_left(policy: ConsolidationPolicy, history: Sequence[ConsolidationMove], now: datetime) -> int:
    """Replicas that may start a move in this pass: none when consolidation is off or ``now`` is in a quiet
    window, else the hourly budget less the moves started within the last hour (abandoned ones count: they
    disturbed the deployment too)."""
    if not policy.enabled or in_quiet_hours(policy.quiet_hours or (), now) is not None:
        return 0
    return max(0, policy.max_moves_per_hour - len(recent(history, now)))


def held_back(policy: ConsolidationPolicy, history: Sequence[ConsolidationMove], now: datetime) -> str:
    """Why no move may start now ("" when some may): the reason of the ``Consolidated`` condition."""
    if not policy.enabled:
        return "Disabled"
    if in_quiet_hours(policy.quiet_hours or (), now) is not None:
        return "QuietHours"
    if moves_left(policy, history, now) == 0:
        return "BudgetExhausted"
    return ""


def abandoned_recently(history: Iterable[ConsolidationMove], now: datetime) -> frozenset[str]:
    """Deployments with a move abandoned within the last hour: not moved again before the hour is over (a
    replica that could not start on its target would most likely fail again)."""
    return frozenset(m.deployment for m in recent(history, now) if m.outcome == MoveOutcome.ABANDONED)


def merge_history(
    old: Sequence[ConsolidationMove],
    observed: Iterable[ConsolidationMove],
    placed_at: Mapping[tuple[str, int], str],
    now: datetime,
) -> list[ConsolidationMove]:
    """The moves of the last hour: the pool status's record, updated by what the pods show now (``observed``:
    the moves in the pods' annotations, and the moves started in this pass), oldest first.

    A move recorded ``InFlight`` that no pod shows any more ended while the operator was not looking: it
    completed when the replica now runs on its target (``placed_at``: "node/gpu" by replica), else it was
    abandoned. A move is identified by its deployment, replica and start time, so a record is never doubled."""
    by_id: dict[tuple[str, int, str], ConsolidationMove] = {}
    for m in recent(old, now):
        by_id[(m.deployment, m.replica, m.started)] = m
    seen: set[tuple[str, int, str]] = set()
    for m in observed:
        ident = (m.deployment, m.replica, m.started)
        seen.add(ident)
        prev = by_id.get(ident)
        by_id[ident] = m.model_copy(update={"reason": prev.reason}) if prev and not m.reason else m
    for ident, m in list(by_id.items()):
        if ident not in seen and m.outcome == MoveOutcome.IN_FLIGHT:
            done = placed_at.get((m.deployment, m.replica)) == m.target
            outcome = MoveOutcome.COMPLETED if done else MoveOutcome.ABANDONED
            by_id[ident] = m.model_copy(update={"outcome": outcome})
    return recent(by_id.values(), now)
