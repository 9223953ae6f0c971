"""A node runs at most as many replica pods as its allocatable pods (less the system pods it keeps) and CPU
allow: the planner's per-GPU sharing limits come down to that, so a plan never counts replicas placed that
the scheduler would leave Pending with "Too many pods" (found by the 1,000-deployment bench-e2e: 128 MPS
clients planned on an 8-GPU node with room for 110 pods)."""

from __future__ import annotations

import copy
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from slm_operator.api.v1alpha1 import GPUPool, SLMDeployment
from slm_operator.inventory import NODE_PODS_RESERVED, node_replica_slots, pool_inputs, shares_per_gpu_limit
from slm_operator.planner import check_plan, plan_pool

ROOT = Path(__file__).resolve().parent.parent


def _node(name: str, pods: str = "110", cpu: str = "112") -> dict[str, Any]:
    h100 = next(yaml.safe_load_all((ROOT / "examples" / "nodes" / "h100.yaml").read_text()))
    node = copy.deepcopy(h100)
    node["metadata"]["name"] = name
    node["metadata"]["labels"]["kubernetes.io/hostname"] = name
    node["status"]["allocatable"].update({"pods": pods, "cpu": cpu})
    return dict(node)


def _pool(max_clients: int = 16) -> GPUPool:
    return GPUPool.model_validate(
        {
            "apiVersion": "slm.io/v1alpha1",
            "kind": "GPUPool",
            "metadata": {"name": "dense"},
            "spec": {
                "nodeSelector": {"matchLabels": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}},
                "sharing": {"mechanisms": ["MPS"], "mps": {"maxClientsPerGPU": max_clients}},
            },
        }
    )


def _deployments(n: int) -> list[SLMDeployment]:
    return [
        SLMDeployment.model_validate(
            {
                "apiVersion": "slm.io/v1alpha1",
                "kind": "SLMDeployment",
                "metadata": {"name": f"tiny-{i:03d}", "namespace": "agents"},
                "spec": {
                    "poolRef": {"name": "dense"},
                    "model": {
                        "name": "smollm2-360m-instruct",
                        "maxContextTokens": 2048,
                        "maxConcurrentSequences": 2,
                    },
                    "replicas": 1,
                    "qos": "BestEffort",
                },
            }
        )
        for i in range(n)
    ]


def test_replica_slots_are_the_allocatable_pods_less_the_system_pods_and_no_more_than_the_cpu() -> None:
    assert node_replica_slots(_node("a")) == 110 - NODE_PODS_RESERVED
    assert node_replica_slots(_node("a", cpu="48")) == 48
    assert node_replica_slots(_node("a", cpu="48"), replica_cpu="500m") == 96
    assert node_replica_slots({"metadata": {"name": "bare"}}) is None  # it says nothing: no limit
    assert node_replica_slots(_node("a", pods="lots")) is None


def test_the_smallest_node_sets_the_pools_limit_and_it_is_never_below_two() -> None:
    assert shares_per_gpu_limit([_node("a"), _node("b", pods="58")]) == (58 - NODE_PODS_RESERVED) // 8
    assert shares_per_gpu_limit([_node("a", pods="20")]) == 2
    assert shares_per_gpu_limit([]) is None


@pytest.mark.parametrize(("pods", "cpu"), [("110", "112"), ("110", "64"), ("250", "256")])
def test_a_dense_mps_pool_places_no_more_replicas_on_a_node_than_it_runs_pods(pods: str, cpu: str) -> None:
    nodes = [_node("gpu-0", pods, cpu), _node("gpu-1", pods, cpu)]
    inputs = pool_inputs(_pool(), nodes, _deployments(300))
    slots = node_replica_slots(nodes[0])
    assert slots is not None
    plan = plan_pool(inputs.policy, inputs.nodes, inputs.demands)
    assert check_plan(plan, inputs.policy, inputs.nodes, inputs.demands) == []
    per_node = Counter(g.node for g in plan.gpus for _ in g.replicas)
    assert per_node and max(per_node.values()) <= slots, (per_node, slots)
    clients = {n.replicas_per_gpu for n in plan.nodes if n.sharing == "MPS"}
    assert clients and max(clients) * 8 <= slots  # what the device plugin advertises fits the node too
    # what does not fit is unplaced, and says so, rather than counted placed
    assert sum(d.placed for d in plan.deployments) == sum(per_node.values())
    assert sum(len(d.unplaced) for d in plan.deployments) == 300 - sum(per_node.values())
