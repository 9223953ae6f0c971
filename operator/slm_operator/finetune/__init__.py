"""The FineTuneJob's decisions, pure: from what the shell gathered to what it must write.

Like :func:`slm_operator.reconcile.decide` for pools: ``controllers/finetune.py`` gathers a
:class:`FineTuneWorld` (the FineTuneJob, its pool, the nodes, its Job and the Job's pods, the SLMDeployment to
promote onto), :func:`decide_finetune` says what to do, the shell does it. No I/O here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from slm_operator.api.v1alpha1 import (
    DEFAULT_LORA_RANK,
    FineTuneJob,
    FineTuneJobStatus,
    FineTuneMethod,
    GPUPool,
)
from slm_operator.contract import (
    ADAPTER_ANNOTATION,
    GPU_ROLES_ANNOTATION,
    POOL_LABEL,
    PROMOTED_LORA_RANK_ANNOTATION,
    PROMOTED_METHOD_ANNOTATION,
)
from slm_operator.events import Event
from slm_operator.render.finetune import (
    artifact,
    evaluation_score,
    finetune_job,
    finetune_status,
    job_condition,
    promotion_allowed,
)
from slm_operator.views import NodeView, ObjectView


@dataclass(frozen=True)
class FineTuneWorld:
    """What one FineTuneJob's pass sees."""

    ftj: FineTuneJob
    pool: GPUPool | None  # None: the GPUPool does not exist
    nodes: Sequence[Mapping[str, Any]]
    job: Mapping[str, Any] | None  # the training Job, None before it is created
    job_pods: Sequence[Mapping[str, Any]]  # its pods, gathered only when the score is needed (needs_score)
    target: Mapping[str, Any] | None  # the SLMDeployment of spec.promote, when the Job exists
    now: str
    operator_image: str
    priority_class: str | None = None


@dataclass(frozen=True)
class Promotion:
    """Point the SLMDeployment ``name`` at the trained adapter (a merge patch of its annotation)."""

    name: str
    namespace: str
    patch: Mapping[str, Any]


@dataclass
class FineTuneDecisions:
    status: FineTuneJobStatus
    job_create: dict[str, Any] | None = None
    promotion: Promotion | None = None
    events: list[Event] = field(default_factory=list)


def segment_nodes(nodes: Sequence[Mapping[str, Any]], pool: str, segment: str) -> list[str]:
    """Nodes of ``pool`` with a GPU the plan gave to ``segment`` (the ``slm.io/gpu-roles`` annotation)."""
    out = []
    for n in map(NodeView, nodes):
        try:
            roles = json.loads(n.annotations.get(GPU_ROLES_ANNOTATION) or "{}")
        except ValueError:
            continue
        if segment in roles.values() and n.labels.get(POOL_LABEL, pool) == pool:
            out.append(n.name)
    return sorted(out)


def needs_score(ftj: FineTuneJob, job: Mapping[str, Any] | None) -> bool:
    """The evaluation gate must be read from the Job's pods: the Job completed and a gate is set."""
    return (
        job is not None
        and ftj.spec.promote is not None
        and ftj.spec.promote.evaluation.min_score_percent > 0
        and job_condition(job, "Complete")
    )


def _problem(world: FineTuneWorld) -> tuple[tuple[str, str] | None, list[str]]:
    """Why the Job cannot run (no pool, no segment, no node holds the segment yet), and the segment's nodes."""
    spec = world.ftj.spec
    if world.pool is None:
        return ("PoolNotFound", f"GPUPool {spec.pool_ref.name!r} does not exist"), []
    pool = world.pool
    if spec.segment not in {s.name for s in pool.spec.segments or []}:
        return ("SegmentNotFound", f"GPUPool {pool.metadata.name!r} has no segment {spec.segment!r}"), []
    nodes = segment_nodes(world.nodes, pool.metadata.name, spec.segment)
    if not nodes:
        return ("SegmentNotReady", f"no GPU of the pool holds segment {spec.segment!r} yet"), []
    return None, nodes


def promotion_annotations(ftj: FineTuneJob, result: str) -> dict[str, str | None]:
    """What the SLMDeployment is annotated with to serve ``result``: where it is, how it was trained and, for
    an adapter, its rank (vLLM must be told ranks above its default; None removes a stale one)."""
    lora = ftj.spec.method is not FineTuneMethod.FULL
    rank = ftj.spec.hyperparameters.lora_rank or DEFAULT_LORA_RANK
    return {
        ADAPTER_ANNOTATION: result,
        PROMOTED_METHOD_ANNOTATION: ftj.spec.method.value,
        PROMOTED_LORA_RANK_ANNOTATION: str(rank) if lora else None,
    }


def _promote(world: FineTuneWorld, job: Mapping[str, Any], d: FineTuneDecisions) -> tuple[bool, int | None]:
    """Promote once the Job completed and passed the gate: (promoted, score). Adds the patch and its event."""
    ftj = world.ftj
    if ftj.spec.promote is None:
        return False, None
    complete = job_condition(job, "Complete")
    score = evaluation_score(world.job_pods) if needs_score(ftj, job) else None
    dep = world.target
    if not promotion_allowed(ftj, complete, score) or dep is None:
        return False, score
    result = artifact(ftj)
    view = ObjectView(dep)
    annotations = promotion_annotations(ftj, result)
    if any(view.annotations.get(k) != v for k, v in annotations.items()):
        d.promotion = Promotion(
            name=ftj.spec.promote.slm_deployment_ref.name,
            namespace=ftj.metadata.namespace or "default",
            patch={"metadata": {"annotations": annotations}},
        )
        message = f"rolling onto {result} from FineTuneJob {ftj.metadata.name}"
        d.events.append(Event.on(dep, "Normal", "Promoted", message))
    return True, score


def decide_finetune(world: FineTuneWorld) -> FineTuneDecisions:
    """Create the training Job on the segment's nodes, mirror its status, promote the result."""
    ftj = world.ftj
    problem, nodes = _problem(world)
    job = world.job
    job_create = None
    if problem is None and job is None:
        job_create = finetune_job(ftj, nodes, world.operator_image, world.priority_class)
        job = job_create  # what the API holds once it is created: no status yet
    d = FineTuneDecisions(status=FineTuneJobStatus(), job_create=job_create)
    promoted, score = _promote(world, job, d) if job is not None else (False, None)
    d.status = finetune_status(
        ftj, job=job, segment_nodes=nodes, problem=problem, promoted=promoted, now=world.now, score=score
    )
    return d
