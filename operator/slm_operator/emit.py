"""``slm-operator plan --emit``: every object the operator would create or change for some manifests, as files.

Pure: the operator's own core over a :class:`~slm_operator.reconcile.World` built from the manifests (their
Nodes as they are, no replica pods yet, no LLM-fallback pods, no mig-parted ConfigMap, a fixed ``now``), one
pool after the other in name order, as the operator's passes would run:

* ``reconcile.decide`` plans the pool and decides node configs, Services and everything else;
* ``reconcile.node_patches`` gives the node merge patches the shell sends (labels and annotations), and the
  patched labels are what the next pool sees;
* ``render.configmaps`` merges each pool's entries into the shared ConfigMaps exactly as the shell does;
* the replica pods are the *desired* pods (``reconcile.podsets``): on a first pass the operator creates none,
  it waits for each node to report its new configuration (``CREATE_GATES``), then creates these.

The shell part (the folder, existing files) is in ``cli.py``.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from slm_operator.api.v1alpha1 import GPUPool
from slm_operator.contract import DEVICE_PLUGIN_CONFIG_LABEL, MIG_CONFIG_LABEL
from slm_operator.manifests import Manifests
from slm_operator.planner.model import Plan
from slm_operator.reconcile import Decisions, World, decide, node_patches
from slm_operator.reconcile.inputs import size_deployments
from slm_operator.reconcile.podsets import pod_sets
from slm_operator.render import OperatorConfig
from slm_operator.render.configmaps import configmap, configs_in_use, device_plugin_data, mig_parted_data

#: ``World.now``: only statuses carry it, and they are not emitted; fixed so that the output is too.
EMIT_NOW = "1970-01-01T00:00:00Z"
#: The first line of every file written; ``--force`` replaces only files that start with it.
MARKER = "# Written by `slm-operator plan --emit`."
INDEX = "README.md"
_NO_OWNER = "ownerReferences: the operator adds the SLMDeployment (its uid exists only in the cluster)."


@dataclass(frozen=True)
class Emitted:
    """One object to write: where, what it is, a comment for the reviewer, and the object (or patch)."""

    path: str  # relative to the folder, "/"-separated
    kind: str
    name: str
    namespace: str  # "" for a cluster-scoped object
    pool: str  # "" for the ConfigMaps every pool shares
    note: tuple[str, ...]  # comment lines above the object
    obj: dict[str, Any]

    @property
    def text(self) -> str:
        header = "".join(f"# {line}\n" for line in self.note)
        return f"{MARKER}\n{header}{dump(self.obj)}"


@dataclass(frozen=True)
class Emission:
    objects: tuple[Emitted, ...]  # by path
    plans: tuple[Plan, ...]  # one per pool, by name: what the objects realise

    def files(self) -> dict[str, str]:
        """Relative path -> content: every object, and the index (``README.md``)."""
        out = {o.path: o.text for o in self.objects}
        out[INDEX] = index(self.objects, self.plans)
        return out


class _Dumper(yaml.SafeDumper):
    """Block style; multi-line strings (the ConfigMaps' documents) as literal blocks, readable in a diff."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_Dumper.add_representer(str, _str)


def dump(obj: Any) -> str:
    return yaml.dump(obj, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=1 << 20)


# ------------------------------------------------------------------------------------------ the passes
@dataclass
class _State:
    """What the passes so far have written: node labels, the two ConfigMaps' data, the objects."""

    nodes: list[dict[str, Any]]
    mig: dict[str, str] | None = None
    device_plugin: dict[str, str] | None = None
    patches: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)  # node -> (pool, patch)

    def merge_configmaps(self, d: Decisions) -> None:
        """As the shell: each pool's entries merged in, entries no node names any more dropped."""
        in_use_mig = configs_in_use(self.nodes, MIG_CONFIG_LABEL, d.mig_entries)
        in_use_dp = configs_in_use(self.nodes, DEVICE_PLUGIN_CONFIG_LABEL, d.device_plugin_entries)
        self.mig = mig_parted_data(self.mig, in_use_mig, d.mig_entries) or self.mig
        dp = device_plugin_data(self.device_plugin, in_use_dp, d.device_plugin_entries)
        self.device_plugin = dp or self.device_plugin

    def patch_nodes(self, pool: str, d: Decisions) -> None:
        """Record each node's patch and apply its labels, so later pools see the nodes as configured."""
        patches = self.patches
        by_name = {n["metadata"]["name"]: n for n in self.nodes}
        for name, patch in node_patches(self.nodes, d.node_labels, d.node_annotations).items():
            meta = patch["metadata"]
            node_meta = by_name[name]["metadata"]
            node_meta["labels"] = {**(node_meta.get("labels") or {}), **meta.get("labels", {})}
            node_meta["annotations"] = {**(node_meta.get("annotations") or {}), **meta["annotations"]}
            if name in patches:  # a node two pools select (a misconfiguration): both patches, merged
                old = patches[name][1]["metadata"]
                meta = {k: {**old.get(k, {}), **meta.get(k, {})} for k in ("labels", "annotations")}
                pool = f"{patches[name][0]}, {pool}"
            patches[name] = (pool, {"metadata": meta})


def emit(m: Manifests, cfg: OperatorConfig) -> Emission:
    """Every object the operator would write for the manifests ``m`` (read by ``manifests.load_manifests``).

    Node labels are the ones the operator sets once mig-manager can read the new config entries (it waits
    ``configmap_sync_seconds`` for the mounted ConfigMap to catch up; an emission has no such wait)."""
    cfg = dataclasses.replace(cfg, configmap_sync_seconds=0)
    state = _State(nodes=[copy.deepcopy(n) for n in m.nodes])
    objects: list[Emitted] = []
    plans: list[Plan] = []
    for pool in sorted(m.pools, key=lambda p: p.metadata.name):
        world = World(
            pool=pool,
            nodes=state.nodes,
            deployments=[d for d in m.deployments if d.spec.pool_ref.name == pool.metadata.name],
            pods=[],
            foreign_gpu_pods=[],
            mig_configs={},
            now=EMIT_NOW,
            cfg=cfg,
            namespaces=m.namespace_labels(),
        )
        d = decide(world)
        assert d.plan is not None  # decide always plans
        plans.append(d.plan)
        state.merge_configmaps(d)
        state.patch_nodes(pool.metadata.name, d)
        objects += _pods(world, d.plan)
        objects += _services(pool, d.services)
    objects += _nodes(state.patches)
    objects += _configmaps(cfg, state.mig, state.device_plugin)
    return Emission(tuple(sorted(objects, key=lambda o: o.path)), tuple(plans))


# ------------------------------------------------------------------------------------------ the objects
def _path(kind: str, name: str, namespace: str = "") -> str:
    """The object's API path without the group prefix: ``nodes/<name>.yaml``,
    ``namespaces/<namespace>/<kinds>/<name>.yaml``."""
    plural = f"{kind.lower()}s"
    return f"namespaces/{namespace}/{plural}/{name}.yaml" if namespace else f"{plural}/{name}.yaml"


def _without_owner(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The object as the operator renders it, less an owner reference without a uid (offline there is none)."""
    out = copy.deepcopy(dict(obj))
    owners = [o for o in out["metadata"].get("ownerReferences", []) if o.get("uid")]
    if owners:
        out["metadata"]["ownerReferences"] = owners
    else:
        out["metadata"].pop("ownerReferences", None)
    return out


def _pods(world: World, plan: Plan) -> list[Emitted]:
    pool = world.pool.metadata.name
    out = []
    for want in pod_sets(world, plan, size_deployments(world.deployments)).desired.values():
        view = want.view
        rec = view.placement
        assert rec is not None  # every rendered replica pod carries its placement
        share = f"MIG {rec.mig_profile}" if rec.mig_profile else rec.mechanism
        note = (
            f"Replica {rec.ordinal} of SLMDeployment {rec.deployment} (GPUPool {pool}): {share} on node "
            f"{rec.node}, GPU {rec.gpu}.",
            f"The operator creates this pod once the node reports the configuration of {_path('Node', rec.node)}",
            "applied (mig-manager's mig.config.state, GFD's sharing labels).",
            _NO_OWNER,
        )
        out.append(
            Emitted(
                _path("Pod", view.name, view.namespace),
                "Pod",
                view.name,
                view.namespace,
                pool,
                note,
                _without_owner(want.manifest),
            )
        )
    return out


def _services(pool: GPUPool, services: Iterable[Mapping[str, Any]]) -> list[Emitted]:
    out = []
    for svc in services:
        meta = svc["metadata"]
        note = (f"The Service of SLMDeployment {meta['namespace']}/{meta['name']}.", _NO_OWNER)
        out.append(
            Emitted(
                _path("Service", meta["name"], meta["namespace"]),
                "Service",
                meta["name"],
                meta["namespace"],
                pool.metadata.name,
                note,
                _without_owner(svc),
            )
        )
    return out


def _nodes(patches: Mapping[str, tuple[str, dict[str, Any]]]) -> list[Emitted]:
    out = []
    for name, (pool, patch) in sorted(patches.items()):
        meta = {
            "name": name,
            **{k: patch["metadata"][k] for k in ("labels", "annotations") if k in patch["metadata"]},
        }
        obj = {"apiVersion": "v1", "kind": "Node", "metadata": meta}
        note = (
            f"A merge patch, not a whole Node: the labels and annotations GPUPool {pool} sets on node {name}.",
            f"kubectl patch node {name} --type merge --patch-file {_path('Node', name)}",
        )
        out.append(Emitted(_path("Node", name), "Node", name, "", pool, note, obj))
    return out


def _configmaps(cfg: OperatorConfig, mig: dict[str, str] | None, dp: dict[str, str] | None) -> list[Emitted]:
    ns = cfg.nvidia_namespace
    out = []
    for name, data, what in (
        (
            cfg.mig_configmap,
            mig,
            "mig-parted config mig-manager reads (nvidia.com/mig.config names an entry)",
        ),
        (
            cfg.device_plugin_configmap,
            dp,
            "device-plugin configs (nvidia.com/device-plugin.config names a key)",
        ),
    ):
        if data is None:
            continue
        note = (f"The {what}; every pool's entries, merged as the operator merges them.",)
        out.append(
            Emitted(
                _path("ConfigMap", name, ns),
                "ConfigMap",
                name,
                ns,
                "",
                note,
                configmap(name, ns, dict(sorted(data.items()))),
            )
        )
    return out


# ------------------------------------------------------------------------------------------ the index
def index(objects: Iterable[Emitted], plans: Iterable[Plan]) -> str:
    """``README.md``: what the folder holds, per pool, and one row per file."""
    lines = [
        "<!-- " + MARKER.removeprefix("# ") + " -->",
        "# What slm-operator would write",
        "",
        "Every object the operator would create or change for the given manifests (`docs/plan-format.md`,",
        "section `--emit`). `nodes/` holds merge patches (labels and annotations), not whole Nodes; the other",
        "files are whole objects. The operator creates the replica pods once each node reports its new",
        "configuration applied.",
        "",
    ]
    for plan in plans:
        p = plan.pool
        lines.append(
            f"* GPUPool `{p.name}`: {p.replicas_placed}/{p.replicas_desired} replicas placed on "
            f"{p.gpus_used}/{p.gpus_total} GPUs, {p.replicas_unplaced} unplaced"
        )
    lines += ["", "| File | Kind | Namespace | Name | GPUPool |", "| --- | --- | --- | --- | --- |"]
    for o in objects:
        lines.append(f"| `{o.path}` | {o.kind} | {o.namespace or '-'} | {o.name} | {o.pool or '-'} |")
    return "\n".join(lines) + "\n"
