"""The FineTuneJob's decisions, pure: from what the shell gathered to what it must write.

Like :func:`slm_operator.reconcile.decide` for pools: ``controllers/finetune.py`` gathers a
:class:`FineTuneWorld` (the FineTuneJob, its pool and the nodes, its Job and the Job's pods, the SLMDeployment
to promote onto with its replica pods, the other FineTuneJobs of the namespace), :func:`decide_finetune` says
what to do, the shell does it. No I/O here. The parts:

* ``where.py`` - the nodes the trainer may run on (segment, borrowed reservation) or why it cannot run yet;
* ``observe.py`` - what the Job's pods really reported (termination messages, exit codes, preemptions);
* ``gate.py`` - the evaluation gate (``Evaluated``);
* ``promotion.py`` - rolling the SLMDeployment onto the result, rollback, supersede;
* ``conditions.py`` - the conditions and the status.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from slm_operator import DEFAULT_TRAINER_IMAGE
from slm_operator.api.v1alpha1 import FineTuneJob, FineTuneJobStatus, GPUPool, SLMDeployment
from slm_operator.events import Event
from slm_operator.finetune.conditions import Findings, finetune_status, preempted_text
from slm_operator.finetune.gate import evaluate
from slm_operator.finetune.observe import Observed, job_condition, observe
from slm_operator.finetune.promotion import Annotations, Target, decide_promotion, promotion_annotations
from slm_operator.finetune.where import where_to_run
from slm_operator.render import promoted
from slm_operator.render.finetune import finetune_job

__all__ = [
    "FineTuneDecisions",
    "FineTuneWorld",
    "Promotion",
    "decide_finetune",
    "job_condition",
    "promotion_annotations",
]


@dataclass(frozen=True)
class FineTuneWorld:
    """What one FineTuneJob's pass sees."""

    ftj: FineTuneJob
    pool: GPUPool | None  # None: the GPUPool does not exist
    nodes: Sequence[Mapping[str, Any]]
    job: Mapping[str, Any] | None  # the training Job, None before it is created
    job_pods: Sequence[Mapping[str, Any]]  # its pods
    target: SLMDeployment | None  # the SLMDeployment of spec.promote (None: absent, or not asked for)
    now: str
    trainer_image: str = DEFAULT_TRAINER_IMAGE
    priority_class: str | None = None
    target_pods: Sequence[Mapping[str, Any]] = ()  # the target's replica pods, once the Job completed
    others: Sequence[FineTuneJob] = ()  # the namespace's other FineTuneJobs, once the Job completed


@dataclass(frozen=True)
class Promotion:
    """Merge-patch the SLMDeployment ``name``'s promotion annotations (None removes one)."""

    name: str
    namespace: str
    annotations: Annotations

    @property
    def patch(self) -> dict[str, Any]:
        return {"metadata": {"annotations": dict(self.annotations)}}


@dataclass
class FineTuneDecisions:
    """What the shell writes, in this order: the Job, the status (which records what the SLMDeployment served
    before a promotion), the SLMDeployment's annotations, the events."""

    status: FineTuneJobStatus
    job_create: dict[str, Any] | None = None
    promotion: Promotion | None = None
    events: list[Event] = field(default_factory=list)


def _preempted_events(ftj: FineTuneJob, obs: Observed | None, seen: int) -> tuple[int, list[Event]]:
    """Pods of the Job preempted or evicted so far (never fewer than the status counted), and an Event when
    there is a new one."""
    now = len(obs.disrupted) if obs is not None else 0
    if now <= seen or obs is None:
        return seen, []
    return now, [Event.on(ftj.to_k8s(), "Warning", "Preempted", preempted_text(obs.disrupted[-1]))]


def decide_finetune(world: FineTuneWorld) -> FineTuneDecisions:
    """Create the training Job where it may run, read what its steps reported, gate and promote the result."""
    ftj = world.ftj
    where = where_to_run(ftj, world.pool, world.nodes)
    job = world.job
    job_create = None
    if job is None and where.ok:
        incumbent = promoted(world.target) if world.target is not None else None
        job_create = finetune_job(
            ftj, list(where.nodes), world.trainer_image, world.priority_class, incumbent
        )
        job = job_create  # what the API holds once it is created: no status yet
    obs = observe(job, world.job_pods) if job is not None else None
    old = ftj.status or FineTuneJobStatus()
    gate = evaluate(ftj, obs, old.evaluation)
    target = Target(world.target, world.target_pods) if world.target is not None else None
    outcome = decide_promotion(
        ftj, passed=gate.passed, obs=obs, target=target, others=world.others, now=world.now
    )
    preemptions, events = _preempted_events(ftj, obs, old.preemptions)
    status = finetune_status(ftj, Findings(obs, where, gate, outcome, preemptions), world.now)
    d = FineTuneDecisions(status=status, job_create=job_create, events=[*events, *outcome.events])
    if outcome.patch is not None and world.target is not None:
        ns = ftj.metadata.namespace or "default"
        d.promotion = Promotion(world.target.metadata.name, ns, outcome.patch)
    return d
