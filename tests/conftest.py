from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest
from hypothesis import settings

# Property tests explore new random examples on every local run. .ci/run sets SLM_HYPOTHESIS_PROFILE=ci: a
# fixed sequence of examples, so that every landing is judged on the same ones. A counterexample found
# locally is kept in .hypothesis/ and replayed first there.
settings.register_profile("ci", derandomize=True)
settings.load_profile(os.environ.get("SLM_HYPOTHESIS_PROFILE", "default"))

ROOT = Path(__file__).resolve().parent.parent

# slm_operator.capture is built on another branch: until it is merged, the gateway's tests use a minimal fake.
if importlib.util.find_spec("slm_operator.capture") is None:
    from tests import fake_capture

    sys.modules["slm_operator.capture"] = fake_capture


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT
