"""slm-operator against a real control plane: placement, scaling, tier pressure, reservations, bad input,
crash-restart convergence, deletion and fine-tuning. The operator runs as a real process (e2e/operator.py);
the NVIDIA stack is the simulator of e2e/nvsim (NVIDIA's label/ConfigMap protocol)."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from e2e.conftest import MIG_STATE, Cluster, wait_for
from e2e.operator import (
    GROUP,
    VERSION,
    Operator,
    condition,
    custom,
    delete_quietly,
    get_dep,
    is_true,
    kubectl_apply,
    llm_fallback_pod,
    placement,
    replica_pods,
)
from slm_operator.advisor.traces import generate
from slm_operator.capture import CaptureRecord, open_store
from slm_operator.contract import FINETUNE_JOB_LABEL, GPU_ROLES_ANNOTATION, TASK_CLASSIFIER_KEY
from tests.test_argocd_health import health as argocd_health

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[1]
CONVERGE = 120.0


def scrape(url: str) -> dict[str, Any]:
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return {f.name: f for f in text_string_to_metric_families(text)} | {
        s.name: f for f in text_string_to_metric_families(text) for s in f.samples
    }


@pytest.fixture(scope="module")
def operator(
    cluster: Cluster, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Operator]:
    """slm-operator as a real process, authenticated as the Helm chart's ServiceAccount (least privilege), not
    as an admin: the chart's RBAC, ServiceAccount and PriorityClasses are installed with `helm install`."""
    cluster.kubectl("apply", "-f", str(REPO / "crds"))
    cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
    for ns in ("gpu-operator", "slm-system"):
        subprocess.run(
            [str(cluster.bin_dir / "kubectl"), "--kubeconfig", cluster.kubeconfig, "create", "namespace", ns],
            capture_output=True,
        )
    cluster.kubectl(
        "apply", "-f", str(REPO / "e2e" / "cluster" / "volumes.yaml")
    )  # PVs for the examples' PVC
    helm = [str(cluster.bin_dir / "helm"), "--kubeconfig", cluster.kubeconfig]
    subprocess.run(
        [*helm, "upgrade", "--install", "slm", str(REPO / "charts" / "slm-operator"), "--namespace", "slm-system",
         "--set", "crds.enabled=false", "--set", "agent.enabled=false", "--set", "operator.replicas=1"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    log_dir = tmp_path_factory.mktemp("operator")
    # a token bound to a stand-in Pod per run, as the chart's Deployment gives each replica
    op = Operator(
        kubeconfig=cluster.kubeconfig, log_dir=log_dir, service_account="slm-slm-operator", cluster=cluster
    )
    op.start()
    yield op
    op.stop()
    if request.session.testsfailed:
        print(op.logs()[-30000:])
    subprocess.run([*helm, "uninstall", "slm", "--namespace", "slm-system"], capture_output=True)


def test_operator_runs_as_the_charts_service_account(cluster: Cluster, operator: Operator) -> None:
    sa = "system:serviceaccount:slm-system:slm-slm-operator"
    assert cluster.kubectl("auth", "can-i", "patch", "nodes", "--as", sa).strip() == "yes"
    for verb, what in (("get", "secrets"), ("delete", "nodes"), ("create", "clusterrolebindings")):
        r = subprocess.run(
            [str(cluster.bin_dir / "kubectl"), "--kubeconfig", cluster.kubeconfig, "auth", "can-i", verb, what, "--as", sa],
            capture_output=True, text=True,
        )  # fmt: skip
        assert r.stdout.strip() == "no", (verb, what)
    assert "token" in (operator.log_dir / f"{operator.pod_name}.kubeconfig").read_text()
    wait_for(
        lambda: "slm-operator-leader" in cluster.kubectl("-n", "slm-system", "get", "lease", "-o", "name"),
        60,
        "the operator took the Lease under its ServiceAccount",
    )


@pytest.fixture
def pools(
    cluster: Cluster, operator: Operator, gpu_nodes: Cluster, request: pytest.FixtureRequest
) -> Iterator[list[str]]:
    """Names of the GPUPools a test creates; deleted afterwards (their nodes are restored), logs on failure."""
    names: list[str] = []
    yield names
    if getattr(request.node, "rep_call", None) and request.node.rep_call.failed:
        print(operator.logs()[-30000:])
    co = custom(cluster.api)
    for name in names:
        delete_quietly(co.delete_cluster_custom_object, GROUP, VERSION, "gpupools", name)
    for name in names:
        wait_for(lambda name=name: _absent(co, name), 60, f"GPUPool {name} deleted (finalizer ran)")


def _absent(co: client.CustomObjectsApi, name: str) -> bool:
    try:
        co.get_cluster_custom_object(GROUP, VERSION, "gpupools", name)
    except client.exceptions.ApiException as exc:
        return exc.status == 404
    return False


def pool(name: str, node: str | None = None, product: str | None = None, **spec: Any) -> dict[str, Any]:
    labels = {"kubernetes.io/hostname": node} if node else {"nvidia.com/gpu.product": product}
    return {
        "apiVersion": "slm.io/v1alpha1",
        "kind": "GPUPool",
        "metadata": {"name": name},
        "spec": {"nodeSelector": {"matchLabels": labels}, **spec},
    }


def dep(name: str, pool_name: str, model_name: str, replicas: int, qos: str, **spec: Any) -> dict[str, Any]:
    model_spec = {"name": model_name, **spec.pop("model", {})}
    return {
        "apiVersion": "slm.io/v1alpha1",
        "kind": "SLMDeployment",
        "metadata": {"name": name},
        "spec": {
            "poolRef": {"name": pool_name},
            "model": model_spec,
            "replicas": replicas,
            "qos": qos,
            **spec,
        },
    }


def wait_ready(cluster: Cluster, ns: str, name: str, timeout: float = CONVERGE) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        obj = get_dep(cluster.api, ns, name)
        desired = obj["spec"]["replicas"]
        pods = replica_pods(cluster.core, ns, name)
        running = [p for p in pods if p.status.phase == "Running"]
        if is_true(obj, "Ready") and len(running) == desired == len(pods):
            return obj
        return None

    try:
        return wait_for(ready, timeout, f"{ns}/{name} Ready with every pod Running", interval=0.5)
    except AssertionError as e:  # say where it stood: its conditions and its pods
        raise AssertionError(f"{e}\n{describe_dep(cluster, ns, name)}") from None


def describe_dep(cluster: Cluster, ns: str, name: str) -> str:
    """A deployment's conditions and its pods (phase, node, why not scheduled), for a failure message."""
    obj = get_dep(cluster.api, ns, name)
    lines = [f"generation {obj['metadata'].get('generation')}"]
    for c in (obj.get("status") or {}).get("conditions") or []:
        lines.append(
            f"  {c.get('type')}={c.get('status')} ({c.get('reason')}, gen {c.get('observedGeneration')}):"
            f" {c.get('message')}"
        )
    for p in cluster.core.list_namespaced_pod(ns, label_selector=f"slm.io/deployment={name}").items:
        why = [f"{c.type}={c.status} {c.reason or ''} {c.message or ''}" for c in p.status.conditions or []]
        lines.append(
            f"  pod {p.metadata.name} {p.status.phase} on {p.spec.node_name}"
            f" (deleting: {bool(p.metadata.deletion_timestamp)}, limits {p.spec.containers[0].resources.limits},"
            f" node selector {p.spec.node_selector}): {'; '.join(why)}"
        )
    return "\n".join(lines)


def assert_pods_where_planned(cluster: Cluster, ns: str) -> None:
    """Every replica pod runs on the node its placement names, requesting the planned share; none Pending."""
    for p in replica_pods(cluster.core, ns):
        rec = placement(p)
        assert p.status.phase == "Running", (p.metadata.name, p.status.phase)
        assert p.spec.node_name == rec["node"], (p.metadata.name, p.spec.node_name, rec)
        limits = p.spec.containers[0].resources.limits
        if rec["mechanism"] == "MIG":
            assert limits == {f"nvidia.com/mig-{rec['migProfile']}": "1"}
        elif rec["mechanism"] in ("MPS", "TimeSlicing"):
            assert limits == {"nvidia.com/gpu.shared": "1"}
        else:
            assert limits == {"nvidia.com/gpu": "1"}


def assert_no_overcommit(cluster: Cluster) -> None:
    """What the pods request on each node fits what the (simulated) device plugin advertises."""
    used: dict[str, Counter[str]] = {}
    for p in cluster.core.list_pod_for_all_namespaces().items:
        if not p.spec.node_name or p.status.phase in ("Succeeded", "Failed"):
            continue
        for c in p.spec.containers:
            for k, v in ((c.resources and c.resources.limits) or {}).items():
                if k.startswith("nvidia.com/"):
                    used.setdefault(p.spec.node_name, Counter())[k] += int(v)
    for node, counts in used.items():
        alloc = cluster.nvidia_resources(node)
        for k, v in counts.items():
            assert v <= alloc.get(k, 0), f"{node}: {k} {v} requested > {alloc.get(k, 0)} allocatable"


# ------------------------------------------------------------------------------------------- 1. examples


def test_examples_are_placed_where_the_plan_says(
    cluster: Cluster, operator: Operator, pools: list[str]
) -> None:
    pools += ["h100", "l4"]
    docs = [
        d for f in sorted((REPO / "examples").glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d
    ]
    try:
        kubectl_apply(cluster, docs)
        co = custom(cluster.api)
        for ns in ("agents", "support"):
            for d in co.list_namespaced_custom_object(GROUP, VERSION, ns, "slmdeployments")["items"]:
                wait_ready(cluster, ns, d["metadata"]["name"])
            assert_pods_where_planned(cluster, ns)
        assert_no_overcommit(cluster)
        out = cluster.kubectl("get", "slm", "-A", "-o", "wide")
        assert "slmdeployment.slm.io/invoice-extractor" in out and "gpupool.slm.io/h100" in out
        pool_obj = co.get_cluster_custom_object(GROUP, VERSION, "gpupools", "h100")
        assert is_true(pool_obj, "Ready"), pool_obj.get("status")
        assert pool_obj["status"]["gpusReserved"] == 2 and pool_obj["status"]["gpusSegment"] == 1
        # The operator's metrics, scraped over HTTP, agree with the cluster.
        families = scrape(f"http://127.0.0.1:{operator.metrics_port}/metrics")
        placed = {
            (smp.labels["namespace"], smp.labels["deployment"]): smp.value
            for smp in families["slm_replicas_placed"].samples
        }
        for ns in ("agents", "support"):
            for d in co.list_namespaced_custom_object(GROUP, VERSION, ns, "slmdeployments")["items"]:
                assert placed[(ns, d["metadata"]["name"])] == d["status"]["placedReplicas"]
        gpus = {
            smp.labels["mode"]: smp.value
            for smp in families["slm_pool_gpus"].samples
            if smp.labels["pool"] == "h100"
        }
        assert gpus["Reserved"] == 2 and gpus["Segment"] == 1 and sum(gpus.values()) == 16
        # Argo CD's view: the shipped Lua health checks, run on the real objects, call them Healthy.
        real = [("GPUPool", co.get_cluster_custom_object(GROUP, VERSION, "gpupools", "h100"))]
        real += [("SLMDeployment", get_dep(cluster.api, "agents", "invoice-extractor"))]

        # The example FineTuneJob's pod lands on the GPU the plan set aside for its segment. (Its base model,
        # qwen2.5-3b-instruct, cannot be downloaded here: e2e/test_finetune.py runs the whole chain on a tiny
        # model; this checks only where the example's trainer is placed.)
        def trainer_pod() -> Any:
            pods = cluster.core.list_namespaced_pod(
                "agents", label_selector=f"{FINETUNE_JOB_LABEL}=extractor-lora-1"
            ).items
            return next((p for p in pods if p.spec.node_name), None)

        pod = wait_for(trainer_pod, CONVERGE, "the example FineTuneJob's pod scheduled")
        node = cluster.core.read_node(pod.spec.node_name)
        roles = json.loads((node.metadata.annotations or {}).get(GPU_ROLES_ANNOTATION, "{}"))
        assert "finetune" in roles.values(), (pod.spec.node_name, roles)
        for kind, obj in real:
            verdict = argocd_health(kind, obj)
            assert verdict["status"] == "Healthy", (kind, verdict)
        wait_ready(cluster, "agents", "invoice-extractor")  # rolled onto the adapter, one replica at a time
        # The promotion was a merge patch, and the API-request counter saw it (it once counted no patches).
        requests = {
            smp.labels["verb"]: smp.value
            for smp in scrape(f"http://127.0.0.1:{operator.metrics_port}/metrics")[
                "slm_api_requests_total"
            ].samples
            if smp.name == "slm_api_requests_total"
        }
        assert requests.get("patch", 0) >= 1 and requests["list"] >= 1 and requests["apply"] >= 1, requests
        # The Service of each deployment exists and selects its pods.
        svc = cluster.core.read_namespaced_service("invoice-extractor", "agents")
        assert svc.spec.selector == {"slm.io/deployment": "invoice-extractor"}
    finally:
        for ns in ("agents", "support"):
            delete_quietly(cluster.core.delete_namespace, ns)
        for ns in ("agents", "support"):
            wait_for(
                lambda ns=ns: not [n for n in cluster.core.list_namespace().items if n.metadata.name == ns],
                90,
                f"namespace {ns} gone",
            )


async def _write_store(url: str, records: list[dict[str, Any]]) -> None:
    async with open_store(url) as store:
        await store.write([CaptureRecord.model_validate(r) for r in records])


async def export_task(url: str, task: str) -> list[str]:
    """The ids of the store's calls tagged with ``task``."""
    async with open_store(url) as store:
        return [r.id async for r in store.export(task=task)]


def test_advise_apply_moves_tasks_that_the_operator_places(
    cluster: Cluster, operator: Operator, pools: list[str], ns: str, tmp_path: Path
) -> None:
    """`slm-operator advise --cluster --apply` on captured calls, as the chart's scheduled advisor runs it: it
    plans on the pool, nodes and route it reads from the API server, which accepts every manifest it writes
    (CRD schemas and CEL included); the operator places the SLMDeployments where its plan says, the route gets
    a shadow rule per moved task, and a second run changes nothing and duplicates nothing."""
    pools.append("h100")
    route = next(d for d in yaml.safe_load_all((REPO / "examples" / "40-slmroutes.yaml").read_text()) if d)
    route["metadata"]["namespace"] = ns
    kubectl_apply(
        cluster,
        [
            d
            for d in yaml.safe_load_all((REPO / "examples" / "10-pools.yaml").read_text())
            if d and d["metadata"]["name"] == "h100"
        ],
    )
    kubectl_apply(cluster, [route])
    # the calls the gateway captured, in a usage store (SQLite here; PostgreSQL in e2e/test_finetune_usage.py)
    store = f"sqlite://{tmp_path}/usage.db"
    asyncio.run(_write_store(store, generate(3000, seed=2, route=f"{ns}/agent-llm", hours=1)))
    cmd = [
        sys.executable, "-m", "slm_operator", "advise", "--from", store, "-o", str(tmp_path / "advice"),
        "--cluster", "--pool", "h100", "--llm-price", "2.5,10", "--min-calls", "100",
        "--usage-store-secret", "usage-store/url", "--no-examples", "--apply", "--kubeconfig", cluster.kubeconfig,
    ]  # fmt: skip
    first = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert first.returncode == 0, first.stderr
    docs = [yaml.safe_load(p.read_text()) for p in sorted((tmp_path / "advice" / "manifests").glob("*.yaml"))]
    deployments = [d["metadata"]["name"] for d in docs if d["kind"] == "SLMDeployment"]
    assert deployments and f"applied SLMDeployment {ns}/{deployments[0]}" in first.stdout
    for name in deployments:
        wait_ready(cluster, ns, name)
    assert_pods_where_planned(cluster, ns)
    co = custom(cluster.api)
    jobs = co.list_namespaced_custom_object(GROUP, VERSION, ns, "finetunejobs")["items"]
    assert sorted(j["spec"]["promote"]["slmDeploymentRef"]["name"] for j in jobs) == sorted(deployments)
    # each trains on its task's calls in the store, which advise tagged: every call it assigned to a task
    assignments = [
        json.loads(x) for x in (tmp_path / "advice" / "assignments.jsonl").read_text().splitlines()
    ]
    assert f"tagged {sum(1 for a in assignments if a['task'])} calls" in first.stdout, first.stdout
    tasks = [j["spec"]["dataset"]["usageStore"]["task"] for j in jobs]
    for task in tasks:
        exported = asyncio.run(export_task(store, task))
        assert sorted(exported) == sorted(a["id"] for a in assignments if a["task"] == task)
    live = co.get_namespaced_custom_object(GROUP, VERSION, ns, "slmroutes", "agent-llm")
    shadowed = {r["shadow"]["backends"][0] for r in live["spec"]["rules"] if r["name"].startswith("task-")}
    assert shadowed == set(deployments)
    promoted = {r["promote"]["backend"] for r in live["spec"]["rules"] if r["name"].startswith("task-")}
    assert promoted == set(deployments) and all(
        r["promote"]["minAgreementPercent"] == 90 for r in live["spec"]["rules"] if "promote" in r
    )  # the API server's defaults
    assert live["spec"]["taskClassifier"]["configMapRef"] == {
        "name": "slm-task-classifier",
        "key": "classifier.json",
    }
    classifier = cluster.core.read_namespaced_config_map("slm-task-classifier", ns)
    assert json.loads(classifier.data[TASK_CLASSIFIER_KEY])["tasks"]
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert again.returncode == 0, again.stderr
    assert "tagged 0 calls" in again.stdout  # nothing to tag twice
    assert (
        f"kept FineTuneJob {ns}/{jobs[0]['metadata']['name']}" in again.stdout
    )  # one per task, never replaced
    items = co.list_namespaced_custom_object(GROUP, VERSION, ns, "slmdeployments")["items"]
    assert sorted(d["metadata"]["name"] for d in items) == sorted(deployments)
    live = co.get_namespaced_custom_object(GROUP, VERSION, ns, "slmroutes", "agent-llm")
    assert len(live["spec"]["rules"]) == len(route["spec"]["rules"]) + len(deployments)
    report = cluster.core.read_namespaced_config_map("slm-advice", ns)
    assert (
        "Planned on GPUPool `h100`" in report.data["report.md"]
        and json.loads(report.data["tasks.json"])["tasks"]
    )
    for job in jobs:  # no trainer of this test keeps the pool's fine-tuning GPU
        delete_quietly(
            co.delete_namespaced_custom_object, GROUP, VERSION, ns, "finetunejobs", job["metadata"]["name"]
        )


# ------------------------------------------------------------------------------------------- 2. scaling


def test_scale_repacks_without_moving_other_deployments(
    cluster: Cluster, operator: Operator, pools: list[str], ns: str
) -> None:
    pools.append(f"scale-{ns}")
    kubectl_apply(cluster, [pool(pools[0], node="gpu-h100-0", sharing={"mechanisms": ["MIG", "Exclusive"]})])
    kubectl_apply(
        cluster,
        [
            dep("router", pools[0], "qwen2.5-0.5b-instruct", 2, "Burstable"),
            dep(
                "extractor",
                pools[0],
                "qwen2.5-3b-instruct",
                2,
                "Guaranteed",
                model={"maxContextTokens": 8192},
            ),
        ],
        ns,
    )
    wait_ready(cluster, ns, "router")
    wait_ready(cluster, ns, "extractor")
    before = {p.metadata.name for p in replica_pods(cluster.core, ns, "extractor")}
    cluster.kubectl("scale", "-n", ns, "slmdeployment/router", "--replicas=5")
    wait_ready(cluster, ns, "router")
    assert {p.metadata.name for p in replica_pods(cluster.core, ns, "extractor")} == before
    cluster.kubectl("scale", "-n", ns, "slmdeployment/router", "--replicas=1")
    wait_for(lambda: len(replica_pods(cluster.core, ns, "router")) == 1, CONVERGE, "router scaled down to 1")
    wait_ready(cluster, ns, "router")
    assert {p.metadata.name for p in replica_pods(cluster.core, ns, "extractor")} == before
    assert_pods_where_planned(cluster, ns)
    assert_no_overcommit(cluster)
    # the scale subresource reports the replicas and the selector
    scale = cluster.kubectl(
        "get", "-n", ns, "--raw", f"/apis/slm.io/v1alpha1/namespaces/{ns}/slmdeployments/router/scale"
    )
    assert json.loads(scale)["status"]["selector"] == "slm.io/deployment=router"


def _requests_by_verb(operator: Operator) -> Counter[str]:
    family = scrape(f"http://127.0.0.1:{operator.metrics_port}/metrics")["slm_api_requests_total"]
    return Counter(
        {s.labels["verb"]: int(s.value) for s in family.samples if s.name == "slm_api_requests_total"}
    )


def test_a_settled_pool_is_planned_from_the_watch_caches(
    cluster: Cluster, operator: Operator, pools: list[str], ns: str
) -> None:
    """Once a pool has converged its passes (every SLM_RESYNC_SECONDS=5 s here) read the watch caches: no list
    and no write reaches the API server. A change still reaches the pool through the watches: a replica pod
    deleted by hand comes back, a scale-up is placed."""
    pools.append(f"cache-{ns}")
    kubectl_apply(cluster, [pool(pools[0], node="gpu-h100-0", sharing={"mechanisms": ["MIG", "Exclusive"]})])
    kubectl_apply(cluster, [dep("router", pools[0], "qwen2.5-0.5b-instruct", 2, "Burstable")], ns)
    wait_ready(cluster, ns, "router")
    time.sleep(8)  # the statuses and events of the last pods' start
    before = _requests_by_verb(operator)
    time.sleep(20)  # four resync passes
    sent = _requests_by_verb(operator) - before
    assert sent["list"] == 0 and sent["watch"] <= 2, sent
    assert not any(sent[v] for v in ("apply", "create", "patch", "delete")), sent
    victim = replica_pods(cluster.core, ns, "router")[0].metadata.name
    cluster.core.delete_namespaced_pod(victim, ns, grace_period_seconds=0)
    wait_for(
        lambda: (
            len([p for p in replica_pods(cluster.core, ns, "router") if not p.metadata.deletion_timestamp])
            == 2
        ),
        CONVERGE,
        "the deleted replica re-created",
    )
    cluster.kubectl("scale", "-n", ns, "slmdeployment/router", "--replicas=3")
    wait_ready(cluster, ns, "router")
    assert_pods_where_planned(cluster, ns)
    assert_no_overcommit(cluster)


# ------------------------------------------------------------------------------------------- 3. tier pressure


def test_besteffort_yields_to_guaranteed(
    cluster: Cluster, operator: Operator, pools: list[str], ns: str
) -> None:
    pools.append(f"tiers-{ns}")
    # One L4 node (4 x 24 GB, no MIG): whole GPUs only, so capacity is easy to exhaust.
    kubectl_apply(cluster, [pool(pools[0], node="gpu-l4-0", sharing={"mechanisms": ["Exclusive"]})])
    kubectl_apply(cluster, [dep("batch", pools[0], "qwen2.5-1.5b-instruct", 4, "BestEffort")], ns)
    wait_ready(cluster, ns, "batch")
    kubectl_apply(cluster, [dep("critical", pools[0], "qwen2.5-1.5b-instruct", 2, "Guaranteed")], ns)
    wait_ready(cluster, ns, "critical")

    def yielded() -> dict[str, Any] | None:
        obj = get_dep(cluster.api, ns, "batch")
        placed = condition(obj, "Placed")
        return (
            obj
            if placed and placed["status"] == "False" and placed["reason"] == "PreemptedByHigherTier"
            else None
        )

    obj = wait_for(yielded, CONVERGE, "BestEffort deployment reports it yielded")
    assert obj["status"]["placedReplicas"] == 2
    assert (
        "Guaranteed" in condition(obj, "Placed")["message"] or "higher" in condition(obj, "Placed")["message"]
    )
    wait_for(lambda: len(replica_pods(cluster.core, ns, "batch")) == 2, CONVERGE, "two BestEffort pods left")
    events = cluster.core.list_namespaced_event(ns).items
    assert any(e.reason in ("Unplaceable", "Yielded") and e.involved_object.name == "batch" for e in events)
    assert_no_overcommit(cluster)


# ------------------------------------------------------------------------------------------- 4. reservations


def test_llm_fallback_reclaims_lent_gpus(
    cluster: Cluster, operator: Operator, pools: list[str], ns: str
) -> None:
    pools.append(f"llm-{ns}")
    kubectl_apply(
        cluster,
        [
            pool(
                pools[0],
                node="gpu-l4-1",
                sharing={"mechanisms": ["Exclusive"]},
                reservations=[{"name": "llm", "purpose": "LLMFallback", "gpus": 2, "lendTo": "BestEffort"}],
            )
        ],
    )
    kubectl_apply(
        cluster,
        [
            dep("guaranteed", pools[0], "qwen2.5-1.5b-instruct", 2, "Guaranteed"),
            dep("spare", pools[0], "qwen2.5-1.5b-instruct", 2, "BestEffort"),
        ],
        ns,
    )
    wait_ready(cluster, ns, "guaranteed")
    wait_ready(cluster, ns, "spare")
    roles = json.loads(cluster.annotations("gpu-l4-1")["slm.io/gpu-roles"])
    reserved = {int(i) for i, r in roles.items() if r == "llm"}
    assert len(reserved) == 2
    for p in replica_pods(cluster.core, ns, "guaranteed"):
        assert placement(p)["gpu"] not in reserved, "a Guaranteed replica sits on a reserved GPU"
    lent = [p for p in replica_pods(cluster.core, ns, "spare") if placement(p)["gpu"] in reserved]
    assert lent, "the BestEffort replicas borrow the idle reserved GPUs"
    # The LLM fallback arrives: its PriorityClass lets the scheduler preempt a lent BestEffort replica.
    llm = llm_fallback_pod(ns, "gpu-l4-1", 2)
    cluster.core.create_namespaced_pod(ns, llm)
    cluster.wait_pod_running(ns, "llm-fallback", timeout=CONVERGE)

    def reclaimed() -> bool:
        spare = replica_pods(cluster.core, ns, "spare")
        return all(placement(p)["gpu"] not in reserved for p in spare)

    wait_for(reclaimed, CONVERGE, "lent BestEffort replicas left the reserved GPUs")

    def unplaced() -> dict[str, Any] | None:
        c = condition(get_dep(cluster.api, ns, "spare"), "Placed")
        return c if c and c["status"] == "False" else None

    c = wait_for(unplaced, CONVERGE, "the BestEffort deployment reports it lost the borrowed GPUs")
    assert c["reason"] in (
        "ReservationClaimed",
        "ReservedCapacity",
        "InsufficientCapacity",
        "PreemptedByHigherTier",
    ), c
    assert reclaimed()
    assert all(p.status.phase == "Running" for p in replica_pods(cluster.core, ns, "guaranteed"))
    pool_obj = custom(cluster.api).get_cluster_custom_object(GROUP, VERSION, "gpupools", pools[0])
    wait_for(
        lambda: (
            custom(cluster.api).get_cluster_custom_object(GROUP, VERSION, "gpupools", pools[0])["status"][
                "reservations"
            ][0]["inUse"]
            == 2
        ),
        CONVERGE,
        "pool status shows the reservation in use",
    )
    assert pool_obj["status"]["reservations"][0]["name"] == "llm"
    cluster.core.delete_namespaced_pod("llm-fallback", ns, grace_period_seconds=0)


# ------------------------------------------------------------------------------------------- 5. bad input


def test_invalid_manifests_are_rejected_by_the_api_server(
    cluster: Cluster, operator: Operator, ns: str
) -> None:
    cases = yaml.safe_load((REPO / "tests" / "data" / "invalid-manifests.yaml").read_text())
    assert len(cases) >= 25
    for case in cases:
        manifest = case["manifest"]
        cmd = [
            str(cluster.bin_dir / "kubectl"),
            "--kubeconfig",
            cluster.kubeconfig,
            "apply",
            "--dry-run=server",
            "-f",
            "-",
        ]
        if manifest["kind"] != "GPUPool":
            cmd += ["-n", ns]
        r = subprocess.run(cmd, input=json.dumps(manifest), capture_output=True, text=True)
        assert r.returncode != 0, f"{case['name']}: accepted"
        assert case["field"] in r.stderr, f"{case['name']}: {r.stderr}"


def test_a_finetunejob_spec_cannot_be_edited(cluster: Cluster, ns: str) -> None:
    """A FineTuneJob is one training run: the API server refuses a spec change (CEL `self == oldSelf`) with a
    message that says to create a new one; metadata (labels, annotations) stays editable."""
    ftj = {
        "apiVersion": "slm.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "frozen"},
        "spec": {
            "poolRef": {"name": "no-such-pool"},
            "segment": "finetune",
            "baseModel": "qwen2.5-3b-instruct",
            "dataset": {"configMapRef": {"name": "calls"}},
            "output": {"pvc": {"claimName": "adapters", "path": "x/v1"}},
        },
    }
    kubectl_apply(cluster, [ftj], ns)
    kubectl = [str(cluster.bin_dir / "kubectl"), "--kubeconfig", cluster.kubeconfig, "-n", ns]
    edit = ["patch", "finetunejob", "frozen", "--type=merge", "-p"]
    r = subprocess.run(
        [*kubectl, *edit, '{"spec": {"hyperparameters": {"epochs": 5}}}'], capture_output=True, text=True
    )
    assert r.returncode != 0 and "create a new FineTuneJob" in r.stderr, r.stderr
    r = subprocess.run(
        [*kubectl, *edit, '{"metadata": {"labels": {"team": "a"}}}'], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr


def test_model_no_gpu_can_hold_is_unplaced_with_a_reason(
    cluster: Cluster, operator: Operator, pools: list[str], ns: str
) -> None:
    pools.append(f"big-{ns}")
    kubectl_apply(cluster, [pool(pools[0], node="gpu-l4-0")])
    kubectl_apply(
        cluster,
        [
            dep(
                "huge",
                pools[0],
                "llama-3.1-8b-instruct",
                1,
                "Burstable",
                model={"maxContextTokens": 131072, "maxConcurrentSequences": 16},
            )
        ],
        ns,
    )

    def unplaced() -> dict[str, Any] | None:
        c = condition(get_dep(cluster.api, ns, "huge"), "Placed")
        return c if c and c["status"] == "False" else None

    c = wait_for(unplaced, CONVERGE, "Placed=False")
    assert c["reason"] == "NoShareFits", c
    assert "GiB" in c["message"] or "GPU" in c["message"]
    assert operator.proc is not None and operator.proc.poll() is None, "the operator keeps running"
    assert replica_pods(cluster.core, ns, "huge") == []


def test_a_pod_the_scheduler_refuses_is_explained_and_recovers(
    cluster: Cluster, operator: Operator, pools: list[str], ns: str
) -> None:
    """The planner does not know a node's taints: when the real kube-scheduler refuses the planned node, the
    status quotes it (Progressing=PodUnschedulable, the replica's reason), and the pod starts once the user
    removes the taint; the operator neither deletes the pod nor re-plans it elsewhere meanwhile."""
    node = "gpu-l4-1"
    taint = {"key": "e2e.slm.io/maintenance", "value": "true", "effect": "NoSchedule"}
    pools.append(f"taint-{ns}")
    cluster.core.patch_node(node, {"spec": {"taints": [taint]}})
    try:
        kubectl_apply(cluster, [pool(pools[0], node=node)])
        kubectl_apply(cluster, [dep("tagger", pools[0], "qwen2.5-0.5b-instruct", 1, "Burstable")], ns)

        def refused() -> dict[str, Any] | None:
            c = condition(get_dep(cluster.api, ns, "tagger"), "Progressing")
            return c if c and c["reason"] == "PodUnschedulable" else None

        c = wait_for(refused, CONVERGE, "Progressing=PodUnschedulable")
        assert "the pod of replica 0 cannot be scheduled on its planned node" in c["message"], c
        assert "untolerated taint" in c["message"], "the scheduler's own words"
        placement = get_dep(cluster.api, ns, "tagger")["status"]["placements"][0]
        assert placement["state"] == "Pending" and placement["reason"].startswith("unschedulable:"), placement
        pods = replica_pods(cluster.core, ns, "tagger")
        assert len(pods) == 1
        first = pods[0].metadata.uid
    finally:
        cluster.core.patch_node(node, {"spec": {"taints": None}})
    obj = wait_ready(cluster, ns, "tagger")
    assert condition(obj, "Progressing")["reason"] == "Complete"  # type: ignore[index]
    assert [p.metadata.uid for p in replica_pods(cluster.core, ns, "tagger")] == [first], (
        "the same pod started"
    )


# ------------------------------------------------------------------------------------------- 6. crash and restart


def test_sigkill_mid_reconcile_converges(
    cluster: Cluster, operator: Operator, pools: list[str], ns: str
) -> None:
    pools.append(f"crash-{ns}")
    kubectl_apply(
        cluster,
        [
            pool(
                pools[0], product="NVIDIA-H100-80GB-HBM3", sharing={"mechanisms": ["MIG", "MPS", "Exclusive"]}
            )
        ],
    )
    models = [
        "qwen2.5-0.5b-instruct",
        "qwen2.5-1.5b-instruct",
        "llama-3.2-1b-instruct",
        "smollm2-1.7b-instruct",
    ]
    tiers = ["Guaranteed", "Burstable", "BestEffort"]
    docs = [dep(f"d{i:02d}", pools[0], models[i % 4], 1 + i % 2, tiers[i % 3]) for i in range(50)]
    kubectl_apply(cluster, docs, ns)
    wait_for(lambda: len(replica_pods(cluster.core, ns)) >= 5, CONVERGE, "the operator started creating pods")
    operator.kill(signal.SIGKILL)
    operator.start()
    assert_converged_cleanly(cluster, ns, {f"d{i:02d}": 1 + i % 2 for i in range(50)})


def assert_converged_cleanly(
    cluster: Cluster,
    ns: str,
    replicas: dict[str, int],
    mig_nodes: tuple[str, ...] = ("gpu-h100-0", "gpu-h100-1"),
    timeout: float = 240,
) -> None:
    """The end checks after a fault: every deployment Ready with all its pods Running; one pod per replica,
    none left over; each where its placement says; no GPU over-committed; the MIG ConfigMap names exactly the
    configs the nodes use (nothing orphaned)."""
    for name in replicas:
        wait_ready(cluster, ns, name, timeout=timeout)
    pods = replica_pods(cluster.core, ns)
    keys = Counter(
        (p.metadata.labels["slm.io/deployment"], p.metadata.labels["slm.io/replica"]) for p in pods
    )
    assert all(v == 1 for v in keys.values()), "a replica has two pods"
    assert sum(keys.values()) == sum(replicas.values())
    assert_pods_where_planned(cluster, ns)
    assert_no_overcommit(cluster)

    # (pruning an entry no node uses any more may trail the last pod starting, hence the wait)
    def configs_match() -> tuple[set[str], set[str]] | None:
        cm = cluster.core.read_namespaced_config_map("slm-mig-parted-config", "gpu-operator")
        configs = set(yaml.safe_load(cm.data["config.yaml"])["mig-configs"])
        used = {cluster.labels(n).get("nvidia.com/mig.config") for n in mig_nodes}
        return (
            (used, configs)
            if used <= configs and {c for c in configs if c.startswith("slm-")} <= used
            else None
        )

    wait_for(configs_match, CONVERGE, "the MIG ConfigMap holds exactly the configs the nodes use")


def test_only_one_replica_is_active_and_a_standby_takes_over(
    cluster: Cluster, operator: Operator, pools: list[str], ns: str, tmp_path: Path
) -> None:
    standby = Operator(
        kubeconfig=cluster.kubeconfig,
        log_dir=tmp_path,
        service_account=operator.service_account,
        cluster=cluster,
    )
    standby.start()
    try:
        wait_for(lambda: "standing by" in standby.logs(), 60, "the second replica stands by")
        pools.append(f"ha-{ns}")
        kubectl_apply(cluster, [pool(pools[0], node="gpu-l4-0", sharing={"mechanisms": ["MPS"]})])
        kubectl_apply(cluster, [dep("router", pools[0], "qwen2.5-0.5b-instruct", 1, "Burstable")], ns)
        wait_ready(cluster, ns, "router")
        assert "created pod" not in standby.logs(), "the standby replica reconciled"
        operator.kill(signal.SIGKILL)  # the leader dies without releasing the Lease
        cluster.kubectl("scale", "-n", ns, "slmdeployment/router", "--replicas=3")
        wait_ready(cluster, ns, "router", timeout=CONVERGE)
        assert "became leader" in standby.logs()
    finally:
        standby.stop()
        if operator.proc is None or operator.proc.poll() is not None:
            operator.start()  # the module's operator, for the tests after this one


def test_disallowing_mig_drains_before_the_layout_changes(
    cluster: Cluster, operator: Operator, pools: list[str], ns: str
) -> None:
    """Editing a pool so that MIG is no longer allowed moves the MIG replicas to MPS: the operator deletes
    them first and relabels the node only once they are gone (the simulated mig-manager, like the real one,
    fails a change while the MIG devices are in use), then turns MPS on and starts the replicas again."""
    node = "gpu-h100-1"
    name = f"repart-{ns}"
    pools.append(name)
    kubectl_apply(cluster, [pool(name, node=node, sharing={"mechanisms": ["MIG", "Exclusive"]})])
    kubectl_apply(cluster, [dep("router", name, "qwen2.5-0.5b-instruct", 2, "Burstable")], ns)
    wait_ready(cluster, ns, "router")
    assert {placement(p)["mechanism"] for p in replica_pods(cluster.core, ns, "router")} == {"MIG"}
    assert cluster.labels(node)[MIG_STATE] == "success"
    rec = cluster.record_label(node, MIG_STATE)
    cluster.kubectl(
        "patch",
        "gpupool",
        name,
        "--type=merge",
        "-p",
        '{"spec":{"sharing":{"mechanisms":["MPS","Exclusive"]}}}',
    )

    def on_mps() -> dict[str, Any] | None:
        obj = get_dep(cluster.api, ns, "router")
        pods = replica_pods(cluster.core, ns, "router")
        done = (
            is_true(obj, "Ready")
            and len(pods) == 2
            and all(p.status.phase == "Running" and placement(p)["mechanism"] == "MPS" for p in pods)
        )
        return obj if done else None

    wait_for(on_mps, 2 * CONVERGE, "router Ready again on MPS shares", interval=0.5)
    states = rec.stop()
    assert "failed" not in states, f"the node was relabelled while MIG devices were in use: {states}"
    assert states[-2:] == ["pending", "success"], states
    # read once on purpose: the operator creates a replica pod only after GFD reports the sharing strategy
    assert cluster.labels(node)["nvidia.com/gpu.sharing-strategy"] == "mps"
    assert cluster.nvidia_resources(node).get("nvidia.com/gpu.shared", 0) > 0
    assert not [k for k, v in cluster.nvidia_resources(node).items() if k.startswith("nvidia.com/mig-") and v]
    assert_pods_where_planned(cluster, ns)
    assert_no_overcommit(cluster)


# ------------------------------------------------------------------------------------------- 7. deletion


def test_deleting_deployment_and_pool_cleans_up(
    cluster: Cluster, operator: Operator, pools: list[str], ns: str
) -> None:
    name = f"del-{ns}"
    pools.append(name)
    before = cluster.labels("gpu-l4-0")
    kubectl_apply(cluster, [pool(name, node="gpu-l4-0", sharing={"mechanisms": ["MPS"]})])
    kubectl_apply(cluster, [dep("tagger", name, "gemma-2-2b-it", 2, "Burstable")], ns)
    wait_ready(cluster, ns, "tagger")
    # read once on purpose: the operator creates a replica pod only after GFD reports the sharing strategy
    assert cluster.labels("gpu-l4-0").get("nvidia.com/gpu.sharing-strategy") == "mps"
    custom(cluster.api).delete_namespaced_custom_object(GROUP, VERSION, ns, "slmdeployments", "tagger")
    wait_for(lambda: replica_pods(cluster.core, ns, "tagger") == [], CONVERGE, "owned pods garbage-collected")
    wait_for(
        lambda: (
            not [s for s in cluster.core.list_namespaced_service(ns).items if s.metadata.name == "tagger"]
        ),
        CONVERGE,
        "owned Service gone",
    )
    custom(cluster.api).delete_cluster_custom_object(GROUP, VERSION, "gpupools", name)

    def restored() -> bool:
        labels = cluster.labels("gpu-l4-0")
        return all(
            labels.get(k) == before.get(k)
            for k in ("nvidia.com/device-plugin.config", "nvidia.com/mig.config")
        ) and ("slm.io/original-labels" not in cluster.annotations("gpu-l4-0"))

    wait_for(restored, CONVERGE, "node labels restored after the pool is deleted")


# ------------------------------------------------------------------------------------------- 8. fine-tuning


def test_finetunejob_runs_on_the_segment(
    cluster: Cluster, operator: Operator, pools: list[str], ns: str
) -> None:
    name = f"ft-{ns}"
    pools.append(name)
    kubectl_apply(
        cluster,
        [pool(name, node="gpu-h100-1", segments=[{"name": "finetune", "purpose": "FineTuning", "gpus": 1}])],
    )
    kubectl_apply(
        cluster,
        [
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "calls"},
                "data": {"calls.jsonl": '{"prompt": "mail a@b.example"}\n'},
            },
            dep("extractor", name, "qwen2.5-3b-instruct", 1, "Guaranteed"),
            {
                "apiVersion": "slm.io/v1alpha1",
                "kind": "FineTuneJob",
                "metadata": {"name": "lora"},
                "spec": {
                    "poolRef": {"name": name},
                    "segment": "finetune",
                    "baseModel": "qwen2.5-3b-instruct",
                    "dataset": {"configMapRef": {"name": "calls"}},
                    "output": {"pvc": {"claimName": "adapters", "path": "extractor/v1"}},
                    "promote": {"slmDeploymentRef": {"name": "extractor"}},
                },
            },
        ],
        ns,
    )
    batch = client.BatchV1Api(cluster.api)
    job = wait_for(lambda: batch.read_namespaced_job("lora-train", ns), CONVERGE, "training Job created")
    terms = job.spec.template.spec.affinity.node_affinity.required_during_scheduling_ignored_during_execution.node_selector_terms
    assert terms[0].match_fields[0].values == ["gpu-h100-1"]
    assert job.spec.template.spec.containers[0].resources.limits == {"nvidia.com/gpu": "1"}
    assert job.spec.template.spec.init_containers[0].args[0] == "sanitize"
    co = custom(cluster.api)

    def status_follows() -> dict[str, Any] | None:
        obj = co.get_namespaced_custom_object(GROUP, VERSION, ns, "finetunejobs", "lora")
        return obj if condition(obj, "Trained") and (obj.get("status") or {}).get("jobName") else None

    obj = wait_for(status_follows, CONVERGE, "FineTuneJob conditions set")
    assert obj["status"]["jobName"] == "lora-train"
    assert {c["type"] for c in obj["status"]["conditions"]} >= {
        "Sanitized",
        "Trained",
        "Evaluated",
        "Promoted",
        "Failed",
    }


# ------------------------------------------------------------------------------------------- NVIDIA as it behaves
def test_mps_works_under_the_documented_gpu_operator_install(
    cluster: Cluster, operator: Operator, pools: list[str], ns: str
) -> None:
    """The simulated device plugin runs with the MIG_STRATEGY env the GPU Operator derives from docs/install.md's
    `mig.strategy` (e2e/conftest.py); the env overrides the config file, and MPS is refused under `mixed`. On a
    MIG-capable node, MPS replicas must start under the documented install."""
    node = "gpu-h100-0"
    name = f"mps-{ns}"
    pools.append(name)
    kubectl_apply(cluster, [pool(name, node=node, sharing={"mechanisms": ["MPS"]})])
    kubectl_apply(cluster, [dep("router", name, "qwen2.5-0.5b-instruct", 2, "Burstable")], ns)
    wait_ready(cluster, ns, "router")
    assert {placement(p)["mechanism"] for p in replica_pods(cluster.core, ns, "router")} == {"MPS"}
    assert cluster.annotations(node)["nvsim.slm.io/device-plugin-status"] == "ok"
    assert cluster.labels(node)["nvidia.com/gpu.sharing-strategy"] == "mps"
    assert_pods_where_planned(cluster, ns)


def test_a_new_mig_config_reaches_mig_manager_before_the_node_is_relabelled(
    cluster: Cluster, operator: Operator, pools: list[str], ns: str
) -> None:
    """mig-manager reads the mig-parted ConfigMap through a mounted volume (the simulator shows it 3 s late) and
    marks a name it cannot find `failed` until the label changes: the operator writes the entry first and
    relabels the node only once the entry is --configmap-sync-seconds old, so the node never reports failed."""
    _mig_pool_runs_without_a_failed_layout(cluster, pools, ns, "gpu-h100-0", f"migsync-{ns}")


def _mig_pool_runs_without_a_failed_layout(
    cluster: Cluster, pools: list[str], ns: str, node: str, name: str
) -> str:
    """A MIG-only pool on ``node`` and a 2-replica deployment on it: the replicas become Ready where planned and
    the node never reports `failed`. Returns when the node's MIG config entry was first written (RFC 3339)."""
    pools.append(name)
    rec = cluster.record_label(node, MIG_STATE)
    kubectl_apply(cluster, [pool(name, node=node, sharing={"mechanisms": ["MIG"]})])
    kubectl_apply(cluster, [dep("router", name, "qwen2.5-0.5b-instruct", 2, "Burstable")], ns)
    wait_ready(cluster, ns, "router")
    states = rec.stop()
    assert "failed" not in states, f"mig-manager did not find the config it was pointed at: {states}"
    config = cluster.labels(node)["nvidia.com/mig.config"]
    cm = cluster.core.read_namespaced_config_map("slm-mig-parted-config", "gpu-operator")
    written: dict[str, str] = json.loads((cm.metadata.annotations or {})["slm.io/config-written"])
    assert config in written
    assert_pods_where_planned(cluster, ns)
    return written[config]


def test_a_refreshed_mig_manager_pod_gets_the_new_config_long_before_the_kubelet_sync(
    cluster: Cluster, operator: Operator, pools: list[str], ns: str
) -> None:
    """With `--configmap-sync-seconds 300` a node would wait five minutes for its new MIG entry. The operator
    annotates the node's mig-manager pod instead (the simulator's stand-in of the GPU Operator's DaemonSet pod:
    its kubelet remounts the ConfigMap) and relabels the node 2 s later: the replicas run while the entry is
    still far younger than the sync, the node never reports `failed`, and the pod carries the refresh time."""
    node = "gpu-h100-0"
    default_args = list(operator.extra_args)
    operator.stop()
    operator.extra_args = [
        *default_args,
        "--configmap-sync-seconds",
        "300",
        "--mig-manager-refresh-seconds",
        "2",
    ]
    operator.start()
    try:
        written = _mig_pool_runs_without_a_failed_layout(cluster, pools, ns, node, f"migrefresh-{ns}")
        (manager,) = cluster.core.list_namespaced_pod(
            "gpu-operator", label_selector="app=nvidia-mig-manager", field_selector=f"spec.nodeName={node}"
        ).items
        refreshed = (manager.metadata.annotations or {})["slm.io/mig-parted-config-refreshed"]
        age = (datetime.now(UTC) - _rfc3339(written)).total_seconds()
        assert age < 300, f"the node was relabelled only after the full sync ({age:.0f} s)"
        assert (_rfc3339(refreshed) - _rfc3339(written)).total_seconds() >= 5, (written, refreshed)
    finally:
        operator.stop()
        operator.extra_args = default_args
        operator.start()


def _rfc3339(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_a_failed_mig_config_is_retried_by_changing_the_label(
    cluster: Cluster, operator: Operator, pools: list[str], ns: str
) -> None:
    """mig-manager refuses a layout change while a pod uses the GPUs and reports `failed`; it looks again only
    when the label changes. Once the GPUs are free, the operator's retry (the same config under an alias name)
    applies the layout and the replicas start."""
    node = "gpu-h100-1"
    busy = cluster.pod(ns, "busy", {"nvidia.com/gpu": "8"}, node=node)
    cluster.wait_pod_running(ns, busy.metadata.name)
    name = f"migretry-{ns}"
    pools.append(name)
    kubectl_apply(cluster, [pool(name, node=node, sharing={"mechanisms": ["MIG"]})])
    kubectl_apply(cluster, [dep("router", name, "qwen2.5-0.5b-instruct", 1, "Burstable")], ns)
    first = wait_for(
        lambda: (lab := cluster.labels(node)).get(MIG_STATE) == "failed" and lab["nvidia.com/mig.config"],
        CONVERGE,
        "mig-manager to refuse the change while the GPUs are in use",
        interval=0.2,
    )
    cluster.core.delete_namespaced_pod("busy", ns, grace_period_seconds=0)
    wait_ready(cluster, ns, "router")
    label = cluster.labels(node)["nvidia.com/mig.config"]
    assert label.startswith(f"{first}-retry") and cluster.labels(node)[MIG_STATE] == "success", label
    assert_pods_where_planned(cluster, ns)


def test_overlapping_pools_say_so_and_never_share_a_node(
    cluster: Cluster, operator: Operator, pools: list[str], ns: str
) -> None:
    """Two pools select gpu-l4-1: the older plans it, both pools say so, the younger's replica has no share
    there and nothing of it runs on the node; once the selectors are disjoint the younger pool is clean."""
    # creationTimestamp has 1 s resolution: two pools created within a second tie, and the name decides
    older, younger = f"l4-a-{ns}", f"l4-b-{ns}"
    pools += [older, younger]
    kubectl_apply(cluster, [pool(older, product="NVIDIA-L4")])
    co = custom(cluster.api)
    wait_for(
        lambda: co.get_cluster_custom_object(GROUP, VERSION, "gpupools", older).get("status"),
        60,
        "older planned",
    )
    kubectl_apply(cluster, [pool(younger, node="gpu-l4-1")])
    kubectl_apply(cluster, [dep("mine", older, "qwen2.5-0.5b-instruct", 2, "Burstable"),
                            dep("theirs", younger, "qwen2.5-0.5b-instruct", 1, "Burstable")], ns)  # fmt: skip
    wait_ready(cluster, ns, "mine")

    def overlap(name: str) -> dict[str, Any] | None:
        c = condition(co.get_cluster_custom_object(GROUP, VERSION, "gpupools", name), "NodeSelectorOverlap")
        return c if c and c["status"] == "True" else None

    old_c = wait_for(lambda: overlap(older), CONVERGE, "the older pool says its nodes overlap")
    new_c = wait_for(lambda: overlap(younger), CONVERGE, "the younger pool says so too")
    assert (
        f"GPUPool '{younger}' also selects" in old_c["message"]
        and "(the older) plans gpu-l4-1" in old_c["message"]
    )
    assert "this pool does not use gpu-l4-1" in new_c["message"], new_c
    young = co.get_cluster_custom_object(GROUP, VERSION, "gpupools", younger)
    assert condition(young, "Degraded")["reason"] == "NodesInAnotherPool"  # type: ignore[index]
    placed = wait_for(
        lambda: (
            (c := condition(get_dep(cluster.api, ns, "theirs"), "Placed")) and c["status"] == "False" and c
        ),
        CONVERGE,
        "the younger pool's replica has no share",
    )
    assert placed["reason"] in ("InsufficientCapacity", "NoShareFits"), placed
    assert replica_pods(cluster.core, ns, "theirs") == []
    assert_no_overcommit(cluster)
    # disjoint selectors: the condition clears on both
    kubectl_apply(cluster, [pool(younger, node="no-such-node")])
    for name in (older, younger):
        wait_for(
            lambda name=name: (c := condition(co.get_cluster_custom_object(GROUP, VERSION, "gpupools", name),
                                              "NodeSelectorOverlap")) and c["status"] == "False",
            CONVERGE, f"{name}: NoOverlap",
        )  # fmt: skip
    assert replica_pods(cluster.core, ns, "mine") and all(
        p.spec.node_name.startswith("gpu-l4-") for p in replica_pods(cluster.core, ns, "mine")
    )
