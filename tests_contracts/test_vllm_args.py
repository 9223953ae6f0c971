"""Every vLLM command line the operator renders, parsed by vLLM's own argument parser at the pinned version.

The cases come from the operator itself (tests_contracts/scenarios.py): each catalog model x quantisation it
accepts x share type (MIG, MPS, TimeSlicing, Exclusive), alone, with a promoted adapter and with extra
``runtime.args``, planned by the planner and rendered by ``render.replica_pod``. New flags (tool-call or
reasoning parsers, quantisation names, LoRA modules) are checked as soon as the renderer emits them.

vLLM lives in its own virtualenv (``make vllm-venv`` -> ``.venv-vllm``, the ``[vllm]`` extra of pyproject.toml,
the one place its version is pinned); ``tests_contracts/vllm_parse.py`` runs there with
``VLLM_TARGET_DEVICE=cpu`` (no GPU needed) and applies vLLM's ``make_arg_parser`` + ``parse_args``,
``validate_parsed_serve_args`` and ``AsyncEngineArgs.from_cli_args``. Not checked: ``create_engine_config``
(it fetches the model's config from the Hugging Face hub and probes the GPU). Without the virtualenv the tests
skip, unless ``SLM_REQUIRE_CONTRACTS=1`` (CI). ``SLM_VLLM_PYTHON`` points at another interpreter with vLLM.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tomllib
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from slm_operator.api.v1alpha1 import RuntimeSpec
from slm_operator.catalog import VLLM_VERSION
from tests_contracts.conftest import missing
from tests_contracts.scenarios import SHARE_TYPES, replica_args

ROOT = Path(__file__).resolve().parent.parent
HELPER = Path(__file__).resolve().parent / "vllm_parse.py"
CASES = replica_args()


def pinned_vllm() -> str:
    """The version of the ``[vllm]`` extra (``vllm==X``), the single pin."""
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["vllm"]
    (pin,) = [re.fullmatch(r"vllm==([\w.]+)", d).group(1) for d in extra if d.startswith("vllm==")]  # type: ignore[union-attr]
    return pin


@cache
def vllm_python() -> str:
    python = os.environ.get("SLM_VLLM_PYTHON") or str(ROOT / ".venv-vllm" / "bin" / "python")
    if not Path(python).exists():
        missing(f"no vLLM virtualenv at {python}: run `make vllm-venv`")
    return python


@cache
def parsed() -> tuple[str, dict[str, dict[str, Any]]]:
    request = {"cases": [{"case": c.case, "args": list(c.args)} for c in CASES]}
    done = subprocess.run(
        [vllm_python(), str(HELPER)],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
        env={**os.environ, "VLLM_TARGET_DEVICE": "cpu", "VLLM_LOGGING_LEVEL": "ERROR"},
    )
    assert done.returncode == 0, done.stderr[-4000:]
    doc = json.loads(done.stdout)
    return doc["vllm"], {r["case"]: r for r in doc["results"]}


def test_the_cases_cover_every_share_type_with_adapters_and_extra_args() -> None:
    for share in SHARE_TYPES:
        assert any(f"/{share}" in c.case for c in CASES), share
    assert any(c.adapter for c in CASES) and any(c.extra_args for c in CASES)
    assert {c.case.split("/")[1] for c in CASES} >= {"BF16", "FP8", "INT4"}


def test_the_installed_vllm_is_the_pinned_one() -> None:
    version, _ = parsed()
    assert version == pinned_vllm(), f"{vllm_python()} has vLLM {version}; pyproject pins {pinned_vllm()}"


def test_the_default_image_runs_the_pinned_vllm() -> None:
    """The parser checked here is the one in the image the operator deploys by default."""
    image = RuntimeSpec().image
    tag = image.rsplit(":", 1)[-1].removeprefix("v")
    assert tag == pinned_vllm(), f"default image {image} vs the [vllm] extra's vllm=={pinned_vllm()}"
    assert pinned_vllm() == VLLM_VERSION, "slm_operator.catalog.VLLM_VERSION and the [vllm] extra must agree"


@pytest.mark.parametrize("case", CASES, ids=[c.case for c in CASES])
def test_rendered_args_are_accepted_by_vllm(case: Any) -> None:
    _, results = parsed()
    result = results[case.case]
    assert "error" not in result, f"vLLM refused {' '.join(case.args)}: {result['error']}"
    got = result["parsed"]
    args = list(case.args)

    def value(flag: str) -> str:
        return args[len(args) - 1 - args[::-1].index(flag) + 1]  # the last occurrence wins, as in argparse

    # vLLM understood what the operator meant.
    assert got["model"] == value("--model")
    assert got["max_model_len"] == int(value("--max-model-len"))
    assert got["max_num_seqs"] == int(value("--max-num-seqs"))
    assert got["gpu_memory_utilization"] == pytest.approx(float(value("--gpu-memory-utilization")))
    if "--quantization" in args:
        assert got["quantization"] == value("--quantization")
    if case.adapter:
        assert got["enable_lora"] and got["lora_modules"], (
            "a promoted adapter must reach vLLM as a LoRA module"
        )
