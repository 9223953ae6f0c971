"""The node agent on a real NVIDIA GPU (``make test-gpu``): ``slm-operator agent --once`` against nvidia-smi.

Read-only: the agent only queries NVML, and the test checks that MIG mode, compute mode and persistence mode
are the same before and after. Skipped, with the reason, where there is no GPU or no driver.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from slm_operator.catalog import sanitize_product_name

pytestmark = pytest.mark.gpu

REPO = Path(__file__).resolve().parents[1]
MiB = 1 << 20
QUERY = "name,memory.total,mig.mode.current"
SETTINGS = "index,uuid,pci.device_id,mig.mode.current,mig.mode.pending,compute_mode,persistence_mode"


def _smi(query: str) -> list[list[str]]:
    """Rows of ``nvidia-smi --query-gpu=<query> --format=csv,noheader,nounits``; skips without GPU/driver."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        pytest.skip("no NVIDIA GPU/driver here: nvidia-smi is not on PATH")
    try:
        out = subprocess.run(
            [exe, f"--query-gpu={query}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"no usable NVIDIA driver here: nvidia-smi failed to run ({exc})")
    if out.returncode != 0:
        msg = (out.stderr or out.stdout).strip().splitlines()
        pytest.skip(
            f"no usable NVIDIA driver here: nvidia-smi exited {out.returncode}: {msg[0] if msg else ''}"
        )
    rows = [[c.strip() for c in line.split(",")] for line in out.stdout.strip().splitlines() if line.strip()]
    if not rows:
        pytest.skip("nvidia-smi lists no GPU")
    return rows


def _agent_once() -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k != "SLM_AGENT_FAKE_FLEET"}  # the real NVML, never a fake
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "operator"), os.environ.get("PYTHONPATH")]))
    out = subprocess.run(
        [sys.executable, "-m", "slm_operator", "agent", "--once", "--log-level", "warning"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=REPO,
    )
    assert out.returncode == 0, (
        f"nvidia-smi works but `slm-operator agent --once` exited {out.returncode}:\n{out.stderr}"
    )
    doc: dict[str, Any] = json.loads(out.stdout)
    return doc


def test_agent_once_matches_nvidia_smi() -> None:
    smi = _smi(QUERY)
    before = _smi(SETTINGS)
    doc = _agent_once()
    after = _smi(SETTINGS)

    gpus = doc["gpus"]
    print(json.dumps(doc, indent=2))
    assert len(gpus) == len(smi), f"agent sees {len(gpus)} GPUs, nvidia-smi {len(smi)}"
    for g, (name, memory_mib, mig) in zip(gpus, smi, strict=True):
        where = f"GPU {g['index']} ({name})"
        assert g["error"] is None, f"{where}: {g['error']}"
        assert g["name"] == name, where
        assert g["product"] == sanitize_product_name(name), where
        total_mib = g["memoryTotalBytes"] / MiB
        assert abs(total_mib - float(memory_mib)) <= 0.01 * float(memory_mib), (
            f"{where}: agent {total_mib:.0f} MiB, nvidia-smi {memory_mib} MiB"
        )
        assert 0 <= g["memoryUsedBytes"] <= g["memoryTotalBytes"], where
        if mig == "Enabled":
            assert g["migEnabled"] is True and g["migCapable"] is True, where
            assert g["utilizationGpuPercent"] is None, f"{where}: NVML reports no utilisation under MIG"
            for m in g["migInstances"]:
                assert m["profile"] != "unknown", f"{where}: {m}"
                assert m["memoryTotalBytes"] is None or m["memoryTotalBytes"] < g["memoryTotalBytes"], where
        elif mig == "Disabled":
            assert g["migEnabled"] is False and g["migCapable"] is True and g["migInstances"] == [], where
        else:  # "[N/A]": no MIG on this GPU
            assert g["migEnabled"] is False and g["migCapable"] is False, where
        if g["model"] is None:
            print(f"note: {where} is not in the GPU catalog (PCI {g['pciDeviceId']})")
    for g, (_, uuid, pci, *_) in zip(gpus, before, strict=True):
        assert g["uuid"] == uuid
        assert g["pciDeviceId"] == f"0x{int(pci, 16) >> 16:04x}"
    assert after == before, "GPU settings changed while the agent ran"


def test_annotation_form_is_compact() -> None:
    _smi(QUERY)
    from slm_operator.agent.model import Inventory

    inv = Inventory.model_validate(_agent_once())
    text = inv.annotation_json()
    assert "null" not in text and "utilizationGpuPercent" not in text
    assert len(text) < 64 * 1024  # far below the 256 KiB all annotations of an object may take
