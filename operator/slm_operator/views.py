"""Typed, read-only views over Kubernetes objects in their JSON form (dicts from the API or from kopf).

The shell hands the core plain dicts; these views say once how to read them, instead of
``(obj.get("metadata") or {}).get(...)`` chains in every module. A view never copies nor changes its object;
a missing field reads as empty.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from slm_operator.contract import GPU_RESOURCE, PLACEMENT_ANNOTATION, PlacementRecord

_EMPTY: Mapping[str, Any] = {}


@dataclass(frozen=True)
class ObjectView:
    """``metadata`` of any object."""

    obj: Mapping[str, Any]

    @property
    def metadata(self) -> Mapping[str, Any]:
        return self.obj.get("metadata") or _EMPTY

    @property
    def name(self) -> str:
        return str(self.metadata.get("name") or "")

    @property
    def namespace(self) -> str:
        return str(self.metadata.get("namespace") or "")

    @property
    def labels(self) -> Mapping[str, str]:
        return self.metadata.get("labels") or _EMPTY

    @property
    def annotations(self) -> Mapping[str, str]:
        return self.metadata.get("annotations") or _EMPTY

    @property
    def deleting(self) -> bool:
        """The object has a deletion timestamp: it is on its way out."""
        return bool(self.metadata.get("deletionTimestamp"))


@dataclass(frozen=True)
class PodView(ObjectView):
    """A Pod."""

    @property
    def spec(self) -> Mapping[str, Any]:
        return self.obj.get("spec") or _EMPTY

    @property
    def status(self) -> Mapping[str, Any]:
        return self.obj.get("status") or _EMPTY

    @property
    def phase(self) -> str:
        return str(self.status.get("phase") or "")

    @property
    def finished(self) -> bool:
        """``Succeeded`` or ``Failed``: the pod holds no device any more."""
        return self.phase in ("Succeeded", "Failed")

    @property
    def live(self) -> bool:
        """Neither terminating nor finished."""
        return not self.deleting and not self.finished

    @property
    def ready(self) -> bool:
        """Live, and its ``Ready`` condition is ``True``."""
        return self.live and self.condition_status("Ready") == "True"

    @property
    def node_name(self) -> str:
        """The node the pod is bound to, else the node the scheduler nominated for it (preemption)."""
        return str(self.spec.get("nodeName") or self.status.get("nominatedNodeName") or "")

    @property
    def bound_node(self) -> str:
        return str(self.spec.get("nodeName") or "")

    @property
    def priority_class(self) -> str:
        return str(self.spec.get("priorityClassName") or "")

    def condition(self, type_: str) -> Mapping[str, Any] | None:
        return next((c for c in self.status.get("conditions") or () if c.get("type") == type_), None)

    def condition_status(self, type_: str) -> str:
        c = self.condition(type_)
        return str(c.get("status") or "") if c else ""

    @property
    def whole_gpus(self) -> int:
        """Whole GPUs (``nvidia.com/gpu``) the pod's containers are limited to."""
        total = 0
        for c in self.spec.get("containers") or ():
            limit = ((c.get("resources") or _EMPTY).get("limits") or _EMPTY).get(GPU_RESOURCE)
            if limit is not None and str(limit).isdigit():
                total += int(limit)
        return total

    @cached_property
    def placement(self) -> PlacementRecord | None:
        """The replica's ``slm.io/placement`` record, if it has a readable one."""
        return PlacementRecord.from_annotation(self.annotations.get(PLACEMENT_ANNOTATION))


@dataclass(frozen=True)
class NodeView(ObjectView):
    """A Node."""

    @property
    def status(self) -> Mapping[str, Any]:
        return self.obj.get("status") or _EMPTY

    @property
    def capacity(self) -> Mapping[str, Any]:
        return self.status.get("capacity") or _EMPTY

    @property
    def allocatable(self) -> Mapping[str, Any]:
        return self.status.get("allocatable") or _EMPTY
