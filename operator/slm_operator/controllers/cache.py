"""Watch caches: what the operator reads on every pass, kept up to date by one list and then a watch per kind,
as client-go's reflectors and informers do, instead of a list of the world per pass.

A :class:`Reflector` lists its kind once (the list's resourceVersion), then watches from there; a watch the API
server closes (its timeout, a restart) is resumed from the last resourceVersion seen (BOOKMARK events keep it
fresh), and a watch refused with 410 Gone (the version was compacted) is replaced by a new list. Each event
updates the store, then calls the reflector's ``on_event``: the handlers that wake the pools' planning passes
(``handlers.watch_handlers``), so that a pass woken by a change reads a cache that already holds it.

What the operator writes itself is put into the store from the API server's answer (``Kube.on_write``; client-go's
MutationCache does the same), when it is newer than what the store holds: the pass right after a write reads
what it wrote, not the state before it. Deletes are left to the watch (a deleted pod lingers while it terminates).

Objects are stored without ``metadata.managedFields`` and must be treated as read-only by whoever reads them.

A reflector that was never started reads through to the API server on every call: the CLI's one-shot commands
and the unit tests' in-memory API use the shell that way.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from kubernetes.client.exceptions import ApiException

from slm_operator.contract import (
    API_VERSION,
    APP_MANAGED_BY_LABEL,
    DEPLOYMENT_LABEL,
    MANAGED_BY,
    POOL_LABEL,
)
from slm_operator.controllers.kube import Kube
from slm_operator.render import OperatorConfig
from slm_operator.views import PodView

log = logging.getLogger("slm_operator.cache")

#: the server-side timeout asked for each watch request (kube-apiserver picks a random one up to its
#: --min-request-timeout x 2 when none is asked); the watch is then resumed from the last resourceVersion
WATCH_SECONDS = 300
#: longest wait before listing again after a failed list or watch (doubling from 1 s, with jitter)
MAX_BACKOFF_SECONDS = 30.0
#: how long a planning pass waits for the caches' first lists before it fails (and is retried)
SYNC_TIMEOUT_SECONDS = 60.0

Key = tuple[str, str]  # (namespace or "", name)
Handler = Callable[[str, Mapping[str, Any]], None]


class CacheNotSynced(RuntimeError):
    """A pass asked for a kind whose first list has not completed yet."""


def key_of(obj: Mapping[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


def _version(obj: Mapping[str, Any]) -> int:
    """resourceVersion as a number (etcd's revision, which kube-apiserver exposes as is); -1 when it is not one.
    Only used to keep an older answer from overwriting a newer event in the store."""
    try:
        return int((obj.get("metadata") or {}).get("resourceVersion") or -1)
    except ValueError:
        return -1


def _slim(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The object without managedFields (a large part of every object, read by no one here)."""
    out = dict(obj)
    meta = dict(out.get("metadata") or {})
    meta.pop("managedFields", None)
    out["metadata"] = meta
    return out


def label_selector_matches(selector: str | None, labels: Mapping[str, str]) -> bool | None:
    """Whether ``labels`` match an equality-based label selector (``k``, ``!k``, ``k=v``, ``k==v``, ``k!=v``,
    comma-separated); None for set-based terms (``in``, ``notin``), which only the API server evaluates here."""
    for raw in filter(None, (t.strip() for t in (selector or "").split(","))):
        if " in " in raw or " notin " in raw or "(" in raw:
            return None
        if "!=" in raw:
            k, v = (s.strip() for s in raw.split("!=", 1))
            ok = labels.get(k) != v
        elif "=" in raw:
            k, v = (s.strip() for s in raw.replace("==", "=").split("=", 1))
            ok = labels.get(k) == v
        elif raw.startswith("!"):
            ok = raw[1:].strip() not in labels
        else:
            ok = raw in labels
        if not ok:
            return False
    return True


class Reflector:
    """One kind (in one namespace, or all; optionally narrowed by selectors and a ``keep`` predicate), listed once
    and then watched, in a thread of its own."""

    def __init__(
        self,
        kube: Kube,
        api_version: str,
        kind: str,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        name: str | None = None,
        keep: Callable[[Mapping[str, Any]], bool] | None = None,
    ) -> None:
        self.kube = kube
        self.api_version = api_version
        self.kind = kind
        self.namespace = namespace
        self.label_selector = label_selector
        self.field_selector = f"metadata.name={name}" if name else None
        self.name = name
        self.keep = keep
        #: called after each change of the store with the event's type (ADDED, MODIFIED, DELETED) and the object
        self.on_event: Handler | None = None
        self._store: dict[Key, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._synced = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.version = ""  # the last resourceVersion listed or watched
        self.relists = 0  # lists after the first (a 410 Gone, a failed watch): for the tests and the log
        self._progress = False  # the current watch has delivered an event

    def __repr__(self) -> str:
        where = f" in {self.namespace}" if self.namespace else ""
        sel = (
            f" ({self.label_selector or self.field_selector})"
            if self.label_selector or self.field_selector
            else ""
        )
        return f"{self.kind}{where}{sel}"

    # ------------------------------------------------------------------------------ reads

    @property
    def started(self) -> bool:
        return self._thread is not None

    def wait_synced(self, timeout: float = SYNC_TIMEOUT_SECONDS) -> None:
        if self.started and not self._synced.wait(timeout):
            raise CacheNotSynced(
                f"the watch cache of {self!r} has not completed its first list in {timeout:.0f}s"
            )

    def items(self) -> list[dict[str, Any]]:
        """Every object (read-only). A reflector never started lists from the API server instead."""
        if not self.started:
            found = self.kube.list(
                self.api_version,
                self.kind,
                self.namespace,
                label_selector=self.label_selector,
                field_selector=self.field_selector,
            )
            return [o for o in found if self._wanted(o)]
        self.wait_synced()
        with self._lock:
            return list(self._store.values())

    def get(self, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        if not self.started:
            obj = self.kube.get(self.api_version, self.kind, name, namespace)
            return obj if obj is not None and self._wanted(obj) else None
        self.wait_synced()
        with self._lock:
            return self._store.get((namespace or "", name))

    def matches(self, obj: Mapping[str, Any]) -> bool:
        """Whether ``obj`` is one this reflector holds (kind, namespace, name, selector, ``keep``); a set-based
        selector is not evaluated here, so objects under one are left to the watch."""
        if (obj.get("apiVersion"), obj.get("kind")) != (self.api_version, self.kind):
            return False
        ns, name = key_of(obj)
        if (self.namespace and ns != self.namespace) or (self.name and name != self.name):
            return False
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return bool(label_selector_matches(self.label_selector, labels)) and self._wanted(obj)

    def _wanted(self, obj: Mapping[str, Any]) -> bool:
        return self.keep is None or self.keep(obj)

    # ------------------------------------------------------------------------------ writes

    def observe(self, obj: Mapping[str, Any]) -> None:
        """An object as the API server returned it after one of our writes: stored when newer than the store's."""
        if not self.started or not self.matches(obj):
            return
        key = key_of(obj)
        with self._lock:
            have = self._store.get(key)
            if have is not None and _version(have) >= _version(obj):
                return
            self._store[key] = _slim(obj)

    # ------------------------------------------------------------------------------ the loop

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"watch-{self.kind}", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        failures = 0  # failures in a row: a list or watch refused (403) keeps backing off, up to 30 s
        while not self._stop.is_set():
            self._progress = False
            try:
                self._relist()
                while not self._stop.is_set():
                    self._watch()
            except ApiException as exc:
                if exc.status == 410:  # the version we watched from was compacted: list again, at once
                    log.info("watch of %r: %s; listing again", self, exc.reason)
                    continue
                failures = 1 if self._progress else failures + 1
                log.warning("watch of %r failed (%s %s); listing again", self, exc.status, exc.reason)
            except Exception as exc:  # the API server restarting, a connection reset: list again after a wait
                failures = 1 if self._progress else failures + 1
                log.warning("watch of %r failed (%s); listing again", self, exc)
            self._stop.wait(self._backoff(failures))

    def _backoff(self, failures: int) -> float:
        """The wait before listing again after ``failures`` failures in a row (0 after a 410: at once)."""
        return min(MAX_BACKOFF_SECONDS, 2.0 ** (failures - 1)) * random.uniform(1.0, 1.5) if failures else 0.0

    def _relist(self) -> None:
        items, version = self.kube.list_versioned(
            self.api_version,
            self.kind,
            self.namespace,
            label_selector=self.label_selector,
            field_selector=self.field_selector,
        )
        fresh = {key_of(o): _slim(o) for o in items if self._wanted(o)}
        with self._lock:
            old, self._store = self._store, fresh
            self.version = version
        if self._synced.is_set():
            self.relists += 1
        self._synced.set()
        log.debug("listed %r: %d objects at version %s", self, len(fresh), version)
        # what changed while we were not watching, told as the watch would have
        for key, obj in fresh.items():
            if key not in old:
                self._tell("ADDED", obj)
            elif _version(old[key]) != _version(obj):
                self._tell("MODIFIED", obj)
        for key, obj in old.items():
            if key not in fresh:
                self._tell("DELETED", obj)

    def _watch(self) -> None:
        """One watch request, until the server ends it; raises ApiException(410) when the version is gone."""
        for ev in self.kube.watch(
            self.api_version,
            self.kind,
            namespace=self.namespace,
            label_selector=self.label_selector,
            field_selector=self.field_selector,
            resource_version=self.version,
            timeout=WATCH_SECONDS,
            allow_watch_bookmarks=True,
        ):
            if self._stop.is_set():
                return
            self._progress = True  # the watch works: a later failure starts the back-off afresh
            type_, obj = ev["type"], ev["raw_object"]
            version = str((obj.get("metadata") or {}).get("resourceVersion") or self.version)
            if type_ == "BOOKMARK":
                self.version = version
                continue
            self._apply(type_, obj)
            self.version = version

    def _apply(self, type_: str, obj: Mapping[str, Any]) -> None:
        key = key_of(obj)
        gone = type_ == "DELETED" or not self._wanted(obj)
        with self._lock:
            if gone:
                if self._store.pop(key, None) is None and type_ != "DELETED":
                    return  # a change of an object we do not keep
            else:
                self._store[key] = _slim(obj)
        self._tell("DELETED" if gone else type_, obj)

    def _tell(self, type_: str, obj: Mapping[str, Any]) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(type_, obj)
        except Exception:  # a handler's failure must not stop the watch
            log.exception("handler of %r failed on %s %s", self, type_, key_of(obj))


def holds_gpus(obj: Mapping[str, Any]) -> bool:
    """A pod that is no slm-operator replica but asks for whole GPUs (the LLM fallback, a fine-tuning Job): it
    claims a pool's reserved GPUs."""
    pod = PodView(obj)
    return POOL_LABEL not in pod.labels and pod.whole_gpus > 0


class ClusterCache:
    """The reflectors of the operator's passes. Not started: every read goes to the API server."""

    def __init__(
        self,
        kube: Kube,
        cfg: OperatorConfig,
        *,
        gateway_namespace: str | None = None,
        gateway_selector: str | None = None,
    ) -> None:
        ns = cfg.nvidia_namespace
        self.nodes = Reflector(kube, "v1", "Node")
        self.pools = Reflector(kube, API_VERSION, "GPUPool")
        self.deployments = Reflector(kube, API_VERSION, "SLMDeployment")
        self.replicas = Reflector(kube, "v1", "Pod", label_selector=POOL_LABEL)
        self.gpu_pods = Reflector(kube, "v1", "Pod", label_selector=f"!{POOL_LABEL}", keep=holds_gpus)
        self.services = Reflector(
            kube, "v1", "Service", label_selector=f"{APP_MANAGED_BY_LABEL}={MANAGED_BY}"
        )
        self.quotas = Reflector(kube, "v1", "ResourceQuota")
        self.namespaces = Reflector(kube, "v1", "Namespace")
        self.mig_configmap = Reflector(kube, "v1", "ConfigMap", namespace=ns, name=cfg.mig_configmap)
        self.device_plugin_configmap = Reflector(
            kube, "v1", "ConfigMap", namespace=ns, name=cfg.device_plugin_configmap
        )
        # the GPU Operator's mig-manager pods, read only when the operator refreshes them
        self.mig_managers = Reflector(
            kube, "v1", "Pod", namespace=ns, label_selector=cfg.mig_manager_selector
        )
        self._refresh = [self.mig_managers] if cfg.mig_manager_refresh_seconds > 0 else []
        # the autoscaler's (started only with it)
        self.routes = Reflector(kube, API_VERSION, "SLMRoute")
        self.gateways = Reflector(
            kube, "v1", "Pod", namespace=gateway_namespace, label_selector=gateway_selector
        )

    def planner_reflectors(self) -> list[Reflector]:
        return [
            self.nodes,
            self.pools,
            self.deployments,
            self.replicas,
            self.gpu_pods,
            self.services,
            self.quotas,
            self.namespaces,
            self.mig_configmap,
            self.device_plugin_configmap,
            *self._refresh,
        ]

    def autoscaler_reflectors(self) -> list[Reflector]:
        return [self.routes, self.gateways]

    def all(self) -> list[Reflector]:
        return [*self.planner_reflectors(), *self.autoscaler_reflectors()]

    def start(self, reflectors: Iterable[Reflector]) -> None:
        for r in reflectors:
            r.start()

    def stop(self) -> None:
        for r in self.all():
            r.stop()

    def observe(self, obj: Mapping[str, Any]) -> None:
        """``Kube.on_write``: what the API server answered to one of our writes goes into the reflectors that
        hold such objects."""
        for r in self.all():
            r.observe(obj)

    def deployment_pods(self, namespace: str, name: str) -> list[dict[str, Any]]:
        """The replica pods of one SLMDeployment."""
        if not self.replicas.started:
            return self.replicas.kube.list(
                "v1", "Pod", namespace, label_selector=f"{DEPLOYMENT_LABEL}={name}"
            )
        return [
            p
            for p in self.replicas.items()
            if PodView(p).namespace == namespace and PodView(p).labels.get(DEPLOYMENT_LABEL) == name
        ]

    def replica_pods(self, pool: str) -> list[dict[str, Any]]:
        if not self.replicas.started:
            return self.replicas.kube.list("v1", "Pod", label_selector=f"{POOL_LABEL}={pool}")
        return [p for p in self.replicas.items() if PodView(p).labels.get(POOL_LABEL) == pool]
