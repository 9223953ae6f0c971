"""The cluster failing around the operator (issue 15): the control plane restarted mid-reconcile, the API server
throttling the operator (API Priority and Fairness), the NVIDIA node components down for a while. Each test ends with the same checks (``assert_converged_cleanly``): every
deployment Ready, one pod per replica and none orphaned, each where its placement says, no GPU over-committed,
the MIG ConfigMap naming exactly what the nodes use."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException
from prometheus_client.parser import text_string_to_metric_families

from e2e.conftest import KWOK_NODE_LABEL, MIG_STATE, NODES_DIR, Cluster, wait_for
from e2e.operator import (
    GROUP,
    SYSTEM_NS,
    VERSION,
    Operator,
    condition,
    custom,
    get_dep,
    kubectl_apply,
    replica_pods,
)
from e2e.test_operator import (  # noqa: F401 (operator and pools are fixtures)
    CONVERGE,
    assert_converged_cleanly,
    dep,
    operator,
    pool,
    pools,
    wait_ready,
)
from slm_operator.controllers.kube import THROTTLE_RETRIES

pytestmark = pytest.mark.e2e

MODELS = ("qwen2.5-0.5b-instruct", "qwen2.5-1.5b-instruct", "llama-3.2-1b-instruct", "smollm2-1.7b-instruct")
TIERS = ("Guaranteed", "Burstable", "BestEffort")
H100 = "NVIDIA-H100-80GB-HBM3"


def supervise(op: Operator) -> bool:
    """What the operator's Deployment does for it: start it again if it exited (it exits when it cannot renew
    its Lease for the lease duration, as a restarted API server may take). True when it had to."""
    if op.proc is not None and op.proc.poll() is None:
        return False
    op.start()
    return True


#: how long a bound pod may stay Pending before the harness has kwok look at it again
RESYNC_AFTER_SECONDS = 10.0


def resync_bound_pods(cluster: Cluster, ns: str) -> int:
    """What a kubelet's own pod sync does and kwok does not: a pod bound to a node more than
    RESYNC_AFTER_SECONDS ago and still Pending is annotated, so that kwok, which stands in for the kubelets,
    gets an event for it and plays its stage again. kwok drops a pod's status patch that the API server
    refused with anything but a refused connection, a timeout, 429 or 503 (kwok v0.8.0
    pkg/kwok/controllers/utils.go ``shouldRetry``): a 403 from a restarted API server whose authorizer has not
    synced yet, a reset connection. Nothing makes it try that pod again, so a pod bound in that window would
    stay Pending for good. Returns how many bound pods are still Pending."""
    now = time.time()
    pending = 0
    for p in replica_pods(cluster.core, ns):
        scheduled = next((c for c in p.status.conditions or [] if c.type == "PodScheduled"), None)
        if p.status.phase != "Pending" or not p.spec.node_name or scheduled is None:
            continue
        pending += 1
        if now - scheduled.last_transition_time.timestamp() < RESYNC_AFTER_SECONDS:
            continue
        with contextlib.suppress(ApiException):  # gone meanwhile
            cluster.core.patch_namespaced_pod(
                p.metadata.name, ns, {"metadata": {"annotations": {"e2e.slm.io/resync": str(now)}}}
            )
    return pending


def test_apiserver_and_etcd_restarted_mid_reconcile_converge(
    cluster: Cluster,
    operator: Operator,  # noqa: F811
    pools: list[str],  # noqa: F811
    ns: str,
) -> None:
    """100 deployments applied at once; the kube-apiserver is SIGKILLed while the operator creates their pods,
    and etcd after it, each started again after 2 s. The operator's watches and passes fail meanwhile; it
    converges to the plan with nothing duplicated or left over."""
    name = f"cp-{ns}"
    pools.append(name)
    kubectl_apply(cluster, [pool(name, product=H100, sharing={"mechanisms": ["MIG", "MPS", "Exclusive"]})])
    replicas = {f"d{i:03d}": 1 for i in range(100)}
    docs = [dep(d, name, MODELS[i % 4], 1, TIERS[i % 3]) for i, d in enumerate(replicas)]
    kubectl_apply(cluster, docs, ns)

    wait_for(lambda: len(replica_pods(cluster.core, ns)) >= 10, CONVERGE, "the operator creating pods")
    cluster.crash_component("kube-apiserver")
    supervise(operator)
    placed = len(replica_pods(cluster.core, ns))
    assert placed < 100, "every pod was created before the restart: nothing was in the middle any more"
    cluster.crash_component("etcd")
    supervise(operator)

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and len(replica_pods(cluster.core, ns)) < 100:
        supervise(operator)
        resync_bound_pods(cluster, ns)
        time.sleep(1)
    wait_for(lambda: resync_bound_pods(cluster, ns) == 0, CONVERGE, "every bound pod Running", interval=5)
    assert_converged_cleanly(cluster, ns, replicas)
    for d in replicas:  # every deployment's conditions say what happened: placed, nothing unplaced
        obj = get_dep(cluster.api, ns, d)
        placed_c = condition(obj, "Placed")
        assert placed_c and placed_c["status"] == "True", (d, placed_c)
        assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]


# ---- fault 2: the API server throttles the operator ---------------------------------------------------------

# the chart's ServiceAccount the module's operator runs as (test_operator.py)
OPERATOR_SA = "slm-slm-operator"
NEIGHBOUR = "noisy-neighbour"  # another ServiceAccount in the throttled priority level (NoisyNeighbour)
THROTTLED = "slm-e2e-throttled"
# all 80 deployments Ready, each pod where its placement says, this long after the apply (docs/operations.md)
THROTTLED_CONVERGE = 300.0
FLOWCONTROL = "flowcontrol.apiserver.k8s.io/v1"


def throttling(neighbour_ns: str) -> list[dict[str, Any]]:
    """API Priority and Fairness configured to give the operator a small share: a priority level of one nominal
    share (3 seats of the 600 the e2e kube-apiserver has), lending and borrowing none, no queue (a request beyond
    the 3 running is refused with 429 at once), and a FlowSchema sending every request of the operator's ServiceAccount
    there, ahead of the default `service-accounts` one. Its Lease goes to the built-in `leader-election` level
    (a FlowSchema of higher precedence), as docs/operations.md tells a cluster that throttles the operator to do:
    leader election must not starve with the rest, or the leader loses its Lease and restarts. A noisy neighbour
    (:class:`NoisyNeighbour`, another ServiceAccount) shares the level."""
    subject = [{"kind": "ServiceAccount", "serviceAccount": {"name": OPERATOR_SA, "namespace": SYSTEM_NS}}]
    neighbour = {"kind": "ServiceAccount", "serviceAccount": {"name": NEIGHBOUR, "namespace": neighbour_ns}}
    level = {
        "apiVersion": FLOWCONTROL,
        "kind": "PriorityLevelConfiguration",
        "metadata": {"name": THROTTLED},
        "spec": {
            "type": "Limited",
            "limited": {
                "nominalConcurrencyShares": 1,
                "lendablePercent": 0,
                "borrowingLimitPercent": 0,
                "limitResponse": {"type": "Reject"},
            },
        },
    }
    lease = {
        "apiVersion": FLOWCONTROL,
        "kind": "FlowSchema",
        "metadata": {"name": f"{THROTTLED}-lease"},
        "spec": {
            "priorityLevelConfiguration": {"name": "leader-election"},
            "matchingPrecedence": 200,
            "distinguisherMethod": {"type": "ByUser"},
            "rules": [
                {
                    "subjects": subject,
                    "resourceRules": [
                        {"verbs": ["*"], "apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                         "namespaces": [SYSTEM_NS]}
                    ],
                }
            ],
        },
    }  # fmt: skip
    everything = {
        "apiVersion": FLOWCONTROL,
        "kind": "FlowSchema",
        "metadata": {"name": THROTTLED},
        "spec": {
            "priorityLevelConfiguration": {"name": THROTTLED},
            "matchingPrecedence": 201,
            "distinguisherMethod": {"type": "ByUser"},
            "rules": [
                {
                    "subjects": [*subject, neighbour],
                    "resourceRules": [
                        {"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"], "clusterScope": True,
                         "namespaces": ["*"]}
                    ],
                    "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
                }
            ],
        },
    }  # fmt: skip
    return [level, lease, everything]


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples ``name`` whose labels include ``labels`` in a Prometheus text exposition."""
    return sum(
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


@dataclass(frozen=True)
class ApiUse:
    """The operator's counters of its API use (its /metrics)."""

    requests: float  # slm_api_requests_total: every request sent, re-sends included
    throttled: float  # slm_api_errors_total{code="429"}: refusals (each re-sent unless it was the last try)
    passes: float  # planning passes (slm_reconcile_duration_seconds_count{resource="GPUPool"})

    @staticmethod
    def of(op: Operator) -> ApiUse:
        text = (
            urllib.request.urlopen(f"http://127.0.0.1:{op.metrics_port}/metrics", timeout=10).read().decode()
        )
        return ApiUse(
            metric(text, "slm_api_requests_total"),
            metric(text, "slm_api_errors_total", code="429"),
            metric(text, "slm_reconcile_duration_seconds_count", resource="GPUPool"),
        )


class NoisyNeighbour:
    """Another client in the operator's priority level, listing the test namespace's pods as fast as it can from a
    few threads (the answers not even parsed): the level's 3 seats are mostly taken, so the operator's requests
    are refused over and over while it runs, not only at its own peaks."""

    def __init__(self, cluster: Cluster, ns: str, path: Path, threads: int = 4) -> None:
        kubectl_apply(
            cluster,
            [
                {
                    "apiVersion": "v1",
                    "kind": "ServiceAccount",
                    "metadata": {"name": NEIGHBOUR, "namespace": ns},
                },
                {
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "RoleBinding",
                    "metadata": {"name": NEIGHBOUR, "namespace": ns},
                    "roleRef": {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": "ClusterRole",
                        "name": "view",
                    },
                    "subjects": [{"kind": "ServiceAccount", "name": NEIGHBOUR, "namespace": ns}],
                },
            ],
        )
        self.core = client.CoreV1Api(
            config.new_client_from_config(config_file=str(cluster.token_kubeconfig(ns, NEIGHBOUR, path)))
        )
        self.ns = ns
        self.sent = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        for t in self._threads:
            t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sent += 1
            try:
                self.core.list_namespaced_pod(self.ns, _preload_content=False).release_conn()
            except ApiException:  # refused (429) as well: it tries again at once, as a noisy client does
                time.sleep(0.01)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)


def rejected(cluster: Cluster) -> float:
    """Requests the API server refused in the throttled priority level (its own count, /metrics)."""
    text = cluster.kubectl("get", "--raw", "/metrics")
    return metric(text, "apiserver_flowcontrol_rejected_requests_total", priority_level=THROTTLED)


def test_a_throttled_operator_backs_off_keeps_its_watches_and_converges(
    cluster: Cluster,
    operator: Operator,  # noqa: F811
    pools: list[str],  # noqa: F811
    ns: str,
    tmp_path: Path,
) -> None:
    """API Priority and Fairness gives the operator's ServiceAccount a share of 3 seats and no queue, then 80
    deployments are applied at once. The API server refuses part of the operator's requests with 429; the
    operator waits and sends them again (Retry-After, exponential back-off), keeps its leadership and its watches
    (a deployment scaled while it is throttled gets its new replica, with no restart) and converges within
    THROTTLED_CONVERGE. Requests per pass stay bounded: each pass sends each of its requests once, plus one
    re-send per refusal, at most THROTTLE_RETRIES per request."""
    name = f"apf-{ns}"
    pools.append(name)
    kubectl_apply(cluster, [pool(name, product=H100, sharing={"mechanisms": ["MIG", "MPS", "Exclusive"]})])
    wait_for(lambda: _planned(cluster, name), CONVERGE, "the operator planned the empty pool")
    replicas = {f"d{i:03d}": 1 for i in range(80)}
    docs = [dep(d, name, MODELS[i % 4], 1, TIERS[i % 3]) for i, d in enumerate(replicas)]
    starts, proc = operator.starts, operator.proc
    kubectl_apply(cluster, throttling(ns))
    neighbour = None
    try:
        wait_for(lambda: _flowschema_active(cluster), 30, "the FlowSchema in force")
        neighbour = NoisyNeighbour(cluster, ns, tmp_path / "neighbour-kubeconfig")
        before, rejected_before = ApiUse.of(operator), rejected(cluster)
        started = time.monotonic()
        kubectl_apply(cluster, docs, ns)
        wait_for(lambda: ApiUse.of(operator).throttled > before.throttled, CONVERGE, "the operator throttled")
        # a change made while it is throttled (the neighbour keeps the level full until the end) is still seen
        # (its watches hold) and acted on
        cluster.kubectl("scale", "-n", ns, "slmdeployment/d000", "--replicas=2")
        replicas["d000"] = 2
        wait_for(lambda: len(replica_pods(cluster.core, ns)) >= 81, THROTTLED_CONVERGE, "every replica's pod")
        created = time.monotonic() - started
        assert_converged_cleanly(
            cluster, ns, replicas, timeout=max(1.0, THROTTLED_CONVERGE - (time.monotonic() - started))
        )
        took = time.monotonic() - started
        after, rejected_after = ApiUse.of(operator), rejected(cluster)
    finally:
        if neighbour is not None:
            neighbour.stop()
        for obj in reversed(throttling(ns)):
            cluster.kubectl("delete", "--ignore-not-found", f"{obj['kind'].lower()}s.flowcontrol.apiserver.k8s.io",
                            obj["metadata"]["name"])  # fmt: skip
    assert operator.starts == starts and operator.proc is proc and proc is not None and proc.poll() is None, (
        "the operator restarted while throttled"
    )
    refused = rejected_after - rejected_before
    throttled = after.throttled - before.throttled
    requests, passes = after.requests - before.requests, after.passes - before.passes
    first_tries = requests - throttled  # each refusal but a request's last is re-sent once
    print(
        f"throttled: every pod created in {created:.0f}s, converged in {took:.0f}s; the API server refused "
        f"{refused:.0f} requests of the level, {throttled:.0f} of the operator's; {requests:.0f} requests in "
        f"{passes:.0f} passes; the neighbour sent {neighbour.sent if neighbour else 0}"
    )
    assert refused >= throttled > 0
    assert requests <= first_tries * (THROTTLE_RETRIES + 1)
    # a pass reads its world (about 10 requests) and writes each object at most once: per deployment a pod per
    # replica, its Service, its status and an Event; 2 ConfigMaps, 2 nodes, the pool's status
    bound = 20 + 4 * (len(replicas) + 1)
    assert first_tries / passes <= bound, (first_tries, passes)


def _planned(cluster: Cluster, name: str) -> bool:
    """The operator wrote the pool's status (its daemon runs)."""
    obj = custom(cluster.api).get_cluster_custom_object(GROUP, VERSION, "gpupools", name)
    return bool(obj.get("status"))


def _flowschema_active(cluster: Cluster) -> bool:
    out = cluster.kubectl(
        "get", "flowschema", THROTTLED, "-o", "jsonpath={.status.conditions[?(@.type=='Dangling')].status}"
    )
    return out.strip() == "False"


def test_gpu_operator_down_then_back_creates_no_pod_on_an_unconfigured_share(
    cluster: Cluster,
    operator: Operator,  # noqa: F811
    pools: list[str],  # noqa: F811
    ns: str,
) -> None:
    """mig-manager, the device plugin and GFD (the simulator) are down while a pool asks for a new MIG layout:
    the node's config stays where it was, the old `mig.config.state=success` is no answer for the new config,
    and the operator waits without creating a pod, saying why. Once they are back, everything converges."""
    node = "gpu-h100-0"
    cluster.stop_simulator()
    try:
        name = f"down-{ns}"
        pools.append(name)
        kubectl_apply(cluster, [pool(name, node=node, sharing={"mechanisms": ["MIG"]})])
        replicas = {"extract": 2, "classify": 1}
        kubectl_apply(
            cluster,
            [
                dep("extract", name, MODELS[0], 2, "Guaranteed"),
                dep("classify", name, MODELS[2], 1, "Burstable"),
            ],
            ns,
        )
        config = wait_for(
            lambda: (c := cluster.labels(node).get("nvidia.com/mig.config", "")).startswith("slm-") and c,
            CONVERGE,
            "the operator relabelled the node",
        )
        assert MIG_STATE not in cluster.labels(node), "the previous config's answer was left on the node"

        def waiting() -> str | None:
            c = condition(get_dep(cluster.api, ns, "extract"), "Progressing")
            return c["message"] if c and "not applied yet" in c["message"] else None

        message = wait_for(waiting, CONVERGE, "the deployment says it waits for the MIG config")
        assert config in message
        time.sleep(30)  # the outage goes on: passes keep coming (resync), still nothing is created
        assert replica_pods(cluster.core, ns) == []
        assert cluster.labels(node)["nvidia.com/mig.config"] == config, "no relabel loop while it is down"
    finally:
        cluster.start_simulator()
    assert_converged_cleanly(cluster, ns, replicas, mig_nodes=(node,))
    assert cluster.labels(node)[MIG_STATE] == "success"


def test_a_paused_leader_writes_nothing_once_the_standby_leads(
    cluster: Cluster,
    operator: Operator,  # noqa: F811
    pools: list[str],  # noqa: F811
    ns: str,
    tmp_path: Path,
) -> None:
    """Two replicas. The leader is paused (SIGSTOP: a frozen VM, a long GC), not killed, in the middle of
    creating 40 replicas' pods; meanwhile the deployments are deleted and the standby, once the Lease expired,
    leads and cleans up. Unfenced, the old leader would resume its loop and create pods for deployments that no
    longer exist (37 of them, measured). Past its renew deadline it refuses its next write and exits. A check in
    the client cannot be atomic with the send, so a create that passed it just before the pause would be sent on
    the resume (a clean-clone CI run saw one): the standby, taking the expired Lease over, deletes the old
    leader's Pod, and the API server refuses the token bound to it. No pod appears after the resume."""
    old = operator.proc
    assert old is not None
    log = operator.log_path
    wait_for(lambda: "became leader" in log.read_text(errors="replace"), 60, "the first replica leads")
    standby = Operator(
        kubeconfig=cluster.kubeconfig,
        log_dir=tmp_path,
        service_account=operator.service_account,
        cluster=cluster,
    )
    standby.start()
    try:
        wait_for(lambda: "standing by" in standby.logs(), 60, "the second replica stands by")
        name = f"fence-{ns}"
        pools.append(name)
        kubectl_apply(
            cluster, [pool(name, product="NVIDIA-L4", sharing={"mechanisms": ["MPS", "TimeSlicing"]})]
        )
        kubectl_apply(cluster, [dep(f"r{i:02d}", name, MODELS[0], 1, "BestEffort") for i in range(40)], ns)
        wait_for(
            lambda: log.read_text(errors="replace").count(f"created pod {ns}/") >= 2,
            CONVERGE,
            "the leader creating the pods",
            interval=0.05,
        )
        old.send_signal(signal.SIGSTOP)
        cluster.kubectl("delete", "-n", ns, "slmdeployments", "--all", "--wait=false")
        wait_for(lambda: "became leader" in standby.logs(), CONVERGE, "the standby takes the Lease")
        assert f"fenced out the previous leader {operator.pod_name}" in standby.logs()
        with pytest.raises(ApiException) as gone:  # its token is bound to it: refused from now on
            cluster.core.read_namespaced_pod(operator.pod_name, SYSTEM_NS)
        assert gone.value.status == 404
        kubeconfig = str(operator.log_dir / f"{operator.pod_name}.kubeconfig")
        with pytest.raises(ApiException) as refused:
            client.CoreV1Api(config.new_client_from_config(config_file=kubeconfig)).list_namespaced_pod(ns)
        assert refused.value.status == 401, refused.value
        wait_for(lambda: not replica_pods(cluster.core, ns), CONVERGE, "the new leader removed the pods")
        resumed_at = log.stat().st_size
        seen = PodWatch(cluster, ns)
        old.send_signal(signal.SIGCONT)
        assert old.wait(60) == 1, "the old leader went on running"
        time.sleep(5)  # a write the old leader sent would have landed by now
        assert seen.stop() == [], "the old leader created pods after it resumed"
        after_resume = log.read_bytes()[resumed_at:].decode(errors="replace")
        # ("created pod" may still follow the resume: a create sent before the pause, its answer read after)
        assert "leadership lost" in after_resume, after_resume[-3000:]
    finally:
        with contextlib.suppress(ProcessLookupError):
            old.send_signal(signal.SIGCONT)
        standby.stop()
        supervise(operator)  # the module's operator, for the tests after this one


class PodWatch:
    """Names of the pods created in a namespace from now on (a watch in a thread, started before the resume).
    A watch that broke before :meth:`stop` fails the test (it could have missed a pod)."""

    def __init__(self, cluster: Cluster, ns: str) -> None:
        self.added: list[str] = []
        self.error: BaseException | None = None
        self._stopped = threading.Event()
        self._w = watch.Watch()
        rv = cluster.core.list_namespaced_pod(ns).metadata.resource_version
        self._thread = threading.Thread(
            target=self._run, args=(cluster, ns, rv), name="pod-watch", daemon=True
        )
        self._thread.start()

    def _run(self, cluster: Cluster, ns: str, rv: str) -> None:
        try:
            for ev in self._w.stream(
                cluster.core.list_namespaced_pod, ns, resource_version=rv, timeout_seconds=600
            ):
                if ev["type"] == "ADDED":
                    self.added.append(ev["object"].metadata.name)
        except Exception as exc:  # the cluster going away after stop() is no finding
            if not self._stopped.is_set():
                self.error = exc

    def stop(self) -> list[str]:
        self._stopped.set()
        self._w.stop()
        assert self.error is None, f"the pod watch broke: {self.error!r}"
        return self.added


def test_a_node_that_goes_notready_then_is_deleted_has_its_replicas_planned_elsewhere(
    cluster: Cluster,
    operator: Operator,  # noqa: F811
    pools: list[str],  # noqa: F811
    ns: str,
) -> None:
    """A GPU node loses its kubelet: kwok stops acting as it (the node leaves kwok's label selector, so its Lease
    is no longer renewed and its pods are left as they are), and the real node lifecycle controller marks it
    NotReady after `--node-monitor-grace-period` (40 s here). The deployments with a replica there say so
    (`Degraded` `NodeNotReady`) while the operator waits `--node-lost-seconds`; then their replicas are planned
    on the other node and start there, and nothing new is placed on the lost node. The node is then deleted:
    the old pods (stuck Terminating without a kubelet) are garbage-collected and nothing is left over."""
    lost_after = 15
    default_args = list(operator.extra_args)
    operator.stop()
    operator.extra_args = [*default_args, "--node-lost-seconds", str(lost_after)]
    operator.start()
    victim = ""
    try:
        name = f"lost-{ns}"
        pools.append(name)
        kubectl_apply(
            cluster, [pool(name, product="NVIDIA-L4", sharing={"mechanisms": ["MPS", "TimeSlicing"]})]
        )
        replicas = {f"d{i}": 2 for i in range(4)}
        kubectl_apply(
            cluster,
            [dep(d, name, MODELS[i % 2], n, TIERS[1]) for i, (d, n) in enumerate(replicas.items())],
            ns,
        )
        for d in replicas:
            wait_ready(cluster, ns, d)
        by_node: dict[str, list[str]] = {}
        for p in replica_pods(cluster.core, ns):
            by_node.setdefault(p.spec.node_name, []).append(p.metadata.labels["slm.io/deployment"])
        victim = max(by_node, key=lambda n: len(by_node[n]))
        hit = sorted(set(by_node[victim]))
        old_pods = {p.metadata.name for p in replica_pods(cluster.core, ns) if p.spec.node_name == victim}

        cluster.kubectl("label", "node", victim, f"{KWOK_NODE_LABEL.split('=')[0]}-")  # its kubelet is gone
        wait_for(
            lambda: not node_ready(cluster, victim), 120, f"{victim} NotReady (node lifecycle controller)"
        )
        not_ready_at = time.monotonic()

        def says_not_ready() -> str | None:
            c = condition(get_dep(cluster.api, ns, hit[0]), "Degraded")
            return c["message"] if c and c["status"] == "True" and c["reason"] == "NodeNotReady" else None

        message = wait_for(says_not_ready, lost_after, f"{hit[0]} Degraded NodeNotReady while it waits")
        assert victim in message and "NotReady" in message, message

        wait_for(
            lambda: all(p.spec.node_name != victim for p in replica_pods(cluster.core, ns)),
            lost_after + CONVERGE,
            f"the replicas on {victim} given up (their pods deleted) after --node-lost-seconds",
        )
        for d in replicas:  # the replicas are planned on the other node and start there
            wait_ready(cluster, ns, d)
        replanned = time.monotonic() - not_ready_at
        assert all(p.spec.node_name != victim for p in replica_pods(cluster.core, ns)), (
            "placed on the lost node"
        )
        for d in hit:  # Degraded cleared once its new pod is ready
            c = condition(get_dep(cluster.api, ns, d), "Degraded")
            assert c and c["status"] == "False", (d, c)
        stuck = {
            p.metadata.name
            for p in cluster.core.list_namespaced_pod(ns, field_selector=f"spec.nodeName={victim}").items
        }
        assert stuck == old_pods, "the old pods are deleted but wait for the node (no kubelet confirms it)"

        # a scale-up while the node is still there, NotReady, places nothing on it
        cluster.kubectl("scale", "-n", ns, f"slmdeployment/{hit[0]}", "--replicas=3")
        replicas[hit[0]] = 3
        wait_ready(cluster, ns, hit[0])
        assert all(p.spec.node_name != victim for p in replica_pods(cluster.core, ns, hit[0]))

        cluster.kubectl("delete", "node", victim, "--wait=false")

        def left_over() -> bool:  # the pod garbage collector removes pods bound to a node that is gone
            return not cluster.core.list_namespaced_pod(ns, field_selector=f"spec.nodeName={victim}").items

        wait_for(left_over, 180, f"the pods of the deleted node {victim} garbage-collected", interval=1)
        assert_converged_cleanly(cluster, ns, replicas)
        print(f"replicas on {victim} re-planned and Running {replanned:.0f} s after it went NotReady")
    finally:
        if victim:
            restore_node(cluster, victim)
        operator.stop()
        operator.extra_args = default_args
        operator.start()


def node_ready(cluster: Cluster, name: str) -> bool:
    conds = cluster.node(name).status.conditions or []
    return any(c.type == "Ready" and c.status == "True" for c in conds)


def restore_node(cluster: Cluster, name: str) -> None:
    """The node as examples/nodes/ defines it, managed by kwok again (re-created if the test deleted it)."""
    try:
        cluster.node(name)
    except ApiException as exc:
        if exc.status != 404:
            raise
        docs = [d for f in sorted(NODES_DIR.glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]
        kubectl_apply(cluster, [d for d in docs if d["metadata"]["name"] == name])
    key, value = KWOK_NODE_LABEL.split("=")
    cluster.set_labels(name, {key: value})
    wait_for(lambda: node_ready(cluster, name), 60, f"{name} Ready again")
