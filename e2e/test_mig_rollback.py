"""mig-manager fails a node's new MIG layout for real (issue 15, fault 4): a pod of the test holds every whole GPU
of the node, so the simulated mig-manager refuses any layout that would destroy them, as mig-manager does. The
operator rolls the node back to its last good layout, plans the replica that waited for it on the other node,
says so on the pool, the deployment and the node, and does not retry in a loop (the node's label changes are
counted); deleting the pool leaves the node clean."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from e2e.conftest import MIG_CONFIG, MIG_STATE, Cluster, wait_for
from e2e.operator import (
    GROUP,
    VERSION,
    Operator,
    condition,
    custom,
    get_dep,
    kubectl_apply,
    placement,
    replica_pods,
)
from e2e.test_operator import (  # noqa: F401 (operator and pools are fixtures)
    CONVERGE,
    _absent,
    assert_no_overcommit,
    assert_pods_where_planned,
    dep,
    operator,
    pool,
    pools,
    wait_ready,
)
from slm_operator.contract import MIG_LAST_GOOD_ANNOTATION, MIG_ROLLBACK_ANNOTATION, mig_retry_name

pytestmark = pytest.mark.e2e

REFUSING = "gpu-h100-1"  # the node whose GPUs the test's pod holds
OTHER = "gpu-h100-0"
BACKOFF = 30  # --mig-rollback-seconds


@pytest.fixture(scope="module")
def rollback_operator(operator: Operator) -> Iterator[Operator]:  # noqa: F811
    """The operator of e2e/test_operator.py with a short back-off, so that the test sees it end."""
    operator.stop()
    operator.extra_args += ["--mig-rollback-seconds", str(BACKOFF)]
    operator.start()
    yield operator


def _pool_condition(cluster: Cluster, name: str, type_: str) -> dict[str, Any] | None:
    return condition(custom(cluster.api).get_cluster_custom_object(GROUP, VERSION, "gpupools", name), type_)


def _until(message: str) -> float:
    """The end of the back-off the pool's message gives ("held until 2026-...Z"), as a time.time() value."""
    text = message.split("held until ", 1)[1].split(".", 1)[0].split(";", 1)[0].strip()
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()


def test_a_layout_mig_manager_refuses_is_rolled_back_and_not_retried_in_a_loop(
    cluster: Cluster,
    rollback_operator: Operator,
    pools: list[str],  # noqa: F811
    ns: str,
) -> None:
    busy = cluster.pod(ns, "busy", {"nvidia.com/gpu": "8"}, node=REFUSING)
    cluster.wait_pod_running(ns, busy.metadata.name)
    name = f"migrb-{ns}"
    pools.append(name)
    labels = cluster.record_label(REFUSING, MIG_CONFIG)
    kubectl_apply(cluster, [pool(name, product="NVIDIA-H100-80GB-HBM3", sharing={"mechanisms": ["MIG"]})])
    # two replicas span both nodes (node spread Preferred): one waits for a MIG layout on the refusing node
    kubectl_apply(cluster, [dep("router", name, "qwen2.5-0.5b-instruct", 2, "Burstable")], ns)

    degraded = wait_for(
        lambda: (
            (c := _pool_condition(cluster, name, "Degraded")) and c["reason"] == "MigLayoutRolledBack" and c
        ),
        CONVERGE,
        "the pool to say the node was rolled back",
    )
    until = _until(degraded["message"])
    assert f"node {REFUSING}: mig-manager failed to apply MIG config " in degraded["message"], degraded
    assert "rolled back to its last good config all-disabled" in degraded["message"], degraded
    cluster.wait_node_event(
        REFUSING, "MigLayoutRolledBack", "rolled back to its last good config all-disabled"
    )
    wait_for(
        lambda: (
            (lab := cluster.labels(REFUSING))[MIG_CONFIG] == "all-disabled"
            and lab.get(MIG_STATE) == "success"
        ),
        CONVERGE,
        "mig-manager to find the last good config applied",
    )
    assert '"failures": 1' in cluster.annotations(REFUSING)[MIG_ROLLBACK_ANNOTATION]

    # the replica that waited is planned again on the other node, and the deployment says so
    wait_ready(cluster, ns, "router")
    assert {placement(p)["node"] for p in replica_pods(cluster.core, ns, "router")} == {OTHER}
    said = condition(get_dep(cluster.api, ns, "router"), "MigLayoutRolledBack")
    assert said is not None and said["status"] == "True", said
    assert f"planned again on node {OTHER}" in said["message"], said
    assert_pods_where_planned(cluster, ns)
    assert_no_overcommit(cluster)

    # no tight loop: every try of the layout, then the rollback, and nothing while the back-off lasts
    tried = labels.values[1]
    assert tried is not None and tried.startswith("slm-"), labels.values
    expected = ["all-disabled", *(mig_retry_name(tried, n) for n in range(3)), "all-disabled"]
    wait_for(lambda: labels.values == expected, 30, f"the label changes {expected}", interval=0.5)
    time.sleep(max(0.0, until - time.time() - 1))
    assert labels.values == expected, f"changed during the back-off: {labels.values}"
    # after it: the pool is no longer degraded by it; the replicas run elsewhere now, so nothing needs the layout
    wait_for(
        lambda: (c := _pool_condition(cluster, name, "Degraded")) and c["reason"] != "MigLayoutRolledBack",
        CONVERGE,
        "the pool's Degraded condition to clear once the back-off ended",
    )
    wait_for(
        lambda: (
            (c := condition(get_dep(cluster.api, ns, "router"), "MigLayoutRolledBack"))
            and c["status"] == "False"
        ),
        CONVERGE,
        "the deployment's MigLayoutRolledBack condition to turn False",
    )
    time.sleep(10)
    after = labels.stop()
    assert len(after) <= len(expected) + 2, f"more than one try after the back-off: {after}"

    # all clean at the end: the pool deleted, its node has its labels back and nothing of the rollback
    cluster.core.delete_namespaced_pod("busy", ns, grace_period_seconds=0)
    co = custom(cluster.api)
    co.delete_cluster_custom_object(GROUP, VERSION, "gpupools", name)
    wait_for(lambda: _absent(co, name), 60, f"GPUPool {name} deleted")
    annotations = cluster.annotations(REFUSING)
    assert MIG_ROLLBACK_ANNOTATION not in annotations and MIG_LAST_GOOD_ANNOTATION not in annotations, (
        annotations
    )
    assert cluster.labels(REFUSING)[MIG_CONFIG] == "all-disabled"
    wait_for(lambda: not replica_pods(cluster.core, ns), 60, "the pool's replica pods gone")
