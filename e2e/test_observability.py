"""A real Prometheus (built from the Go module proxy: e2e/cluster/build-prometheus.sh) scrapes the operator and
the node agent, loads the shipped alert rules (charts/slm-operator/rules/) and evaluates every Grafana dashboard
query, in a scenario that makes the operator's alerts true: a deployment no GPU can hold (unplaced replicas),
and a MIG layout mig-manager refuses on every try (a node whose config stays pending, then a failed MIG config).

What is asserted through Prometheus's HTTP API, as a user's Prometheus would see it: every target is up; every
rule is loaded and evaluates without error (``/api/v1/rules`` health ``ok``); the unplaced-replicas, pending-
config and failed-MIG alerts become active (``ALERTS``); every dashboard query parses and evaluates, and returns
data whenever every series it selects exists (and always for the operator's pool panels)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from e2e.conftest import MIG_STATE, Cluster, wait_for
from e2e.operator import Operator, free_port, kubectl_apply
from e2e.prometheus import RULES, Prometheus, binaries, check_dashboard, start, wait_rules_healthy
from e2e.test_operator import (  # noqa: F401 (operator and pools are fixtures)
    dep,
    operator,
    pool,
    pools,
)

pytestmark = [pytest.mark.e2e, pytest.mark.observability]
REPO = Path(__file__).resolve().parents[1]
AGENT_NODE = "gpu-h100-0"  # the agent's fake fleet is published on this node (annotation removed afterwards)
INVENTORY = "slm.io/gpu-inventory"
CONVERGE = 180.0
#: panels whose series the operator always exports for a planned pool: they must show data
OPERATOR_PANELS = {
    "Pool utilisation",
    "GPUs per mode",
    "Stranded memory",
    "Unplaced replicas per tier",
    "Replicas desired and placed",
    "Planning and reconcile latency (p95)",
}


def _agent(cluster: Cluster, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "SLM_AGENT_FAKE_FLEET": "h100-mig",  # test only: a fake fleet instead of NVML
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "operator"), os.environ.get("PYTHONPATH")])),
    }
    cmd = [sys.executable, "-m", "slm_operator", "agent", "--kubeconfig", cluster.kubeconfig,
           "--node-name", AGENT_NODE, "--listen", f"127.0.0.1:{port}", "--interval-seconds", "1"]  # fmt: skip
    with log.open("w") as out:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)


def _remove_inventory(cluster: Cluster) -> None:
    with contextlib.suppress(client.exceptions.ApiException):
        cluster.core.patch_node(AGENT_NODE, {"metadata": {"annotations": {INVENTORY: None}}})


@pytest.fixture(scope="module")
def prometheus(
    cluster: Cluster,
    operator: Operator,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[Prometheus]:
    """Prometheus on 127.0.0.1 with static scrape configs for the operator and a node agent (fake fleet), the
    shipped rules loaded, scraping and evaluating every second."""
    work = tmp_path_factory.mktemp("prometheus")
    agent_port = free_port()
    agent = _agent(cluster, agent_port, work / "agent.log")
    try:
        prom = start(
            work, {"operator": f"127.0.0.1:{operator.metrics_port}", "agent": f"127.0.0.1:{agent_port}"}
        )
    except BaseException:
        agent.kill()
        raise
    try:
        yield prom
    finally:
        prom.stop()
        if request.session.testsfailed:
            print(prom.log.read_text(errors="replace")[-10000:])
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(30)
        except subprocess.TimeoutExpired:
            agent.kill()
        _remove_inventory(cluster)


def test_prometheus_scrapes_the_operator_and_the_agent(prometheus: Prometheus) -> None:
    def all_up() -> list[dict[str, Any]] | None:
        targets: list[dict[str, Any]] = prometheus.api("targets")["activeTargets"]
        return targets if len(targets) == 2 and all(t["health"] == "up" for t in targets) else None

    targets = wait_for(all_up, 60, "every scrape target up", interval=0.5)
    assert {t["labels"]["job"] for t in targets} == {"operator", "agent"}
    assert prometheus.query(f'slm_gpu_info{{node="{AGENT_NODE}"}}'), "the agent's GPUs"
    assert prometheus.query("slm_api_requests_total"), "the operator's own counters"


def test_promtool_checks_and_unit_tests_the_shipped_rules() -> None:
    """`promtool check rules` on the shipped file, and `promtool test rules` on e2e/rules_test.yaml: each alert
    quiet before its `for:` and where it must not fire, then firing with the expected labels and text."""
    promtool = str(binaries() / "promtool")
    for args in (["check", "rules", str(RULES)], ["test", "rules", str(REPO / "e2e" / "rules_test.yaml")]):
        r = subprocess.run([promtool, *args], capture_output=True, text=True)
        assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr


def test_every_shipped_rule_is_loaded_and_healthy(prometheus: Prometheus) -> None:
    assert len(wait_rules_healthy(prometheus)) >= 5


def test_operator_alerts_fire_and_dashboard_queries_show_data(
    cluster: Cluster,
    prometheus: Prometheus,
    pools: list[str],  # noqa: F811
    ns: str,
) -> None:
    """A model no GPU of its pool can hold stays unplaced; a MIG layout mig-manager refuses while a pod holds
    the GPUs keeps the node's config pending and, after the operator's last retry, rolled back. Then every
    dashboard query, with these pools planned."""
    big, mig = f"big-{ns}", f"migfail-{ns}"
    pools += [big, mig]
    kubectl_apply(cluster, [pool(big, node="gpu-l4-0")])
    model = {"maxContextTokens": 131072, "maxConcurrentSequences": 16}
    kubectl_apply(cluster, [dep("huge", big, "llama-3.1-8b-instruct", 1, "Burstable", model=model)], ns)
    node = "gpu-h100-1"
    busy = cluster.pod(ns, "busy", {"nvidia.com/gpu": "8"}, node=node)
    cluster.wait_pod_running(ns, busy.metadata.name)
    kubectl_apply(cluster, [pool(mig, node=node, sharing={"mechanisms": ["MIG"]})])
    kubectl_apply(cluster, [dep("router", mig, "qwen2.5-0.5b-instruct", 1, "Burstable")], ns)

    active = prometheus.active
    unplaced = wait_for(lambda: active("SLMReplicasUnplaced", pool=big), CONVERGE, "unplaced replicas alert")
    assert unplaced[0]["metric"]["deployment"] == "huge" and unplaced[0]["metric"]["namespace"] == ns
    wait_for(lambda: active("SLMNodeConfigStuckPending", node=node), CONVERGE, "pending config alert")
    wait_for(lambda: cluster.labels(node).get(MIG_STATE) == "failed", CONVERGE, "mig-manager refuses")
    # after the last retry the operator rolls the node back to its last good layout (docs/operations.md)
    wait_for(lambda: active("SLMMigLayoutRolledBack", pool=mig), CONVERGE, "rolled-back MIG layout alert")
    assert not active("SLMMigLayoutRolledBack", pool=big), "only the pool whose layout failed"
    assert prometheus.query(f'slm_node_config_pending{{pool="{big}"}} == 0'), "the L4 node is configured"
    check_dashboard(prometheus, OPERATOR_PANELS)  # while both pools exist
