"""The two ConfigMaps the NVIDIA GPU Operator reads, shared by every pool: what their data becomes.

Each pool merges its entries in and drops the entries no node names any more, keeping what other pools wrote.
Pure: the shell reads the ConfigMap, asks here for the new data and writes it (``None``: nothing to write).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping
from typing import Any

import yaml

from slm_operator.contract import APP_MANAGED_BY_LABEL, CONFIG_WRITTEN_ANNOTATION, MANAGED_BY
from slm_operator.render import EXCLUSIVE_CONFIG, device_plugin_documents, mig_parted_document
from slm_operator.views import NodeView

MIG_PARTED_KEY = "config.yaml"


def configmap(name: str, namespace: str, data: Mapping[str, str]) -> dict[str, Any]:
    """A ConfigMap slm-operator manages."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {APP_MANAGED_BY_LABEL: MANAGED_BY},
        },
        "data": dict(data),
    }


def configs_in_use(nodes: Iterable[Mapping[str, Any]], label: str, entries: Collection[str]) -> set[str]:
    """Config names the merge keeps: those some node's ``label`` selects now, and the ``entries`` written."""
    return {NodeView(n).labels.get(label, "") for n in nodes} | set(entries)


def mig_parted_data(
    current: Mapping[str, str] | None, in_use: Collection[str], entries: Mapping[str, Any]
) -> dict[str, str] | None:
    """mig-manager's ConfigMap data: the ``slm-*`` configs some node still names, plus ``entries``.

    ``current`` is the ConfigMap's data (None: there is no ConfigMap); None when it already says this.
    """
    configs: dict[str, Any] = {}
    if current is not None:
        configs = (yaml.safe_load(current.get(MIG_PARTED_KEY, "")) or {}).get("mig-configs") or {}
    merged = {k: v for k, v in configs.items() if k.startswith("slm-") and k in in_use}
    merged.update(entries)
    text = mig_parted_document(merged)
    if current is not None and current.get(MIG_PARTED_KEY) == text:
        return None
    return {MIG_PARTED_KEY: text}


def device_plugin_data(
    current: Mapping[str, str] | None, in_use: Collection[str], entries: Mapping[str, dict[str, Any]]
) -> dict[str, str] | None:
    """The device plugin's ConfigMap data: the configs some node still names, the exclusive one, ``entries``.

    ``current`` is the ConfigMap's data (None: there is no ConfigMap); None when it already says this.
    """
    data = dict(current or {})
    keep = {k: v for k, v in data.items() if k in in_use or k == EXCLUSIVE_CONFIG}
    merged = keep | device_plugin_documents(entries)
    if current is not None and data == merged:
        return None
    return merged


def entry_times(annotations: Mapping[str, str] | None) -> dict[str, str]:
    """When each mig-parted entry was first written, from the ConfigMap's annotations (unreadable: none)."""
    try:
        raw = json.loads((annotations or {}).get(CONFIG_WRITTEN_ANNOTATION) or "{}")
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in raw.items()} if isinstance(raw, dict) else {}


def written_annotations(
    current: Mapping[str, str], in_use: Collection[str], times: Mapping[str, str]
) -> dict[str, str]:
    """The mig-parted ConfigMap's annotations with ``times`` recorded: the entries some node still names keep
    their time, ``times`` (this pool's entries) is merged in, the rest is dropped with its entry."""
    kept = {k: v for k, v in entry_times(current).items() if k in in_use}
    merged = kept | dict(times)
    return {**current, CONFIG_WRITTEN_ANNOTATION: json.dumps(merged, sort_keys=True, separators=(",", ":"))}
