"""The shell of guided packing: solve pools' node-aware programs away from the passes (docs/planner.md §5.2).

A pass that would pack from a guide it does not have says so (``Decisions.guide_request``). Once a pool's
request has asked the same question for ``SETTLE_SECONDS`` (a pool being filled or scaled asks a new one
every pass: solving each would cost CPU for answers that are stale on arrival), :class:`GuideSolver` solves it
in a daemon worker process (spawned: the operator runs threads) at the lowest CPU priority, one program at a
time for all pools, within the time limit. The answer goes back to the pool's next pass as
``World.plan_guide``. A worker that dies or fails gives an answer without a guide, so the same question is
not asked again; a pool that is deleted drops its job.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import threading
import time
from dataclasses import dataclass
from multiprocessing.context import SpawnProcess
from typing import Any

from slm_operator.planner.nodemip import NodeMip, solve_node_mip
from slm_operator.planner.portfolio import GuideAnswer, GuideRequest

log = logging.getLogger("slm_operator.guides")

#: how long a pool's guide question must stay the same before it is solved
SETTLE_SECONDS = 30.0
#: while a solve runs or a question settles, the pool passes again at most this many seconds later
POLL_SECONDS = 5.0


def _solve(request: GuideRequest, time_limit_s: float, out: Any) -> None:
    """The worker: solve at the lowest CPU priority, put (status, guide) on ``out``."""
    os.nice(19)
    mip: NodeMip = solve_node_mip(request.policy, request.nodes, request.demands, time_limit_s)
    out.put((mip.status, mip.guide, mip.bound))


@dataclass
class _Job:
    pool: str
    question: str
    process: SpawnProcess
    out: Any
    started: float


class GuideSolver:
    """One worker process at a time; answers and settling questions kept per pool."""

    def __init__(self, time_limit_s: float) -> None:
        self.time_limit_s = time_limit_s
        self._ctx = multiprocessing.get_context("spawn")
        self._job: _Job | None = None
        #: per pool: the question its passes ask, and since when (monotonic seconds)
        self._asked: dict[str, tuple[str, float]] = {}
        self._answers: dict[str, GuideAnswer] = {}
        #: pools pass in their own threads
        self._lock = threading.Lock()

    def answer(self, pool: str) -> GuideAnswer | None:
        """The pool's latest answer (collecting the worker's, when it is done)."""
        with self._lock:
            self._collect()
            return self._answers.get(pool)

    def request(self, pool: str, request: GuideRequest | None) -> float | None:
        """Note the pass's request; start its solve once settled and the worker is free. Returns the seconds
        after which the pool should pass again to pick up an answer (None: nothing pending for it)."""
        with self._lock:
            return self._request(pool, request)

    def _request(self, pool: str, request: GuideRequest | None) -> float | None:
        self._collect()
        if request is None:
            self._asked.pop(pool, None)
            return None
        now = time.monotonic()
        question, since = self._asked.get(pool, ("", now))
        if question != request.question:
            self._asked[pool] = (request.question, now)
            return min(POLL_SECONDS, SETTLE_SECONDS)
        if now - since < SETTLE_SECONDS:
            return min(POLL_SECONDS, SETTLE_SECONDS - (now - since))
        if self._job is None:
            self._start(pool, request)
        return POLL_SECONDS

    def forget(self, pool: str) -> None:
        """A deleted pool: drop its answer and question, and stop its solve."""
        with self._lock:
            self._asked.pop(pool, None)
            self._answers.pop(pool, None)
            job = self._job
            if job is not None and job.pool == pool:
                job.process.terminate()
                job.process.join(5)
                self._job = None

    def _start(self, pool: str, request: GuideRequest) -> None:
        out = self._ctx.Queue(1)
        process = self._ctx.Process(
            target=_solve, args=(request, self.time_limit_s, out), name=f"guide-{pool}", daemon=True
        )
        process.start()
        self._job = _Job(pool, request.question, process, out, time.monotonic())
        log.info(
            "pool %s: solving the node-aware program for a guide (at most %.0f s)", pool, self.time_limit_s
        )

    def _collect(self) -> None:
        job = self._job
        if job is None:
            return
        try:
            status, guide, bound = job.out.get_nowait()
        except queue.Empty:
            if job.process.is_alive():
                return
            try:  # exited: what it put is in the pipe
                status, guide, bound = job.out.get(timeout=1)
            except queue.Empty:
                status, guide, bound = f"worker exited with {job.process.exitcode}", None, 0
        job.process.join(5)
        self._job = None
        seconds = time.monotonic() - job.started
        self._answers[job.pool] = GuideAnswer(job.question, guide, status)
        if guide is None:
            log.warning(
                "pool %s: no guide (%s, %.0f s): planned with the heuristic", job.pool, status, seconds
            )
        else:
            log.info(
                "pool %s: guide found (%s, %.0f s): %d GPUs, at least %d",
                job.pool,
                status,
                seconds,
                guide.gpus,
                bound,
            )
