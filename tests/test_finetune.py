"""FineTuneJob without a cluster: the training Job, the evaluation gate, the status that mirrors the Job."""

from __future__ import annotations

import json
from typing import Any

import pytest

from slm_operator.api.v1alpha1 import FineTuneJob
from slm_operator.contract import PROMOTED_LORA_RANK_ANNOTATION, PROMOTED_METHOD_ANNOTATION
from slm_operator.finetune import promotion_annotations
from slm_operator.render.finetune import evaluation_score, finetune_job, finetune_status, promotion_allowed

NOW = "2026-11-26T10:00:00Z"


def _ftj(gate: int = 0) -> FineTuneJob:
    return FineTuneJob.model_validate(
        {
            "apiVersion": "slm.io/v1alpha1",
            "kind": "FineTuneJob",
            "metadata": {"name": "lora", "namespace": "agents", "uid": "u1", "generation": 2},
            "spec": {
                "poolRef": {"name": "h100"},
                "segment": "finetune",
                "baseModel": "qwen2.5-3b-instruct",
                "dataset": {"configMapRef": {"name": "calls"}},
                "sanitization": {"redact": ["Email", "APIKey"]},
                "output": {"pvc": {"claimName": "adapters", "path": "extractor/v1"}},
                "promote": {
                    "slmDeploymentRef": {"name": "extractor"},
                    "evaluation": {"minScorePercent": gate},
                },
            },
        }
    )


def _pod(message: str | None, exit_code: int = 0) -> dict[str, Any]:
    term: dict[str, Any] = {"exitCode": exit_code}
    if message is not None:
        term["message"] = message
    return {"status": {"containerStatuses": [{"name": "train", "state": {"terminated": term}}]}}


def _job(complete: bool) -> dict[str, Any]:
    conds = [{"type": "Complete", "status": "True"}] if complete else []
    return {
        "metadata": {"name": "lora-train"},
        "status": {"conditions": conds, "active": 0 if complete else 1},
    }


def test_job_is_pinned_to_the_segment_and_sanitises_first() -> None:
    job = finetune_job(_ftj(), ["gpu-h100-1"], "img:1", "slm-finetune")
    spec = job["spec"]["template"]["spec"]
    assert spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ][0]["matchFields"][0]["values"] == ["gpu-h100-1"]
    init = spec["initContainers"][0]
    assert init["args"][0] == "sanitize" and "Email,APIKey" in init["args"]
    assert spec["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    assert "--lora-rank" in spec["containers"][0]["args"]
    assert job["metadata"]["ownerReferences"][0]["kind"] == "FineTuneJob"
    assert spec["priorityClassName"] == "slm-finetune"


def test_evaluation_score_comes_from_the_trainers_termination_message() -> None:
    assert evaluation_score([_pod(json.dumps({"evalScorePercent": 87}))]) == 87
    assert (
        evaluation_score([_pod(json.dumps({"evalScorePercent": 40})), _pod('{"evalScorePercent": 61}')]) == 61
    )
    assert evaluation_score([_pod("not json"), _pod(None)]) is None
    assert (
        evaluation_score([_pod('{"evalScorePercent": 99}', exit_code=1)]) is None
    )  # a failed run does not count


def test_gate_decides_promotion_and_the_status_says_why() -> None:
    assert promotion_allowed(_ftj(0), True, None)
    assert not promotion_allowed(_ftj(0), False, None)
    assert not promotion_allowed(_ftj(80), True, None)
    assert not promotion_allowed(_ftj(80), True, 79)
    assert promotion_allowed(_ftj(80), True, 80)
    st = finetune_status(
        _ftj(80), job=_job(True), segment_nodes=["n"], problem=None, promoted=False, now=NOW, score=70
    )
    ev = next(c for c in st.conditions or [] if c.type == "Evaluated")
    assert ev.status.value == "False" and ev.reason == "BelowGate" and "70%" in ev.message
    st = finetune_status(
        _ftj(80), job=_job(True), segment_nodes=["n"], problem=None, promoted=True, now=NOW, score=90
    )
    conds = {c.type: c for c in st.conditions or []}
    assert conds["Evaluated"].reason == "GatePassed" and conds["Promoted"].status.value == "True"
    assert conds["Trained"].status.value == "True" and st.artifact == "pvc://adapters/extractor/v1"
    assert all(c.observed_generation == 2 for c in conds.values())


def test_status_while_training_and_on_a_missing_segment() -> None:
    st = finetune_status(_ftj(), job=_job(False), segment_nodes=["n"], problem=None, promoted=False, now=NOW)
    conds = {c.type: c for c in st.conditions or []}
    assert conds["Trained"].reason == "Training" and conds["Promoted"].status.value == "False"
    st = finetune_status(
        _ftj(), job=None, segment_nodes=[], problem=("SegmentNotFound", "no segment"), promoted=False, now=NOW
    )
    conds = {c.type: c for c in st.conditions or []}
    assert conds["Trained"].reason == "SegmentNotFound" and conds["Trained"].status.value == "Unknown"


@pytest.mark.parametrize(
    ("method", "hyperparameters", "rank"),
    [("LoRA", {}, "16"), ("QLoRA", {"loraRank": 64}, "64"), ("Full", {}, None)],
)
def test_promotion_records_the_adapter_rank_vllm_must_make_room_for(
    method: str, hyperparameters: dict[str, int], rank: str | None
) -> None:
    raw = _ftj(0).model_dump(mode="json", by_alias=True, exclude_none=True)
    raw["spec"] |= {"method": method, "hyperparameters": hyperparameters}
    ftj = FineTuneJob.model_validate(raw)
    annotations = promotion_annotations(ftj, "pvc://adapters/x/v1")
    assert annotations[PROMOTED_LORA_RANK_ANNOTATION] == rank
    assert annotations[PROMOTED_METHOD_ANNOTATION] == method
