"""Guided packing in the operator's pass (``decide``; planner/guided.py, controllers/guides.py): a pool in the
guided size range asks for a guide until one answers its question, packs from it where that places as many
replicas on fewer GPUs, keeps packing from an older one while a new one is solved, and the shell's worker
answers in its own process."""

from __future__ import annotations

import time

import pytest

from slm_operator.controllers import guides as guides_mod
from slm_operator.controllers.guides import GuideSolver
from slm_operator.planner.nodemip import solve_node_mip
from slm_operator.planner.portfolio import GuideAnswer
from slm_operator.reconcile import World, decide
from slm_operator.render import OperatorConfig
from test_reconcile import _world

pytest.importorskip("ortools")

GUIDED = OperatorConfig(configmap_sync_seconds=0, guided_min_gpus=4, guided_time_limit_seconds=60)


def _small(cfg: OperatorConfig = GUIDED) -> World:
    """The example h100 pool on one node (8 GPUs) with tool-caller, intent-router and summarizer (8 replicas):
    the heuristic uses 5 GPUs, 4 are enough."""
    w = _world("h100")
    w.nodes = [n for n in w.nodes if n["metadata"]["name"] != "gpu-h100-1"]
    w.deployments = [
        d for d in w.deployments if d.metadata.name in ("tool-caller", "intent-router", "summarizer")
    ]
    w.cfg = cfg
    return w


def test_a_pool_asks_for_a_guide_packs_from_it_on_fewer_gpus_and_stops_asking() -> None:
    off = decide(_small(OperatorConfig(configmap_sync_seconds=0)))
    assert off.guide_request is None and off.plan is not None and off.plan.solver == "heuristic"
    d1 = decide(_small())
    assert d1.plan is not None and d1.plan.placements() == off.plan.placements()
    request = d1.guide_request
    assert request is not None and len(request.nodes) == 1 and len(request.demands) == 3
    mip = solve_node_mip(request.policy, request.nodes, request.demands)
    assert mip.guide is not None
    w2 = _small()
    w2.plan_guide = GuideAnswer(request.question, mip.guide, mip.status)
    d2 = decide(w2)
    assert d2.guide_request is None
    assert d2.plan is not None and d2.plan.solver == "guided"
    assert (d2.plan.pool.gpus_used, off.plan.pool.gpus_used) == (4, 5)
    assert d2.plan.pool.replicas_placed == off.plan.pool.replicas_placed == 8
    assert d2.pool_status is not None and d2.pool_status.gpus_used == 4
    # a deployment scaled: a new question, asked while the older guide still packs the pool
    w3 = _small()
    w3.plan_guide = w2.plan_guide
    w3.deployments = [
        d.model_copy(update={"spec": d.spec.model_copy(update={"replicas": d.spec.replicas + 1})})
        if d.metadata.name == "summarizer"
        else d
        for d in w3.deployments
    ]
    d3 = decide(w3)
    assert d3.guide_request is not None and d3.guide_request.question != request.question
    assert d3.plan is not None and d3.plan.pool.replicas_placed == 9


def test_a_pool_out_of_the_guided_range_never_asks() -> None:
    d = decide(
        _small(OperatorConfig(configmap_sync_seconds=0, guided_min_gpus=9, guided_time_limit_seconds=60))
    )
    assert d.guide_request is None


def test_the_shells_worker_solves_a_settled_question_in_its_own_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(guides_mod, "SETTLE_SECONDS", 0.5)
    request = decide(_small()).guide_request
    assert request is not None
    solver = GuideSolver(60)
    assert solver.request("p", request) == 0.5  # first seen: settles before a solve starts
    assert solver.answer("p") is None
    time.sleep(0.6)
    solver.request("p", request)
    deadline = time.monotonic() + 120
    answer = solver.answer("p")
    while answer is None and time.monotonic() < deadline:
        time.sleep(0.2)
        answer = solver.answer("p")
    assert answer is not None and answer.question == request.question and answer.status == "OPTIMAL"
    assert answer.guide is not None and answer.guide.gpus == 3
    # the pass that packs from it asks nothing more
    assert solver.request("p", None) is None
    solver.forget("p")
    assert solver.answer("p") is None


def test_a_worker_that_dies_answers_without_a_guide_so_the_question_is_not_asked_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(guides_mod, "SETTLE_SECONDS", 0.0)
    request = decide(_small()).guide_request
    assert request is not None
    solver = GuideSolver(60)
    solver.request("p", request)
    solver.request("p", request)
    job = solver._job
    assert job is not None
    job.process.kill()
    job.process.join(10)
    answer = solver.answer("p")
    assert answer is not None and answer.guide is None and answer.status.startswith("worker exited")
    assert answer.question == request.question
