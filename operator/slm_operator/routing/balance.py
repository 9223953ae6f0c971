"""Least outstanding requests: which endpoint (replica) of a backend gets the next call."""

from __future__ import annotations

from collections.abc import Sequence


def pick_endpoint(
    in_flight: Sequence[int],
    cap: int | None,
    start: int = 0,
    exclude: frozenset[int] = frozenset(),
) -> int | None:
    """The index of the endpoint with the fewest calls in flight, or None when every one is at ``cap``.

    Endpoints in ``exclude`` (already tried for this call) are skipped. Ties go to the first index at or after
    ``start`` (the shell rotates it), so equally loaded endpoints take turns.
    """
    n = len(in_flight)
    best: int | None = None
    for k in range(n):
        i = (start + k) % n
        if i in exclude or (cap is not None and in_flight[i] >= cap):
            continue
        if best is None or in_flight[i] < in_flight[best]:
            best = i
    return best
