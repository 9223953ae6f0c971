"""Whether this tier can run here: the one test collected without the [train] extra."""

from __future__ import annotations

import os

import pytest

from tests_train.conftest import HAVE_TRAIN_EXTRA


def test_the_train_extra_is_installed() -> None:
    if not HAVE_TRAIN_EXTRA:
        if os.environ.get("SLM_REQUIRE_TRAIN") == "1":
            pytest.fail(
                "the [train] extra is not installed (SLM_REQUIRE_TRAIN=1: the trainer tier must not skip)"
            )
        pytest.skip("the [train] extra is not installed: `make test-train` creates .venv-train with it")
