"""A catalogue of invalid manifests: each is rejected with an error that names the wrong field.

The same file (tests/data/invalid-manifests.yaml) is applied to a real API server by
e2e/test_validation.py, so the CEL rules in the CRDs and the Python validators cannot disagree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from slm_operator.manifests import parse_object

CASES: list[dict[str, Any]] = yaml.safe_load(
    (Path(__file__).parent / "data" / "invalid-manifests.yaml").read_text()
)


def test_catalogue_is_large_enough() -> None:
    assert len(CASES) >= 25
    assert {c["manifest"]["kind"] for c in CASES} == {"GPUPool", "SLMDeployment", "FineTuneJob", "SLMRoute"}


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_invalid_manifest_is_rejected_naming_the_field(case: dict[str, Any]) -> None:
    with pytest.raises(ValueError) as err:
        parse_object(case["manifest"])
    assert case["field"] in str(err.value), str(err.value)
