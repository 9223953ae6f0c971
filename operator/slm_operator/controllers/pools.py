"""Gather a pool's world, call the pure core (:func:`slm_operator.reconcile.decide`), apply the result."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import yaml
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from slm_operator import metrics
from slm_operator.api.v1alpha1 import GPUPool, SLMDeployment, SLMDeploymentStatus
from slm_operator.contract import (
    API_VERSION,
    APP_MANAGED_BY_LABEL,
    DEPLOYMENT_LABEL,
    DEVICE_PLUGIN_CONFIG_LABEL,
    GPU_ROLES_ANNOTATION,
    MANAGED_BY,
    MIG_CONFIG_LABEL,
    ORIGINAL_LABELS_ANNOTATION,
    POOL_LABEL,
    REPLICA_LABEL,
)
from slm_operator.controllers.kube import Kube, retry_on_conflict
from slm_operator.inventory import deployment_key, pool_nodes, pool_policy
from slm_operator.reconcile import Decisions, World, decide, restore_labels
from slm_operator.render import EXCLUSIVE_CONFIG, OperatorConfig, device_plugin_documents, mig_parted_document
from slm_operator.status import PLACED, READY, set_condition

log = logging.getLogger("slm_operator.pools")


def now_rfc3339() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class PoolReconciler:
    def __init__(self, kube: Kube, cfg: OperatorConfig) -> None:
        self.kube = kube
        self.cfg = cfg

    # ------------------------------------------------------------------------------ gather

    def _deployments(self) -> list[SLMDeployment]:
        out = []
        for raw in self.kube.list(API_VERSION, "SLMDeployment"):
            try:
                out.append(SLMDeployment.model_validate(_strip(raw)))
            except ValidationError as exc:  # the API server validated it; a newer field we do not know?
                log.warning("skipping SLMDeployment %s: %s", raw["metadata"].get("name"), exc)
        return out

    def _mig_configs(self) -> dict[str, Any]:
        cm = self.kube.get("v1", "ConfigMap", self.cfg.mig_configmap, self.cfg.nvidia_namespace)
        if not cm:
            return {}
        try:
            doc = yaml.safe_load((cm.get("data") or {}).get("config.yaml", "")) or {}
            configs: dict[str, Any] = doc.get("mig-configs") or {}
            return configs
        except yaml.YAMLError:
            return {}

    def gather(self, pool: GPUPool) -> World:
        nodes = self.kube.list("v1", "Node")
        deps = [d for d in self._deployments() if d.spec.pool_ref.name == pool.metadata.name]
        pods = self.kube.list("v1", "Pod", label_selector=f"{POOL_LABEL}={pool.metadata.name}")
        foreign: list[dict[str, Any]] = []
        if pool.spec.reservations:
            names = [n["metadata"]["name"] for n in pool_nodes(pool, nodes)]
            candidates = [
                p
                for name in names
                for p in self.kube.list("v1", "Pod", field_selector=f"spec.nodeName={name}")
            ]
            # Pods the scheduler is preempting for (nominated to a pool node) claim their GPUs already.
            for p in self.kube.list("v1", "Pod", field_selector="spec.nodeName="):
                if (p.get("status") or {}).get("nominatedNodeName") in names:
                    candidates.append(p)
            foreign = [
                p for p in candidates if POOL_LABEL not in ((p.get("metadata") or {}).get("labels") or {})
            ]
        return World(
            pool=pool,
            nodes=nodes,
            deployments=deps,
            pods=pods,
            foreign_gpu_pods=foreign,
            mig_configs=self._mig_configs(),
            now=now_rfc3339(),
            cfg=self.cfg,
        )

    # ------------------------------------------------------------------------------ reconcile

    def reconcile(self, name: str) -> bool:
        """One planning pass for a pool; returns True when something is in flight (re-check soon)."""
        raw = self.kube.get(API_VERSION, "GPUPool", name)
        if raw is None or raw["metadata"].get("deletionTimestamp"):
            return False
        pool = GPUPool.model_validate(_strip(raw))
        with metrics.time_reconcile("GPUPool"):
            world = self.gather(pool)
            started = time.perf_counter()
            d = decide(world)
            seconds = time.perf_counter() - started
            if d.plan is not None:
                metrics.observe_plan(pool.metadata.name, d.plan, seconds, pool_policy(pool))
            self.apply(world, d)
        return d.waiting

    def apply(self, world: World, d: Decisions) -> None:
        self._apply_configmaps(world, d)
        for node, node_annotations in sorted(d.node_annotations.items()):
            patch: dict[str, Any] = {"metadata": {"annotations": node_annotations}}
            if node in d.node_labels:
                patch["metadata"]["labels"] = d.node_labels[node]
                log.info("node %s: applying %s", node, d.node_labels[node])
            current = next((n for n in world.nodes if n["metadata"]["name"] == node), {})
            cur_ann = (current.get("metadata") or {}).get("annotations") or {}
            if node in d.node_labels or any(cur_ann.get(k) != v for k, v in node_annotations.items()):
                self.kube.merge_patch("v1", "Node", node, patch)
        evictions = {(e.deployment, e.ordinal): e for e in (d.plan.pool.evictions if d.plan else ())}
        records = {(p["metadata"]["namespace"], p["metadata"]["name"]): p["metadata"] for p in world.pods}
        for ns, name, reason in d.pods_delete:
            log.info("deleting pod %s/%s (%s)", ns, name, reason)
            if not self.kube.delete("v1", "Pod", name, ns):
                continue
            meta = records.get((ns, name), {})
            labels = meta.get("labels") or {}
            ev = evictions.get((f"{ns}/{labels.get(DEPLOYMENT_LABEL)}", int(labels.get(REPLICA_LABEL, -1))))
            if ev is not None:
                metrics.count_plan_eviction(ev)
        deps_by_name = {(x.metadata.namespace, x.metadata.name): x for x in world.deployments}
        for pod in d.pods_create:
            meta = pod["metadata"]
            try:
                if self.kube.create(pod) is not None:
                    log.info("created pod %s/%s", meta["namespace"], meta["name"])
            except ApiException as exc:  # e.g. a missing PriorityClass: report it, keep reconciling the rest
                dep_name = meta["labels"].get(DEPLOYMENT_LABEL, "")
                log.warning("cannot create pod %s/%s: %s", meta["namespace"], meta["name"], _message(exc))
                dep = deps_by_name.get((meta["namespace"], dep_name))
                if dep is not None:
                    self.kube.event(
                        {
                            "apiVersion": API_VERSION,
                            "kind": "SLMDeployment",
                            "metadata": dep.metadata.to_k8s(),
                        },
                        "Warning",
                        "CreatePodFailed",
                        f"cannot create pod {meta['name']}: {_message(exc)}",
                    )
        for svc in d.services:
            self._tolerant(self.kube.apply, svc)
        deps = {deployment_key(x): x for x in world.deployments}
        for key, st in d.deployment_statuses.items():
            self._tolerant(self._write_status, deps[key], st)
        if d.pool_status is not None:
            old = world.pool.status.to_k8s() if world.pool.status else None
            new = d.pool_status.to_k8s()
            if old != new:
                self.kube.apply(
                    {
                        "apiVersion": API_VERSION,
                        "kind": "GPUPool",
                        "metadata": {"name": world.pool.metadata.name},
                        "status": new,
                    },
                    status=True,
                )
        for event in d.events:
            involved = {
                "apiVersion": API_VERSION,
                "kind": event.kind,
                "metadata": {
                    "name": event.name,
                    "namespace": event.namespace,
                    "uid": _uid(world, event.namespace, event.name),
                },
            }
            self.kube.event(involved, event.type, event.reason, event.message)

    @staticmethod
    def _tolerant(fn: Any, *args: Any) -> None:
        """Writes into one namespace must not stop the pass for the others (a namespace being deleted, an
        object deleted meanwhile, a concurrent update: the next pass converges)."""
        try:
            fn(*args)
        except ApiException as exc:
            if exc.status not in (403, 404, 409, 422):
                raise
            log.info("skipped a write (%s): %s", exc.status, _message(exc))

    def _write_status(self, dep: SLMDeployment, st: SLMDeploymentStatus) -> None:
        old = dep.status.to_k8s() if dep.status else None
        new = st.to_k8s()
        if old == new:
            return
        self.kube.apply(
            {
                "apiVersion": API_VERSION,
                "kind": "SLMDeployment",
                "metadata": {"name": dep.metadata.name, "namespace": dep.metadata.namespace},
                "status": new,
            },
            status=True,
        )

    def _apply_configmaps(self, world: World, d: Decisions) -> None:
        """Merge this pool's config entries into the shared ConfigMaps; drop entries no node uses any more."""
        in_use_mig = {
            (n["metadata"].get("labels") or {}).get(MIG_CONFIG_LABEL, "") for n in world.nodes
        } | set(d.mig_entries)
        in_use_dp = {
            (n["metadata"].get("labels") or {}).get(DEVICE_PLUGIN_CONFIG_LABEL, "") for n in world.nodes
        } | set(d.device_plugin_entries)

        def mig_step() -> None:
            cm = self.kube.get("v1", "ConfigMap", self.cfg.mig_configmap, self.cfg.nvidia_namespace)
            current: dict[str, Any] = {}
            if cm:
                current = (yaml.safe_load((cm.get("data") or {}).get("config.yaml", "")) or {}).get(
                    "mig-configs"
                ) or {}
            merged = {k: v for k, v in current.items() if k.startswith("slm-") and k in in_use_mig}
            merged.update(d.mig_entries)
            text = mig_parted_document(merged)
            if cm and (cm.get("data") or {}).get("config.yaml") == text:
                return
            body = _configmap(self.cfg.mig_configmap, self.cfg.nvidia_namespace, {"config.yaml": text})
            if cm:
                body["metadata"]["resourceVersion"] = cm["metadata"]["resourceVersion"]
                self.kube.resource("v1", "ConfigMap").replace(body=body, namespace=self.cfg.nvidia_namespace)
            else:
                self.kube.create(body)

        def dp_step() -> None:
            cm = self.kube.get("v1", "ConfigMap", self.cfg.device_plugin_configmap, self.cfg.nvidia_namespace)
            current = dict((cm or {}).get("data") or {})
            keep = {k: v for k, v in current.items() if k in in_use_dp or k == EXCLUSIVE_CONFIG}
            merged = keep | device_plugin_documents(d.device_plugin_entries)
            if cm and current == merged:
                return
            body = _configmap(self.cfg.device_plugin_configmap, self.cfg.nvidia_namespace, merged)
            if cm:
                body["metadata"]["resourceVersion"] = cm["metadata"]["resourceVersion"]
                self.kube.resource("v1", "ConfigMap").replace(body=body, namespace=self.cfg.nvidia_namespace)
            else:
                self.kube.create(body)

        retry_on_conflict(mig_step)
        retry_on_conflict(dp_step)

    # ------------------------------------------------------------------------------ release

    def release(self, name: str, selector_pool: GPUPool | None) -> None:
        """A pool is deleted: its replica pods go, its nodes get their NVIDIA selector labels back."""
        for pod in self.kube.list("v1", "Pod", label_selector=f"{POOL_LABEL}={name}"):
            self.kube.delete("v1", "Pod", pod["metadata"]["name"], pod["metadata"]["namespace"])
        nodes = self.kube.list("v1", "Node")
        mine = pool_nodes(selector_pool, nodes) if selector_pool else []
        for node in mine:
            if ORIGINAL_LABELS_ANNOTATION not in ((node["metadata"].get("annotations")) or {}):
                continue  # never taken, or already restored (the handler may run again after a failure)
            original = restore_labels(node)
            labels: dict[str, str | None] = {
                MIG_CONFIG_LABEL: original.get(MIG_CONFIG_LABEL),
                DEVICE_PLUGIN_CONFIG_LABEL: original.get(DEVICE_PLUGIN_CONFIG_LABEL),
            }
            patch = {
                "metadata": {
                    "labels": labels,
                    "annotations": {ORIGINAL_LABELS_ANNOTATION: None, GPU_ROLES_ANNOTATION: None},
                }
            }
            log.info("node %s: restoring %s", node["metadata"]["name"], labels)
            self.kube.merge_patch("v1", "Node", node["metadata"]["name"], patch)
        metrics.forget_pool(name)
        # Deployments of the pool now have no pool: say so.
        for dep in self._deployments():
            if dep.spec.pool_ref.name == name:
                try:
                    self.mark_pool_missing(dep)
                except ApiException as exc:  # e.g. its namespace is terminating: nothing to report to
                    log.info(
                        "cannot update %s/%s: %s", dep.metadata.namespace, dep.metadata.name, _message(exc)
                    )

    def mark_pool_missing(self, dep: SLMDeployment) -> None:
        st = dep.status.model_copy() if dep.status else SLMDeploymentStatus()
        msg = f"GPUPool {dep.spec.pool_ref.name!r} does not exist: create it or change `spec.poolRef.name`"
        now = now_rfc3339()
        conds = set_condition(st.conditions, PLACED, False, "PoolNotFound", msg, dep.metadata.generation, now)
        conds = set_condition(conds, READY, False, "PoolNotFound", msg, dep.metadata.generation, now)
        st.conditions = conds
        st.observed_generation = dep.metadata.generation
        st.placed_replicas = 0
        self._write_status(dep, st)


def _message(exc: ApiException) -> str:
    try:
        return str(json.loads(exc.body or "{}").get("message") or exc.reason)
    except ValueError:
        return str(exc.reason)


def _configmap(name: str, namespace: str, data: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {APP_MANAGED_BY_LABEL: MANAGED_BY},
        },
        "data": data,
    }


def _strip(raw: dict[str, Any]) -> dict[str, Any]:
    """Keep what the models know: apiVersion, kind, metadata, spec, status."""
    out: dict[str, Any] = {
        k: raw[k] for k in ("apiVersion", "kind", "metadata", "spec", "status") if k in raw
    }
    meta = dict(out.get("metadata") or {})
    meta.pop("managedFields", None)
    out["metadata"] = meta
    return out


def _uid(world: World, namespace: str | None, name: str) -> str | None:
    for d in world.deployments:
        if d.metadata.name == name and d.metadata.namespace == namespace:
            return d.metadata.uid
    if world.pool.metadata.name == name:
        return world.pool.metadata.uid
    return None
