"""The committed CRDs are exactly what the models generate, and they follow the API conventions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from slm_operator.api.apidoc import render
from slm_operator.api.crdgen import ALL_KINDS, crd_files, crd_for

ROOT = Path(__file__).resolve().parent.parent


def test_committed_crds_match_the_models() -> None:
    for name, text in crd_files().items():
        committed = ROOT / "crds" / name
        assert committed.exists(), f"crds/{name} missing: run `make crds`"
        assert committed.read_text() == text, f"crds/{name} is stale: run `make crds`"
    assert sorted(p.name for p in (ROOT / "crds").glob("*.yaml")) == sorted(crd_files())


def test_committed_api_reference_matches_the_models() -> None:
    assert (ROOT / "docs" / "api.md").read_text() == render(), "docs/api.md is stale: run `make crds`"


def _nodes(schema: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = [(path, schema)]
    for name, child in (schema.get("properties") or {}).items():
        out += _nodes(child, f"{path}.{name}")
    if "items" in schema:
        out += _nodes(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        out += _nodes(schema["additionalProperties"], f"{path}{{}}")
    return out


def test_schemas_are_structural_and_bounded() -> None:
    for kind in ALL_KINDS:
        crd = crd_for(kind)
        root = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        text = yaml.safe_dump(root)
        for forbidden in ("$ref", "anyOf", "allOf", "oneOf", "nullable", "title:", "const:"):
            assert forbidden not in text, (kind.KIND, forbidden)
        for path, node in _nodes(root["properties"]["spec"], "spec"):
            t = node.get("type")
            assert t is not None, f"{kind.KIND} {path}: every node has a type"
            assert t != "number", f"{kind.KIND} {path}: no floats in spec"
            if t == "string":
                assert "enum" in node or "maxLength" in node, f"{kind.KIND} {path}: unbounded string"
            if t == "array":
                assert "maxItems" in node, f"{kind.KIND} {path}: unbounded list"
                assert "x-kubernetes-list-type" in node, f"{kind.KIND} {path}: list without listType"
            if t == "integer":
                assert "minimum" in node and "maximum" in node, f"{kind.KIND} {path}: unbounded integer"
            if t == "object" and "properties" not in node:
                assert "maxProperties" in node, f"{kind.KIND} {path}: unbounded map"
            assert not ("properties" in node and "additionalProperties" in node), path


def test_crd_surface() -> None:
    for kind in ALL_KINDS:
        crd = crd_for(kind)
        v = crd["spec"]["versions"][0]
        assert "slm" in crd["spec"]["names"]["categories"]
        assert crd["spec"]["names"]["shortNames"]
        assert "status" in v["subresources"]
        cols = {c["name"]: c for c in v["additionalPrinterColumns"]}
        assert cols["Age"]["type"] == "date"
        conds = v["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]["conditions"]
        assert conds["x-kubernetes-list-type"] == "map" and conds["x-kubernetes-list-map-keys"] == ["type"]
        cond = conds["items"]["properties"]
        assert {"type", "status", "reason", "message", "lastTransitionTime", "observedGeneration"} <= set(
            cond
        )
    slm = crd_for(ALL_KINDS[1])["spec"]["versions"][0]
    assert slm["subresources"]["scale"]["specReplicasPath"] == ".spec.replicas"
    assert {"Ready", "QoS", "Share", "Desired", "Available"} <= {
        c["name"] for c in slm["additionalPrinterColumns"]
    }


def test_cel_rules_carry_actionable_messages() -> None:
    messages = []
    for kind in ALL_KINDS:
        root = crd_for(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        for _, node in _nodes(root):
            messages += [r["message"] for r in node.get("x-kubernetes-validations", [])]
    assert len(messages) >= 8
    assert any("must be 'MIG' or 'Exclusive'" in m for m in messages)
    assert any("must not share a name" in m for m in messages)
    for m in messages:  # each names a field in back-quotes and says what to do (must / must not / may)
        assert "`" in m and ("must" in m or "may" in m), m


def test_a_finetunejob_spec_is_immutable_and_the_message_says_what_to_do() -> None:
    """A FineTuneJob is one training run: the API server refuses a spec change (a CEL transition rule, checked
    against a real API server by e2e/test_operator.py) instead of leaving a Job that trains the old spec."""
    kinds = {k.KIND: crd_for(k)["spec"]["versions"][0]["schema"]["openAPIV3Schema"] for k in ALL_KINDS}
    rules = kinds["FineTuneJob"]["properties"]["spec"]["x-kubernetes-validations"]
    immutable = [r for r in rules if r["rule"] == "self == oldSelf"]
    assert len(immutable) == 1 and "create a new FineTuneJob" in immutable[0]["message"]
    for kind in ("GPUPool", "SLMDeployment"):  # these are edited in place
        assert "oldSelf" not in yaml.safe_dump(kinds[kind])
