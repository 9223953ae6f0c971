"""What the operator can render, driven through its own planner and renderer (never a hand-written list).

* :func:`replica_args`: the vLLM command line of a replica for every catalog model x quantisation it supports
  x share type (MIG, MPS, TimeSlicing, Exclusive), plus variants with a promoted adapter and with extra
  ``runtime.args``. Each one is planned by ``planner.plan_pool`` on a one-node pool that allows only that share
  type and rendered by ``render.replica_pod``, exactly as the reconciler does (reconcile/podsets.py).
* :func:`node_configs`: the node configs (``render.node_config``) of every node the planner uses, on pools of
  every catalog GPU model x sharing policy, plus the benchmark's mixed pools (bench/workloads.py).

A new catalog model, quantisation, GPU, share type or vLLM flag is covered here after it lands, without
editing this file.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any

from slm_operator.api.v1alpha1 import SLMDeployment
from slm_operator.catalog import gpu_models, slm_models
from slm_operator.contract import ADAPTER_ANNOTATION
from slm_operator.inventory import demand_for, size_deployment
from slm_operator.planner import GpuInventory, NodeInventory, Plan, PoolPolicy, plan_pool
from slm_operator.render import NodeConfig, OperatorConfig, node_config, replica_pod
from slm_operator.sizing import Quantization

SHARE_TYPES = ("MIG", "MPS", "TimeSlicing", "Exclusive")
#: Extra ``runtime.args`` a user may append (they must reach vLLM unchanged, after the operator's flags).
EXTRA_ARGS = ("--enable-prefix-caching", "--max-loras", "2", "--seed", "7")
ADAPTER = "pvc://adapters/support-bot/v3"


@dataclass(frozen=True)
class RenderedArgs:
    case: str  # model/quantisation/share[/variant]
    image: str
    args: tuple[str, ...]
    extra_args: tuple[str, ...] = ()
    adapter: str | None = None


def _deployment(
    model: str, quant: Quantization, *, adapter: bool, extra: bool, qos: str = "Burstable"
) -> SLMDeployment:
    annotations = {ADAPTER_ANNOTATION: ADAPTER} if adapter else {}
    runtime: dict[str, Any] = {"args": list(EXTRA_ARGS)} if extra else {}
    return SLMDeployment.model_validate(
        {
            "apiVersion": "slm.io/v1alpha1",
            "kind": "SLMDeployment",
            "metadata": {"name": "contract", "namespace": "agents", "annotations": annotations},
            "spec": {
                "poolRef": {"name": "contract"},
                "model": {
                    "name": model,
                    "quantization": quant.value,
                    "maxContextTokens": 4096,
                    "maxConcurrentSequences": 4,
                },
                "replicas": 1,
                "qos": qos,
                "runtime": runtime,
            },
        }
    )


def _gpus_for(mechanism: str) -> list[str]:
    """GPU models to try, largest first, that can give the share type."""
    gpus = sorted(gpu_models(), key=lambda g: -g.memory_bytes)
    return [g.key for g in gpus if mechanism != "MIG" or g.mig_capable]


def _render_one(dep: SLMDeployment, mechanism: str) -> tuple[str, dict[str, Any]] | None:
    """Plan ``dep`` on a one-GPU node of each suitable GPU model until it is placed; the rendered pod."""
    sizing = size_deployment(dep)
    demand = demand_for(dep, sizing)
    for gpu in _gpus_for(mechanism):
        policy = PoolPolicy(name="contract", allowed_mechanisms=(mechanism,))
        node = NodeInventory(name="node-0", gpus=(GpuInventory(index=0, model=gpu),))
        plan = plan_pool(policy, [node], [demand])
        for g in plan.gpus:
            for r in g.replicas:
                pod = replica_pod(dep, r, g.node, g.index, gpu, "contract", sizing, OperatorConfig())
                return gpu, pod
    return None


def supported_quantisations(model: str) -> Iterator[Quantization]:
    """The quantisations the operator accepts for ``model`` (sizing refuses the others)."""
    for quant in Quantization:
        try:
            size_deployment(_deployment(model, quant, adapter=False, extra=False))
        except ValueError:
            continue
        yield quant


@cache
def replica_args() -> tuple[RenderedArgs, ...]:
    out: list[RenderedArgs] = []
    for model in sorted(m.name for m in slm_models()):
        for quant in supported_quantisations(model):
            for mechanism in SHARE_TYPES:
                for adapter, extra in ((False, False), (True, False), (False, True)):
                    # Time-slicing (no isolation) is for BestEffort replicas only.
                    qos = "BestEffort" if mechanism == "TimeSlicing" else "Burstable"
                    dep = _deployment(model, quant, adapter=adapter, extra=extra, qos=qos)
                    rendered = _render_one(dep, mechanism)
                    variant = "+adapter" if adapter else "+args" if extra else ""
                    case = f"{model}/{quant.value}/{mechanism}{variant}"
                    if rendered is None:
                        continue  # no GPU model gives this share to this model (too large for any slice)
                    _, pod = rendered
                    (container,) = [c for c in pod["spec"]["containers"] if c["name"] == "server"]
                    out.append(
                        RenderedArgs(
                            case=case,
                            image=container["image"],
                            args=tuple(container["args"]),
                            extra_args=EXTRA_ARGS if extra else (),
                            adapter=ADAPTER if adapter else None,
                        )
                    )
    return tuple(out)


# ------------------------------------------------------------------------------------------ node configs

POLICIES = {
    "MIG": ("MIG",),
    "MPS": ("MPS",),
    "TimeSlicing": ("TimeSlicing",),
    "Exclusive": ("Exclusive",),
    "all": SHARE_TYPES,
}


def _demands(n: int) -> list[Any]:
    """``n`` small deployments from the catalog (the smallest models, BF16 and INT4), sized by the operator."""
    small = sorted(slm_models(), key=lambda m: m.architecture.parameters)[:4]
    out = []
    for i in range(n):
        m = small[i % len(small)]
        quant = (Quantization.BF16, Quantization.INT4)[i % 2]
        if quant not in set(supported_quantisations(m.name)):
            quant = next(iter(supported_quantisations(m.name)))
        qos = ("Guaranteed", "Burstable", "BestEffort")[i % 3]
        dep = _deployment(m.name, quant, adapter=False, extra=False, qos=qos)
        dep.metadata.name = f"d{i:02d}"
        out.append(demand_for(dep, size_deployment(dep)))
    return out


@dataclass(frozen=True)
class PlannedNode:
    case: str
    gpu_model: str
    config: NodeConfig


def _node_configs_of(case: str, plan: Plan, gpu_of_node: dict[str, str]) -> Iterator[PlannedNode]:
    for np_ in plan.nodes:
        gpu = gpu_of_node[np_.name]
        mig_capable = next(g for g in gpu_models() if g.key == gpu).mig_capable
        yield PlannedNode(f"{case}/{np_.name}", gpu, node_config(np_, gpu, mig_capable))


@cache
def node_configs() -> tuple[PlannedNode, ...]:
    out: list[PlannedNode] = []
    for gpu in gpu_models():
        for policy_name, mechanisms in POLICIES.items():
            allowed = tuple(m for m in mechanisms if m != "MIG" or gpu.mig_capable)
            if not allowed:
                continue
            nodes = [
                NodeInventory(
                    name=f"{gpu.key.lower()}-{i}",
                    gpus=tuple(GpuInventory(index=j, model=gpu.key) for j in range(4)),
                )
                for i in range(2)
            ]
            policy = PoolPolicy(name="contract", allowed_mechanisms=allowed)
            plan = plan_pool(policy, nodes, _demands(12))
            out += _node_configs_of(f"{gpu.key}/{policy_name}", plan, {n.name: gpu.key for n in nodes})
    from bench.workloads import agentic_mix  # the benchmark's mixed pools: H100, A100, H200 and L4 nodes

    for size in (16, 64):
        w = agentic_mix(size, seed=1)
        plan = plan_pool(w.policy, w.nodes, w.demands)
        gpu_of = {n.name: n.gpus[0].model for n in w.nodes}
        out += _node_configs_of(w.name, plan, gpu_of)
    return tuple(out)
