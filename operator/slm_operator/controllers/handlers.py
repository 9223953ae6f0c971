"""Handlers (thin): events mark pools dirty; one daemon per GPUPool runs the planning passes.

kopf watches GPUPools (a daemon and a finalizer each) and FineTuneJobs (a timer); the other kinds a pass reads
are watched by the operator's watch caches (cache.py), which call the handlers here after storing each change.
Level-based: every pass re-reads the pool's world and converges to the plan, so a missed event, a restart
or a second operator replica taking over all end in the same state. Handlers are sync (kopf runs them in
threads, the caches in theirs), so the blocking Kubernetes client never stalls the event loop.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import kopf
from pydantic import ValidationError

from slm_operator.api.v1alpha1 import GPUPool, SLMDeployment
from slm_operator.contract import (
    ACTIVATION_ANNOTATION,
    ADAPTER_ANNOTATION,
    API_VERSION,
    FINALIZER,
    GPU_INVENTORY_ANNOTATION,
    GROUP,
    NVIDIA_PREFIX,
    POOL_LABEL,
    PROMOTED_METHOD_ANNOTATION,
    VERSION,
)
from slm_operator.controllers.context import OperatorContext, from_memo
from slm_operator.controllers.shell import strip
from slm_operator.inventory import node_down_since
from slm_operator.views import NodeView, ObjectView, PodView

log = logging.getLogger("slm_operator.handlers")


RESYNC_SECONDS = float(os.environ.get("SLM_RESYNC_SECONDS", "30"))
RETRY_SECONDS = 1.0
DEBOUNCE_SECONDS = 0.3


def retry_seconds(failures: int) -> float:
    """The wait before the next pass after ``failures`` failed passes in a row (0: the last one succeeded):
    RETRY_SECONDS, doubling with each failure up to RESYNC_SECONDS. A pass fails when the API server keeps
    refusing (throttled past Kube's own retries, restarting): passes must not come back at a fixed rate then."""
    return min(max(RESYNC_SECONDS, RETRY_SECONDS), RETRY_SECONDS * 2.0 ** max(failures - 1, 0))


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
def login(memo: kopf.Memo, **_: Any) -> kopf.ConnectionInfo:
    """Use the same credentials as the Kubernetes client (``--kubeconfig``, $KUBECONFIG or in-cluster)."""
    c = from_memo(memo).kube.api.configuration
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
def pool_daemon(
    *, name: str, stopped: kopf.DaemonStopped, logger: kopf.Logger, memo: kopf.Memo, **_: Any
) -> None:
    """One planning pass at a time per pool: on a trigger (debounced), after in-flight work, or on resync."""
    ctx = from_memo(memo)
    ev = ctx.pool_trigger(name)
    ev.set()
    timeout = RESYNC_SECONDS
    failures = 0  # failed passes in a row: the retry backs off
    while not stopped:
        ev.wait(timeout)
        if stopped:
            break
        stopped.wait(DEBOUNCE_SECONDS)
        ev.clear()
        try:
            again = ctx.pools.reconcile(name)
        except Exception:  # a failed pass is retried; the daemon must not die
            failures += 1
            logger.exception("planning pass for pool %s failed (%d in a row)", name, failures)
            stopped.wait(retry_seconds(failures))  # events do not make a failing pass come back sooner
            timeout = 0.0
            continue
        failures = 0
        # waiting: on the next event, or when a time gate opens (not sooner than RETRY_SECONDS)
        timeout = RESYNC_SECONDS if again is None else max(RETRY_SECONDS, again)
    ctx.forget_pool(name)


@kopf.on.event(GROUP, VERSION, "gpupools")
def pool_event(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    """A pool created, changed or deleted: every pool plans again (its node selector may now overlap another
    pool's, or stop overlapping; inventory.node_owner)."""
    ctx = from_memo(memo)
    obj = ObjectView(body)
    if ctx.changed(f"pool/{obj.name or None}", [type, obj.metadata.get("generation")]):
        ctx.trigger_all()


@kopf.on.delete(GROUP, VERSION, "gpupools")
def pool_deleted(body: kopf.Body, name: str, memo: kopf.Memo, **_: Any) -> None:
    try:
        pool = GPUPool.model_validate(strip(body))
    except ValidationError:
        pool = None
    from_memo(memo).pools.release(name, pool)


# ------------------------------------------------------------------------------------------- SLMDeployment


def deployment_event(ctx: OperatorContext, type: str, body: Mapping[str, Any]) -> None:
    obj = ObjectView(body)
    key = f"dep/{obj.namespace or None}/{obj.name or None}"
    activation = obj.annotations.get(ACTIVATION_ANNOTATION)
    if not ctx.changed(
        key,
        [
            type,
            obj.metadata.get("generation"),
            obj.annotations.get(ADAPTER_ANNOTATION),
            obj.annotations.get(PROMOTED_METHOD_ANNOTATION),
            activation,
            # the autoscaler's decision: plan for it (the autoscaler also wakes the pool itself)
            ((body.get("status") or {}).get("autoscaling") or {}).get("desiredReplicas"),
        ],
    ):
        return
    if activation and type != "DELETED" and ctx.autoscaler is not None:
        # scale from zero: the gateway holds a call for this deployment; decide now, not at the next poll
        ctx.autoscaler.request_activation(f"{obj.namespace}/{obj.name}", activation)
    pool = ((body.get("spec") or {}).get("poolRef") or {}).get("name", "")
    if ctx.knows_pool(pool):
        ctx.trigger_all() if type == "DELETED" else ctx.trigger(pool)
        return
    # the cache first (a restart's first list tells every deployment at once, before the pools' daemons run);
    # the API server only when the cache does not have it (it may not have seen a pool created just now)
    if type != "DELETED" and _pool_missing(ctx, pool):
        try:
            ctx.pools.mark_pool_missing(SLMDeployment.model_validate(strip(body)))
        except ValidationError as exc:
            log.warning("SLMDeployment %s: %s", obj.name, exc)
    ctx.trigger_all()  # it may have left another pool


def _pool_missing(ctx: OperatorContext, pool: str) -> bool:
    cache = ctx.pools.cache.pools
    return cache.get(pool) is None and (
        not cache.started or ctx.kube.get(API_VERSION, "GPUPool", pool) is None
    )


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


def node_event(ctx: OperatorContext, type: str, body: Mapping[str, Any]) -> None:
    node = NodeView(body)
    fp = [
        type,
        {k: v for k, v in node.labels.items() if k.startswith(NVIDIA_PREFIX)},
        _layout_only(node.annotations.get(GPU_INVENTORY_ANNOTATION)),
        {k: v for k, v in node.allocatable.items() if k.startswith(NVIDIA_PREFIX)},
        (body.get("spec") or {}).get("unschedulable"),
        node_down_since(body) is not None,  # NotReady: nothing new goes there; lost later (re-checked)
    ]
    if ctx.changed(f"node/{node.name or None}", fp):
        ctx.trigger_all()


def namespace_event(ctx: OperatorContext, type: str, body: Mapping[str, Any]) -> None:
    """A Namespace's labels decide which pool tenant its SLMDeployments belong to (docs/tenants.md)."""
    meta = body.get("metadata") or {}
    if ctx.changed(f"namespace/{meta.get('name')}", [type, dict(meta.get("labels") or {})]):
        ctx.trigger_all()


def _pod_key(pod: PodView) -> str:
    return f"{pod.namespace or None}/{pod.name or None}"


def replica_pod_event(ctx: OperatorContext, type: str, body: Mapping[str, Any]) -> None:
    pod = PodView(body)
    ready = [c.get("status") for c in pod.status.get("conditions") or [] if c.get("type") == "Ready"]
    fp = [type, pod.status.get("phase"), ready, pod.deleting, pod.spec.get("nodeName")]
    if ctx.changed(f"pod/{_pod_key(pod)}", fp):
        ctx.trigger(pod.labels[POOL_LABEL])


def gpu_pod_event(ctx: OperatorContext, type: str, body: Mapping[str, Any]) -> None:
    """LLM-fallback (and fine-tuning) pods claim reserved GPUs: re-plan so lent BestEffort replicas leave."""
    pod = PodView(body)
    fp = [type, pod.status.get("phase"), pod.spec.get("nodeName"), pod.deleting]
    if ctx.changed(f"gpupod/{_pod_key(pod)}", fp):
        ctx.trigger_all()


# ------------------------------------------------------------------------------------------- ResourceQuotas


def quota_event(ctx: OperatorContext, type: str, body: Mapping[str, Any]) -> None:
    """A ResourceQuota's limits, scopes or usage changed: the pools plan within it again (docs/resource-quotas.md);
    its usage drops when a pod of the namespace is gone, which may let a held-back replica in."""
    obj = ObjectView(body)
    spec = body.get("spec") or {}
    status = body.get("status") or {}
    fp = [
        type,
        spec.get("hard"),
        spec.get("scopes"),
        spec.get("scopeSelector"),
        status.get("hard"),
        status.get("used"),
    ]
    if ctx.changed(f"quota/{obj.namespace or None}/{obj.name or None}", fp):
        ctx.trigger_all()


# ------------------------------------------------------------------------------------------- the watch caches


def watch_handlers(ctx: OperatorContext) -> None:
    """The handlers above, called by the watch caches (cache.py) after each change they store: a pass they wake
    reads a cache that already holds the change. kopf watches only the kinds it must (GPUPools for their daemons
    and finalizer, FineTuneJobs for their timer)."""
    cache = ctx.pools.cache
    for reflector, handler in (
        (cache.deployments, deployment_event),
        (cache.nodes, node_event),
        (cache.namespaces, namespace_event),
        (cache.replicas, replica_pod_event),
        (cache.gpu_pods, gpu_pod_event),
        (cache.quotas, quota_event),
    ):
        reflector.on_event = functools.partial(handler, ctx)


# ------------------------------------------------------------------------------------------- FineTuneJob


@kopf.timer(GROUP, VERSION, "finetunejobs", interval=5.0, idle=0)
def finetune_reconcile(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Create the training Job on the segment's nodes, mirror its status, promote the result."""
    from_memo(memo).finetune.reconcile(body)
