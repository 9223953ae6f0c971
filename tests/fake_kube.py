"""An in-memory stand-in for :class:`slm_operator.controllers.kube.Kube`, for unit tests of the shell.

Objects are JSON dicts keyed by (kind, namespace, name); every write bumps ``metadata.resourceVersion`` and a
replace that carries a stale one fails with 409, as the API server does. Every write is recorded in
:attr:`FakeKube.writes` so that a test can count them.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Iterator
from typing import Any, cast

from kubernetes.client.exceptions import ApiException

from slm_operator.contract import FIELD_MANAGER
from slm_operator.controllers.kube import Kube

Key = tuple[str, str, str]


def _key(kind: str, name: str, namespace: str | None) -> Key:
    return (kind, namespace or "", name)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: a None deletes a key, a dict merges, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def _field(obj: dict[str, Any], path: str) -> str:
    cur: Any = obj
    for part in path.split("."):
        cur = cur.get(part) if isinstance(cur, dict) else None
    return "" if cur is None else str(cur)


def _matches(obj: dict[str, Any], label_selector: str | None, field_selector: str | None) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for term in filter(None, (label_selector or "").split(",")):
        k, eq, v = term.partition("=")
        if not eq:  # "k": the label is there; "!k": it is not
            if (k.lstrip("!") in labels) == k.startswith("!"):
                return False
        elif labels.get(k) != v:
            return False
    for term in filter(None, (field_selector or "").split(",")):
        k, _, v = term.partition("=")
        if _field(obj, k) != v:
            return False
    return True


class FakeKube:
    """The subset of ``Kube`` the shell calls: get, list, apply, create, replace, delete, merge_patch, event."""

    def __init__(self, *objects: dict[str, Any]) -> None:
        self.objects: dict[Key, dict[str, Any]] = {}
        self.writes: list[tuple[str, str, str]] = []  # (verb, kind, name), in order
        self.events: list[dict[str, Any]] = []
        self.requests = 0
        self._versions = itertools.count(1)
        self._uids = itertools.count(1)
        self._after_read: dict[Key, Callable[[dict[str, Any]], None]] = {}
        #: per object: top-level status field -> the field manager that applied it last
        self.status_owners: dict[Key, dict[str, str]] = {}
        for obj in objects:
            self.add(obj)

    def as_kube(self) -> Kube:
        """This fake where the shell's signatures want a Kube."""
        return cast(Kube, self)

    # ------------------------------------------------------------------------------ test helpers

    def add(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Store an object as the API server would after a create (uid, resourceVersion, generation)."""
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        meta.setdefault("uid", f"uid-{next(self._uids)}")
        meta.setdefault("generation", 1)
        meta["resourceVersion"] = str(next(self._versions))
        self.objects[_key(obj["kind"], meta["name"], meta.get("namespace"))] = obj
        return obj

    def peek(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        """The stored object itself (no request counted)."""
        return self.objects.get(_key(kind, name, namespace))

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for (k, _, _), o in sorted(self.objects.items()) if k == kind]

    def count(self, verb: str, kind: str | None = None) -> int:
        return sum(1 for v, k, _ in self.writes if v == verb and (kind is None or k == kind))

    def after_next_read(
        self, kind: str, name: str, namespace: str | None, change: Callable[[dict[str, Any]], None]
    ) -> None:
        """Another writer changes the object right after the next read of it (its resourceVersion moves)."""
        self._after_read[_key(kind, name, namespace)] = change

    # ------------------------------------------------------------------------------ reads

    def get(
        self, api_version: str, kind: str, name: str, namespace: str | None = None
    ) -> dict[str, Any] | None:
        self.requests += 1
        key = _key(kind, name, namespace)
        obj = self.objects.get(key)
        out = copy.deepcopy(obj)
        change = self._after_read.pop(key, None)
        if obj is not None and change is not None:
            change(obj)
            obj["metadata"]["resourceVersion"] = str(next(self._versions))
        return out

    def list(
        self,
        api_version: str,
        kind: str,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> list[dict[str, Any]]:
        self.requests += 1
        return [
            copy.deepcopy(o)
            for (k, ns, _), o in sorted(self.objects.items())
            if k == kind
            and (namespace is None or ns == namespace)
            and _matches(o, label_selector, field_selector)
        ]

    # ------------------------------------------------------------------------------ writes

    def _bump(self, obj: dict[str, Any], verb: str) -> dict[str, Any]:
        obj["metadata"]["resourceVersion"] = str(next(self._versions))
        self.writes.append((verb, obj["kind"], obj["metadata"]["name"]))
        return copy.deepcopy(obj)

    def _existing(self, kind: str, name: str, namespace: str | None) -> dict[str, Any]:
        obj = self.objects.get(_key(kind, name, namespace))
        if obj is None:
            raise ApiException(status=404, reason="NotFound")
        return obj

    def apply(
        self, obj: dict[str, Any], *, status: bool = False, field_manager: str = FIELD_MANAGER
    ) -> dict[str, Any]:
        """Server-side apply. A status apply replaces the status but for the top-level fields another field
        manager applied last (and that this one does not send), as the API server's field ownership does; a
        status the test stored counts as the operator's (``FIELD_MANAGER``)."""
        self.requests += 1
        meta = obj["metadata"]
        if status:
            key = _key(obj["kind"], meta["name"], meta.get("namespace"))
            current = self._existing(obj["kind"], meta["name"], meta.get("namespace"))
            owners = self.status_owners.setdefault(key, {})
            sent = copy.deepcopy(obj["status"])
            kept = {
                k: v
                for k, v in (current.get("status") or {}).items()
                if k not in sent and owners.get(k, FIELD_MANAGER) != field_manager
            }
            current["status"] = {**kept, **sent}
            for k in sent:
                owners[k] = field_manager
            for k in [k for k, m in owners.items() if m == field_manager and k not in sent]:
                del owners[k]
            return self._bump(current, "apply-status")
        key = _key(obj["kind"], meta["name"], meta.get("namespace"))
        if key not in self.objects:
            self.add(obj)
        else:
            self.objects[key] = merge_patch(self.objects[key], obj)
        return self._bump(self.objects[key], "apply")

    def create(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        self.requests += 1
        meta = obj["metadata"]
        if _key(obj["kind"], meta["name"], meta.get("namespace")) in self.objects:
            return None
        return self._bump(self.add(obj), "create")

    def replace(self, obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        key = _key(obj["kind"], meta["name"], meta.get("namespace"))
        current = self._existing(obj["kind"], meta["name"], meta.get("namespace"))
        if meta.get("resourceVersion") != current["metadata"]["resourceVersion"]:
            self.writes.append(("replace-conflict", obj["kind"], meta["name"]))
            raise ApiException(status=409, reason="Conflict")
        new = copy.deepcopy(obj)
        new["metadata"] = {**current["metadata"], **new["metadata"]}
        self.objects[key] = new
        return self._bump(new, "replace")

    def delete(self, api_version: str, kind: str, name: str, namespace: str | None = None, **_: Any) -> bool:
        self.requests += 1
        if self.objects.pop(_key(kind, name, namespace), None) is None:
            return False
        self.writes.append(("delete", kind, name))
        return True

    def merge_patch(
        self, api_version: str, kind: str, name: str, patch: dict[str, Any], namespace: str | None = None
    ) -> dict[str, Any] | None:
        self.requests += 1
        key = _key(kind, name, namespace)
        if key not in self.objects:
            return None
        self.objects[key] = merge_patch(self.objects[key], patch)
        return self._bump(self.objects[key], "patch")

    def event(
        self, involved: dict[str, Any], type_: str, reason: str, message: str, component: str = "slm-operator"
    ) -> None:
        self.events.append(
            {
                "involved": involved["metadata"]["name"],
                "kind": involved.get("kind"),
                "type": type_,
                "reason": reason,
                "message": message,
            }
        )

    def watch(self, api_version: str, kind: str, **kw: Any) -> Iterator[dict[str, Any]]:
        return iter(())
