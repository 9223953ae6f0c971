"""Promotion: point the SLMDeployment at the result, watch its replicas roll, roll back when one fails.

* **Rolling.** The FineTuneJob merge-patches the SLMDeployment's annotations (``slm.io/promoted-adapter`` and
  the method and rank next to it). That changes the deployment's spec hash, and the pool's pass replaces its
  replica pods in place one at a time, each only while every other replica is Ready (``ROLLING_UPDATE_GATES``
  in ``reconcile/gates.py``). The FineTuneJob watches the deployment's pods: ``Promoted=True`` only once every
  replica runs a pod with the new spec hash (``slm.io/spec-hash``) and is Ready.
* **Rollback.** A pod on the new weights that crash-loops, fails, or is not Ready ``readinessTimeoutSeconds``
  after it started on its node, rolls the deployment back: the annotations it had before the promotion
  (recorded in ``status.promotion`` before the first patch) are restored and ``Promoted=False``, reason
  ``RolledBack``. That is final for this FineTuneJob.
* **Supersede.** Of the FineTuneJobs promoting onto the same SLMDeployment, only the newest successful one
  (latest completion, then creation, then name) promotes; the others say ``Superseded`` and never patch again.
  Each pass reads the others' status, so two jobs never take turns.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from slm_operator.api.v1alpha1 import (
    DEFAULT_LORA_RANK,
    FineTuneJob,
    FineTuneMethod,
    PromotionPhase,
    PromotionStatus,
    SLMDeployment,
)
from slm_operator.contract import (
    ADAPTER_ANNOTATION,
    PROMOTED_LORA_RANK_ANNOTATION,
    PROMOTED_METHOD_ANNOTATION,
    SPEC_HASH_ANNOTATION,
)
from slm_operator.events import Event
from slm_operator.finetune.observe import Observed
from slm_operator.render import deployment_spec_hash
from slm_operator.render.finetune import artifact
from slm_operator.status import ConditionResult
from slm_operator.views import PodView

#: A replica container restarted this often on the new weights is crash-looping.
CRASH_RESTARTS = 3
PROMOTION_KEYS = (ADAPTER_ANNOTATION, PROMOTED_METHOD_ANNOTATION, PROMOTED_LORA_RANK_ANNOTATION)

Annotations = dict[str, str | None]


def promotion_annotations(ftj: FineTuneJob, result: str) -> Annotations:
    """What the SLMDeployment is annotated with to serve ``result``: where it is, how it was trained and, for
    an adapter, its rank (vLLM must be told ranks above its default; None removes a stale one)."""
    lora = ftj.spec.method is not FineTuneMethod.FULL
    rank = ftj.spec.hyperparameters.lora_rank or DEFAULT_LORA_RANK
    return {
        ADAPTER_ANNOTATION: result,
        PROMOTED_METHOD_ANNOTATION: ftj.spec.method.value,
        PROMOTED_LORA_RANK_ANNOTATION: str(rank) if lora else None,
    }


def served(dep: SLMDeployment) -> Annotations:
    """The promotion annotations the deployment carries now (None: absent)."""
    have = dep.metadata.annotations or {}
    return {k: have.get(k) for k in PROMOTION_KEYS}


def _previous(st: PromotionStatus | None) -> Annotations:
    if st is None:
        return dict.fromkeys(PROMOTION_KEYS)
    return {
        ADAPTER_ANNOTATION: st.previous_adapter,
        PROMOTED_METHOD_ANNOTATION: st.previous_method,
        PROMOTED_LORA_RANK_ANNOTATION: st.previous_lora_rank,
    }


def _record(phase: PromotionPhase, target: str, previous: Annotations, message: str = "") -> PromotionStatus:
    return PromotionStatus(
        phase=phase,
        slm_deployment=target,
        previous_adapter=previous[ADAPTER_ANNOTATION],
        previous_method=previous[PROMOTED_METHOD_ANNOTATION],
        previous_lora_rank=previous[PROMOTED_LORA_RANK_ANNOTATION],
        message=message[:1024],
    )


def _time(value: str | None) -> datetime:
    """An RFC 3339 time; anything unreadable sorts first."""
    try:
        t = datetime.fromisoformat((value or "").replace("Z", "+00:00"))
    except ValueError:
        return datetime.min.replace(tzinfo=UTC)
    return t if t.tzinfo else t.replace(tzinfo=UTC)


# ------------------------------------------------------------------------------------------ supersede


def _successful(other: FineTuneJob) -> bool:
    """It completed, passed its gate and was not rolled back: it may promote."""
    st = other.status
    if st is None or not st.completion_time or other.metadata.deletion_timestamp:
        return False
    if st.promotion is not None and st.promotion.phase is PromotionPhase.ROLLED_BACK:
        return False
    evaluated = next((c for c in st.conditions or [] if c.type == "Evaluated"), None)
    return evaluated is not None and evaluated.status.value == "True"


def _rank(ftj: FineTuneJob, completed: str | None) -> tuple[datetime, datetime, str]:
    return _time(completed), _time(ftj.metadata.creation_timestamp), ftj.metadata.name


def newer_winner(
    ftj: FineTuneJob, completed: str | None, others: Sequence[FineTuneJob]
) -> FineTuneJob | None:
    """The newest successful FineTuneJob promoting onto the same SLMDeployment, when it is not ``ftj``."""
    assert ftj.spec.promote is not None
    target = ftj.spec.promote.slm_deployment_ref.name
    mine = _rank(ftj, completed)
    best: tuple[tuple[datetime, datetime, str], FineTuneJob] | None = None
    for o in others:
        if o.metadata.name == ftj.metadata.name or o.spec.promote is None:
            continue
        if o.spec.promote.slm_deployment_ref.name != target or not _successful(o):
            continue
        rank = _rank(o, o.status.completion_time if o.status else None)
        if rank > mine and (best is None or rank > best[0]):
            best = (rank, o)
    return best[1] if best is not None else None


# ------------------------------------------------------------------------------------------ rollout


@dataclass(frozen=True)
class Rollout:
    expected: int  # replicas that should serve the result
    serving: int  # Ready pods on the new spec hash
    stale: int  # pods not on it yet (terminating ones included)
    failure: str | None  # why a replica on the new weights failed

    @property
    def complete(self) -> bool:
        return self.failure is None and self.stale == 0 and self.serving >= self.expected


def _crashing(pod: PodView) -> str | None:
    if pod.phase == "Failed":
        return f"failed ({pod.status.get('reason') or 'phase Failed'})"
    for cs in pod.status.get("containerStatuses") or ():
        waiting = ((cs.get("state") or {}).get("waiting") or {}).get("reason")
        restarts = int(cs.get("restartCount") or 0)
        if waiting == "CrashLoopBackOff" or restarts >= CRASH_RESTARTS:
            last = ((cs.get("lastState") or {}).get("terminated") or {}).get("message") or ""
            tail = last.strip().splitlines()[-1][:300] if last.strip() else ""
            return (
                f"is crash-looping ({cs.get('name')} restarted {restarts} times{': ' + tail if tail else ''})"
            )
    return None


def _trouble(pod: PodView, timeout: int, now: datetime) -> str | None:
    """Why a replica pod on the new weights failed: it crash-loops, or it missed the readiness deadline."""
    crash = _crashing(pod)
    if crash is not None:
        return f"replica pod {pod.name} on the new weights {crash}"
    started = pod.status.get("startTime")
    if not pod.ready and started and (now - _time(started)).total_seconds() > timeout:
        return (
            f"replica pod {pod.name} on the new weights was not Ready {timeout}s after it started on node "
            f"{pod.bound_node or '?'} (spec.promote.readinessTimeoutSeconds)"
        )
    return None


def watch_rollout(dep: SLMDeployment, pods: Sequence[Mapping[str, Any]], timeout: int, now: str) -> Rollout:
    """How far the deployment's replicas are on the weights its annotations name now."""
    want = deployment_spec_hash(dep)
    views = list(map(PodView, pods))
    new = [p for p in views if p.annotations.get(SPEC_HASH_ANNOTATION) == want and not p.deleting]
    desired = dep.effective_replicas()
    expected = min(desired, dep.status.placed_replicas) if dep.status is not None else desired
    at = _time(now)
    failure = next((t for p in new if (t := _trouble(p, timeout, at)) is not None), None)
    return Rollout(expected, sum(1 for p in new if p.ready), len(views) - len(new), failure)


# ------------------------------------------------------------------------------------------ the decision


@dataclass(frozen=True)
class Outcome:
    condition: ConditionResult  # Promoted
    status: PromotionStatus | None  # status.promotion
    patch: Annotations | None = None  # merge-patch of the SLMDeployment's annotations
    events: tuple[Event, ...] = ()


@dataclass(frozen=True)
class Target:
    """The SLMDeployment of ``spec.promote`` as the shell read it, with its replica pods."""

    dep: SLMDeployment
    pods: Sequence[Mapping[str, Any]]


def _not_yet(obs: Observed | None, old: PromotionStatus | None) -> Outcome:
    if obs is not None and obs.failed:
        return Outcome(ConditionResult(False, "TrainingFailed", "training failed: nothing is promoted"), old)
    if obs is not None and obs.complete:
        why = "the evaluation gate is not met (see Evaluated): nothing is promoted"
        return Outcome(ConditionResult(False, "GateNotMet", why), old)
    return Outcome(ConditionResult(False, "Waiting", "promotion waits for training and evaluation"), old)


def _start(ftj: FineTuneJob, t: Target, old: PromotionStatus | None, want: Annotations) -> Outcome:
    """Point the deployment at the result; record what it served before (kept across retried patches)."""
    name, result = t.dep.metadata.name, artifact(ftj)
    previous = _previous(old) if old is not None else served(t.dep)
    ev = Event.on(
        t.dep.to_k8s(), "Normal", "Promoted", f"rolling onto {result} from FineTuneJob {ftj.metadata.name}"
    )
    msg = f"rolling SLMDeployment {name} onto {result}, one replica at a time"
    return Outcome(
        ConditionResult(False, "Rolling", msg), _record(PromotionPhase.ROLLING, name, previous), want, (ev,)
    )


def _roll_back(ftj: FineTuneJob, t: Target, old: PromotionStatus | None, failure: str) -> Outcome:
    name = t.dep.metadata.name
    previous = _previous(old)
    back = previous[ADAPTER_ANNOTATION] or "the base model"
    message = f"{failure}: SLMDeployment {name} was rolled back to {back}"
    events = (
        Event.on(ftj.to_k8s(), "Warning", "RolledBack", message),
        Event.on(t.dep.to_k8s(), "Warning", "RolledBack", f"back to {back}: {failure}"),
    )
    status = _record(PromotionPhase.ROLLED_BACK, name, previous, message)
    return Outcome(ConditionResult(False, "RolledBack", message), status, previous, events)


def _follow(ftj: FineTuneJob, t: Target, old: PromotionStatus | None, now: str) -> Outcome:
    """The deployment's annotations name the result: follow its replicas, roll back on a failure."""
    promote = ftj.spec.promote
    assert promote is not None
    name, result = t.dep.metadata.name, artifact(ftj)
    if old is not None and old.phase is PromotionPhase.PROMOTED:
        return Outcome(ConditionResult(True, "Promoted", f"SLMDeployment {name} serves {result}"), old)
    rollout = watch_rollout(t.dep, t.pods, promote.readiness_timeout_seconds, now)
    ours = old is None or old.phase is PromotionPhase.ROLLING  # we patched: a failure is ours to undo
    if rollout.failure is not None and ours:
        return _roll_back(ftj, t, old, rollout.failure)
    previous = _previous(old)
    if rollout.complete:
        msg = f"all {rollout.expected} replicas of SLMDeployment {name} serve {result} and are Ready"
        if rollout.expected == 0:
            msg = f"SLMDeployment {name} serves {result} (no replica runs now)"
        ev = Event.on(ftj.to_k8s(), "Normal", "Promoted", msg)
        return Outcome(
            ConditionResult(True, "Promoted", msg),
            _record(PromotionPhase.PROMOTED, name, previous),
            None,
            (ev,),
        )
    msg = (
        f"{rollout.serving} of {rollout.expected} replicas of SLMDeployment {name} serve {result} and are Ready; "
        "the others roll one at a time"
    )
    phase = PromotionPhase.ROLLING if ours else (old.phase if old is not None else PromotionPhase.ROLLING)
    return Outcome(
        ConditionResult(False, "Rolling", msg), _record(phase, name, previous, old.message if old else "")
    )


def decide_promotion(
    ftj: FineTuneJob,
    *,
    passed: bool,
    obs: Observed | None,
    target: Target | None,
    others: Sequence[FineTuneJob],
    now: str,
) -> Outcome:
    """What this pass does about the promotion, and what ``Promoted`` says."""
    promote = ftj.spec.promote
    old = ftj.status.promotion if ftj.status else None
    if promote is None:
        return Outcome(ConditionResult(False, "NotRequested", "spec.promote is not set"), None)
    if old is not None and old.phase is PromotionPhase.ROLLED_BACK:
        return Outcome(ConditionResult(False, "RolledBack", old.message), old)
    if not passed:
        return _not_yet(obs, old)
    name = promote.slm_deployment_ref.name
    completed = (obs.completion_time if obs else None) or (ftj.status.completion_time if ftj.status else None)
    newer = newer_winner(ftj, completed, others)
    if newer is not None:
        when = newer.status.completion_time if newer.status else "?"
        msg = (
            f"FineTuneJob {newer.metadata.name} completed later ({when}) and promotes onto SLMDeployment {name}: "
            "this result is not promoted"
        )
        return Outcome(
            ConditionResult(False, "Superseded", msg),
            _record(PromotionPhase.SUPERSEDED, name, _previous(old), msg),
        )
    if target is None:
        return Outcome(ConditionResult(False, "TargetNotFound", f"SLMDeployment {name} does not exist"), old)
    want = promotion_annotations(ftj, artifact(ftj))
    have = served(target.dep)
    if have == want:
        return _follow(ftj, target, old, now)
    if old is None or old.phase is PromotionPhase.ROLLING:
        return _start(ftj, target, old, want)
    now_serving = have[ADAPTER_ANNOTATION] or "the base model"
    msg = (
        f"SLMDeployment {name} now serves {now_serving}, not {artifact(ftj)}; this FineTuneJob does not promote "
        "again (create a new FineTuneJob)"
    )
    return Outcome(ConditionResult(False, "Replaced", msg), old)
