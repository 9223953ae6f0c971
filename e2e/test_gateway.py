"""The gateway against a real control plane: `slm-operator gateway` in in-cluster mode as a host process,
authenticated as the chart's gateway ServiceAccount, routing calls to the replica pods the operator placed, found
through the EndpointSlices kube-controller-manager publishes.

vLLM cannot run here, so the harness runs the OpenAI-compatible stand-in (e2e/standin.py, the only test double)
for each Running replica pod. kwok gives pods fake IPs from 10.0.0.0/24; the API server refuses loopback addresses
in EndpointSlices (docs/e2e.md section 7), so each pod keeps its kwok IP, its stand-in listens on
the same offset in a loopback /24, and the gateway runs with ``--dial-map 10.0.0.0/24=<that /24>``. Every stand-in
answers with its pod's name, so a test sees which replica answered. The external backend ("the LLM") is another
stand-in on 127.0.0.1. Captured calls go to a real PostgreSQL server (tests/postgres.py)."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from e2e.conftest import Cluster, wait_for
from e2e.operator import (
    API_KEY,
    GATEWAY_POD,
    GATEWAY_SA,
    GROUP,
    ROUTE_USER_ROLE,
    STATUS_LEASE,
    SYSTEM_NS,
    VERSION,
    Answer,
    GatewayProcess,
    Operator,
    chat,
    condition,
    custom,
    delete_quietly,
    free_port,
    grant_callers,
    is_true,
    kubectl_apply,
    wait_served,
)
from e2e.prometheus import check_dashboard, wait_rules_healthy
from e2e.prometheus import start as start_prometheus
from e2e.replicas import KWOK_POD_CIDR, EventLoopThread, Replicas, random_loopback, serve
from e2e.standin import Behaviour, StandIn
from slm_operator.advisor import traces
from slm_operator.advisor.classifier import fit_classifier
from slm_operator.advisor.features import document
from slm_operator.contract import TASK_CLASSIFIER_KEY
from tests.postgres import PostgresServer, postgres_server

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[1]
RELEASE = "slm"
POOL = "gw-l4"
CONVERGE = 120.0


# ------------------------------------------------------------------------------------------ the harness


@dataclass
class Stack:
    cluster: Cluster
    gateway: GatewayProcess
    replicas: Replicas
    llm: StandIn
    llm_url: str
    postgres: PostgresServer
    agents: str  # namespace with the SLMDeployments extractor (2 replicas) and summarizer (1)
    other: str  # another namespace, with the SLMDeployment lonely
    agent_token: str  # ServiceAccount agents/agent, bound to the route-user ClusterRole
    stranger_token: str  # ServiceAccount agents/stranger, no binding


def _helm(cluster: Cluster, *args: str) -> None:
    helm = [str(cluster.bin_dir / "helm"), "--kubeconfig", cluster.kubeconfig]
    subprocess.run([*helm, *args], check=True, capture_output=True, text=True)


def deployment(name: str, ns: str, replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "SLMDeployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "poolRef": {"name": POOL},
            "model": {"name": "qwen2.5-0.5b-instruct", "maxConcurrentSequences": 8},
            "replicas": replicas,
            "qos": "Guaranteed",
        },
    }


def _namespace(cluster: Cluster, name: str) -> None:
    cluster.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    wait_for(lambda: cluster.core.read_namespaced_service_account("default", name), 90, f"{name}/default SA")


def _pool_absent(cluster: Cluster) -> bool:
    try:
        custom(cluster.api).get_cluster_custom_object(GROUP, VERSION, "gpupools", POOL)
    except client.exceptions.ApiException as exc:
        return exc.status == 404
    return False


def _pool(cluster: Cluster) -> None:
    """A fresh GPUPool of the four whole L4 GPUs of gpu-l4-1 (one left by an interrupted run is removed first)."""
    delete_quietly(custom(cluster.api).delete_cluster_custom_object, GROUP, VERSION, "gpupools", POOL)
    wait_for(lambda: _pool_absent(cluster), 60, f"GPUPool {POOL} gone")
    kubectl_apply(
        cluster,
        [
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "GPUPool",
                "metadata": {"name": POOL},
                "spec": {
                    "nodeSelector": {"matchLabels": {"kubernetes.io/hostname": "gpu-l4-1"}},
                    "sharing": {"mechanisms": ["Exclusive"]},
                },
            }
        ],
    )


@pytest.fixture(scope="module")
def stack(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The chart (RBAC, ServiceAccounts) installed with helm, the operator and the gateway as processes under
    their chart ServiceAccounts, a GPUPool on gpu-l4-1, two namespaces with SLMDeployments, the stand-ins, the
    external LLM stand-in and PostgreSQL as the usage store."""
    work = tmp_path_factory.mktemp("gateway")
    cluster.kubectl("apply", "-f", str(REPO / "crds"))
    cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
    for name in ("gpu-operator", SYSTEM_NS):
        with contextlib.suppress(client.exceptions.ApiException):
            cluster.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    _helm(cluster, "upgrade", "--install", RELEASE, str(REPO / "charts" / "slm-operator"), "--namespace",
          SYSTEM_NS, "--set", "crds.enabled=false", "--set", "agent.enabled=false", "--set",
          "operator.replicas=1", "--set", "gateway.replicas=1")  # fmt: skip
    operator = Operator(
        kubeconfig=cluster.kubeconfig,
        log_dir=work,
        service_account="slm-slm-operator",
        cluster=cluster,
    )
    operator.start()
    loops = EventLoopThread()
    loopback = random_loopback()
    replicas = Replicas(cluster.core, loops, loopback)
    threading.Thread(target=replicas.run_forever, daemon=True).start()
    llm = StandIn("llm")
    llm_port = free_port()
    llm_runner = loops.run(serve(llm, "127.0.0.1", llm_port))
    agents, other = f"gw-agents-{uuid.uuid4().hex[:6]}", f"gw-other-{uuid.uuid4().hex[:6]}"
    gateway: GatewayProcess | None = None
    with postgres_server() as pg:
        try:
            _pool(cluster)
            for ns in (agents, other):
                _namespace(cluster, ns)
            agent_token, stranger_token = grant_callers(cluster, agents)
            kubectl_apply(
                cluster,
                [deployment("extractor", agents, 2), deployment("summarizer", agents, 1),
                 deployment("lonely", other, 1)],
            )  # fmt: skip
            gateway = GatewayProcess(
                kubeconfig=cluster.token_kubeconfig(SYSTEM_NS, GATEWAY_SA, work / "gateway.kc"),
                dial_map=f"{KWOK_POD_CIDR}={loopback}",
                store=pg.create_database("usage"),
                work=work,
            )
            gateway.start()
            for ns, name, n in ((agents, "extractor", 2), (agents, "summarizer", 1), (other, "lonely", 1)):
                wait_served(replicas, cluster, ns, name, n, CONVERGE)
            yield Stack(cluster, gateway, replicas, llm, f"http://127.0.0.1:{llm_port}/v1", pg, agents,
                        other, agent_token, stranger_token)  # fmt: skip
        finally:
            if gateway is not None:
                gateway.stop()
                print("----- gateway log -----\n" + gateway.log.read_text(errors="replace")[-20000:])
            replicas.close()
            with contextlib.suppress(Exception):
                loops.run(llm_runner.cleanup())
            loops.close()
            for ns in (agents, other):
                with contextlib.suppress(client.exceptions.ApiException):
                    cluster.delete_pods(ns)
                    cluster.core.delete_namespace(ns, grace_period_seconds=0)
            delete_quietly(custom(cluster.api).delete_cluster_custom_object, GROUP, VERSION, "gpupools", POOL)
            with contextlib.suppress(AssertionError):  # the operator's finalizer frees the nodes
                wait_for(lambda: _pool_absent(cluster), 60, f"GPUPool {POOL} deleted (its finalizer ran)")
            operator.stop()
            subprocess.run(
                [str(cluster.bin_dir / "helm"), "--kubeconfig", cluster.kubeconfig, "uninstall", RELEASE,
                 "--namespace", SYSTEM_NS], capture_output=True,
            )  # fmt: skip


# ------------------------------------------------------------------------------------------ calls


def call(stack: Stack, model: str, **kw: Any) -> Answer:
    return chat(stack.gateway.url, model, **kw)


@pytest.fixture
def route(stack: Stack) -> Iterator[Any]:
    """``route(ns, **spec)`` creates an SLMRoute serving a model name of its own and waits until the gateway has
    accepted it (its status says so); returns (name, model). Deleted after the test."""
    made: list[tuple[str, str]] = []
    co = custom(stack.cluster.api)

    def create(ns: str, ready: bool = True, **spec: Any) -> tuple[str, str]:
        name = f"r-{uuid.uuid4().hex[:6]}"
        model = f"model-{name}"
        body = {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "SLMRoute",
            "metadata": {"name": name, "namespace": ns}, "spec": {"model": model, **spec},
        }  # fmt: skip
        co.create_namespaced_custom_object(GROUP, VERSION, ns, "slmroutes", body)
        made.append((ns, name))

        def reported() -> dict[str, Any] | None:
            obj = co.get_namespaced_custom_object(GROUP, VERSION, ns, "slmroutes", name)
            done = is_true(obj, "Ready") if ready else condition(obj, "Accepted") is not None
            return obj if done else None

        wait_for(reported, 60, f"the gateway's status on SLMRoute {ns}/{name}", interval=0.3)
        return name, model

    yield create
    for ns, name in made:
        delete_quietly(co.delete_namespaced_custom_object, GROUP, VERSION, ns, "slmroutes", name)
    for (ns, dep), _ in list(stack.replicas.behaviours.items()):
        stack.replicas.behave(ns, dep)


def llm_backend(stack: Stack) -> dict[str, Any]:
    return {"name": "llm", "external": {"url": stack.llm_url, "model": "gpt-4o-mini"}}


def pod_names(stack: Stack, ns: str, dep: str) -> set[str]:
    pods = stack.cluster.core.list_namespaced_pod(ns, label_selector=f"slm.io/deployment={dep}").items
    return {p.metadata.name for p in pods}


# ------------------------------------------------------------------------------------------ scenarios


def test_route_status_is_written_by_the_holder_of_the_status_lease(stack: Stack, route: Any) -> None:
    """The gateway runs with the chart's --status-lease under its ServiceAccount: the Role lets it take that one
    Lease, and as its holder it writes the routes' status (the `route` fixture waits for that status)."""
    name, _ = route(stack.agents, backends=[{"name": "slm", "slmDeploymentRef": {"name": "summarizer"}}])
    lease = client.CoordinationV1Api(stack.cluster.api).read_namespaced_lease(STATUS_LEASE, SYSTEM_NS)
    assert lease.spec.holder_identity == GATEWAY_POD
    obj = custom(stack.cluster.api).get_namespaced_custom_object(
        GROUP, VERSION, stack.agents, "slmroutes", name
    )
    assert obj["status"]["readyBackends"] == "1/1"


def test_calls_go_to_the_deployment_their_task_names_over_its_ready_replicas(
    stack: Stack, route: Any
) -> None:
    ns = stack.agents
    _, model = route(
        ns,
        backends=[
            {"name": "extract", "slmDeploymentRef": {"name": "extractor"}},
            {"name": "summary", "slmDeploymentRef": {"name": "summarizer"}},
            llm_backend(stack),
        ],
        rules=[
            {"name": "invoices", "match": {"tasks": ["extract-invoice"]}, "backend": "extract"},
            {"name": "summaries", "match": {"tasks": ["summarize"]}, "backend": "summary"},
        ],
        defaultBackend="llm",
    )
    extractors = pod_names(stack, ns, "extractor")
    answers = [call(stack, model, token=stack.agent_token, task="extract-invoice") for _ in range(6)]
    assert {a.status for a in answers} == {200}
    assert {a.headers["x-slm-backend"] for a in answers} == {"extract"}
    # least outstanding requests, ties taking turns: both replicas of the deployment answer
    assert {a.text.removeprefix("hello from ") for a in answers} == extractors
    summary = call(stack, model, token=stack.agent_token, task="summarize")
    assert summary.headers["x-slm-backend"] == "summary"
    assert summary.text.removeprefix("hello from ") in pod_names(stack, ns, "summarizer")
    untagged = call(stack, model, token=stack.agent_token)
    assert (untagged.headers["x-slm-backend"], untagged.text) == ("llm", "hello from llm")
    assert "x-slm-fallback" not in untagged.headers


def _classifier_json(drop: str | None = None) -> str:
    """A task classifier of the synthetic traces' tasks (without ``drop``), as `advise` publishes it."""
    records = traces.generate(600, seed=5)
    labels = [None if r["label"] in (traces.OPEN_CHAT, drop) else r["label"] for r in records]
    return fit_classifier([document(r["request"], None) for r in records], labels).to_json()


def test_calls_without_a_task_header_are_tagged_by_the_classifier_configmap_the_gateway_watches(
    stack: Stack, route: Any
) -> None:
    """The gateway watches the ConfigMap a route's taskClassifier names, by name, under the chart's RoleBinding:
    missing, it says so on the route; created or changed, the next calls are tagged by it, without a restart;
    in a namespace that did not grant the gateway ConfigMaps, the route says what to grant."""
    ns, task, cm = stack.agents, "invoice-extraction", f"classifier-{uuid.uuid4().hex[:6]}"
    invoice = next(r["request"] for r in traces.generate(200, seed=99) if r["label"] == task)
    body = {k: v for k, v in invoice.items() if k != "model"}
    spec = {"taskClassifier": {"configMapRef": {"name": cm}}}
    name, model = route(
        ns,
        ready=False,
        backends=[{"name": "extract", "slmDeploymentRef": {"name": "extractor"}}, llm_backend(stack)],
        rules=[{"name": "invoices", "match": {"tasks": [task]}, "backend": "extract"}],
        defaultBackend="llm",
        **spec,
    )
    co = custom(stack.cluster.api)

    def accepted(namespace: str, route_name: str) -> dict[str, Any]:
        obj = co.get_namespaced_custom_object(GROUP, VERSION, namespace, "slmroutes", route_name)
        return condition(obj, "Accepted") or {}

    assert accepted(ns, name)["reason"] == "TaskClassifierNotFound", accepted(ns, name)
    assert call(stack, model, token=stack.agent_token, **body).headers["x-slm-backend"] == "llm"
    configmap = client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name=cm, namespace=ns), data={TASK_CLASSIFIER_KEY: _classifier_json()}
    )
    stack.cluster.core.create_namespaced_config_map(ns, configmap)

    def routed_by_tag() -> Answer | None:
        answer = call(stack, model, token=stack.agent_token, **body)
        return answer if answer.headers["x-slm-backend"] == "extract" else None

    def refused() -> str | None:
        message = str(accepted(stack.other, other).get("message", ""))
        return message if "may not read ConfigMap" in message else None

    try:
        tagged = wait_for(routed_by_tag, 30, "a call without x-slm-task routed by its tag", interval=0.3)
        assert tagged.headers["x-slm-task"] == task
        wait_for(lambda: accepted(ns, name).get("status") == "True", 30, "Accepted once the classifier loads")
        # a new version without the task: the next calls are no longer tagged with it
        configmap.data = {TASK_CLASSIFIER_KEY: _classifier_json(drop=task)}
        stack.cluster.core.replace_namespaced_config_map(cm, ns, configmap)
        wait_for(
            lambda: call(stack, model, token=stack.agent_token, **body).headers["x-slm-backend"] == "llm",
            30,
            "the new version of the classifier in use",
            interval=0.3,
        )
        # a namespace without the gateway's ConfigMaps RoleBinding: the route says what to grant
        other, _ = route(stack.other, ready=False, backends=[llm_backend(stack)], **spec)
        message = wait_for(refused, 30, "the route of a namespace that did not grant ConfigMaps says so")
        assert "`list` and `watch`" in message
        assert accepted(stack.other, other)["reason"] == "TaskClassifierNotFound"
    finally:
        delete_quietly(stack.cluster.core.delete_namespaced_config_map, cm, ns)


@pytest.mark.parametrize(
    ("behaviour", "extra", "reason"),
    [
        (Behaviour(status=500), {}, "error"),
        (Behaviour(delay=5), {}, "timeout"),
        (Behaviour(status=503, retry_after="1"), {}, "overload"),
        (
            Behaviour(content="Sure! The total is 42."),
            {"response_format": {"type": "json_object"}},
            "invalid_json",
        ),
    ],
    ids=["error", "timeout", "overload", "invalid_json"],
)
def test_a_failing_slm_falls_back_to_the_external_llm_and_says_why(
    stack: Stack, route: Any, behaviour: Behaviour, extra: dict[str, Any], reason: str
) -> None:
    ns = stack.agents
    _, model = route(
        ns,
        backends=[{"name": "slm", "slmDeploymentRef": {"name": "summarizer"}}, llm_backend(stack)],
        defaultBackend="slm",
        fallback={"backend": "llm", "when": ["Error", "Timeout", "Overload", "InvalidJSON"]},
        timeouts={"firstByte": "2s", "total": "30s"},
    )
    healthy = call(stack, model, token=stack.agent_token, **extra) if reason != "invalid_json" else None
    if healthy is not None:
        assert (healthy.status, healthy.headers["x-slm-backend"]) == (200, "slm")
    stack.replicas.behave(ns, "summarizer", behaviour)
    answer = call(stack, model, token=stack.agent_token, **extra)
    assert answer.status == 200, answer.body
    assert answer.headers["x-slm-fallback"] == reason
    assert answer.headers["x-slm-backend"] == "llm" and answer.text == "hello from llm"


def test_callers_need_a_credential_and_the_rbac_verb_use_on_the_route(stack: Stack, route: Any) -> None:
    ns = stack.agents
    _, model = route(
        ns,
        backends=[{"name": "slm", "slmDeploymentRef": {"name": "summarizer"}}],
        apiKeySecretRefs=[{"name": "agent-api-keys"}],
    )
    anonymous = call(stack, model)
    assert anonymous.status == 401 and anonymous.json()["error"]["message"]
    assert call(stack, model, token="not-a-token-nor-a-key").status == 401
    # a valid ServiceAccount token (TokenReview says so) without `use` on the route (SubjectAccessReview)
    stranger = call(stack, model, token=stack.stranger_token)
    assert stranger.status == 403, stranger.body
    allowed = call(stack, model, token=stack.agent_token)
    assert allowed.status == 200 and allowed.text.startswith("hello from summarizer-")
    by_key = call(stack, model, token=API_KEY)
    assert by_key.status == 200 and by_key.text.startswith("hello from summarizer-")
    # granting the verb is ordinary RBAC: a RoleBinding of the route-user ClusterRole
    stack.cluster.kubectl(
        "-n", ns, "create", "rolebinding", f"stranger-{model}", f"--clusterrole={ROUTE_USER_ROLE}",
        f"--serviceaccount={ns}:stranger",
    )  # fmt: skip
    wait_for(
        lambda: call(stack, model, token=stack.stranger_token).status == 200,
        30,
        "the stranger's new RoleBinding to be honoured (refusals are cached for 10 s)",
        interval=1,
    )


def test_a_route_never_reaches_a_deployment_of_another_namespace(stack: Stack, route: Any) -> None:
    name, model = route(
        stack.agents,
        ready=False,
        backends=[{"name": "slm", "slmDeploymentRef": {"name": "lonely"}}, llm_backend(stack)],
        fallback={"backend": "llm"},
    )
    obj = custom(stack.cluster.api).get_namespaced_custom_object(
        GROUP, VERSION, stack.agents, "slmroutes", name
    )
    accepted = condition(obj, "Accepted")
    assert accepted and accepted["status"] == "False" and accepted["reason"] == "BackendNotFound", accepted
    before = stack.replicas.received(stack.other, "lonely")
    answers = [call(stack, model, token=stack.agent_token) for _ in range(3)]
    assert {(a.status, a.headers.get("x-slm-fallback"), a.text) for a in answers} == {
        (200, "error", "hello from llm")
    }
    assert (
        stack.replicas.received(stack.other, "lonely") == before
    )  # the pod in the other namespace got nothing


def metric(stack: Stack, name: str) -> float:
    text = urllib.request.urlopen(stack.gateway.url + "/metrics", timeout=10).read().decode()
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


def usage_export(stack: Stack, route_ref: str) -> list[dict[str, Any]]:
    r = subprocess.run(
        [sys.executable, "-m", "slm_operator", "usage", "export", "--store", stack.gateway.store,
         "--route", route_ref],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO / "operator")},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]


def test_a_streamed_call_is_captured_whole_and_redacted(stack: Stack, route: Any) -> None:
    ns = stack.agents
    name, model = route(
        ns,
        backends=[{"name": "slm", "slmDeploymentRef": {"name": "summarizer"}}],
        capture={"sampleRate": "1", "redact": ["Email"]},
    )
    stack.replicas.behave(ns, "summarizer", Behaviour(content="the invoice total is 42 euros", chunks=6))
    answer = call(
        stack, model, token=stack.agent_token, task="summarize", stream=True,
        content="Summarise the mail from jane.doe@example.com about invoice 4711",
    )  # fmt: skip
    assert answer.status == 200 and answer.headers["content-type"].startswith("text/event-stream")
    chunks = [
        json.loads(line[6:]) for line in answer.body.decode().splitlines() if line.startswith("data: {")
    ]
    assert len(chunks) > 2  # it really streamed
    streamed = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert streamed == "the invoice total is 42 euros"

    records = wait_for(lambda: usage_export(stack, f"{ns}/{name}") or None, 60, "the captured record")
    assert len(records) == 1
    rec = records[0]
    assert rec["stream"] is True and rec["task"] == "summarize" and rec["backend"] == "slm"
    assert rec["response"]["choices"][0]["message"]["content"] == "the invoice total is 42 euros"
    assert "jane.doe@example.com" not in json.dumps(rec)
    assert "invoice 4711" in rec["request"]["messages"][0]["content"]  # only the PII class asked for is gone


#: the dashboard's gateway panels the calls below feed
GATEWAY_PANELS = {
    "Gateway calls per second",
    "Gateway fallbacks by reason",
    "Gateway tokens per second",
    "Capture queue, spool and drops",
    "Backend ready endpoints",
}


@pytest.mark.observability
def test_prometheus_raises_the_fallback_and_capture_alerts_from_the_gateways_metrics(
    stack: Stack, route: Any, tmp_path: Path
) -> None:
    """A real Prometheus (e2e/prometheus.py, `make test-observability`) scrapes the gateway with the shipped rules
    loaded: every rule is healthy; a route whose SLM fails answers every call from its fallback
    (SLMRouteFallbackRateHigh active for that route), captured calls spool while the usage store is down
    (SLMCaptureRecordsSpooled active), and the dashboard's gateway panels show those calls."""
    prom = start_prometheus(tmp_path / "prometheus", {"gateway": stack.gateway.url.removeprefix("http://")})
    ns = stack.agents
    try:
        wait_rules_healthy(prom)
        failing, failing_model = route(
            ns,
            backends=[{"name": "slm", "slmDeploymentRef": {"name": "summarizer"}}, llm_backend(stack)],
            defaultBackend="slm",
            fallback={"backend": "llm", "when": ["Error"]},
        )
        captured, captured_model = route(
            ns,
            backends=[{"name": "slm", "slmDeploymentRef": {"name": "extractor"}}],
            capture={"sampleRate": "1", "redact": []},
        )
        stack.replicas.behave(ns, "summarizer", Behaviour(status=500))
        stack.postgres.stop()

        def calls_then(alert: str, **labels: str) -> list[dict[str, Any]] | None:
            fell_back = call(stack, failing_model, token=stack.agent_token)
            assert (fell_back.status, fell_back.headers.get("x-slm-fallback")) == (200, "error")
            assert call(stack, captured_model, token=stack.agent_token).status == 200
            return prom.active(alert, **labels)

        try:
            wait_for(
                lambda: calls_then("SLMRouteFallbackRateHigh", route=f"{ns}/{failing}"), 60, "fallback alert"
            )
            wait_for(lambda: calls_then("SLMCaptureRecordsSpooled"), 60, "spooled alert", interval=0.5)
        finally:
            stack.postgres.start()
        assert not prom.active("SLMRouteFallbackRateHigh", route=f"{ns}/{captured}"), "only the failing route"
        check_dashboard(prom, GATEWAY_PANELS)
    finally:
        prom.stop()


def test_postgresql_stopped_for_30s_under_load_loses_no_record(stack: Stack, route: Any) -> None:
    ns = stack.agents
    name, model = route(
        ns,
        backends=[{"name": "slm", "slmDeploymentRef": {"name": "extractor"}}],
        capture={"sampleRate": "1", "redact": []},
    )
    sent: list[int] = []
    stop = threading.Event()

    def caller() -> None:
        while not stop.is_set():
            a = call(stack, model, token=stack.agent_token, content=f"call {uuid.uuid4().hex}")
            sent.append(a.status)

    before = metric(stack, "slm_capture_replayed_total")
    stack.postgres.stop()
    try:
        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(caller) for _ in range(8)]
            stop.wait(30)  # the store is down for 30 s while 8 callers keep calling
            stack.postgres.start()
            stop.set()
            for f in futures:
                f.result()
    finally:
        if not stack.postgres.running:
            stack.postgres.start()
    ok = sent.count(200)
    assert ok > 50 and ok == len(sent), (
        f"{len(sent)} calls, {ok} answered 200"
    )  # calls never wait for the store
    stored = wait_for(
        lambda: (n := len(usage_export(stack, f"{ns}/{name}"))) >= ok and n,
        120,
        f"the {ok} calls' records replayed from the spool",
        interval=2,
    )
    assert stored == ok
    # they came through the spool: written to disk while the store was down, replayed once it was back
    assert metric(stack, "slm_capture_replayed_total") - before > 0
    assert metric(stack, "slm_capture_dropped_total") == 0


def test_the_charts_salt_secret_is_created_once_and_kept_on_upgrade(stack: Stack) -> None:
    """The chart draws the caller-hash salt when capture is turned on and reads it back (`lookup`) on every
    later upgrade: the hashes in the usage store stay erasable by caller."""
    cluster = stack.cluster
    chart = str(REPO / "charts" / "slm-operator")
    secret = "slm-slm-operator-gateway-salt"

    def salt() -> str:
        return cluster.kubectl("-n", SYSTEM_NS, "get", "secret", secret, "-o", "jsonpath={.data.salt}")

    upgrade = ["upgrade", RELEASE, chart, "--namespace", SYSTEM_NS, "--reuse-values"]
    try:
        _helm(cluster, *upgrade, "--set", "gateway.capture.store=postgresql://slm@usage-db:5432/usage")
        first = salt()
        assert len(base64.b64decode(first).decode()) == 64
        _helm(cluster, *upgrade, "--set", "gateway.logLevel=debug")
        assert salt() == first
    finally:
        _helm(cluster, *upgrade, "--set", "gateway.capture.store=")
        cluster.kubectl("-n", SYSTEM_NS, "delete", "secret", secret, "--ignore-not-found")
