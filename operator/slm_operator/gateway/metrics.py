"""Prometheus metrics of the gateway, in their own registry (served at ``/metrics`` on the gateway's port).

The capture pipeline (``slm_operator.capture.Capture``) registers its own ``slm_capture_*`` series in this
registry (its ``registry`` argument), so ``/metrics`` serves them too.

Labels: ``route`` ("namespace/name"), ``backend`` (its name in the route), ``task`` (a task the route's rules
name, ``other`` or empty: never a free-form caller value; on ``slm_gateway_task_classifier_tags`` a task of the
route's classifier), ``status`` (the HTTP status returned). Names, types
and meaning: docs/observability.md. Children are cached per label tuple: the request path does one dict lookup
per series instead of prometheus-client's locked ``labels()``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class _LoadCollector(Collector):
    """Calls in flight and queued per backend, read from the dispatcher at scrape time (nothing on the call path)."""

    def __init__(self, dispatcher: Callable[[], Any | None]) -> None:
        self._dispatcher = dispatcher

    def collect(self) -> Iterator[Metric]:
        d = self._dispatcher()
        in_flight = GaugeMetricFamily(
            "slm_gateway_in_flight", "Calls a backend is answering now", labels=["route", "backend"]
        )
        queued = GaugeMetricFamily(
            "slm_gateway_queued",
            "Calls waiting in the gateway for a free slot of a backend (every endpoint at maxConcurrency), or "
            "held for the first ready replica of an SLMDeployment scaled to zero",
            labels=["route", "backend"],
        )
        if d is not None:
            for key in d.keys:
                route, _, backend = key.rpartition("/")
                in_flight.add_metric([route, backend], d.busy.get(key, 0))
                queued.add_metric([route, backend], d.queued(key))
        yield in_flight
        yield queued


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:  # long: declarative metric table
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        rbt = ["route", "backend", "task"]
        self.requests = Counter(
            "slm_gateway_requests",
            "Calls answered, by route, backend, task and HTTP status",
            [*rbt, "status"],
            registry=r,
        )
        self.tokens = Counter(
            "slm_gateway_tokens",
            "Tokens of answered calls (kind=prompt|completion; the backend's usage, else the gateway's estimate)",
            [*rbt, "kind"],
            registry=r,
        )
        self.ttft = Histogram(
            "slm_gateway_time_to_first_token_seconds",
            "Time from the call's arrival to the first byte of the answer sent to the caller",
            rbt,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.duration = Histogram(
            "slm_gateway_request_duration_seconds",
            "Time from the call's arrival to the end of the answer",
            rbt,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.fallbacks = Counter(
            "slm_gateway_fallbacks",
            "Calls sent to the route's fallback backend, by the backend that failed and why",
            ["route", "backend", "reason"],
            registry=r,
        )
        self.retries = Counter(
            "slm_gateway_retries",
            "Attempts repeated on another endpoint before the first byte (connection refused or reset)",
            ["route", "backend"],
            registry=r,
        )
        self.endpoints_ready = Gauge(
            "slm_gateway_backend_ready_endpoints",
            "Ready endpoints (replicas) of a backend the gateway knows",
            ["route", "backend"],
            registry=r,
        )
        self.streams_cut = Counter(
            "slm_gateway_streams_cut",
            "Streamed answers that ended early after their first chunk (reason=error|timeout|client)",
            ["route", "backend", "reason"],
            registry=r,
        )
        self.rate_limited = Counter(
            "slm_gateway_rate_limited",
            "Calls refused with 429 by a per-caller limit",
            ["route", "limit"],
            registry=r,
        )
        self.rejected = Counter(
            "slm_gateway_rejected",
            "Calls refused before routing (401, 403, 404, 400, 413), by status",
            ["status"],
            registry=r,
        )
        self.shadows = Counter(
            "slm_gateway_shadow_requests",
            "Shadow copies of calls (outcome=ok|error|skipped: skipped when the backend had no free slot)",
            ["route", "backend", "outcome"],
            registry=r,
        )
        self.shadow_agreement = Counter(
            "slm_gateway_shadow_agreement",
            "Shadow answers compared with the answer the caller got, by how they agree (result=tool_calls|exact|"
            "json: agreement; differs; invalid: the shadow gave no answer) - S6 of docs/loop.md",
            ["route", "backend", "task", "result"],
            registry=r,
        )
        self.captured = Counter(
            "slm_gateway_capture_submitted",
            "Calls sampled for capture and handed to the capture queue (accepted=false: dropped at once)",
            ["route", "accepted"],
            registry=r,
        )
        self.classifier_tags = Counter(
            "slm_gateway_task_classifier_tags",
            "Calls without an x-slm-task header on routes with a task classifier, by the classifier's task "
            "(empty: no task near enough, or the classifier is not loaded)",
            ["route", "task"],
            registry=r,
        )
        self.classifier_loaded = Gauge(
            "slm_gateway_task_classifier_loaded",
            "1 when the route's task classifier is loaded, 0 when its ConfigMap is missing, unreadable or "
            "invalid (the route's Accepted condition says why)",
            ["route"],
            registry=r,
        )
        self.rule_phase = Gauge(
            "slm_gateway_rule_phase",
            "1 for the phase a rule with `promote` is in (phase=Shadow|Serving), as the route's status says; every "
            "replica routes by it (S6 of docs/loop.md)",
            ["route", "rule", "phase"],
            registry=r,
        )
        self.activation_waits = Counter(
            "slm_gateway_activation_waits",
            "Calls held for the first ready replica of an SLMDeployment scaled to zero, by how the wait ended "
            "(outcome=ready|timeout; timeout: the fallback or a 503 after timeouts.activation)",
            ["route", "backend", "outcome"],
            registry=r,
        )
        self._load: Any = None
        r.register(_LoadCollector(lambda: self._load))
        self._children: dict[tuple[Any, ...], Any] = {}

    def load_from(self, dispatcher: Any) -> None:
        """Expose the dispatcher's calls in flight (``busy``) and waiting (``queued(key)``) per backend key."""
        self._load = dispatcher

    def child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def observe_call(
        self,
        route: str,
        backend: str,
        task: str,
        status: int,
        seconds: float,
        ttft: float | None,
        prompt_tokens: int,
        completion_tokens: int,
    ) -> None:
        self.child(self.requests, route, backend, task, str(status)).inc()
        self.child(self.duration, route, backend, task).observe(seconds)
        if ttft is not None:
            self.child(self.ttft, route, backend, task).observe(ttft)
        if prompt_tokens:
            self.child(self.tokens, route, backend, task, "prompt").inc(prompt_tokens)
        if completion_tokens:
            self.child(self.tokens, route, backend, task, "completion").inc(completion_tokens)
