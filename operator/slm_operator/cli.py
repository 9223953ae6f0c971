"""The ``slm-operator`` command line.

Sub-commands: ``crds`` (print or write the CRDs), ``estimate`` (GPU memory of a model and the smallest
share per GPU), ``plan`` (offline placement plan of manifests), ``run`` (the operator), ``agent``
(the NVML node agent), ``sanitize`` (redact JSON-lines records), ``usage`` (export, erase or prune the
captured calls of a usage store), ``gateway`` (the OpenAI-compatible gateway in front of SLMRoutes), ``train``
(the FineTuneJob's trainer, with the ``[train]`` extra). Exit codes: 0 success, 1 something could not be placed
(``plan`` only), 2 bad input (message on stderr, no traceback), 3 no NVIDIA driver (``agent`` only, see its
help); ``train`` documents its own in its help.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from slm_operator import DEFAULT_TRAINER_IMAGE, __version__
from slm_operator.contract import USAGE_STORE_ENV
from slm_operator.timebound import TIME_BOUND_HELP

if TYPE_CHECKING:
    from pydantic import ValidationError

    from slm_operator.api.v1alpha1 import SLMDeployment
    from slm_operator.capture import Store
    from slm_operator.manifests import Manifests
    from slm_operator.planner.model import Plan, PoolPolicy

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
    from slm_operator.inventory import PoolNodeError, pool_inputs
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
    namespaces = m.namespace_labels()  # Namespace manifests given: their labels map deployments to tenants
    for pool in sorted(m.pools, key=lambda p: p.metadata.name):
        try:
            inputs = pool_inputs(pool, m.nodes, m.deployments, namespaces)
        except PoolNodeError as exc:
            raise CliError(f"{m.sources.get(f'Node/{exc.node}', '')}: {exc}") from None
        problems += inputs.problems
        plan = plan_pool(
            inputs.policy,
            inputs.nodes,
            inputs.demands,
            optimize=args.optimize,
            time_budget_s=args.time_budget,
        )
        if args.guided > 0 and not args.optimize:
            plan = _guided(plan, inputs.policy, inputs.nodes, inputs.demands, args.guided)
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


def _guided(heur: Plan, policy: PoolPolicy, nodes: Any, demands: Any, seconds: float) -> Plan:
    """``plan --guided``: the node-aware program solved here, and the plan packed from its solution where it is
    better than the heuristic's, as the operator's pass chooses (docs/planner.md §5.2)."""
    from slm_operator.planner.guided import guided_plan
    from slm_operator.planner.nodemip import solve_node_mip
    from slm_operator.planner.portfolio import better_guided, solver_installed

    if not solver_installed():
        raise CliError("--guided needs OR-Tools: install the [solver] extra")
    mip = solve_node_mip(policy, nodes, demands, seconds)
    if mip.guide is None:
        print(
            f"pool {policy.name}: no guide within {seconds:g} s ({mip.status}): the heuristic's plan",
            file=sys.stderr,
        )
        return heur
    guided = guided_plan(policy, nodes, demands, mip.guide)
    return guided if better_guided(guided, heur, ()) else heur


def _check_emit_args(args: argparse.Namespace) -> None:
    """Before planning: --emit writes what the operator would (its heuristic), into a new or empty folder,
    or with --force over an earlier --emit."""
    if args.force and not args.emit:
        raise CliError("--force only says what --emit may replace: give --emit DIR too")
    if not args.emit:
        return
    if args.optimize or args.guided > 0:
        raise CliError(
            "--emit writes what the operator's first pass would write, and it plans with the heuristic: "
            "drop --optimize and --guided (or run them without --emit to compare)"
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
    from slm_operator.controllers.kube import Kube
    from slm_operator.kubeconfig import KubeConfigError, load_config
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
    from slm_operator.controllers.main import run
    from slm_operator.kubeconfig import KubeConfigError
    from slm_operator.routing.endpoints import parse_dial_map

    try:
        parse_dial_map(args.dial_map)
    except ValueError as exc:
        raise CliError(str(exc)) from None
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


def _sanitize_inputs(path: str | None) -> list[Path] | None:
    """The JSON-lines files to read: FILE, every ``*.jsonl`` under a folder (hidden ones left out, so a mounted
    ConfigMap's ``..data`` copies are not read twice), or None for stdin."""
    if path is None:
        return None
    src = Path(path)
    if src.is_dir():
        files = sorted(
            f
            for f in src.rglob("*.jsonl")
            if f.is_file() and not any(p.startswith(".") for p in f.relative_to(src).parts)
        )
        if not files:
            raise CliError(f"{src}: no *.jsonl files in this folder")
        return files
    if not src.is_file():
        raise CliError(f"{src}: no such file or folder")
    return [src]


def _read_lines(files: list[Path] | None) -> Iterator[bytes]:
    if files is None:
        yield from sys.stdin.buffer
        return
    for f in files:
        try:
            with f.open("rb") as fh:
                yield from fh
        except OSError as exc:
            raise CliError(f"{f}: cannot read ({exc.strerror or exc})") from None


def _write_termination_log(path: str | None, text: str) -> None:
    if path:
        with contextlib.suppress(OSError):  # the message is a courtesy: never the reason a run fails
            Path(path).write_text(text)


def _cmd_gateway(args: argparse.Namespace) -> int:
    import logging

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("slm_operator").setLevel(args.log_level.upper())
    if args.filename and args.kubeconfig:
        raise CliError("--kubeconfig is for the in-cluster mode; with -f the routes come from the files")
    if args.filename and args.status_lease:
        raise CliError("--status-lease is for the in-cluster mode; the standalone mode writes no status")
    if args.filename and args.dial_map:
        raise CliError("--dial-map is for the in-cluster mode; with -f, --endpoint gives each replica's URL")
    from slm_operator.gateway.standalone import StandaloneError, build, event_loop, run

    try:
        loop = event_loop(args.event_loop)
    except StandaloneError as exc:
        raise CliError(str(exc)) from None
    if not args.filename:
        return _gateway_in_cluster(args, loop)

    try:
        standalone = build(
            args.filename,
            args.listen,
            args.endpoint,
            store=args.store,
            spool_dir=args.spool_dir,
            salt_file=args.salt_file,
            max_request_bytes=args.max_request_bytes,
            redact_processes=args.redact_processes,
        )
    except StandaloneError as exc:
        raise CliError(str(exc)) from None
    return run(standalone, loop)


def _gateway_in_cluster(args: argparse.Namespace, loop: str) -> int:
    from slm_operator.gateway.kube import KubeApi
    from slm_operator.kubeconfig import KUBECONFIG_HINT, KubeConfigError, load_config

    if args.endpoint:
        raise CliError(
            "--endpoint is for the standalone mode (-f); in the cluster the replicas come from EndpointSlices"
        )
    try:
        api = KubeApi(load_config(args.kubeconfig, hint=f"{KUBECONFIG_HINT}, or give the routes with -f"))
    except KubeConfigError as exc:
        raise CliError(str(exc)) from None
    from slm_operator.gateway.incluster import InCluster, attach, run
    from slm_operator.gateway.server import Gateway
    from slm_operator.gateway.standalone import Standalone, StandaloneError, listen_address, options
    from slm_operator.routing.endpoints import parse_dial_map
    from slm_operator.routing.table import RouteTable

    try:
        dial = parse_dial_map(args.dial_map)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    lease = _status_lease(args.status_lease, api)
    try:
        host, port = listen_address(args.listen)
        capture, metrics, opts = options(
            args.store, args.spool_dir, args.salt_file, args.max_request_bytes, args.redact_processes
        )
    except StandaloneError as exc:
        raise CliError(str(exc)) from None
    gateway = Gateway(RouteTable(), capture=capture, metrics=metrics, options=opts)
    attach(gateway, api)
    return run(InCluster(Standalone(gateway, host, port), api, dial, lease), loop)


def _status_lease(value: str | None, api: Any) -> Any:
    """--status-lease NAMESPACE/NAME as a StatusLease held under this pod's name (None: no Lease)."""
    if not value:
        return None
    from slm_operator.gateway.lease import StatusLease

    namespace, _, name = value.partition("/")
    if not namespace or not name or "/" in name:
        raise CliError(
            f"--status-lease {value!r}: give NAMESPACE/NAME of a Lease (e.g. slm-system/slm-gateway-status)"
        )
    identity = os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"
    return StatusLease(api, namespace, name, identity)


def _cmd_sanitize(args: argparse.Namespace) -> int:
    from slm_operator.sanitize import Sanitizer, SanitizerUnavailable, UnknownPIIClass, sanitize_lines

    try:
        files = _sanitize_inputs(args.file)
        try:
            sanitizer = Sanitizer(args.redact.split(","), ner_model=args.ner_model)
        except (UnknownPIIClass, SanitizerUnavailable) as exc:
            raise CliError(str(exc)) from None
        out = sys.stdout.buffer if args.output == "-" else open(args.output, "wb")  # noqa: SIM115
    except (CliError, OSError) as exc:
        message = str(exc) if isinstance(exc, CliError) else f"{args.output}: cannot write ({exc.strerror})"
        _write_termination_log(args.termination_log, json.dumps({"error": message}))
        raise CliError(message) from None
    try:
        lines, report = sanitize_lines(_read_lines(files), sanitizer)
        for line in lines:
            out.write(line.encode("utf-8") + b"\n")
    except CliError as exc:
        _write_termination_log(args.termination_log, json.dumps({"error": str(exc)}))
        raise
    finally:
        if out is not sys.stdout.buffer:
            out.close()
        else:
            out.flush()
    _write_termination_log(args.termination_log, report.to_json())
    if args.report:
        print(report.to_json(), file=sys.stderr)
    else:
        redacted = ", ".join(f"{k} {v}" for k, v in report.to_dict()["redacted"].items()) or "nothing"
        skipped = f" ({report.skipped} lines skipped: not JSON)" if report.skipped else ""
        print(f"sanitised {report.records} records{skipped}; redacted {redacted}", file=sys.stderr)
    return EXIT_OK


def _cmd_usage(args: argparse.Namespace) -> int:
    """``usage``; ``export --termination-log`` also writes ``{"records": N}`` or ``{"error": "..."}`` there (the
    FineTuneJob's ``export`` step, read by the operator like the sanitize step's)."""
    try:
        return _run_usage(args)
    except CliError as exc:
        _write_termination_log(getattr(args, "termination_log", None), json.dumps({"error": str(exc)}))
        raise


def _run_usage(args: argparse.Namespace) -> int:
    import asyncio

    from slm_operator.capture.stores import STORE_ERRORS, open_store, shown_url

    try:
        store = open_store(args.store, existing=True)
        return asyncio.run(_usage(args, store))
    except ValueError as exc:
        raise CliError(str(exc)) from None
    except STORE_ERRORS as exc:
        raise CliError(f"usage store {shown_url(args.store)}: {type(exc).__name__}: {exc}") from None


async def _usage(args: argparse.Namespace, store: Store) -> int:
    from datetime import UTC, datetime

    from slm_operator.capture import caller_hash, load_salt
    from slm_operator.timebound import parse_time_bound

    now = datetime.now(UTC)
    if args.usage_command == "erase":
        try:
            hashed = caller_hash(args.caller, load_salt(Path(args.salt_file)))
        except (OSError, ValueError) as exc:
            raise CliError(f"--salt-file: {exc}") from None
    try:
        since = parse_time_bound(args.since, now) if getattr(args, "since", None) else None
        until = parse_time_bound(args.until, now) if getattr(args, "until", None) else None
    except ValueError as exc:
        raise CliError(str(exc)) from None
    if args.usage_command == "prune" and args.days < 0:
        raise CliError(f"--days must be 0 or more, not {args.days:g}")
    async with store:
        if args.usage_command == "erase":
            n = await store.erase_caller(hashed)
            print(f"erased {n} records of caller {args.caller} (hash {hashed[:12]}...)")
        elif args.usage_command == "prune":
            n = await store.delete_older_than(args.days, now=now)
            print(f"deleted {n} records older than {args.days:g} days (before {now:%Y-%m-%d %H:%M:%S} UTC)")
        else:
            n = await _usage_export(store, args, since, until)
            print(f"exported {n} records", file=sys.stderr)
            _write_termination_log(args.termination_log, json.dumps({"records": n}))
    return EXIT_OK


async def _usage_export(store: Store, args: argparse.Namespace, since: Any, until: Any) -> int:
    out = sys.stdout if args.output == "-" else open(args.output, "w", encoding="utf-8")  # noqa: SIM115
    n = 0
    try:
        async for record in store.export(since, until, args.route, args.task):
            out.write(record.model_dump_json() + "\n")
            n += 1
    finally:
        if out is not sys.stdout:
            out.close()
    return n


#: Top-level modules of the [train] extra: a missing one means the extra is not installed.
TRAIN_EXTRA_MODULES = ("torch", "transformers", "peft", "accelerate", "safetensors", "tokenizers", "jinja2")


def _finish_train(args: argparse.Namespace, code: int, message: dict[str, Any]) -> int:
    """Write the termination message (``--termination-log``); the result on stdout, an error on stderr."""
    from slm_operator.trainer.report import termination_text

    text = termination_text(message)
    if args.termination_log:
        try:
            Path(args.termination_log).write_text(text, encoding="utf-8")
        except OSError as exc:
            print(f"slm-operator train: --termination-log {args.termination_log}: {exc}", file=sys.stderr)
    if code == 0:
        print(text)
    else:
        print(f"slm-operator train: {message['error']}", file=sys.stderr)
    return code


def _cmd_train(args: argparse.Namespace) -> int:
    from slm_operator.trainer.data import prepare
    from slm_operator.trainer.errors import EXIT_UNSUPPORTED, TrainError
    from slm_operator.trainer.options import TrainOptions
    from slm_operator.trainer.report import error_message

    options = TrainOptions(
        base_model=args.base_model,
        data=Path(args.data),
        output=Path(args.output),
        method=args.method,
        epochs=args.epochs,
        learning_rate=args.learning_rate,
        batch_size=args.batch_size,
        max_seq_len=args.max_seq_len,
        lora_rank=args.lora_rank,
        lora_alpha=args.lora_alpha,
        incumbent=Path(args.incumbent) if args.incumbent else None,
        eval_fraction=args.eval_fraction,
        seed=args.seed,
        max_steps=args.max_steps,
        save_steps=args.save_steps,
        resume=args.resume,
    )
    try:
        options.check()
        data = prepare(options.data, options.eval_fraction, options.seed)
        try:
            from slm_operator.trainer.run import run
        except ImportError as exc:
            if (exc.name or "").split(".")[0] not in TRAIN_EXTRA_MODULES:
                raise
            return _finish_train(
                args,
                EXIT_UNSUPPORTED,
                error_message(
                    f"training needs the [train] extra ({exc.name} is missing): pip install 'slm-operator[train]', "
                    "or run the trainer image ghcr.io/slm-operator/trainer"
                ),
            )
        result = run(options, data)
    except TrainError as exc:
        return _finish_train(args, exc.exit_code, error_message(str(exc)))
    except Exception as exc:  # out of memory, a library's error: still a message the operator can show
        return _finish_train(args, 1, error_message(f"training failed: {type(exc).__name__}: {exc}"))
    return _finish_train(args, 0, result.termination())


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
        "--guided",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="also solve each pool's node-aware program within SECONDS and pack from its solution, keeping that "
        "plan where it places as many replicas on fewer GPUs, as the operator does for pools of 32-2,048 GPUs "
        "(docs/planner.md 5.2; 1,000 GPUs: about a minute); 0: off (default). Not with --optimize or --emit",
    )
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


def _add_exact_flags(p: argparse.ArgumentParser) -> None:
    """The exact solver in the operator's pass, for small pools (docs/planner.md §5.1)."""
    p.add_argument(
        "--exact-max-gpus",
        type=int,
        default=8,
        help="pools of at most this many GPUs are also solved exactly (CP-SAT) when their inputs change; the "
        "exact plan is taken where it is better and moves nothing the heuristic keeps (default %(default)s)",
    )
    p.add_argument(
        "--exact-max-replicas",
        type=int,
        default=24,
        help="...and of at most this many replicas in all; larger pools get the heuristic alone (default "
        "%(default)s)",
    )
    p.add_argument(
        "--exact-budget",
        type=float,
        default=3.0,
        help="CP-SAT deterministic seconds per exact solve (about 1-4 s of CPU; the heuristic's plan when it "
        "runs out; 3 proves optimality on the pools the default limits admit); 0 turns the exact solver off. "
        "Needs the [solver] extra (default %(default)s)",
    )


def _add_guided_flags(p: argparse.ArgumentParser) -> None:
    """Guided packing in the operator, for large pools (docs/planner.md §5.2)."""
    p.add_argument(
        "--guided-min-gpus",
        type=int,
        default=32,
        help="pools of at least this many GPUs are also packed from the node-aware program's solution, and "
        "that plan is taken where it places as many replicas on fewer GPUs (default %(default)s)",
    )
    p.add_argument(
        "--guided-max-gpus",
        type=int,
        default=2048,
        help="...and of at most this many; larger pools get the heuristic alone (default %(default)s)",
    )
    p.add_argument(
        "--guided-time-limit",
        type=float,
        default=300.0,
        help="wall-clock seconds SCIP may spend on a pool's program, in a worker process at the lowest CPU "
        "priority, once the pool's inputs have not changed for a while (a 1,000-GPU pool takes 20-60 s of "
        "CPU); 0 turns guided packing off. Needs the [solver] extra (default %(default)s)",
    )


def _add_mig_manager_flags(p: argparse.ArgumentParser) -> None:
    """When a node may be relabelled to a new mig-parted entry (mig-manager reads it through a mounted volume)."""
    p.add_argument(
        "--configmap-sync-seconds",
        type=float,
        default=90.0,
        help="age a new mig-parted config entry must reach before a node is relabelled to it (the kubelet "
        "refreshes mig-manager's mounted ConfigMap only on its periodic sync)",
    )
    p.add_argument(
        "--mig-manager-refresh-seconds",
        type=float,
        default=5.0,
        help="on a node with a running mig-manager pod, annotate that pod once a new mig-parted entry is in the "
        "ConfigMap (its kubelet then remounts the ConfigMap at once) and relabel the node this many seconds "
        "later instead of waiting --configmap-sync-seconds (0: never annotate; default %(default)s)",
    )
    p.add_argument(
        "--mig-manager-selector",
        default="app=nvidia-mig-manager",
        help="label selector of the GPU Operator's mig-manager pods in --nvidia-namespace "
        "(default %(default)s)",
    )


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
    _add_mig_manager_flags(p)
    p.add_argument(
        "--node-lost-seconds",
        type=float,
        default=60.0,
        help="how long a pool node may be NotReady before its replicas are planned on other nodes (until then "
        "nothing new is placed on it and its replicas wait for it; default %(default)s)",
    )
    p.add_argument(
        "--mig-rollback-seconds",
        type=float,
        default=600.0,
        help="when mig-manager fails a node's new MIG layout on every try, the node goes back to its last good "
        "layout for this long (doubled per failure in a row on the node, at most 8 times) before the new "
        "one is tried again once; 0 keeps the node failed and the pool Degraded (default %(default)s)",
    )
    _add_exact_flags(p)
    _add_guided_flags(p)
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
    p.add_argument(
        "--autoscale-interval",
        type=float,
        default=2.0,
        help="seconds between the autoscaler's reads of the gateway replicas' load, for SLMDeployments with "
        "spec.autoscaling (0 disables the autoscaler; default %(default)s)",
    )
    p.add_argument(
        "--gateway-selector",
        default="app.kubernetes.io/component=gateway",
        help="label selector of the gateway's pods in --namespace, whose /metrics the autoscaler reads "
        "(default %(default)s)",
    )
    p.add_argument(
        "--dial-map",
        action="append",
        default=[],
        metavar="FROM_CIDR=TO_CIDR",
        help="local clusters only: the autoscaler reads the /metrics of a gateway pod whose IP is in FROM_CIDR at "
        "the same offset in TO_CIDR (e.g. 10.0.0.0/24=127.0.2.0/24 for kwok's fake pod IPs served on loopback); "
        "repeatable; default: every pod IP as published",
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=_cmd_run)


def _add_sanitize_parser(sub: Subparsers) -> None:
    # plain data (no Presidio): the help text names the defaults and the known classes
    from slm_operator.sanitize.classes import CLASS_NAMES, DEFAULT_NER_MODEL, DEFAULT_REDACT, NER_MODEL_ENV

    default_classes = ",".join(DEFAULT_REDACT)
    p = sub.add_parser(
        "sanitize",
        help="redact PII from JSON-lines usage records (the FineTuneJob's first step)",
        description="Replace the PII in every string of each JSON-lines record with pseudonyms that are "
        "consistent within the record (<PERSON_1>, <EMAIL_2>...), with Presidio and a spaCy NER model "
        "(docs/sanitization.md). A line that is not JSON is skipped and counted. Exit codes: 0 done (also "
        "with skipped lines), 2 bad input: an unknown class, an unreadable FILE, a missing NER model or Presidio.",
    )
    p.add_argument(
        "file",
        nargs="?",
        metavar="FILE",
        help="a JSON-lines file, or a folder whose *.jsonl files are read in name order (default stdin)",
    )
    p.add_argument(
        "--output", default="-", metavar="FILE", help="write the redacted JSON lines here (default stdout)"
    )
    p.add_argument(
        "--redact",
        default=default_classes,
        metavar="CLASSES",
        help=f"comma-separated PII classes (default {default_classes}, a FineTuneJob's default); "
        f"known: {', '.join(CLASS_NAMES)}",
    )
    p.add_argument(
        "--ner-model",
        default=os.environ.get(NER_MODEL_ENV) or DEFAULT_NER_MODEL,
        metavar="NAME",
        help=f"installed spaCy pipeline (package name or folder) for Person, Location and Organization "
        f"(default ${NER_MODEL_ENV}, else {DEFAULT_NER_MODEL}); never downloaded",
    )
    p.add_argument(
        "--report",
        action="store_true",
        help='print the counts as JSON on stderr: {"records": N, "skipped": N, "redacted": {CLASS: N}}',
    )
    p.add_argument(
        "--termination-log",
        metavar="PATH",
        help='also write that JSON here (a pod\'s /dev/termination-log), or {"error": "..."} on bad input',
    )
    p.set_defaults(func=_cmd_sanitize)


def _add_usage_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "usage",
        help="export, erase or prune the captured calls in a usage store (docs/capture.md)",
        description="Work on the usage store the gateway writes captured calls to. STORE is "
        "sqlite:///absolute/path/usage.db, sqlite:relative/usage.db or postgresql://user@host:port/db "
        "(password from the URL, PGPASSWORD or ~/.pgpass), or the URL in $"
        + USAGE_STORE_ENV
        + ". Exit codes: 0 done, 2 bad input or store unreachable.",
    )
    actions = p.add_subparsers(dest="usage_command", required=True, metavar="ACTION")

    from_env = os.environ.get(USAGE_STORE_ENV)

    def store_flag(action: argparse.ArgumentParser) -> None:
        action.add_argument(
            "--store",
            required=not from_env,
            default=from_env,
            metavar="STORE",
            help=f"the usage store URL (see usage --help; default ${USAGE_STORE_ENV}, which keeps a password "
            "out of the command line)",
        )

    e = actions.add_parser(
        "export",
        help="print captured calls as JSON lines (what the trainer and the advisor read)",
        description="Print the captured calls, oldest first, one JSON object a line with every field of a "
        'capture record ({"id", "time", "route", "request", "response", ...}; docs/capture.md). The count goes '
        "to stderr.",
    )
    store_flag(e)
    e.add_argument("--route", help="only this SLMRoute, as namespace/name (default every route)")
    e.add_argument(
        "--task", help="only calls of this task (sent by the caller or tagged; default every call)"
    )
    bounds = TIME_BOUND_HELP
    e.add_argument("--since", help=f"only calls at or after this time: {bounds} (default the oldest)")
    e.add_argument("--until", help=f"only calls before this time: {bounds} (default now and later)")
    e.add_argument("-o", "--output", default="-", help="write to this file instead of stdout")
    e.add_argument(
        "--termination-log",
        metavar="FILE",
        help='also write {"records": N} here (a pod\'s /dev/termination-log), or {"error": "..."} when the '
        "export fails (the FineTuneJob's export step)",
    )
    r = actions.add_parser(
        "erase",
        help="delete every captured call of one caller",
        description="Delete every captured call of one caller. The store keeps the caller only as a salted "
        "hash: give the identity as the gateway names it and the gateway's salt file, and this hashes it the "
        "same way.",
    )
    store_flag(r)
    r.add_argument(
        "--caller", required=True, help="the caller identity, as the gateway names it (docs/capture.md)"
    )
    r.add_argument(
        "--salt-file", required=True, help="the gateway's caller-hash salt (the file its --salt-file reads)"
    )
    d = actions.add_parser(
        "prune",
        help="delete captured calls older than a number of days (retention)",
        description="Delete the captured calls whose request started more than --days days ago.",
    )
    store_flag(d)
    d.add_argument("--days", type=float, required=True, help="keep this many days (0 deletes everything)")
    p.set_defaults(func=_cmd_usage)


def _add_gateway_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "gateway",
        help="the OpenAI-compatible gateway: routes agents' calls to SLMs by SLMRoute, falls back, captures",
        description="Serve /v1/chat/completions, /v1/completions and /v1/models for the SLMRoutes, with /healthz, "
        "/readyz and /metrics on the same port (docs/gateway.md). Standalone mode (-f): routes, API-key Secrets and "
        "external backends' key Secrets come from the files and SLMDeployment replicas from --endpoint; no cluster "
        "is needed. In-cluster mode (no -f): SLMRoutes, SLMDeployments and EndpointSlices are watched, the Secrets "
        "the routes name are read, ServiceAccount tokens are checked with TokenReview and SubjectAccessReview. "
        "Exit codes: 0 stopped (SIGINT, SIGTERM), 2 bad input.",
    )
    p.add_argument(
        "-f",
        "--filename",
        action="append",
        default=[],
        help="file or folder with SLMRoutes and Secrets (and SLMDeployments, for their maxConcurrentSequences); "
        "repeatable",
    )
    p.add_argument(
        "--kubeconfig",
        default=None,
        help="in-cluster mode (no -f): kubeconfig file (default: the pod's ServiceAccount, then $KUBECONFIG)",
    )
    p.add_argument("--listen", default="127.0.0.1:8080", help="host:port to serve on (default %(default)s)")
    p.add_argument(
        "--endpoint",
        action="append",
        default=[],
        metavar="NAMESPACE/NAME=URL",
        help="a replica of SLMDeployment NAMESPACE/NAME at URL (its OpenAI base URL; /v1 is added to a URL without "
        "a path); repeat for more replicas or deployments",
    )
    p.add_argument(
        "--status-lease",
        metavar="NAMESPACE/NAME",
        help="in-cluster mode: only the replica holding this coordination.k8s.io Lease writes SLMRoute status (the "
        "others take over within 15 s when it stops renewing); default: every replica writes what differs",
    )
    p.add_argument(
        "--dial-map",
        action="append",
        default=[],
        metavar="FROM_CIDR=TO_CIDR",
        help="in-cluster mode, local clusters only: dial a replica whose EndpointSlice address is in FROM_CIDR at the "
        "same offset in TO_CIDR (e.g. 10.0.0.0/24=127.0.2.0/24 for kwok's fake pod IPs served on loopback, as kind "
        "maps ports); repeatable; default: every address as published",
    )
    _add_capture_flags(p)
    p.add_argument(
        "--max-request-bytes",
        type=int,
        default=8 << 20,
        help="largest request body; larger calls get 413 (default %(default)s; a route's limits.maxRequestBytes "
        "may lower it)",
    )
    p.add_argument(
        "--event-loop",
        default="auto",
        choices=["auto", "uvloop", "asyncio"],
        help="the event loop to serve on: uvloop (libuv; less CPU per captured call, docs/benchmarks.md), asyncio "
        "(the standard library's), or auto: uvloop where it is installed (default %(default)s)",
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=_cmd_gateway)


def _add_capture_flags(p: argparse.ArgumentParser) -> None:
    """The gateway's usage capture (docs/capture.md)."""
    p.add_argument(
        "--store",
        metavar="URL",
        help="capture sampled calls into this usage store: sqlite:///path/usage.db or "
        "postgresql://user@host:port/db (docs/capture.md); default: nothing is captured",
    )
    p.add_argument(
        "--spool-dir",
        default="slm-gateway-spool",
        help="with --store: folder where records wait while the store is slow or down (default %(default)s)",
    )
    p.add_argument(
        "--salt-file",
        help="with --store: salt of the callers' hashes in the records (default: SPOOL_DIR/caller-salt, created "
        "with random bytes when missing); `usage erase` needs the same file",
    )
    p.add_argument(
        "--redact-processes",
        type=int,
        default=1,
        metavar="N",
        help="with --store: redact captured calls in N processes beside the gateway's (each holds the sanitiser, "
        "about 170 MiB, and keeps about 100-130 calls/s when each brings new text; docs/capture.md); 0: in a thread of the gateway's own "
        "process, sharing its CPU (default %(default)s)",
    )


TRAIN_DESCRIPTION = """\
Fine-tune --base-model on --data and evaluate the result against the base model and the incumbent, on this
machine (a CUDA GPU when one is visible, else the CPU) or in a FineTuneJob's pod. Needs the [train] extra.

--data is a JSON-lines file (or a folder of *.jsonl): one record per line in the OpenAI chat format
{"messages": [...], "tools": [...]}, whose last assistant message (content and/or tool_calls) is the target,
or a usage-capture record {"request": {...}, "response": {...}}. Unusable lines are skipped and counted. A
deterministic share (--eval-fraction, by a hash of each record and --seed) is held out for evaluation.

--output receives the PEFT adapter at its root (adapter_config.json, adapter_model.safetensors: what vLLM's
--lora-modules and peft load), or the full weights for --method Full, eval.json, and checkpoints/ (every
--save-steps steps and at the end; the newest two kept). A rerun resumes from the newest checkpoint.

The result, on stdout and in --termination-log (JSON, at most 4096 bytes):
  {"evalScorePercent": 87, "baseScorePercent": 12, "incumbentScorePercent": 80 or null,
   "examples": {"train": 900, "eval": 100}, "skipped": 3, "steps": 300, "resumedFromStep": 120 or null,
   "evalLoss": 0.41, "baseEvalLoss": 5.2,
   "metrics": {"jsonExactMatch": 0.9, "toolCallAccuracy": null, "textSimilarity": 0.95}}
On failure the termination log holds {"error": "<what to change>"}.

Exit codes: 0 trained and evaluated; 1 training or evaluation failed (e.g. out of memory); 2 bad input
(flags, data, base model, incumbent or checkpoints); 3 this installation cannot do it (no [train] extra,
QLoRA without a CUDA GPU); 143 stopped by SIGTERM (a checkpoint is saved; the same command resumes).
Example (docs/finetuning.md):
  slm-operator train --base-model ./tiny --data train.jsonl --output ./out --lora-rank 16"""


def _add_train_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "train",
        help="fine-tune a model on chat records (LoRA, QLoRA or full) and score it (the FineTuneJob's trainer)",
        description=TRAIN_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--base-model", required=True, help="Hugging Face model id or folder (needs a chat template)"
    )
    p.add_argument("--data", required=True, help="JSON-lines file or folder of *.jsonl files (see above)")
    p.add_argument(
        "--output", required=True, help="folder for the adapter or weights, eval.json and checkpoints/"
    )
    p.add_argument("--method", choices=["LoRA", "QLoRA", "Full"], default="LoRA", help="default %(default)s")
    p.add_argument("--epochs", type=float, default=3, help="passes over the training examples (default 3)")
    p.add_argument("--learning-rate", type=float, default=2e-4, help="peak learning rate (default 0.0002)")
    p.add_argument("--batch-size", type=int, default=8, help="examples per step (default 8)")
    p.add_argument(
        "--max-seq-len", type=int, default=4096, help="tokens per example; longer ones are cut (default 4096)"
    )
    p.add_argument("--lora-rank", type=int, default=16, help="LoRA rank (default 16)")
    p.add_argument("--lora-alpha", type=int, default=None, help="LoRA alpha (default 2 x rank)")
    p.add_argument(
        "--incumbent",
        default=None,
        metavar="DIR",
        help="what the target deployment serves now (a PEFT adapter folder or full weights), scored on the "
        "same held-out examples (incumbentScorePercent)",
    )
    p.add_argument(
        "--eval-fraction", type=float, default=0.1, help="share of the records held out (default 0.1)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the split, the adapter's init and the order")
    p.add_argument(
        "--max-steps",
        type=int,
        default=-1,
        help="stop after this many steps in all (default -1: --epochs decides)",
    )
    p.add_argument("--save-steps", type=int, default=100, help="checkpoint every N steps (default 100)")
    p.add_argument(
        "--resume",
        default="auto",
        metavar="auto|never|DIR",
        help="auto (default): continue from the newest checkpoint under --output/checkpoints; never: start over "
        "(deletes them); DIR: that checkpoint",
    )
    p.add_argument(
        "--termination-log",
        default=None,
        metavar="PATH",
        help="also write the result or error JSON here (a pod's /dev/termination-log)",
    )
    p.set_defaults(func=_cmd_train)


def _cmd_advise(args: argparse.Namespace) -> int:
    from slm_operator.advisor_run import AdviseError, run

    try:
        return run(args)
    except AdviseError as exc:
        raise CliError(str(exc)) from None


def _add_advise_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "advise",
        help="find the recurring tasks in captured calls and propose an SLM and a GPU share for each (docs/loop.md)",
        description="Steps S3 and S4 of the LLM-to-SLM loop (docs/loop.md). Cluster captured calls into recurring "
        "tasks (TF-IDF + SVD of the system prompt, the last user turn with numbers and names masked, the tools "
        "and the answer's shape; HDBSCAN or k-means), profile each (calls, tokens, LLM latency and cost), and, "
        "with a GPUPool (in -f, or in the cluster with --cluster), choose per task the cheapest catalog model "
        "that covers its context and tools and that the operator's planner places on the pool. Writes "
        "report.md, report.html, tasks.json, assignments.jsonl and manifests/ (per moved task an SLMDeployment "
        "and a FineTuneJob, with a ConfigMap of its calls unless they come from the store; the SLMRoute with a "
        "shadow rule that promotes the SLM once it agrees with the LLM, when the route is in -f or the cluster; "
        "the task classifier ConfigMap) under -o, with classifier.json. Compared with the last run's classifier "
        "(--previous-classifier, or the namespace's with --cluster), tasks keep their ids and new tasks, drift "
        "and rising fallback rates are reported; with the route's autoRetrain, a served task that drifted or "
        "falls back more gets a FineTuneJob on its newest calls (docs/loop.md, section 5). "
        "Exit codes: 0 written, 2 bad input.",
    )
    from_env = os.environ.get(USAGE_STORE_ENV)
    p.add_argument(
        "--from",
        dest="source",
        required=not from_env,
        default=from_env,
        metavar="SOURCE",
        help="captured calls: a JSON-lines file (each line at least id, request, response; `usage export` "
        "writes a superset), - for stdin, or a usage store URL (sqlite:///path/usage.db, postgresql://...; "
        f"default ${USAGE_STORE_ENV}, which keeps a password off the command line)",
    )
    p.add_argument(
        "-o", "--output-dir", required=True, help="folder to write the report, tasks and manifests to"
    )
    p.add_argument(
        "-f",
        "--filename",
        action="append",
        metavar="FILE",
        help="manifests (repeatable, files or folders): the GPUPool and Nodes to plan on, the SLMDeployments "
        "already there, the SLMRoute the calls came through. Without a GPUPool no model is chosen",
    )
    p.add_argument(
        "--cluster",
        action="store_true",
        help="also read the GPUPools, Nodes, SLMDeployments and SLMRoutes from the cluster (--kubeconfig; an "
        "object in -f wins over the cluster's): what the chart's scheduled advisor does",
    )
    p.add_argument("--pool", help="the GPUPool to plan on when -f holds several")
    _add_advise_choice_flags(p)
    _add_advise_loop_flags(p)
    p.set_defaults(func=_cmd_advise)


def _add_advise_choice_flags(p: argparse.ArgumentParser) -> None:
    """The flags of `advise` that filter the calls and steer the choice of tasks and models."""
    p.add_argument("--route", help="a usage store's calls of this SLMRoute only (namespace/name)")
    p.add_argument("--since", help=f"a usage store's calls from this time on: {TIME_BOUND_HELP}")
    p.add_argument(
        "--namespace",
        help="namespace of the manifests (default: the namespace of the calls' route, else default)",
    )
    p.add_argument(
        "--method", choices=["hdbscan", "kmeans"], default="hdbscan", help="clustering (default %(default)s)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the sample, the SVD and k-means (default 0)")
    p.add_argument(
        "--min-calls",
        type=int,
        default=200,
        help="calls a task needs to be moved (fine-tuned on; default 200)",
    )
    p.add_argument(
        "--min-share",
        type=float,
        default=0.02,
        help="share of all calls a task needs to be moved (default 0.02)",
    )
    p.add_argument(
        "--license",
        default="apache-2.0,mit",
        help="licences a chosen model may have, comma-separated model-card tags, or any (default %(default)s)",
    )
    p.add_argument(
        "--llm-price",
        metavar="PROMPT,COMPLETION",
        help="the LLM's prices per million prompt and completion tokens, e.g. 2.5,10 (default: no costs)",
    )
    p.add_argument("--currency", default="USD", help="the currency of the prices (default %(default)s)")
    p.add_argument(
        "--gpu-hour-cost", type=float, default=2.0, help="cost of one GPU for an hour (default %(default)s)"
    )
    p.add_argument(
        "--adapters-pvc",
        default="slm-adapters",
        help="PVC the FineTuneJobs write adapters to (default %(default)s; it must exist)",
    )
    p.add_argument(
        "--usage-store-secret",
        metavar="NAME/KEY",
        help="with --from a usage store: the Secret and key (in the namespace) holding its URL; the FineTuneJobs "
        "then read the task's calls from the store (usageStore.task) instead of a ConfigMap, and --apply tags "
        "the store's calls with their tasks",
    )
    p.add_argument(
        "--no-examples", action="store_true", help="leave the sanitised example calls out of the report"
    )
    p.add_argument(
        "--apply",
        action="store_true",
        help="also apply the manifests (server-side apply), post the findings and retrains as Events on the "
        "route and, reading a usage store, tag its calls with their tasks (never overwriting a task they have)",
    )
    p.add_argument(
        "--kubeconfig", help="kubeconfig for --cluster and --apply (default: in-cluster, else $KUBECONFIG)"
    )


def _add_advise_loop_flags(p: argparse.ArgumentParser) -> None:
    """The flags of `advise` for the continuous loop (docs/loop.md, section 5) and the proposed FineTuneJobs."""
    p.add_argument(
        "--previous-classifier",
        metavar="FILE",
        help="the classifier an earlier run published (its JSON, or its ConfigMap manifest under manifests/): "
        "tasks it covers keep their ids, and new tasks, drift and rising fallback rates are reported; with "
        "--cluster the default is the ConfigMap slm-task-classifier in the namespace",
    )
    p.add_argument(
        "--drift",
        type=float,
        default=0.1,
        help="rise of a task's median distance to its earlier centroid that is drift (cosine; default "
        "%(default)s)",
    )
    p.add_argument(
        "--fallback-rise",
        type=float,
        default=5.0,
        help="rise of a served task's fallback percentage from the earlier to the later half of the window "
        "that is reported, in points (default %(default)s)",
    )
    p.add_argument(
        "--finetune-template",
        metavar="FILE",
        help="YAML of FineTuneJob spec fields every proposed FineTuneJob gets (modelSource, hyperparameters, "
        "sanitization, promote.evaluation, ...; {model}, {deployment} and {task} in its strings are filled in), "
        "e.g. to load base weights from a PVC in an air-gapped cluster",
    )


def _cmd_traces(args: argparse.Namespace) -> int:
    from slm_operator.advisor.traces import generate, write_jsonl

    if args.n < 1 or args.hours < 1:
        raise CliError(f"-n and --hours must be 1 or more, not {args.n} and {args.hours}")
    try:
        out = sys.stdout if args.output == "-" else open(args.output, "w", encoding="utf-8")  # noqa: SIM115
    except OSError as exc:
        raise CliError(f"{args.output}: cannot write ({exc.strerror})") from None
    try:
        n = write_jsonl(generate(args.n, args.seed, route=args.route, hours=args.hours), out)
    finally:
        if out is not sys.stdout:
            out.close()
    print(f"wrote {n} synthetic agent calls", file=sys.stderr)
    return EXIT_OK


def _add_traces_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "traces",
        help="write synthetic agent calls with ground-truth task labels (to try `advise`)",
        description="Write N synthetic LLM calls of an agent fleet as capture records (JSON lines, the format "
        "of `usage export`): recurring tasks such as intent routing, invoice extraction, ticket tagging, SQL "
        "generation and tool selection, plus open-ended chat, with PII in them and the task in `label`.",
    )
    p.add_argument("-n", type=int, default=2000, help="number of calls (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="the same seed writes the same calls (default 0)")
    p.add_argument(
        "--hours", type=int, default=168, help="the calls spread over this many hours (default a week, 168)"
    )
    p.add_argument(
        "--route", default="agents/assistant", help="the SLMRoute the calls name (default %(default)s)"
    )
    p.add_argument("-o", "--output", default="-", help="write to this file instead of stdout")
    p.set_defaults(func=_cmd_traces)


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
    _add_usage_parser(sub)
    _add_train_parser(sub)
    _add_advise_parser(sub)
    _add_traces_parser(sub)
    _add_agent_parser(sub)
    _add_gateway_parser(sub)
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
