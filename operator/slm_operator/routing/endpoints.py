"""Replica endpoints from EndpointSlices (discovery.k8s.io/v1), pure: the slices in the API's JSON form in,
:class:`~slm_operator.routing.table.Endpoint` lists keyed by (namespace, Service name) out.

The operator renders one Service per SLMDeployment, named after it, with the port ``http``; Kubernetes writes
its EndpointSlices, labelled with the Service's name. An endpoint is ready unless its ``ready`` condition is
false (absent means ready, as the API defines it) or it is terminating.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from slm_operator.contract import SERVICE_NAME_LABEL
from slm_operator.routing.table import Endpoint, NamespacedName

#: the port name of the Services the operator renders (render.service)
PORT_NAME = "http"


def _host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def _port(ports: Iterable[Any]) -> int | None:
    for port in ports:
        if isinstance(port, Mapping) and port.get("name") == PORT_NAME and isinstance(port.get("port"), int):
            return int(port["port"])
    return None


def slice_endpoints(slice_: Mapping[str, Any]) -> tuple[NamespacedName, list[Endpoint]] | None:
    """((namespace, Service name), endpoints) of one EndpointSlice, or None when it is not a Service's."""
    meta = slice_.get("metadata") or {}
    service = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
    port = _port(slice_.get("ports") or [])
    if not service or port is None:
        return None
    out = []
    for ep in slice_.get("endpoints") or []:
        addresses = ep.get("addresses") or []
        if not addresses:
            continue
        cond = ep.get("conditions") or {}
        ready = cond.get("ready") is not False and cond.get("terminating") is not True
        out.append(Endpoint(f"http://{_host(str(addresses[0]))}:{port}/v1", ready=ready))
    return (str(meta.get("namespace") or "default"), str(service)), out


def endpoints_by_service(slices: Iterable[Mapping[str, Any]]) -> dict[NamespacedName, list[Endpoint]]:
    """Every Service's endpoints over all its slices, in a stable order (by URL), without duplicates."""
    merged: dict[NamespacedName, dict[str, Endpoint]] = {}
    for s in slices:
        found = slice_endpoints(s)
        if found is None:
            continue
        key, endpoints = found
        bucket = merged.setdefault(key, {})
        for e in endpoints:
            if e.url not in bucket or e.ready:
                bucket[e.url] = e
    return {k: [v[u] for u in sorted(v)] for k, v in merged.items()}
