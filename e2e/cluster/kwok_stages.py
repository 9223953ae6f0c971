"""Make kwok's pod stages leave the pods the e2e host kubelet runs (``e2e/hostkubelet``) alone.

kwokctl writes kwok's default stages (pod-ready, pod-complete, pod-delete, plus the node stages) into the
cluster's ``kwok.yaml`` when its configuration names no Stage, and the kwok controller reads that file when it
starts. This adds one requirement to the selector of every Pod stage there: the pod does not carry LABEL
(kwok matches a jq expression; ``DoesNotExist`` holds when the expression yields null). Used by up.sh, which
restarts the cluster's components afterwards so that the controller reads the file again.

    python3 e2e/cluster/kwok_stages.py KWOK_YAML LABEL

Prints the stages it changed; exits 1 when the file has no Pod stage (a kwok version that works differently).
Idempotent. Sources: kwok ``pkg/kwokctl/runtime/config.go`` (``Save``: default stages only when the
configuration has none), ``pkg/kwok/cmd/root.go`` (Pod stages from the config file), ``pkg/utils/expression``
(``Requirement.Matches``: ``DoesNotExist`` = no non-null value), ``kustomize/stage/pod/fast/*.yaml``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml


def requirement(label: str) -> dict[str, Any]:
    """The selector entry: the label's value is null (absent)."""
    return {"jq": {"key": f".metadata.labels[{json.dumps(label)}]", "operator": "DoesNotExist"}}


def exclude_label(docs: list[Any], label: str) -> list[str]:
    """Add the requirement to every Pod Stage in ``docs`` (in place); the names of the stages changed."""
    changed = []
    for doc in docs:
        if not isinstance(doc, dict) or doc.get("kind") != "Stage":
            continue
        spec = doc.get("spec") or {}
        if (spec.get("resourceRef") or {}).get("kind") != "Pod":
            continue
        selector = spec.setdefault("selector", {}) or {}
        spec["selector"] = selector
        exprs = selector.setdefault("matchExpressions", []) or []
        selector["matchExpressions"] = exprs
        if requirement(label) not in exprs:
            exprs.append(requirement(label))
            changed.append(str(doc["metadata"]["name"]))
    return changed


def pod_stages(docs: list[Any]) -> list[str]:
    return [
        str(d["metadata"]["name"])
        for d in docs
        if isinstance(d, dict)
        and d.get("kind") == "Stage"
        and ((d.get("spec") or {}).get("resourceRef") or {}).get("kind") == "Pod"
    ]


def main(argv: list[str]) -> int:
    path, label = Path(argv[0]), argv[1]
    docs = list(yaml.safe_load_all(path.read_text()))
    if not pod_stages(docs):
        print(f"{path}: no Pod stage found; cannot make kwok leave {label} pods alone", file=sys.stderr)
        return 1
    changed = exclude_label(docs, label)
    if changed:
        path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    print(" ".join(changed))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
