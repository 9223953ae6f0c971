"""The one shape of a Kubernetes Event the pure core asks the shell to post."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from slm_operator.contract import API_VERSION


@dataclass(frozen=True)
class Event:
    """A core/v1 Event on an object slm-operator reconciles (its ``involvedObject`` and what to say)."""

    kind: str  # SLMDeployment | GPUPool | FineTuneJob | SLMRoute
    namespace: str | None
    name: str
    type: str  # Normal | Warning
    reason: str
    message: str
    uid: str | None = None
    api_version: str = API_VERSION

    @classmethod
    def on(cls, obj: Mapping[str, Any], type_: str, reason: str, message: str) -> Event:
        """An Event about ``obj``, an object in its JSON form."""
        meta = obj.get("metadata") or {}
        return cls(
            kind=str(obj.get("kind") or ""),
            namespace=meta.get("namespace"),
            name=str(meta.get("name") or ""),
            type=type_,
            reason=reason,
            message=message,
            uid=meta.get("uid"),
            api_version=str(obj.get("apiVersion") or API_VERSION),
        )

    def involved_object(self) -> dict[str, Any]:
        """The object the Event is about, in the form ``Kube.event`` takes."""
        return {
            "apiVersion": self.api_version,
            "kind": self.kind,
            "metadata": {"name": self.name, "namespace": self.namespace, "uid": self.uid},
        }

    def body(self, component: str, now: str) -> dict[str, Any]:
        """The core/v1 Event to create in the object's namespace (``default`` for a cluster-scoped object),
        posted by ``component`` at ``now`` (RFC 3339)."""
        return event_body(self.involved_object(), self.type, self.reason, self.message, component, now)


def event_body(
    involved: Mapping[str, Any], type_: str, reason: str, message: str, component: str, now: str
) -> dict[str, Any]:
    """A core/v1 Event about ``involved`` (an object in its JSON form), as every component of slm-operator posts
    it: named after the object, its message cut to 1,024 characters."""
    meta = involved["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta.get("namespace") or "default"},
        "involvedObject": {
            "apiVersion": involved.get("apiVersion", API_VERSION),
            "kind": involved["kind"],
            "name": meta["name"],
            "namespace": meta.get("namespace"),
            "uid": meta.get("uid"),
        },
        "type": type_,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": component},
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
        "reportingComponent": component,
        "reportingInstance": component,
    }
