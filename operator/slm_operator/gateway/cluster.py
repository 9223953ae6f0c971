"""The in-cluster gateway's view of the cluster: SLMRoutes, SLMDeployments, EndpointSlices, the Secrets the
routes name and the ConfigMaps of their task classifiers, turned into the routing table (no API call per request)
and the SLMRoutes' status.

Watch threads (:mod:`slm_operator.gateway.kube`) hand their events to :meth:`ClusterState.handle` on the event
loop; a change marks the state dirty and the table is rebuilt once the burst is over (``DEBOUNCE_SECONDS``).
Secrets are not watched: each one a route names (its callers' API-key hashes, an external backend's key) is read
with one namespaced ``get`` when a route first names it and again every ``SECRET_REFRESH_SECONDS`` (a revoked
key stops working within that time). The ConfigMap of each route's task classifier is watched on its own (a
namespaced watch of that one name, started when a route first names it and stopped when none does), and its
classifier is parsed once per resourceVersion (:mod:`slm_operator.gateway.classifiers`). Every gateway replica
writes the routes' status, only when it differs from what the route shows, so replicas that agree write nothing
(with ``--status-lease`` only the Lease's holder writes).

The status writer also decides the promotion of the rules with ``promote`` (:mod:`slm_operator.routing.promotion`)
on its own replica's counts, when the table is rebuilt and every ``PROMOTION_SECONDS``; a change of phase is
written into ``status.rules`` (which every replica routes by), announced with an Event on the SLMRoute
(``Promoted`` or ``Demoted``), and starts that rule's counts again from zero.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from pydantic import ValidationError

from slm_operator.api.v1alpha1 import SLMDeployment, SLMRoute, SLMRouteStatus
from slm_operator.events import Event
from slm_operator.gateway.classifiers import ClassifierLoader
from slm_operator.gateway.kube import SecretUnreadable
from slm_operator.gateway.server import Gateway
from slm_operator.routing.endpoints import NO_DIAL, DialMap, endpoints_by_service
from slm_operator.routing.promotion import DEMOTED, Transition, evaluate, rule_phases
from slm_operator.routing.status import route_status
from slm_operator.routing.table import (
    CompiledRoute,
    NamespacedName,
    RouteTable,
    RouteWorld,
    build_table,
    classifier_ref,
    secret_data,
)

log = logging.getLogger("slm_operator.gateway")

DEBOUNCE_SECONDS = 0.2
SECRET_REFRESH_SECONDS = 60.0
#: how often the status writer decides the promotions (and writes the rules' figures when they changed)
PROMOTION_SECONDS = 30.0
KINDS = ("slmroutes", "slmdeployments", "endpointslices")


class ClusterApi(Protocol):
    """What the state needs from the API (``KubeApi``; an in-memory fake in the tests). Called in threads."""

    def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    def patch_route_status(self, namespace: str, name: str, status: dict[str, Any]) -> None: ...

    def post_event(self, event: Event) -> None: ...


def _key(obj: dict[str, Any]) -> NamespacedName:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or "default"), str(meta.get("name") or "")


def wanted_secrets(routes: list[SLMRoute]) -> set[NamespacedName]:
    """The Secrets the routes name, each in its route's namespace."""
    out: set[NamespacedName] = set()
    for r in routes:
        ns = r.metadata.namespace or "default"
        out |= {(ns, ref.name) for ref in r.spec.api_key_secret_refs or []}
        out |= {
            (ns, b.external.api_key_secret_ref.name)
            for b in r.spec.backends
            if b.external and b.external.api_key_secret_ref
        }
    return out


def wanted_configmaps(routes: list[SLMRoute]) -> set[NamespacedName]:
    """The ConfigMaps of the routes' task classifiers, each in its route's namespace."""
    return {ref[:2] for ref in map(classifier_ref, routes) if ref is not None}


class ClusterState:
    def __init__(
        self,
        gateway: Gateway,
        api: ClusterApi,
        now: Callable[[], str] = lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        dial: DialMap = NO_DIAL,
    ) -> None:
        self.gateway = gateway
        self.dial = dial  # --dial-map: where replicas of mapped addresses are dialled
        self.writes_status: Callable[[], bool] = lambda: (
            True
        )  # --status-lease: only while this replica holds it
        self.api = api
        self.now = now
        self.objects: dict[str, dict[NamespacedName, dict[str, Any]]] = {k: {} for k in KINDS}
        self.synced: set[str] = set()
        self.secrets: dict[NamespacedName, dict[str, str]] = {}  # readable Secrets' data
        self.unreadable: dict[NamespacedName, str] = {}  # why a named Secret could not be read
        self._parsed: dict[
            tuple[str, NamespacedName], tuple[str, Any]
        ] = {}  # (kind, key) -> (resourceVersion, model)
        # the task classifiers' ConfigMaps: one watch each, started and stopped by ``follow_configmaps``
        self.configmaps: dict[NamespacedName, dict[str, Any]] = {}  # the wanted ones that exist
        self.configmaps_listed: set[NamespacedName] = set()  # whose watch has listed (or was refused)
        self.configmaps_unreadable: dict[NamespacedName, str] = {}  # why a watch was refused
        self.configmaps_wanted: set[NamespacedName] = set()
        self.follow_configmaps: Callable[[set[NamespacedName]], None] = lambda wanted: None
        self.classifiers = ClassifierLoader()
        self._rebuild: asyncio.TimerHandle | None = None
        self.rebuilt = asyncio.Event()  # set after every rebuild (tests wait on it)
        self._writing = asyncio.Lock()  # one status pass at a time: a transition is decided once

    # ------------------------------------------------------------------------------------- events

    def handle(self, kind: str, event: str, obj: Any) -> None:
        """A watch event: ("SYNC", every object) after a list, else ("ADDED"|"MODIFIED"|"DELETED", object)."""
        store = self.objects[kind]
        if event == "SYNC":
            store.clear()
            store.update({_key(o): o for o in obj})
            self.synced.add(kind)
        elif event == "DELETED":
            store.pop(_key(obj), None)
        elif event in ("ADDED", "MODIFIED"):
            store[_key(obj)] = obj
        else:
            return
        self.dirty()

    def handle_configmap(self, key: NamespacedName, event: str, obj: Any) -> None:
        """An event of one ConfigMap's watch: ("SYNC", [the ConfigMap] or []), ("ADDED"|"MODIFIED"|"DELETED",
        the ConfigMap), or ("UNREADABLE", why) when RBAC refuses the watch."""
        if key not in self.configmaps_wanted:
            return  # a watch that is being stopped
        if event in ("SYNC", "UNREADABLE"):
            self.configmaps_listed.add(key)
        if event == "UNREADABLE":
            self.configmaps_unreadable[key] = str(obj)
            self.configmaps.pop(key, None)
        elif event == "SYNC":
            self.configmaps_unreadable.pop(key, None)
            found = [o for o in obj if _key(o) == key]
            if found:
                self.configmaps[key] = found[0]
            else:
                self.configmaps.pop(key, None)
        elif event in ("ADDED", "MODIFIED"):
            self.configmaps[key] = obj
        elif event == "DELETED":
            self.configmaps.pop(key, None)
        else:
            return
        self.dirty()

    def _want_configmaps(self, wanted: set[NamespacedName]) -> None:
        """Watch the ConfigMaps ``wanted`` and forget the others."""
        self.configmaps_wanted = wanted
        for store in (self.configmaps, self.configmaps_unreadable):
            for key in set(store) - wanted:
                del store[key]
        self.configmaps_listed &= wanted
        self.follow_configmaps(wanted)

    def dirty(self) -> None:
        if self._rebuild is None:
            loop = asyncio.get_running_loop()
            self._rebuild = loop.call_later(DEBOUNCE_SECONDS, lambda: asyncio.ensure_future(self.rebuild()))

    # ------------------------------------------------------------------------------------- the table

    def _model(self, kind: str, cls: type[Any], obj: dict[str, Any]) -> Any:
        key = (kind, _key(obj))
        version = str((obj.get("metadata") or {}).get("resourceVersion") or "")
        hit = self._parsed.get(key)
        if hit is not None and hit[0] == version and version:
            return hit[1]
        try:
            model = cls.model_validate(obj)
        except ValidationError as exc:
            log.warning("%s %s/%s is not readable as this version's API, skipped: %s", kind, *key[1], exc)
            model = None
        self._parsed[key] = (version, model)
        return model

    def routes(self) -> list[SLMRoute]:
        out = [self._model("slmroutes", SLMRoute, o) for o in self.objects["slmroutes"].values()]
        return [r for r in out if r is not None]

    async def read_secrets(self, wanted: set[NamespacedName], again: bool = False) -> bool:
        """Read the wanted Secrets not read yet (all of them with ``again``); True when anything changed."""
        changed = False
        for key in sorted(wanted if again else wanted - set(self.secrets) - set(self.unreadable)):
            try:
                obj = await asyncio.to_thread(self.api.get_secret, *key)
            except SecretUnreadable as exc:
                changed |= self.unreadable.get(key) != str(exc)
                self.unreadable[key] = str(exc)
                self.secrets.pop(key, None)
                continue
            except Exception as exc:  # the API server is away: keep what we had
                log.warning("reading Secret %s/%s failed: %s", *key, exc)
                continue
            data = secret_data(obj) if obj is not None else None
            self.unreadable.pop(key, None)
            if data is None:
                changed |= self.secrets.pop(key, None) is not None
            elif self.secrets.get(key) != data:
                self.secrets[key] = data
                changed = True
        for key in set(self.secrets) - wanted:
            del self.secrets[key]
        return changed

    def world(self, routes: list[SLMRoute]) -> RouteWorld:
        deployments = {}
        for o in self.objects["slmdeployments"].values():
            dep = self._model("slmdeployments", SLMDeployment, o)
            if dep is not None:
                deployments[_key(o)] = dep
        return RouteWorld(
            routes=routes,
            deployments=deployments,
            endpoints=endpoints_by_service(self.objects["endpointslices"].values(), self.dial),
            secrets=self.secrets,
            unreadable=self.unreadable,
            classifiers=self.classifiers.load(
                [ref for ref in map(classifier_ref, routes) if ref is not None],
                self.configmaps,
                self.configmaps_unreadable,
            ),
        )

    async def rebuild(self) -> RouteTable:
        """Build the table from what the watches hold, serve it, and write the statuses that changed."""
        self._rebuild = None
        routes = self.routes()
        self._want_configmaps(wanted_configmaps(routes))
        await self.read_secrets(wanted_secrets(routes))
        table = build_table(self.world(routes))
        self.gateway.set_table(table)
        # statuses only from a complete view, never from half-listed watches, and by one replica with a Lease
        if self.synced >= set(KINDS) and self.writes_status():
            await self.write_statuses(table)
        self.rebuilt.set()
        return table

    async def write_statuses(self, table: RouteTable) -> None:
        async with self._writing:
            now = self.now()
            for compiled in table.routes.values():
                await self._write_status(compiled, now)

    async def _write_status(self, compiled: CompiledRoute, now: str) -> None:
        """Write the route's status when it changed; decide its rules' promotions on this replica's counts."""
        name = (compiled.namespace, compiled.name)
        obj = self.objects["slmroutes"].get(name)
        if obj is None or not self._classifier_listed(compiled):
            return
        current = obj.get("status") or None
        try:
            previous = SLMRouteStatus.model_validate(current) if current else None
        except ValidationError:
            previous = None
        counts = self.gateway.tallies.counts(compiled.key, rule_phases(compiled.spec, previous))
        promotion = evaluate(compiled.spec, previous, counts, now)
        wanted = route_status(compiled, previous, now, promotion.rules).to_k8s()
        if wanted == current:
            return
        try:
            await asyncio.to_thread(self.api.patch_route_status, *name, wanted)
        except Exception as exc:  # the next change, resync or promotion pass writes it
            log.warning("writing the status of SLMRoute %s failed: %s", compiled.key, exc)
            return
        if promotion.transitions:
            # route by the new phase at once, as the watch will show it (the parsed route is cached by version)
            self.objects["slmroutes"][name] = {**obj, "status": wanted}
            self._parsed.pop(("slmroutes", name), None)
            for t in promotion.transitions:
                self.gateway.tallies.restart(compiled.key, t.rule, t.phase)
            await self._announce(obj, compiled, promotion.transitions)
            self.dirty()

    async def _announce(
        self, obj: dict[str, Any], route: CompiledRoute, transitions: list[Transition]
    ) -> None:
        """An Event on the SLMRoute per change of phase (best effort)."""
        for t in transitions:
            log.info("SLMRoute %s: %s", route.key, t.message)
            kind = "Warning" if t.reason == DEMOTED else "Normal"
            try:
                await asyncio.to_thread(self.api.post_event, Event.on(obj, kind, t.reason, t.message))
            except Exception as exc:  # events are best effort
                log.warning("posting event %s on SLMRoute %s failed: %s", t.reason, route.key, exc)

    async def promote(self) -> None:
        """Decide the promotions now and write what changed (only from a complete view, by the writer)."""
        if self.synced >= set(KINDS) and self.writes_status():
            await self.write_statuses(self.gateway.table)

    async def promote_forever(self) -> None:
        while True:
            await asyncio.sleep(PROMOTION_SECONDS)
            try:
                await self.promote()
            except Exception:  # the next pass tries again
                log.exception("deciding the promotions failed")

    def _classifier_listed(self, route: CompiledRoute) -> bool:
        """Whether the watch of the route's classifier ConfigMap has listed it (a status before that would say
        TaskClassifierNotFound of a ConfigMap not looked at yet)."""
        ref = route.spec.task_classifier
        return ref is None or (route.namespace, ref.config_map_ref.name) in self.configmaps_listed

    async def refresh_secrets_forever(self) -> None:
        while True:
            await asyncio.sleep(SECRET_REFRESH_SECONDS)
            if await self.read_secrets(wanted_secrets(self.routes()), again=True):
                self.dirty()
