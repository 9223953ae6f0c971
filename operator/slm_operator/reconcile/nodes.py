"""Phases 5 and 8: what each node should look like, and when its selector labels may change."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from slm_operator.catalog import gpu_by_key
from slm_operator.contract import (
    DEVICE_PLUGIN_CONFIG_LABEL,
    GPU_ROLES_ANNOTATION,
    MIG_CONFIG_LABEL,
    MIG_CONFIG_MAX_TRIES,
    MIG_CONFIG_STATE_LABEL,
    MIG_DISABLED_CONFIG,
    MIG_LAST_GOOD_ANNOTATION,
    MIG_MANAGER_REFRESH_ANNOTATION,
    MIG_PENDING_ANNOTATION,
    MIG_ROLLBACK_ANNOTATION,
    ORIGINAL_LABELS_ANNOTATION,
    MigConfigState,
    mig_retry_name,
    mig_retry_of,
)
from slm_operator.planner.model import NodeInventory, NodePlan, Plan
from slm_operator.reconcile.gates import (
    CONFIGMAP_WATCH_SECONDS,
    RELABEL_GATES,
    RelabelContext,
    mig_entry_synced,
    mig_refresh,
    pods_drained,
)
from slm_operator.reconcile.inputs import NodeReadings
from slm_operator.reconcile.rollback import RolledBack, last_good_now
from slm_operator.reconcile.world import World
from slm_operator.render import NodeConfig, node_config
from slm_operator.views import NodeView, PodView


# ------------------------------------------------------------------------------------------ 5. node configs
@dataclass(frozen=True)
class NodeConfigs:
    by_node: Mapping[str, NodeConfig]  # nodes the plan covers, in the pool's node order
    annotations: Mapping[str, dict[str, str]]  # node -> GPU roles (+ the labels found, on take-over)
    mig_entries: Mapping[str, list[dict[str, Any]]]  # mig-parted config name -> entries
    device_plugin_entries: Mapping[str, dict[str, Any]]  # device-plugin config name -> config
    sharing: Mapping[str, str]  # node -> node-wide sharing mode in the plan
    mig_failed: Mapping[str, str] = field(default_factory=dict)  # node -> MIG config that failed every try


def configure_nodes(
    nodes: NodeReadings, plan: Plan, mig_configs: Mapping[str, Any] | None = None
) -> NodeConfigs:
    """Each planned node's configuration (the NVIDIA selector labels and the entries they name) and its
    annotations: the stable choice of reserved/segment GPUs, on take-over the labels the pool found, and the
    node's last good MIG config when the plan changes it (``mig_configs``: the mig-parted ConfigMap's entries).
    A node held on its last good MIG config after a failed one keeps it (reconcile/rollback.py)."""
    plans = {np.name: np for np in plan.nodes}
    roles = _gpu_roles(plan)
    configs: dict[str, NodeConfig] = {}
    annotations: dict[str, dict[str, str]] = {}
    mig_entries: dict[str, list[dict[str, Any]]] = {}
    device_plugin_entries: dict[str, dict[str, Any]] = {}
    sharing: dict[str, str] = {}
    failed: dict[str, str] = {}
    for reading in nodes.readings:
        name = reading.inventory.name
        np_ = plans.get(name)
        if np_ is None:
            continue
        held = nodes.rolled_back.get(name)
        annotations[name] = _annotations(reading.view, roles.get(name, {}))
        if held is not None:
            nc = _held(_node_config(reading.inventory, np_), held)
            annotations[name][MIG_ROLLBACK_ANNOTATION] = held.record.to_annotation()
        else:
            tries = nodes.mig_tries.get(name, MIG_CONFIG_MAX_TRIES)
            nc, exhausted = _retry_failed(_node_config(reading.inventory, np_), reading.view, tries)
            if exhausted:
                failed[name] = nc.mig_config
            good = last_good_now(reading.view, nc.mig_config, mig_configs or {}) if nc.mig_capable else None
            if good is not None:
                annotations[name][MIG_LAST_GOOD_ANNOTATION] = good.to_annotation()
        configs[name] = nc
        if nc.mig_entries:
            mig_entries[nc.mig_config] = nc.mig_entries
        device_plugin_entries[nc.device_plugin_config] = nc.device_plugin_entry
        sharing[name] = np_.sharing
    return NodeConfigs(configs, annotations, mig_entries, device_plugin_entries, sharing, failed)


def _held(nc: NodeConfig, held: RolledBack) -> NodeConfig:
    """The node's config with its MIG part held on the last good config (the device-plugin part as planned: the
    node is planned as it is, in that layout)."""
    if not nc.mig_capable:
        return nc
    return replace(nc, mig_config=held.last_good.config, mig_entries=held.last_good.entries)


def _retry_failed(
    nc: NodeConfig, node: NodeView, tries: int = MIG_CONFIG_MAX_TRIES
) -> tuple[NodeConfig, bool]:
    """The node's config under the name its label should carry, and whether its tries are exhausted.

    mig-manager acts only when ``nvidia.com/mig.config`` changes: once it reports ``failed`` for a config the
    operator wrote, the label moves to an alias of the same content (``<name>-retry<N>``), at most
    ``tries`` in all (MIG_CONFIG_MAX_TRIES; one on a node rolled back recently). A node already on an alias of
    the planned config keeps it.
    """
    if nc.mig_entries is None or not nc.mig_capable:
        return nc, False
    current = node.labels.get(MIG_CONFIG_LABEL, MIG_DISABLED_CONFIG)
    base, retries = mig_retry_of(current)
    if base != nc.mig_config:
        return nc, False
    if node.labels.get(MIG_CONFIG_STATE_LABEL) != MigConfigState.FAILED:
        return replace(nc, mig_config=current), False
    if retries + 1 >= tries:
        return replace(nc, mig_config=current), True
    return replace(nc, mig_config=mig_retry_name(base, retries + 1)), False


def entry_times(world: World, configs: NodeConfigs) -> dict[str, str]:
    """When each mig-parted entry the plan names was first written: the time recorded on the ConfigMap while
    the entry is there, else now (it is written in this pass)."""
    return {
        name: world.mig_entry_times.get(name, world.now) if name in world.mig_configs else world.now
        for name in configs.mig_entries
    }


def entry_ages(times: Mapping[str, str], now: str) -> dict[str, float]:
    """Seconds since each RFC 3339 time in ``times`` (an unreadable time counts as written now)."""
    t_now = _parse_time(now)
    out: dict[str, float] = {}
    for name, when in times.items():
        t = _parse_time(when)
        out[name] = 0.0 if t is None or t_now is None else max(0.0, (t_now - t).total_seconds())
    return out


#: How long a mig-parted entry no node names yet is kept, past the wait for the mounted ConfigMap to catch up:
#: long enough for the pool that wrote it to relabel its nodes on a later pass.
PENDING_ENTRY_MARGIN_SECONDS = 120.0


def pending_mig_entries(world: World) -> set[str]:
    """mig-parted entries a pool wrote recently and will name on a node once mig-manager's mounted ConfigMap has
    them (``configmap_sync_seconds`` later). The pools share one ConfigMap: another pool's pass keeps these, or
    it would drop them as unused and restart that pool's wait on every pass."""
    keep = 2 * world.cfg.configmap_sync_seconds + PENDING_ENTRY_MARGIN_SECONDS
    return {name for name, age in entry_ages(world.mig_entry_times, world.now).items() if age < keep}


def _parse_time(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def with_pending(
    annotations: Mapping[str, dict[str, str]], pending: Mapping[str, str]
) -> dict[str, dict[str, str | None]]:
    """The nodes' annotations with ``MIG_PENDING_ANNOTATION`` naming the MIG config each node waits for only
    because its entry is not old enough yet, and removed from every other node (None)."""
    return {node: {**a, MIG_PENDING_ANNOTATION: pending.get(node)} for node, a in annotations.items()}


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
    annotations: Mapping[str, Mapping[str, str | None]],
) -> dict[str, dict[str, Any]]:
    """The merge patch of each node a pass changes, by name: its annotations (``Decisions.node_annotations``;
    None removes one) and, when it is relabelled, its selector labels (``Decisions.node_labels``). A node whose
    labels stay and whose annotations already say this gets none. The shell sends these; ``plan --emit`` writes
    them."""
    current = {v.name: v for v in map(NodeView, nodes)}
    out: dict[str, dict[str, Any]] = {}
    for node, node_annotations in sorted(annotations.items()):
        have = current[node].annotations if node in current else {}
        if node not in labels and all(have.get(k) == v for k, v in node_annotations.items()):
            continue
        meta: dict[str, Any] = {
            "annotations": {k: v for k, v in node_annotations.items() if v is not None or k in have}
        }
        if node in labels:
            meta["labels"] = _with_stale_state_removed(labels[node], current.get(node))
        out[node] = {"metadata": meta}
    return out


def _with_stale_state_removed(labels: Mapping[str, str], node: NodeView | None) -> dict[str, str | None]:
    """A new ``nvidia.com/mig.config`` goes out with ``nvidia.com/mig.config.state`` removed: the state there
    is mig-manager's answer for the previous config. mig-manager writes ``pending`` and then ``success`` or
    ``failed`` once it acts on the new label (reconfigure.go Run; ``success`` at once when the layout is
    already there); while it is down (or has not got to it yet) no ``success`` of the old config lets replica
    pods onto MIG devices that do not exist (``gates.mig_config_applied``)."""
    out: dict[str, str | None] = dict(labels)
    have = node.labels if node is not None else {}
    new = labels.get(MIG_CONFIG_LABEL)
    if new is not None and new != have.get(MIG_CONFIG_LABEL) and MIG_CONFIG_STATE_LABEL in have:
        out[MIG_CONFIG_STATE_LABEL] = None
    return out


# ------------------------------------------------------------------------------------------ 8. relabels
@dataclass(frozen=True)
class MigManager:
    """The GPU Operator's mig-manager pod running on a node."""

    namespace: str
    name: str
    refreshed: str | None  # when the operator last refreshed it (MIG_MANAGER_REFRESH_ANNOTATION), RFC 3339


def mig_managers(pods: Iterable[Mapping[str, Any]]) -> dict[str, MigManager]:
    """Node -> its running mig-manager pod (one that is pending, terminating or finished mounts nothing a
    refresh could renew; a new pod mounts the ConfigMap as it is when it starts)."""
    out: dict[str, MigManager] = {}
    for pod in map(PodView, pods):
        if pod.phase == "Running" and pod.live and pod.bound_node:
            refreshed = pod.annotations.get(MIG_MANAGER_REFRESH_ANNOTATION)
            out[pod.bound_node] = MigManager(pod.namespace, pod.name, refreshed)
    return out


def refresh_patches(
    managers: Mapping[str, MigManager], nodes: Iterable[str], now: str
) -> list[tuple[str, str, dict[str, Any]]]:
    """The merge patch that refreshes each node's mig-manager pod: the refresh time as its annotation."""
    return [
        (m.namespace, m.name, {"metadata": {"annotations": {MIG_MANAGER_REFRESH_ANNOTATION: now}}})
        for m in (managers[n] for n in nodes)
    ]


def refresh_waits(managers: Mapping[str, MigManager], refresh_seconds: float) -> dict[str, float]:
    """Node -> how long a new mig-parted entry takes to reach its mig-manager through a refresh of its pod."""
    if refresh_seconds <= 0:
        return {}
    return dict.fromkeys(managers, CONFIGMAP_WATCH_SECONDS + refresh_seconds)


def refresh_ages(managers: Mapping[str, MigManager], now: str) -> dict[str, float | None]:
    """Node -> seconds since its mig-manager pod was last refreshed (None: never, or an unreadable time)."""
    ages = entry_ages({n: m.refreshed for n, m in managers.items() if m.refreshed}, now)
    return {n: ages.get(n) for n in managers}


@dataclass(frozen=True)
class Relabels:
    labels: Mapping[str, dict[str, str]]  # node -> the selector labels to write in this pass
    held: Mapping[str, str]  # node -> why its new labels wait (RELABEL_GATES)
    waiting_nodes: tuple[str, ...]  # nodes whose configuration is changing (relabelled or held), by name
    #: seconds until the first held MIG config entry is old enough (None: no node waits for an entry's age)
    synced_in: float | None = None
    #: node -> the MIG config it waits for only because its entry is not old enough yet (MIG_PENDING_ANNOTATION)
    pending: Mapping[str, str] = field(default_factory=dict)
    #: nodes whose mig-manager pod is refreshed in this pass, so that it sees the new entry sooner (mig_refresh)
    refresh: tuple[str, ...] = ()


def relabel_nodes(
    nodes: NodeReadings,
    configs: NodeConfigs,
    draining: frozenset[str],
    ages: Mapping[str, float] | None = None,
    sync_seconds: float = 0.0,
    mig_managers: Mapping[str, float | None] | None = None,
    refresh_seconds: float = 0.0,
) -> Relabels:
    """Nodes whose selector labels differ from the plan's get them, unless a gate holds them back: a node's
    configuration changes only once nothing it would take away is still running, and only once the MIG config
    it names has reached mig-manager (``ages``: seconds since each entry was written; ``sync_seconds``: how
    old it must be; or ``refresh_seconds`` after its mig-manager pod was refreshed for it, ``mig_managers``:
    seconds since each node's pod was refreshed). A node that waits for its entry gets its mig-manager pod
    refreshed while its pods drain too: the refresh does not change the node."""
    ctx = RelabelContext(
        draining=draining,
        targets=configs.by_node,
        mig_labels={
            n: r.view.labels.get(MIG_CONFIG_LABEL, MIG_DISABLED_CONFIG) for n, r in nodes.by_name.items()
        },
        entry_ages=ages or {},
        sync_seconds=sync_seconds,
        mig_managers=mig_managers or {},
        refresh_seconds=refresh_seconds,
    )
    labels: dict[str, dict[str, str]] = {}
    held: dict[str, str] = {}
    waiting: list[str] = []
    synced_in: list[float] = []
    pending: dict[str, str] = {}
    refresh: list[str] = []
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
            if mig_entry_synced(ctx, name) is not None:  # opens with time alone (entry not written yet: now)
                synced_in.append(sync_seconds - ctx.entry_ages.get(nc.mig_config, 0.0))
                step = mig_refresh(ctx, name)
                if step is not None:
                    synced_in.append(step.ready_in)
                    if step.now:
                        refresh.append(name)
                if pods_drained(ctx, name) is None:
                    pending[name] = nc.mig_config
    return Relabels(labels, held, tuple(waiting), min(synced_in, default=None), pending, tuple(refresh))
