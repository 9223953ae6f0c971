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


def _cmd_run(args: argparse.Namespace) -> int:
    from slm_operator.controllers.main import run

    return run(args)


def _cmd_sanitize(args: argparse.Namespace) -> int:
    from collections import Counter

    from slm_operator.sanitize import PATTERNS, sanitize_records

    classes = [c.strip() for c in args.redact.split(",") if c.strip()]
    unknown = sorted(set(classes) - set(PATTERNS))
    if unknown:
        raise CliError(f"unknown PII classes {unknown}; known: {', '.join(PATTERNS)}")
    src = Path(args.input)
    files = sorted(f for f in src.rglob("*") if f.is_file() and not f.name.startswith(".")) if src.is_dir() else [src]
    if not files or not all(f.exists() for f in files):
        raise CliError(f"{src}: no input records")
    counts: Counter[str] = Counter()
    records = 0
    out = sys.stdout if args.output == "-" else open(args.output, "w", encoding="utf-8")  # noqa: SIM115
    try:
        for f in files:
            with open(f, encoding="utf-8", errors="replace") as fh:
                for line in sanitize_records(fh, classes, counts):
                    out.write(line + "\n")
                    records += 1
    finally:
        if out is not sys.stdout:
            out.close()
    summary = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "nothing"
    print(f"sanitised {records} records from {len(files)} files; redacted {summary}", file=sys.stderr)
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

    p = sub.add_parser(
        "run",
        help="run the operator (reconciles GPUPool, SLMDeployment and FineTuneJob)",
        description="Reconcile GPUPools, SLMDeployments and FineTuneJobs against the cluster of the in-cluster "
        "service account or the kubeconfig. With --leader-elect several replicas run and one is active.",
    )
    p.add_argument("--kubeconfig", default=None, help="kubeconfig file (default: in-cluster, then $KUBECONFIG)")
    p.add_argument("--namespace", default="slm-system", help="namespace of the operator (its Lease)")
    p.add_argument("--leader-elect", action="store_true", help="hold a Lease so that only one replica reconciles")
    p.add_argument("--nvidia-namespace", default="gpu-operator", help="namespace of the NVIDIA GPU Operator")
    p.add_argument("--mig-configmap", default="slm-mig-parted-config", help="mig-parted ConfigMap mig-manager reads")
    p.add_argument(
        "--device-plugin-configmap", default="slm-device-plugin-config", help="device-plugin config ConfigMap"
    )
    p.add_argument("--priority-class-guaranteed", default="slm-guaranteed")
    p.add_argument("--priority-class-burstable", default="slm-burstable")
    p.add_argument("--priority-class-besteffort", default="slm-besteffort")
    p.add_argument("--priority-class-llm-fallback", default="slm-llm-fallback")
    p.add_argument("--priority-class-finetune", default="", help="PriorityClass of fine-tuning Jobs (default none)")
    p.add_argument("--operator-image", default="ghcr.io/slm-operator/slm-operator:0.1.0", help="image of the sanitize step")
    p.add_argument("--health-listen", default="127.0.0.1:8080", help="host:port of /healthz ('' disables)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser(
        "sanitize",
        help="redact PII from JSON-lines usage records (the FineTuneJob's first step)",
    )
    p.add_argument("--input", required=True, help="file or folder of JSON-lines records")
    p.add_argument("--output", default="-", help="output file (default stdout)")
    p.add_argument("--redact", default="Email,PhoneNumber,CreditCard,APIKey", help="comma-separated PII classes")
    p.set_defaults(func=_cmd_sanitize)
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
