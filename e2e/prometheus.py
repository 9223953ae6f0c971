"""A real Prometheus for the e2e tests (issue 15, "Observability, checked for real"): built from the Go module
proxy (e2e/cluster/build-prometheus.sh, cached), started on 127.0.0.1 with static scrape targets and the shipped
alert rules (charts/slm-operator/rules/), scraping and evaluating every second; read through its HTTP API."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from e2e.conftest import wait_for
from e2e.operator import free_port

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "e2e" / "cluster"
RULES = REPO / "charts" / "slm-operator" / "rules" / "slm-operator.rules.yaml"
DASHBOARD = REPO / "charts" / "slm-operator" / "dashboards" / "slm-operator.json"
#: Grafana's variables as "All" (the dashboard's allValue) and its rate interval for a 1 s scrape interval
GRAFANA_VARS = {"$__rate_interval": "1m", "$pool": ".*", "$node": ".*", "$route": ".*"}
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

    def active(self, alert: str, **labels: str) -> list[dict[str, Any]] | None:
        """The alert's pending or firing instances with these labels (``ALERTS``), or None."""
        matchers = "".join(f',{k}="{v}"' for k, v in labels.items())
        return self.query(f'ALERTS{{alertname="{alert}"{matchers}}}') or None

    def rules(self) -> dict[str, dict[str, Any]]:
        """Every loaded rule by name (``/api/v1/rules``: health, lastError, type)."""
        return {r["name"]: r for g in self.api("rules")["groups"] for r in g["rules"]}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def binaries() -> Path:
    """The folder with prometheus and promtool, built first if they are not there (a no-op when they are)."""
    subprocess.run([str(SCRIPTS / "build-prometheus.sh")], check=True)
    out = subprocess.run([str(SCRIPTS / "prometheus-dir.sh")], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip())


def start(work: Path, targets: dict[str, str]) -> Prometheus:
    """Prometheus scraping ``targets`` (job name -> host:port) every second, with the shipped rules evaluated
    every second; its config passes ``promtool check config`` first. Returns once ``/-/ready`` answers."""
    bin_dir = binaries()
    work.mkdir(parents=True, exist_ok=True)
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": [target]}]} for job, target in targets.items()
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
           f"--storage.tsdb.path={work / 'data'}", f"--web.listen-address=127.0.0.1:{free_port()}"]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=work, stdout=out, stderr=subprocess.STDOUT)
    prom = Prometheus(f"http://{cmd[-1].split('=', 1)[1]}", proc, log)

    def ready() -> bool:
        assert proc.poll() is None, log.read_text()[-5000:]
        try:
            return bool(urllib.request.urlopen(prom.url + "/-/ready", timeout=2).status == 200)
        except OSError:
            return False

    wait_for(ready, 60, "Prometheus /-/ready")
    return prom


def shipped_alerts() -> dict[str, str]:
    """Alert name -> expression, as the rules file ships them."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {r["alert"]: r["expr"] for g in groups for r in g["rules"]}


def wait_rules_healthy(prom: Prometheus) -> dict[str, dict[str, Any]]:
    """Wait until every shipped rule is loaded and evaluated once; each must be ``health: ok``."""
    shipped = shipped_alerts()

    def evaluated() -> dict[str, dict[str, Any]] | None:
        rules = prom.rules()
        done = rules.keys() >= shipped.keys() and all(r["health"] != "unknown" for r in rules.values())
        return rules if done else None

    rules = wait_for(evaluated, 60, "every rule evaluated once", interval=0.5)
    assert rules.keys() == shipped.keys()
    for name, rule in rules.items():
        assert rule["health"] == "ok", (name, rule.get("lastError"))
        assert rule["type"] == "alerting"
    return rules


def _expr(expr: str) -> str:
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    return expr


def _selectors(expr: str) -> list[str]:
    """The vector selectors of a PromQL expression: each slm_ metric name with its {matchers}, if any."""
    return [
        m.group(0) for m in SELECTOR.finditer(re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr))
    ]


def check_dashboard(prometheus: Prometheus, must_show: set[str]) -> None:
    """Every panel query (Grafana's variables as "All") parses and evaluates; one whose every selected series
    exists returns data, so a panel is empty only when its metrics are; the panels ``must_show`` have data."""
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [(p["title"], _expr(t["expr"])) for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(panels) > 40 and {title for title, _ in panels} >= must_show
    empty_with_data = []
    shown: set[str] = set()
    for title, expr in panels:
        result = prometheus.query(expr)
        selectors = _selectors(expr)
        assert selectors, (title, expr)
        # every selected series has two samples in the last minute (what a rate needs), yet the query is empty
        if all(prometheus.query(f"count_over_time({s}[1m]) >= 2") for s in selectors) and not result:
            empty_with_data.append((title, expr))
        if result:
            shown.add(title)
    assert not empty_with_data, empty_with_data
    assert must_show <= shown, f"panels without data: {sorted(must_show - shown)}"
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            m = re.fullmatch(r"label_values\((\w+), (\w+)\)", var["definition"])
            assert m, var["definition"]
            metric, label = m.groups()
            values = prometheus.api(f"label/{label}/values", **{"match[]": metric})
            assert isinstance(values, list)
            if prometheus.query(metric):
                assert values, f"variable {var['name']} lists the {label}s of {metric}"
