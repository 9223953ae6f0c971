"""S4: a small model and a GPU share for each task worth moving, planned against the pool with the planner.

Pure. For each task, largest first:

1. **Worth moving?** Enough calls to fine-tune on (``min_calls``) and a big enough share of the traffic
   (``min_share``); a diffuse task (open-ended chat: the clustering found no tight centre) stays on the LLM.
2. **Candidates**: catalog models whose context holds the task's p99 prompt + p99 completion (with 25 %
   headroom), whose family has a tool-call parser when the task offers tools, whose licence is allowed, and whose
   size reaches the task's capability floor (``capability_floor``: an assumption the report states; the
   FineTuneJob's gate checks the chosen model on the task's own data).
3. **Each candidate is sized** (``inventory.size_deployment``, the operator's own sizing) and **planned** with
   the pool's nodes, its existing SLMDeployments and the recommendations accepted so far (``plan_pool``, the
   operator's planner). The cheapest candidate whose replicas all place wins; its cost is the GPU fraction its
   replicas hold (share memory / GPU memory) times the GPU-hour cost.
4. When the LLM's token prices are known, a task moves only if its SLM costs less than the LLM at the task's
   volume.
5. Replicas: Little's law on the busiest minute, ``ceil(peak calls/s x LLM p95 latency / maxConcurrentSequences)``
   (the SLM is assumed no slower than the LLM it replaces), at least ``min_replicas``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from pydantic import BaseModel, ConfigDict, Field

from slm_operator.advisor.profile import MONTH, TaskProfile
from slm_operator.api.v1alpha1 import GPUPool, SLMDeployment
from slm_operator.catalog import SlmModel, serving_flags, slm_models
from slm_operator.contract import API_VERSION
from slm_operator.inventory import DemandError, demand_for, deployment_key, size_deployment
from slm_operator.planner import plan_pool
from slm_operator.planner.model import Demand, NodeInventory, Plan, PoolPolicy

#: Licences allowed by default: permissive ones that allow commercial use without extra terms.
DEFAULT_LICENSES = frozenset({"apache-2.0", "mit"})
#: Context headroom over the task's p99 prompt + completion, and the granularity it is rounded up to.
CONTEXT_HEADROOM = 1.25
CONTEXT_STEP = 512
HOURS_PER_MONTH = MONTH.total_seconds() / 3600


class SelectionSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    namespace: str = "default"
    min_calls: int = Field(default=200, ge=1, description="calls a task needs to be fine-tuned on")
    min_share: float = Field(default=0.02, ge=0, le=1, description="share of all calls a task needs")
    licenses: frozenset[str] | None = Field(default=DEFAULT_LICENSES, description="None: any licence")
    min_parameters: int | None = Field(default=None, ge=1, description="overrides the capability floor")
    gpu_hour_cost: float = Field(default=2.0, ge=0, description="cost of one GPU for one hour")
    max_concurrent_sequences: int = Field(default=8, ge=1, le=1024)
    min_replicas: int = Field(default=1, ge=1)


@dataclass(frozen=True)
class PoolContext:
    """The pool the recommendations are planned on: its policy, nodes and the demands already in it."""

    pool: GPUPool
    policy: PoolPolicy
    nodes: tuple[NodeInventory, ...]
    existing: tuple[Demand, ...] = field(default=())


class Candidate(BaseModel):
    model_config = ConfigDict(frozen=True)

    model: str
    parameters: int
    license: str
    memory_bytes: int
    replicas: int
    share: str = Field(description="the planned share, e.g. 'MIG 1g.10gb' or 'MPS 1/4'")
    gpu_fraction: float = Field(description="GPUs its replicas hold together")
    cost_per_month: float
    placed: bool
    reason: str = ""


class Recommendation(BaseModel):
    """What the advisor proposes for one task: a model and its share, or why the task stays on the LLM."""

    model_config = ConfigDict(frozen=True)

    task: str
    decision: str = Field(description="Move, StayOnLLM")
    reason: str
    deployment_name: str | None = None
    context_tokens: int | None = None
    chosen: Candidate | None = None
    candidates: list[Candidate] = Field(default_factory=list)
    llm_cost_per_month: float | None = None
    saving_per_month: float | None = None


def capability_floor(profile: TaskProfile) -> tuple[int, str]:
    """The smallest model size the advisor proposes for a task, and why (an assumption, stated in the report)."""
    if profile.completion_tokens.p99 > 512:
        return 3_000_000_000, "answers longer than 512 tokens (p99) need at least 3B parameters"
    if profile.uses_tools:
        return 1_000_000_000, (
            "tool calling needs at least 1B parameters (NVIDIA's data flywheel: a fine-tuned Llama-3.2-1B reached "
            "about 98 % of Llama-3.1-70B on tool calling)"
        )
    if profile.completion_tokens.p99 <= 128:
        return 400_000_000, "short answers (p99 at most 128 tokens) fit models from 0.5B parameters"
    return 1_000_000_000, "answers up to 512 tokens need at least 1B parameters"


def context_tokens(profile: TaskProfile) -> int:
    need = profile.context_tokens_p99 * CONTEXT_HEADROOM
    return max(1024, CONTEXT_STEP * math.ceil(need / CONTEXT_STEP))


def replicas_for(profile: TaskProfile, settings: SelectionSettings) -> int:
    latency_s = (profile.llm_latency_ms.p95 if profile.llm_latency_ms else 1000.0) / 1000.0
    concurrency = profile.peak_calls_per_second * latency_s
    return max(settings.min_replicas, math.ceil(concurrency / settings.max_concurrent_sequences))


def deployment_name(task_id: str, label: str) -> str:
    """A DNS label for the task's SLMDeployment: the label's first two words and the task id's hash, so the
    same task gets the same name on every run (``t-52d307e4f1``, "intent confidence ..." -> intent-confidence-52d307)."""
    words = [w for w in re.split(r"[^a-z0-9]+", label.lower()) if w][:2]
    digest = re.sub(r"[^a-z0-9]", "", task_id.lower().removeprefix("t-"))[:6]
    name = "-".join([*words, digest]) if digest else "-".join(words)
    return name[:63].strip("-") or "slm-task"


def eligible_models(profile: TaskProfile, settings: SelectionSettings) -> tuple[list[SlmModel], str]:
    """The catalog models that may take the task, smallest first, and the floor that applied."""
    floor, why = capability_floor(profile)
    if settings.min_parameters is not None:
        floor, why = (
            settings.min_parameters,
            f"at least {settings.min_parameters:,} parameters (--min-parameters)",
        )
    need = context_tokens(profile)
    out = []
    for m in slm_models():
        flags = serving_flags(m.family)
        if m.architecture.max_context_tokens < need or m.architecture.parameters < floor:
            continue
        if profile.uses_tools and not (flags and flags.tool_call_parser):
            continue
        if settings.licenses is not None and m.license not in settings.licenses:
            continue
        out.append(m)
    return sorted(out, key=lambda m: (m.architecture.parameters, m.name)), why


def _deployment(
    name: str, model: SlmModel, profile: TaskProfile, ctx: PoolContext, s: SelectionSettings
) -> SLMDeployment:
    return SLMDeployment.model_validate(
        {
            "apiVersion": API_VERSION,
            "kind": "SLMDeployment",
            "metadata": {"name": name, "namespace": s.namespace},
            "spec": {
                "poolRef": {"name": ctx.pool.metadata.name},
                "model": {
                    "name": model.name,
                    "maxContextTokens": context_tokens(profile),
                    "maxConcurrentSequences": s.max_concurrent_sequences,
                },
                "replicas": replicas_for(profile, s),
                "qos": "Burstable",
            },
        }
    )


def _share_text(plan: Plan, key: str) -> tuple[str, float]:
    """The planned share of a deployment's replicas, and the GPUs they hold together."""
    fraction = 0.0
    shares: set[str] = set()
    for gpu in plan.gpus:
        for r in gpu.replicas:
            if r.deployment != key:
                continue
            fraction += r.share.memory_bytes / gpu.memory_bytes if gpu.memory_bytes else 1.0
            s = r.share
            shares.add(f"{s.mechanism} {s.mig_profile}" if s.mig_profile else str(s.mechanism))
    return ", ".join(sorted(shares)) or "-", fraction


def plan_candidate(
    dep: SLMDeployment,
    model: SlmModel,
    ctx: PoolContext,
    accepted: Sequence[Demand],
    s: SelectionSettings,
    unplaced_before: int,
) -> tuple[Candidate, Demand | None]:
    """Size and plan one candidate with everything already in the pool; its cost if all its replicas place
    and no replica that placed without it (``unplaced_before`` were unplaced then) is displaced by it."""
    try:
        sizing = size_deployment(dep)
    except DemandError as exc:
        return _refused(model, dep, 0, f"{exc.reason}: {exc}"), None
    demand = demand_for(dep, sizing)
    plan = plan_pool(ctx.policy, ctx.nodes, [*ctx.existing, *accepted, demand])
    key = deployment_key(dep)
    mine = plan.deployment(key)
    if mine is None or mine.placed < mine.desired:
        why = mine.unplaced[0].message if mine and mine.unplaced else "the planner placed no replica"
        return _refused(model, dep, sizing.memory_bytes, why), None
    displaced = plan.pool.replicas_unplaced - unplaced_before
    if displaced > 0:
        why = f"it would displace {displaced} replicas already planned on the pool"
        return _refused(model, dep, sizing.memory_bytes, why), None
    share, fraction = _share_text(plan, key)
    candidate = Candidate(
        model=model.name,
        parameters=model.architecture.parameters,
        license=model.license,
        memory_bytes=sizing.memory_bytes,
        replicas=dep.spec.replicas,
        share=share,
        gpu_fraction=round(fraction, 4),
        cost_per_month=round(fraction * s.gpu_hour_cost * HOURS_PER_MONTH, 2),
        placed=True,
    )
    return candidate, demand


def _refused(model: SlmModel, dep: SLMDeployment, memory: int, reason: str) -> Candidate:
    return Candidate(
        model=model.name,
        parameters=model.architecture.parameters,
        license=model.license,
        memory_bytes=memory,
        replicas=dep.spec.replicas,
        share="-",
        gpu_fraction=0.0,
        cost_per_month=0.0,
        placed=False,
        reason=reason,
    )


def _stay(profile: TaskProfile, reason: str) -> Recommendation:
    return Recommendation(
        task=profile.id, decision="StayOnLLM", reason=reason, llm_cost_per_month=profile.llm_cost_per_month
    )


def worth_moving(profile: TaskProfile, diffuse: bool, s: SelectionSettings) -> str | None:
    """Why a task stays on the LLM before any model is tried, or None when it is worth moving."""
    if diffuse:
        return "open-ended: its calls share no tight pattern (the clustering found no centre), so keep it on the LLM"
    if profile.calls < s.min_calls:
        return f"too few calls to fine-tune on: {profile.calls} < {s.min_calls} (--min-calls)"
    if profile.call_share < s.min_share:
        return f"too small a share of the traffic: {profile.call_share:.1%} < {s.min_share:.1%} (--min-share)"
    return None


def select(
    profiles: Sequence[TaskProfile],
    diffuse: set[str],
    ctx: PoolContext,
    settings: SelectionSettings,
) -> list[Recommendation]:
    """A recommendation per task (largest first), planned in that order so each sees the ones before it."""
    accepted: list[Demand] = []
    out: list[Recommendation] = []
    for profile in sorted(profiles, key=lambda p: (-p.calls, p.id)):
        reason = worth_moving(profile, profile.id in diffuse, settings)
        if reason:
            out.append(_stay(profile, reason))
            continue
        models, floor_why = eligible_models(profile, settings)
        if not models:
            out.append(
                _stay(
                    profile, f"no catalog model fits: context {context_tokens(profile)} tokens, {floor_why}"
                )
            )
            continue
        name = deployment_name(profile.id, profile.label)
        # an earlier run's deployment of this task is what the candidate replaces, not a neighbour
        own = f"{settings.namespace}/{name}"
        others = replace(ctx, existing=tuple(d for d in ctx.existing if d.deployment != own))
        before = plan_pool(ctx.policy, ctx.nodes, [*others.existing, *accepted]).pool.replicas_unplaced
        tried: list[tuple[Candidate, Demand | None]] = [
            plan_candidate(
                _deployment(name, m, profile, ctx, settings), m, others, accepted, settings, before
            )
            for m in models
        ]
        placed = sorted(
            (c for c in tried if c[0].placed), key=lambda c: (c[0].cost_per_month, c[0].parameters)
        )
        candidates = [c for c, _ in tried]
        if not placed:
            out.append(
                _stay(profile, f"no candidate fits the pool: {candidates[0].reason}").model_copy(
                    update={"candidates": candidates, "context_tokens": context_tokens(profile)}
                )
            )
            continue
        chosen, demand = placed[0]
        assert demand is not None
        llm = profile.llm_cost_per_month
        if llm is not None and chosen.cost_per_month > llm:
            out.append(
                _stay(
                    profile,
                    f"not worth it at this volume: {chosen.model} on {chosen.share} costs "
                    f"{chosen.cost_per_month:,.2f} a month, the LLM {llm:,.2f}",
                ).model_copy(update={"candidates": candidates, "context_tokens": context_tokens(profile)})
            )
            continue
        accepted.append(demand)
        ctx = others  # the earlier run's deployment of this task is replaced by the one accepted now
        out.append(
            Recommendation(
                task=profile.id,
                decision="Move",
                reason=f"{chosen.model} on {chosen.share}: the cheapest candidate that places; {floor_why}",
                deployment_name=name,
                context_tokens=context_tokens(profile),
                chosen=chosen,
                candidates=candidates,
                llm_cost_per_month=llm,
                saving_per_month=round(llm - chosen.cost_per_month, 2) if llm is not None else None,
            )
        )
    return out
