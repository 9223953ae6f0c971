"""Gather a FineTuneJob's world, call the pure core (:func:`slm_operator.finetune.decide_finetune`), apply it."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from slm_operator.api.v1alpha1 import FineTuneJob, GPUPool
from slm_operator.contract import API_VERSION
from slm_operator.controllers.kube import Kube
from slm_operator.controllers.shell import now_rfc3339, strip, write_status
from slm_operator.finetune import FineTuneDecisions, FineTuneWorld, decide_finetune, needs_score
from slm_operator.render.finetune import job_name
from slm_operator.views import ObjectView

log = logging.getLogger("slm_operator.finetune")


class FineTuneReconciler:
    def __init__(self, kube: Kube, operator_image: str, priority_class: str | None) -> None:
        self.kube = kube
        self.operator_image = operator_image
        self.priority_class = priority_class

    def gather(self, ftj: FineTuneJob) -> FineTuneWorld:
        """Read what the decision needs, and no more (the Job's pods only once the gate must be read)."""
        ns = ftj.metadata.namespace or "default"
        pool_raw = self.kube.get(API_VERSION, "GPUPool", ftj.spec.pool_ref.name)
        pool = GPUPool.model_validate(strip(pool_raw)) if pool_raw is not None else None
        has_segment = pool is not None and ftj.spec.segment in {s.name for s in pool.spec.segments or []}
        job = self.kube.get("batch/v1", "Job", job_name(ftj), ns)
        pods = []
        if needs_score(ftj, job):
            pods = self.kube.list("v1", "Pod", ns, label_selector=f"job-name={job_name(ftj)}")
        target = None
        if job is not None and ftj.spec.promote is not None:
            target = self.kube.get(API_VERSION, "SLMDeployment", ftj.spec.promote.slm_deployment_ref.name, ns)
        return FineTuneWorld(
            ftj=ftj,
            pool=pool,
            nodes=self.kube.list("v1", "Node") if has_segment else [],
            job=job,
            job_pods=pods,
            target=target,
            now=now_rfc3339(),
            operator_image=self.operator_image,
            priority_class=self.priority_class,
        )

    def apply(self, ftj: FineTuneJob, d: FineTuneDecisions) -> None:
        if d.job_create is not None:
            self.kube.create(d.job_create)
        if d.promotion is not None:
            p = d.promotion
            self.kube.merge_patch(API_VERSION, "SLMDeployment", p.name, dict(p.patch), p.namespace)
        for e in d.events:
            self.kube.event(e.involved_object(), e.type, e.reason, e.message)
        ns = ftj.metadata.namespace or "default"
        write_status(self.kube, "FineTuneJob", ftj.metadata.name, ns, ftj.status, d.status)

    def reconcile(self, body: Mapping[str, Any]) -> None:
        """One pass for a FineTuneJob (its object as kopf or the API gives it)."""
        try:
            ftj = FineTuneJob.model_validate(strip(body))
        except ValidationError as exc:
            log.warning("FineTuneJob %s: %s", ObjectView(body).name, exc)
            return
        self.apply(ftj, decide_finetune(self.gather(ftj)))
