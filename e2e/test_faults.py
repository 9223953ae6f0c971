"""The cluster failing around the operator (issue 15): the control plane restarted mid-reconcile, the NVIDIA
node components down for a while. Each test ends with the same checks (``assert_converged_cleanly``): every
deployment Ready, one pod per replica and none orphaned, each where its placement says, no GPU over-committed,
the MIG ConfigMap naming exactly what the nodes use."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from pathlib import Path

import pytest
from kubernetes import watch

from e2e.conftest import MIG_STATE, Cluster, wait_for
from e2e.operator import Operator, condition, get_dep, kubectl_apply, replica_pods
from e2e.test_operator import (  # noqa: F401 (operator and pools are fixtures)
    CONVERGE,
    assert_converged_cleanly,
    dep,
    operator,
    pool,
    pools,
    wait_ready,
)

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
        time.sleep(1)
    assert_converged_cleanly(cluster, ns, replicas)
    for d in replicas:  # every deployment's conditions say what happened: placed, nothing unplaced
        obj = get_dep(cluster.api, ns, d)
        placed_c = condition(obj, "Placed")
        assert placed_c and placed_c["status"] == "True", (d, placed_c)
        assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]


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
    longer exist. Past its renew deadline it refuses its first write and exits: no pod appears after it resumes."""
    old = operator.proc
    assert old is not None
    log = operator.log_path
    wait_for(lambda: "became leader" in log.read_text(errors="replace"), 60, "the first replica leads")
    standby = Operator(
        kubeconfig=cluster.kubeconfig, log_dir=tmp_path, kubeconfig_override=operator.kubeconfig_override
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
