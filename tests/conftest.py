from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# Property tests explore new random examples on every local run. .ci/run sets SLM_HYPOTHESIS_PROFILE=ci: a
# fixed sequence of examples, so that every landing is judged on the same ones. A counterexample found
# locally is kept in .hypothesis/ and replayed first there. The ci profile has no deadline and no too_slow
# health check: both judge wall-clock time, which on a loaded CI machine says nothing about the code.
settings.register_profile("ci", derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("SLM_HYPOTHESIS_PROFILE", "default"))

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT
