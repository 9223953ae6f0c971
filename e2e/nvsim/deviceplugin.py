"""k8s-device-plugin config files (``api/config/v1``) and what the plugin + GFD advertise for a node.

Facts: /work/shared/facts/gpu-sharing.md sections 2 (strategies, sharing schema, MPS rules) and 4 (GFD labels).
No Kubernetes here: ``node_view`` maps (hardware, MIG layout, sharing config) to extended resources and labels.

Rules, each from NVIDIA/k8s-device-plugin (v0.20.0) unless said otherwise:

* which MIG strategy is in effect: command line, then the **environment** (``MIG_STRATEGY``), then the config
  file's ``flags.migStrategy`` (``api/config/v1/config.go`` ``NewConfig``: "in order of precedence from (1)
  command line, (2) environment variable, (3) config file"; ``api/config/v1/flags.go`` ``UpdateFromCLIFlags``
  applies a flag when ``c.IsSet``, true for an environment variable). The GPU Operator sets ``MIG_STRATEGY`` from
  ``ClusterPolicy spec.mig.strategy`` and leaves it out when that is unset (gpu-operator
  ``controllers/object_controls.go`` ``applyMIGConfiguration``: "if not set then let plugin decide this per
  node"; chart ``deployments/gpu-operator/templates/clusterpolicy.yaml``: ``{{- if .Values.mig.strategy }}``);
* MPS is refused with ``mixed`` and on MIG-enabled GPUs (``cmd/nvidia-device-plugin/main.go``
  ``validateFlags``; ``api/config/v1/sharing.go``): the plugin exits, the DaemonSet restarts it (crash loop)
  and the kubelet keeps its resources at 0;
* devices per strategy (``internal/rm/device_map.go``, ``internal/rm/rm.go``), sharing replicas and renaming
  (``api/config/v1/replicas.go``), at most 48 MPS clients (``cmd/mps-control-daemon/mps/device.go``);
* GFD labels (``internal/lm/resource.go``, ``internal/lm/mig-strategy.go``, ``docs/gpu-feature-discovery``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from .migparted import GpuHardware, GpuLayout

GPU = "nvidia.com/gpu"
SHARED_SUFFIX = ".shared"
MIG_STRATEGIES = ("none", "single", "mixed")
_RESOURCE = re.compile(r"^nvidia\.com/(gpu|mig-[0-9]+g\.[0-9]+gb(\.me(\.all)?|\.gfx)?)$")
_TOP_KEYS = {"version", "flags", "sharing", "resources", "imex"}
_SHARING_KEYS = {"renameByDefault", "failRequestsGreaterThanOne", "resources"}
_RESOURCE_KEYS = {"name", "replicas", "devices", "rename"}


class DevicePluginConfigError(ValueError):
    """A config file the device plugin refuses to start with."""


@dataclass(frozen=True)
class SharingConfig:
    """The parts of a device-plugin config file the simulator acts on."""

    strategy: str = "none"  # none | time-slicing | mps  (Sharing.SharingStrategy())
    rename_by_default: bool = False
    fail_requests_greater_than_one: bool = False
    replicas: tuple[tuple[str, int], ...] = ()  # resource name -> replicas
    mig_strategy: str | None = None  # flags.migStrategy, None = the node's default

    def replicas_of(self, resource: str) -> int:
        return dict(self.replicas).get(resource, 1)

    def to_json(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "renameByDefault": self.rename_by_default,
            "failRequestsGreaterThanOne": self.fail_requests_greater_than_one,
            "replicas": dict(self.replicas),
            "migStrategy": self.mig_strategy,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> SharingConfig:
        return cls(
            strategy=raw["strategy"],
            rename_by_default=bool(raw["renameByDefault"]),
            fail_requests_greater_than_one=bool(raw["failRequestsGreaterThanOne"]),
            replicas=tuple(sorted((str(k), int(v)) for k, v in raw["replicas"].items())),
            mig_strategy=raw.get("migStrategy"),
        )


NO_SHARING = SharingConfig()


def _parse_sharing(raw: Any, where: str, mps: bool) -> tuple[bool, bool | None, dict[str, int]]:
    if not isinstance(raw, Mapping):
        raise DevicePluginConfigError(f"{where}: must be a mapping")
    unknown = set(raw) - _SHARING_KEYS
    if unknown:
        raise DevicePluginConfigError(f"{where}: unknown field(s) {sorted(unknown)}")
    rename = raw.get("renameByDefault", False)
    fail = raw.get("failRequestsGreaterThanOne")
    if not isinstance(rename, bool) or (fail is not None and not isinstance(fail, bool)):
        raise DevicePluginConfigError(f"{where}: renameByDefault/failRequestsGreaterThanOne must be booleans")
    resources = raw.get("resources") or []
    if not isinstance(resources, list):
        raise DevicePluginConfigError(f"{where}.resources: must be a list")
    replicas: dict[str, int] = {}
    for i, r in enumerate(resources):
        rw = f"{where}.resources[{i}]"
        if not isinstance(r, Mapping) or set(r) - _RESOURCE_KEYS:
            raise DevicePluginConfigError(f"{rw}: must be a mapping with name, replicas[, devices, rename]")
        name = r.get("name")
        if not isinstance(name, str) or not _RESOURCE.match(name):
            raise DevicePluginConfigError(f"{rw}: unsupported resource name {name!r}")
        if mps and name != GPU:
            raise DevicePluginConfigError(f"{rw}: MPS sharing supports only {GPU}, not {name}")
        n = r.get("replicas")
        if not isinstance(n, int) or isinstance(n, bool) or n < 2:
            raise DevicePluginConfigError(f"{rw}: number of replicas must be >= 2, got {n!r}")
        if name in replicas:
            raise DevicePluginConfigError(f"{rw}: duplicate resource {name}")
        replicas[name] = n
    return rename, fail, replicas


def parse_config_file(text: str) -> SharingConfig:
    """Parse a device-plugin v1 config file. Raises DevicePluginConfigError."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise DevicePluginConfigError(f"not valid YAML: {e}") from None
    if not isinstance(raw, Mapping):
        raise DevicePluginConfigError("config file must be a mapping")
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        raise DevicePluginConfigError(f"unknown top-level field(s) {sorted(unknown)}")
    if raw.get("version") != "v1":
        raise DevicePluginConfigError(f"version must be 'v1', got {raw.get('version')!r}")
    flags = raw.get("flags") or {}
    if not isinstance(flags, Mapping):
        raise DevicePluginConfigError("flags must be a mapping")
    mig_strategy = flags.get("migStrategy")
    if mig_strategy is not None and mig_strategy not in MIG_STRATEGIES:
        raise DevicePluginConfigError(
            f"flags.migStrategy must be one of {MIG_STRATEGIES}, got {mig_strategy!r}"
        )
    sharing = raw.get("sharing") or {}
    if not isinstance(sharing, Mapping) or set(sharing) - {"timeSlicing", "mps"}:
        raise DevicePluginConfigError("sharing must be a mapping with timeSlicing and/or mps")
    ts = _parse_sharing(sharing.get("timeSlicing") or {}, "sharing.timeSlicing", mps=False)
    mp = _parse_sharing(sharing.get("mps") or {}, "sharing.mps", mps=True)
    if ts[2] and mp[2]:
        raise DevicePluginConfigError("time-slicing and MPS are mutually exclusive")
    if mp[2]:
        rename, fail, replicas, strategy = mp[0], True if mp[1] is None else mp[1], mp[2], "mps"
    elif ts[2]:
        rename, fail, replicas, strategy = ts[0], bool(ts[1]), ts[2], "time-slicing"
    else:
        rename, fail, replicas, strategy = False, False, {}, "none"
    return SharingConfig(
        strategy=strategy,
        rename_by_default=rename,
        fail_requests_greater_than_one=fail,
        replicas=tuple(sorted(replicas.items())),
        mig_strategy=mig_strategy,
    )


# --------------------------------------------------------------------------------------------------------------
# what the device plugin advertises and GFD labels


@dataclass
class NodeView:
    resources: dict[str, int]  # nvidia.com/* extended resources (capacity == allocatable)
    labels: dict[str, str]  # GFD labels (nvidia.com/mig-* labels not listed here are stale)
    problem: str | None = None  # why the device plugin is not serving (crash loop), if it is not
    mig_strategy: str = "none"
    notes: list[str] = field(default_factory=list)


def mig_resource(profile: str) -> str:
    return "nvidia.com/mig-" + profile.replace("+", ".")


def _label_value(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", ".", text)[:63]


def effective_mig_strategy(env: str | None, config_file: str | None, default_config: str) -> str:
    """The MIG strategy the plugin (and GFD) run with: ``MIG_STRATEGY`` from the environment wins over the config
    file's ``flags.migStrategy`` (api/config/v1/config.go ``NewConfig``, flags.go ``UpdateFromCLIFlags``);
    ``default_config`` is the strategy of the node's default config (``devicePlugin.config.default``)."""
    return env or config_file or default_config


def node_view(
    hw: GpuHardware,
    layout: Sequence[GpuLayout],
    sharing: SharingConfig | None,
    default_mig_strategy: str,
    config_error: str | None = None,
    env_mig_strategy: str | None = None,
) -> NodeView:
    """Extended resources and GFD labels for a node. ``sharing`` None means the default config (no
    sharing); ``config_error`` means the selected config file is broken (the plugin crash-loops);
    ``env_mig_strategy`` is the container's ``MIG_STRATEGY`` (None: not set)."""
    sharing = sharing or NO_SHARING
    model = hw.model
    strategy = effective_mig_strategy(env_mig_strategy, sharing.mig_strategy, default_mig_strategy)
    mig_gpus = [g for g in layout if g.mig_enabled]
    full_gpus = [g for g in layout if not g.mig_enabled]
    product = hw.product
    labels: dict[str, str] = {
        "nvidia.com/gpu.count": str(hw.gpus),
        "nvidia.com/gpu.memory": str(model.memory_mib),
        "nvidia.com/mig.capable": str(model.mig_capable).lower(),
    }
    if model.mig_capable:
        labels["nvidia.com/mig.strategy"] = strategy
    problem = config_error

    # devices before sharing, per MIG strategy (dp internal/rm/device_map.go, rm.go)
    base: dict[str, int] = {}
    mig_counts: dict[str, int] = {}
    for g in mig_gpus:
        for p, n in g.counts().items():
            mig_counts[p] = mig_counts.get(p, 0) + n
    if strategy == "none":
        base[GPU] = hw.gpus
    elif strategy == "mixed":
        base[GPU] = len(full_gpus)
        for p, n in mig_counts.items():
            base[mig_resource(p)] = n
    else:  # single
        if not mig_gpus:
            base[GPU] = hw.gpus
        elif full_gpus or len(mig_counts) != 1 or any(not g.devices for g in mig_gpus):
            problem = problem or (
                "mig-strategy=single needs every GPU MIG-enabled with exactly one MIG device type "
                f"(found {len(full_gpus)} MIG-disabled GPU(s) and types {sorted(mig_counts) or 'none'})"
            )
            product = f"{hw.product}-MIG-INVALID"
            labels["nvidia.com/gpu.count"] = "0"
            labels["nvidia.com/gpu.memory"] = "0"
        else:
            (only,) = mig_counts
            base[GPU] = mig_counts[only]
            product = f"{hw.product}-MIG-{only}"
            labels["nvidia.com/gpu.count"] = str(mig_counts[only])
            labels["nvidia.com/gpu.memory"] = str(model.profile(only).memory_mib)

    # sharing (dp api/config/v1/sharing.go; cmd/nvidia-device-plugin/main.go validateFlags: "using
    # --mig-strategy=mixed is not supported with MPS", checked on the strategy in effect, env included)
    if sharing.strategy == "mps":
        if mig_gpus:
            problem = problem or "sharing with MPS is not supported on devices with MIG enabled"
        elif strategy == "mixed":
            problem = problem or "using --mig-strategy=mixed is not supported with MPS"
        elif sharing.replicas_of(GPU) > model.mps_max_clients:
            problem = (
                problem or f"MPS replicas {sharing.replicas_of(GPU)} exceed {model.mps_max_clients} clients"
            )
    resources: dict[str, int] = {}
    for name, n in base.items():
        r = sharing.replicas_of(name)
        if r > 1 and n > 0:
            if sharing.rename_by_default:
                resources[name] = 0
                resources[name + SHARED_SUFFIX] = n * r
            else:
                resources[name] = n * r
        else:
            resources[name] = n

    gpu_replicas = sharing.replicas_of(GPU)
    gpu_shared = gpu_replicas > 1 and base.get(GPU, 0) > 0
    labels["nvidia.com/gpu.replicas"] = str(gpu_replicas)
    labels["nvidia.com/gpu.sharing-strategy"] = sharing.strategy if gpu_shared else "none"
    labels["nvidia.com/gpu.product"] = _label_value(
        product + ("-SHARED" if gpu_shared and not sharing.rename_by_default else "")
    )
    labels["nvidia.com/mps.capable"] = str(sharing.strategy == "mps" and problem is None).lower()
    if strategy == "mixed":
        for p, n in mig_counts.items():
            prof = model.profile(p)
            key = mig_resource(p)
            r = sharing.replicas_of(key)
            shared = r > 1
            labels[f"{key}.count"] = str(n)
            labels[f"{key}.memory"] = str(prof.memory_mib)
            labels[f"{key}.slices.gi"] = str(prof.compute_slices)
            labels[f"{key}.slices.ci"] = str(prof.compute_slices)
            labels[f"{key}.replicas"] = str(r)
            labels[f"{key}.sharing-strategy"] = sharing.strategy if shared else "none"
            suffix = "-SHARED" if shared and not sharing.rename_by_default else ""
            labels[f"{key}.product"] = _label_value(f"{hw.product}-MIG-{p}{suffix}")

    if problem is not None:  # the plugin crash-loops: the kubelet keeps its resources at 0
        resources = dict.fromkeys(resources, 0)
    return NodeView(resources=resources, labels=labels, problem=problem, mig_strategy=strategy)
