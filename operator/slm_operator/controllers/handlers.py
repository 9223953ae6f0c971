"""kopf registrations (thin): events mark pools dirty; one daemon per GPUPool runs the planning passes.

Level-based: every pass re-reads the pool's world and converges to the plan, so a missed event, a restart
or a second operator replica taking over all end in the same state. Handlers are sync (kopf runs them in
threads), so the blocking Kubernetes client never stalls the event loop.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from typing import Any

import kopf
from pydantic import ValidationError

from slm_operator.api.v1alpha1 import FineTuneJob, GPUPool, SLMDeployment
from slm_operator.contract import (
    ADAPTER_ANNOTATION,
    API_VERSION,
    FINALIZER,
    GPU_INVENTORY_ANNOTATION,
    GPU_RESOURCE,
    GPU_ROLES_ANNOTATION,
    GROUP,
    NVIDIA_PREFIX,
    POOL_LABEL,
    VERSION,
)
from slm_operator.controllers.kube import Kube
from slm_operator.controllers.pools import PoolReconciler, _strip, now_rfc3339
from slm_operator.render import OperatorConfig
from slm_operator.render.finetune import (
    evaluation_score,
    finetune_job,
    finetune_status,
    job_name,
    promotion_allowed,
)

log = logging.getLogger("slm_operator.handlers")


RESYNC_SECONDS = float(os.environ.get("SLM_RESYNC_SECONDS", "30"))
RETRY_SECONDS = 1.0
DEBOUNCE_SECONDS = 0.3


class State:
    """Process-wide state set by :func:`slm_operator.controllers.main.run` before kopf starts."""

    kube: Kube
    cfg: OperatorConfig
    reconciler: PoolReconciler
    operator_image: str = "ghcr.io/slm-operator/slm-operator:0.1.0"
    finetune_priority_class: str | None = None
    triggers: dict[str, threading.Event] = {}
    lock = threading.Lock()
    fingerprints: dict[str, str] = {}


def trigger(pool: str) -> None:
    with State.lock:
        State.triggers.setdefault(pool, threading.Event()).set()


def trigger_all() -> None:
    with State.lock:
        for ev in State.triggers.values():
            ev.set()


def _changed(key: str, fingerprint: Any) -> bool:
    fp = json.dumps(fingerprint, sort_keys=True, default=str)
    with State.lock:
        if State.fingerprints.get(key) == fp:
            return False
        State.fingerprints[key] = fp
        return True


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING
    settings.peering.standalone = True  # one active replica is ensured by our Lease (controllers/leader.py)
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 60
    settings.batching.worker_limit = 32


@kopf.on.login()
def login(**_: Any) -> kopf.ConnectionInfo:
    """Use the same credentials as the Kubernetes client (``--kubeconfig``, $KUBECONFIG or in-cluster)."""
    c = State.kube.api.configuration
    token = None
    auth = (c.api_key or {}).get("authorization") or (c.api_key or {}).get("BearerToken")
    if auth:
        token = auth.split(" ", 1)[1] if auth.lower().startswith("bearer ") else auth
    return kopf.ConnectionInfo(
        server=c.host,
        ca_path=c.ssl_ca_cert,
        insecure=not c.verify_ssl,
        certificate_path=c.cert_file,
        private_key_path=c.key_file,
        scheme="Bearer" if token else None,
        token=token,
        default_namespace=None,
    )


# ------------------------------------------------------------------------------------------- GPUPool


@kopf.daemon(GROUP, VERSION, "gpupools", cancellation_timeout=10)
def pool_daemon(name: str, stopped: kopf.DaemonStopped, logger: logging.Logger, **_: Any) -> None:
    """One planning pass at a time per pool: on a trigger (debounced), after in-flight work, or on resync."""
    with State.lock:
        ev = State.triggers.setdefault(name, threading.Event())
    ev.set()
    timeout = RESYNC_SECONDS
    while not stopped:
        ev.wait(timeout)
        if stopped:
            break
        stopped.wait(DEBOUNCE_SECONDS)
        ev.clear()
        try:
            waiting = State.reconciler.reconcile(name)
        except Exception:  # a failed pass is retried; the daemon must not die
            logger.exception("planning pass for pool %s failed", name)
            waiting = True
        timeout = RETRY_SECONDS if waiting else RESYNC_SECONDS
    with State.lock:
        State.triggers.pop(name, None)


@kopf.on.delete(GROUP, VERSION, "gpupools")
def pool_deleted(body: kopf.Body, name: str, **_: Any) -> None:
    try:
        pool = GPUPool.model_validate(_strip(dict(body)))
    except ValidationError:
        pool = None
    State.reconciler.release(name, pool)


# ------------------------------------------------------------------------------------------- SLMDeployment


@kopf.on.event(GROUP, VERSION, "slmdeployments")
def deployment_event(body: kopf.Body, type: str | None, **_: Any) -> None:
    spec = body.get("spec") or {}
    meta = body.get("metadata") or {}
    key = f"dep/{meta.get('namespace')}/{meta.get('name')}"
    if not _changed(key, [type, meta.get("generation"), meta.get("annotations", {}).get(ADAPTER_ANNOTATION)]):
        return
    pool = (spec.get("poolRef") or {}).get("name", "")
    with State.lock:
        known = pool in State.triggers
    if known:
        trigger_all() if type == "DELETED" else trigger(pool)
        return
    if type != "DELETED" and State.kube.get(API_VERSION, "GPUPool", pool) is None:
        try:
            State.reconciler.mark_pool_missing(SLMDeployment.model_validate(_strip(dict(body))))
        except ValidationError as exc:
            log.warning("SLMDeployment %s: %s", meta.get("name"), exc)
    trigger_all()  # it may have left another pool


# ------------------------------------------------------------------------------------------- Nodes and Pods


def _layout_only(raw: str | None) -> Any:
    """What of the agent's inventory matters to the plan: MIG modes and instances, not memory in use (which
    changes all the time and would make every poll a re-plan)."""
    try:
        doc = json.loads(raw or "{}")
    except ValueError:
        return raw
    return [
        (
            g.get("index"),
            g.get("migEnabled"),
            [(m.get("profile"), m.get("start")) for m in g.get("migInstances", [])],
        )
        for g in doc.get("gpus", [])
    ]


@kopf.on.event("", "v1", "nodes")
def node_event(body: kopf.Body, type: str | None, **_: Any) -> None:
    meta = body.get("metadata") or {}
    status = body.get("status") or {}
    labels = {k: v for k, v in (meta.get("labels") or {}).items() if k.startswith(NVIDIA_PREFIX)}
    fp = [
        type,
        labels,
        _layout_only((meta.get("annotations") or {}).get(GPU_INVENTORY_ANNOTATION)),
        {k: v for k, v in (status.get("allocatable") or {}).items() if k.startswith(NVIDIA_PREFIX)},
        (body.get("spec") or {}).get("unschedulable"),
    ]
    if _changed(f"node/{meta.get('name')}", fp):
        trigger_all()


@kopf.on.event("", "v1", "pods", labels={POOL_LABEL: kopf.PRESENT})
def replica_pod_event(body: kopf.Body, type: str | None, **_: Any) -> None:
    meta = body.get("metadata") or {}
    st = body.get("status") or {}
    ready = [c.get("status") for c in st.get("conditions") or [] if c.get("type") == "Ready"]
    fp = [
        type,
        st.get("phase"),
        ready,
        bool(meta.get("deletionTimestamp")),
        (body.get("spec") or {}).get("nodeName"),
    ]
    if _changed(f"pod/{meta.get('namespace')}/{meta.get('name')}", fp):
        trigger(meta["labels"][POOL_LABEL])


def _holds_whole_gpus(body: kopf.Body, **_: Any) -> bool:
    if POOL_LABEL in (body.get("metadata", {}).get("labels") or {}):
        return False
    for c in (body.get("spec") or {}).get("containers") or []:
        if GPU_RESOURCE in ((c.get("resources") or {}).get("limits") or {}):
            return True
    return False


@kopf.on.event("", "v1", "pods", when=_holds_whole_gpus)
def gpu_pod_event(body: kopf.Body, type: str | None, **_: Any) -> None:
    """LLM-fallback (and fine-tuning) pods claim reserved GPUs: re-plan so lent BestEffort replicas leave."""
    meta = body.get("metadata") or {}
    fp = [
        type,
        (body.get("status") or {}).get("phase"),
        (body.get("spec") or {}).get("nodeName"),
        bool(meta.get("deletionTimestamp")),
    ]
    if _changed(f"gpupod/{meta.get('namespace')}/{meta.get('name')}", fp):
        trigger_all()


# ------------------------------------------------------------------------------------------- FineTuneJob


def _segment_nodes(pool: str, segment: str) -> list[str]:
    out = []
    for n in State.kube.list("v1", "Node"):
        try:
            roles = json.loads((n["metadata"].get("annotations") or {}).get(GPU_ROLES_ANNOTATION) or "{}")
        except ValueError:
            continue
        if segment in roles.values() and n["metadata"].get("labels", {}).get(POOL_LABEL, pool) == pool:
            out.append(n["metadata"]["name"])
    return sorted(out)


@kopf.timer(GROUP, VERSION, "finetunejobs", interval=5.0, idle=0)
def finetune_reconcile(body: kopf.Body, **_: Any) -> None:
    """Create the training Job on the segment's nodes, mirror its status, promote the result."""
    try:
        ftj = FineTuneJob.model_validate(_strip(dict(body)))
    except ValidationError as exc:
        log.warning("FineTuneJob %s: %s", body["metadata"].get("name"), exc)
        return
    kube = State.kube
    ns = ftj.metadata.namespace or "default"
    now = now_rfc3339()
    problem: tuple[str, str] | None = None
    pool_raw = kube.get(API_VERSION, "GPUPool", ftj.spec.pool_ref.name)
    nodes: list[str] = []
    if pool_raw is None:
        problem = ("PoolNotFound", f"GPUPool {ftj.spec.pool_ref.name!r} does not exist")
    else:
        pool = GPUPool.model_validate(_strip(pool_raw))
        if ftj.spec.segment not in {s.name for s in pool.spec.segments or []}:
            problem = (
                "SegmentNotFound",
                f"GPUPool {pool.metadata.name!r} has no segment {ftj.spec.segment!r}",
            )
        else:
            nodes = _segment_nodes(pool.metadata.name, ftj.spec.segment)
            if not nodes:
                problem = ("SegmentNotReady", f"no GPU of the pool holds segment {ftj.spec.segment!r} yet")
    job = kube.get("batch/v1", "Job", job_name(ftj), ns)
    if problem is None and job is None:
        kube.create(finetune_job(ftj, nodes, State.operator_image, State.finetune_priority_class))
        job = kube.get("batch/v1", "Job", job_name(ftj), ns)
    promoted = False
    score = None
    if job is not None and ftj.spec.promote is not None:
        complete = any(
            c.get("type") == "Complete" and c.get("status") == "True"
            for c in (job.get("status") or {}).get("conditions") or []
        )
        if complete and ftj.spec.promote.evaluation.min_score_percent > 0:
            score = evaluation_score(kube.list("v1", "Pod", ns, label_selector=f"job-name={job_name(ftj)}"))
        target = ftj.spec.promote.slm_deployment_ref.name
        artifact = f"pvc://{ftj.spec.output.pvc.claim_name}/{ftj.spec.output.pvc.path}".rstrip("/")
        dep = kube.get(API_VERSION, "SLMDeployment", target, ns)
        if promotion_allowed(ftj, complete, score) and dep is not None:
            if (dep["metadata"].get("annotations") or {}).get(ADAPTER_ANNOTATION) != artifact:
                kube.merge_patch(
                    API_VERSION,
                    "SLMDeployment",
                    target,
                    {"metadata": {"annotations": {ADAPTER_ANNOTATION: artifact}}},
                    ns,
                )
                kube.event(
                    dep, "Normal", "Promoted", f"rolling onto {artifact} from FineTuneJob {ftj.metadata.name}"
                )
            promoted = True
    st = finetune_status(
        ftj, job=job, segment_nodes=nodes, problem=problem, promoted=promoted, now=now, score=score
    )
    new = st.to_k8s()
    if (ftj.status.to_k8s() if ftj.status else None) != new:
        kube.apply(
            {
                "apiVersion": API_VERSION,
                "kind": "FineTuneJob",
                "metadata": {"name": ftj.metadata.name, "namespace": ns},
                "status": new,
            },
            status=True,
        )
