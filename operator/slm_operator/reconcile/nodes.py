"""Phases 5 and 8: what each node should look like, and when its selector labels may change."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from slm_operator.catalog import gpu_by_key
from slm_operator.contract import (
    DEVICE_PLUGIN_CONFIG_LABEL,
    GPU_ROLES_ANNOTATION,
    MIG_CONFIG_LABEL,
    ORIGINAL_LABELS_ANNOTATION,
)
from slm_operator.planner.model import NodeInventory, NodePlan, Plan
from slm_operator.reconcile.gates import RELABEL_GATES, RelabelContext
from slm_operator.reconcile.inputs import NodeReadings
from slm_operator.render import NodeConfig, node_config
from slm_operator.views import NodeView


# ------------------------------------------------------------------------------------------ 5. node configs
@dataclass(frozen=True)
class NodeConfigs:
    by_node: Mapping[str, NodeConfig]  # nodes the plan covers, in the pool's node order
    annotations: Mapping[str, dict[str, str]]  # node -> GPU roles (+ the labels found, on take-over)
    mig_entries: Mapping[str, list[dict[str, Any]]]  # mig-parted config name -> entries
    device_plugin_entries: Mapping[str, dict[str, Any]]  # device-plugin config name -> config
    sharing: Mapping[str, str]  # node -> node-wide sharing mode in the plan


def configure_nodes(nodes: NodeReadings, plan: Plan) -> NodeConfigs:
    """Each planned node's configuration (the NVIDIA selector labels and the entries they name) and its
    annotations: the stable choice of reserved/segment GPUs, and on take-over the labels the pool found."""
    plans = {np.name: np for np in plan.nodes}
    roles = _gpu_roles(plan)
    configs: dict[str, NodeConfig] = {}
    annotations: dict[str, dict[str, str]] = {}
    mig_entries: dict[str, list[dict[str, Any]]] = {}
    device_plugin_entries: dict[str, dict[str, Any]] = {}
    sharing: dict[str, str] = {}
    for reading in nodes.readings:
        name = reading.inventory.name
        np_ = plans.get(name)
        if np_ is None:
            continue
        nc = _node_config(reading.inventory, np_)
        configs[name] = nc
        if nc.mig_entries:
            mig_entries[nc.mig_config] = nc.mig_entries
        device_plugin_entries[nc.device_plugin_config] = nc.device_plugin_entry
        annotations[name] = _annotations(reading.view, roles.get(name, {}))
        sharing[name] = np_.sharing
    return NodeConfigs(configs, annotations, mig_entries, device_plugin_entries, sharing)


def _node_config(inv: NodeInventory, plan: NodePlan) -> NodeConfig:
    gpu_key = inv.gpus[0].model if inv.gpus else ""
    return node_config(plan, gpu_key, bool(gpu_key) and gpu_by_key(gpu_key).mig_capable)


def _gpu_roles(plan: Plan) -> dict[str, dict[str, str]]:
    """node -> GPU index -> the reservation or segment that GPU is set aside for."""
    out: dict[str, dict[str, str]] = {}
    for g in plan.gpus:
        role = g.reservation or g.segment
        if role:
            out.setdefault(g.node, {})[str(g.index)] = role
    return out


def _annotations(node: NodeView, roles: Mapping[str, str]) -> dict[str, str]:
    out = {GPU_ROLES_ANNOTATION: json.dumps(roles, sort_keys=True)}
    if ORIGINAL_LABELS_ANNOTATION not in node.annotations:
        original = {k: node.labels.get(k) for k in (MIG_CONFIG_LABEL, DEVICE_PLUGIN_CONFIG_LABEL)}
        out[ORIGINAL_LABELS_ANNOTATION] = json.dumps(original, sort_keys=True)
    return out


def restore_labels(node: Mapping[str, Any]) -> dict[str, str | None]:
    """Labels to put back on a node the pool releases (None = remove), from what was recorded on take-over."""
    raw = NodeView(node).annotations.get(ORIGINAL_LABELS_ANNOTATION)
    if not raw:
        return {}
    try:
        original: dict[str, str | None] = json.loads(raw)
    except ValueError:
        return {}
    return original


def node_patches(
    nodes: Iterable[Mapping[str, Any]],
    labels: Mapping[str, dict[str, str]],
    annotations: Mapping[str, dict[str, str]],
) -> dict[str, dict[str, Any]]:
    """The merge patch of each node a pass changes, by name: its annotations (``Decisions.node_annotations``)
    and, when it is relabelled, its selector labels (``Decisions.node_labels``). A node whose labels stay and
    whose annotations already say this gets none. The shell sends these; ``plan --emit`` writes them."""
    current = {v.name: v for v in map(NodeView, nodes)}
    out: dict[str, dict[str, Any]] = {}
    for node, node_annotations in sorted(annotations.items()):
        have = current[node].annotations if node in current else {}
        if node not in labels and all(have.get(k) == v for k, v in node_annotations.items()):
            continue
        meta: dict[str, Any] = {"annotations": node_annotations}
        if node in labels:
            meta["labels"] = labels[node]
        out[node] = {"metadata": meta}
    return out


# ------------------------------------------------------------------------------------------ 8. relabels
@dataclass(frozen=True)
class Relabels:
    labels: Mapping[str, dict[str, str]]  # node -> the selector labels to write in this pass
    held: Mapping[str, str]  # node -> why its new labels wait (RELABEL_GATES)
    waiting_nodes: tuple[str, ...]  # nodes whose configuration is changing (relabelled or held), by name


def relabel_nodes(nodes: NodeReadings, configs: NodeConfigs, draining: frozenset[str]) -> Relabels:
    """Nodes whose selector labels differ from the plan's get them, unless a gate holds them back: a node's
    configuration changes only once nothing it would take away is still running."""
    ctx = RelabelContext(draining=draining)
    labels: dict[str, dict[str, str]] = {}
    held: dict[str, str] = {}
    waiting: list[str] = []
    for name, nc in sorted(configs.by_node.items()):
        want = nc.labels
        have = nodes.by_name[name].view.labels
        if all(have.get(k) == v for k, v in want.items()):
            continue
        waiting.append(name)
        why = RELABEL_GATES.first_failure(ctx, name)
        if why is None:
            labels[name] = want
        else:
            held[name] = why
    return Relabels(labels, held, tuple(waiting))
