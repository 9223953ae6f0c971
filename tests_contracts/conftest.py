"""Contract tests: the operator's output fed to the real parsers of vLLM and NVIDIA's components.

Each tool the tests need is built or installed by ``make test-contracts`` (docs/contract-tests.md). Without it
a test skips locally, but fails when ``SLM_REQUIRE_CONTRACTS=1`` (set by .ci/run): CI never skips them.
"""

from __future__ import annotations

import os

import pytest


def missing(what: str) -> None:
    """Skip (developer machine) or fail (CI) because a real parser is not installed."""
    if os.environ.get("SLM_REQUIRE_CONTRACTS") == "1":
        pytest.fail(f"{what} (SLM_REQUIRE_CONTRACTS=1: contract tests must not skip)")
    pytest.skip(what)
