"""Automatic promotion of a rule's shadow backend to serving, and back (S6 of docs/loop.md). Pure.

A rule with ``promote`` is in one of two phases, kept in the route's ``status.rules`` (the shared state: every
gateway replica routes by the phase it reads there, and only the replica holding the status Lease changes it):

* ``Shadow``: the rule's ``backend`` answers; ``promote.backend`` gets shadow copies, and each copy's answer is
  compared with the caller's (``routing.compare``);
* ``Serving``: ``promote.backend`` answers, with the rule's ``backend`` as its fallback; a share of the calls is
  still copied to the rule's ``backend`` in shadow, so the agreement keeps being measured (and shown).

The gateway counts per (route, rule) on a :func:`basis`: shadow answers of the measured backend compared and
agreed, and while serving the calls sent to ``promote.backend`` and those that fell back. :func:`decide` turns the
counts into the next phase; a change of phase starts the counts again from zero. Three things keep a flaky or
untrained backend from being promoted (:func:`evaluate`):

* **back-off**: after a demotion the rule is not promoted again before ``retryAfter`` (``promote.backoff``,
  doubled for each demotion in a row, at most 24 h; a rule that served for 24 h starts again from
  ``promote.backoff``);
* **FineTuneJob**: while a FineTuneJob that promotes onto ``promote.backend``'s SLMDeployment has not finished
  (:func:`finetune_pending`), the rule is not promoted, and what was counted meanwhile is dropped when it has;
* **model**: the counts are of the model ``promote.backend`` serves (:func:`model_key`, ``measuredModel``);
  when that changes (a FineTuneJob rolled a new adapter onto it), they start again from zero.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from slm_operator.api.base import duration_seconds, max_len
from slm_operator.api.v1alpha1 import (
    MAX_PROMOTION_BACKOFF,
    FineTuneJob,
    RouteRule,
    RouteRuleStatus,
    RulePhase,
    RulePromotion,
    SLMDeployment,
    SLMRouteSpec,
    SLMRouteStatus,
)
from slm_operator.contract import ADAPTER_ANNOTATION

#: calls served before a serving backend may be sent back: min(minSamples, this)
MIN_SERVED_CAP = 50
#: the longest wait after a demotion (``promote.backoff`` doubled per demotion in a row)
MAX_BACKOFF_SECONDS = duration_seconds(MAX_PROMOTION_BACKOFF)
#: a rule that has served this long forgets its earlier demotions (the next wait is ``promote.backoff`` again)
FORGIVE_SECONDS = MAX_BACKOFF_SECONDS
# Event reasons (posted on the SLMRoute).
PROMOTED = "Promoted"
DEMOTED = "Demoted"
MODEL_CHANGED = "ModelChanged"  # promote.backend serves another model: the counts start again
#: FineTuneJobs named in a status message at most (the others are counted)
NAMED_JOBS = 3

_MESSAGE_MAX = max_len(RouteRuleStatus, "message")
_MODEL_MAX = max_len(RouteRuleStatus, "measured_model")


@dataclass(frozen=True, slots=True)
class RuleCounts:
    """What a gateway replica counted for one rule since its counts last started (on its :func:`basis`)."""

    compared: int = 0  # shadow answers of the measured backend compared with the caller's
    agreed: int = 0  # of those, the ones that agreed
    served: int = 0  # while serving: calls sent to promote.backend
    fell_back: int = 0  # of those, the ones that fell back to the rule's backend


ZERO = RuleCounts()


@dataclass(frozen=True, slots=True)
class RuleFacts:
    """What the shell knows of a rule's ``promote.backend`` (the routing table holds it per rule)."""

    model: str = ""  # what it serves (model_key); "" when not known (its SLMDeployment is missing)
    waiting: tuple[str, ...] = ()  # FineTuneJobs promoting onto its SLMDeployment that have not finished


NO_FACTS = RuleFacts()

#: what a rule's counts were counted on: the phase, the model of promote.backend, and (in shadow) whether a
#: FineTuneJob was pending; when it changes, the counts start again from zero
Basis = tuple[RulePhase, str, bool]


def basis(phase: RulePhase, facts: RuleFacts) -> Basis:
    """The :data:`Basis` of a rule's counts in ``phase``. A FineTuneJob pending matters only in shadow: what was
    compared while it trained (the model it replaces) is dropped once it has finished; while serving, its
    fallbacks keep counting (a demotion must not wait for a FineTuneJob)."""
    return (phase, facts.model, phase is RulePhase.SHADOW and bool(facts.waiting))


@dataclass(frozen=True, slots=True)
class Step:
    """The next phase, the counts to go on with (zero after a transition) and why."""

    phase: RulePhase
    counts: RuleCounts
    transition: bool
    message: str


@dataclass(frozen=True, slots=True)
class Transition:
    """A change the status writer announces with an Event on the SLMRoute: a change of phase (``Promoted``,
    ``Demoted``), or the counts starting again because ``promote.backend`` serves another model
    (``ModelChanged``, the phase unchanged)."""

    rule: str
    phase: RulePhase
    reason: str  # PROMOTED, DEMOTED or MODEL_CHANGED
    message: str

    @property
    def changes_phase(self) -> bool:
        return self.reason in (PROMOTED, DEMOTED)


def min_served(promote: RulePromotion) -> int:
    """Calls a serving backend must have answered before its fallback share may send it back."""
    return min(promote.min_samples, MIN_SERVED_CAP)


def agreement_percent(c: RuleCounts) -> int:
    """The share of compared answers that agreed, in percent, rounded down (0 with nothing compared)."""
    return c.agreed * 100 // c.compared if c.compared else 0


def fallback_percent(c: RuleCounts) -> int:
    """The share of served calls that fell back, in percent, rounded up (0 with nothing served)."""
    return -(-c.fell_back * 100 // c.served) if c.served else 0


def decide(
    promote: RulePromotion, original: str, phase: RulePhase, c: RuleCounts, hold: str | None = None
) -> Step:
    """The phase after ``phase`` given the counts ``c`` (``original``: the rule's ``backend``).

    ``Shadow`` -> ``Serving`` when at least ``minSamples`` answers were compared and at least
    ``minAgreementPercent`` of them agreed, unless ``hold`` says why not now (a back-off, a FineTuneJob);
    ``Serving`` -> ``Shadow`` when at least :func:`min_served` calls were served and more than
    ``maxFallbackPercent`` of them fell back. Exact arithmetic: no rounding decides.
    """
    b = promote.backend
    if phase is RulePhase.SHADOW:
        agreement = f"{c.agreed} of {c.compared} shadow answers of {b} agreed ({agreement_percent(c)} %"
        agrees = (
            c.compared >= promote.min_samples and c.agreed * 100 >= promote.min_agreement_percent * c.compared
        )
        if agrees and hold is None:
            return Step(
                RulePhase.SERVING,
                ZERO,
                True,
                f"promoted {b}: {agreement}, at least {promote.min_agreement_percent} % needed); {original} is "
                "its fallback",
            )
        return Step(
            phase,
            c,
            False,
            f"{original} answers, {b} in shadow: {agreement}); promoted at {promote.min_agreement_percent} % "
            f"over at least {promote.min_samples}" + (f"; {hold}" if hold else ""),
        )
    falls = f"{c.fell_back} of {c.served} calls fell back to {original} ({fallback_percent(c)} %"
    if c.served >= min_served(promote) and c.fell_back * 100 > promote.max_fallback_percent * c.served:
        return Step(
            RulePhase.SHADOW,
            ZERO,
            True,
            f"demoted {b}: {falls}, at most {promote.max_fallback_percent} % allowed); {original} answers again",
        )
    return Step(
        phase,
        c,
        False,
        f"{b} answers: {falls}); back to shadow above {promote.max_fallback_percent} % after at least "
        f"{min_served(promote)} calls",
    )


# ------------------------------------------------------------------------------------------------ back-off


def backoff_seconds(promote: RulePromotion, demotions: int) -> float:
    """The wait after the ``demotions``-th demotion in a row: ``promote.backoff`` doubled for each earlier one,
    at most :data:`MAX_BACKOFF_SECONDS` (0 without a demotion)."""
    if demotions <= 0:
        return 0.0
    doubled: int = 2 ** min(demotions - 1, 32)  # capped exponent: the product stays a small float
    return min(duration_seconds(promote.backoff) * doubled, MAX_BACKOFF_SECONDS)


def parse_time(text: str | None) -> datetime | None:
    """An RFC 3339 time (``Z`` or an offset; none: UTC), None when absent or unreadable."""
    if not text:
        return None
    try:
        t = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def format_time(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def duration_text(seconds: float) -> str:
    """``1h20m``, ``40m``, ``90s`` (whole seconds)."""
    s = int(seconds)
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    text = (f"{h}h" if h else "") + (f"{m}m" if m else "") + (f"{sec}s" if sec else "")
    return text or "0s"


def _backoff_text(promote: RulePromotion, demotions: int) -> str:
    times = "1 demotion" if demotions == 1 else f"{demotions} demotions in a row"
    return f"back-off {duration_text(backoff_seconds(promote, demotions))} after {times}"


# ------------------------------------------------------------------------------------------------ the facts


def model_key(dep: SLMDeployment) -> str:
    """What an SLMDeployment serves, as ``measuredModel`` shows it: its model, and the adapter (or full
    fine-tune) a FineTuneJob promoted onto it (``slm.io/promoted-adapter``), as ``model + pvc://claim/path``."""
    adapter = (dep.metadata.annotations or {}).get(ADAPTER_ANNOTATION) or ""
    key = f"{dep.spec.model.name} + {adapter}" if adapter else dep.spec.model.name
    return key[:_MODEL_MAX]


def finetune_pending(job: FineTuneJob) -> bool:
    """Whether a FineTuneJob with ``spec.promote`` may still change what its SLMDeployment serves: it has not
    finished (``FineTuneJob.finished``)."""
    return job.spec.promote is not None and not job.finished()


def pending_finetunes(jobs: Iterable[FineTuneJob]) -> dict[tuple[str, str], tuple[str, ...]]:
    """(namespace, SLMDeployment) -> the FineTuneJobs not finished that promote onto it, sorted by name."""
    out: dict[tuple[str, str], list[str]] = {}
    for job in jobs:
        if job.spec.promote is not None and finetune_pending(job):
            key = (job.metadata.namespace or "default", job.spec.promote.slm_deployment_ref.name)
            out.setdefault(key, []).append(job.metadata.name)
    return {k: tuple(sorted(v)) for k, v in out.items()}


def _waiting_text(promote: RulePromotion, jobs: tuple[str, ...]) -> str:
    named = ", ".join(jobs[:NAMED_JOBS]) + (
        f" and {len(jobs) - NAMED_JOBS} more" if len(jobs) > NAMED_JOBS else ""
    )
    kind = "FineTuneJob" if len(jobs) == 1 else "FineTuneJobs"
    return (
        f"not promoted while {kind} {named} has not finished: it trains or rolls out a new model for "
        f"{promote.backend}, and answers of the model it replaces say nothing about it (the counts start again "
        "once it has)"
    )


def _clip(text: str, limit: int = _MESSAGE_MAX) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def promoted_rules(spec: SLMRouteSpec) -> list[RouteRule]:
    return [r for r in spec.rules or [] if r.promote is not None]


def rule_phases(spec: SLMRouteSpec, status: SLMRouteStatus | None) -> dict[str, RulePhase]:
    """The phase of each rule with ``promote``, as the route's status says; ``Shadow`` without a status, and
    when the status names another backend than ``promote.backend`` (the spec changed since)."""
    seen = {s.name: s for s in (status.rules if status else None) or []}
    out: dict[str, RulePhase] = {}
    for rule in promoted_rules(spec):
        assert rule.promote is not None
        st = seen.get(rule.name)
        serving = st is not None and st.phase is RulePhase.SERVING and st.backend == rule.promote.backend
        out[rule.name] = RulePhase.SERVING if serving else RulePhase.SHADOW
    return out


def answering(rule: RouteRule, phase: RulePhase) -> str:
    """The backend that answers the rule's calls in ``phase``."""
    if phase is RulePhase.SERVING and rule.promote is not None:
        return rule.promote.backend
    assert rule.backend is not None  # the API: a rule with promote has a single backend
    return rule.backend


def measured(rule: RouteRule, phase: RulePhase) -> str:
    """The shadow backend whose agreement is counted for the rule in ``phase``: the promoted backend in
    shadow, the rule's own backend while the promoted one serves."""
    assert rule.promote is not None and rule.backend is not None
    return rule.backend if phase is RulePhase.SERVING else rule.promote.backend


@dataclass(frozen=True)
class Evaluation:
    rules: list[RouteRuleStatus]
    transitions: list[Transition]


def evaluate(
    spec: SLMRouteSpec,
    previous: SLMRouteStatus | None,
    counts: Mapping[str, RuleCounts],
    now: str,
    facts: Mapping[str, RuleFacts] | None = None,
) -> Evaluation:
    """The ``status.rules`` of a route and the changes to announce, at ``now`` (RFC 3339), from its status so
    far, the counts of this replica (by rule name, counted on the :func:`basis` of the phase the status shows; a
    missing rule counted nothing) and what the shell knows of each rule's ``promote.backend`` (``facts``).

    On top of :func:`decide`: a rule is not promoted before its ``retryAfter`` nor while a FineTuneJob for its
    backend is pending; a demotion counts one more demotion in a row and sets ``retryAfter``; a rule that has
    served for :data:`FORGIVE_SECONDS` forgets its demotions; a ``measuredModel`` other than the backend's
    model now starts the counts again (``ModelChanged``).
    """
    at = parse_time(now)
    if at is None:
        raise ValueError(f"now must be an RFC 3339 time, not {now!r}")
    phases = rule_phases(spec, previous)
    before = {s.name: s for s in (previous.rules if previous else None) or []}
    out: list[RouteRuleStatus] = []
    transitions: list[Transition] = []
    for rule in promoted_rules(spec):
        status, changed = _evaluate_rule(
            rule,
            phases[rule.name],
            before.get(rule.name),
            counts.get(rule.name, ZERO),
            (facts or {}).get(rule.name, NO_FACTS),
            at,
            now,
        )
        out.append(status)
        transitions.extend(changed)
    return Evaluation(out, transitions)


def _model_changed(rule: RouteRule, phase: RulePhase, old: str, model: str | None) -> Transition:
    assert rule.promote is not None
    now_serves = model or "nothing known (its SLMDeployment is missing)"
    return Transition(
        rule.name,
        phase,
        MODEL_CHANGED,
        f"rule {rule.name}: {rule.promote.backend} now serves {now_serves}, not {old}: "
        "its figures start again from zero",
    )


def _evaluate_rule(
    rule: RouteRule,
    phase: RulePhase,
    old: RouteRuleStatus | None,
    c: RuleCounts,
    known: RuleFacts,
    at: datetime,
    now: str,
) -> tuple[RouteRuleStatus, list[Transition]]:
    """One rule of :func:`evaluate`: its status and the changes to announce."""
    promote = rule.promote
    assert promote is not None and rule.backend is not None
    transitions: list[Transition] = []
    since = old.last_transition_time if old is not None and old.phase is phase else None
    started = parse_time(since)
    if old is not None and old.measured_model and old.measured_model != known.model:
        c = ZERO  # measured on another model (the replicas' counts restarted when their table changed)
        transitions.append(_model_changed(rule, phase, old.measured_model, known.model))
    demotions = old.demotions if old is not None else 0
    if (
        phase is RulePhase.SERVING
        and started is not None
        and (at - started).total_seconds() >= FORGIVE_SECONDS
    ):
        demotions = 0
    retry: datetime | None = None  # before it, no promotion; None: no wait
    wait = backoff_seconds(promote, demotions)
    if phase is RulePhase.SHADOW and wait > 0 and started is not None:
        retry = started + timedelta(seconds=wait)
    hold = None
    if known.waiting:
        hold = _waiting_text(promote, known.waiting)
    elif retry is not None and at < retry:
        hold = f"not promoted before {format_time(retry)} ({_backoff_text(promote, demotions)})"
    step = decide(promote, rule.backend, phase, c, hold)
    message = step.message
    if step.transition and step.phase is RulePhase.SHADOW:
        demotions += 1
        wait = backoff_seconds(promote, demotions)
        retry = at + timedelta(seconds=wait) if wait > 0 else None
        message += (
            f"; not promoted again before {format_time(retry)} ({_backoff_text(promote, demotions)})"
            if retry is not None
            else "; promoted again as soon as the samples agree (backoff 0s)"
        )
    elif step.transition:
        retry = None
    if step.transition:
        reason = PROMOTED if step.phase is RulePhase.SERVING else DEMOTED
        transitions.append(Transition(rule.name, step.phase, reason, f"rule {rule.name}: {message}"))
    status = RouteRuleStatus(
        name=rule.name,
        phase=step.phase,
        backend=answering(rule, step.phase),
        samples=step.counts.compared,
        agreement_percent=agreement_percent(step.counts),
        served=step.counts.served,
        fallback_percent=fallback_percent(step.counts),
        last_transition_time=now if step.transition or since is None else since,
        demotions=demotions,
        retry_after=format_time(retry) if retry is not None else None,
        measured_model=known.model,
        message=_clip(message),
    )
    return status, transitions
