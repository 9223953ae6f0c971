"""The evaluation gate: from the trainer's scores to ``Evaluated`` and whether the result may be promoted.

The trainer scores three models on the same held-out examples: the tuned one (``evalScorePercent``), the base
model (``baseScorePercent``) and, when the target SLMDeployment served an adapter as the Job started, that
incumbent (``incumbentScorePercent``). The gate passes when

* the tuned score is at least ``minScorePercent``, and
* with ``mustBeatIncumbent`` (the default), it is strictly higher than the score of what the SLMDeployment
  serves now: the incumbent adapter if there is one, else the base model (which is what it serves then). A
  promotion must never make the deployment worse than it is; a tie keeps what runs.

A trainer that reports no score passes only a gate that asks for nothing (``minScorePercent: 0`` and
``mustBeatIncumbent: false``).
"""

from __future__ import annotations

from dataclasses import dataclass

from slm_operator.api.v1alpha1 import EvaluationStatus, FineTuneJob
from slm_operator.finetune.observe import Observed, TrainReport
from slm_operator.status import ConditionResult


@dataclass(frozen=True)
class Gate:
    condition: ConditionResult  # Evaluated
    passed: bool  # the result may be promoted
    evaluation: EvaluationStatus | None  # status.evaluation


def _report(obs: Observed, old: EvaluationStatus | None) -> TrainReport | None:
    """The successful trainer's report, or the one recorded in the status when its pod is gone."""
    done = obs.trained
    report = TrainReport.parse(done.train.message) if done is not None else None
    if report is None and old is not None:
        report = TrainReport(old.score, old.base_score, old.incumbent_score, old.examples, old.train_examples,
                             None, None)  # fmt: skip
    return report


def scores_text(r: TrainReport) -> str:
    parts = [f"tuned {r.score}%"]
    if r.base_score is not None:
        parts.append(f"base model {r.base_score}%")
    if r.incumbent_score is not None:
        parts.append(f"incumbent {r.incumbent_score}%")
    on = f" on {r.eval_examples} held-out examples" if r.eval_examples else ""
    return ", ".join(parts) + on


def _reference(ftj: FineTuneJob, obs: Observed, r: TrainReport) -> tuple[str, int | None, str]:
    """(what the deployment serves now, its score, the reason a tie or a loss gives)."""
    target = ftj.spec.promote.slm_deployment_ref.name if ftj.spec.promote else ""
    if obs.incumbent_evaluated:
        return (
            f"the incumbent adapter SLMDeployment {target} serves",
            r.incumbent_score,
            "NotBetterThanIncumbent",
        )
    return f"the base model SLMDeployment {target} serves (no adapter)", r.base_score, "NotBetterThanBase"


def _judge(ftj: FineTuneJob, obs: Observed, r: TrainReport | None) -> tuple[ConditionResult, bool]:
    assert ftj.spec.promote is not None
    gate = ftj.spec.promote.evaluation
    floor = gate.min_score_percent
    if r is None or r.score is None:
        if floor == 0 and not gate.must_beat_incumbent:
            return ConditionResult(
                True, "NoGate", "no evaluation gate (minScorePercent 0, mustBeatIncumbent false)"
            ), True
        return ConditionResult(
            None,
            "NoScore",
            "the trainer reported no evaluation score (evalScorePercent in the termination message of its "
            "train container): the gate cannot pass, nothing is promoted",
        ), False
    scores = scores_text(r)
    if r.score < floor:
        return ConditionResult(
            False, "BelowGate", f"{scores}: below minScorePercent {floor}%, not promoted"
        ), False
    if not gate.must_beat_incumbent:
        return ConditionResult(True, "GatePassed", f"{scores}: at least minScorePercent {floor}%"), True
    what, ref, reason = _reference(ftj, obs, r)
    if ref is None:
        return ConditionResult(
            None,
            "NoReferenceScore",
            f"{scores}: the trainer reported no score for {what}, so mustBeatIncumbent cannot pass; nothing "
            "is promoted",
        ), False
    if r.score <= ref:
        return ConditionResult(False, reason, f"{scores}: does not beat {what} ({ref}%), not promoted"), False
    return ConditionResult(True, "GatePassed", f"{scores}: beats {what} ({ref}%) and meets {floor}%"), True


def evaluate(ftj: FineTuneJob, obs: Observed | None, old: EvaluationStatus | None) -> Gate:
    """``Evaluated`` and the gate, once the Job completed; the scores go to ``status.evaluation``."""
    if obs is None or not obs.complete:
        why = (
            "training failed: nothing to evaluate"
            if obs is not None and obs.failed
            else "training has not finished"
        )
        return Gate(ConditionResult(False, "NotTrained", why), False, old)
    r = _report(obs, old)
    evaluation = (
        EvaluationStatus(
            score=r.score,
            base_score=r.base_score,
            incumbent_score=r.incumbent_score,
            examples=r.eval_examples,
            train_examples=r.train_examples,
        )
        if r is not None
        else None
    )
    if ftj.spec.promote is None:
        if r is None or r.score is None:
            return Gate(
                ConditionResult(None, "NoScore", "the trainer reported no evaluation score"),
                False,
                evaluation,
            )
        return Gate(ConditionResult(True, "Scored", scores_text(r)), False, evaluation)
    condition, passed = _judge(ftj, obs, r)
    return Gate(condition, passed, evaluation)
