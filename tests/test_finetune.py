"""FineTuneJob without a cluster: the Job it creates, where it may run, and the conditions made from what its
pods really reported (termination messages, exit codes, preemptions)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from finetune_support import (
    NODES,
    SANITIZED,
    completed_pods,
    condition,
    ftj,
    job,
    job_pod,
    node,
    pool,
    step,
    target,
    world,
)
from slm_operator.api.v1alpha1 import FineTuneJob, FineTuneJobStatus
from slm_operator.contract import (
    ADAPTER_ANNOTATION,
    BORROWED_RESERVATION_LABEL,
    FINETUNE_JOB_LABEL,
    PROMOTED_LORA_RANK_ANNOTATION,
    PROMOTED_METHOD_ANNOTATION,
)
from slm_operator.finetune import FineTuneDecisions, decide_finetune, promotion_annotations


def _pod_spec(job_: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = job_["spec"]["template"]["spec"]
    return spec


def _created(f: FineTuneJob, **kw: Any) -> dict[str, Any]:
    d = decide_finetune(world(f, **kw))
    assert d.job_create is not None, d.status
    return d.job_create


def _mounts(container: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    return {m["mountPath"]: (m["name"], bool(m.get("readOnly"))) for m in container["volumeMounts"]}


# ------------------------------------------------------------------------------------------ the Job


def test_both_steps_run_the_trainer_image_with_the_interface_command_lines() -> None:
    job_ = _created(ftj())
    spec = _pod_spec(job_)
    sanitize, train = spec["initContainers"][0], spec["containers"][0]
    assert sanitize["image"] == train["image"] == "trainer:1"
    assert sanitize["args"] == [
        "sanitize", "/dataset", "--output", "/work/sanitized.jsonl", "--redact", "Email,APIKey",
        "--termination-log", "/dev/termination-log",
    ]  # fmt: skip
    assert train["args"] == [
        "train", "--base-model", "Qwen/Qwen2.5-3B-Instruct", "--data", "/work/sanitized.jsonl",
        "--output", "/output/extractor/lora", "--method", "LoRA", "--epochs", "3", "--learning-rate", "0.0002",
        "--batch-size", "8", "--max-seq-len", "4096", "--lora-rank", "16", "--lora-alpha", "32",
        "--termination-log", "/dev/termination-log",
    ]  # fmt: skip
    for c in (sanitize, train):
        assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
        assert c["terminationMessagePath"] == "/dev/termination-log"
    assert train["resources"]["limits"] == {"nvidia.com/gpu": "1"} and "resources" not in sanitize
    assert _mounts(sanitize) == {"/dataset": ("dataset", True), "/work": ("work", False)}
    assert _mounts(train) == {"/work": ("work", True), "/output": ("output", False)}
    assert job_["spec"]["template"]["metadata"]["labels"] == {FINETUNE_JOB_LABEL: "lora"}
    assert spec["priorityClassName"] == "slm-finetune" and spec["restartPolicy"] == "Never"
    assert job_["metadata"]["ownerReferences"][0]["kind"] == "FineTuneJob"
    # spec.image overrides the operator's --trainer-image for both steps
    spec2 = _pod_spec(_created(ftj(image="registry.example/trainer:dev")))
    assert {spec2["initContainers"][0]["image"], spec2["containers"][0]["image"]} == {
        "registry.example/trainer:dev"
    }


def test_preemption_eviction_and_sigterm_do_not_count_against_the_backoff_limit() -> None:
    job_ = _created(ftj(backoffLimit=2))
    assert job_["spec"]["backoffLimit"] == 2
    rules = job_["spec"]["podFailurePolicy"]["rules"]
    assert {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]} in rules
    assert {
        "action": "Ignore",
        "onExitCodes": {"containerName": "train", "operator": "In", "values": [143]},
    } in rules
    assert len(rules) == 2, "any other failure counts"


@pytest.mark.parametrize(
    ("base_model", "source", "want"),
    [
        (
            "qwen2.5-3b-instruct",
            None,
            "Qwen/Qwen2.5-3B-Instruct",
        ),  # catalog name: its Hugging Face repository
        ("acme/tagger-4b", None, "acme/tagger-4b"),  # not in the catalog: as given
        ("tiny", {"pvc": {"claimName": "weights", "path": "tiny/v1"}}, "/model/tiny/v1"),
    ],
)
def test_base_model_is_the_catalog_repository_the_given_id_or_a_pvc_folder(
    base_model: str, source: dict[str, Any] | None, want: str
) -> None:
    spec = _pod_spec(_created(ftj(baseModel=base_model, modelSource=source)))
    train = spec["containers"][0]
    assert train["args"][train["args"].index("--base-model") + 1] == want
    if source:
        assert _mounts(train)["/model"] == ("model", True)
        vol = next(v for v in spec["volumes"] if v["name"] == "model")
        assert vol["persistentVolumeClaim"] == {"claimName": "weights", "readOnly": True}


def test_the_incumbent_adapter_is_mounted_read_only_and_evaluated() -> None:
    served = {ADAPTER_ANNOTATION: "pvc://adapters/extractor/v1", PROMOTED_METHOD_ANNOTATION: "LoRA"}
    spec = _pod_spec(_created(ftj(), target=target(annotations=served)))
    train = spec["containers"][0]
    assert train["args"][-4:] == [
        "--incumbent",
        "/incumbent/extractor/v1",
        "--termination-log",
        "/dev/termination-log",
    ]
    # the incumbent lives on the output's PVC: one volume, written on /output, read-only on /incumbent
    assert _mounts(train)["/incumbent"] == ("output", True) and _mounts(train)["/output"] == ("output", False)
    assert [v["name"] for v in spec["volumes"] if "persistentVolumeClaim" in v] == ["output"]
    other = {ADAPTER_ANNOTATION: "pvc://older-adapters/extractor/v0"}
    spec = _pod_spec(_created(ftj(), target=target(annotations=other)))
    assert _mounts(spec["containers"][0])["/incumbent"] == ("incumbent", True)
    vol = next(v for v in spec["volumes"] if v["name"] == "incumbent")
    assert vol["persistentVolumeClaim"] == {"claimName": "older-adapters", "readOnly": True}


@pytest.mark.parametrize(
    "served",
    [
        {},
        {ADAPTER_ANNOTATION: "pvc://adapters/extractor/lora"},
    ],  # nothing served; this run's own output folder
)
def test_no_incumbent_without_an_adapter_other_than_the_output(served: dict[str, str]) -> None:
    spec = _pod_spec(_created(ftj(), target=target(annotations=served)))
    assert "--incumbent" not in spec["containers"][0]["args"]
    assert "/incumbent" not in _mounts(spec["containers"][0])


def test_dataset_paths_a_configmap_key_a_configmap_folder_and_a_pvc() -> None:
    key = _pod_spec(_created(ftj(dataset={"configMapRef": {"name": "calls", "key": "calls.jsonl"}})))
    assert key["initContainers"][0]["args"][1] == "/dataset/calls.jsonl"
    pvc = _pod_spec(_created(ftj(dataset={"pvc": {"claimName": "usage", "path": "2026/11"}})))
    assert pvc["initContainers"][0]["args"][1] == "/dataset/2026/11"
    vol = next(v for v in pvc["volumes"] if v["name"] == "dataset")
    assert vol["persistentVolumeClaim"] == {"claimName": "usage", "readOnly": True}


@pytest.mark.parametrize(
    ("method", "hyperparameters", "rank"),
    [("LoRA", {}, "16"), ("QLoRA", {"loraRank": 64}, "64"), ("Full", {}, None)],
)
def test_promotion_records_the_adapter_rank_vllm_must_make_room_for(
    method: str, hyperparameters: dict[str, int], rank: str | None
) -> None:
    f = ftj(method=method, hyperparameters=hyperparameters)
    annotations = promotion_annotations(f, "pvc://adapters/x/v1")
    assert annotations[PROMOTED_LORA_RANK_ANNOTATION] == rank
    assert annotations[PROMOTED_METHOD_ANNOTATION] == method


# ------------------------------------------------------------------------------------------ where it runs


def _affinity_nodes(job_: dict[str, Any]) -> list[str]:
    terms = _pod_spec(job_)["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    values: list[str] = terms["nodeSelectorTerms"][0]["matchFields"][0]["values"]
    return values


def test_a_segment_of_another_pool_with_the_same_name_is_not_used() -> None:
    """Two pools both call their segment `finetune`: only the nodes the FineTuneJob's pool selects count."""
    nodes = [*NODES, node("a100-1", "a100", {"0": "finetune"})]
    assert _affinity_nodes(_created(ftj(), nodes=nodes)) == ["gpu-1"]
    other = _created(ftj(), nodes=nodes, pool=pool(name="a100", selector="a100"))
    assert _affinity_nodes(other) == ["a100-1"]


def test_borrowing_runs_on_the_reservations_nodes_too_and_says_so_on_the_pods() -> None:
    both = _created(ftj(borrowFrom="llm-fallback"))
    assert _affinity_nodes(both) == ["gpu-1", "gpu-2"]
    assert both["spec"]["template"]["metadata"]["labels"][BORROWED_RESERVATION_LABEL] == "llm-fallback"
    only = _created(ftj(segment=None, borrowFrom="llm-fallback"))
    assert _affinity_nodes(only) == ["gpu-2"]


@pytest.mark.parametrize(
    ("spec", "lend", "reason", "says"),
    [
        ({"borrowFrom": "nope"}, "BestEffort", "ReservationNotFound", "has no reservation 'nope'"),
        ({"borrowFrom": "llm-fallback"}, "None", "ReservationDoesNotLend", "`lendTo: BestEffort`"),
        ({"segment": "other"}, "BestEffort", "SegmentNotFound", "has no segment 'other'"),
    ],
)
def test_a_reservation_or_segment_that_cannot_be_used_creates_no_job_and_says_why(
    spec: dict[str, Any], lend: str, reason: str, says: str
) -> None:
    d = decide_finetune(world(ftj(**spec), pool=pool(lend=lend)))
    assert d.job_create is None
    trained = condition(d.status, "Trained")
    assert trained.status.value == "Unknown" and trained.reason == reason and says in trained.message


def test_no_node_holds_the_segment_yet_and_no_pool() -> None:
    d = decide_finetune(world(ftj(), nodes=[node("gpu-1", "h100", {})]))
    assert d.job_create is None and condition(d.status, "Trained").reason == "SegmentNotReady"
    d = decide_finetune(world(ftj(), pool=None))
    assert d.job_create is None and condition(d.status, "Trained").reason == "PoolNotFound"


def test_neither_segment_nor_borrow_from_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one of `segment` or `borrowFrom`"):
        ftj(segment=None)


# ------------------------------------------------------------------------------------------ conditions


def _pass(
    f: FineTuneJob, job_: dict[str, Any] | None, pods: list[dict[str, Any]], **kw: Any
) -> FineTuneDecisions:
    return decide_finetune(world(f, job=job_, job_pods=pods, **kw))


def _then(f: FineTuneJob, d: FineTuneDecisions) -> FineTuneJob:
    """The FineTuneJob once the shell wrote the pass's status."""
    return f.model_copy(update={"status": d.status})


def test_sanitized_carries_what_the_sanitize_step_reported() -> None:
    f = ftj()
    d = _pass(f, job(), [job_pod("p1", sanitize=step("running"), phase="Pending")])
    s = condition(d.status, "Sanitized")
    assert (s.status.value, s.reason) == ("False", "Sanitizing") and "p1" in s.message
    pods = [job_pod("p1", sanitize=step("terminated", 0, SANITIZED), train=step("running"))]
    d = _pass(f, job(), pods)
    s = condition(d.status, "Sanitized")
    assert s.status.value == "True"
    assert s.message == "120 records sanitised, 2 skipped as unparsable; redacted: Email 10, Person 7"
    assert d.status.sanitization is not None and d.status.sanitization.redacted == {
        "APIKey": 0,
        "Email": 10,
        "Person": 7,
    }
    assert (
        condition(d.status, "Trained").reason == "Training"
        and "p1 trains on node gpu-1" in condition(d.status, "Trained").message
    )
    # the pod is gone later (the Job was cleaned up): the status keeps what it reported
    d2 = _pass(_then(f, d), job(complete=True), [])
    assert (
        condition(d2.status, "Sanitized").message == s.message
        and d2.status.sanitization == d.status.sanitization
    )


def test_a_sanitize_step_that_fails_says_why_and_the_job_fails_with_its_error() -> None:
    f = ftj()
    err = json.dumps(
        {"error": "NER model en_core_web_lg is not installed: pip install slm-operator[sanitize]"}
    )
    pods = [job_pod("p1", sanitize=step("terminated", 2, err), phase="Failed")]
    d = _pass(f, job(), pods)
    s = condition(d.status, "Sanitized")
    assert (s.status.value, s.reason) == (
        "False",
        "SanitizeFailed",
    ) and "en_core_web_lg is not installed" in s.message
    assert (
        condition(d.status, "Trained").reason == "Retrying"
        and condition(d.status, "Failed").status.value == "False"
    )
    d = _pass(f, job(failed=("BackoffLimitExceeded", "Job has reached the specified backoff limit")), pods)
    failed = condition(d.status, "Failed")
    assert (failed.status.value, failed.reason) == ("True", "SanitizeFailed")
    assert failed.message.startswith("sanitize step: NER model en_core_web_lg is not installed")
    assert condition(d.status, "Promoted").reason == "TrainingFailed"


@pytest.mark.parametrize(
    ("message", "says"),
    [
        (json.dumps({"error": "dataset has 3 records; at least 10 are needed"}), "dataset has 3 records"),
        (
            "Traceback (most recent call last):\n  ...\ntorch.OutOfMemoryError: CUDA out of memory\n",
            "CUDA out of memory",
        ),
        (None, "exit code 137 (OOMKilled)"),
    ],
)
def test_a_failed_trainer_fails_the_job_with_its_error_or_its_log_tail(
    message: str | None, says: str
) -> None:
    reason = "OOMKilled" if message is None else "Error"
    pods = [
        job_pod(
            "p1",
            sanitize=step("terminated", 0, SANITIZED),
            train=step("terminated", 137 if message is None else 1, message, reason),
            phase="Failed",
        )
    ]
    d = _pass(ftj(), job(failed=("BackoffLimitExceeded", "backoff limit")), pods)
    failed = condition(d.status, "Failed")
    assert (failed.status.value, failed.reason) == ("True", "TrainerFailed") and says in failed.message
    assert (
        condition(d.status, "Trained").reason == "JobFailed"
        and says in condition(d.status, "Trained").message
    )
    assert d.promotion is None and condition(d.status, "Evaluated").reason == "NotTrained"


def test_a_job_past_its_deadline_says_so() -> None:
    pods = [
        job_pod(
            "p1",
            sanitize=step("terminated", 0, SANITIZED),
            train=step("terminated", 1, '{"error": "killed"}'),
            phase="Failed",
        )
    ]
    d = _pass(ftj(), job(failed=("DeadlineExceeded", "Job was active longer than specified deadline")), pods)
    failed = condition(d.status, "Failed")
    assert (
        failed.reason == "JobFailed"
        and failed.message == "DeadlineExceeded: Job was active longer than specified deadline"
    )


def test_a_preempted_trainer_waits_and_resumes_and_says_so_once() -> None:
    f = ftj(borrowFrom="llm-fallback")
    stopped = job_pod(
        "p1", sanitize=step("terminated", 0, SANITIZED), train=step("terminated", 143, None),
        phase="Failed", node_name="gpu-2", disruption="PreemptionByScheduler",
    )  # fmt: skip
    waiting = job_pod("p2", created="2026-11-26T09:20:00Z", phase="Pending", node_name="")
    d = _pass(f, job(), [stopped, waiting])
    trained = condition(d.status, "Trained")
    assert trained.reason == "Preempted" and trained.status.value == "False"
    assert d.status.preemptions == 1
    assert [(e.reason, e.type) for e in d.events] == [("Preempted", "Warning")]
    assert "p1 was stopped on node gpu-2 (PreemptionByScheduler: preempted by llm-0)" in d.events[0].message
    assert "resumes from the last checkpoint" in d.events[0].message
    f = _then(f, d)
    assert _pass(f, job(), [stopped, waiting]).events == [], "one event per preemption"
    resumed = job_pod(
        "p2",
        created="2026-11-26T09:20:00Z",
        sanitize=step("terminated", 0, SANITIZED),
        train=step("running"),
        node_name="gpu-1",
    )
    d = _pass(f, job(), [stopped, resumed])
    assert (
        condition(d.status, "Trained").message
        == "pod p2 trains on node gpu-1 (resumed after 1 preemption(s))"
    )
    assert condition(d.status, "Failed").status.value == "False"


def test_the_newest_pod_preempted_and_no_replacement_yet_is_preempted() -> None:
    stopped = job_pod(
        "p1", sanitize=step("terminated", 0, SANITIZED), train=step("terminated", 143, None), phase="Failed"
    )
    d = _pass(ftj(), job(), [stopped])
    trained = condition(d.status, "Trained")
    assert trained.reason == "Preempted" and "TerminatedBySIGTERM" in trained.message
    assert d.status.preemptions == 1


# ------------------------------------------------------------------------------------------ the gate


@pytest.mark.parametrize(
    ("gate", "spec", "report", "incumbent", "reason", "passed"),
    [
        (80, {}, (90, 12, None), False, "GatePassed", True),
        (80, {}, (79, 12, None), False, "BelowGate", False),
        (
            0,
            {},
            (12, 12, None),
            False,
            "NotBetterThanBase",
            False,
        ),  # a tie with what serves now is not enough
        (0, {}, (80, 12, 82), True, "NotBetterThanIncumbent", False),
        (0, {}, (83, 12, 82), True, "GatePassed", True),
        (0, {}, (83, 90, 82), True, "GatePassed", True),  # beats the incumbent that serves now
        (0, {"mustBeatIncumbent": False}, (70, 80, 82), True, "GatePassed", True),
        (0, {}, (None, None, None), False, "NoScore", False),
        (0, {"mustBeatIncumbent": False}, (None, None, None), False, "NoGate", True),
        (
            0,
            {},
            (83, 12, None),
            True,
            "NoReferenceScore",
            False,
        ),  # the incumbent was given, no score came back
    ],
)
def test_the_gate(
    gate: int,
    spec: dict[str, Any],
    report: tuple[int | None, ...],
    incumbent: bool,
    reason: str,
    passed: bool,
) -> None:
    f = ftj(
        gate=gate,
        promote={"slmDeploymentRef": {"name": "extractor"}, "evaluation": {"minScorePercent": gate, **spec}},
    )
    d = _pass(f, job(complete=True, incumbent=incumbent), completed_pods(*report))
    ev = condition(d.status, "Evaluated")
    assert ev.reason == reason, ev.message
    assert (d.promotion is not None) == passed
    assert condition(d.status, "Promoted").reason == ("Rolling" if passed else "GateNotMet")


def test_evaluated_carries_the_three_scores() -> None:
    d = _pass(ftj(gate=50), job(complete=True, incumbent=True), completed_pods(87, 12, 80))
    ev = condition(d.status, "Evaluated")
    assert ev.message == (
        "tuned 87%, base model 12%, incumbent 80% on 100 held-out examples: beats the incumbent adapter "
        "SLMDeployment extractor serves (80%) and meets 50%"
    )
    e = d.status.evaluation
    assert e is not None and (e.score, e.base_score, e.incumbent_score, e.examples, e.train_examples) == (
        87,
        12,
        80,
        100,
        900,
    )
    assert condition(d.status, "Trained").message == "Job lora-train completed after 300 steps"
    assert d.status.artifact == "pvc://adapters/extractor/lora"


def test_without_promote_the_scores_are_reported_and_nothing_is_gated() -> None:
    d = _pass(ftj(promote=None), job(complete=True), completed_pods(40, 12))
    assert condition(d.status, "Evaluated").reason == "Scored" and d.promotion is None
    assert condition(d.status, "Promoted").reason == "NotRequested"


def test_observed_generation_is_the_generation_decided_from() -> None:
    f = ftj()
    f.metadata.generation = 3
    d = _pass(f, job(), [])
    assert d.status.observed_generation == 3
    assert all(c.observed_generation == 3 for c in d.status.conditions or [])


def test_a_second_pass_that_sees_nothing_new_writes_the_same_status() -> None:
    f = ftj()
    pods = [job_pod("p1", sanitize=step("terminated", 0, SANITIZED), train=step("running"))]
    d = _pass(f, job(), pods)
    again = _pass(_then(f, d), job(), pods)
    assert again.status == d.status and again.events == [] and again.job_create is None
    assert isinstance(again.status, FineTuneJobStatus)


def test_promote_patch_names_the_result_and_its_training() -> None:
    d = _pass(ftj(), job(complete=True), completed_pods(90))
    assert d.promotion is not None and d.promotion.patch == {
        "metadata": {
            "annotations": {
                ADAPTER_ANNOTATION: "pvc://adapters/extractor/lora",
                PROMOTED_METHOD_ANNOTATION: "LoRA",
                PROMOTED_LORA_RANK_ANNOTATION: "16",
            }
        }
    }
