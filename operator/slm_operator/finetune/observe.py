"""What really happened to a FineTuneJob's Job: its conditions, and what each pod's steps reported (``export``
with ``dataset.usageStore``, ``sanitize``, ``train``).

Every step writes a JSON termination message (``/dev/termination-log``, at most 4096 bytes) and the containers
have ``terminationMessagePolicy: FallbackToLogsOnError``, so a step that crashed without writing one still
leaves the tail of its log there. Nothing here trusts that a pod ran just because it exists: the conditions
are made from these messages and exit codes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from slm_operator.render.finetune import DISRUPTION_TARGET, EXPORT, SANITIZE, SIGTERM_EXIT_CODE, TRAIN
from slm_operator.views import PodView

#: How much of a log tail (FallbackToLogsOnError) a condition message quotes.
MAX_QUOTED = 500


def job_condition(job: Mapping[str, Any] | None, type_: str) -> Mapping[str, Any] | None:
    """The Job's condition ``type_`` (``Complete``, ``Failed``) when it is ``True``."""
    for c in ((job or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == type_ and c.get("status") == "True":
            return c  # type: ignore[no-any-return]
    return None


def parse_message(text: str | None) -> dict[str, Any] | None:
    """A termination message that is a JSON object, else None."""
    try:
        doc = json.loads(text or "")
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def failure_text(message: str | None, exit_code: int | None, reason: str | None) -> str:
    """What a failed step said: its ``{"error": ...}``, else the last line of the log tail, else its exit."""
    doc = parse_message(message)
    if doc is not None and isinstance(doc.get("error"), str) and doc["error"].strip():
        return str(doc["error"]).strip()[:MAX_QUOTED]
    lines = [ln.strip() for ln in (message or "").splitlines() if ln.strip()]
    if lines:
        return lines[-1][-MAX_QUOTED:]
    return f"exit code {exit_code}" + (f" ({reason})" if reason else "")


@dataclass(frozen=True)
class Step:
    """One container of one pod, as its status says."""

    pod: str
    state: str  # waiting | running | terminated | "" (no status yet)
    exit_code: int | None = None
    message: str | None = None  # the termination message (or log tail); why it waits, as the kubelet says
    reason: str = ""  # why it waits or why it terminated

    @property
    def succeeded(self) -> bool:
        return self.state == "terminated" and self.exit_code == 0

    @property
    def failed(self) -> bool:
        return self.state == "terminated" and self.exit_code not in (0, None)

    @property
    def error(self) -> str:
        return failure_text(self.message, self.exit_code, self.reason)


def _step(pod: PodView, container: str, init: bool) -> Step:
    key = "initContainerStatuses" if init else "containerStatuses"
    for cs in pod.status.get(key) or ():
        if cs.get("name") != container:
            continue
        state = cs.get("state") or {}
        if "terminated" in state:
            t = state["terminated"] or {}
            code = t.get("exitCode")
            return Step(pod.name, "terminated", int(code) if isinstance(code, int) else None,
                        t.get("message"), str(t.get("reason") or ""))  # fmt: skip
        if "running" in state:
            return Step(pod.name, "running")
        waiting = state.get("waiting") or {}
        return Step(
            pod.name, "waiting", message=waiting.get("message"), reason=str(waiting.get("reason") or "")
        )
    return Step(pod.name, "")


@dataclass(frozen=True)
class Attempt:
    """One pod of the Job: where it ran and what each step did."""

    pod: PodView
    sanitize: Step
    train: Step
    export: Step | None = None  # the export step, when the Job has one (dataset.usageStore)

    @property
    def name(self) -> str:
        return self.pod.name

    @property
    def node(self) -> str:
        return self.pod.bound_node

    @property
    def disruption(self) -> Mapping[str, Any] | None:
        """The pod was preempted or evicted (its ``DisruptionTarget`` condition), or its trainer answered a
        SIGTERM with a checkpoint (exit code 143): the Job does not count it and the next pod resumes."""
        c = self.pod.condition(DISRUPTION_TARGET)
        if c is not None and c.get("status") == "True":
            return c
        if self.train.state == "terminated" and self.train.exit_code == SIGTERM_EXIT_CODE:
            return {
                "reason": "TerminatedBySIGTERM",
                "message": "the trainer was stopped (SIGTERM) and saved a checkpoint",
            }
        return None

    @property
    def over(self) -> bool:
        """It will not train any more (finished, disrupted or being deleted)."""
        return self.pod.finished or self.pod.deleting or self.disruption is not None


def attempts(pods: Sequence[Mapping[str, Any]]) -> list[Attempt]:
    """The Job's pods, oldest first (by creation, then name)."""
    views = sorted(map(PodView, pods), key=lambda p: (str(p.metadata.get("creationTimestamp") or ""), p.name))
    return [Attempt(p, _step(p, SANITIZE, True), _step(p, TRAIN, False), _export_step(p)) for p in views]


def _export_step(pod: PodView) -> Step | None:
    """The export step, when the pod has one (its spec names it)."""
    named = any(c.get("name") == EXPORT for c in (pod.spec.get("initContainers") or ()))
    return _step(pod, EXPORT, True) if named else None


@dataclass(frozen=True)
class Observed:
    """The Job and its pods, read once for the conditions."""

    job_name: str
    complete: bool
    failed: bool
    job_failure: str  # the Job's own Failed condition (reason: message), e.g. DeadlineExceeded
    start_time: str | None
    completion_time: str | None
    tries: tuple[Attempt, ...] = field(default_factory=tuple)
    incumbent_evaluated: bool = False  # the train container was given --incumbent

    @property
    def latest(self) -> Attempt | None:
        return self.tries[-1] if self.tries else None

    @property
    def sanitized(self) -> Attempt | None:
        """The newest pod whose sanitize step succeeded."""
        return next((a for a in reversed(self.tries) if a.sanitize.succeeded), None)

    @property
    def trained(self) -> Attempt | None:
        """The newest pod whose train step succeeded (the one the Job completed with)."""
        return next((a for a in reversed(self.tries) if a.train.succeeded), None)

    @property
    def last_failure(self) -> tuple[str, str] | None:
        """(step, error) of the newest pod a step of which failed (not a disruption)."""
        for a in reversed(self.tries):
            if a.disruption is not None:
                continue
            if a.export is not None and a.export.failed:
                return EXPORT, a.export.error
            if a.sanitize.failed:
                return SANITIZE, a.sanitize.error
            if a.train.failed:
                return TRAIN, a.train.error
        return None

    @property
    def disrupted(self) -> list[Attempt]:
        return [a for a in self.tries if a.disruption is not None]


def observe(job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]) -> Observed:
    status = job.get("status") or {}
    failed = job_condition(job, "Failed")
    train_args: list[str] = []
    for c in (((job.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers") or []:
        if c.get("name") == TRAIN:
            train_args = [str(a) for a in c.get("args") or []]
    return Observed(
        job_name=str((job.get("metadata") or {}).get("name") or ""),
        complete=job_condition(job, "Complete") is not None,
        failed=failed is not None,
        job_failure=(
            f"{failed.get('reason') or 'Failed'}: {failed.get('message') or ''}".rstrip(": ")
            if failed
            else ""
        ),
        start_time=status.get("startTime"),
        completion_time=status.get("completionTime"),
        tries=tuple(attempts(pods)),
        incumbent_evaluated="--incumbent" in train_args,
    )


# ------------------------------------------------------------------------------------------ the reports


def _count(doc: Mapping[str, Any], key: str) -> int | None:
    v = doc.get(key)
    return int(v) if isinstance(v, int | float) and not isinstance(v, bool) and v >= 0 else None


def _object(doc: Mapping[str, Any], key: str) -> dict[str, Any]:
    v = doc.get(key)
    return v if isinstance(v, dict) else {}


def _percent(doc: Mapping[str, Any], key: str) -> int | None:
    v = _count(doc, key)
    return min(v, 100) if v is not None else None


@dataclass(frozen=True)
class SanitizeReport:
    """The sanitize step's termination message: ``{"records": N, "skipped": N, "redacted": {class: N}}``."""

    records: int
    skipped: int
    redacted: dict[str, int]

    @classmethod
    def parse(cls, message: str | None) -> SanitizeReport | None:
        doc = parse_message(message)
        if doc is None or _count(doc, "records") is None:
            return None
        red = _object(doc, "redacted")
        counts = {str(k): c for k in sorted(red) if (c := _count(red, k)) is not None}
        return cls(_count(doc, "records") or 0, _count(doc, "skipped") or 0, counts)

    def summary(self) -> str:
        what = ", ".join(f"{k} {v}" for k, v in sorted(self.redacted.items()) if v) or "nothing to redact"
        return f"{self.records} records sanitised, {self.skipped} skipped as unparsable; redacted: {what}"


def exported_records(message: str | None) -> int | None:
    """The export step's termination message ``{"records": N}``: the calls it read from the usage store."""
    doc = parse_message(message)
    return _count(doc, "records") if doc is not None else None


@dataclass(frozen=True)
class TrainReport:
    """The train step's termination message (scores in percent on the held-out examples)."""

    score: int | None
    base_score: int | None
    incumbent_score: int | None
    eval_examples: int
    train_examples: int
    steps: int | None
    resumed_from: int | None

    @classmethod
    def parse(cls, message: str | None) -> TrainReport | None:
        doc = parse_message(message)
        if doc is None:
            return None
        ex = _object(doc, "examples")
        return cls(
            score=_percent(doc, "evalScorePercent"),
            base_score=_percent(doc, "baseScorePercent"),
            incumbent_score=_percent(doc, "incumbentScorePercent"),
            eval_examples=_count(ex, "eval") or 0,
            train_examples=_count(ex, "train") or 0,
            steps=_count(doc, "steps"),
            resumed_from=_count(doc, "resumedFromStep"),
        )
