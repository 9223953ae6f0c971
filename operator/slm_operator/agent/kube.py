"""The agent's two Kubernetes touch points (official client): its Node's inventory annotation, its pods.

RBAC the agent needs: ``get`` and ``patch`` on ``nodes`` (its own), ``list`` on ``pods`` (all namespaces,
narrowed by the field selector ``spec.nodeName=<node>`` and the label ``slm.io/deployment``).
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from kubernetes import client

from slm_operator.contract import DEPLOYMENT_LABEL, GPU_INVENTORY_ANNOTATION

log = logging.getLogger("slm_operator.agent")


class Publisher(Protocol):
    """Where the inventory goes (the Node annotation; a stub in the unit tests)."""

    def current(self) -> str | None:
        """The value published now (None if none or unknown)."""
        ...

    def publish(self, text: str) -> None: ...


class PodSource(Protocol):
    """The replica pods on this node, as dicts in the API's JSON form."""

    def pods(self) -> list[dict[str, Any]]: ...


class NodeAnnotationPublisher:
    """Writes ``slm.io/gpu-inventory`` on one Node with a merge patch that touches only that annotation."""

    def __init__(self, api: client.ApiClient, node: str, annotation: str = GPU_INVENTORY_ANNOTATION) -> None:
        self.core = client.CoreV1Api(api)
        self.node = node
        self.annotation = annotation

    def current(self) -> str | None:
        node: Any = self.core.read_node(self.node)
        value = ((node.metadata and node.metadata.annotations) or {}).get(self.annotation)
        return str(value) if value is not None else None

    def publish(self, text: str) -> None:
        self.core.patch_node(self.node, {"metadata": {"annotations": {self.annotation: text}}})


class KubePodSource:
    """Lists the slm-operator replica pods bound to one node."""

    def __init__(self, api: client.ApiClient, node: str) -> None:
        self.api: Any = api
        self.core = client.CoreV1Api(api)
        self.node = node

    def pods(self) -> list[dict[str, Any]]:
        res = self.core.list_pod_for_all_namespaces(
            field_selector=f"spec.nodeName={self.node}", label_selector=DEPLOYMENT_LABEL
        )
        return [dict(self.api.sanitize_for_serialization(p)) for p in res.items]
