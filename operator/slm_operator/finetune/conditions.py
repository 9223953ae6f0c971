"""The FineTuneJob's conditions, one function each, from what the Job's pods really reported.

``Sanitized`` comes from the ``sanitize`` step's termination message (records, lines skipped, counts per PII
class), ``Trained`` from the Job and the ``train`` step, ``Evaluated`` from the gate (``gate.py``), ``Promoted``
from the promotion (``promotion.py``), ``Failed`` from the Job's failure and the step's ``{"error": ...}`` (or
the log tail ``FallbackToLogsOnError`` left).
"""

from __future__ import annotations

from dataclasses import dataclass

from slm_operator.api.v1alpha1 import FineTuneJob, FineTuneJobStatus, SanitizationStatus
from slm_operator.finetune.gate import Gate
from slm_operator.finetune.observe import Attempt, Observed, SanitizeReport, TrainReport
from slm_operator.finetune.promotion import Outcome
from slm_operator.finetune.where import Where
from slm_operator.render.finetune import SANITIZE, artifact
from slm_operator.status import ConditionResult, apply_condition

SANITIZED = "Sanitized"
TRAINED = "Trained"
EVALUATED = "Evaluated"
PROMOTED = "Promoted"
FAILED = "Failed"


def preempted_text(a: Attempt) -> str:
    d = a.disruption or {}
    why = str(d.get("reason") or "DisruptionTarget")
    detail = str(d.get("message") or "").strip()
    return (
        f"trainer pod {a.name} was stopped on node {a.node or '?'} ({why}{': ' + detail if detail else ''}); "
        "the Job's next pod resumes from the last checkpoint once a GPU is free"
    )


def sanitized_condition(
    obs: Observed, where: Where, old: SanitizationStatus | None
) -> tuple[ConditionResult, SanitizationStatus | None]:
    """What the sanitize step reported (the newest pod where it succeeded), or where it stands."""
    done = obs.sanitized
    if done is not None:
        report = SanitizeReport.parse(done.sanitize.message)
        if report is None:
            why = "the sanitize step finished but reported no counts (termination message)"
            return ConditionResult(True, "PIIRedacted", why), old
        st = SanitizationStatus(
            records=report.records, skipped=report.skipped, redacted=report.redacted or None
        )
        return ConditionResult(True, "PIIRedacted", report.summary()), st
    if old is not None:  # its pod is gone; the status remembers what it reported
        return ConditionResult(
            True, "PIIRedacted", SanitizeReport(old.records, old.skipped, old.redacted or {}).summary()
        ), old
    failure = obs.last_failure
    if failure is not None and failure[0] == SANITIZE:
        return ConditionResult(False, "SanitizeFailed", f"the sanitize step failed: {failure[1]}"), None
    if obs.failed:
        return ConditionResult(
            None, "JobFailed", f"Job {obs.job_name} failed before the sanitize step reported"
        ), None
    a = obs.latest
    if a is not None and a.sanitize.state == "running":
        return ConditionResult(
            False, "Sanitizing", f"pod {a.name} sanitises the dataset on node {a.node}"
        ), None
    if a is not None and a.sanitize.state == "waiting" and a.sanitize.reason not in ("", "PodInitializing"):
        return ConditionResult(
            False, "Pending", f"pod {a.name}: the sanitize step waits ({a.sanitize.reason})"
        ), None
    return ConditionResult(False, "Pending", f"Job {obs.job_name} is starting {where.text}"), None


def _trained_text(obs: Observed, preemptions: int) -> str:
    report = TrainReport.parse(obs.trained.train.message) if obs.trained else None
    text = f"Job {obs.job_name} completed"
    if report is not None and report.steps is not None:
        text += f" after {report.steps} steps"
    if report is not None and report.resumed_from is not None:
        text += f" (resumed from step {report.resumed_from})"
    if preemptions:
        text += f"; it was preempted {preemptions} time(s) and resumed"
    return text


def trained_condition(obs: Observed, where: Where, preemptions: int) -> ConditionResult:
    """The Job completed, failed, trains, waits to resume after a preemption, or retries after a failure."""
    if obs.complete:
        return ConditionResult(True, "JobComplete", _trained_text(obs, preemptions))
    if obs.failed:
        return ConditionResult(False, "JobFailed", f"Job {obs.job_name} failed: {failed_text(obs)}")
    a = obs.latest
    if a is not None and a.over and a.disruption is not None:
        return ConditionResult(False, "Preempted", preempted_text(a))
    if a is not None and a.over and (a.sanitize.failed or a.train.failed):
        step, error = ("sanitize", a.sanitize.error) if a.sanitize.failed else ("train", a.train.error)
        return ConditionResult(
            False, "Retrying", f"pod {a.name} failed in its {step} step ({error}); the Job retries"
        )
    if a is not None and a.train.state == "running":
        resumed = f" (resumed after {preemptions} preemption(s))" if preemptions else ""
        return ConditionResult(False, "Training", f"pod {a.name} trains on node {a.node}{resumed}")
    if obs.disrupted:  # the next pod waits for a GPU, or sanitises again before it resumes
        return ConditionResult(False, "Preempted", preempted_text(obs.disrupted[-1]))
    return ConditionResult(False, "Training", f"Job {obs.job_name} is running {where.text}")


def failed_text(obs: Observed) -> str:
    """The step's own error when it made the Job fail, else the Job's reason (e.g. DeadlineExceeded)."""
    failure = obs.last_failure
    if failure is not None and not obs.job_failure.startswith("DeadlineExceeded"):
        return f"{failure[0]} step: {failure[1]}"
    return obs.job_failure or "the Job failed"


def failed_condition(obs: Observed) -> ConditionResult:
    if not obs.failed:
        return ConditionResult(False, "NoFailure", "")
    failure = obs.last_failure
    reason = "JobFailed"
    if failure is not None and not obs.job_failure.startswith("DeadlineExceeded"):
        reason = "SanitizeFailed" if failure[0] == SANITIZE else "TrainerFailed"
    return ConditionResult(True, reason, failed_text(obs))


def problem_status(
    st: FineTuneJobStatus, old: FineTuneJobStatus, problem: tuple[str, str], gen: int | None, now: str
) -> FineTuneJobStatus:
    """Nothing can run (no pool, no segment, no node yet): training is Unknown, the job has not failed."""
    reason, msg = problem
    conds = list(old.conditions or [])
    for t in (SANITIZED, TRAINED):
        conds = apply_condition(conds, t, ConditionResult(None, reason, msg), gen, now)
    st.conditions = apply_condition(conds, FAILED, ConditionResult(False, reason, msg), gen, now)
    return st


@dataclass(frozen=True)
class Findings:
    """Everything the status is made of, decided earlier in the pass."""

    obs: Observed | None
    where: Where
    gate: Gate
    promotion: Outcome
    preemptions: int


def finetune_status(ftj: FineTuneJob, f: Findings, now: str) -> FineTuneJobStatus:
    """The FineTuneJob's status: Sanitized, Trained, Evaluated, Promoted, Failed and the figures behind them.
    ``observedGeneration`` is the generation this pass decided from (the spec is immutable)."""
    old = ftj.status or FineTuneJobStatus()
    gen = ftj.metadata.generation
    st = FineTuneJobStatus(
        observed_generation=gen,
        job_name=old.job_name,
        start_time=old.start_time,
        sanitization=old.sanitization,
        evaluation=f.gate.evaluation,
        preemptions=f.preemptions,
        promotion=f.promotion.status,
    )
    obs = f.obs
    if obs is None:
        assert f.where.problem is not None
        return problem_status(st, old, f.where.problem, gen, now)
    st.job_name = obs.job_name
    st.start_time = obs.start_time or old.start_time
    st.completion_time = obs.completion_time or (old.completion_time if obs.complete else None)
    if obs.complete:
        st.artifact = artifact(ftj)
    sanitized, st.sanitization = sanitized_condition(obs, f.where, old.sanitization)
    conds = list(old.conditions or [])
    for type_, result in (
        (SANITIZED, sanitized),
        (TRAINED, trained_condition(obs, f.where, f.preemptions)),
        (EVALUATED, f.gate.condition),
        (PROMOTED, f.promotion.condition),
        (FAILED, failed_condition(obs)),
    ):
        conds = apply_condition(conds, type_, result, gen, now)
    st.conditions = conds
    return st
