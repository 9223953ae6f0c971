"""The contract module is the one place that spells the cluster's names, and its placement record round-trips."""

from __future__ import annotations

import ast
import json
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from slm_operator.contract import (
    GPU_RESOURCE,
    PLACEMENT_ANNOTATION,
    PlacementRecord,
    mig_resource,
)
from slm_operator.views import NodeView, PodView

PKG = Path(__file__).resolve().parents[1] / "operator" / "slm_operator"

# String literals that must spell a contract name themselves, and why.
ALLOWED = {
    # typing.Literal takes literal values only, not a Final constant
    ("api/v1alpha1.py", "slm.io/v1alpha1"),
}


def _spelled_names(path: Path) -> list[tuple[int, str]]:
    """String literals that are a label, annotation or resource name (not prose that mentions one)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            value = node.value
            if value.startswith(("slm.io/", "nvidia.com/")) and " " not in value:
                out.append((node.lineno, value))
    return out


def test_only_the_contract_module_spells_labels_annotations_and_resources() -> None:
    offenders = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).as_posix()
        if rel == "contract.py":
            continue
        for line, value in _spelled_names(path):
            if (rel, value) not in ALLOWED:
                offenders.append(f"{rel}:{line}: {value!r}")
    assert not offenders, "name these in slm_operator/contract.py and import them:\n" + "\n".join(offenders)


records = st.builds(
    PlacementRecord,
    deployment=st.from_regex(r"[a-z0-9-]{1,20}/[a-z0-9-]{1,20}", fullmatch=True),
    ordinal=st.integers(0, 1000),
    node=st.from_regex(r"[a-z0-9.-]{1,30}", fullmatch=True),
    gpu=st.integers(0, 15),
    mechanism=st.sampled_from(["MIG", "MPS", "TimeSlicing", "Exclusive"]),
    mig_profile=st.none() | st.sampled_from(["1g.10gb", "3g.40gb", "1g.10gb+me"]),
    memory_bytes=st.none() | st.integers(1, 1 << 40),
)


@given(records)
def test_placement_record_round_trips_through_its_annotation(rec: PlacementRecord) -> None:
    pod = {"metadata": {"annotations": {PLACEMENT_ANNOTATION: rec.to_annotation()}}}
    assert PlacementRecord.from_pod(pod) == rec
    assert PodView(pod).placement == rec


def test_placement_annotation_keeps_its_json_keys() -> None:
    """Pods already running carry this JSON; the agent and older operators read these exact keys."""
    rec = PlacementRecord("agents/x", 2, "gpu-node-1", 3, "MIG", "1g.10gb", 10 << 30)
    assert json.loads(rec.to_annotation()) == {
        "deployment": "agents/x",
        "ordinal": 2,
        "node": "gpu-node-1",
        "gpu": 3,
        "mechanism": "MIG",
        "migProfile": "1g.10gb",
        "memoryBytes": 10 << 30,
    }
    assert rec.to_annotation() == json.dumps(rec.to_dict(), sort_keys=True)


def test_unreadable_placement_is_none_not_an_error() -> None:
    for raw in (
        None,
        "",
        "{",
        "[]",
        '{"deployment": "a/b"}',
        '{"deployment":"a/b","ordinal":"x","node":"n","gpu":0,"mechanism":"MIG"}',
    ):
        assert PlacementRecord.from_annotation(raw) is None
    assert PlacementRecord.from_pod({}) is None
    assert PodView({"metadata": None}).placement is None


def test_mig_resource_uses_the_mixed_strategy_name() -> None:
    assert mig_resource("1g.10gb") == "nvidia.com/mig-1g.10gb"
    assert mig_resource("1g.10gb+me") == "nvidia.com/mig-1g.10gb.me"


def _pod(phase: str = "Running", ready: str | None = "True", deleting: bool = False) -> dict:
    pod: dict = {"metadata": {"name": "p", "namespace": "ns"}, "status": {"phase": phase}}
    if ready is not None:
        pod["status"]["conditions"] = [
            {"type": "PodScheduled", "status": "True"},
            {"type": "Ready", "status": ready},
        ]
    if deleting:
        pod["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return pod


def test_a_pod_is_ready_only_while_live_with_ready_true() -> None:
    assert PodView(_pod()).ready
    assert not PodView(_pod(ready="False")).ready
    assert not PodView(_pod(ready=None)).ready
    assert not PodView(_pod(deleting=True)).ready
    assert not PodView(_pod(phase="Succeeded")).ready
    assert not PodView(_pod(phase="Failed")).live
    assert PodView(_pod(phase="Pending", ready=None)).live


def test_pod_node_falls_back_to_the_nominated_node_and_counts_whole_gpus() -> None:
    pod = {
        "spec": {
            "containers": [
                {"resources": {"limits": {GPU_RESOURCE: "2"}}},
                {"resources": {"limits": {"cpu": "1"}}},
                {"resources": {"limits": {GPU_RESOURCE: 1}}},
            ]
        },
        "status": {"nominatedNodeName": "n1"},
    }
    view = PodView(pod)
    assert view.node_name == "n1" and view.bound_node == ""
    assert view.whole_gpus == 3
    pod["spec"]["nodeName"] = "n2"
    assert PodView(pod).node_name == "n2"


def test_empty_objects_read_as_empty() -> None:
    node = NodeView({})
    assert (node.name, dict(node.labels), dict(node.annotations), dict(node.capacity)) == ("", {}, {}, {})
    assert not node.deleting
