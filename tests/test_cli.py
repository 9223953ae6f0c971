"""The command line as a user runs it: output, JSON shape, exit codes, errors that name file and object."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "slm_operator", *args], capture_output=True, text=True, input=stdin, cwd=ROOT
    )


def test_estimate_prints_the_breakdown_and_the_smallest_shares() -> None:
    r = run("estimate", "qwen2.5-3b-instruct", "--context", "8192", "--concurrency", "8")
    assert r.returncode == 0, r.stderr
    assert "KV cache" in r.stdout and "H100-80GB" in r.stdout and "1g.10gb" in r.stdout
    r = run("estimate", "no-such-model")
    assert r.returncode == 2 and "unknown model 'no-such-model'" in r.stderr and "Traceback" not in r.stderr


def test_plan_of_the_examples_places_everything() -> None:
    r = run("plan", "-f", "examples/")
    assert r.returncode == 0, r.stderr
    assert "GPUPool h100" in r.stdout and "GPUPool l4" in r.stdout and "unplaced 0" in r.stdout
    doc = json.loads(run("plan", "-f", "examples/", "-o", "json").stdout)
    pool = next(p for p in doc["pools"] if p["pool"]["name"] == "h100")
    assert pool["pool"]["gpusTotal"] == 16 and pool["pool"]["gpusUsed"] >= 1
    gpu = next(g for g in pool["gpus"] if g["replicas"])
    assert {"node", "index", "product", "mode", "migInstances", "replicas"} <= set(gpu)
    replica = gpu["replicas"][0]
    assert {"deployment", "qos", "memoryGiB"} <= set(replica) and "/" in replica["deployment"]
    dep = pool["deployments"][0]
    assert {"desired", "placed", "unplaced"} <= set(dep)


def test_plan_reports_unplaceable_replicas_with_exit_code_1(tmp_path: Path) -> None:
    big = {
        "apiVersion": "slm.io/v1alpha1",
        "kind": "SLMDeployment",
        "metadata": {"name": "huge", "namespace": "agents"},
        "spec": {
            "poolRef": {"name": "l4"},
            "model": {
                "name": "llama-3.1-8b-instruct",
                "maxContextTokens": 131072,
                "maxConcurrentSequences": 16,
            },
        },
    }
    (tmp_path / "big.yaml").write_text(yaml.safe_dump(big))
    r = run("plan", "-f", "examples/10-pools.yaml", "-f", "examples/nodes/", "-f", str(tmp_path / "big.yaml"))
    assert r.returncode == 1, r.stderr
    assert "unplaced agents/huge#0: NoShareFits" in r.stdout


def test_bad_input_names_the_file_and_object_with_exit_code_2(tmp_path: Path) -> None:
    node = yaml.safe_load((ROOT / "examples/nodes/l4.yaml").read_text().split("---")[0])
    node["metadata"]["labels"]["nvidia.com/gpu.product"] = "NVIDIA-Quantum-9000"
    pool = {"apiVersion": "slm.io/v1alpha1", "kind": "GPUPool", "metadata": {"name": "by-host"},
            "spec": {"nodeSelector": {"matchLabels": {"kubernetes.io/hostname": node["metadata"]["name"]}}}}  # fmt: skip
    (tmp_path / "nodes.yaml").write_text(yaml.safe_dump(node))
    (tmp_path / "pool.yaml").write_text(yaml.safe_dump(pool))
    r = run("plan", "-f", str(tmp_path / "pool.yaml"), "-f", str(tmp_path / "nodes.yaml"))
    assert r.returncode == 2 and "nodes.yaml" in r.stderr and "NVIDIA-Quantum-9000" in r.stderr
    assert "GPUPool by-host selects this node" in r.stderr
    assert "Traceback" not in r.stderr

    bad = {"apiVersion": "slm.io/v1alpha1", "kind": "SLMDeployment", "metadata": {"name": "x", "namespace": "a"},
           "spec": {"poolRef": {"name": "l4"}, "model": {"name": "m"}, "replicas": -1}}  # fmt: skip
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    r = run("plan", "-f", "examples/10-pools.yaml", "-f", str(tmp_path / "bad.yaml"))
    assert (
        r.returncode == 2
        and "bad.yaml" in r.stderr
        and "SLMDeployment x" in r.stderr
        and "replicas" in r.stderr
    )

    (tmp_path / "broken.yaml").write_text("kind: [unclosed")
    r = run("plan", "-f", str(tmp_path / "broken.yaml"))
    assert r.returncode == 2 and "broken.yaml" in r.stderr and "not valid YAML" in r.stderr
    r = run("plan", "-f", str(tmp_path / "missing.yaml"))
    assert r.returncode == 2 and "no such file" in r.stderr


def test_sanitize_redacts_the_requested_classes(tmp_path: Path) -> None:
    data = tmp_path / "calls.jsonl"
    data.write_text(
        json.dumps(
            {
                "prompt": "mail jane@corp.example or call +49 30 1234567",
                "response": "card 4111 1111 1111 1111",
            }
        )
        + "\n"
        + json.dumps({"prompt": "server 10.2.3.4, key sk-abcdefghijklmnopqrstuv"})
        + "\n"
    )
    r = run("sanitize", "--input", str(data), "--redact", "Email,PhoneNumber,CreditCard,IPAddress,APIKey")
    assert r.returncode == 0, r.stderr
    out = [json.loads(line) for line in r.stdout.splitlines()]
    text = json.dumps(out)
    for secret in ("jane@corp.example", "1234567", "4111", "10.2.3.4", "sk-abcdef"):
        assert secret not in text
    assert "<EMAIL>" in text and "<CREDIT_CARD>" in text and "<API_KEY>" in text
    assert "redacted" in r.stderr
    r = run("sanitize", "--input", str(data), "--redact", "Horoscope")
    assert r.returncode == 2 and "unknown PII classes" in r.stderr


def test_help_lists_every_command() -> None:
    r = run("--help")
    for cmd in ("crds", "estimate", "plan", "show", "run", "agent", "sanitize"):
        assert cmd in r.stdout


def test_plan_optimize_runs_the_exact_solver_and_uses_no_more_gpus_than_the_heuristic() -> None:
    heuristic = json.loads(run("plan", "-f", "examples/", "-o", "json").stdout)
    r = run("plan", "-f", "examples/", "-o", "json", "--optimize", "--time-budget", "2")
    assert r.returncode == 0, r.stderr
    optimized = json.loads(r.stdout)
    used = {p["pool"]["name"]: p["pool"]["gpusUsed"] for p in heuristic["pools"]}
    for p in optimized["pools"]:
        assert p["pool"]["replicasUnplaced"] == 0
        assert p["pool"]["gpusUsed"] <= used[p["pool"]["name"]]


def test_plan_time_budget_reaches_the_exact_solver(monkeypatch: pytest.MonkeyPatch) -> None:
    from slm_operator import cli
    from slm_operator.planner import exact

    budgets: list[float] = []
    real = exact.optimize_pool

    def spy(*args: Any, time_budget_s: float, **kw: Any) -> Any:
        budgets.append(time_budget_s)
        return real(*args, time_budget_s=time_budget_s, **kw)

    monkeypatch.setattr(exact, "optimize_pool", spy)
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli.main(["plan", "-f", str(ROOT / "examples"), "--optimize", "--time-budget", "0.5"]) == 0
        assert budgets == [0.5, 0.5]  # one call per pool (h100, l4)
        budgets.clear()
        assert cli.main(["plan", "-f", str(ROOT / "examples")]) == 0
    assert budgets == []  # without --optimize the heuristic plans alone
