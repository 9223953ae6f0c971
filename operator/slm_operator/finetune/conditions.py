"""The FineTuneJob's conditions, one function each, from what the Job's pods really reported.

``Sanitized`` comes from the ``sanitize`` step's termination message (records, lines skipped, counts per PII
class) and, with ``dataset.usageStore``, the ``export`` step's before it (the records it read, or why it failed
or cannot start), ``Trained`` from the Job and the ``train`` step, ``Evaluated`` from the gate (``gate.py``), ``Promoted``
from the promotion (``promotion.py``), ``Failed`` from the Job's failure and the step's ``{"error": ...}`` (or
the log tail ``FallbackToLogsOnError`` left).
"""

from __future__ import annotations

from dataclasses import dataclass

from slm_operator.api.v1alpha1 import FineTuneJob, FineTuneJobStatus, SanitizationStatus
from slm_operator.finetune.gate import Gate
from slm_operator.finetune.observe import (
    Attempt,
    Observed,
    SanitizeReport,
    Step,
    TrainReport,
    exported_records,
)
from slm_operator.finetune.promotion import Outcome
from slm_operator.finetune.where import Where
from slm_operator.render.finetune import EXPORT, SANITIZE, artifact
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


#: Waiting reasons of a step that is merely on its way (the kubelet's, for a container not started yet).
_STARTING = ("", "PodInitializing", "ContainerCreating")
#: The Failed condition's reason when a step's own error made the Job fail.
_FAILED_REASON = {EXPORT: "ExportFailed", SANITIZE: "SanitizeFailed"}


def _sanitized_text(report: SanitizeReport, exported: int | None) -> str:
    text = report.summary()
    return f"{text}; {exported} records exported from the usage store" if exported is not None else text


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
        exported = exported_records(done.export.message) if done.export is not None else None
        st = SanitizationStatus(
            records=report.records,
            skipped=report.skipped,
            redacted=report.redacted or None,
            exported=exported,
        )
        return ConditionResult(True, "PIIRedacted", _sanitized_text(report, exported)), st
    if old is not None:  # its pod is gone; the status remembers what it reported
        report = SanitizeReport(old.records, old.skipped, old.redacted or {})
        return ConditionResult(True, "PIIRedacted", _sanitized_text(report, old.exported)), old
    failure = obs.last_failure
    if failure is not None and failure[0] == EXPORT:
        return ConditionResult(False, "ExportFailed", f"the export step failed: {failure[1]}"), None
    if failure is not None and failure[0] == SANITIZE:
        return ConditionResult(False, "SanitizeFailed", f"the sanitize step failed: {failure[1]}"), None
    if obs.failed:
        return ConditionResult(
            None, "JobFailed", f"Job {obs.job_name} failed before the sanitize step reported"
        ), None
    return _sanitizing(obs, where), None


def _exporting(a: Attempt, export: Step) -> ConditionResult | None:
    """Where the export step stands while it has not succeeded: running, or kept from starting (the kubelet's
    CreateContainerConfigError for a Secret or key that is not there: it retries until the Secret is fixed)."""
    if export.state == "running":
        return ConditionResult(
            False,
            "Exporting",
            f"pod {a.name} exports the captured calls from the usage store on node {a.node}",
        )
    if export.state == "waiting" and export.reason not in _STARTING:
        said = f"{export.reason}: {export.message}" if export.message else export.reason
        return ConditionResult(
            False,
            "ExportBlocked",
            f"pod {a.name}: the export step cannot start ({said}); check the Secret that "
            "`dataset.usageStore.urlSecretRef` names (the kubelet retries)",
        )
    return None


def _sanitizing(obs: Observed, where: Where) -> ConditionResult:
    a = obs.latest
    if a is not None and a.export is not None and not a.export.succeeded:
        exporting = _exporting(a, a.export)
        if exporting is not None:
            return exporting
    if a is not None and a.sanitize.state == "running":
        return ConditionResult(False, "Sanitizing", f"pod {a.name} sanitises the dataset on node {a.node}")
    if a is not None and a.sanitize.state == "waiting" and a.sanitize.reason not in _STARTING:
        return ConditionResult(
            False, "Pending", f"pod {a.name}: the sanitize step waits ({a.sanitize.reason})"
        )
    return ConditionResult(False, "Pending", f"Job {obs.job_name} is starting {where.text}")


def failed_step(a: Attempt) -> tuple[str, str] | None:
    """(step, error) of the attempt's failed step, if one failed."""
    for name, step in ((EXPORT, a.export), (SANITIZE, a.sanitize), ("train", a.train)):
        if step is not None and step.failed:
            return name, step.error
    return None


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
    failure = failed_step(a) if a is not None and a.over else None
    if a is not None and failure is not None:
        return ConditionResult(
            False, "Retrying", f"pod {a.name} failed in its {failure[0]} step ({failure[1]}); the Job retries"
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
        reason = _FAILED_REASON.get(failure[0], "TrainerFailed")
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
