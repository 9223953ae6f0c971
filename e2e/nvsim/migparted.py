"""mig-parted v1 config files and the MIG geometry the simulated mig-manager applies (no Kubernetes here).

Schema: NVIDIA/mig-parted ``api/spec/v1/spec.go`` (``Spec``/``MigConfigSpec`` UnmarshalJSON: unknown fields,
version ``v1``, ``devices`` "all" or indices, ``mig-devices`` only with ``mig-enabled``) and
``pkg/types/mig_profile.go`` (``AssertValidFormat``: profile names); facts: /work/shared/facts/gpu-sharing.md
section 3.1. ``nvidia-mig-parted assert --valid-config`` (``cmd/nvidia-mig-parted/assert/assert.go``) parses the
file and fails with "selected mig-config not present: <name>" when the name is missing. Geometry: the
simulator's own device tables (:mod:`e2e.nvsim.devices`, each with its source); the placement search below is
the simulator's own, independent of the operator's catalog and planner, so the simulator can act as an oracle.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from .devices import Device as GpuModel

NVIDIA_VENDOR = "10de"
_TOP_KEYS = {"version", "mig-configs"}
_SPEC_KEYS = {"device-filter", "devices", "mig-enabled", "mig-devices"}
# mig-parted AssertValidFormat: "<G>g.<GB>gb" GPU-instance profiles, optionally "<C>c." compute-instance
# prefixed, with attributes "+me", "+me.all", "+gfx", "-me".
_PROFILE_FORMAT = re.compile(
    r"^(?:(?P<c>[1-9][0-9]*)c\.)?[1-9][0-9]*g\.[1-9][0-9]*gb(?:\+me\.all|\+me|\+gfx|-me)?$"
)
_DEVICE_ID = re.compile(r"^0x[0-9a-f]{8}(?::0x[0-9a-f]{8})?$")


class MigConfigError(ValueError):
    """A config that mig-parted would reject (format) or fail to apply (hardware)."""


@dataclass(frozen=True)
class MigSpec:
    """One entry of a named config (``MigConfigSpec``)."""

    devices: str | tuple[int, ...]  # "all" or GPU indices
    mig_enabled: bool
    mig_devices: tuple[tuple[str, int], ...] = ()
    device_filter: tuple[str, ...] = ()  # normalised "0x233010de" or "0x233010de:0x16c110de"

    def to_json(self) -> dict[str, Any]:
        return {
            "device-filter": list(self.device_filter),
            "devices": self.devices if self.devices == "all" else list(self.devices),
            "mig-enabled": self.mig_enabled,
            "mig-devices": dict(self.mig_devices),
        }


@dataclass(frozen=True)
class GpuHardware:
    """What the simulated node's GPUs are (from the node's ``nvsim.slm.io/hardware`` annotation)."""

    model: GpuModel
    product: str
    gpus: int
    pci_device_id: str  # "0x2330"
    pci_subsystem_id: str | None = None  # "0x16c110de" when known

    @property
    def device_vendor_id(self) -> str:
        return self.pci_device_id.lower() + NVIDIA_VENDOR


@dataclass(frozen=True)
class MigDevice:
    profile: str
    start: int
    size: int


@dataclass(frozen=True)
class GpuLayout:
    """The simulated hardware state of one GPU: MIG mode and its GPU instances with their placements."""

    index: int
    mig_enabled: bool
    devices: tuple[MigDevice, ...] = field(default=())

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for d in self.devices:
            out[d.profile] = out.get(d.profile, 0) + 1
        return out

    def same_config(self, other: GpuLayout) -> bool:
        """What ``mig-parted assert`` compares: the MIG mode and the multiset of profiles (not placements)."""
        return self.mig_enabled == other.mig_enabled and self.counts() == other.counts()

    def to_json(self) -> dict[str, Any]:
        return {
            "gpu": self.index,
            "mig": self.mig_enabled,
            "devices": [{"profile": d.profile, "start": d.start, "size": d.size} for d in self.devices],
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> GpuLayout:
        devices = tuple(MigDevice(str(d["profile"]), int(d["start"]), int(d["size"])) for d in raw["devices"])
        return cls(index=int(raw["gpu"]), mig_enabled=bool(raw["mig"]), devices=devices)


def all_disabled_layout(gpus: int) -> list[GpuLayout]:
    return [GpuLayout(index=i, mig_enabled=False) for i in range(gpus)]


def layout_to_json(layout: Sequence[GpuLayout]) -> str:
    return json.dumps([g.to_json() for g in layout], separators=(",", ":"))


def layout_from_json(text: str, gpus: int) -> list[GpuLayout]:
    layout = [GpuLayout.from_json(item) for item in json.loads(text)]
    if [g.index for g in layout] != list(range(gpus)):
        raise ValueError(f"layout annotation does not describe GPUs 0..{gpus - 1}")
    return layout


# --------------------------------------------------------------------------------------------------------------
# config files


def _device_id(raw: Any, where: str) -> str:
    # YAML 1.1 reads an unquoted 0x233010DE as an int.
    text = f"0x{raw:08x}" if isinstance(raw, int) and not isinstance(raw, bool) else str(raw).strip().lower()
    if not _DEVICE_ID.match(text):
        raise MigConfigError(
            f"{where}: invalid device-filter {raw!r} (want 0x<device><vendor>[:0x<subsystem>])"
        )
    return text


def _parse_spec(raw: Any, where: str) -> MigSpec:
    if not isinstance(raw, Mapping):
        raise MigConfigError(f"{where}: each entry must be a mapping")
    unknown = set(raw) - _SPEC_KEYS
    if unknown:
        raise MigConfigError(f"{where}: unknown field(s) {sorted(unknown)}")
    filt = raw.get("device-filter")
    if filt is None:
        device_filter: tuple[str, ...] = ()
    elif isinstance(filt, list):
        device_filter = tuple(_device_id(x, where) for x in filt)
    else:
        device_filter = (_device_id(filt, where),)
    if "devices" not in raw:
        raise MigConfigError(f"{where}: missing required field 'devices'")
    devices_raw = raw["devices"]
    if devices_raw == "all":
        devices: str | tuple[int, ...] = "all"
    elif isinstance(devices_raw, list) and all(
        isinstance(i, int) and not isinstance(i, bool) for i in devices_raw
    ):
        if any(i < 0 for i in devices_raw):
            raise MigConfigError(f"{where}: negative device index in {devices_raw}")
        devices = tuple(devices_raw)
    else:
        raise MigConfigError(
            f"{where}: 'devices' must be 'all' or a list of GPU indices, got {devices_raw!r}"
        )
    if not isinstance(raw.get("mig-enabled"), bool):
        raise MigConfigError(f"{where}: 'mig-enabled' (true|false) is required")
    enabled = raw["mig-enabled"]
    mig_devices_raw = raw.get("mig-devices")
    if not enabled:
        if mig_devices_raw:
            raise MigConfigError(f"{where}: 'mig-devices' must be empty when 'mig-enabled' is false")
        return MigSpec(devices=devices, mig_enabled=False, device_filter=device_filter)
    if mig_devices_raw is None:
        raise MigConfigError(f"{where}: 'mig-devices' is required when 'mig-enabled' is true")
    if not isinstance(mig_devices_raw, Mapping):
        raise MigConfigError(f"{where}: 'mig-devices' must be a mapping of profile -> count")
    mig_devices: list[tuple[str, int]] = []
    for name, count in mig_devices_raw.items():
        if not isinstance(name, str) or not _PROFILE_FORMAT.match(name):
            raise MigConfigError(f"{where}: invalid MIG profile name {name!r}")
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise MigConfigError(f"{where}: count for {name} must be an integer >= 0, got {count!r}")
        mig_devices.append((name, count))
    return MigSpec(
        devices=devices, mig_enabled=True, mig_devices=tuple(mig_devices), device_filter=device_filter
    )


def parse_config_file(text: str) -> dict[str, list[MigSpec]]:
    """Parse a mig-parted v1 config file into {config name: specs}. Raises MigConfigError."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise MigConfigError(f"config file is not valid YAML: {e}") from None
    if not isinstance(raw, Mapping):
        raise MigConfigError("config file must be a mapping with 'version' and 'mig-configs'")
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        raise MigConfigError(f"config file: unknown top-level field(s) {sorted(unknown)}")
    if raw.get("version") != "v1":
        raise MigConfigError(f"config file: version must be 'v1', got {raw.get('version')!r}")
    configs = raw.get("mig-configs")
    if not isinstance(configs, Mapping) or not configs:
        raise MigConfigError("config file: 'mig-configs' must be a non-empty mapping")
    out: dict[str, list[MigSpec]] = {}
    for name, specs in configs.items():
        if not isinstance(specs, list) or not specs:
            raise MigConfigError(f"mig-configs[{name}]: must be a non-empty list")
        out[str(name)] = [_parse_spec(s, f"mig-configs[{name}][{i}]") for i, s in enumerate(specs)]
    return out


def builtin_configs(model: GpuModel) -> dict[str, list[MigSpec]]:
    """The names of the GPU Operator's ``default-mig-parted-config`` (gpu-operator
    ``assets/state-mig-manager/0400_configmap.yaml``): all-disabled, all-enabled, all-balanced and
    all-<profile> ('+' -> '.') with count = the profile's instance count."""
    out: dict[str, list[MigSpec]] = {
        "all-disabled": [MigSpec(devices="all", mig_enabled=False)],
        "all-enabled": [MigSpec(devices="all", mig_enabled=True)],
    }
    if model.mig_capable:
        out["all-balanced"] = [MigSpec("all", True, tuple(sorted(model.all_balanced.items())))]
        for p in model.mig_profiles:
            out["all-" + p.name.replace("+", ".")] = [MigSpec("all", True, ((p.name, p.max_count),))]
    return out


def specs_hash(specs: Sequence[MigSpec] | None) -> str:
    if specs is None:
        return "missing"
    text = json.dumps([s.to_json() for s in specs], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------------------------
# geometry


def _matches_filter(spec: MigSpec, hw: GpuHardware) -> bool:
    if not spec.device_filter:
        return True
    for f in spec.device_filter:
        base, _, subsystem = f.partition(":")
        if base != hw.device_vendor_id:
            continue
        if not subsystem or (hw.pci_subsystem_id and subsystem == hw.pci_subsystem_id.lower()):
            return True
    return False


def find_placement(model: GpuModel, counts: Mapping[str, int]) -> list[MigDevice] | None:
    """Non-overlapping placements for ``counts`` on one GPU of ``model`` or None (exhaustive search).

    Rules (facts section 1.1-1.4): an instance of a profile occupies ``memory_slices`` consecutive memory slices
    from one of its legal ``starts``; no two instances overlap; total compute slices <= the GPU's; at most
    ``max_count`` per profile and at most one media-extension (+me) instance per GPU.
    """
    wanted = []
    for name, n in counts.items():
        profile = model.profile(name)
        if n > profile.max_count:
            return None
        wanted += [profile] * n
    if sum(p.compute_slices for p in wanted) > model.compute_slices:
        return None
    if sum(p.memory_slices for p in wanted) > model.memory_slices:
        return None
    if sum(p.memory_mib for p in wanted) > model.memory_mib:
        return None
    if sum(1 for p in wanted if p.media_extensions) > 1:
        return None
    wanted.sort(key=lambda p: (-p.memory_slices, len(p.starts), p.name))
    starts: list[int] = []

    def place(i: int, used: int) -> bool:
        if i == len(wanted):
            return True
        p = wanted[i]
        lowest = starts[-1] + 1 if i and wanted[i - 1].name == p.name else 0
        for s in p.starts:
            mask = ((1 << p.memory_slices) - 1) << s
            if s >= lowest and s + p.memory_slices <= model.memory_slices and not used & mask:
                starts.append(s)
                if place(i + 1, used | mask):
                    return True
                starts.pop()
        return False

    if not place(0, 0):
        return None
    devices = [MigDevice(p.name, s, p.memory_slices) for p, s in zip(wanted, starts, strict=True)]
    return sorted(devices, key=lambda d: (d.start, d.profile))


def _realise(spec: MigSpec, hw: GpuHardware, index: int) -> GpuLayout:
    model = hw.model
    if not spec.mig_enabled:
        return GpuLayout(index=index, mig_enabled=False)
    if not model.mig_capable:
        raise MigConfigError(f"GPU {index} ({hw.product}) does not support MIG")
    counts: dict[str, int] = {}
    for name, n in spec.mig_devices:
        m = _PROFILE_FORMAT.match(name)
        if m and m["c"]:
            raise MigConfigError(f"compute-instance profile {name} is not supported by the simulator")
        try:
            profile = model.profile(name)
        except KeyError:
            known = ", ".join(p.name for p in model.mig_profiles)
            raise MigConfigError(
                f"GPU {index} ({hw.product}): MIG profile {name} does not exist on {model.key} (known: {known})"
            ) from None
        if n:
            counts[profile.name] = counts.get(profile.name, 0) + n
    for name, n in counts.items():
        if n > model.profile(name).max_count:
            raise MigConfigError(
                f"GPU {index} ({hw.product}): {n}x {name} exceeds the maximum of {model.profile(name).max_count}"
            )
    devices = find_placement(model, counts)
    if devices is None:
        want = " + ".join(f"{n}x {p}" for p, n in counts.items())
        raise MigConfigError(
            f"GPU {index} ({hw.product}): no legal placement for {want} "
            f"({model.memory_slices} memory slices, {model.compute_slices} compute slices)"
        )
    return GpuLayout(index=index, mig_enabled=True, devices=tuple(devices))


def plan_layout(specs: Sequence[MigSpec], hw: GpuHardware, current: Sequence[GpuLayout]) -> list[GpuLayout]:
    """The per-GPU layout after applying ``specs`` (GPUs no spec selects keep their layout; a GPU selected by
    several specs gets the last one). Raises MigConfigError when mig-parted would fail to apply it."""
    new = list(current)
    for k, spec in enumerate(specs):
        if not _matches_filter(spec, hw):
            continue
        if spec.devices == "all":
            indices: Sequence[int] = range(hw.gpus)
        else:
            indices = spec.devices  # type: ignore[assignment]
            bad = [i for i in indices if i >= hw.gpus]
            if bad:
                raise MigConfigError(f"entry {k}: device index {bad} out of range (node has {hw.gpus} GPUs)")
        for i in indices:
            new[i] = _realise(spec, hw, i)
    return new
