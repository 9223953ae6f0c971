"""Prometheus metrics of the operator (prometheus-client), and the small API the shell calls.

Everything is registered in a dedicated :class:`CollectorRegistry` (``REGISTRY``, served by :func:`serve`),
never in prometheus-client's global one, so tests build their own :class:`OperatorMetrics` on a fresh
registry. The module-level functions act on the default instance ``METRICS``:

* after planning a pool: ``observe_plan(pool_name, plan, seconds, policy=None)`` sets every pool, deployment and
  reservation gauge from the :class:`Plan` (and removes the series of deployments, modes, reservations that
  are gone); ``forget_pool(pool_name)`` when a GPUPool is deleted;
* around each handler: ``observe_reconcile(resource, seconds)`` or ``with time_reconcile(resource): ...``;
* when the shell deletes a replica pod the plan evicted: ``count_eviction(reason, tier)`` (moved elsewhere) or
  ``count_yield(reason, tier)`` (no new place), or ``count_plan_eviction(eviction)`` which picks one;
* after a pass whose consolidation moves started, completed or were abandoned: ``count_moves(pool_name,
  outcomes, gpus_freed)`` (the fragmentation gauges come with ``observe_plan(..., fragmentation=...)``);
* after a pass: ``observe_mig_rollbacks(pool_name, held)`` (nodes held on their last good MIG layout, and the
  rollbacks that started);
* whether each planned node reports its configuration, and whether mig-manager failed its MIG config:
  ``observe_plan(..., node_states=NodeConfigStates(...))`` (the alert rules in charts/slm-operator/rules/);
* on a failed API call: ``count_api_error(verb, code)``;
* at start-up: ``serve("127.0.0.1:8000")``.

Names, types, labels and meaning of every series: docs/observability.md. Memory is in bytes, time in seconds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from slm_operator.planner.model import Eviction, Plan, PoolPolicy

REGISTRY = CollectorRegistry()

#: every GpuPlan.mode; observe_plan sets all of them (0 when a pool has no GPU in a mode)
GPU_MODES = ("MIG", "MPS", "TimeSlicing", "Exclusive", "Reserved", "Segment", "Free")
RECONCILE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
PLAN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

_Labels = tuple[str, ...]


@dataclass(frozen=True)
class Fragmentation:
    """How far a pool's placement is from a fresh plan (``status.consolidation``)."""

    ratio: float  # GPUs used / GPUs a fresh plan uses
    gpus_fresh: int
    moves_in_flight: int


@dataclass(frozen=True)
class NodeConfigStates:
    """Whether each node the plan configures reports its planned configuration (``Decisions.config_pending``)
    and whether mig-manager failed its MIG config on every try (``Decisions.mig_failed``)."""

    nodes: tuple[str, ...]  # every node with a planned configuration
    pending: Mapping[str, str]  # node -> why its planned configuration is not applied yet
    mig_failed: Mapping[str, str]  # node -> the MIG config that failed


def split_deployment(key: str) -> tuple[str, str]:
    """ "namespace/name" -> (namespace, name); a bare name is in "default"."""
    ns, sep, name = key.partition("/")
    return (ns, name) if sep else ("default", key)


class OperatorMetrics:
    """Every operator metric, registered in ``registry``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:  # long: declarative metric table
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.reconcile_duration = Histogram(
            "slm_reconcile_duration_seconds",
            "Time one reconcile of a resource kind took",
            ["resource"],
            buckets=RECONCILE_BUCKETS,
            registry=r,
        )
        self.plan_duration = Histogram(
            "slm_plan_duration_seconds",
            "Time planning one GPU pool took",
            ["pool"],
            buckets=PLAN_BUCKETS,
            registry=r,
        )
        self.plan_timestamp = Gauge(
            "slm_plan_timestamp_seconds", "Unix time of the pool's last plan", ["pool"], registry=r
        )
        self.plan_method = Gauge(
            "slm_plan_method",
            "1 for the method that produced the pool's last plan (heuristic, exact solver, or guided by the node-aware "
            "program), 0 for the others",
            ["pool", "method"],
            registry=r,
        )
        dep = ["pool", "namespace", "deployment", "tier"]
        self.replicas_desired = Gauge(
            "slm_replicas_desired", "Replicas an SLMDeployment asks for", dep, registry=r
        )
        self.replicas_placed = Gauge(
            "slm_replicas_placed", "Replicas the plan placed on a GPU share", dep, registry=r
        )
        self.replicas_unplaced = Gauge(
            "slm_replicas_unplaced", "Replicas the plan could not place (desired - placed)", dep, registry=r
        )
        self.pool_gpus = Gauge(
            "slm_pool_gpus", "GPUs of the pool per planned mode", ["pool", "mode"], registry=r
        )
        self.memory_total = Gauge(
            "slm_pool_memory_total_bytes", "GPU memory of every GPU of the pool", ["pool"], registry=r
        )
        self.memory_used_gpus = Gauge(
            "slm_pool_memory_used_gpus_bytes",
            "GPU memory of the pool's GPUs that carry replicas",
            ["pool"],
            registry=r,
        )
        self.memory_allocated = Gauge(
            "slm_pool_memory_allocated_bytes",
            "GPU memory the placed replicas need (sizing estimates)",
            ["pool"],
            registry=r,
        )
        self.memory_share = Gauge(
            "slm_pool_memory_share_bytes",
            "GPU memory of the shares given to placed replicas",
            ["pool"],
            registry=r,
        )
        self.memory_free = Gauge(
            "slm_pool_memory_free_bytes",
            "Memory on used GPUs still usable by another replica",
            ["pool"],
            registry=r,
        )
        self.memory_stranded = Gauge(
            "slm_pool_memory_stranded_bytes",
            "Memory on used GPUs that no replica can use (inside shares, or unusable leftovers)",
            ["pool"],
            registry=r,
        )
        self.reservation_gpus = Gauge(
            "slm_reservation_gpus",
            "GPUs the plan keeps for an LLM-fallback reservation",
            ["pool", "reservation"],
            registry=r,
        )
        self.reservation_lent = Gauge(
            "slm_reservation_gpus_lent",
            "Reserved GPUs lent to BestEffort replicas (borrowers)",
            ["pool", "reservation"],
            registry=r,
        )
        self.reservation_claimed = Gauge(
            "slm_reservation_gpus_claimed",
            "Reserved GPUs the reservation's own workload uses now (from the GPUPool; needs observe_plan(policy=))",
            ["pool", "reservation"],
            registry=r,
        )
        self.segment_gpus = Gauge(
            "slm_segment_gpus",
            "GPUs the plan keeps for a fine-tuning segment",
            ["pool", "segment"],
            registry=r,
        )
        self.tenant_quota = Gauge(
            "slm_tenant_quota_gpu_equivalents",
            "A pool tenant's quota in GPU-equivalents (limit=guaranteed or ceiling; no ceiling: no ceiling series)",
            ["pool", "tenant", "limit"],
            registry=r,
        )
        self.tenant_used = Gauge(
            "slm_tenant_used_gpu_equivalents",
            "GPU-equivalents a pool tenant's placed replicas hold (kind=guaranteed: within its quota, "
            "kind=borrowed: beyond it)",
            ["pool", "tenant", "kind"],
            registry=r,
        )
        self.tenant_memory = Gauge(
            "slm_tenant_memory_bytes",
            "Share memory a pool tenant's placed replicas hold (kind=guaranteed or borrowed)",
            ["pool", "tenant", "kind"],
            registry=r,
        )
        self.tenant_unplaced = Gauge(
            "slm_tenant_replicas_unplaced",
            "A pool tenant's replicas without a share in the last plan",
            ["pool", "tenant"],
            registry=r,
        )
        self.planned_evictions = Gauge(
            "slm_plan_evictions",
            "Replicas the last plan evicts (action=move: to another GPU, action=yield: no new place)",
            ["pool", "reason", "action"],
            registry=r,
        )
        self.evictions = Counter(
            "slm_evictions",
            "Replica pods deleted to move them to another GPU",
            ["reason", "tier"],
            registry=r,
        )
        self.yields = Counter(
            "slm_yields",
            "Replica pods deleted without a new place (they yield their share)",
            ["reason", "tier"],
            registry=r,
        )
        self.api_requests = Counter(
            "slm_api_requests",
            "Kubernetes API calls the operator made, by verb",
            ["verb"],
            registry=r,
        )
        self.api_errors = Counter(
            "slm_api_errors",
            "Failed Kubernetes API calls by verb and HTTP status code",
            ["verb", "code"],
            registry=r,
        )
        self.autoscaler_desired = Gauge(
            "slm_autoscaler_desired_replicas",
            "Replicas the autoscaler wants for an SLMDeployment with spec.autoscaling (status.autoscaling)",
            ["namespace", "deployment"],
            registry=r,
        )
        self.autoscaler_decisions = Counter(
            "slm_autoscaler_decisions",
            "Changes of an SLMDeployment's desired replicas by the autoscaler (direction=up|down)",
            ["namespace", "deployment", "direction"],
            registry=r,
        )
        self.autoscaler_scrape_errors = Counter(
            "slm_autoscaler_scrape_errors",
            "Gateway replicas whose /metrics the autoscaler could not read in a pass",
            [],
            registry=r,
        )
        self.fragmentation_ratio = Gauge(
            "slm_pool_fragmentation_ratio",
            "GPUs the pool's current placement uses divided by the GPUs a fresh plan of the same demand uses "
            "(1 = no fragmentation; consolidation acts above 1 + thresholdPercent/100)",
            ["pool"],
            registry=r,
        )
        self.gpus_fresh = Gauge(
            "slm_pool_gpus_fresh",
            "GPUs a fresh plan of the pool's demand would use (no running replica kept where it is)",
            ["pool"],
            registry=r,
        )
        self.consolidation_in_flight = Gauge(
            "slm_consolidation_moves_in_flight",
            "Consolidation moves whose new replica is not Ready yet",
            ["pool"],
            registry=r,
        )
        self.consolidation_moves = Counter(
            "slm_consolidation_moves",
            "Consolidation moves by outcome (Completed, Abandoned, InFlight = started make-before-break, "
            "BreakBeforeMake = started break-before-make)",
            ["pool", "outcome"],
            registry=r,
        )
        self.consolidation_gpus_freed = Counter(
            "slm_consolidation_gpus_freed",
            "GPUs a completed consolidation move left without any replica",
            ["pool"],
            registry=r,
        )
        self.mig_rollbacks = Counter(
            "slm_mig_rollbacks",
            "Nodes rolled back to their last good MIG layout after mig-manager failed a new one on every try",
            ["pool", "node"],
            registry=r,
        )
        self.mig_manager_refreshes = Counter(
            "slm_mig_manager_refreshes",
            "mig-manager pods annotated so that their kubelet remounts a new mig-parted entry before its sync",
            ["pool"],
            registry=r,
        )
        self.mig_nodes_held = Gauge(
            "slm_mig_nodes_held",
            "Nodes held on their last good MIG layout (a rollback's back-off) after a failed one",
            ["pool"],
            registry=r,
        )
        self.node_config_pending = Gauge(
            "slm_node_config_pending",
            "1 while a node does not report the configuration the plan wants (MIG layout, device-plugin config, "
            "sharing); no replica is created on it meanwhile",
            ["pool", "node"],
            registry=r,
        )
        self.node_mig_config_failed = Gauge(
            "slm_node_mig_config_failed",
            "1 when mig-manager failed the node's planned MIG config on every try (nvidia.com/mig.config.state)",
            ["pool", "node"],
            registry=r,
        )
        self._lock = threading.Lock()
        #: pool -> gauge -> label tuples set by the pool's last observe_plan
        self._series: dict[str, dict[Gauge, set[_Labels]]] = {}

    # ------------------------------------------------------------------------------------- plan gauges

    def observe_plan(
        self,
        pool_name: str,
        plan: Plan,
        seconds: float,
        policy: PoolPolicy | None = None,
        fragmentation: Fragmentation | None = None,
        node_states: NodeConfigStates | None = None,
    ) -> None:
        """Record one plan of pool ``pool_name`` that took ``seconds`` to compute (and how far it is from a
        fresh plan, when the pass compared; whether its nodes report their planned configuration, when given)."""
        self.plan_duration.labels(pool_name).observe(seconds)
        seen: dict[Gauge, dict[_Labels, float]] = {}

        def put(g: Gauge, labels: _Labels, value: float) -> None:
            seen.setdefault(g, {})[labels] = value

        p = plan.pool
        put(self.plan_timestamp, (pool_name,), time.time())
        put(self.plan_method, (pool_name, "heuristic"), float(plan.solver == "heuristic"))
        put(self.plan_method, (pool_name, "exact"), float(plan.solver == "exact"))
        put(self.plan_method, (pool_name, "guided"), float(plan.solver == "guided"))
        for d in plan.deployments:
            ns, name = split_deployment(d.deployment)
            labels: _Labels = (pool_name, ns, name, d.qos)
            put(self.replicas_desired, labels, d.desired)
            put(self.replicas_placed, labels, d.placed)
            put(self.replicas_unplaced, labels, max(d.desired - d.placed, 0))
        for mode in sorted({*GPU_MODES, *p.gpus_by_mode}):
            put(self.pool_gpus, (pool_name, mode), p.gpus_by_mode.get(mode, 0))
        put(self.memory_total, (pool_name,), p.memory_total_bytes)
        put(self.memory_used_gpus, (pool_name,), p.memory_used_gpus_bytes)
        put(self.memory_allocated, (pool_name,), p.memory_allocated_bytes)
        put(self.memory_share, (pool_name,), p.memory_share_bytes)
        put(self.memory_free, (pool_name,), p.memory_free_bytes)
        put(self.memory_stranded, (pool_name,), p.memory_stranded_bytes)
        reserved: dict[str, int] = {}
        lent: dict[str, int] = {}
        segments: dict[str, int] = {}
        for name in (r.name for r in policy.reservations) if policy else ():
            reserved.setdefault(name, 0)
            lent.setdefault(name, 0)
        for name in (s.name for s in policy.segments) if policy else ():
            segments.setdefault(name, 0)
        for g in plan.gpus:
            if g.reservation:
                reserved[g.reservation] = reserved.get(g.reservation, 0) + 1
                lent[g.reservation] = lent.get(g.reservation, 0) + (1 if g.replicas else 0)
            if g.segment:
                segments[g.segment] = segments.get(g.segment, 0) + 1
        for name, n in reserved.items():
            put(self.reservation_gpus, (pool_name, name), n)
            put(self.reservation_lent, (pool_name, name), lent.get(name, 0))
        if policy is not None:
            for r in policy.reservations:
                put(self.reservation_claimed, (pool_name, r.name), r.claimed)
        for name, n in segments.items():
            put(self.segment_gpus, (pool_name, name), n)
        self._tenant_gauges(pool_name, plan, put)
        evictions: dict[_Labels, int] = {}
        for e in p.evictions:
            key = (pool_name, e.reason, "move" if e.to_node else "yield")
            evictions[key] = evictions.get(key, 0) + 1
        for labels, n in evictions.items():
            put(self.planned_evictions, labels, n)
        self._put_fragmentation(put, pool_name, fragmentation)
        self._put_node_states(put, pool_name, node_states)
        self._replace_series(pool_name, seen)

    def _put_fragmentation(
        self, put: Callable[[Gauge, _Labels, float], None], pool_name: str, f: Fragmentation | None
    ) -> None:
        if f is not None:
            put(self.fragmentation_ratio, (pool_name,), f.ratio)
            put(self.gpus_fresh, (pool_name,), f.gpus_fresh)
            put(self.consolidation_in_flight, (pool_name,), f.moves_in_flight)

    def _put_node_states(
        self, put: Callable[[Gauge, _Labels, float], None], pool_name: str, states: NodeConfigStates | None
    ) -> None:
        if states is None:
            return
        for node in states.nodes:
            put(self.node_config_pending, (pool_name, node), 1 if node in states.pending else 0)
            put(self.node_mig_config_failed, (pool_name, node), 1 if node in states.mig_failed else 0)

    def count_moves(self, pool_name: str, outcomes: Mapping[str, int], gpus_freed: int) -> None:
        """Consolidation moves a pass started, completed or abandoned, and the GPUs its completed moves left
        empty."""
        for outcome, n in outcomes.items():
            self.consolidation_moves.labels(pool_name, outcome).inc(n)
        if gpus_freed:
            self.consolidation_gpus_freed.labels(pool_name).inc(gpus_freed)

    def _tenant_gauges(
        self, pool_name: str, plan: Plan, put: Callable[[Gauge, _Labels, float], None]
    ) -> None:
        """Per pool tenant (docs/tenants.md): quota, GPU-equivalents and memory used, unplaced replicas."""
        for t in plan.tenants:
            put(self.tenant_quota, (pool_name, t.name, "guaranteed"), t.guaranteed)
            if t.ceiling is not None:
                put(self.tenant_quota, (pool_name, t.name, "ceiling"), t.ceiling)
            put(self.tenant_used, (pool_name, t.name, "guaranteed"), t.used_guaranteed)
            put(self.tenant_used, (pool_name, t.name, "borrowed"), t.used_borrowed)
            put(self.tenant_memory, (pool_name, t.name, "guaranteed"), t.memory_guaranteed_bytes)
            put(self.tenant_memory, (pool_name, t.name, "borrowed"), t.memory_borrowed_bytes)
            put(self.tenant_unplaced, (pool_name, t.name), t.replicas_unplaced)

    def observe_mig_rollbacks(self, pool_name: str, held: Mapping[str, bool]) -> None:
        """The pool's nodes held on their last good MIG layout after a pass (node -> the rollback started in it)."""
        self.mig_nodes_held.labels(pool_name).set(len(held))
        for node, started in held.items():
            if started:
                self.mig_rollbacks.labels(pool_name, node).inc()

    def count_mig_manager_refreshes(self, pool_name: str, n: int) -> None:
        """mig-manager pods a pass refreshed (the patch went through)."""
        if n:
            self.mig_manager_refreshes.labels(pool_name).inc(n)

    def forget_pool(self, pool_name: str) -> None:
        """Remove every gauge series of a deleted pool (its histogram keeps its history)."""
        self._replace_series(pool_name, {})
        with suppress(KeyError):
            self.mig_nodes_held.remove(pool_name)

    def _replace_series(self, pool_name: str, seen: dict[Gauge, dict[_Labels, float]]) -> None:
        with self._lock:
            before = self._series.get(pool_name, {})
            for g, values in seen.items():
                for labels, value in values.items():
                    g.labels(*labels).set(value)
            for g, old in before.items():
                for labels in old - set(seen.get(g, {})):
                    with suppress(KeyError):
                        g.remove(*labels)
            if seen:
                self._series[pool_name] = {g: set(v) for g, v in seen.items()}
            else:
                self._series.pop(pool_name, None)

    # ----------------------------------------------------------------------------------- event counters

    def observe_reconcile(self, resource: str, seconds: float) -> None:
        self.reconcile_duration.labels(resource).observe(seconds)

    @contextmanager
    def time_reconcile(self, resource: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.observe_reconcile(resource, time.perf_counter() - start)

    def count_eviction(self, reason: str, tier: str) -> None:
        self.evictions.labels(reason, tier).inc()

    def count_yield(self, reason: str, tier: str) -> None:
        self.yields.labels(reason, tier).inc()

    def count_plan_eviction(self, eviction: Eviction) -> None:
        """Count an executed plan eviction: a move when it has a target, else a yield."""
        if eviction.to_node:
            self.count_eviction(eviction.reason, eviction.qos)
        else:
            self.count_yield(eviction.reason, eviction.qos)

    def count_api_error(self, verb: str, code: int | str) -> None:
        self.api_errors.labels(verb, str(code)).inc()

    def count_api_request(self, verb: str) -> None:
        self.api_requests.labels(verb).inc()

    # ----------------------------------------------------------------------------------- autoscaler

    def observe_autoscale(self, deployment: str, desired: int, direction: str) -> None:
        """One autoscaler decision for ``deployment`` ("namespace/name"); ``direction`` up, down or none."""
        ns, name = split_deployment(deployment)
        self.autoscaler_desired.labels(ns, name).set(desired)
        if direction != "none":
            self.autoscaler_decisions.labels(ns, name, direction).inc()

    def forget_autoscaled(self, deployment: str) -> None:
        """The deployment is gone or no longer autoscaled: drop its gauge (counters keep their history)."""
        with suppress(KeyError):
            self.autoscaler_desired.remove(*split_deployment(deployment))


METRICS = OperatorMetrics(REGISTRY)


def observe_plan(
    pool_name: str,
    plan: Plan,
    seconds: float,
    policy: PoolPolicy | None = None,
    fragmentation: Fragmentation | None = None,
    node_states: NodeConfigStates | None = None,
) -> None:
    METRICS.observe_plan(pool_name, plan, seconds, policy, fragmentation, node_states)


def count_moves(pool_name: str, outcomes: Mapping[str, int], gpus_freed: int) -> None:
    METRICS.count_moves(pool_name, outcomes, gpus_freed)


def observe_mig_rollbacks(pool_name: str, held: Mapping[str, bool]) -> None:
    METRICS.observe_mig_rollbacks(pool_name, held)


def count_mig_manager_refreshes(pool_name: str, n: int) -> None:
    METRICS.count_mig_manager_refreshes(pool_name, n)


def forget_pool(pool_name: str) -> None:
    METRICS.forget_pool(pool_name)


def observe_reconcile(resource: str, seconds: float) -> None:
    METRICS.observe_reconcile(resource, seconds)


@contextmanager
def time_reconcile(resource: str) -> Iterator[None]:
    with METRICS.time_reconcile(resource):
        yield


def count_eviction(reason: str, tier: str) -> None:
    METRICS.count_eviction(reason, tier)


def count_yield(reason: str, tier: str) -> None:
    METRICS.count_yield(reason, tier)


def count_plan_eviction(eviction: Eviction) -> None:
    METRICS.count_plan_eviction(eviction)


def count_api_error(verb: str, code: int | str) -> None:
    METRICS.count_api_error(verb, code)


def count_api_request(verb: str) -> None:
    METRICS.count_api_request(verb)


def parse_listen(listen: str) -> tuple[str, int]:
    """ "host:port" (also "[::1]:9400", ":9400" = all interfaces) -> (host, port). Raises ValueError."""
    host, sep, port = listen.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"listen address {listen!r} must be host:port, e.g. 127.0.0.1:9400")
    host = host.removeprefix("[").removesuffix("]") or "0.0.0.0"
    return host, int(port)


def serve(listen: str, registry: CollectorRegistry | None = None) -> tuple[WSGIServer, Any]:
    """Serve ``registry`` (default: the operator's ``REGISTRY``) at http://listen/metrics in a daemon thread.

    Returns prometheus-client's (server, thread); ``server.server_port`` is the port (useful with port 0),
    ``server.shutdown()`` stops it.
    """
    host, port = parse_listen(listen)
    server, thread = start_http_server(
        port, addr=host, registry=registry if registry is not None else REGISTRY
    )
    return server, thread
