"""The in-cluster gateway's view of the cluster: SLMRoutes, SLMDeployments, EndpointSlices, FineTuneJobs, the
Secrets the routes name and the ConfigMaps of their task classifiers, turned into the routing table (no API call
per request) and the SLMRoutes' status.

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
(``Promoted`` or ``Demoted``), and starts that rule's counts again from zero. The FineTuneJobs are watched for
the promotion only: a rule is not promoted while one that promotes onto its backend's SLMDeployment is pending.

After a status write the view holds the written status at once, and older events of that route (a watch
delivers the versions before the write after it) are dropped until the watch has caught up
(:meth:`ClusterState._stale`): otherwise a stale event would route by the old phase for a pass, and the next pass
could write the old phase back, undoing a promotion without an Event.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from typing import Any, Protocol

from pydantic import ValidationError

from slm_operator.api.v1alpha1 import FineTuneJob, SLMDeployment, SLMRoute, SLMRouteStatus
from slm_operator.events import Event
from slm_operator.gateway.classifiers import ClassifierLoader
from slm_operator.gateway.kube import SecretUnreadable
from slm_operator.gateway.server import Gateway
from slm_operator.routing.endpoints import NO_DIAL, DialMap, endpoints_by_service
from slm_operator.routing.promotion import DEMOTED, Transition, evaluate, pending_finetunes, rule_phases
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
KINDS = ("slmroutes", "slmdeployments", "endpointslices", "finetunejobs")
_RESOURCE_VERSION = re.compile(r"[1-9][0-9]*")  # what compare_resource_versions orders


class ClusterApi(Protocol):
    """What the state needs from the API (``KubeApi``; an in-memory fake in the tests). Called in threads."""

    def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    def patch_route_status(self, namespace: str, name: str, status: dict[str, Any]) -> str | None:
        """Write the route's status; the route's resourceVersion after the write (None when not known)."""
        ...

    def post_event(self, event: Event) -> None: ...


def _key(obj: dict[str, Any]) -> NamespacedName:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or "default"), str(meta.get("name") or "")


def compare_resource_versions(a: str, b: str) -> int | None:
    """-1, 0 or 1 as the resourceVersion ``a`` of an object is older than, the same as or newer than ``b``; None
    when they do not compare (not both positive integers without leading zeros).

    Kubernetes documents resourceVersions of one resource as comparable positive integers that grow with every
    write since 1.35 (KEP-5504, apimachinery's ``resourceversion.CompareResourceVersion``, which this follows:
    the longer is the larger, else the order of the digits); before that they were etcd's revision, the same in
    practice. Python's ``int`` would do as well; comparing the text keeps arbitrary lengths cheap."""
    if not (_RESOURCE_VERSION.fullmatch(a) and _RESOURCE_VERSION.fullmatch(b)):
        return None
    if len(a) != len(b):
        return -1 if len(a) < len(b) else 1
    return (a > b) - (a < b)


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
        #: per route: its resourceVersion after this replica's last status write, until the watch caught up
        self.written: dict[NamespacedName, str] = {}

    # ------------------------------------------------------------------------------------- events

    def handle(self, kind: str, event: str, obj: Any) -> None:
        """A watch event: ("SYNC", every object) after a list, else ("ADDED"|"MODIFIED"|"DELETED", object)."""
        store = self.objects[kind]
        if event == "SYNC":
            listed = {_key(o): o for o in obj}
            if kind == "slmroutes":  # a list read before this replica's last write keeps the written status
                listed = {k: store[k] if k in store and self._stale(k, o) else o for k, o in listed.items()}
                self.written = {k: v for k, v in self.written.items() if k in listed}
            store.clear()
            store.update(listed)
            self.synced.add(kind)
            for gone in [k for k in self._parsed if k[0] == kind and k[1] not in listed]:
                del self._parsed[gone]  # deleted while the watch was down (FineTuneJobs come and go)
        elif event == "DELETED":
            store.pop(_key(obj), None)
            self._parsed.pop((kind, _key(obj)), None)
            if kind == "slmroutes":
                self.written.pop(_key(obj), None)
        elif event in ("ADDED", "MODIFIED"):
            if kind == "slmroutes" and self._stale(_key(obj), obj):
                return
            store[_key(obj)] = obj
        else:
            return
        self.dirty()

    def _stale(self, key: NamespacedName, obj: dict[str, Any]) -> bool:
        """Whether a watched route is older than the status this replica last wrote for it, and is dropped.

        A watch delivers each object's versions in order, and the write's own version after every one before
        it; but those may come after the write was made (a status written before, a spec edited between what
        the view held and the write), and would put the phase back to the old one. Equality with the versions
        seen before the write cannot tell them (an edit between has a version never seen), so versions are
        compared (:func:`compare_resource_versions`): an event older than the write's version is dropped, one
        as new or newer (the write's own, a later edit, a route deleted and created again) is taken and ends
        the guard. Nothing is lost: the write's own event carries the whole route as of the write, edits made
        before it included. Versions that do not compare (an API server that breaks the 1.35 contract) are
        taken, as before this guard."""
        written = self.written.get(key)
        if written is None:
            return False
        version = str((obj.get("metadata") or {}).get("resourceVersion") or "")
        order = compare_resource_versions(version, written)
        if order is not None and order < 0:
            log.debug(
                "SLMRoute %s/%s: dropped version %s, older than the status written (%s)",
                *key,
                version,
                written,
            )
            return True
        del self.written[key]
        return False

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
            finetunes=pending_finetunes(self._finetunes()),
            secrets=self.secrets,
            unreadable=self.unreadable,
            classifiers=self.classifiers.load(
                [ref for ref in map(classifier_ref, routes) if ref is not None],
                self.configmaps,
                self.configmaps_unreadable,
            ),
        )

    def _finetunes(self) -> list[FineTuneJob]:
        out = [self._model("finetunejobs", FineTuneJob, o) for o in self.objects["finetunejobs"].values()]
        return [j for j in out if j is not None]

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
        counts = self.gateway.tallies.counts(compiled, rule_phases(compiled.spec, previous))
        promotion = evaluate(compiled.spec, previous, counts, now, compiled.facts)
        wanted = route_status(compiled, previous, now, promotion.rules).to_k8s()
        if wanted == current:
            return
        try:
            version = await asyncio.to_thread(self.api.patch_route_status, *name, wanted)
        except Exception as exc:  # the next change, resync or promotion pass writes it
            log.warning("writing the status of SLMRoute %s failed: %s", compiled.key, exc)
            return
        # the view holds what was written at once, as the watch will show it: the next pass decides from it (a
        # transition, a back-off, a new measuredModel are decided once), and the watch's older versions of the
        # route are dropped until it caught up with this write (``_stale``; the parsed route is cached by
        # version, hence the pop)
        self.objects["slmroutes"][name] = {**obj, "status": wanted}
        self._parsed.pop(("slmroutes", name), None)
        if version:
            self.written[name] = str(version)
        if promotion.transitions:
            for t in promotion.transitions:
                if t.changes_phase:
                    self.gateway.tallies.restart(compiled, t.rule, t.phase)
            await self._announce(obj, compiled, promotion.transitions)
        if any(t.changes_phase for t in promotion.transitions):
            self.dirty()  # route by the new phase

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
