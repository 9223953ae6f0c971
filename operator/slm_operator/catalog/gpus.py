"""GPU catalog: per-GPU MIG geometry, GFD product labels and PCI ids (data in ``gpus.yaml``).

Pure module: pydantic + pyyaml only. The YAML is loaded and validated when this module is imported, so a
broken catalog fails at start-up (and in the unit tests), not in the middle of a reconcile.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from functools import lru_cache
from importlib import resources
from itertools import pairwise
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from slm_operator.contract import MIG_RESOURCE_PREFIX, NVIDIA_PREFIX, mig_resource

MiB = 1 << 20
_PACKAGE = "slm_operator.catalog"

_PROFILE_NAME = re.compile(r"^(?P<g>[1-9][0-9]*)g\.(?P<gb>[1-9][0-9]*)gb(?P<attr>\+me)?$")
_PCI_ID = re.compile(r"^0x[0-9a-f]{4}$")
_CC = re.compile(r"^[0-9]+\.[0-9]+$")
# GFD: characters outside [A-Za-z0-9-_. ] are removed, then spaces become '-'.
_GFD_DROP = re.compile(r"[^A-Za-z0-9\-_. ]")
_VENDOR_PREFIXES = ("nvidia-", "tesla-")
_NVIDIA_VENDOR_ID = "10de"


class MigProfile(BaseModel):
    """One GPU-instance profile of one GPU model (as mig-parted / ``nvidia-smi mig -lgip`` spell it)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description='"1g.10gb", "1g.10gb+me"')
    profile_id: int | None = Field(
        description="nvidia-smi GI profile ID (19, 20, 15, 14, 9, 5, 0) when known"
    )
    compute_slices: int = Field(ge=1, description="G, SM slices")
    memory_slices: int = Field(ge=1, description="memory slices occupied")
    memory_mib: int = Field(
        ge=1, description="usable memory reported by nvidia-smi -lgip (not the name's GB)"
    )
    max_count: int = Field(ge=1)
    starts: tuple[int, ...] = Field(
        min_length=1, description="legal placement start slots (memory-slice index)"
    )
    media_extensions: bool = Field(description="a +me profile")

    @model_validator(mode="before")
    @classmethod
    def _default_media_extensions(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "media_extensions" not in data:
            return {**data, "media_extensions": str(data.get("name", "")).endswith("+me")}
        return data

    @field_validator("starts")
    @classmethod
    def _sorted_unique_starts(cls, starts: tuple[int, ...]) -> tuple[int, ...]:
        if list(starts) != sorted(set(starts)) or starts[0] < 0:
            raise ValueError(f"starts must be distinct, ascending and >= 0, got {starts}")
        return starts

    @model_validator(mode="after")
    def _check(self) -> MigProfile:
        m = _PROFILE_NAME.match(self.name)
        if m is None:
            raise ValueError(f"profile name {self.name!r} is not of the form '<G>g.<GB>gb[+me]'")
        if int(m["g"]) != self.compute_slices:
            raise ValueError(f"profile {self.name}: compute_slices {self.compute_slices} != name's G")
        if self.media_extensions != (m["attr"] is not None):
            raise ValueError(f"profile {self.name}: media_extensions must be true exactly for '+me' profiles")
        for start in self.starts:
            if start % self.memory_slices:
                raise ValueError(
                    f"profile {self.name}: start {start} is not a multiple of {self.memory_slices}"
                )
        return self

    @property
    def memory_bytes(self) -> int:
        return self.memory_mib * MiB

    @property
    def resource_name(self) -> str:
        """Extended-resource name the device plugin's ``mixed`` strategy advertises ('+' becomes '.')."""
        return mig_resource(self.name)

    def slots(self, start: int) -> frozenset[int]:
        """Memory slices occupied when placed at ``start``."""
        return frozenset(range(start, start + self.memory_slices))


def max_non_overlapping(profile: MigProfile) -> int:
    """Greatest number of instances of ``profile`` alone that fit without overlapping memory slices."""
    count, free_from = 0, 0
    for start in profile.starts:  # ascending; greedy earliest-end is optimal for equal-length intervals
        if start >= free_from:
            count += 1
            free_from = start + profile.memory_slices
    return count


def find_layout(gpu: GpuModel, counts: Mapping[str, int]) -> dict[str, tuple[int, ...]] | None:
    """Legal start slots for ``counts`` ({profile name: instances}) on one ``gpu``, or None if impossible.

    Exhaustive (tiny search space: at most 8 memory slices). Checks memory-slice overlap, the per-profile
    ``max_count`` and the total compute slices.
    """
    wanted: list[MigProfile] = []
    for name, n in counts.items():
        if n < 0:
            raise ValueError(f"negative count for {name}")
        profile = gpu.profile(name)
        if n > profile.max_count:
            return None
        wanted.extend([profile] * n)
    if sum(p.compute_slices for p in wanted) > gpu.compute_slices:
        return None
    if sum(1 for p in wanted if p.media_extensions) > 1:
        return None
    # Place big profiles first: fewer alternatives, earlier dead ends.
    wanted.sort(key=lambda p: (-p.memory_slices, p.name))
    chosen: list[int] = []

    def place(i: int, used: frozenset[int]) -> bool:
        if i == len(wanted):
            return True
        profile = wanted[i]
        # Identical profiles are placed at ascending starts to avoid permutations of the same layout.
        lo = chosen[i - 1] + 1 if i and wanted[i - 1] is profile else 0
        for start in profile.starts:
            if start < lo:
                continue
            slots = profile.slots(start)
            if used.isdisjoint(slots):
                chosen.append(start)
                if place(i + 1, used | slots):
                    return True
                chosen.pop()
        return False

    if not place(0, frozenset()):
        return None
    layout: dict[str, list[int]] = {}
    for profile, start in zip(wanted, chosen, strict=True):
        layout.setdefault(profile.name, []).append(start)
    return {name: tuple(sorted(starts)) for name, starts in layout.items()}


class GpuModel(BaseModel):
    """One GPU model (a group of SKUs with the same MIG geometry), keyed by ``key``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key: str = Field(min_length=1, description='"H100-80GB", "A100-40GB", "L4", ...')
    products: tuple[str, ...] = Field(min_length=1, description="nvidia.com/gpu.product values GFD writes")
    pci_device_ids: tuple[str, ...] = Field(min_length=1, description='"0x2330" (device id only, lower-case)')
    memory_mib: int = Field(ge=1)
    compute_capability: str
    mig_capable: bool
    memory_slices: int = Field(ge=0, description="8 (A100/H100/H200/B200/GH200), 4 (A30), 0 if not MIG")
    compute_slices: int = Field(ge=0, description="7 (4 on A30), 0 if not MIG")
    mig_profiles: tuple[MigProfile, ...] = ()
    all_balanced: dict[str, int] = Field(default_factory=dict, description="mig-parted all-balanced")
    mps_max_clients: int = Field(ge=1, description="48 (CC >= 7.5), 16 otherwise")

    def __hash__(self) -> int:  # all_balanced is a dict; the key identifies a catalog entry
        return hash(self.key)

    @field_validator("pci_device_ids")
    @classmethod
    def _normalise_pci_ids(cls, ids: tuple[str, ...]) -> tuple[str, ...]:
        out = tuple(i.strip().lower() for i in ids)
        for i in out:
            if not _PCI_ID.match(i):
                raise ValueError(f"PCI device id {i!r} is not of the form '0x1234'")
        return out

    @model_validator(mode="after")
    def _check(self) -> GpuModel:
        where = f"GPU {self.key}"
        self._check_mps_clients(where)
        if not self.mig_capable:
            if self.memory_slices or self.compute_slices or self.mig_profiles or self.all_balanced:
                raise ValueError(f"{where}: a non-MIG GPU has no slices, profiles or all_balanced layout")
            return self
        if (
            self.memory_slices < 1
            or self.compute_slices < 1
            or not self.mig_profiles
            or not self.all_balanced
        ):
            raise ValueError(f"{where}: a MIG GPU needs slices, profiles and an all_balanced layout")
        names = [p.name for p in self.mig_profiles]
        if len(set(names)) != len(names):
            raise ValueError(f"{where}: duplicate MIG profile names")
        by_slices: dict[int, int] = {}
        for p in self.mig_profiles:
            pw = f"{where} profile {p.name}"
            self._check_profile(p, pw)
            if by_slices.setdefault(p.memory_slices, p.memory_mib) != p.memory_mib:
                raise ValueError(f"{pw}: profiles with the same memory slices must have the same memory")
        for (_, small), (_, big) in pairwise(sorted(by_slices.items())):
            if big <= small:
                raise ValueError(f"{where}: profile memory must grow with memory slices")
        self._check_all_balanced(where, names)
        return self

    def _check_mps_clients(self, where: str) -> None:
        """The compute capability is 'X.Y' and MPS's client limit is the one for it (48 from 7.5 on, else 16)."""
        if not _CC.match(self.compute_capability):
            raise ValueError(f"{where}: compute_capability {self.compute_capability!r} is not 'X.Y'")
        major, minor = (int(x) for x in self.compute_capability.split("."))
        expected_clients = 48 if (major, minor) >= (7, 5) else 16
        if self.mps_max_clients != expected_clients:
            raise ValueError(f"{where}: mps_max_clients must be {expected_clients} for CC {major}.{minor}")

    def _check_profile(self, p: MigProfile, pw: str) -> None:
        """One MIG profile fits the GPU and its max_count follows from its placements."""
        if p.compute_slices > self.compute_slices:
            raise ValueError(f"{pw}: more compute slices than the GPU")
        if p.starts[-1] + p.memory_slices > self.memory_slices:
            raise ValueError(f"{pw}: placement beyond memory slice {self.memory_slices - 1}")
        if p.memory_mib >= self.memory_mib:
            raise ValueError(f"{pw}: usable memory must be less than the GPU's")
        expected = 1 if p.media_extensions else max_non_overlapping(p)
        if p.max_count != expected:
            raise ValueError(f"{pw}: max_count {p.max_count} != {expected} (from the placements)")
        if p.max_count * p.compute_slices > self.compute_slices:
            raise ValueError(f"{pw}: max_count exceeds the compute slices")

    def _check_all_balanced(self, where: str, names: list[str]) -> None:
        """The all_balanced layout names known, non-+me profiles and is a legal layout."""
        for name in self.all_balanced:
            if name not in names:
                raise ValueError(f"{where}: all_balanced names unknown profile {name!r}")
            if self.profile(name).media_extensions:
                raise ValueError(f"{where}: all_balanced must not use +me profiles")
        if find_layout(self, self.all_balanced) is None:
            raise ValueError(f"{where}: all_balanced {self.all_balanced} is not a legal layout")

    @property
    def memory_bytes(self) -> int:
        return self.memory_mib * MiB

    def profile(self, name: str) -> MigProfile:
        """The MIG profile called ``name``; also accepts the resource forms ``mig-1g.10gb.me`` and
        ``nvidia.com/mig-1g.10gb``. Raises KeyError when this GPU has no such profile."""
        wanted = (
            name.strip()
            .lower()
            .removeprefix(MIG_RESOURCE_PREFIX)
            .removeprefix(NVIDIA_PREFIX)
            .removeprefix("mig-")
            .replace("+", ".")
        )
        for p in self.mig_profiles:
            if p.name.replace("+", ".") == wanted:
                return p
        raise KeyError(f"GPU {self.key} has no MIG profile {name!r}")


def sanitize_product_name(nvml_name: str) -> str:
    """The ``nvidia.com/gpu.product`` value GFD derives from an NVML device name."""
    return _GFD_DROP.sub("", nvml_name.strip()).replace(" ", "-")


def _strip_vendor(label: str) -> str:
    for prefix in _VENDOR_PREFIXES:
        if label.startswith(prefix):
            return label[len(prefix) :]
    return label


def _base_product(label: str) -> str:
    """Lower-cased product without GFD's sharing / single-strategy suffixes."""
    base = sanitize_product_name(label).lower()
    base = base.removesuffix("-shared")
    cut = base.find("-mig-")
    if cut > 0:
        base = base[:cut]
    return base


def _load(text: str) -> tuple[GpuModel, ...]:
    raw = yaml.safe_load(text)
    if not isinstance(raw, dict) or not isinstance(raw.get("gpus"), list):
        raise ValueError("gpus.yaml must be a mapping with a 'gpus' list")
    gpus = tuple(GpuModel.model_validate(item) for item in raw["gpus"])
    _check_unique("GPU key", (g.key.lower() for g in gpus))
    _check_unique("product label", (p.lower() for g in gpus for p in g.products))
    _check_unique(
        "product label without vendor prefix",
        (s for g in gpus for s in {_strip_vendor(p.lower()) for p in g.products}),
    )
    _check_unique("PCI device id", (i for g in gpus for i in g.pci_device_ids))
    return gpus


def _check_unique(what: str, values: Iterable[str]) -> None:
    seen: set[str] = set()
    for v in values:
        if v in seen:
            raise ValueError(f"duplicate {what} {v!r} in gpus.yaml")
        seen.add(v)


@lru_cache(maxsize=1)
def gpu_models() -> tuple[GpuModel, ...]:
    """Every GPU in the catalog, in catalog order."""
    return _load(resources.files(_PACKAGE).joinpath("gpus.yaml").read_text(encoding="utf-8"))


@lru_cache(maxsize=1)
def _by_key() -> dict[str, GpuModel]:
    return {g.key.lower(): g for g in gpu_models()}


@lru_cache(maxsize=1)
def _by_product() -> dict[str, GpuModel]:
    table: dict[str, GpuModel] = {}
    for g in gpu_models():
        for p in g.products:
            table[p.lower()] = g
    for g in gpu_models():  # vendor-less aliases ("A100-SXM4-40GB"), never shadowing a real label
        for p in g.products:
            table.setdefault(_strip_vendor(p.lower()), g)
    return table


@lru_cache(maxsize=1)
def _by_pci() -> dict[str, GpuModel]:
    return {i: g for g in gpu_models() for i in g.pci_device_ids}


def gpu_by_key(key: str) -> GpuModel:
    """The catalog GPU with this key (case-insensitive). Raises KeyError."""
    try:
        return _by_key()[key.strip().lower()]
    except KeyError:
        raise KeyError(f"unknown GPU key {key!r}") from None


@lru_cache(maxsize=256)
def gpu_by_product(product_label: str) -> GpuModel | None:
    """The catalog GPU for a ``nvidia.com/gpu.product`` label value, or None.

    Tolerates GFD's single-strategy suffixes ("-MIG-1g.5gb", "-MIG-INVALID"), the "-SHARED" suffix, a missing
    "NVIDIA-"/"Tesla-" prefix, different case and a raw NVML name with spaces.
    """
    base = _base_product(product_label)
    if not base:
        return None
    table = _by_product()
    return table.get(base) or table.get(_strip_vendor(base))


@lru_cache(maxsize=256)
def gpu_by_pci_device_id(device_id: str) -> GpuModel | None:
    """The catalog GPU for a PCI device id, or None.

    Accepts "0x2330", "2330", "0x233010DE" (NVML's packed device+vendor, mig-parted device-filter form,
    optionally with ":0x<subsystem>") and "10de:2330" (lspci form).
    """
    s = device_id.strip().lower()
    if s.startswith("10de:"):
        s = s[len("10de:") :]
    s = s.split(":", 1)[0].removeprefix("0x")
    if len(s) == 8 and s.endswith(_NVIDIA_VENDOR_ID):
        s = s[:4]
    if not re.fullmatch(r"[0-9a-f]{1,4}", s):
        return None
    return _by_pci().get("0x" + s.zfill(4))


# Validate the shipped catalog at import time.
gpu_models()
