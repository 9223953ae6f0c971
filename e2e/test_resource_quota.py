"""A Kubernetes ResourceQuota on a namespace, on a real control plane (issue 17 item 3; docs/resource-quotas.md):
the API server enforces it (ResourceQuota admission and kube-controller-manager's quota controller), the operator
creates no pod beyond it and is never refused one, the deployment's Placed condition names the quota and the
resource, and raising the quota lets the rest of the replicas in."""

from __future__ import annotations

import time
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from e2e.conftest import Cluster, wait_for
from e2e.operator import Operator, condition, get_dep, kubectl_apply, replica_pods
from e2e.test_operator import (  # noqa: F401 (operator and pools are fixtures)
    CONVERGE,
    dep,
    operator,
    pool,
    pools,
    wait_ready,
)
from slm_operator.contract import mig_resource

pytestmark = pytest.mark.e2e
KEY = f"requests.{mig_resource('1g.10gb')}"


def _quota(hard: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": "slices"},
        "spec": {"hard": {KEY: str(hard)}},
    }


def _used(cluster: Cluster, ns: str) -> dict[str, str]:
    q = cluster.core.read_namespaced_resource_quota("slices", ns)
    return dict((q.status.used if q.status else None) or {})


def _refused_by_quota(cluster: Cluster, ns: str) -> list[str]:
    events = cluster.core.list_namespaced_event(ns).items
    return [e.message or "" for e in events if e.reason == "CreatePodFailed" and "quota" in (e.message or "")]


def test_a_resource_quota_keeps_the_operator_from_creating_pods_beyond_it(
    cluster: Cluster,
    operator: Operator,  # noqa: F811
    pools: list[str],  # noqa: F811
    ns: str,
) -> None:
    pools.append(f"quota-{ns}")
    kubectl_apply(cluster, [pool(pools[0], node="gpu-h100-0", sharing={"mechanisms": ["MIG"]})])
    kubectl_apply(cluster, [_quota(2)], ns)
    # kube-controller-manager's quota controller counts it (the API server refuses pods until it has)
    wait_for(lambda: _used(cluster, ns).get(KEY) == "0", 60, "the quota controller counted the quota")
    # and ResourceQuota admission enforces it: a pod asking for 3 slices is refused
    with pytest.raises(ApiException) as refused:
        cluster.core.create_namespaced_pod(ns, _pod_asking(3))
    assert refused.value.status == 403 and "exceeded quota: slices" in (refused.value.body or "")

    # 8 GiB: a MIG 1g.10gb slice per replica; 4 wanted, the quota admits 2
    kubectl_apply(
        cluster,
        [dep("small", pools[0], "qwen2.5-0.5b-instruct", 4, "Guaranteed", resources={"gpuMemory": "8Gi"})],
        ns,
    )

    def held() -> dict[str, Any] | None:
        placed = condition(get_dep(cluster.api, ns, "small"), "Placed") or {}
        running = [p for p in replica_pods(cluster.core, ns, "small") if p.status.phase == "Running"]
        return placed if placed.get("reason") == "ResourceQuotaExceeded" and len(running) == 2 else None

    placed = wait_for(held, CONVERGE, "2 replicas running, the other 2 held back by the quota", interval=0.5)
    assert placed["status"] == "False"
    assert "ResourceQuota slices" in placed["message"] and KEY in placed["message"], placed["message"]
    assert "2/4 replicas placed; 2 held back" in placed["message"], placed["message"]
    time.sleep(
        3
    )  # a few more passes (the operator re-plans on the quota's and pods' events): still 2, no refusal
    assert len(replica_pods(cluster.core, ns, "small")) == 2
    assert _used(cluster, ns).get(KEY) == "2"
    assert _refused_by_quota(cluster, ns) == [], "the operator planned within the quota, not into a 403"

    # raising the quota lets the rest in
    cluster.kubectl(
        "-n",
        ns,
        "patch",
        "resourcequota",
        "slices",
        "--type=merge",
        "-p",
        f'{{"spec":{{"hard":{{"{KEY}":"4"}}}}}}',
    )
    wait_ready(cluster, ns, "small")
    placed = condition(get_dep(cluster.api, ns, "small"), "Placed") or {}
    assert placed.get("status") == "True", placed
    assert _refused_by_quota(cluster, ns) == []


def _pod_asking(slices: int) -> client.V1Pod:
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name="greedy"),
        spec=client.V1PodSpec(
            containers=[
                client.V1Container(
                    name="c",
                    image="busybox",
                    resources=client.V1ResourceRequirements(
                        requests={mig_resource("1g.10gb"): str(slices)},
                        limits={mig_resource("1g.10gb"): str(slices)},
                    ),
                )
            ]
        ),
    )
