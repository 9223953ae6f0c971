"""Where a FineTuneJob's trainer may run: the nodes holding its segment's GPUs, and those holding the idle GPUs
of the reservation it borrows from, among the pool's nodes (its node selector, as the pool's pass selects them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from slm_operator.api.v1alpha1 import FineTuneJob, GPUPool, LendTo
from slm_operator.inventory import role_nodes


@dataclass(frozen=True)
class Where:
    nodes: tuple[str, ...]  # the Job's pod may run on these
    problem: tuple[str, str] | None  # (reason, message) why it cannot run yet
    text: str  # "on segment finetune (gpu-h100-1)" for the conditions

    @property
    def ok(self) -> bool:
        return self.problem is None


def _sources(ftj: FineTuneJob) -> str:
    spec = ftj.spec
    parts = [f"segment {spec.segment}"] if spec.segment else []
    if spec.borrow_from:
        parts.append(f"idle GPUs of reservation {spec.borrow_from}")
    return " or ".join(parts)


def _problem(ftj: FineTuneJob, pool: GPUPool | None) -> tuple[str, str] | None:
    """A segment or reservation the FineTuneJob names that its pool does not have (or that does not lend)."""
    spec = ftj.spec
    if pool is None:
        return "PoolNotFound", f"GPUPool {spec.pool_ref.name!r} does not exist"
    name = pool.metadata.name
    if spec.segment and spec.segment not in {s.name for s in pool.spec.segments or []}:
        return "SegmentNotFound", f"GPUPool {name!r} has no segment {spec.segment!r}"
    if spec.borrow_from:
        res = next((r for r in pool.spec.reservations or [] if r.name == spec.borrow_from), None)
        if res is None:
            return "ReservationNotFound", f"GPUPool {name!r} has no reservation {spec.borrow_from!r}"
        if res.lend_to is LendTo.NONE:
            return (
                "ReservationDoesNotLend",
                f"reservation {spec.borrow_from!r} of GPUPool {name!r} lends no GPU (lendTo: None): set its "
                "`lendTo: BestEffort`, or train on a segment",
            )
    return None


def where_to_run(ftj: FineTuneJob, pool: GPUPool | None, nodes: Sequence[Mapping[str, Any]]) -> Where:
    """The nodes the trainer may use, or why it cannot run yet."""
    sources = _sources(ftj)
    problem = _problem(ftj, pool)
    if problem is not None or pool is None:
        return Where((), problem, f"on {sources}")
    roles = [r for r in (ftj.spec.segment, ftj.spec.borrow_from) if r]
    found = tuple(sorted({n for role in roles for n in role_nodes(pool, nodes, role)}))
    if not found:
        return Where((), ("SegmentNotReady", f"no GPU of the pool holds {sources} yet"), f"on {sources}")
    return Where(found, None, f"on {sources} ({', '.join(found)})")
