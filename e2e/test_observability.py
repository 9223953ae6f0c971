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
import json
import os
import re
import signal
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from e2e.conftest import MIG_STATE, Cluster, wait_for
from e2e.operator import Operator, free_port, kubectl_apply
from e2e.test_operator import (  # noqa: F401 (operator and pools are fixtures)
    dep,
    operator,
    pool,
    pools,
)

pytestmark = [pytest.mark.e2e, pytest.mark.observability]
REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "e2e" / "cluster"
CHART = REPO / "charts" / "slm-operator"
RULES = CHART / "rules" / "slm-operator.rules.yaml"
DASHBOARD = CHART / "dashboards" / "slm-operator.json"
AGENT_NODE = "gpu-h100-0"  # the agent's fake fleet is published on this node (annotation removed afterwards)
INVENTORY = "slm.io/gpu-inventory"
CONVERGE = 180.0
#: Grafana's variables as "All" (the dashboard's allValue) and its rate interval for a 1 s scrape interval
GRAFANA_VARS = {"$__rate_interval": "1m", "$pool": ".*", "$node": ".*", "$route": ".*"}
#: panels whose series the operator always exports for a planned pool: they must show data
OPERATOR_PANELS = {
    "Pool utilisation",
    "GPUs per mode",
    "Stranded memory",
    "Unplaced replicas per tier",
    "Replicas desired and placed",
    "Planning and reconcile latency (p95)",
}
#: a vector selector of one of the project's metrics, with its {matchers} (quoted values may hold braces)
SELECTOR = re.compile(r'\bslm_[a-zA-Z0-9_:]*(\{(?:[^}"]|"[^"]*")*\})?')


@dataclass
class Prometheus:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as r:
            body = json.loads(r.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Evaluate ``expr`` now; an expression that does not parse or evaluate fails the test (HTTP 400/422)."""
        try:
            data = self.api("query", query=expr)
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"{expr!r}: {exc.code} {exc.read().decode()}") from exc
        result: list[dict[str, Any]] = data["result"]
        return result


def _build() -> Path:
    subprocess.run([str(SCRIPTS / "build-prometheus.sh")], check=True)
    out = subprocess.run([str(SCRIPTS / "prometheus-dir.sh")], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip())


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
    bin_dir = _build()
    work = tmp_path_factory.mktemp("prometheus")
    agent_port, port = free_port(), free_port()
    agent = _agent(cluster, agent_port, work / "agent.log")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {"job_name": "operator", "static_configs": [{"targets": [f"127.0.0.1:{operator.metrics_port}"]}]},
            {"job_name": "agent", "static_configs": [{"targets": [f"127.0.0.1:{agent_port}"]}]},
        ],
    }
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))
    check = subprocess.run(
        [str(bin_dir / "promtool"), "check", "config", str(work / "prometheus.yml")],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    log = work / "prometheus.log"
    cmd = [str(bin_dir / "prometheus"), f"--config.file={work / 'prometheus.yml'}",
           f"--storage.tsdb.path={work / 'data'}", f"--web.listen-address=127.0.0.1:{port}"]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=work, stdout=out, stderr=subprocess.STDOUT)
    prom = Prometheus(f"http://127.0.0.1:{port}", proc, log)

    def ready() -> bool:
        assert proc.poll() is None, log.read_text()[-5000:]
        try:
            return bool(urllib.request.urlopen(prom.url + "/-/ready", timeout=2).status == 200)
        except OSError:
            return False

    try:
        wait_for(ready, 60, "Prometheus /-/ready")
        yield prom
    finally:
        if request.session.testsfailed:
            print(log.read_text(errors="replace")[-10000:])
        for p in (proc, agent):
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        _remove_inventory(cluster)


def test_prometheus_scrapes_the_operator_and_the_agent(prometheus: Prometheus) -> None:
    def all_up() -> list[dict[str, Any]] | None:
        targets: list[dict[str, Any]] = prometheus.api("targets")["activeTargets"]
        return targets if len(targets) == 2 and all(t["health"] == "up" for t in targets) else None

    targets = wait_for(all_up, 60, "every scrape target up", interval=0.5)
    assert {t["labels"]["job"] for t in targets} == {"operator", "agent"}
    assert prometheus.query(f'slm_gpu_info{{node="{AGENT_NODE}"}}'), "the agent's GPUs"
    assert prometheus.query("slm_api_requests_total"), "the operator's own counters"


def _rules(prometheus: Prometheus) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for g in prometheus.api("rules")["groups"] for r in g["rules"]}


def test_every_shipped_rule_is_loaded_and_healthy(prometheus: Prometheus) -> None:
    shipped = {r["alert"]: r["expr"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    assert len(shipped) >= 5

    def evaluated() -> dict[str, dict[str, Any]] | None:
        rules = _rules(prometheus)
        return (
            rules
            if rules.keys() >= shipped.keys() and all(r["health"] != "unknown" for r in rules.values())
            else None
        )

    rules = wait_for(evaluated, 60, "every rule evaluated once", interval=0.5)
    assert rules.keys() == shipped.keys()
    for name, rule in rules.items():
        assert rule["health"] == "ok", (name, rule.get("lastError"))
        assert rule["type"] == "alerting"


def test_operator_alerts_fire_and_dashboard_queries_show_data(
    cluster: Cluster,
    prometheus: Prometheus,
    pools: list[str],  # noqa: F811
    ns: str,
) -> None:
    """A model no GPU of its pool can hold stays unplaced; a MIG layout mig-manager refuses while a pod holds
    the GPUs keeps the node's config pending and, after the operator's last retry, failed. Then every
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

    def active(alert: str, **labels: str) -> list[dict[str, Any]] | None:
        matchers = "".join(f',{k}="{v}"' for k, v in labels.items())
        return prometheus.query(f'ALERTS{{alertname="{alert}"{matchers}}}') or None

    unplaced = wait_for(lambda: active("SLMReplicasUnplaced", pool=big), CONVERGE, "unplaced replicas alert")
    assert unplaced[0]["metric"]["deployment"] == "huge" and unplaced[0]["metric"]["namespace"] == ns
    wait_for(lambda: active("SLMNodeConfigStuckPending", node=node), CONVERGE, "pending config alert")
    wait_for(lambda: cluster.labels(node).get(MIG_STATE) == "failed", CONVERGE, "mig-manager refuses")
    failed = wait_for(lambda: active("SLMMigConfigFailed", node=node), CONVERGE, "failed MIG config alert")
    assert failed[0]["metric"]["pool"] == mig
    assert not active("SLMMigConfigFailed", pool=big), "only the node whose layout failed"
    assert prometheus.query(f'slm_node_config_pending{{pool="{big}"}} == 0'), "the L4 node is configured"
    _check_dashboard(prometheus)  # while both pools exist


def _expr(expr: str) -> str:
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    return expr


def _selectors(expr: str) -> list[str]:
    """The vector selectors of a PromQL expression: each slm_ metric name with its {matchers}, if any."""
    return [
        m.group(0) for m in SELECTOR.finditer(re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr))
    ]


def _check_dashboard(prometheus: Prometheus) -> None:
    """Every panel query (Grafana's variables as "All") parses and evaluates; one whose every selected series
    exists returns data, so a panel is empty only when its metrics are; the operator's pool panels have data."""
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [(p["title"], _expr(t["expr"])) for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(panels) > 40 and {title for title, _ in panels} >= OPERATOR_PANELS
    wait_for(  # rates need two samples in their window
        lambda: prometheus.query("rate(slm_reconcile_duration_seconds_count[1m]) > 0") or None, 60, "a rate"
    )
    empty_with_data = []
    for title, expr in panels:
        result = prometheus.query(expr)
        selectors = _selectors(expr)
        assert selectors, (title, expr)
        # every selected series has two samples in the last minute (what a rate needs), yet the panel is empty
        if all(prometheus.query(f"count_over_time({s}[1m]) >= 2") for s in selectors) and not result:
            empty_with_data.append((title, expr))
        if title in OPERATOR_PANELS:
            assert result, (title, expr)
    assert not empty_with_data, empty_with_data
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            m = re.fullmatch(r"label_values\((\w+), (\w+)\)", var["definition"])
            assert m, var["definition"]
            metric, label = m.groups()
            values = prometheus.api(f"label/{label}/values", **{"match[]": metric})
            assert isinstance(values, list)
            if metric.startswith(("slm_pool", "slm_gpu")):
                assert values, f"variable {var['name']} lists the {label}s"
