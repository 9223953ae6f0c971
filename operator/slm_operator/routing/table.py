"""The gateway's routing table: SLMRoutes with their backends resolved to endpoints, keys and limits.

:func:`build_table` is pure: it takes what the shell read (SLMRoutes, SLMDeployments, the endpoints of their
replicas, the Secrets the routes name, the task classifiers it loaded from the ConfigMaps the routes name, the
FineTuneJobs not finished per SLMDeployment) and returns a frozen :class:`RouteTable`; the shell swaps in a new
table when anything changes. A route only ever sees objects of its own namespace: its SLMDeployment backends
(and the FineTuneJobs promoting onto them), its external backends' API-key Secrets, its callers' API-key Secrets
and its task classifier's ConfigMap are looked up as ``(route namespace, name)``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from slm_operator.api.base import duration_seconds
from slm_operator.api.v1alpha1 import (
    BackendKind,
    RouteBackend,
    RulePhase,
    SLMDeployment,
    SLMRoute,
    SLMRouteSpec,
)
from slm_operator.contract import API_KEY_HASH_PREFIX
from slm_operator.routing.features import TaskTagger
from slm_operator.routing.promotion import NO_FACTS, RuleFacts, model_key, promoted_rules, rule_phases

NamespacedName = tuple[str, str]
#: (namespace, ConfigMap name, key) of a route's task classifier (``spec.taskClassifier.configMapRef``)
ClassifierRef = tuple[str, str, str]
_HASH = re.compile(r"^[0-9a-f]{64}$")

# Reasons (the SLMRoute's Accepted condition reads them).
BACKEND_NOT_FOUND = "BackendNotFound"
SECRET_NOT_FOUND = "SecretNotFound"
MODEL_CONFLICT = "ModelConflict"
TASK_CLASSIFIER_NOT_FOUND = "TaskClassifierNotFound"  # the ConfigMap or its key is missing, or unreadable
TASK_CLASSIFIER_INVALID = "TaskClassifierInvalid"  # the key does not hold a classifier this gateway reads


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One place a backend answers: a replica (``http://10.0.0.7:8000/v1``) or an external base URL."""

    url: str
    ready: bool = True


@dataclass(frozen=True, slots=True)
class Backend:
    name: str
    kind: BackendKind
    model: str  # the model name sent to the endpoints
    endpoints: tuple[Endpoint, ...]
    api_key: str | None = None  # an external backend's key, sent as Authorization: Bearer
    max_concurrency: int | None = None  # calls in flight per endpoint; None: unlimited
    max_queue: int = 0
    #: an SLMDeployment that autoscales down to zero (``autoscaling.minReplicas: 0``): a call finding no ready
    #: endpoint is held until one is Ready (``routing.activation``)
    scales_from_zero: bool = False
    problem_reason: str | None = None  # why it cannot be used (BackendNotFound, SecretNotFound)
    problem: str = ""
    ready_urls: tuple[str, ...] = field(init=False, default=())  # the ready endpoints' URLs (computed)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ready_urls", tuple(e.url for e in self.endpoints if e.ready))

    @property
    def ready_endpoints(self) -> tuple[Endpoint, ...]:
        return tuple(e for e in self.endpoints if e.ready)


@dataclass(frozen=True, slots=True)
class LoadedClassifier:
    """A route's task classifier as the shell found it: ``tagger`` loaded, or why not (``reason``, ``message``)."""

    tagger: TaskTagger | None
    reason: str | None = None
    message: str = ""


@dataclass(frozen=True, slots=True)
class CompiledRoute:
    namespace: str
    name: str
    generation: int | None
    spec: SLMRouteSpec
    backends: Mapping[str, Backend]
    first_byte_s: float
    total_s: float
    sample_rate: float  # 0 when the route captures nothing
    key_secrets: frozenset[str]  # the API-key Secrets the route names
    conflict_with: str | None = None  # an older route of the namespace serving the same model
    key_secret_problems: tuple[str, ...] = ()  # named API-key Secrets that are missing or unreadable
    classifier: TaskTagger | None = None  # the loaded task classifier (spec.taskClassifier)
    classifier_reason: str | None = None  # why the named classifier is not loaded
    classifier_problem: str = ""
    #: the phase of each rule with ``promote``, as the route's status says (every replica routes by it)
    phases: Mapping[str, RulePhase] = field(default_factory=dict)
    #: per rule with ``promote``: what its ``promote.backend`` serves and the FineTuneJobs it waits for
    facts: Mapping[str, RuleFacts] = field(default_factory=dict)
    #: ``timeouts.activation`` in seconds: the longest hold of a call for a backend at zero replicas
    activation_s: float = 120.0

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def served(self) -> bool:
        return self.conflict_with is None


@dataclass(frozen=True, slots=True)
class ApiKeyGrant:
    """One entry of an API-key Secret: the caller's name in the Secret of a namespace."""

    namespace: str
    secret: str
    entry: str

    @property
    def identity(self) -> str:
        """The caller as the usage store's salted hash and ``usage erase --caller`` know it."""
        return f"apikey:{self.namespace}/{self.secret}/{self.entry}"


@dataclass(frozen=True)
class RouteTable:
    routes: Mapping[str, CompiledRoute] = field(default_factory=dict)
    #: model string -> the served routes answering it, by namespace and name
    by_model: Mapping[str, tuple[CompiledRoute, ...]] = field(default_factory=dict)
    #: hex SHA-256 of an API key -> where it is granted
    api_keys: Mapping[str, tuple[ApiKeyGrant, ...]] = field(default_factory=dict)

    def grants(self, api_key: str) -> tuple[ApiKeyGrant, ...]:
        return self.api_keys.get(hash_api_key(api_key), ())


def hash_api_key(api_key: str) -> str:
    """Hex SHA-256 of an API key: what a Secret holds after ``sha256:``."""
    return hashlib.sha256(api_key.encode()).hexdigest()


def secret_data(secret: Mapping[str, Any]) -> dict[str, str]:
    """A v1 Secret's values as text: ``data`` (base64) merged with ``stringData``; undecodable values dropped."""
    out: dict[str, str] = {}
    for key, value in (secret.get("data") or {}).items():
        try:
            out[str(key)] = base64.b64decode(str(value), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError, ValueError):
            continue
    for key, value in (secret.get("stringData") or {}).items():
        out[str(key)] = str(value)
    return out


@dataclass(frozen=True)
class RouteWorld:
    """What the shell read. ``deployments`` and ``endpoints`` are keyed by (namespace, SLMDeployment name)."""

    routes: Sequence[SLMRoute]
    deployments: Mapping[NamespacedName, SLMDeployment] = field(default_factory=dict)
    endpoints: Mapping[NamespacedName, Sequence[Endpoint]] = field(default_factory=dict)
    secrets: Mapping[NamespacedName, Mapping[str, str]] = field(default_factory=dict)  # decoded data
    #: named Secrets the shell may not read, with why (in the cluster: no RoleBinding in that namespace)
    unreadable: Mapping[NamespacedName, str] = field(default_factory=dict)
    #: the task classifiers the routes name, as the shell loaded them; a route's classifier not here: not found
    classifiers: Mapping[ClassifierRef, LoadedClassifier] = field(default_factory=dict)
    #: (namespace, SLMDeployment name) -> the FineTuneJobs not finished that promote onto it
    #: (``routing.promotion.pending_finetunes``)
    finetunes: Mapping[NamespacedName, tuple[str, ...]] = field(default_factory=dict)


def classifier_ref(route: SLMRoute) -> ClassifierRef | None:
    """Where the route's task classifier is: (route namespace, ConfigMap name, key); None without one."""
    ref = route.spec.task_classifier
    if ref is None:
        return None
    return (route.metadata.namespace or "default", ref.config_map_ref.name, ref.config_map_ref.key)


def _classifier(route: SLMRoute, world: RouteWorld) -> LoadedClassifier:
    ref = classifier_ref(route)
    if ref is None:
        return LoadedClassifier(None)
    found = world.classifiers.get(ref)
    if found is not None:
        return found
    ns, name, _key = ref
    return LoadedClassifier(
        None,
        TASK_CLASSIFIER_NOT_FOUND,
        f"task classifier: ConfigMap {ns}/{name} not found (publish it with `slm-operator advise`, or fix "
        "`spec.taskClassifier.configMapRef`); calls without `x-slm-task` have no task until then",
    )


def _missing_secret(world: RouteWorld, ns: str, name: str) -> str:
    return world.unreadable.get((ns, name)) or f"Secret {ns}/{name} not found"


def _deployment_backend(b: RouteBackend, ns: str, world: RouteWorld) -> Backend:
    assert b.slm_deployment_ref is not None
    ref = b.slm_deployment_ref.name
    dep = world.deployments.get((ns, ref))
    endpoints = tuple(world.endpoints.get((ns, ref), ()))
    concurrency = b.max_concurrency
    if concurrency is None and dep is not None:
        concurrency = dep.spec.model.max_concurrent_sequences
    out = Backend(
        name=b.name,
        kind=BackendKind.SLM_DEPLOYMENT,
        model=ref,  # the operator serves a deployment under its own name (--served-model-name)
        endpoints=endpoints,
        max_concurrency=concurrency,
        max_queue=b.max_queue,
        scales_from_zero=(
            dep is not None and dep.spec.autoscaling is not None and dep.spec.autoscaling.min_replicas == 0
        ),
    )
    if dep is None and not endpoints:
        return _with_problem(out, BACKEND_NOT_FOUND, f"backend {b.name}: SLMDeployment {ns}/{ref} not found")
    return out


def _external_backend(b: RouteBackend, ns: str, world: RouteWorld) -> Backend:
    ext = b.external
    assert ext is not None
    out = Backend(
        name=b.name,
        kind=BackendKind.EXTERNAL,
        model=ext.model,
        endpoints=(Endpoint(ext.url.rstrip("/")),),
        max_concurrency=b.max_concurrency,
        max_queue=b.max_queue,
    )
    ref = ext.api_key_secret_ref
    if ref is None:
        return out
    data = world.secrets.get((ns, ref.name))
    if data is None:
        return _with_problem(
            out, SECRET_NOT_FOUND, f"backend {b.name}: {_missing_secret(world, ns, ref.name)}"
        )
    if ref.key not in data:
        return _with_problem(
            out, SECRET_NOT_FOUND, f"backend {b.name}: Secret {ns}/{ref.name} has no key '{ref.key}'"
        )
    return replace(out, api_key=data[ref.key].strip())


def _with_problem(b: Backend, reason: str, message: str) -> Backend:
    return replace(b, problem_reason=reason, problem=message)


def rule_facts(spec: SLMRouteSpec, ns: str, world: RouteWorld) -> dict[str, RuleFacts]:
    """Per rule with ``promote``: the model its ``promote.backend`` serves (an SLMDeployment's model and promoted
    adapter, an external backend's model) and the FineTuneJobs not finished that promote onto its
    SLMDeployment."""
    backends = {b.name: b for b in spec.backends}
    out: dict[str, RuleFacts] = {}
    for rule in promoted_rules(spec):
        assert rule.promote is not None
        b = backends.get(rule.promote.backend)
        if b is not None and b.slm_deployment_ref is not None:
            ref = (ns, b.slm_deployment_ref.name)
            dep = world.deployments.get(ref)
            out[rule.name] = RuleFacts(model_key(dep) if dep else "", tuple(world.finetunes.get(ref, ())))
        elif b is not None and b.external is not None:
            out[rule.name] = RuleFacts(b.external.model)
        else:
            out[rule.name] = NO_FACTS
    return out


def compile_route(route: SLMRoute, world: RouteWorld, conflict_with: str | None = None) -> CompiledRoute:
    ns = route.metadata.namespace or "default"
    spec = route.spec
    backends = {
        b.name: (
            _deployment_backend(b, ns, world) if b.slm_deployment_ref else _external_backend(b, ns, world)
        )
        for b in spec.backends
    }
    classifier = _classifier(route, world)
    return CompiledRoute(
        namespace=ns,
        name=route.metadata.name,
        generation=route.metadata.generation,
        spec=spec,
        backends=backends,
        first_byte_s=duration_seconds(spec.timeouts.first_byte),
        total_s=duration_seconds(spec.timeouts.total),
        sample_rate=float(spec.capture.sample_rate) if spec.capture else 0.0,
        key_secrets=frozenset(r.name for r in spec.api_key_secret_refs or []),
        conflict_with=conflict_with,
        key_secret_problems=tuple(
            f"API keys: {_missing_secret(world, ns, r.name)}"
            for r in spec.api_key_secret_refs or []
            if (ns, r.name) not in world.secrets
        ),
        classifier=classifier.tagger,
        classifier_reason=classifier.reason,
        classifier_problem=classifier.message,
        phases=rule_phases(spec, route.status),
        facts=rule_facts(spec, ns, world),
        activation_s=duration_seconds(spec.timeouts.activation),
    )


def _age_key(route: SLMRoute) -> tuple[str, str]:
    return (route.metadata.creation_timestamp or "", route.metadata.name)


def _conflicts(routes: Iterable[SLMRoute]) -> dict[str, str]:
    """route key -> the older route of its namespace that serves the same model (the older one wins)."""
    first: dict[tuple[str, str], SLMRoute] = {}
    out: dict[str, str] = {}
    for r in sorted(routes, key=_age_key):
        ns = r.metadata.namespace or "default"
        winner = first.setdefault((ns, r.spec.model), r)
        if winner is not r:
            out[f"{ns}/{r.metadata.name}"] = f"{ns}/{winner.metadata.name}"
    return out


def _api_keys(routes: Iterable[CompiledRoute], world: RouteWorld) -> dict[str, tuple[ApiKeyGrant, ...]]:
    named = sorted({(r.namespace, s) for r in routes for s in r.key_secrets})
    out: dict[str, list[ApiKeyGrant]] = {}
    for ns, secret in named:
        for entry, value in sorted((world.secrets.get((ns, secret)) or {}).items()):
            digest = value.strip().removeprefix(API_KEY_HASH_PREFIX).lower()
            if value.strip().startswith(API_KEY_HASH_PREFIX) and _HASH.match(digest):
                out.setdefault(digest, []).append(ApiKeyGrant(ns, secret, entry))
    return {k: tuple(v) for k, v in out.items()}


def build_table(world: RouteWorld) -> RouteTable:
    """Every route compiled, the served ones indexed by model, the API keys they accept indexed by hash."""
    conflicts = _conflicts(world.routes)
    routes: dict[str, CompiledRoute] = {}
    for obj in world.routes:
        key = f"{obj.metadata.namespace or 'default'}/{obj.metadata.name}"
        routes[key] = compile_route(obj, world, conflicts.get(key))
    by_model: dict[str, list[CompiledRoute]] = {}
    for r in sorted(routes.values(), key=lambda r: (r.namespace, r.name)):
        if r.served:
            by_model.setdefault(r.spec.model, []).append(r)
    return RouteTable(
        routes=routes,
        by_model={m: tuple(rs) for m, rs in by_model.items()},
        api_keys=_api_keys(routes.values(), world),
    )


def key_allows(grant: ApiKeyGrant, route: CompiledRoute) -> bool:
    """An API key may use the routes of its Secret's namespace that name the Secret."""
    return grant.namespace == route.namespace and grant.secret in route.key_secrets


@dataclass(frozen=True, slots=True)
class Resolution:
    """The route a call goes to, or the HTTP status and message that refuse it."""

    route: CompiledRoute | None
    status: int = 200
    message: str = ""


def resolve(
    table: RouteTable,
    model: str,
    may_use: Callable[[CompiledRoute], bool],
    prefer_namespace: str | None = None,
) -> Resolution:
    """The route for a call of ``model`` by a caller who ``may_use`` some routes.

    404 when no route serves the model, 403 when the caller may use none of those that do. When several do
    (routes in different namespaces), the one in ``prefer_namespace`` (the caller's own) wins, else the first by
    namespace and name.
    """
    candidates = table.by_model.get(model, ())
    if not candidates:
        return Resolution(None, 404, f"no route serves the model '{model}'")
    allowed = [r for r in candidates if may_use(r)]
    if not allowed:
        return Resolution(None, 403, f"the caller may not use the model '{model}'")
    own = [r for r in allowed if r.namespace == prefer_namespace]
    return Resolution((own or allowed)[0])
