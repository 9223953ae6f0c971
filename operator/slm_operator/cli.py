"""The ``slm-operator`` command line.

Sub-commands: ``crds`` (print or write the CRDs), ``estimate`` (GPU memory of a model and the smallest
share per GPU), ``plan`` (offline placement plan of manifests), ``run`` (the operator), ``agent``
(the NVML node agent). Exit codes: 0 success, 1 something could not be placed (``plan`` only),
2 bad input (message on stderr, no traceback).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from slm_operator import __version__

EXIT_OK = 0
EXIT_UNPLACED = 1
EXIT_BAD_INPUT = 2


class CliError(Exception):
    """Bad input: printed as one line on stderr, exit code 2."""


def _cmd_crds(args: argparse.Namespace) -> int:
    from slm_operator.api.crdgen import all_crds_yaml, crd_files

    if args.output_dir:
        out = Path(args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        for name, text in crd_files().items():
            (out / name).write_text(text)
        return EXIT_OK
    sys.stdout.write(all_crds_yaml())
    return EXIT_OK


def _cmd_estimate(args: argparse.Namespace) -> int:
    from slm_operator.catalog import slm_by_name, slm_models
    from slm_operator.sizing import Quantization, estimate_memory, smallest_shares

    model = slm_by_name(args.model)
    if model is None:
        known = ", ".join(m.name for m in slm_models())
        raise CliError(f"unknown model {args.model!r}; the catalog knows: {known}")
    context = args.context or min(model.architecture.max_context_tokens, 4096)
    try:
        est = estimate_memory(model.architecture, Quantization(args.quantization), context, args.concurrency)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    shares = smallest_shares(est.total_bytes)
    if args.output == "json":
        print(
            json.dumps(
                {
                    "model": model.name,
                    "estimate": est.model_dump(mode="json"),
                    "shares": [s.model_dump(mode="json") for s in shares],
                },
                indent=2,
            )
        )
        return EXIT_OK
    gib = 1 << 30
    print(f"{model.name}  {args.quantization}  context {context}  concurrency {args.concurrency}")
    print(f"  weights   {est.weights_bytes / gib:8.2f} GiB")
    print(f"  KV cache  {est.kv_cache_bytes / gib:8.2f} GiB  ({est.kv_bytes_per_token} bytes/token)")
    print(f"  overhead  {est.overhead_bytes / gib:8.2f} GiB")
    print(f"  total     {est.total_bytes / gib:8.2f} GiB")
    print()
    print(f"  {'GPU':<16}{'smallest MIG':<16}{'whole GPU':<11}{'MPS copies/GPU':>14}")
    for s in shares:
        whole = "fits" if s.whole_gpu_fits else "too small"
        print(f"  {s.gpu:<16}{s.mig_profile or '-':<16}{whole:<11}{s.mps_max_replicas_per_gpu:>14}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="slm-operator",
        description="Run fleets of small language models on fractions of GPUs (MIG, MPS, time-slicing).",
    )
    parser.add_argument("--version", action="version", version=f"slm-operator {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("crds", help="print the CustomResourceDefinitions (or write them to a folder)")
    p.add_argument("-o", "--output-dir", help="write one file per CRD into this folder instead of stdout")
    p.set_defaults(func=_cmd_crds)

    p = sub.add_parser(
        "estimate",
        help="GPU memory one replica of a model needs and the smallest share per GPU model",
        description="Estimate weights + KV cache + runtime overhead of one replica (see docs/sizing.md) "
        "and print the smallest MIG profile, whole-GPU fit and MPS copies per catalog GPU.",
    )
    p.add_argument("model", help="catalog name or Hugging Face id, e.g. qwen2.5-3b-instruct")
    p.add_argument("-q", "--quantization", default="BF16", choices=["BF16", "FP16", "FP8", "INT8", "INT4"])
    p.add_argument(
        "-c", "--context", type=int, default=0, help="max context tokens (default min(4096, model max))"
    )
    p.add_argument(
        "-n", "--concurrency", type=int, default=8, help="concurrent sequences per replica (default 8)"
    )
    p.add_argument("-o", "--output", choices=["table", "json"], default="table")
    p.set_defaults(func=_cmd_estimate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except CliError as exc:
        print(f"slm-operator {args.command}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
