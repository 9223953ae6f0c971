"""The time bounds of ``usage export --since/--until`` and of a FineTuneJob's ``dataset.usageStore.since``.

Pure: no I/O. One parser for both, so a bound the API accepts is one the export step (``slm-operator usage
export``) accepts. ``TIME_BOUND_REGEX`` is the subset the API server checks (CEL, no backslashes so it reads
the same in Python, in the CRD and in CEL's string literal); the models run it and then the parser.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}

#: What the API server accepts for ``usageStore.since``: a duration (``30m``, ``24h``, ``7d``, ``2w``) or an ISO
#: 8601 date or time (``2026-05-01``, ``2026-05-01T12:00:00Z``, ``2026-05-01T14:00+02:00``).
TIME_BOUND_REGEX = (
    "^([0-9]+([.][0-9]+)?[smhdw]"
    "|[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
    "([T ]([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9]([.][0-9]{1,6})?)?(Z|[+-][0-9]{2}:[0-9]{2})?)?)$"
)
TIME_BOUND_HELP = (
    "an ISO 8601 time (2026-05-01, 2026-05-01T12:00:00Z; UTC without an offset) or a duration before now "
    "(30m, 24h, 7d, 2w)"
)


def parse_time_bound(text: str, now: datetime) -> datetime:
    """``--since``/``--until`` of ``usage export``: an ISO 8601 date or time (UTC when no offset is given), or
    a duration before ``now`` such as ``30m``, ``24h``, ``7d``, ``2w``. ValueError says what is accepted."""
    m = _DURATION.match(text)
    if m:
        return now - timedelta(seconds=float(m.group(1)) * _UNIT_SECONDS[m.group(2)])
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is neither an ISO 8601 time (2026-05-01, 2026-05-01T12:00:00Z) nor a duration "
            "before now (30m, 24h, 7d, 2w)"
        ) from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def check_time_bound(text: str) -> str:
    """``text`` when the API server's rule (``TIME_BOUND_REGEX``) and the export's parser both accept it, else
    ValueError saying what to write."""
    if re.fullmatch(TIME_BOUND_REGEX, text) is None:
        raise ValueError(
            f"{text!r} is neither a duration before now (30m, 24h, 7d, 2w) nor an ISO 8601 date or time "
            "(2026-05-01, 2026-05-01T12:00:00Z)"
        )
    parse_time_bound(text, datetime(2000, 1, 1, tzinfo=UTC))  # e.g. 2026-02-30 passes the pattern only
    return text


def seconds_between(since: str, now: str) -> float:
    """Seconds from one RFC 3339 time to another (UTC when a time has no offset); 0 when either cannot be
    read."""
    try:
        a, b = datetime.fromisoformat(since), datetime.fromisoformat(now)
    except ValueError:
        return 0.0
    a = a if a.tzinfo is not None else a.replace(tzinfo=UTC)
    b = b if b.tzinfo is not None else b.replace(tzinfo=UTC)
    return (b - a).total_seconds()
