"""The task classifier in the gateway (``spec.taskClassifier``): calls without ``x-slm-task`` get the task of the
classifier ``slm-operator advise`` publishes, rules match it, capture records it; the header wins; a missing or
corrupt ConfigMap leaves calls untagged and says so on the route; a new version of the ConfigMap takes effect
without a restart, and an unchanged one is never parsed again.

The classifier is a real one, fitted on synthetic agent traces (``advisor.traces``) with their true labels.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from slm_operator.advisor import traces
from slm_operator.advisor.classifier import TaskClassifier, fit_classifier
from slm_operator.advisor.features import document
from slm_operator.contract import TASK_CLASSIFIER_KEY
from slm_operator.gateway import classifiers as classifiers_module
from slm_operator.gateway.classifiers import ClassifierLoader
from slm_operator.gateway.cluster import ClusterState
from slm_operator.gateway.incluster import ConfigMapWatches
from slm_operator.gateway.kube import KubeApi
from slm_operator.gateway.standalone import build
from slm_operator.routing.features import call_task
from slm_operator.routing.status import route_status
from slm_operator.routing.table import (
    TASK_CLASSIFIER_INVALID,
    TASK_CLASSIFIER_NOT_FOUND,
    ClassifierRef,
    LoadedClassifier,
)
from tests.gateway_env import NS, Env, gateway_env
from tests.test_gateway import RecordingCapture
from tests.test_gateway_cluster import (
    KEY as CLUSTER_KEY,
)
from tests.test_gateway_cluster import (
    FakeApi,
    deployment,
    endpoint_slice,
    route,
    settle,
)
from tests.test_gateway_cluster import (
    run as run_cluster,
)

TASK = "invoice-extraction"
CM = "slm-task-classifier"
REF: ClassifierRef = (NS, CM, TASK_CLASSIFIER_KEY)
RULES = [{"name": "invoices", "match": {"tasks": [TASK]}, "backend": "slm"}]
SPEC = {"rules": RULES, "defaultBackend": "llm", "taskClassifier": {"configMapRef": {"name": CM}}}
FAR = [{"role": "user", "content": "hi, how are you today?"}]  # far from every task


def _fit(drop: str | None = None) -> TaskClassifier:
    records = traces.generate(600, seed=5)
    docs = [document(r["request"], None) for r in records]
    labels = [None if r["label"] in (traces.OPEN_CHAT, drop) else r["label"] for r in records]
    return fit_classifier(docs, labels)


@pytest.fixture(scope="module")
def classifier() -> TaskClassifier:
    return _fit()


@pytest.fixture(scope="module")
def invoice() -> dict[str, Any]:
    """A request of the invoice task the classifier has not seen (another seed), as an agent sends it."""
    request = next(r["request"] for r in traces.generate(200, seed=99) if r["label"] == TASK)
    return {k: v for k, v in request.items() if k != "model"}


def configmap(text: str, rv: str = "1", name: str = CM) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": NS, "resourceVersion": rv},
        "data": {TASK_CLASSIFIER_KEY: text},
    }


def run(test: Callable[[Env], Any], spec: dict[str, Any] = SPEC, **kw: Any) -> None:
    async def main() -> None:
        async with gateway_env(spec, **kw) as env:
            await test(env)

    asyncio.run(main())


def loaded(classifier: TaskClassifier) -> dict[ClassifierRef, LoadedClassifier]:
    return ClassifierLoader().load([REF], {REF[:2]: configmap(classifier.to_json())})


# ------------------------------------------------------------------------------------------------ the decision


def test_the_header_wins_else_the_classifier_else_no_task(
    classifier: TaskClassifier, invoice: dict[str, Any]
) -> None:
    assert classifier.tag(invoice)[0] == TASK
    assert call_task("extract-invoice", invoice, classifier) == "extract-invoice"
    assert call_task(None, invoice, classifier) == TASK
    assert call_task(None, {"messages": FAR}, classifier) is None
    assert call_task(None, invoice, None) is None


# ------------------------------------------------------------------------------------------------ calls


def test_a_call_without_the_header_is_routed_and_captured_by_its_tag(
    classifier: TaskClassifier, invoice: dict[str, Any]
) -> None:
    capture = RecordingCapture()

    async def test(env: Env) -> None:
        resp, _ = await env.chat(**invoice)
        assert resp.status == 200
        assert resp.headers["x-slm-backend"] == "slm" and resp.headers["x-slm-task"] == TASK
        await asyncio.sleep(0)  # the record is handed over just after the answer
        (record,) = capture.records
        assert record.task == TASK and record.backend == "slm"
        m = await env.metrics()
        assert f'slm_gateway_task_classifier_tags_total{{route="agents/invoices",task="{TASK}"}} 1.0' in m
        assert 'slm_gateway_task_classifier_loaded{route="agents/invoices"} 1.0' in m
        assert (
            f'slm_gateway_requests_total{{backend="slm",route="agents/invoices",status="200",task="{TASK}"}} 1.0'
            in m
        )
        status = route_status(env.gateway.table.routes["agents/invoices"], None, "now")
        accepted = {c.type: c for c in status.conditions or []}["Accepted"]
        assert accepted.status == "True"

    run(test, {**SPEC, "capture": {"sampleRate": "1"}}, capture=capture, classifiers=loaded(classifier))


def test_the_header_wins_over_the_classifier(classifier: TaskClassifier, invoice: dict[str, Any]) -> None:
    async def test(env: Env) -> None:
        resp, _ = await env.chat(task="something-else", **invoice)
        assert resp.headers["x-slm-backend"] == "llm" and resp.headers["x-slm-task"] == "something-else"
        resp, _ = await env.chat(task=TASK, messages=FAR)
        assert resp.headers["x-slm-backend"] == "slm"
        m = await env.metrics()
        assert "slm_gateway_task_classifier_tags_total{" not in m  # the classifier was never asked

    run(test, classifiers=loaded(classifier))


def test_a_call_far_from_every_task_is_untagged_and_goes_to_the_default(classifier: TaskClassifier) -> None:
    async def test(env: Env) -> None:
        resp, _ = await env.chat(messages=FAR)
        assert resp.status == 200 and resp.headers["x-slm-backend"] == "llm"
        assert "x-slm-task" not in resp.headers
        m = await env.metrics()
        assert 'slm_gateway_task_classifier_tags_total{route="agents/invoices",task=""} 1.0' in m

    run(test, classifiers=loaded(classifier))


@pytest.mark.parametrize(
    ("classifiers", "reason", "says"),
    [
        ({}, TASK_CLASSIFIER_NOT_FOUND, f"ConfigMap {NS}/{CM} not found"),
        (
            ClassifierLoader().load([REF], {REF[:2]: configmap("{not json")}),
            TASK_CLASSIFIER_INVALID,
            f"key '{TASK_CLASSIFIER_KEY}' of ConfigMap {NS}/{CM} is not a task classifier",
        ),
        (
            ClassifierLoader().load([REF], {REF[:2]: configmap('{"version": 99}')}),
            TASK_CLASSIFIER_INVALID,
            "version 99 is not supported",
        ),
        (
            ClassifierLoader().load([REF], {REF[:2]: {**configmap(""), "data": {"other": "x"}}}),
            TASK_CLASSIFIER_NOT_FOUND,
            f"ConfigMap {NS}/{CM} has no key '{TASK_CLASSIFIER_KEY}'",
        ),
    ],
    ids=["missing", "not-json", "other-version", "no-key"],
)
def test_a_missing_or_corrupt_classifier_leaves_calls_untagged_and_says_so(
    invoice: dict[str, Any], classifiers: dict[ClassifierRef, LoadedClassifier], reason: str, says: str
) -> None:
    async def test(env: Env) -> None:
        resp, _ = await env.chat(**invoice)
        assert resp.status == 200 and resp.headers["x-slm-backend"] == "llm"  # served, untagged
        assert (await env.chat(task=TASK, **invoice))[0].headers["x-slm-backend"] == "slm"  # the header works
        m = await env.metrics()
        assert 'slm_gateway_task_classifier_loaded{route="agents/invoices"} 0.0' in m
        assert 'slm_gateway_task_classifier_tags_total{route="agents/invoices",task=""} 1.0' in m
        status = route_status(env.gateway.table.routes["agents/invoices"], None, "now")
        conds = {c.type: c for c in status.conditions or []}
        assert (conds["Accepted"].status, conds["Accepted"].reason) == ("False", reason)
        assert says in conds["Accepted"].message and "x-slm-task" in conds["Accepted"].message
        assert "agents/chat" in env.gateway.table.routes  # a route without a classifier is not concerned
        chat = route_status(env.gateway.table.routes["agents/chat"], None, "now")
        assert {c.type: c for c in chat.conditions or []}["Accepted"].status == "True"

    run(test, classifiers=classifiers)


def test_problems_of_backends_and_secrets_name_the_reason_first() -> None:
    async def test(env: Env) -> None:
        status = route_status(env.gateway.table.routes["agents/invoices"], None, "now")
        accepted = {c.type: c for c in status.conditions or []}["Accepted"]
        assert accepted.reason == "BackendNotFound"  # the backend's problem comes first ...
        assert "SLMDeployment agents/nowhere not found" in accepted.message
        assert f"ConfigMap {NS}/{CM} not found" in accepted.message  # ... and every problem is listed

    spec = {
        **SPEC,
        "backends": [
            {"name": "slm", "slmDeploymentRef": {"name": "nowhere"}},
            {"name": "llm", "external": {"url": "{llm}", "model": "big-llm"}},
        ],
    }
    run(test, spec)


# ------------------------------------------------------------------------------------------------ loading


def test_a_classifier_is_parsed_once_per_resource_version(
    classifier: TaskClassifier, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    parsed: list[str] = []
    real = classifiers_module.parse_classifier

    def counting(ref: ClassifierRef, text: str) -> LoadedClassifier:
        parsed.append(text[:10])
        return real(ref, text)

    monkeypatch.setattr(classifiers_module, "parse_classifier", counting)
    loader = ClassifierLoader()
    text = classifier.to_json()
    with caplog.at_level("INFO", logger="slm_operator.gateway"):
        first = loader.load([REF], {REF[:2]: configmap(text, rv="1")})
        for _ in range(5):  # every rebuild: same version, same object, nothing parsed or logged
            assert loader.load([REF], {REF[:2]: configmap(text, rv="1")})[REF] is first[REF]
        assert len(parsed) == 1
        assert [r.getMessage() for r in caplog.records] == [
            f"task classifier {NS}/{CM} key {TASK_CLASSIFIER_KEY} loaded: {len(classifier.tasks)} tasks "
            "(version rv:1)"
        ]
        caplog.clear()
        broken = loader.load([REF], {REF[:2]: configmap("{", rv="2")})
        assert broken[REF].reason == TASK_CLASSIFIER_INVALID and len(parsed) == 2
        loader.load([REF], {REF[:2]: configmap("{", rv="2")})
        assert len(parsed) == 2 and len(caplog.records) == 1  # one warning per change, not per load
        assert caplog.records[0].levelname == "WARNING"
        # a file's ConfigMap has no resourceVersion: its text decides
        loader.load([REF], {REF[:2]: {**configmap(text), "metadata": {"name": CM, "namespace": NS}}})
        loader.load([REF], {REF[:2]: {**configmap(text), "metadata": {"name": CM, "namespace": NS}}})
        assert len(parsed) == 3
    assert loader.load([], {}) == {} and not loader._parsed  # no route names it any more: forgotten


def test_standalone_reads_the_classifier_from_the_files(
    tmp_path: Path, classifier: TaskClassifier, invoice: dict[str, Any]
) -> None:
    doc = {
        "apiVersion": "slm.io/v1alpha1",
        "kind": "SLMRoute",
        "metadata": {"name": "invoices", "namespace": NS},
        "spec": {
            "model": "gpt-4o-mini",
            "backends": [
                {"name": "slm", "slmDeploymentRef": {"name": "invoice-extractor"}},
                {"name": "llm", "external": {"url": "https://llm.example.com/v1", "model": "big"}},
            ],
            **SPEC,
        },
    }
    path = tmp_path / "route.yaml"
    path.write_text(yaml.safe_dump_all([doc, configmap(classifier.to_json())]))
    served = build([str(path)], "127.0.0.1:0", ["agents/invoice-extractor=http://127.0.0.1:9"])
    r = served.gateway.table.routes["agents/invoices"]
    assert r.classifier is not None and r.classifier.tag(invoice)[0] == TASK
    # without the ConfigMap, the banner's line for the route says why
    path.write_text(yaml.safe_dump(doc))
    served = build([str(path)], "127.0.0.1:0", ["agents/invoice-extractor=http://127.0.0.1:9"])
    r = served.gateway.table.routes["agents/invoices"]
    assert r.classifier is None and r.classifier_reason == TASK_CLASSIFIER_NOT_FOUND


# ------------------------------------------------------------------------------------------------ in the cluster


async def _call(url: str, body: dict[str, Any]) -> dict[str, str]:
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            url + "/chat/completions",
            json={"model": "gpt-4o-mini", **body},
            headers={"Authorization": f"Bearer {CLUSTER_KEY}"},
        ) as r,
    ):
        await r.read()
        assert r.status == 200
        return dict(r.headers)


def _accepted(api: FakeApi) -> dict[str, Any]:
    return {c["type"]: c for c in api.writes[-1][2]["conditions"]}["Accepted"]


def test_in_the_cluster_the_watched_configmap_takes_effect_without_a_restart(
    classifier: TaskClassifier, invoice: dict[str, Any]
) -> None:
    async def test(state: ClusterState, api: FakeApi, ctx: dict[str, Any]) -> None:
        followed: list[set[tuple[str, str]]] = []
        state.follow_configmaps = followed.append
        llm = {"name": "llm", "external": {"url": f"http://127.0.0.1:{ctx['port']}/v1", "model": "big"}}
        spec = {**SPEC, "backends": [*route()["spec"]["backends"], llm]}
        state.handle("slmroutes", "SYNC", [route(ns=NS, **spec)])
        state.handle("slmdeployments", "SYNC", [deployment()])
        state.handle("finetunejobs", "SYNC", [])
        state.handle(
            "endpointslices",
            "SYNC",
            [endpoint_slice("invoice-extractor", NS, ctx["port"], ("127.0.0.1", True))],
        )
        await settle(state)
        assert followed[-1] == {(NS, CM)}  # the route's ConfigMap is watched, by its name
        assert api.writes == []  # not listed yet: no TaskClassifierNotFound before it was looked at
        state.handle_configmap((NS, CM), "SYNC", [])
        await settle(state)
        assert _accepted(api)["reason"] == TASK_CLASSIFIER_NOT_FOUND
        assert (await _call(ctx["url"], invoice))["x-slm-backend"] == "llm"
        # advise publishes it: tagged from the next call on
        state.handle_configmap((NS, CM), "ADDED", configmap(classifier.to_json(), rv="10"))
        await settle(state)
        assert _accepted(api)["status"] == "True"
        assert (await _call(ctx["url"], invoice))["x-slm-backend"] == "slm"
        # a new version without the invoice task
        state.handle_configmap((NS, CM), "MODIFIED", configmap(_fit(drop=TASK).to_json(), rv="11"))
        await settle(state)
        assert (await _call(ctx["url"], invoice)).get("x-slm-task") != TASK
        # a corrupt version, then deleted
        state.handle_configmap((NS, CM), "MODIFIED", configmap("[]", rv="12"))
        await settle(state)
        assert _accepted(api)["reason"] == TASK_CLASSIFIER_INVALID
        state.handle_configmap((NS, CM), "DELETED", configmap("[]", rv="13"))
        await settle(state)
        assert _accepted(api)["reason"] == TASK_CLASSIFIER_NOT_FOUND
        # RBAC refuses the watch: the route says what to grant
        state.handle_configmap((NS, CM), "UNREADABLE", "the gateway may not read ConfigMap agents/x: grant")
        await settle(state)
        assert "may not read ConfigMap" in _accepted(api)["message"]
        # no route names it any more: no watch, and late events of the stopped watch are ignored
        state.handle("slmroutes", "SYNC", [route(ns=NS, rv="2")])
        await settle(state)
        assert followed[-1] == set() and state.configmaps == {}
        state.handle_configmap((NS, CM), "ADDED", configmap(classifier.to_json(), rv="14"))
        assert state.configmaps == {}

    run_cluster(test)


class _WatchingApi:
    """Records the ConfigMap watches started, each of which lists an empty result and waits to be stopped."""

    def __init__(self) -> None:
        self.started: list[tuple[str, str]] = []
        self.stopped: list[tuple[str, str]] = []

    def watch_configmap_forever(self, namespace: str, name: str, sink: Any, stop: threading.Event) -> None:
        self.started.append((namespace, name))
        sink("SYNC", [])
        stop.wait(5)
        self.stopped.append((namespace, name))


def test_configmap_watches_start_and_stop_with_the_routes_that_name_them() -> None:
    async def main() -> None:
        api = _WatchingApi()
        state = ClusterState.__new__(ClusterState)  # only handle_configmap is reached
        events: list[tuple[Any, ...]] = []
        state.handle_configmap = lambda *a: events.append(a)  # type: ignore[method-assign]
        watches = ConfigMapWatches(api, state, asyncio.get_running_loop())  # type: ignore[arg-type]
        watches.follow({("a", "one"), ("b", "two")})
        watches.follow({("a", "one"), ("b", "two")})  # no second watch of the same ConfigMap
        await asyncio.sleep(0.2)
        assert sorted(api.started) == [("a", "one"), ("b", "two")]
        assert sorted(events) == [(("a", "one"), "SYNC", []), (("b", "two"), "SYNC", [])]
        watches.follow({("a", "one")})
        await asyncio.sleep(0.2)
        assert api.stopped == [("b", "two")]
        watches.stop_all()
        await asyncio.sleep(0.2)
        assert sorted(api.stopped) == [("a", "one"), ("b", "two")]

    asyncio.run(main())


def test_a_configmap_watch_rbac_refuses_reports_what_to_grant() -> None:
    api = KubeApi(client.ApiClient())
    stop = threading.Event()
    got: list[tuple[str, Any]] = []

    def sink(event: str, obj: Any) -> None:
        got.append((event, obj))
        stop.set()

    def forbidden(**kw: Any) -> Any:
        assert kw == {"namespace": "team-b", "field_selector": "metadata.name=classifier"}
        raise ApiException(status=403, reason="Forbidden")

    api.core.list_namespaced_config_map = forbidden
    api.watch_configmap_forever("team-b", "classifier", sink, stop)
    ((event, message),) = got
    assert event == "UNREADABLE"
    assert "may not read ConfigMap team-b/classifier" in message and "`list` and `watch`" in message
