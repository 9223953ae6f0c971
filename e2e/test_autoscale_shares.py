"""Shares that make scaling cheap, on a real control plane (issue 14 item 3; docs/autoscaling.md "Which share a
new replica gets"): a scale-up lands on a MIG instance that is already configured, and no node's
``nvidia.com/mig.config`` label changes on the way down or back up."""

from __future__ import annotations

import pytest

from e2e.conftest import GPU_NODES, Cluster, wait_for
from e2e.operator import Operator, kubectl_apply, placement, replica_pods
from e2e.test_operator import (  # noqa: F401 (operator and pools are fixtures)
    CONVERGE,
    assert_pods_where_planned,
    dep,
    operator,
    pool,
    pools,
    wait_ready,
)
from slm_operator.contract import MIG_CONFIG_LABEL

pytestmark = pytest.mark.e2e


def _mig_labels(cluster: Cluster) -> dict[str, str | None]:
    return {n: cluster.labels(n).get(MIG_CONFIG_LABEL) for n in sorted(GPU_NODES)}


def _gpus(cluster: Cluster, ns: str, name: str) -> dict[str, tuple[str, int]]:
    return {
        p.metadata.name: (placement(p)["node"], placement(p)["gpu"])
        for p in replica_pods(cluster.core, ns, name)
    }


def _scale(cluster: Cluster, ns: str, name: str, replicas: int) -> None:
    cluster.kubectl("scale", "-n", ns, f"slmdeployment/{name}", f"--replicas={replicas}")


def test_a_scale_up_lands_on_an_already_configured_mig_instance(
    cluster: Cluster,
    operator: Operator,  # noqa: F811
    pools: list[str],  # noqa: F811
    ns: str,
) -> None:
    """small (8 GiB: MIG 1g.10gb) and big (60 GiB: a whole 7g.80gb GPU). When big goes to zero and small from 2
    to 1, two GPUs are idle: big's (7g.80gb, the lower index) and the one small released (1g.10gb instances).
    Scaling small up again takes the released GPU as configured, not the lowest free one (which would need a
    new layout): no node's mig.config label changes from before the scale-down to the end."""
    pools.append(f"shares-{ns}")
    kubectl_apply(cluster, [pool(pools[0], node="gpu-h100-0", sharing={"mechanisms": ["MIG"]})])
    model = "qwen2.5-0.5b-instruct"
    kubectl_apply(
        cluster,
        [
            dep("big", pools[0], model, 1, "Guaranteed", resources={"gpuMemory": "60Gi"}),
            dep("small", pools[0], model, 1, "Guaranteed", resources={"gpuMemory": "8Gi"}),
        ],
        ns,
    )
    wait_ready(cluster, ns, "big")
    wait_ready(cluster, ns, "small")
    _scale(cluster, ns, "small", 2)
    wait_ready(cluster, ns, "small")
    (big_gpu,) = _gpus(cluster, ns, "big").values()
    two = _gpus(cluster, ns, "small")
    assert len(set(two.values())) == 2 and big_gpu not in two.values()
    before = _mig_labels(cluster)
    changed: list[dict[str, str | None]] = []

    # big to zero, small down to one: both GPUs keep their MIG layout (idle, configured)
    _scale(cluster, ns, "big", 0)
    _scale(cluster, ns, "small", 1)

    def scaled_down() -> bool:
        _watching_labels(cluster, before, changed)
        gone = not cluster.core.list_namespaced_pod(ns, label_selector="slm.io/deployment=big").items
        return gone and len(replica_pods(cluster.core, ns, "small")) == 1  # big's pod gone, not terminating

    wait_for(scaled_down, CONVERGE, "big at 0 and small at 1", interval=0.5)
    wait_ready(cluster, ns, "small")
    (kept,) = _gpus(cluster, ns, "small").values()
    (released,) = set(two.values()) - {kept}
    assert big_gpu[1] < released[1], "the idle GPU with the wrong layout comes first by index"

    # small back up to two: the new replica takes the released GPU's configured instance; no relabel
    _scale(cluster, ns, "small", 2)

    def two_running() -> bool:
        _watching_labels(cluster, before, changed)
        pods = replica_pods(cluster.core, ns, "small")
        return len(pods) == 2 and all(p.status.phase == "Running" for p in pods)

    wait_for(two_running, CONVERGE, "small scaled back up to 2", interval=0.5)
    wait_ready(cluster, ns, "small")
    assert set(_gpus(cluster, ns, "small").values()) == {kept, released}
    assert not changed, f"a node's {MIG_CONFIG_LABEL} changed: {before} -> {changed}"
    assert _mig_labels(cluster) == before
    assert_pods_where_planned(cluster, ns)


def _watching_labels(
    cluster: Cluster, before: dict[str, str | None], seen: list[dict[str, str | None]]
) -> None:
    now = _mig_labels(cluster)
    if now != before:
        seen.append(now)
