"""Every mig-parted and device-plugin config the operator renders, read by NVIDIA's own Go parsers.

``tests_contracts/nvidia/validate/main.go`` (built by ``tests_contracts/nvidia/build.sh`` from the Go module
proxy, pinned in its go.mod: github.com/NVIDIA/mig-parted v0.10.0 and github.com/NVIDIA/k8s-device-plugin
v0.19.0) runs:

* mig-parted: ``cmd/nvidia-mig-parted/assert/assert.go`` ``ParseConfigFile`` + ``GetSelectedMigConfig`` (the
  path of ``nvidia-mig-parted assert --valid-config -f config.yaml -c NAME``), whose rules are in
  ``api/spec/v1/spec.go`` (``version: v1``; each entry needs ``devices`` (``all`` or a list of indices) and
  ``mig-enabled``; ``mig-devices`` required when enabled and refused when disabled; profile names checked by
  ``pkg/types/mig_config.go`` ``AssertValidFormat``), plus ``api/spec/v1/helpers.go`` ``MatchesDeviceFilter``
  against the GPU's PCI id (an entry whose filter matches no GPU is silently skipped by mig-parted);
* device plugin: ``api/config/v1/config.go`` ``NewConfig`` with the plugin's own flag defaults and environment
  variables (``cmd/nvidia-device-plugin/main.go``), so ``replicas.go`` (resources named, ``replicas >= 2``,
  devices) and ``sharing.go`` apply, then the checks of ``validateFlags`` in ``cmd/nvidia-device-plugin/main.go``
  (MPS refused with ``migStrategy: mixed`` or without an MPS root; unknown MIG strategy refused).

The configs come from the operator's planner and renderer on pools of every catalog GPU model x sharing policy
and the benchmark's mixed pools (tests_contracts/scenarios.py). Not checked here: whether a MIG layout fits the
GPU's placement rules (mig-parted asks NVML for that; the catalog and tests/test_planner_mig.py cover it).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from slm_operator.catalog import gpu_by_key
from slm_operator.render import (
    EXCLUSIVE_CONFIG,
    NVIDIA_VENDOR,
    device_plugin_documents,
    mig_parted_document,
)
from tests_contracts.conftest import missing
from tests_contracts.scenarios import PlannedNode, node_configs

BUILD = Path(__file__).resolve().parent / "nvidia" / "build.sh"
#: What the GPU Operator gives the plugin's container for MPS (its daemonset sets MPS_ROOT).
PLUGIN_ENV = {"MPS_ROOT": "/run/nvidia/mps"}


@cache
def validator() -> str:
    if shutil.which("go") is None:
        missing("no Go toolchain: the NVIDIA validator is built from the Go module proxy")
    done = subprocess.run(["bash", str(BUILD)], capture_output=True, text=True, check=False, timeout=1200)
    if done.returncode != 0:
        pytest.fail(f"building the NVIDIA validator failed:\n{done.stderr[-4000:]}")
    return done.stdout.strip().splitlines()[-1]


def validate(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    done = subprocess.run(
        [validator()], input=json.dumps(cases), capture_output=True, text=True, check=False, timeout=300
    )
    assert done.returncode == 0, done.stderr
    results: list[dict[str, Any]] = json.loads(done.stdout)
    assert [r["name"] for r in results] == [c["name"] for c in cases]
    return results


NODES = node_configs()


def test_the_scenarios_cover_every_kind_of_config() -> None:
    dp = {n.config.device_plugin_config for n in NODES}
    assert EXCLUSIVE_CONFIG in dp
    assert any(d.startswith("slm-mps-") for d in dp) and any(d.startswith("slm-ts-") for d in dp)
    assert any(n.config.mig_entries for n in NODES), "no MIG layout was planned"
    assert any(not n.config.mig_capable for n in NODES), "no node without MIG"


def _pci_ids(gpu_model: str) -> list[str]:
    return [f"{pci}{NVIDIA_VENDOR}" for pci in gpu_by_key(gpu_model).pci_device_ids]


def test_mig_parted_configs_pass_nvidia_mig_parted() -> None:
    """The whole ``config.yaml`` of the ConfigMap, and each node's entry selected from it by its label."""
    migs = [n for n in NODES if n.config.mig_capable]
    document = mig_parted_document(
        {n.config.mig_config: n.config.mig_entries for n in migs if n.config.mig_entries}
    )
    cases = [
        {
            "kind": "mig-parted",
            "name": n.case,
            "yaml": document,
            "select": n.config.mig_config,
            "pciDeviceIds": _pci_ids(n.gpu_model) if n.config.mig_entries else [],
        }
        for n in migs
    ]
    failures = {r["name"]: r["error"] for r in validate(cases) if r.get("error")}
    assert not failures, json.dumps(failures, indent=1)
    # Each node's entry alone in a document too (a ConfigMap holding only what one node needs must parse).
    alone = [
        {
            "kind": "mig-parted",
            "name": n.case,
            "yaml": mig_parted_document({n.config.mig_config: n.config.mig_entries}),
            "select": n.config.mig_config,
            "pciDeviceIds": _pci_ids(n.gpu_model),
        }
        for n in migs
        if n.config.mig_entries
    ]
    for case, result in zip(alone, validate(alone), strict=True):
        assert not result.get("error"), f"{case['name']}: {result['error']}"
        # What mig-parted understood is what the operator planned.
        want = yaml.safe_load(case["yaml"])["mig-configs"][case["select"]]
        got = [(e["devices"], e["mig-enabled"], e["mig-devices"] or {}) for e in result["parsed"]]
        assert got == [(e["devices"], e["mig-enabled"], e.get("mig-devices", {})) for e in want]


def _device_plugin_cases(nodes: tuple[PlannedNode, ...], env: dict[str, str]) -> list[dict[str, Any]]:
    docs = device_plugin_documents(
        {n.config.device_plugin_config: n.config.device_plugin_entry for n in nodes}
    )
    return [{"kind": "device-plugin", "name": name, "yaml": text, "env": env} for name, text in docs.items()]


def test_device_plugin_configs_pass_the_device_plugin() -> None:
    """Each key of the device plugin's ConfigMap, read as the plugin reads its config file (no MIG_STRATEGY in
    the environment: the config decides, as docs/install.md sets the GPU Operator up)."""
    cases = _device_plugin_cases(NODES, PLUGIN_ENV)
    results = validate(cases)
    failures = {r["name"]: r["error"] for r in results if r.get("error")}
    assert not failures, json.dumps(failures, indent=1)
    for case, result in zip(cases, results, strict=True):
        meant = yaml.safe_load(case["yaml"])
        parsed = result["parsed"]
        assert parsed["migStrategy"] == meant["flags"]["migStrategy"], case["name"]
        sharing = meant.get("sharing", {})
        want = "mps" if "mps" in sharing else "time-slicing" if "timeSlicing" in sharing else "none"
        assert parsed["sharing"] == want, case["name"]
        if want != "none":
            key = "mps" if want == "mps" else "timeSlicing"
            (resource,) = parsed["config"]["sharing"][key]["resources"]
            assert resource["replicas"] == sharing[key]["resources"][0]["replicas"]
            assert resource["rename"] == "nvidia.com/gpu.shared", case["name"]  # SHARED_GPU_RESOURCE


@pytest.mark.parametrize(
    ("kind", "text", "extra", "error"),
    [
        ("device-plugin", "version: v2\n", {}, "unknown version"),
        (
            "device-plugin",
            "version: v1\nsharing:\n  timeSlicing:\n    resources: [{name: nvidia.com/gpu, replicas: 1}]\n",
            {},
            "number of replicas must be >= 2",
        ),
        (
            "device-plugin",
            "version: v1\nflags: {migStrategy: mixed}\nsharing:\n  mps:\n    resources: [{name: nvidia.com/gpu, replicas: 4}]\n",
            {},
            "using --mig-strategy=mixed is not supported with MPS",
        ),
        ("device-plugin", "version: v1\nflags: {migStrategy: both}\n", {}, "unknown MIG strategy"),
        (
            "mig-parted",
            "version: v1\nmig-configs:\n  x: [{devices: all, mig-enabled: false, mig-devices: {1g.10gb: 7}}]\n",
            {"select": "x"},
            "MIG devices included when 'mig-enabled' is false",
        ),
        (
            "mig-parted",
            "version: v1\nmig-configs:\n  x: [{devices: all}]\n",
            {"select": "x"},
            "missing required field",
        ),
        (
            "mig-parted",
            "version: v1\nmig-configs:\n  x: [{devices: all, mig-enabled: true, mig-devices: {1g.10gb: 7}}]\n",
            {"select": "y"},
            "selected mig-config not present",
        ),
        (
            "mig-parted",
            "version: v1\nmig-configs:\n  x: [{device-filter: ['0x20B010DE'], devices: all, mig-enabled: false}]\n",
            {"select": "x", "pciDeviceIds": ["0x233010DE"]},
            "does not match the GPU's device id",
        ),
    ],
)
def test_the_validator_refuses_what_nvidia_refuses(
    kind: str, text: str, extra: dict[str, Any], error: str
) -> None:
    """The validator is not a no-op: configs NVIDIA's code refuses are refused, with NVIDIA's message."""
    (result,) = validate([{"kind": kind, "name": "bad", "yaml": text, "env": PLUGIN_ENV, **extra}])
    assert error in result.get("error", ""), result


def test_mps_configs_fail_when_the_environment_forces_mixed() -> None:
    """Issue 10 part 1, as NVIDIA's code has it: ``MIG_STRATEGY`` in the plugin's environment (what the GPU
    Operator sets from ClusterPolicy ``mig.strategy``) overrides the file, and MPS is then refused. Whoever
    installs the GPU Operator must leave ``mig.strategy`` unset for the per-node configs to decide."""
    mps = [
        c for c in _device_plugin_cases(NODES, {**PLUGIN_ENV, "MIG_STRATEGY": "mixed"}) if "mps" in c["yaml"]
    ]
    assert mps
    for result in validate(mps):
        assert "using --mig-strategy=mixed is not supported with MPS" in result.get("error", ""), result
