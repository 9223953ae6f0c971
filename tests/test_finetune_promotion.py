"""Promotion without a cluster, pass after pass: the SLMDeployment rolls onto the result, Promoted waits for
every replica, a replica that fails rolls it back, and of two FineTuneJobs only the newest successful one wins."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from finetune_support import NOW, completed_pods, condition, ftj, job, replica, target, world
from slm_operator.api.v1alpha1 import FineTuneJob, PromotionPhase, SLMDeployment
from slm_operator.contract import (
    ADAPTER_ANNOTATION,
    PROMOTED_LORA_RANK_ANNOTATION,
    PROMOTED_METHOD_ANNOTATION,
)
from slm_operator.events import Event
from slm_operator.finetune import FineTuneDecisions, decide_finetune

V1 = {ADAPTER_ANNOTATION: "pvc://adapters/extractor/v1", PROMOTED_METHOD_ANNOTATION: "LoRA",
      PROMOTED_LORA_RANK_ANNOTATION: "16"}  # fmt: skip


class Cluster:
    """The FineTuneJobs, their completed Jobs, the SLMDeployment and its replica pods; a pass applies what the
    core decided the way the shell does (status, then the annotation patch, then events)."""

    def __init__(self, *jobs: tuple[FineTuneJob, str, int], dep: SLMDeployment) -> None:
        self.ftjs = {f.metadata.name: f for f, _, _ in jobs}
        self.jobs = {
            f.metadata.name: job(f"{f.metadata.name}-train", complete=True, completion=t) for f, t, _ in jobs
        }
        self.job_pods = {f.metadata.name: completed_pods(score) for f, _, score in jobs}
        self.dep = dep
        self.pods: list[dict[str, Any]] = []
        self.patches: list[str] = []
        self.events: list[Event] = []

    def run(self, name: str, now: str = NOW) -> FineTuneDecisions:
        f = self.ftjs[name]
        w = world(
            f, job=self.jobs[name], job_pods=self.job_pods[name], target=self.dep, target_pods=self.pods,
            others=list(self.ftjs.values()), now=now,
        )  # fmt: skip
        d = decide_finetune(w)
        self.ftjs[name] = f.model_copy(update={"status": d.status})
        if d.promotion is not None:
            annotations = dict(self.dep.metadata.annotations or {})
            for k, v in d.promotion.annotations.items():
                if v is None:
                    annotations.pop(k, None)
                else:
                    annotations[k] = v
            self.dep = self.dep.model_copy(deep=True)
            self.dep.metadata.annotations = annotations
            self.patches.append(name)
        self.events += d.events
        return d

    def roll(self, *ready: bool, started: str = NOW, **status: Any) -> None:
        """The pool's pass replaced the replicas: one pod per flag on the weights the deployment names now."""
        self.pods = [replica(self.dep, i, ready=r, started=started, **status) for i, r in enumerate(ready)]

    def promoted(self, name: str) -> Any:
        return condition(self.ftjs[name].status, "Promoted")

    def serves(self) -> str | None:
        return (self.dep.metadata.annotations or {}).get(ADAPTER_ANNOTATION)


def _one(dep: SLMDeployment | None = None) -> Cluster:
    return Cluster((ftj("v2"), "2026-11-26T09:30:00Z", 90), dep=dep or target(2, V1))


def test_promoted_only_once_every_replica_serves_the_new_weights_and_is_ready() -> None:
    c = _one()
    old = c.dep
    c.run("v2")
    assert c.patches == ["v2"] and c.serves() == "pvc://adapters/extractor/v2"
    rec = c.ftjs["v2"].status.promotion
    assert rec is not None and rec.phase is PromotionPhase.ROLLING
    assert (rec.previous_adapter, rec.previous_method, rec.previous_lora_rank) == (
        "pvc://adapters/extractor/v1",
        "LoRA",
        "16",
    )
    assert [(e.kind, e.reason) for e in c.events] == [("SLMDeployment", "Promoted")]
    c.pods = [replica(old, 0, ready=True), replica(old, 1, ready=True)]
    c.run("v2")
    assert c.promoted("v2").reason == "Rolling" and c.promoted("v2").message.startswith("0 of 2 replicas")
    c.pods = [replica(c.dep, 0, ready=True), replica(old, 1, ready=True)]
    c.run("v2")
    assert c.promoted("v2").status.value == "False" and c.promoted("v2").message.startswith("1 of 2 replicas")
    c.roll(True, False)
    c.run("v2")
    assert c.promoted("v2").message.startswith("1 of 2 replicas"), "a replica not Ready yet is not serving"
    c.roll(True, True)
    c.run("v2")
    p = c.promoted("v2")
    assert (p.status.value, p.reason) == ("True", "Promoted")
    assert (
        p.message
        == "all 2 replicas of SLMDeployment extractor serve pvc://adapters/extractor/v2 and are Ready"
    )
    assert c.ftjs["v2"].status.promotion.phase is PromotionPhase.PROMOTED
    events = len(c.events)
    c.run("v2")
    assert c.patches == ["v2"] and len(c.events) == events, "promoted once"


def test_a_replica_not_ready_in_time_rolls_the_deployment_back() -> None:
    c = _one()
    c.run("v2")
    c.roll(False, started="2026-11-26T09:55:00Z")  # 300 s ago: still within readinessTimeoutSeconds (600)
    c.run("v2")
    assert c.promoted("v2").reason == "Rolling" and c.patches == ["v2"]
    c.roll(False, started="2026-11-26T09:49:59Z")  # 601 s ago
    c.run("v2")
    p = c.promoted("v2")
    assert (p.status.value, p.reason) == ("False", "RolledBack")
    assert "was not Ready 600s after it started on node gpu-3" in p.message
    assert p.message.endswith("SLMDeployment extractor was rolled back to pvc://adapters/extractor/v1")
    assert c.dep.metadata.annotations == V1, "the previous weights, method and rank are back"
    assert {(e.kind, e.type, e.reason) for e in c.events[1:]} == {
        ("FineTuneJob", "Warning", "RolledBack"),
        ("SLMDeployment", "Warning", "RolledBack"),
    }
    # final: later passes (the old weights rolling back in) neither promote again nor touch the deployment
    c.roll(True, True)
    for _ in range(3):
        c.run("v2")
    assert c.patches == ["v2", "v2"] and c.promoted("v2").reason == "RolledBack"


def test_a_crash_looping_replica_rolls_back_to_the_base_model_when_nothing_was_promoted_before() -> None:
    c = _one(target(2))
    c.run("v2")
    waiting = {"state": {"waiting": {"reason": "CrashLoopBackOff"}},
               "lastState": {"terminated": {"message": "ValueError: LoRA rank 64 is greater than max_lora_rank 16"}}}  # fmt: skip
    c.roll(False, restarts=2, **waiting)
    c.run("v2")
    p = c.promoted("v2")
    assert (
        p.reason == "RolledBack"
        and "is crash-looping (server restarted 2 times: ValueError: LoRA rank 64" in p.message
    )
    assert p.message.endswith("rolled back to the base model")
    assert not (c.dep.metadata.annotations or {}), "the promotion annotations are removed"


def test_a_replica_that_never_started_does_not_time_out() -> None:
    """A pod the scheduler has not placed yet is the pool's business (its status says why), not the weights'."""
    c = _one()
    c.run("v2")
    c.roll(False)
    for p in c.pods:
        del p["status"]["startTime"]
    c.run("v2", now="2026-11-27T10:00:00Z")
    assert c.promoted("v2").reason == "Rolling"


def test_two_finetunejobs_the_newest_successful_one_wins_without_a_fight() -> None:
    c = Cluster(
        (ftj("v2"), "2026-11-26T09:30:00Z", 90),
        (ftj("v3"), "2026-11-26T09:40:00Z", 91),
        dep=target(2, V1),
    )
    for _ in range(5):  # passes over both, in both orders
        c.run("v2")
        c.run("v3")
        c.roll(True, True)
        c.run("v3")
        c.run("v2")
    assert c.patches == ["v2", "v3"], "v2 promoted before v3 had a status, then never again"
    assert c.serves() == "pvc://adapters/extractor/v3"
    sup = c.promoted("v2")
    assert (
        sup.reason == "Superseded"
        and "FineTuneJob v3 completed later (2026-11-26T09:30:00Z" not in sup.message
    )
    assert sup.message.startswith("FineTuneJob v3 completed later (2026-11-26T09:40:00Z)")
    assert c.ftjs["v2"].status.promotion.phase is PromotionPhase.SUPERSEDED
    assert c.promoted("v3").reason == "Promoted"
    rec = c.ftjs["v3"].status.promotion
    assert rec is not None and rec.previous_adapter in (
        "pvc://adapters/extractor/v1",
        "pvc://adapters/extractor/v2",
    )


def test_the_older_one_never_patches_when_the_newer_one_came_first() -> None:
    c = Cluster(
        (ftj("v2"), "2026-11-26T09:30:00Z", 90), (ftj("v3"), "2026-11-26T09:40:00Z", 91), dep=target(2, V1)
    )
    c.run("v3")
    for _ in range(3):
        c.run("v2")
        c.run("v3")
    assert c.patches == ["v3"] and c.promoted("v2").reason == "Superseded"


def test_a_newer_job_that_fails_its_gate_or_is_deleted_does_not_supersede() -> None:
    c = Cluster(
        (ftj("v2"), "2026-11-26T09:30:00Z", 90),
        (ftj("v3", gate=95), "2026-11-26T09:40:00Z", 91),
        dep=target(2, V1),
    )
    c.run("v3")
    c.run("v2")
    assert condition(c.ftjs["v3"].status, "Evaluated").reason == "BelowGate"
    assert c.patches == ["v2"] and c.promoted("v2").reason == "Rolling"
    c2 = Cluster(
        (ftj("v2"), "2026-11-26T09:30:00Z", 90), (ftj("v3"), "2026-11-26T09:40:00Z", 91), dep=target(2, V1)
    )
    c2.run("v3")
    c2.ftjs["v3"].metadata.deletion_timestamp = NOW
    c2.run("v2")
    assert c2.promoted("v2").reason != "Superseded"


def test_when_the_newer_one_rolls_back_the_older_one_serves_again_without_a_patch() -> None:
    c = Cluster(
        (ftj("v2"), "2026-11-26T09:30:00Z", 90), (ftj("v3"), "2026-11-26T09:40:00Z", 91), dep=target(2, V1)
    )
    c.run("v2")
    c.roll(True, True)
    c.run("v2")
    assert c.promoted("v2").reason == "Promoted"
    c.run("v3")  # v3 completed later: it promotes, v2 is superseded
    c.run("v2")
    assert c.promoted("v2").reason == "Superseded"
    c.roll(False, started="2026-11-26T09:00:00Z")
    c.run("v3")  # v3's replica never got ready: back to v2's weights
    assert c.promoted("v3").reason == "RolledBack" and c.serves() == "pvc://adapters/extractor/v2"
    c.roll(True, True)
    c.run("v2")
    assert c.promoted("v2").reason == "Promoted" and c.patches == ["v2", "v3", "v3"]


def test_a_promotion_someone_replaced_is_not_redone() -> None:
    c = _one()
    c.run("v2")
    c.roll(True, True)
    c.run("v2")
    c.dep.metadata.annotations = dict(V1)  # an operator rolled back by hand
    c.run("v2")
    p = c.promoted("v2")
    assert p.reason == "Replaced" and "now serves pvc://adapters/extractor/v1" in p.message
    assert c.patches == ["v2"]


def test_missing_target_and_a_deployment_scaled_to_zero() -> None:
    d = decide_finetune(world(ftj(), job=job(complete=True), job_pods=completed_pods(90), target=None))
    assert condition(d.status, "Promoted").reason == "TargetNotFound" and d.promotion is None
    c = _one(target(0, V1))
    c.run("v2")
    c.run("v2")
    p = c.promoted("v2")
    assert p.status.value == "True" and p.message.endswith("(no replica runs now)")


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.booleans(), min_size=2, max_size=4),
    st.randoms(use_true_random=False),
    st.lists(st.integers(0, 3), max_size=16),
)
def test_any_order_of_passes_ends_on_the_newest_successful_result(
    passes_gate: list[bool], rnd: Any, order: list[int]
) -> None:
    """Whatever order the passes come in, once each FineTuneJob had a pass after all completed, the deployment
    serves the newest one that passed its gate (or what it served before), and further passes change nothing."""
    minutes = list(range(len(passes_gate)))
    rnd.shuffle(minutes)
    jobs = [
        (ftj(f"v{i}", gate=80), f"2026-11-26T09:{30 + m:02d}:00Z", 90 if ok else 50)
        for i, (ok, m) in enumerate(zip(passes_gate, minutes, strict=True))
    ]
    c = Cluster(*jobs, dep=target(2, V1))
    names = [f.metadata.name for f, _, _ in jobs]
    for i in order:
        c.run(names[i % len(names)])
    for _ in range(2):
        for n in names:
            c.run(n)
    winners = [(t, f.metadata.name) for (f, t, score) in jobs if score >= 80]
    want = f"pvc://adapters/extractor/{max(winners)[1]}" if winners else V1[ADAPTER_ANNOTATION]
    assert c.serves() == want
    patches = len(c.patches)
    for n in reversed(names):
        c.run(n)
    assert len(c.patches) == patches, "settled: no more patches"
    assert len(c.patches) <= len(winners)
