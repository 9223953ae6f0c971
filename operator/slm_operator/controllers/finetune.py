"""Gather a FineTuneJob's world, call the pure core (:func:`slm_operator.finetune.decide_finetune`), apply it."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from slm_operator import DEFAULT_TRAINER_IMAGE
from slm_operator.api.v1alpha1 import FineTuneJob, GPUPool, SLMDeployment
from slm_operator.contract import API_VERSION, FINETUNE_JOB_LABEL
from slm_operator.controllers.cache import ClusterCache
from slm_operator.controllers.kube import Kube
from slm_operator.controllers.shell import now_rfc3339, strip, write_status
from slm_operator.finetune import FineTuneDecisions, FineTuneWorld, decide_finetune, job_condition
from slm_operator.render import OperatorConfig
from slm_operator.render.finetune import job_name
from slm_operator.views import ObjectView

log = logging.getLogger("slm_operator.finetune")


def _model(kind: type[Any], raw: Mapping[str, Any] | None) -> Any:
    """The object as its model, or None when it is absent or not valid."""
    if raw is None:
        return None
    try:
        return kind.model_validate(strip(raw))
    except ValidationError as exc:
        log.warning("%s %s: %s", kind.__name__, ObjectView(raw).name, exc)
        return None


class FineTuneReconciler:
    def __init__(
        self,
        kube: Kube,
        trainer_image: str = DEFAULT_TRAINER_IMAGE,
        priority_class: str | None = None,
        cache: ClusterCache | None = None,
    ) -> None:
        self.kube = kube
        # the pool, its nodes, the target and its pods (not started: read from the API server)
        self.cache = cache or ClusterCache(kube, OperatorConfig())
        self.trainer_image = trainer_image
        self.priority_class = priority_class

    def gather(self, ftj: FineTuneJob) -> FineTuneWorld:
        """Read what the decision needs: the pool and nodes, the Job and its pods, the target; the target's pods
        and the namespace's other FineTuneJobs only once the Job completed (the promotion needs them)."""
        ns = ftj.metadata.namespace or "default"
        pool: GPUPool | None = _model(GPUPool, self.cache.pools.get(ftj.spec.pool_ref.name))
        job = self.kube.get("batch/v1", "Job", job_name(ftj), ns)
        pods = []
        if job is not None:
            pods = self.kube.list("v1", "Pod", ns, label_selector=f"{FINETUNE_JOB_LABEL}={ftj.metadata.name}")
        target: SLMDeployment | None = None
        target_pods: list[dict[str, Any]] = []
        others: list[FineTuneJob] = []
        if ftj.spec.promote is not None:
            name = ftj.spec.promote.slm_deployment_ref.name
            target = _model(SLMDeployment, self.cache.deployments.get(name, ns))
            if target is not None and job_condition(job, "Complete") is not None:
                target_pods = self.cache.deployment_pods(ns, name)
                found = (_model(FineTuneJob, o) for o in self.kube.list(API_VERSION, "FineTuneJob", ns))
                others = [o for o in found if o is not None]
        return FineTuneWorld(
            ftj=ftj,
            pool=pool,
            nodes=self.cache.nodes.items() if pool is not None else [],
            job=job,
            job_pods=pods,
            target=target,
            now=now_rfc3339(),
            trainer_image=self.trainer_image,
            priority_class=self.priority_class,
            target_pods=target_pods,
            others=others,
        )

    def apply(self, ftj: FineTuneJob, d: FineTuneDecisions) -> None:
        """The Job, then the status (it records what the SLMDeployment served before the promotion patch, so a
        rollback can restore it even if the patch is retried), then the patch and the events."""
        if d.job_create is not None:
            self.kube.create(d.job_create)
        ns = ftj.metadata.namespace or "default"
        write_status(self.kube, "FineTuneJob", ftj.metadata.name, ns, ftj.status, d.status)
        if d.promotion is not None:
            p = d.promotion
            self.kube.merge_patch(API_VERSION, "SLMDeployment", p.name, p.patch, p.namespace)
        for e in d.events:
            self.kube.event(e.involved_object(), e.type, e.reason, e.message)

    def reconcile(self, body: Mapping[str, Any]) -> None:
        """One pass for a FineTuneJob (its object as kopf or the API gives it)."""
        try:
            ftj = FineTuneJob.model_validate(strip(body))
        except ValidationError as exc:
            log.warning("FineTuneJob %s: %s", ObjectView(body).name, exc)
            return
        if ObjectView(body).deleting:
            return
        self.apply(ftj, decide_finetune(self.gather(ftj)))
