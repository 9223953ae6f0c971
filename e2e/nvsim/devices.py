"""The GPUs the simulator knows: its own device facts, independent of the operator's catalog.

The simulator is an oracle for the operator, so it must not read the operator's catalog: a wrong fact there would
then be wrong here too and no test could see it. Each table below is copied from its public source (also in
/work/shared/facts/gpu-sharing.md sections 1.2-1.5):

* MIG profiles (compute slices, memory slices, max instances): NVIDIA MIG user guide, "Supported MIG Profiles"
  (Table 6 "GPU Instance Profiles on A100", Table 7 "GPU Instance Profiles on H100").
* Placements (valid start memory slices): ``nvidia-smi mig -lgipp`` printouts (A100-40GB: MIG guide
  "Getting started"; H100 80GB HBM3: published printout).
* Usable memory per profile: the "Memory GiB" column of ``nvidia-smi mig -lgip`` (x 1024 MiB, rounded down).
* PCI device ids and the ``all-balanced`` layouts: NVIDIA/mig-parted ``examples/config.yaml`` /
  gpu-operator ``assets/state-mig-manager/0400_configmap.yaml`` (``default-mig-parted-config``).
* MPS clients: NVIDIA/k8s-device-plugin ``cmd/mps-control-daemon/mps/device.go`` (``maxClients``: 48 from
  compute capability 7.5 on).
* Whole-GPU memory (GFD ``nvidia.com/gpu.memory``): NVML ``nvmlDeviceGetMemoryInfo`` total as printed by
  ``nvidia-smi`` on each product.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Profile:
    """One MIG GPU-instance profile."""

    name: str
    compute_slices: int
    memory_slices: int
    memory_mib: int
    max_count: int
    starts: tuple[int, ...]

    @property
    def media_extensions(self) -> bool:
        return self.name.endswith("+me")


@dataclass(frozen=True)
class Device:
    """One GPU model as the simulated driver, mig-parted, the device plugin and GFD see it."""

    key: str
    products: tuple[str, ...]  # GFD nvidia.com/gpu.product values
    pci_device_ids: tuple[str, ...]
    memory_mib: int
    mps_max_clients: int = 48
    memory_slices: int = 0
    compute_slices: int = 0
    mig_profiles: tuple[Profile, ...] = ()
    all_balanced: Mapping[str, int] = field(default_factory=dict)

    @property
    def mig_capable(self) -> bool:
        return bool(self.mig_profiles)

    def profile(self, name: str) -> Profile:
        for p in self.mig_profiles:
            if p.name == name:
                return p
        raise KeyError(name)


_SEVEN = (0, 1, 2, 3, 4, 5, 6)

DEVICES: tuple[Device, ...] = (
    Device(
        key="A100-40GB",
        products=("NVIDIA-A100-SXM4-40GB", "NVIDIA-A100-PCIE-40GB"),
        pci_device_ids=("0x20b0", "0x20f1"),
        memory_mib=40960,
        memory_slices=8,
        compute_slices=7,
        mig_profiles=(
            Profile("1g.5gb", 1, 1, 4864, 7, _SEVEN),
            Profile("1g.5gb+me", 1, 1, 4864, 1, _SEVEN),
            Profile("1g.10gb", 1, 2, 9850, 4, (0, 2, 4, 6)),
            Profile("2g.10gb", 2, 2, 9850, 3, (0, 2, 4)),
            Profile("3g.20gb", 3, 4, 19968, 2, (0, 4)),
            Profile("4g.20gb", 4, 4, 19968, 1, (0,)),
            Profile("7g.40gb", 7, 8, 40192, 1, (0,)),
        ),
        all_balanced={"1g.5gb": 2, "2g.10gb": 1, "3g.20gb": 1},
    ),
    Device(
        key="H100-80GB",
        products=("NVIDIA-H100-80GB-HBM3", "NVIDIA-H100-PCIe"),
        pci_device_ids=("0x2330", "0x2331"),
        memory_mib=81559,
        memory_slices=8,
        compute_slices=7,
        mig_profiles=(
            Profile("1g.10gb", 1, 1, 9984, 7, _SEVEN),
            Profile("1g.10gb+me", 1, 1, 9984, 1, _SEVEN),
            Profile("1g.20gb", 1, 2, 20090, 4, (0, 2, 4, 6)),
            Profile("2g.20gb", 2, 2, 20090, 3, (0, 2, 4)),
            Profile("3g.40gb", 3, 4, 40448, 2, (0, 4)),
            Profile("4g.40gb", 4, 4, 40448, 1, (0,)),
            Profile("7g.80gb", 7, 8, 81152, 1, (0,)),
        ),
        all_balanced={"1g.10gb": 2, "2g.20gb": 1, "3g.40gb": 1},
    ),
    Device(key="L4", products=("NVIDIA-L4",), pci_device_ids=("0x27b8",), memory_mib=23034),
    Device(key="L40S", products=("NVIDIA-L40S",), pci_device_ids=("0x26b9",), memory_mib=46068),
)


def device_by_product(product: str) -> Device | None:
    """The simulated GPU model of a GFD product label (``-SHARED`` and ``-MIG-…`` suffixes ignored)."""
    base = product.removesuffix("-SHARED")
    cut = base.find("-MIG-")
    base = base[:cut] if cut > 0 else base
    return next((d for d in DEVICES if base in d.products), None)
