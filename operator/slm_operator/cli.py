"""The ``slm-operator`` command line.

Sub-commands: ``crds`` (print or write the CRDs), ``estimate`` (GPU memory of a model and the smallest
share per GPU), ``plan`` (offline placement plan of manifests), ``run`` (the operator), ``agent``
(the NVML node agent). Exit codes: 0 success, 1 something could not be placed (``plan`` only),
2 bad input (message on stderr, no traceback), 3 no NVIDIA driver (``agent`` only, see its help).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from slm_operator import DEFAULT_TRAINER_IMAGE, __version__

if TYPE_CHECKING:
    from pydantic import ValidationError

    from slm_operator.api.v1alpha1 import SLMDeployment
    from slm_operator.manifests import Manifests

EXIT_OK = 0
EXIT_UNPLACED = 1
EXIT_BAD_INPUT = 2

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"  # what add_subparsers() returns


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


#: ``--architecture`` takes the fields of an SLMDeployment's ``spec.model.architecture`` (docs/api.md).
ARCHITECTURE_FIELDS = (
    "parameters, layers, hiddenSize, attentionHeads, kvHeads, headDim and optionally maxContextTokens"
)
ARCHITECTURE_EXAMPLE = (
    "--architecture '{parameters: 3085938688, layers: 36, hiddenSize: 2048, attentionHeads: 16, kvHeads: 2, "
    "headDim: 128, maxContextTokens: 32768}'"
)
#: Where the estimate's SLMDeployment fields come from on the command line, for error messages.
_ESTIMATE_FLAGS = {
    "name": "MODEL",
    "quantization": "--quantization",
    "maxContextTokens": "--context",
    "maxConcurrentSequences": "--concurrency",
    "architecture": "--architecture",
}


def _read_architecture(text: str) -> dict[str, Any]:
    """``--architecture``: a file, or inline JSON/YAML, holding the fields of ``spec.model.architecture``."""
    import yaml

    path = Path(text)
    try:
        data = yaml.safe_load(path.read_text() if path.is_file() else text)
    except (OSError, yaml.YAMLError) as exc:
        raise CliError(f"--architecture {text!r}: not readable as JSON or YAML ({exc})") from None
    if not isinstance(data, dict):
        raise CliError(
            f"--architecture {text!r} is neither a file nor a JSON/YAML object: give {ARCHITECTURE_FIELDS}, "
            f"inline or in a file, e.g. {ARCHITECTURE_EXAMPLE}"
        )
    return data


def _estimate_deployment(args: argparse.Namespace, architecture: dict[str, Any] | None) -> SLMDeployment:
    """The SLMDeployment whose sizing ``estimate`` prints: the same validation and sizing as the operator's."""
    from pydantic import ValidationError

    from slm_operator.api.v1alpha1 import ModelArchitectureSpec, SLMDeployment
    from slm_operator.catalog import slm_by_name

    if architecture is not None:
        try:
            max_context = ModelArchitectureSpec.model_validate(architecture).max_context_tokens
        except ValidationError as exc:
            raise CliError(
                f"--architecture: {_validation_message(exc)}; give {ARCHITECTURE_FIELDS}"
            ) from None
    else:
        model = slm_by_name(args.model)
        assert model is not None  # checked by the caller
        max_context = model.architecture.max_context_tokens
    if args.context > max_context:
        facts = (
            "the architecture's maxContextTokens"
            if architecture is not None
            else "the model's maximum context"
        )
        raise CliError(
            f"--context {args.context} exceeds {facts} of {max_context} tokens: pass at most {max_context}"
        )
    model_spec: dict[str, Any] = {
        "name": args.model,
        "quantization": args.quantization,
        "maxContextTokens": args.context or min(max_context, 4096),
        "maxConcurrentSequences": args.concurrency,
    }
    if architecture is not None:
        model_spec["architecture"] = architecture
        if "/" not in args.model:  # the estimate loads no weights; a deployment names its `source`
            model_spec["source"] = {"pvc": {"claimName": "estimate"}}
    doc = {
        "metadata": {"name": "estimate", "namespace": "default"},
        "spec": {"poolRef": {"name": "estimate"}, "model": model_spec},
    }
    try:
        return SLMDeployment.model_validate(doc)
    except ValidationError as exc:
        raise CliError(_validation_message(exc)) from None


def _validation_message(exc: ValidationError) -> str:
    """Pydantic errors of the estimate's SLMDeployment, named by the flag that sets the field."""
    parts = []
    for err in exc.errors():
        loc = [str(x) for x in err["loc"] if x not in ("spec", "model")]
        where = " ".join([_ESTIMATE_FLAGS.get(loc[0], loc[0]), *loc[1:]]) if loc else ""
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts)


def _cmd_estimate(args: argparse.Namespace) -> int:
    from slm_operator.catalog import slm_by_name, slm_models
    from slm_operator.inventory import DemandError, size_deployment
    from slm_operator.sizing import smallest_shares

    architecture = _read_architecture(args.architecture) if args.architecture else None
    if architecture is None and slm_by_name(args.model) is None:
        known = ", ".join(m.name for m in slm_models())
        raise CliError(
            f"unknown model {args.model!r}; the catalog knows: {known}. For another model pass its config.json "
            f"facts as --architecture ({ARCHITECTURE_FIELDS}), e.g. {ARCHITECTURE_EXAMPLE}"
        )
    dep = _estimate_deployment(args, architecture)
    try:
        sizing = size_deployment(dep)
    except DemandError as exc:
        raise CliError(str(exc).removeprefix("`spec.model`: ")) from None
    est = sizing.estimate
    assert est is not None  # no resources.gpuMemory override: the figure is the estimate
    context = est.context_tokens
    shares = smallest_shares(est.total_bytes)
    if args.output == "json":
        print(
            json.dumps(
                {
                    "model": sizing.model_name,
                    "estimate": est.model_dump(mode="json"),
                    "shares": [s.model_dump(mode="json") for s in shares],
                },
                indent=2,
            )
        )
        return EXIT_OK
    gib = 1 << 30
    print(f"{sizing.model_name}  {args.quantization}  context {context}  concurrency {args.concurrency}")
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


def _cmd_plan(args: argparse.Namespace) -> int:
    from slm_operator.inventory import (
        DemandError,
        InventoryError,
        demand_for,
        node_inventory,
        pool_nodes,
        pool_policy,
        size_deployment,
    )
    from slm_operator.manifests import ManifestError, load_manifests
    from slm_operator.planner import plan_pool
    from slm_operator.report import render_table

    try:
        m = load_manifests(args.filename)
    except ManifestError as exc:
        raise CliError(str(exc)) from None
    if not m.pools:
        raise CliError("no GPUPool in the given manifests: a plan needs at least one pool")
    _check_emit_args(args)
    plans = []
    problems: list[str] = []
    unplaced = 0
    for pool in sorted(m.pools, key=lambda p: p.metadata.name):
        inventories = []
        for node in pool_nodes(pool, m.nodes):
            try:
                inventories.append(node_inventory(node, {})[0])
            except InventoryError as exc:
                where = m.sources.get(f"Node/{node['metadata']['name']}", "")
                raise CliError(
                    f"{where}: GPUPool {pool.metadata.name} selects this node, but {exc}"
                ) from None
        demands = []
        for dep in sorted(m.deployments, key=lambda d: (d.metadata.namespace or "", d.metadata.name)):
            if dep.spec.pool_ref.name != pool.metadata.name:
                continue
            try:
                demands.append(demand_for(dep, size_deployment(dep)))
            except DemandError as exc:
                problems.append(f"{dep.metadata.namespace}/{dep.metadata.name}: {exc.reason}: {exc}")
        plan = plan_pool(
            pool_policy(pool), inventories, demands, optimize=args.optimize, time_budget_s=args.time_budget
        )
        unplaced += plan.pool.replicas_unplaced
        plans.append(plan)
    orphans = sorted(
        f"{d.metadata.namespace}/{d.metadata.name}"
        for d in m.deployments
        if d.spec.pool_ref.name not in {p.metadata.name for p in m.pools}
    )
    problems += [f"{o}: PoolNotFound: its GPUPool is not in the given manifests" for o in orphans]
    if args.output == "json":
        doc = {
            "pools": [p.model_dump(mode="json", by_alias=True) for p in plans],
            "problems": problems,
        }
        print(json.dumps(doc, indent=2))
    else:
        for plan in plans:
            print(render_table(plan))
        for p in problems:
            print(f"not planned: {p}")
    if args.emit:
        _emit(args, m)
    return EXIT_UNPLACED if unplaced or problems else EXIT_OK


def _check_emit_args(args: argparse.Namespace) -> None:
    """Before planning: --emit writes what the operator would (its heuristic), into a new or empty folder,
    or with --force over an earlier --emit."""
    if args.force and not args.emit:
        raise CliError("--force only says what --emit may replace: give --emit DIR too")
    if not args.emit:
        return
    if args.optimize:
        raise CliError(
            "--emit writes what the operator would write, and the operator plans with the heuristic: "
            "drop --optimize (or run it without --emit to compare)"
        )
    out = Path(args.emit)
    if out.exists() and not out.is_dir():
        raise CliError(f"--emit {out}: not a folder: give a new or empty folder")
    if out.is_dir() and any(out.iterdir()) and not args.force:
        raise CliError(
            f"--emit {out}: the folder is not empty: give a new or empty folder, or --force to replace "
            "the files an earlier --emit wrote there (other files are kept)"
        )


def _emitted_files(root: Path) -> list[Path]:
    """Files under ``root`` an earlier --emit wrote (their first line is its marker), hidden folders skipped."""
    from slm_operator.emit import MARKER

    out = []
    for f in sorted(root.rglob("*")):
        if not f.is_file() or any(p.startswith(".") for p in f.relative_to(root).parts):
            continue
        with open(f, encoding="utf-8", errors="replace") as fh:
            first = fh.readline().rstrip("\n")
        if first in (MARKER, f"<!-- {MARKER.removeprefix('# ')} -->"):
            out.append(f)
    return out


def _emit(args: argparse.Namespace, m: Manifests) -> None:
    """Write every object the operator would write (``slm_operator.emit``) under --emit's folder."""
    from slm_operator.emit import emit
    from slm_operator.render import OperatorConfig

    root = Path(args.emit)
    files = emit(m, OperatorConfig.from_flags(args)).files()
    old = _emitted_files(root) if root.is_dir() else []
    clash = sorted(p for p in files if (root / p).exists() and root / p not in old)
    if clash:
        raise CliError(f"--emit {root}: {root / clash[0]} exists and was not written by --emit: move it away")
    for f in old:
        f.unlink()
    for d in sorted((p for p in root.rglob("*") if p.is_dir()), reverse=True) if root.is_dir() else []:
        if not any(d.iterdir()):
            d.rmdir()
    for rel, text in sorted(files.items()):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    print(f"wrote {len(files)} files to {root} (index: {root / 'README.md'})", file=sys.stderr)


def _cmd_show(args: argparse.Namespace) -> int:
    """Placement per GPU as the cluster has it: replica pods (their placement) and pool status."""
    from slm_operator.contract import (
        API_VERSION,
        DEPLOYMENT_LABEL,
        DEVICE_PLUGIN_CONFIG_LABEL,
        GPU_ROLES_ANNOTATION,
        MIG_CONFIG_LABEL,
        MIG_CONFIG_STATE_LABEL,
        POOL_LABEL,
        QOS_LABEL,
        REPLICA_LABEL,
    )
    from slm_operator.controllers.kube import Kube, KubeConfigError, load_config
    from slm_operator.views import NodeView, PodView

    try:
        kube = Kube(load_config(args.kubeconfig))
    except KubeConfigError as exc:
        raise CliError(str(exc)) from None
    pools = kube.list(API_VERSION, "GPUPool")
    pods = kube.list("v1", "Pod", label_selector=POOL_LABEL)
    nodes = {n["metadata"]["name"]: n for n in kube.list("v1", "Node")}
    for pool in sorted(pools, key=lambda p: p["metadata"]["name"]):
        name = pool["metadata"]["name"]
        st = pool.get("status") or {}
        print(
            f"GPUPool {name}: {st.get('gpusUsed', 0)}/{st.get('gpusTotal', 0)} GPUs used, "
            f"{st.get('replicasPlaced', 0)} replicas placed, {st.get('replicasUnplaced', 0)} unplaced, "
            f"stranded {st.get('memoryStranded', '0')}"
        )
        rows: dict[tuple[str, int], list[str]] = {}
        for pod in map(PodView, pods):
            rec = pod.placement
            if pod.labels.get(POOL_LABEL) != name or rec is None:
                continue
            rows.setdefault((rec.node, rec.gpu), []).append(
                f"{pod.namespace}/{pod.labels.get(DEPLOYMENT_LABEL)}#{pod.labels.get(REPLICA_LABEL)}"
                f" [{rec.mig_profile or rec.mechanism}, {pod.labels.get(QOS_LABEL)}, {pod.phase or '?'}]"
            )
        for node_st in st.get("nodeStatus") or []:
            node = NodeView(nodes.get(node_st["name"], {}))
            roles = json.loads(node.annotations.get(GPU_ROLES_ANNOTATION) or "{}")
            print(
                f"  node {node_st['name']} ({node_st.get('product')}, {node_st.get('gpus')} GPUs): "
                f"mig.config={node.labels.get(MIG_CONFIG_LABEL, '-')} ({node.labels.get(MIG_CONFIG_STATE_LABEL, '-')}), "
                f"device-plugin.config={node.labels.get(DEVICE_PLUGIN_CONFIG_LABEL, '-')}, "
                f"inventory from {node_st.get('inventorySource')}"
            )
            for i in range(int(node_st.get("gpus") or 0)):
                tenants = rows.get((node_st["name"], i), [])
                role = roles.get(str(i))
                what = "; ".join(tenants) if tenants else (f"[{role}]" if role else "free")
                print(f"    GPU {i}: {what}")
        print()
    return EXIT_OK


def _cmd_run(args: argparse.Namespace) -> int:
    from slm_operator.controllers.kube import KubeConfigError
    from slm_operator.controllers.main import run

    try:
        return run(args)
    except KubeConfigError as exc:
        raise CliError(str(exc)) from None


def _cmd_agent(args: argparse.Namespace) -> int:
    from slm_operator.agent.run import AgentConfigError, run

    try:
        return run(args)
    except AgentConfigError as exc:
        raise CliError(str(exc)) from None


def _cmd_sanitize(args: argparse.Namespace) -> int:
    from collections import Counter

    from slm_operator.sanitize import PATTERNS, sanitize_records

    classes = [c.strip() for c in args.redact.split(",") if c.strip()]
    unknown = sorted(set(classes) - set(PATTERNS))
    if unknown:
        raise CliError(f"unknown PII classes {unknown}; known: {', '.join(PATTERNS)}")
    src = Path(args.input)
    files = (
        sorted(f for f in src.rglob("*") if f.is_file() and not f.name.startswith("."))
        if src.is_dir()
        else [src]
    )
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


def _add_crds_parser(sub: Subparsers) -> None:
    p = sub.add_parser("crds", help="print the CustomResourceDefinitions (or write them to a folder)")
    p.add_argument("-o", "--output-dir", help="write one file per CRD into this folder instead of stdout")
    p.set_defaults(func=_cmd_crds)


def _add_estimate_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "estimate",
        help="GPU memory one replica of a model needs and the smallest share per GPU model",
        description="Estimate weights + KV cache + runtime overhead of one replica (see docs/sizing.md) "
        "and print the smallest MIG profile, whole-GPU fit and MPS copies per catalog GPU.",
    )
    p.add_argument(
        "model",
        help="catalog name or Hugging Face id, e.g. qwen2.5-3b-instruct; "
        "a model the catalog does not know needs --architecture",
    )
    p.add_argument("-q", "--quantization", default="BF16", choices=["BF16", "FP16", "FP8", "INT8", "INT4"])
    p.add_argument(
        "-c", "--context", type=int, default=0, help="max context tokens (default min(4096, model max))"
    )
    p.add_argument(
        "-n", "--concurrency", type=int, default=8, help="concurrent sequences per replica (default 8)"
    )
    p.add_argument(
        "-a",
        "--architecture",
        metavar="FILE|JSON",
        help="the model's facts from its config.json, as an SLMDeployment's spec.model.architecture takes them "
        f"({ARCHITECTURE_FIELDS}; docs/api.md): inline JSON/YAML or a file holding it, e.g. "
        f"{ARCHITECTURE_EXAMPLE.replace('%', '%%')}. Needed for a model the catalog does not know; "
        "for a catalog model it replaces the catalog's facts, as in an SLMDeployment",
    )
    p.add_argument("-o", "--output", choices=["table", "json"], default="table")
    p.set_defaults(func=_cmd_estimate)


def _add_plan_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "plan",
        help="plan offline: which share and GPU every replica of the given manifests gets",
        description="Read GPUPool, SLMDeployment and v1 Node manifests (files or folders, e.g. examples/ or the "
        "output of `kubectl get nodes -o yaml`), plan every pool and print the placement per GPU and a summary. "
        "With --emit DIR, also write every object the operator would create or change as YAML files. "
        "Exit codes: 0 every replica placed, 1 something could not be placed (the output says why; --emit "
        "still writes what is placed), 2 bad input (nothing written).",
    )
    p.add_argument(
        "-f", "--filename", action="append", required=True, help="manifest file or folder (repeatable)"
    )
    p.add_argument(
        "-o", "--output", choices=["table", "json"], default="table", help="JSON: see docs/plan-format.md"
    )
    p.add_argument("--optimize", action="store_true", help="use the exact CP-SAT solver within --time-budget")
    p.add_argument("--time-budget", type=float, default=10.0, help="seconds for --optimize (default 10)")
    p.add_argument(
        "--emit",
        metavar="DIR",
        help="also write every object the operator would create or change as YAML into DIR (new or empty): "
        "node label/annotation merge patches, the NVIDIA ConfigMaps, the replica Pods, the Services, and an "
        "index DIR/README.md (docs/plan-format.md). Not with --optimize",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="with --emit: DIR may hold an earlier --emit; its files are replaced, other files kept",
    )
    _add_operator_name_flags(p, "with --emit: ")
    p.set_defaults(func=_cmd_plan)


def _add_operator_name_flags(p: argparse.ArgumentParser, prefix: str = "") -> None:
    """The names the operator writes with: ``run`` uses them, ``plan --emit`` writes them."""
    p.add_argument(
        "--nvidia-namespace",
        default="gpu-operator",
        help=f"{prefix}namespace of the NVIDIA GPU Operator (default %(default)s)",
    )
    p.add_argument(
        "--mig-configmap",
        default="slm-mig-parted-config",
        help=f"{prefix}mig-parted ConfigMap mig-manager reads (default %(default)s)",
    )
    p.add_argument(
        "--device-plugin-configmap",
        default="slm-device-plugin-config",
        help=f"{prefix}device-plugin config ConfigMap (default %(default)s)",
    )
    for tier in ("Guaranteed", "Burstable", "BestEffort"):
        p.add_argument(
            f"--priority-class-{tier.lower()}",
            default=f"slm-{tier.lower()}",
            help=f"{prefix}PriorityClass of {tier} replicas (default %(default)s)",
        )


def _add_show_parser(sub: Subparsers) -> None:
    p = sub.add_parser("show", help="print the placement per GPU of a running cluster (pods and pool status)")
    p.add_argument("--kubeconfig", default=None, help="kubeconfig file (default: $KUBECONFIG or in-cluster)")
    p.set_defaults(func=_cmd_show)


def _add_run_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "run",
        help="run the operator (reconciles GPUPool, SLMDeployment and FineTuneJob)",
        description="Reconcile GPUPools, SLMDeployments and FineTuneJobs against the cluster of the in-cluster "
        "service account or the kubeconfig. With --leader-elect several replicas run and one is active.",
    )
    p.add_argument(
        "--kubeconfig", default=None, help="kubeconfig file (default: in-cluster, then $KUBECONFIG)"
    )
    p.add_argument("--namespace", default="slm-system", help="namespace of the operator (its Lease)")
    p.add_argument(
        "--leader-elect", action="store_true", help="hold a Lease so that only one replica reconciles"
    )
    _add_operator_name_flags(p)
    p.add_argument(
        "--configmap-sync-seconds",
        type=float,
        default=90.0,
        help="age a new mig-parted config entry must reach before a node is relabelled to it (the kubelet "
        "refreshes mig-manager's mounted ConfigMap only on its periodic sync)",
    )
    p.add_argument("--priority-class-llm-fallback", default="slm-llm-fallback")
    p.add_argument(
        "--priority-class-finetune",
        default="slm-finetune",
        help="PriorityClass of the pods of FineTuneJobs; keep it below the LLM fallback's so that a trainer "
        "borrowing reserved GPUs is preempted when the fallback needs them ('' for none; default %(default)s)",
    )
    p.add_argument(
        "--trainer-image",
        default=DEFAULT_TRAINER_IMAGE,
        help="image of both steps of a FineTuneJob's pod, sanitize and train (Dockerfile.trainer); a "
        "FineTuneJob's spec.image overrides it (default %(default)s)",
    )
    p.add_argument("--health-listen", default="127.0.0.1:8080", help="host:port of /healthz ('' disables)")
    p.add_argument(
        "--metrics-listen", default="127.0.0.1:9090", help="host:port of the Prometheus metrics ('' disables)"
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=_cmd_run)


def _add_sanitize_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "sanitize",
        help="redact PII from JSON-lines usage records (the FineTuneJob's first step)",
    )
    p.add_argument("--input", required=True, help="file or folder of JSON-lines records")
    p.add_argument("--output", default="-", help="output file (default stdout)")
    p.add_argument(
        "--redact", default="Email,PhoneNumber,CreditCard,APIKey", help="comma-separated PII classes"
    )
    p.set_defaults(func=_cmd_sanitize)


def _add_agent_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "agent",
        help="GPU node agent: read the GPUs through NVML, annotate the Node, serve Prometheus metrics",
        description="Read every GPU of this node through NVML (read-only: it never changes a GPU setting), publish "
        "the inventory on the Node (annotation slm.io/gpu-inventory, only when it changed) and serve Prometheus "
        "metrics. Exit codes: 0 stopped, 2 bad input, 3 no usable NVIDIA driver (--no-driver=exit, or --once), "
        "4 --once could not list the GPUs.",
    )
    p.add_argument(
        "--kubeconfig", default=None, help="kubeconfig file (default: in-cluster, then $KUBECONFIG)"
    )
    p.add_argument(
        "--node-name",
        default=os.environ.get("NODE_NAME", ""),
        help="this node (default $NODE_NAME, downward API)",
    )
    p.add_argument(
        "--listen",
        default="127.0.0.1:9400",
        help="host:port of /metrics ('' disables; the chart passes 0.0.0.0:9400)",
    )
    p.add_argument("--interval-seconds", type=float, default=15.0, help="NVML poll interval (default 15)")
    p.add_argument(
        "--no-driver",
        choices=["exit", "idle"],
        default="idle",
        help="without an NVIDIA driver: exit with code 3, or idle (serve slm_agent_nvml_up 0 and retry; default)",
    )
    p.add_argument(
        "--once", action="store_true", help="read the GPUs once, print the inventory JSON on stdout, exit"
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=_cmd_agent)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="slm-operator",
        description="Run fleets of small language models on fractions of GPUs (MIG, MPS, time-slicing).",
    )
    parser.add_argument("--version", action="version", version=f"slm-operator {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_crds_parser(sub)
    _add_estimate_parser(sub)
    _add_plan_parser(sub)
    _add_show_parser(sub)
    _add_run_parser(sub)
    _add_sanitize_parser(sub)
    _add_agent_parser(sub)
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
