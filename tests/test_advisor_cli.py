"""`slm-operator advise` and `slm-operator traces` as a user runs them: files written, what they say, errors."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from slm_operator.advisor.traces import generate, write_jsonl
from slm_operator.capture.record import CaptureRecord
from slm_operator.capture.sqlite_store import SQLiteStore
from slm_operator.contract import TASK_CLASSIFIER_KEY
from slm_operator.manifests import parse_object
from tests.conftest import ROOT
from tests.test_cli import in_process

EXAMPLES = ROOT / "examples"
POOL_FILES = ["-f", str(EXAMPLES / "10-pools.yaml"), "-f", str(EXAMPLES / "nodes")]


@pytest.fixture(scope="module")
def calls(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1,500 calls of one hour through agents/agent-llm (the example route)."""
    path = tmp_path_factory.mktemp("calls") / "calls.jsonl"
    with path.open("w") as f:
        write_jsonl(generate(1500, seed=3, route="agents/agent-llm", hours=1), f)
    return path


def _manifests(out: Path) -> list[dict[str, Any]]:
    return [yaml.safe_load(p.read_text()) for p in sorted((out / "manifests").glob("*.yaml"))]


def test_advise_writes_the_report_tasks_assignments_and_manifests_the_api_accepts(
    calls: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "advice"
    code, stdout, err = in_process(
        "advise", "--from", str(calls), "-o", str(out), *POOL_FILES, "-f", str(EXAMPLES / "40-slmroutes.yaml"),
        "--pool", "h100", "--llm-price", "2.5,10", "--currency", "EUR", "--min-calls", "60",
        "--gpu-hour-cost", "1.5", "--adapters-pvc", "my-adapters", "--namespace", "agents", capsys=capsys,
    )  # fmt: skip
    assert code == 0, err
    tasks = json.loads((out / "tasks.json").read_text())["tasks"]
    moved = [t for t in tasks if t["recommendation"] and t["recommendation"]["decision"] == "Move"]
    assert f"1500 calls, {len(tasks)} tasks, {len(moved)} to move" in stdout and moved
    assignments = [json.loads(line) for line in (out / "assignments.jsonl").read_text().splitlines()]
    assert len(assignments) == 1500 and {a["task"] for a in assignments} - {None} == {t["id"] for t in tasks}
    docs = _manifests(out)
    kinds = [d["kind"] for d in docs]
    assert kinds.count("SLMDeployment") == kinds.count("FineTuneJob") == len(moved)
    for d in docs:
        assert d["metadata"]["namespace"] == "agents"
        if d["apiVersion"].startswith("slm.io/"):
            parse_object(d)
    ftj = next(d for d in docs if d["kind"] == "FineTuneJob")
    assert ftj["spec"]["output"]["pvc"]["claimName"] == "my-adapters"
    [route] = [d for d in docs if d["kind"] == "SLMRoute"]
    shadowed = {r["match"]["tasks"][0] for r in route["spec"]["rules"] if r["name"].startswith("task-")}
    assert shadowed == {t["id"] for t in moved}
    [classifier] = [d for d in docs if d["metadata"]["name"] == "slm-task-classifier"]
    assert json.loads(classifier["data"][TASK_CLASSIFIER_KEY])["tasks"]
    report = (out / "report.md").read_text()
    assert "Planned on GPUPool `h100`" in report and " EUR" in report and "1.5 EUR per GPU-hour" in report
    chosen = moved[0]["recommendation"]["chosen"]
    assert chosen["cost_per_month"] == pytest.approx(chosen["gpu_fraction"] * 1.5 * 720, abs=0.02)
    assert (out / "report.html").read_text().startswith("<!DOCTYPE html>")


def test_advise_without_a_pool_finds_tasks_and_chooses_no_model(
    calls: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "advice"
    code, _, err = in_process(
        "advise", "--from", str(calls), "-o", str(out), "--no-examples", "--method", "kmeans", "--seed", "7",
        capsys=capsys,
    )  # fmt: skip
    assert code == 0, err
    report = (out / "report.md").read_text()
    assert "No GPUPool was given" in report and "Examples left out (--no-examples)" in report
    assert "> " not in report  # no example quoted
    assert not list((out / "manifests").glob("*.yaml"))
    first = (out / "assignments.jsonl").read_text()
    code, _, _ = in_process("advise", "--from", str(calls), "-o", str(out), "--no-examples", "--method",
                            "kmeans", "--seed", "7", capsys=capsys)  # fmt: skip
    assert code == 0 and (out / "assignments.jsonl").read_text() == first  # same seed, same tasks


def test_advise_licence_and_share_thresholds_change_what_moves(
    calls: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    common = ["--from", str(calls), *POOL_FILES, "--pool", "h100", "--no-examples", "--min-calls", "60"]
    code, _, err = in_process(
        "advise", *common, "-o", str(tmp_path / "a"), "--min-share", "0.99", capsys=capsys
    )
    assert code == 0, err
    assert not list((tmp_path / "a" / "manifests").glob("*slmdeployment*"))
    assert "--min-share" in (tmp_path / "a" / "report.md").read_text()
    code, _, err = in_process(
        "advise", *common, "-o", str(tmp_path / "b"), "--license", "llama3.2", capsys=capsys
    )
    assert code == 0, err
    models = {d["spec"]["model"]["name"] for d in _manifests(tmp_path / "b") if d["kind"] == "SLMDeployment"}
    assert models and all(m.startswith("llama-3.2") for m in models)


def test_advise_finetune_template_sets_every_job_s_weights_and_training_and_refuses_owned_fields(
    calls: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An air-gapped cluster keeps base weights on a PVC: the template points every FineTuneJob at them (with the
    model's name filled in) and sets the training; what advise decides per task stays advise's."""
    template = tmp_path / "ftj.yaml"
    template.write_text(
        "modelSource: {pvc: {claimName: models, path: 'base/{model}'}}\n"
        "hyperparameters: {epochs: 2, loraRank: 8}\n"
        "promote: {evaluation: {minScorePercent: 60}}\n"
    )
    out = tmp_path / "advice"
    common = ["--from", str(calls), *POOL_FILES, "--pool", "h100", "--no-examples", "--min-calls", "60"]
    code, _, err = in_process("advise", *common, "-o", str(out), "--finetune-template", str(template),
                              capsys=capsys)  # fmt: skip
    assert code == 0, err
    jobs = [d for d in _manifests(out) if d["kind"] == "FineTuneJob"]
    assert jobs
    for job in jobs:
        spec = job["spec"]
        target = spec["promote"]["slmDeploymentRef"]["name"]
        assert spec["modelSource"]["pvc"] == {"claimName": "models", "path": f"base/{spec['baseModel']}"}
        assert spec["hyperparameters"] == {"epochs": 2, "loraRank": 8}
        assert spec["promote"]["evaluation"] == {"minScorePercent": 60}
        assert spec["output"]["pvc"]["path"] == f"{target}/{job['metadata']['name']}"
        parse_object(job)
    for text, message in [
        ("dataset: {configMapRef: {name: x}}", "spec.dataset is set per task by advise"),
        ("promote: {slmDeploymentRef: {name: x}}", "spec.promote.slmDeploymentRef is set per task"),
        ("hyperparameters: {epochs: 0}", "invalid spec.hyperparameters.epochs"),
        ("- a list", "give a mapping of FineTuneJob spec fields"),
    ]:
        template.write_text(text + "\n")
        code, _, err = in_process("advise", *common, "-o", str(out), "--finetune-template", str(template),
                                  capsys=capsys)  # fmt: skip
        assert code == 2 and message in err, (text, err)


ROUTE_YAML = """apiVersion: slm.io/v1alpha1
kind: SLMRoute
metadata: {name: agent-llm, namespace: agents}
spec:
  model: gpt-4o-mini
  backends:
  - {name: tagger, slmDeploymentRef: {name: tagger}}
  - {name: llm, external: {url: "https://llm.example.com/v1", model: gpt-4o-mini}}
  rules:
  - {name: tickets, match: {tasks: [TASK]}, backend: tagger}
  defaultBackend: llm
  fallback: {backend: llm}
"""


def test_advise_compares_with_the_last_run_and_reports_drift_new_tasks_and_rising_fallbacks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The scheduled advisor's second run: the last run's classifier (--previous-classifier) keeps the task ids;
    the ticket-tagging agents rewrote their system prompt (drift), and the SLM serving it (a route rule straight
    to its deployment) fell back to the LLM on a third of the calls in the later hour, against none before."""
    raw = generate(6000, seed=1, route="agents/agent-llm", hours=4)
    last, this = tmp_path / "last.jsonl", tmp_path / "this.jsonl"
    with last.open("w") as f:
        write_jsonl(raw[:3000], f)
    code, _, err = in_process("advise", "--from", str(last), "-o", str(tmp_path / "a"), "--no-examples",
                              capsys=capsys)  # fmt: skip
    assert code == 0, err
    task_of = {
        json.loads(x)["id"]: json.loads(x)["task"] for x in (tmp_path / "a" / "assignments.jsonl").open()
    }
    ticket = Counter(task_of[r["id"]] for r in raw[:3000] if r["label"] == "ticket-tagging").most_common(1)[
        0
    ][0]
    later = raw[3000:]
    tickets = [r for r in later if r["label"] == "ticket-tagging"]
    for i, r in enumerate(tickets):
        r["request"]["messages"][0]["content"] = (
            "Triage assistant v2 for the helpdesk queue. Reply with a JSON object holding queue, severity, "
            "language, churn_risk and next_action; severity is one of sev1 sev2 sev3."
        )
        fell = i >= len(tickets) // 2 and i % 3 == 0
        r["backend"], r["fallback_reason"] = ("llm", "error") if fell else ("tagger", None)
    with this.open("w") as f:
        write_jsonl(later, f)
    route = tmp_path / "route.yaml"
    route.write_text(ROUTE_YAML.replace("TASK", ticket))
    common = ["--from", str(this), "-f", str(route), "--no-examples", "--previous-classifier",
              str(tmp_path / "a" / "classifier.json")]  # fmt: skip
    code, stdout, err = in_process("advise", *common, "-o", str(tmp_path / "b"), capsys=capsys)
    assert code == 0, err
    assert f"TaskDrift: task {ticket} drifted" in stdout
    assert f"FallbackRising: task {ticket} on tagger" in stdout and "in the later half" in stdout
    report = (tmp_path / "b" / "report.md").read_text()
    assert "## Since the last run" in report and f"**TaskDrift** `{ticket}`" in report
    found = json.loads((tmp_path / "b" / "tasks.json").read_text())["changes"]
    assert {(f["kind"], f["task"]) for f in found} >= {("TaskDrift", ticket), ("FallbackRising", ticket)}
    code, stdout, err = in_process("advise", *common, "-o", str(tmp_path / "c"), "--drift", "0.9",
                                   "--fallback-rise", "50", capsys=capsys)  # fmt: skip
    assert code == 0, err
    assert "TaskDrift" not in stdout and "FallbackRising" not in stdout
    (tmp_path / "bad.json").write_text("{}")
    code, _, err = in_process("advise", "--from", str(this), "-o", str(tmp_path / "d"), "--previous-classifier",
                              str(tmp_path / "missing.json"), capsys=capsys)  # fmt: skip
    assert code == 2 and "--previous-classifier" in err and "cannot read" in err
    (tmp_path / "bad.yaml").write_text("kind: ConfigMap\ndata: {}\n")
    code, _, err = in_process("advise", "--from", str(this), "-o", str(tmp_path / "d"), "--previous-classifier",
                              str(tmp_path / "bad.yaml"), capsys=capsys)  # fmt: skip
    assert code == 2 and "not a task classifier" in err


def _store(path: Path, records: list[dict[str, Any]]) -> str:
    async def write() -> None:
        async with SQLiteStore(path) as store:
            await store.write([CaptureRecord.model_validate(r) for r in records])

    asyncio.run(write())
    return f"sqlite://{path}"


def test_advise_reads_stdin_and_a_usage_store_of_one_route_since_a_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Also: --from defaults to $SLM_USAGE_STORE_URL (the scheduled advisor's Secret), keeping it off argv."""
    now = datetime.now(UTC)
    recent = generate(300, seed=1, route="agents/a", start=now - timedelta(hours=2), hours=1)
    older = generate(200, seed=2, route="agents/a", start=now - timedelta(days=10), hours=1)
    other = generate(100, seed=4, route="agents/b", start=now - timedelta(hours=2), hours=1)
    url = _store(tmp_path / "usage.db", recent + older + other)
    code, stdout, err = in_process(
        "advise", "--from", url, "--route", "agents/a", "--since", "2d", "-o", str(tmp_path / "s"),
        "--no-examples", capsys=capsys,
    )  # fmt: skip
    assert code == 0, err
    assert stdout.startswith("300 calls")
    assert "usage store sqlite://" in (tmp_path / "s" / "report.md").read_text()
    # the FineTuneJobs then read the task's calls from the store, not from a ConfigMap
    code, _, err = in_process(
        "advise", "--from", url, "--route", "agents/a", "-o", str(tmp_path / "u"), *POOL_FILES, "--pool", "h100",
        "--min-calls", "20", "--no-examples", "--usage-store-secret", "usage-store/url", capsys=capsys,
    )  # fmt: skip
    assert code == 0, err
    docs = _manifests(tmp_path / "u")
    jobs = [d for d in docs if d["kind"] == "FineTuneJob"]
    assert jobs and not [d for d in docs if d["metadata"]["name"].endswith("-data")]
    for job in jobs:
        store = job["spec"]["dataset"]["usageStore"]
        assert store["route"] == "a" and store["urlSecretRef"] == {"name": "usage-store", "key": "url"}
        assert store["task"] == job["metadata"]["annotations"]["slm.io/advisor-task"]

    monkeypatch.setenv("SLM_USAGE_STORE_URL", url)  # no --from: the store from the environment
    code, stdout, err = in_process(
        "advise",
        "--route",
        "agents/a",
        "--since",
        "2d",
        "-o",
        str(tmp_path / "e"),
        "--no-examples",
        capsys=capsys,
    )
    assert code == 0 and stdout.startswith("300 calls"), err
    monkeypatch.delenv("SLM_USAGE_STORE_URL")
    lines = (tmp_path / "calls.jsonl").open("w")
    write_jsonl(recent, lines)
    lines.close()
    monkeypatch.setattr("sys.stdin", (tmp_path / "calls.jsonl").open())
    code, stdout, err = in_process(
        "advise", "--from", "-", "-o", str(tmp_path / "i"), "--no-examples", capsys=capsys
    )
    assert code == 0 and stdout.startswith("300 calls"), err


def test_advise_errors_say_what_to_pass(
    calls: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = ["-o", str(tmp_path / "x")]
    cases = [
        (["--from", str(tmp_path / "missing.jsonl")], "cannot read"),
        (["--from", str(calls), "--llm-price", "cheap"], "--llm-price cheap: give the prompt and completion"),
        (["--from", str(calls), *POOL_FILES], "several GPUPools (h100, l4): choose one with --pool"),
        (["--from", str(calls), *POOL_FILES, "--pool", "a100x"], "--pool a100x: not among the GPUPools"),
        (["--from", str(calls), "--route", "agents/a"], "--route and --since filter a usage store"),
        (["--from", "sqlite:///nowhere/usage.db"], "no such usage store"),
        (["--from", str(calls), "--usage-store-secret", "usage-store/url"], "needs --from a usage store"),
    ]
    for args, message in cases:
        code, _, err = in_process("advise", *args, *out, capsys=capsys)
        assert code == 2 and message in err, (args, err)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("not json\n")
    code, _, err = in_process("advise", "--from", str(empty), *out, capsys=capsys)
    assert code == 2 and "0 call records (1 lines skipped)" in err


def test_advise_apply_without_a_cluster_says_how_to_reach_one(
    calls: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = in_process(
        "advise", "--from", str(calls), "-o", str(tmp_path / "x"), "--no-examples", *POOL_FILES, "--pool",
        "h100", "--apply", "--kubeconfig", str(tmp_path / "no-kubeconfig"), capsys=capsys,
    )  # fmt: skip
    assert code == 2 and "cannot reach a Kubernetes API server" in err and "no-kubeconfig" in err
    assert (tmp_path / "x" / "report.md").exists()  # the files are written before anything is applied
    code, _, err = in_process(
        "advise", "--from", str(calls), "-o", str(tmp_path / "y"), "--cluster", "--kubeconfig",
        str(tmp_path / "no-kubeconfig"), capsys=capsys,
    )  # fmt: skip
    assert code == 2 and "cannot reach a Kubernetes API server" in err
    assert not (tmp_path / "y" / "report.md").exists()  # nothing planned without what --cluster reads


def test_traces_writes_the_same_calls_for_the_same_seed_over_the_hours_given(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "t.jsonl"
    code, _, err = in_process(
        "traces",
        "-n",
        "50",
        "--seed",
        "5",
        "--hours",
        "2",
        "--route",
        "team/r",
        "-o",
        str(out),
        capsys=capsys,
    )
    assert code == 0 and "wrote 50 synthetic agent calls" in err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 50 and {r["route"] for r in records} == {"team/r"}
    times = [datetime.fromisoformat(r["time"]) for r in records]
    assert max(times) - min(times) <= timedelta(hours=2)
    code, stdout, _ = in_process("traces", "-n", "50", "--seed", "5", "--hours", "2", "--route", "team/r",
                                 capsys=capsys)  # fmt: skip
    assert code == 0 and stdout == out.read_text()
    code, _, err = in_process("traces", "-n", "0", capsys=capsys)
    assert code == 2 and "-n and --hours must be 1 or more" in err
