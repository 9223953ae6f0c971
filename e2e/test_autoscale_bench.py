"""The timing half of `make bench-autoscale` (bench/autoscale.py runs this file under pytest): on the local control
plane, with the harness of e2e/test_autoscale.py (its ``stack`` fixture), the time from the start of a burst to
the new replicas Ready, from the first call at zero to its answer, and the stand-in server's own start time.

Runs only when ``BENCH_AUTOSCALE_OUT`` names the JSON file to write (``BENCH_AUTOSCALE_REPS`` repetitions,
default 3); `make test-e2e` skips it. It measures; it asserts only that the calls were answered.
"""

from __future__ import annotations

import json
import os
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from e2e import test_autoscale
from e2e.conftest import wait_for
from e2e.operator import Answer, chat, free_port, kubectl_apply, wait_served
from e2e.replicas import serve
from e2e.standin import Behaviour, StandIn
from e2e.test_autoscale import (
    CONVERGE,
    SCALE_TO_ZERO_AFTER,
    Stack,
    bound_pods,
    deployment,
    desired,
    ready_endpoints,
    route,
)

OUT = os.environ.get("BENCH_AUTOSCALE_OUT")
REPS = int(os.environ.get("BENCH_AUTOSCALE_REPS", "3"))
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not OUT, reason="a benchmark: run by `make bench-autoscale` (BENCH_AUTOSCALE_OUT)"),
]
#: the stack fixture of e2e/test_autoscale.py, under the name these tests ask for
stack_fixture = test_autoscale.stack
CALLERS = 12  # calls at once; target 2 per replica, maxReplicas 3: the burst asks for 1 -> 3


def _record(key: str, value: Any) -> None:
    assert OUT
    path = Path(OUT)
    data = json.loads(path.read_text()) if path.exists() else {}
    data[key] = value
    path.write_text(json.dumps(data, indent=2) + "\n")


def _summary(values: list[float]) -> dict[str, Any]:
    return {
        "median": round(statistics.median(values), 2),
        "max": round(max(values), 2),
        "runs": [round(v, 2) for v in values],
    }


def _ready_pods(stack: Stack, dep: str) -> int:
    """Replica pods kwok reports Ready (condition Ready True), not being deleted."""
    n = 0
    for p in bound_pods(stack, dep):
        conds = p.status.conditions or []
        n += any(c.type == "Ready" and c.status == "True" for c in conds)
    return n


def _served(stack: Stack, dep: str) -> int:
    return sum(1 for p in bound_pods(stack, dep) if p.metadata.uid in stack.replicas.serving)


def test_standin_start_time(stack_fixture: Stack) -> None:
    stack = stack_fixture
    times = []
    for i in range(max(REPS, 5)):
        port = free_port()
        t0 = time.monotonic()
        runner = stack.replicas.loops.run(serve(StandIn(f"s{i}", Behaviour()), "127.0.0.1", port))
        answer = chat(f"http://127.0.0.1:{port}", "m", timeout=10)
        times.append(time.monotonic() - t0)
        stack.replicas.loops.run(runner.cleanup())
        assert answer.status == 200
    _record("standinStartToFirstAnswerSeconds", _summary(times))


def _one_burst(stack: Stack, answers: list[Answer]) -> dict[str, float]:
    ns = stack.ns
    stop = threading.Event()

    def caller() -> None:
        while not stop.is_set():
            answers.append(chat(stack.gateway.url, "bburst", token=stack.token, timeout=60))

    marks: dict[str, float] = {}
    with ThreadPoolExecutor(CALLERS) as pool:
        t0 = time.monotonic()
        callers = [pool.submit(caller) for _ in range(CALLERS)]
        try:

            def check() -> bool:
                now = time.monotonic() - t0
                if "decision" not in marks and desired(stack, "bburst") == 3:
                    marks["decision"] = now
                if "podsReady" not in marks and _ready_pods(stack, "bburst") == 3:
                    marks["podsReady"] = now
                if "served" not in marks and "podsReady" in marks and _served(stack, "bburst") == 3:
                    marks["served"] = now
                return len(marks) == 3

            wait_for(check, CONVERGE, "burst: 3 replicas Ready and served", interval=0.05)
        finally:
            stop.set()
            for c in callers:
                c.result(90)
    wait_for(lambda: desired(stack, "bburst") == 1, 90, "back to 1 replica")
    wait_served(stack.replicas, stack.cluster, ns, "bburst", 1, CONVERGE)
    return marks


def test_burst_to_new_replicas_ready(stack_fixture: Stack) -> None:
    stack = stack_fixture
    ns = stack.ns
    burst = deployment("bburst", ns, {"minReplicas": 1, "maxReplicas": 3, "target": 2, "stableWindow": "6s",
                                      "panicWindow": "2s", "scaleDownDelay": "5s"})  # fmt: skip
    kubectl_apply(stack.cluster, [burst, route("bburst", ns, "bburst")])
    wait_served(stack.replicas, stack.cluster, ns, "bburst", 1, CONVERGE)
    stack.replicas.behave(ns, "bburst", Behaviour(delay=0.5))  # each call keeps a slot half a second
    answers: list[Answer] = []
    runs = [_one_burst(stack, answers) for _ in range(REPS)]
    failed = [a.status for a in answers if a.status != 200]
    assert not failed, f"{len(failed)} of {len(answers)} calls failed"
    _record(
        "burst",
        {
            "callers": CALLERS,
            "target": 2,
            "replicas": "1 -> 3",
            "toDecisionSeconds": _summary([r["decision"] for r in runs]),
            "toPodsReadySeconds": _summary([r["podsReady"] for r in runs]),
            "toServedSeconds": _summary([r["served"] for r in runs]),
            "calls": len(answers),
        },
    )


def test_first_call_at_zero_to_its_answer(stack_fixture: Stack) -> None:
    stack = stack_fixture
    ns = stack.ns
    waits = []
    for _ in range(REPS):
        wait_for(
            lambda: desired(stack, "idle") == 0 and not bound_pods(stack, "idle"),
            SCALE_TO_ZERO_AFTER + 120,
            "the idle deployment at zero",
        )
        wait_for(lambda: not stack.cluster.core.list_namespaced_pod(ns, label_selector="slm.io/deployment=idle").items,
                 60, "the idle deployment's pod deleted")  # fmt: skip
        wait_for(lambda: ready_endpoints(stack, "idle") == 0, 30, "the gateway sees no ready replica of idle")
        t0 = time.monotonic()
        answer = chat(stack.gateway.url, "idle", token=stack.token, timeout=150)
        waits.append(time.monotonic() - t0)
        assert answer.status == 200 and "x-slm-fallback" not in answer.headers, answer.body
    _record(
        "fromZero",
        {"scaleToZeroAfterSeconds": SCALE_TO_ZERO_AFTER, "firstCallToAnswerSeconds": _summary(waits)},
    )
