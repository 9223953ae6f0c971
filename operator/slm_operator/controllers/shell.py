"""What every controller of the shell does the same way: read an object into its model, write a status only
when it changed, create or replace a ConfigMap whose data the core computes (re-read and retried on 409)."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping
from typing import Any

from kubernetes.client.exceptions import ApiException

from slm_operator.api.base import ApiModel
from slm_operator.contract import API_VERSION
from slm_operator.controllers.kube import Kube, retry_on_conflict
from slm_operator.render.configmaps import configmap


def now_rfc3339() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def strip(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Keep what the models know: apiVersion, kind, metadata (without managedFields), spec, status."""
    out: dict[str, Any] = {
        k: raw[k] for k in ("apiVersion", "kind", "metadata", "spec", "status") if k in raw
    }
    meta = dict(out.get("metadata") or {})
    meta.pop("managedFields", None)
    out["metadata"] = meta
    return out


def write_status(
    kube: Kube,
    kind: str,
    name: str,
    namespace: str | None,
    old: ApiModel | None,
    new: ApiModel,
    others: Collection[str] = (),
) -> bool:
    """Apply ``new`` as the status of an slm.io object unless it equals ``old``; True when it was written.

    Conditions keep their ``lastTransitionTime`` when nothing changed, so a resync that observes nothing new
    writes nothing. ``others`` names the status fields another field manager owns (the autoscaler's
    ``autoscaling``): they are neither compared nor sent, so this apply never takes or drops them.
    """
    body = {k: v for k, v in new.to_k8s().items() if k not in others}
    before = {k: v for k, v in old.to_k8s().items() if k not in others} if old is not None else None
    if before == body:
        return False
    metadata: dict[str, Any] = {"name": name}
    if namespace is not None:  # None: a cluster-scoped kind (GPUPool)
        metadata["namespace"] = namespace
    kube.apply({"apiVersion": API_VERSION, "kind": kind, "metadata": metadata, "status": body}, status=True)
    return True


def contains(have: Any, want: Any) -> bool:
    """Whether ``have`` (an object as the API server holds it) already carries every field of ``want`` (what we
    would apply) with the same value: applying ``want`` again would change nothing we own."""
    if isinstance(want, Mapping):
        return isinstance(have, Mapping) and all(k in have and contains(have[k], v) for k, v in want.items())
    if isinstance(want, list):
        return isinstance(have, list) and len(have) == len(want) and all(map(contains, have, want))
    return bool(have == want)


def update_configmap(
    kube: Kube,
    name: str,
    namespace: str,
    compute: Callable[[Mapping[str, str] | None], Mapping[str, str] | None],
    annotate: Callable[[Mapping[str, str]], Mapping[str, str]] | None = None,
    cached: Callable[[], dict[str, Any] | None] | None = None,
) -> None:
    """Create or replace a ConfigMap with ``compute(current data)`` (None: leave the data as it is) and, with
    ``annotate``, the annotations ``annotate(current annotations)`` (kept as they are otherwise).

    The first try reads ``cached()`` (the watch cache) when given, so that a pass with nothing to change sends
    nothing. The replace carries the resourceVersion read, so a concurrent writer, or a stale cache, makes it
    fail with 409; the step is then run again on a fresh read from the API server (other pools' entries are
    never lost).
    """
    reads = [cached] if cached is not None else []

    def step() -> None:
        cm = reads.pop()() if reads else kube.get("v1", "ConfigMap", name, namespace)
        current = None if cm is None else (cm.get("data") or {})
        have: Mapping[str, str] = {} if cm is None else (cm.get("metadata") or {}).get("annotations") or {}
        data = compute(current)
        annotations = dict(have) if annotate is None else dict(annotate(have))
        if data is None and annotations == dict(have):
            return
        body = configmap(name, namespace, current or {} if data is None else data)
        if annotations:
            body["metadata"]["annotations"] = annotations
        if cm is None:
            if kube.create(body) is None:  # it exists after all (a stale read): merge into what it holds
                raise ApiException(status=409, reason="AlreadyExists")
            return
        body["metadata"]["resourceVersion"] = cm["metadata"]["resourceVersion"]
        kube.replace(body)

    retry_on_conflict(step)
