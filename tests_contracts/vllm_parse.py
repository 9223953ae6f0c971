"""Runs inside the vLLM virtualenv (``.venv-vllm``, ``make vllm-venv``): parses command lines with vLLM's own parser.

Reads ``{"cases": [{"case": ..., "args": [...]}]}`` on stdin, prints one JSON result per case. Per case:

1. ``make_arg_parser(FlexibleArgumentParser()).parse_args(args)``: the parser of ``vllm serve`` and of the
   image's OpenAI server entrypoint (vllm/entrypoints/common/cli_args.py), built from vLLM's own
   ``FrontendArgs`` and ``AsyncEngineArgs`` (unknown flags, bad types and choices are refused by argparse);
2. ``validate_parsed_serve_args(args)``: the checks ``vllm serve`` runs before loading anything (e.g.
   ``--enable-auto-tool-choice`` needs ``--tool-call-parser``, the chat template is readable);
3. ``AsyncEngineArgs.from_cli_args(args)``: the engine arguments, pydantic-validated.

``create_engine_config()`` is not called: it loads the model's Hugging Face config (network) and checks the
GPU. The parser needs no GPU: the caller sets ``VLLM_TARGET_DEVICE=cpu`` so vLLM's platform detection picks
its CPU platform instead of failing to infer a device.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
from typing import Any


def main() -> int:
    import vllm
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.entrypoints.common.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    request = json.load(sys.stdin)
    parser = make_arg_parser(FlexibleArgumentParser(prog="vllm serve"))
    parser.exit_on_error = False
    results: list[dict[str, Any]] = []
    for case in request["cases"]:
        out: dict[str, Any] = {"case": case["case"]}
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                args = parser.parse_args(case["args"])
            validate_parsed_serve_args(args)
            engine = AsyncEngineArgs.from_cli_args(args)
            out["parsed"] = {
                "model": engine.model,
                "served_model_name": args.served_model_name,
                "port": args.port,
                "max_model_len": engine.max_model_len,
                "max_num_seqs": engine.max_num_seqs,
                "max_num_batched_tokens": engine.max_num_batched_tokens,
                "gpu_memory_utilization": engine.gpu_memory_utilization,
                "quantization": engine.quantization,
                "enable_lora": engine.enable_lora,
                "lora_modules": [{"name": m.name, "path": m.path} for m in args.lora_modules or []],
                "tool_call_parser": getattr(args, "tool_call_parser", None),
                "enable_auto_tool_choice": getattr(args, "enable_auto_tool_choice", None),
                "reasoning_parser": getattr(engine, "reasoning_parser", None),
            }
        except SystemExit as exc:  # argparse reports a bad command line by exiting
            out["error"] = f"argparse exited ({exc.code}): {err.getvalue().strip().splitlines()[-1:]}"
        except Exception as exc:
            out["error"] = f"{type(exc).__name__}: {exc}"
        results.append(out)
    json.dump({"vllm": vllm.__version__, "results": results}, sys.stdout, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
