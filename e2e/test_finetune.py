"""The FineTuneJob chain on the real control plane, its trainer really run (issue 11, Tests, e2e):
sanitise -> train (a tiny model) -> evaluate -> gate -> rolling promotion of an SLMDeployment; a failing trainer;
a gate that is not met; preemption on a borrowed reservation GPU that resumes from the checkpoint.

The Job's pod carries ``FINETUNE_JOB_LABEL``, so kwok leaves it to the host kubelet (docs/e2e.md section 5),
which runs both containers from the trainer image (``Dockerfile.trainer`` -> ``.venv-train/bin/slm-operator``)
with the pod's volumes as host folders. The base model is ``slm_operator.trainer.tiny.make_tiny_base`` written
into a PersistentVolume's host folder (``spec.modelSource.pvc``, mounted on ``/model``); the data is
``synthetic_records`` in a ConfigMap. Both come from the ``.venv-train`` virtualenv (torch, transformers), not
from this process's. The hyperparameters are the ones docs/finetuning.md gives for the tiny task (800 records, 9
epochs: the tuned model answers nearly all held-out examples, the base model none).
"""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from e2e import test_operator
from e2e.conftest import REPO, TRAINER_IMAGE, Cluster, wait_for
from e2e.operator import (
    GROUP,
    VERSION,
    Operator,
    condition,
    custom,
    get_dep,
    llm_fallback_pod,
    replica_pods,
)
from e2e.test_operator import dep, kubectl_apply, pool, wait_ready
from slm_operator.contract import ADAPTER_ANNOTATION, FINETUNE_JOB_LABEL

pytestmark = pytest.mark.e2e
TRAIN = 600.0  # the tiny model on 2 CPU cores (a few minutes at most; the limit only stops a hung run)
RECORDS = 800
CONVERGE = 120.0
TRAIN_VENV_PYTHON = REPO / ".venv-train" / "bin" / "python"
operator = test_operator.operator  # fixtures: the operator as the chart's ServiceAccount, GPUPools cleaned up
pools = test_operator.pools


def train_venv(code: str, *args: str) -> str:
    """Run Python in the trainer's virtualenv (torch lives there, not in the e2e process)."""
    r = subprocess.run(
        [str(TRAIN_VENV_PYTHON), "-c", code, *args], check=True, capture_output=True, text=True
    )
    return r.stdout


def tiny_base(folder: Path) -> None:
    train_venv(
        "import sys; from pathlib import Path; from slm_operator.trainer.tiny import make_tiny_base; "
        "make_tiny_base(Path(sys.argv[1]), seed=0)",
        str(folder),
    )


def synthetic_jsonl(n: int, seed: int) -> str:
    return train_venv(
        "import json, sys; from slm_operator.trainer.tiny import synthetic_records; "
        "print('\\n'.join(json.dumps(r) for r in synthetic_records(int(sys.argv[1]), int(sys.argv[2]))))",
        str(n),
        str(seed),
    )


@pytest.fixture(scope="module")
def trainer_operator(operator: Operator) -> Iterator[Operator]:
    """The operator of e2e/test_operator.py (the chart's ServiceAccount), with the trainer image the host
    kubelet maps to .venv-train."""
    operator.stop()
    operator.extra_args += ["--trainer-image", TRAINER_IMAGE]
    operator.start()
    yield operator


def finetune_job(name: str, pool_name: str, target: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {
            "poolRef": {"name": pool_name},
            "baseModel": "tiny",
            "modelSource": {"pvc": {"claimName": "models", "path": "tiny"}},
            "method": "LoRA",
            "dataset": {"configMapRef": {"name": "calls"}},
            "sanitization": {"redact": ["Email", "PhoneNumber", "Person"]},
            "hyperparameters": {
                "epochs": 9,
                "learningRate": "0.003",
                "batchSize": 16,
                "loraRank": 16,
                "maxSequenceTokens": 256,
            },
            "output": {"pvc": {"claimName": "adapters", "path": f"{target}/{name}"}},
            "promote": {"slmDeploymentRef": {"name": target}},
            **spec,
        },
    }


def ftj(cluster: Cluster, ns: str, name: str) -> dict[str, Any]:
    return dict(custom(cluster.api).get_namespaced_custom_object(GROUP, VERSION, ns, "finetunejobs", name))


def condition_is(cluster: Cluster, ns: str, name: str, type_: str, status: str) -> dict[str, Any] | None:
    c = condition(ftj(cluster, ns, name), type_)
    return c if c and c["status"] == status else None


@pytest.fixture
def setting(cluster: Cluster, trainer_operator: Operator, pools: list[str], ns: str) -> dict[str, Any]:
    """A pool with a fine-tuning segment on gpu-h100-1, the tiny base model on a claim, the data in a ConfigMap,
    the output claim and a 2-replica SLMDeployment to promote to."""
    name = f"ft-{ns}"
    pools.append(name)
    kubectl_apply(
        cluster,
        [pool(name, node="gpu-h100-1", segments=[{"name": "finetune", "purpose": "FineTuning", "gpus": 1}])],
    )
    tiny_base(cluster.host_volume(ns, "models") / "tiny")
    adapters = cluster.host_volume(ns, "adapters")
    records = synthetic_jsonl(RECORDS, seed=0)
    cluster.core.create_namespaced_config_map(
        ns, {"metadata": {"name": "calls"}, "data": {"calls.jsonl": records}}
    )
    kubectl_apply(cluster, [dep("extractor", name, "qwen2.5-0.5b-instruct", 2, "Guaranteed")], ns)
    wait_ready(cluster, ns, "extractor")
    return {"pool": name, "adapters": adapters, "records": len(records.splitlines())}


class ReadyWatch:
    """Samples the SLMDeployment's replica pods every 0.2 s from a thread: the fewest Ready replicas seen."""

    def __init__(self, cluster: Cluster, ns: str, name: str) -> None:
        self.cluster, self.ns, self.name = cluster, ns, name
        self.fewest_ready: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            pods = replica_pods(self.cluster.core, self.ns, self.name)
            ready = sum(
                1
                for p in pods
                if p.metadata.deletion_timestamp is None
                and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
            )
            self.fewest_ready = ready if self.fewest_ready is None else min(self.fewest_ready, ready)

    def __enter__(self) -> ReadyWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def test_sanitise_train_evaluate_gate_and_roll_out(
    cluster: Cluster, ns: str, setting: dict[str, Any]
) -> None:
    before = {p.metadata.name for p in replica_pods(cluster.core, ns, "extractor")}
    with ReadyWatch(cluster, ns, "extractor") as watch:
        kubectl_apply(cluster, [finetune_job("lora", setting["pool"], "extractor", segment="finetune")], ns)
        wait_for(
            lambda: condition_is(cluster, ns, "lora", "Promoted", "True"), TRAIN, "FineTuneJob lora Promoted"
        )
    obj = ftj(cluster, ns, "lora")
    sanitized = condition(obj, "Sanitized")
    assert sanitized and sanitized["message"].startswith(f"{setting['records']} records sanitised, 0 skipped")
    evaluated = condition(obj, "Evaluated")
    assert evaluated and evaluated["status"] == "True" and evaluated["reason"] == "GatePassed"
    # the trainer's own report (its termination message) shows it learned: tuned well above base
    pod = cluster.core.list_namespaced_pod(ns, label_selector=f"{FINETUNE_JOB_LABEL}=lora").items[0]
    train = next(s for s in pod.status.container_statuses if s.name == "train")
    report = json.loads(train.state.terminated.message)
    assert report["evalScorePercent"] >= 80 > report["baseScorePercent"]
    assert obj["status"]["evaluation"]["score"] == report["evalScorePercent"]
    out = setting["adapters"] / "extractor" / "lora"
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    assert json.loads((out / "eval.json").read_text())["evalScorePercent"] == report["evalScorePercent"]
    # the SLMDeployment serves the adapter, every old replica replaced one at a time (one always Ready)
    dep_obj = get_dep(cluster.api, ns, "extractor")
    assert dep_obj["metadata"]["annotations"][ADAPTER_ANNOTATION] == "pvc://adapters/extractor/lora"
    wait_ready(cluster, ns, "extractor")
    after = {p.metadata.name for p in replica_pods(cluster.core, ns, "extractor")}
    assert not before & after
    assert watch.fewest_ready is not None and watch.fewest_ready >= 1, watch.fewest_ready


def test_a_failing_trainer_fails_with_its_message_and_promotes_nothing(
    cluster: Cluster, ns: str, setting: dict[str, Any]
) -> None:
    before = get_dep(cluster.api, ns, "extractor")["spec"]
    bad = finetune_job(
        "broken",
        setting["pool"],
        "extractor",
        segment="finetune",
        modelSource={"pvc": {"claimName": "models", "path": "no-such-model"}},
    )
    kubectl_apply(cluster, [bad], ns)
    failed = wait_for(
        lambda: condition_is(cluster, ns, "broken", "Failed", "True"), TRAIN, "FineTuneJob Failed"
    )
    assert "no-such-model" in failed["message"]  # the trainer's {"error": ...}, carried by the operator
    assert condition_is(cluster, ns, "broken", "Promoted", "False")
    assert get_dep(cluster.api, ns, "extractor")["spec"] == before


def test_a_gate_that_is_not_met_promotes_nothing(cluster: Cluster, ns: str, setting: dict[str, Any]) -> None:
    before = get_dep(cluster.api, ns, "extractor")["spec"]
    job = finetune_job("strict", setting["pool"], "extractor", segment="finetune")
    job["spec"]["hyperparameters"].update(epochs=1, learningRate="0.000001")  # learns next to nothing
    job["spec"]["promote"]["evaluation"] = {"minScorePercent": 50}
    kubectl_apply(cluster, [job], ns)

    def judged() -> dict[str, Any] | None:  # Evaluated says NotTrained until the Job is done
        c = condition(ftj(cluster, ns, "strict"), "Evaluated")
        return c if c and c["reason"] != "NotTrained" else None

    evaluated = wait_for(judged, TRAIN, "the gate judged")
    assert evaluated["status"] == "False", evaluated
    assert evaluated["reason"] == "BelowGate"
    assert condition_is(cluster, ns, "strict", "Promoted", "False")
    assert get_dep(cluster.api, ns, "extractor")["spec"] == before
    assert (setting["adapters"] / "extractor" / "strict" / "adapter_config.json").is_file()  # trained, kept


def test_a_trainer_preempted_on_a_borrowed_gpu_resumes_from_its_checkpoint(
    cluster: Cluster,
    trainer_operator: Operator,
    pools: list[str],
    ns: str,
) -> None:
    """The trainer borrows an idle GPU of an LLM-fallback reservation; a pod of the reservation's PriorityClass
    asking for the reserved GPUs makes the real scheduler preempt it (DisruptionTarget, then deletion with its
    grace period): the host kubelet sends SIGTERM, the trainer checkpoints and exits 143. Once the reservation's
    pod is gone the Job's next pod resumes from that checkpoint and finishes."""
    name = f"borrow-{ns}"
    pools.append(name)
    reservation = {"name": "llm", "purpose": "LLMFallback", "gpus": 2, "lendTo": "BestEffort"}
    kubectl_apply(cluster, [pool(name, node="gpu-l4-1", reservations=[reservation])])
    tiny_base(cluster.host_volume(ns, "models") / "tiny")
    adapters = cluster.host_volume(ns, "adapters")
    cluster.core.create_namespaced_config_map(
        ns, {"metadata": {"name": "calls"}, "data": {"calls.jsonl": synthetic_jsonl(400, seed=1)}}
    )
    job = finetune_job("borrowed", name, "none", borrowFrom="llm")
    del job["spec"]["promote"]
    job["spec"]["hyperparameters"]["epochs"] = 20  # long enough to be preempted after a checkpoint
    kubectl_apply(cluster, [job], ns)
    checkpoints = adapters / "none" / "borrowed" / "checkpoints"
    wait_for(lambda: checkpoints.is_dir() and any(checkpoints.iterdir()), TRAIN, "a first checkpoint")
    llm = llm_fallback_pod(ns, "gpu-l4-1", 4)
    cluster.core.create_namespaced_pod(ns, llm)
    cluster.wait_pod_running(ns, "llm-fallback", timeout=CONVERGE)

    def preempted() -> client.V1Pod | None:
        for p in cluster.core.list_namespaced_pod(ns, label_selector=f"{FINETUNE_JOB_LABEL}=borrowed").items:
            train = next((s for s in p.status.container_statuses or [] if s.name == "train"), None)
            if train and train.state.terminated and train.state.terminated.exit_code == 143:
                return p
        return None

    wait_for(preempted, CONVERGE, "the trainer stopped by SIGTERM (exit 143) after the preemption")
    cluster.core.delete_namespaced_pod("llm-fallback", ns, grace_period_seconds=0)
    wait_for(lambda: condition_is(cluster, ns, "borrowed", "Trained", "True"), TRAIN, "training finished")
    done = [
        p
        for p in cluster.core.list_namespaced_pod(ns, label_selector=f"{FINETUNE_JOB_LABEL}=borrowed").items
        if p.status.phase == "Succeeded"
    ]
    train = next(s for s in done[0].status.container_statuses if s.name == "train")
    assert json.loads(train.state.terminated.message)["resumedFromStep"] > 0
