"""Replica endpoints from EndpointSlices (discovery.k8s.io/v1), pure: the slices in the API's JSON form in,
:class:`~slm_operator.routing.table.Endpoint` lists keyed by (namespace, Service name) out.

The operator renders one Service per SLMDeployment, named after it, with the port ``http``; Kubernetes writes
its EndpointSlices, labelled with the Service's name. An endpoint is ready unless its ``ready`` condition is
false (absent means ready, as the API defines it) or it is terminating.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from slm_operator.contract import SERVICE_NAME_LABEL
from slm_operator.routing.table import Endpoint, NamespacedName

#: the port name of the Services the operator renders (render.service)
PORT_NAME = "http"


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class DialMap:
    """Where to dial a replica whose address lies in a mapped network (``--dial-map FROM=TO``): the same offset in
    ``TO``. For local clusters, whose replica addresses cannot be dialled (kwok's fake pod IPs, served on loopback
    by the e2e harness, as kind maps ports): the API refuses loopback addresses in EndpointSlices. Empty: dial
    every address as published (the default, and what a real cluster needs)."""

    pairs: tuple[tuple[Network, Network], ...] = ()

    def dial(self, address: str) -> str:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return address
        for src, dst in self.pairs:
            if ip.version == src.version and ip in src:
                return str(dst.network_address + (int(ip) - int(src.network_address)))
        return address


#: dial every address as published
NO_DIAL = DialMap()


def parse_dial_map(items: Sequence[str]) -> DialMap:
    """``FROM_CIDR=TO_CIDR`` items, both networks of one IP version and size; ValueError says what is wrong."""
    pairs = []
    for item in items:
        src_text, sep, dst_text = item.partition("=")
        try:
            if not sep:
                raise ValueError("expected FROM_CIDR=TO_CIDR")
            src = ipaddress.ip_network(src_text.strip())
            dst = ipaddress.ip_network(dst_text.strip())
        except ValueError as exc:
            raise ValueError(f"--dial-map {item!r}: {exc} (e.g. 10.0.0.0/24=127.0.2.0/24)") from None
        if src.version != dst.version or src.prefixlen != dst.prefixlen:
            raise ValueError(f"--dial-map {item!r}: both networks need the same IP version and prefix length")
        pairs.append((src, dst))
    return DialMap(tuple(pairs))


def _host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def _port(ports: Iterable[Any]) -> int | None:
    for port in ports:
        if isinstance(port, Mapping) and port.get("name") == PORT_NAME and isinstance(port.get("port"), int):
            return int(port["port"])
    return None


def slice_endpoints(
    slice_: Mapping[str, Any], dial: DialMap = NO_DIAL
) -> tuple[NamespacedName, list[Endpoint]] | None:
    """((namespace, Service name), endpoints) of one EndpointSlice, or None when it is not a Service's; each
    address is dialled as ``dial`` maps it."""
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
        out.append(Endpoint(f"http://{_host(dial.dial(str(addresses[0])))}:{port}/v1", ready=ready))
    return (str(meta.get("namespace") or "default"), str(service)), out


def endpoints_by_service(
    slices: Iterable[Mapping[str, Any]], dial: DialMap = NO_DIAL
) -> dict[NamespacedName, list[Endpoint]]:
    """Every Service's endpoints over all its slices, in a stable order (by URL), without duplicates."""
    merged: dict[NamespacedName, dict[str, Endpoint]] = {}
    for s in slices:
        found = slice_endpoints(s, dial)
        if found is None:
            continue
        key, endpoints = found
        bucket = merged.setdefault(key, {})
        for e in endpoints:
            if e.url not in bucket or e.ready:
                bucket[e.url] = e
    return {k: [v[u] for u in sorted(v)] for k, v in merged.items()}
