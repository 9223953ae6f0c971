"""Gather a pool's world, call the pure core (:func:`slm_operator.reconcile.decide`), apply the result."""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import yaml
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from slm_operator import metrics
from slm_operator.api.v1alpha1 import GPUPool, SLMDeployment, SLMDeploymentStatus
from slm_operator.contract import (
    API_VERSION,
    AUTOSCALER_STATUS_FIELDS,
    DEPLOYMENT_LABEL,
    DEVICE_PLUGIN_CONFIG_LABEL,
    GPU_ROLES_ANNOTATION,
    MIG_CONFIG_LABEL,
    MIG_LAST_GOOD_ANNOTATION,
    MIG_PENDING_ANNOTATION,
    MIG_ROLLBACK_ANNOTATION,
    ORIGINAL_LABELS_ANNOTATION,
    POOL_LABEL,
    REPLICA_LABEL,
)
from slm_operator.controllers.cache import ClusterCache
from slm_operator.controllers.guides import GuideSolver
from slm_operator.controllers.kube import Kube
from slm_operator.controllers.shell import contains, now_rfc3339, strip, update_configmap, write_status
from slm_operator.inventory import deployment_key, pool_nodes, pool_policy
from slm_operator.planner.portfolio import PortfolioOutcome, solver_installed
from slm_operator.reconcile import (
    Decisions,
    World,
    decide,
    node_patches,
    pending_mig_entries,
    restore_labels,
)
from slm_operator.reconcile.quotas import quota_refusal, refusal_message
from slm_operator.render import OperatorConfig
from slm_operator.render.configmaps import (
    MIG_PARTED_KEY,
    configs_in_use,
    device_plugin_data,
    entry_times,
    mig_parted_data,
    written_annotations,
)
from slm_operator.status import PLACED, READY, quota_refused, set_condition
from slm_operator.views import NodeView, ObjectView, PodView

log = logging.getLogger("slm_operator.pools")

#: pod creates a pass keeps in flight at once in namespaces without a ResourceQuota (bounded: the API server's
#: inflight limits and its API Priority and Fairness share)
CREATE_CONCURRENCY = 8
#: while a pass waits for something its watches report (pods stopped or Ready, a node's new config), it
#: passes again on their events; this is the most it waits without one (a safety net, not the mechanism)
WAITING_POLL_SECONDS = 5.0


class PoolReconciler:
    def __init__(self, kube: Kube, cfg: OperatorConfig, cache: ClusterCache | None = None) -> None:
        self.kube = kube
        self.cfg = cfg
        # what a pass reads (not started: read from the API server on each pass)
        self.cache = cache or ClusterCache(kube, cfg)
        # kopf runs a deleted pool's on.delete handler while the pool's daemon may still be in a pass (it only
        # signals the daemon to stop): a pass that gathered before the deletion would create pods and label
        # nodes after release() cleaned up. One lock per pool name keeps the two apart.
        self._pool_locks: dict[str, threading.Lock] = {}
        self._pool_locks_guard = threading.Lock()
        # pod creates of a pass go out CREATE_CONCURRENCY at a time (shared by every pool's passes)
        self._creator = ThreadPoolExecutor(CREATE_CONCURRENCY, thread_name_prefix="create-pod")
        # per pool, the exact solver's answers of its last pass (``Decisions.plan_memo``): handed back to the core
        # so that a pool whose inputs did not change pays no solve
        self._plan_memos: dict[str, dict[str, PortfolioOutcome]] = {}
        # large pools' guides (planner/guided.py), solved in a worker process once a pool's inputs settle
        self._guides = GuideSolver(cfg.guided_time_limit_seconds)
        if cfg.exact_budget_seconds > 0 and not solver_installed():
            log.warning(
                "OR-Tools is not installed: every pool is planned with the heuristic only (install the [solver] "
                "extra, or pass --exact-budget=0 to silence this)"
            )

    def _pool_lock(self, name: str) -> threading.Lock:
        with self._pool_locks_guard:
            return self._pool_locks.setdefault(name, threading.Lock())

    # ------------------------------------------------------------------------------ gather

    def _deployments(self, raws: list[dict[str, Any]]) -> list[SLMDeployment]:
        out = []
        for raw in raws:
            try:
                out.append(SLMDeployment.model_validate(strip(raw)))
            except ValidationError as exc:  # the API server validated it; a newer field we do not know?
                log.warning("skipping SLMDeployment %s: %s", ObjectView(raw).name, exc)
        return out

    def _pools(self, raws: list[dict[str, Any]]) -> list[GPUPool]:
        """Every GPUPool, so a node that several pools select is planned by one of them (``node_owner``)."""
        out = []
        for raw in raws:
            try:
                out.append(GPUPool.model_validate(strip(raw)))
            except ValidationError as exc:
                log.warning("skipping GPUPool %s: %s", ObjectView(raw).name, exc)
        return out

    def _mig_configs(self) -> tuple[dict[str, Any], dict[str, str]]:
        """The mig-parted ConfigMap's named configs and when each was first written."""
        cm = self.cache.mig_configmap.get(self.cfg.mig_configmap, self.cfg.nvidia_namespace)
        if not cm:
            return {}, {}
        times = entry_times((cm.get("metadata") or {}).get("annotations"))
        try:
            doc = yaml.safe_load((cm.get("data") or {}).get(MIG_PARTED_KEY, "")) or {}
            configs: dict[str, Any] = doc.get("mig-configs") or {}
            return configs, times
        except yaml.YAMLError:
            return {}, times

    def _foreign_gpu_pods(self, names: list[str]) -> list[dict[str, Any]]:
        """Pods that are no replicas and hold whole GPUs on the pool's nodes, or are nominated to one (the
        scheduler preempts for them: they claim their GPUs already)."""
        on = set(names)
        return [p for p in self.cache.gpu_pods.items() if PodView(p).node_name in on]

    def gather(self, pool: GPUPool) -> World:
        """The pool's world from the watch caches (the first pass waits for their first lists)."""
        nodes = self.cache.nodes.items()
        pools = self._pools(self.cache.pools.items())
        deps = (
            self._deployments(  # only the pool's are read into models (1,000 deployments: 3 pools, 3x less)
                [r for r in self.cache.deployments.items() if _pool_ref(r) == pool.metadata.name]
            )
        )
        pods = self.cache.replica_pods(pool.metadata.name)
        foreign: list[dict[str, Any]] = []
        if pool.spec.reservations:
            foreign = self._foreign_gpu_pods([NodeView(n).name for n in pool_nodes(pool, nodes, pools)])
        mig_configs, mig_times = self._mig_configs()
        used = {d.metadata.namespace for d in deps}
        quotas = [q for q in self.cache.quotas.items() if ObjectView(q).namespace in used] if deps else []
        namespaces: dict[str, dict[str, str]] = {}
        if pool.spec.tenants:  # tenants select namespaces by their labels
            for ns in self.cache.namespaces.items():
                meta = ns.get("metadata") or {}
                namespaces[str(meta.get("name", ""))] = dict(meta.get("labels") or {})
        return World(
            pool=pool,
            nodes=nodes,
            deployments=deps,
            pods=pods,
            foreign_gpu_pods=foreign,
            mig_configs=mig_configs,
            now=now_rfc3339(),
            cfg=self.cfg,
            mig_entry_times=mig_times,
            pools=pools,
            resource_quotas=quotas,
            namespaces=namespaces,
            plan_memo=self._plan_memos.get(pool.metadata.name, {}),
            plan_guide=self._guides.answer(pool.metadata.name),
            mig_manager_pods=self._mig_manager_pods(),
        )

    def _mig_manager_pods(self) -> list[dict[str, Any]]:
        """The GPU Operator's mig-manager pods (none when refreshes are off)."""
        if self.cfg.mig_manager_refresh_seconds <= 0:
            return []
        if not self.cache.mig_managers.started:
            return self.kube.list(
                "v1", "Pod", self.cfg.nvidia_namespace, label_selector=self.cfg.mig_manager_selector
            )
        return self.cache.mig_managers.items()

    # ------------------------------------------------------------------------------ reconcile

    def reconcile(self, name: str) -> float | None:
        """One planning pass for a pool. Returns None when nothing is in flight (the next pass comes with a
        watch event or the resync), else the seconds after which to pass again although no event came:
        when a gate opens with time alone (a MIG config entry old enough), at most WAITING_POLL_SECONDS; or
        when the pool's guide question settles or its solve ends (``controllers/guides.py``)."""
        with self._pool_lock(name):
            return self._reconcile(name)

    def _reconcile(self, name: str) -> float | None:
        raw = self.kube.get(API_VERSION, "GPUPool", name)
        if raw is None or ObjectView(raw).deleting:
            return None
        pool = GPUPool.model_validate(strip(raw))
        with metrics.time_reconcile("GPUPool"):
            world = self.gather(pool)
            started = time.perf_counter()
            d = decide(world)
            seconds = time.perf_counter() - started
            self._remember_plans(pool.metadata.name, d)
            if d.plan is not None:
                metrics.observe_plan(
                    pool.metadata.name, d.plan, seconds, pool_policy(pool), _fragmentation(d), _node_states(d)
                )
            self.apply(world, d)
            if d.consolidation is not None:
                metrics.count_moves(pool.metadata.name, d.consolidation.outcomes, d.consolidation.gpus_freed)
            metrics.observe_mig_rollbacks(pool.metadata.name, d.mig_rollbacks)
        guide_in = self._guides.request(pool.metadata.name, d.guide_request)
        if not d.waiting:
            return guide_in
        recheck = min(WAITING_POLL_SECONDS, d.recheck_seconds if d.recheck_seconds is not None else math.inf)
        return recheck if guide_in is None else min(recheck, guide_in)

    def _remember_plans(self, pool: str, d: Decisions) -> None:
        """Keep the pass's exact-solver answers for the pool's next pass; log each new solve."""
        self._plan_memos[pool] = d.plan_memo
        for o in d.plan_memo.values():
            if o.solve_seconds > 0:
                log.info(
                    "pool %s: exact solver (%.2f deterministic s): %s; plan by the %s",
                    pool,
                    o.solve_seconds,
                    o.status,
                    o.method,
                )

    def apply(self, world: World, d: Decisions) -> None:
        """Write the decisions: ConfigMaps and nodes first (the GPU Operator acts on them), then pods,
        Services, statuses and events."""
        self._apply_configmaps(world, d)
        self._refresh_mig_managers(world, d)
        self._apply_nodes(world, d)
        self._delete_pods(world, d)
        self._create_pods(world, d)
        deps = {deployment_key(x): x for x in world.deployments}
        for svc in d.services:
            self._apply_service(svc, deps)
        for key, st in d.deployment_statuses.items():
            self._tolerant(self._write_status, deps[key], st)
        if d.pool_status is not None:
            write_status(
                self.kube, "GPUPool", world.pool.metadata.name, None, world.pool.status, d.pool_status
            )
        for event in d.events:
            self.kube.event(event.involved_object(), event.type, event.reason, event.message)

    def _refresh_mig_managers(self, world: World, d: Decisions) -> None:
        """Annotate the mig-manager pods whose nodes wait for a new mig-parted entry: their kubelets remount the
        ConfigMap. A refused patch (the pod went, RBAC) only means the node waits the full sync."""
        done = 0
        for ns, name, patch in d.pod_patches:
            log.info("pod %s/%s: refreshing, so that mig-manager sees the new mig-parted entries", ns, name)
            try:
                done += self.kube.merge_patch("v1", "Pod", name, patch, ns) is not None
            except ApiException as exc:
                log.warning(
                    "pod %s/%s: not refreshed (%s); its node waits the full sync", ns, name, _message(exc)
                )
        metrics.count_mig_manager_refreshes(world.pool.metadata.name, done)

    def _apply_nodes(self, world: World, d: Decisions) -> None:
        """Node annotations (patched only when they differ) and the NVIDIA selector labels."""
        for node, patch in node_patches(world.nodes, d.node_labels, d.node_annotations).items():
            if "labels" in patch["metadata"]:
                log.info("node %s: applying %s", node, patch["metadata"]["labels"])
            self.kube.merge_patch("v1", "Node", node, patch)

    def _delete_pods(self, world: World, d: Decisions) -> None:
        evictions = {(e.deployment, e.ordinal): e for e in (d.plan.pool.evictions if d.plan else ())}
        pods = {(v.namespace, v.name): v for v in map(PodView, world.pods)}
        for ns, name, reason in d.pods_delete:
            log.info("deleting pod %s/%s (%s)", ns, name, reason)
            if not self.kube.delete("v1", "Pod", name, ns):
                continue
            labels = pods[(ns, name)].labels if (ns, name) in pods else {}
            ev = evictions.get((f"{ns}/{labels.get(DEPLOYMENT_LABEL)}", int(labels.get(REPLICA_LABEL, -1))))
            if ev is not None:
                metrics.count_plan_eviction(ev)

    def _create_pods(self, world: World, d: Decisions) -> None:
        """Create the decided pods. In a namespace without a ResourceQuota they go out CREATE_CONCURRENCY at a
        time (one at a time, 200 pods took most of a minute). In a namespace with one, one at a time: once the
        quota refuses a pod, the rest of the namespace waits for the next pass (one refusal per namespace and
        pass, not one per pod), and their deployments say why."""
        deps_by_name = {(x.metadata.namespace, x.metadata.name): x for x in world.deployments}

        def dep_of(pod: dict[str, Any]) -> SLMDeployment | None:
            meta = pod["metadata"]
            return deps_by_name.get((meta["namespace"], meta["labels"].get(DEPLOYMENT_LABEL, "")))

        limited = {ObjectView(q).namespace for q in world.resource_quotas}
        refused: dict[
            str, str
        ] = {}  # namespace -> the Placed message (the refused pod, the API server's words)
        free = [p for p in d.pods_create if p["metadata"]["namespace"] not in limited]
        for pod, exc in self._creator.map(self._create_one, free):
            if exc is not None:
                self._create_failed(d, pod, dep_of(pod), exc, refused)
        for pod in (p for p in d.pods_create if p["metadata"]["namespace"] in limited):
            dep = dep_of(pod)
            if pod["metadata"]["namespace"] in refused:
                if dep is not None:
                    self._quota_refused(d, dep, refused[pod["metadata"]["namespace"]])
                continue
            _, exc = self._create_one(pod)
            if exc is not None:
                self._create_failed(d, pod, dep, exc, refused)

    def _create_one(self, pod: dict[str, Any]) -> tuple[dict[str, Any], ApiException | None]:
        meta = pod["metadata"]
        try:
            if self.kube.create(pod) is not None:
                log.info("created pod %s/%s", meta["namespace"], meta["name"])
        except ApiException as exc:  # e.g. a missing PriorityClass: report it, keep reconciling the rest
            return pod, exc
        return pod, None

    def _create_failed(
        self,
        d: Decisions,
        pod: dict[str, Any],
        dep: SLMDeployment | None,
        exc: ApiException,
        refused: dict[str, str],
    ) -> None:
        """A refused create: a quota's refusal holds its namespace back; the deployment says why (status, Event)."""
        meta = pod["metadata"]
        log.warning("cannot create pod %s/%s: %s", meta["namespace"], meta["name"], _message(exc))
        if quota_refusal(exc.status, _message(exc)):
            refused.setdefault(meta["namespace"], refusal_message(meta["name"], _message(exc)))
        # throttled past Kube's retries: an Event per pod would add to the load; the next pass creates it
        if dep is None or exc.status == 429:
            return
        if meta["namespace"] in refused:
            self._quota_refused(d, dep, refused[meta["namespace"]])
        self.kube.event(
            {"apiVersion": API_VERSION, "kind": "SLMDeployment", "metadata": dep.metadata.to_k8s()},
            "Warning",
            "CreatePodFailed",
            f"cannot create pod {meta['name']}: {_message(exc)}",
        )

    @staticmethod
    def _quota_refused(d: Decisions, dep: SLMDeployment, message: str) -> None:
        """A ResourceQuota refused a replica pod: the deployment's status says so (not the core's "placed"),
        and the core's Placed event for it is dropped. No retry here: the pod is tried again on the next pass,
        which a change of the quota (its status.used too) triggers, or the resync."""
        key = deployment_key(dep)
        st = d.deployment_statuses.get(key)
        if st is None:
            return
        d.deployment_statuses[key] = quota_refused(
            dep.status, st, message, dep.metadata.generation, now_rfc3339()
        )
        ns, name = dep.metadata.namespace, dep.metadata.name
        d.events = [
            e for e in d.events if not (e.namespace == ns and e.name == name and e.reason == "Placed")
        ]

    @staticmethod
    def _tolerant(fn: Callable[..., object], *args: Any) -> None:
        """Writes into one namespace must not stop the pass for the others (a namespace being deleted, an
        object deleted meanwhile, a concurrent update: the next pass converges)."""
        try:
            fn(*args)
        except ApiException as exc:
            if exc.status not in (403, 404, 409, 422):
                raise
            log.info("skipped a write (%s): %s", exc.status, _message(exc))

    def _apply_service(self, svc: dict[str, Any], deps: Mapping[str, SLMDeployment]) -> None:
        """Apply one deployment's Service. A Service the API server refuses (e.g. "failed to allocate a serviceIP:
        range is full") must not stop the pass: the other deployments' Services, statuses and pods still get
        written. Its deployment gets a Warning Event with the API server's words, and the next pass tries again.
        A Service that already holds what we would apply is not sent again."""
        meta = svc["metadata"]
        if contains(self.cache.services.get(meta["name"], meta["namespace"]), svc):
            return
        try:
            self.kube.apply(svc)
        except ApiException as exc:
            log.warning(
                "Service %s/%s not applied (%s): %s",
                meta["namespace"],
                meta["name"],
                exc.status,
                _message(exc),
            )
            dep = deps.get(f"{meta['namespace']}/{meta['name']}")
            if dep is not None and exc.status not in (404, 409):  # gone or changed meanwhile: nothing to say
                self.kube.event(
                    {"apiVersion": API_VERSION, "kind": "SLMDeployment", "metadata": dep.metadata.to_k8s()},
                    "Warning",
                    "ServiceApplyFailed",
                    f"cannot apply Service {meta['name']}: {_message(exc)}",
                )

    def _write_status(self, dep: SLMDeployment, st: SLMDeploymentStatus) -> None:
        write_status(
            self.kube,
            "SLMDeployment",
            dep.metadata.name,
            dep.metadata.namespace,
            dep.status,
            st,
            others=AUTOSCALER_STATUS_FIELDS,
        )

    def _apply_configmaps(self, world: World, d: Decisions) -> None:
        """Merge this pool's config entries into the shared ConfigMaps; drop entries no node uses any more (nor
        any pool has just written, see ``pending_mig_entries``)."""
        in_use_mig = configs_in_use(world.nodes, MIG_CONFIG_LABEL, d.mig_entries) | pending_mig_entries(world)
        in_use_dp = configs_in_use(world.nodes, DEVICE_PLUGIN_CONFIG_LABEL, d.device_plugin_entries)
        ns = self.cfg.nvidia_namespace
        update_configmap(
            self.kube,
            self.cfg.mig_configmap,
            ns,
            lambda cur: mig_parted_data(cur, in_use_mig, d.mig_entries),
            lambda ann: written_annotations(ann, in_use_mig, d.mig_entry_times),
            cached=lambda: self.cache.mig_configmap.get(self.cfg.mig_configmap, ns),
        )
        update_configmap(
            self.kube,
            self.cfg.device_plugin_configmap,
            ns,
            lambda cur: device_plugin_data(cur, in_use_dp, d.device_plugin_entries),
            cached=lambda: self.cache.device_plugin_configmap.get(self.cfg.device_plugin_configmap, ns),
        )

    # ------------------------------------------------------------------------------ release

    def release(self, name: str, selector_pool: GPUPool | None) -> None:
        """A pool is deleted: its replica pods go, its nodes get their NVIDIA selector labels back. Waits for a
        pass of the pool still running (a pass that starts later sees the deletion and does nothing)."""
        with self._pool_lock(name):
            self._release(name, selector_pool)

    def _release(self, name: str, selector_pool: GPUPool | None) -> None:
        """Read live, not from the caches: nothing the deletion raced with may be missed."""
        for pod in map(PodView, self.kube.list("v1", "Pod", label_selector=f"{POOL_LABEL}={name}")):
            self.kube.delete("v1", "Pod", pod.name, pod.namespace)
        nodes = self.kube.list("v1", "Node")
        # only the nodes it planned: a node another pool selects too was (or now is) that pool's
        others = [p for p in self._pools(self.kube.list(API_VERSION, "GPUPool")) if p.metadata.name != name]
        for node in pool_nodes(selector_pool, nodes, others) if selector_pool else []:
            self._restore_node(node)
        metrics.forget_pool(name)
        self._plan_memos.pop(name, None)
        self._guides.forget(name)
        # Deployments of the pool now have no pool: say so.
        for dep in self._deployments(self.kube.list(API_VERSION, "SLMDeployment")):
            if dep.spec.pool_ref.name == name:
                try:
                    self.mark_pool_missing(dep)
                except ApiException as exc:  # e.g. its namespace is terminating: nothing to report to
                    log.info(
                        "cannot update %s/%s: %s", dep.metadata.namespace, dep.metadata.name, _message(exc)
                    )

    def _restore_node(self, node: Mapping[str, Any]) -> None:
        """Give a node its NVIDIA selector labels back, as they were before the pool took it over, and drop what
        the pool recorded on it."""
        view = NodeView(node)
        if ORIGINAL_LABELS_ANNOTATION not in view.annotations:
            return  # never taken, or already restored (the handler may run again after a failure)
        original = restore_labels(node)
        labels: dict[str, str | None] = {
            MIG_CONFIG_LABEL: original.get(MIG_CONFIG_LABEL),
            DEVICE_PLUGIN_CONFIG_LABEL: original.get(DEVICE_PLUGIN_CONFIG_LABEL),
        }
        patch = {
            "metadata": {
                "labels": labels,
                # a MIG rollback's hold and last good config are the pool's: a node that leaves it starts afresh
                "annotations": {
                    ORIGINAL_LABELS_ANNOTATION: None,
                    GPU_ROLES_ANNOTATION: None,
                    MIG_LAST_GOOD_ANNOTATION: None,
                    MIG_ROLLBACK_ANNOTATION: None,
                    MIG_PENDING_ANNOTATION: None,
                },
            }
        }
        log.info("node %s: restoring %s", view.name, labels)
        self.kube.merge_patch("v1", "Node", view.name, patch)

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


def _pool_ref(raw: Mapping[str, Any]) -> str:
    return str(((raw.get("spec") or {}).get("poolRef") or {}).get("name") or "")


def _node_states(d: Decisions) -> metrics.NodeConfigStates:
    return metrics.NodeConfigStates(tuple(d.node_configs), d.config_pending, d.mig_failed)


def _fragmentation(d: Decisions) -> metrics.Fragmentation | None:
    """The pass's distance from a fresh plan, for the gauges (None when the pool could not be planned)."""
    st = d.pool_status.consolidation if d.pool_status is not None else None
    if st is None:
        return None
    return metrics.Fragmentation(float(st.fragmentation_ratio), st.gpus_fresh, st.moves_in_flight)


def _message(exc: ApiException) -> str:
    try:
        return str(json.loads(exc.body or "{}").get("message") or exc.reason)
    except ValueError:
        return str(exc.reason)
