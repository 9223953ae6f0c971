"""The whole LLM-to-SLM loop of docs/loop.md on the real local control plane (issue 13): captured calls ->
`slm-operator advise --cluster --apply` -> an SLMDeployment placed by the operator and a FineTuneJob that really
trains, passes its gate and promotes its adapter -> the gateway copies the task's calls to the SLM in shadow,
promotes it to serving once it agrees with the LLM, and steps back when it fails.

What is real: the control plane and its scheduler, the operator and the gateway as processes under the chart's
ServiceAccounts (RBAC, TokenReview, SubjectAccessReview), the NVIDIA-stack simulator's MIG changes, the host
kubelet running the FineTuneJob's export, sanitise and train containers from the trainer's virtualenv, the
usage store (PostgreSQL, ``tests/postgres.py``), `advise` itself and the task classifier it publishes, which
the gateway tags the agents' calls with (they send no ``x-slm-task``).

What is stood in, and why:

* **the captured calls** are written to the store with the capture store's own API, as the gateway would have
  captured them: 800 calls of the tiny extraction task (``slm_operator.trainer.tiny.synthetic_records``, the
  task e2e/test_finetune.py trains on) and open-ended chat from the generator of `slm-operator traces`. Only the
  tiny task is worth moving (``--min-calls``), so exactly one FineTuneJob trains (minutes on 2 CPU cores);
* **the base weights**: `advise` picks a catalog model (qwen2.5-0.5b-instruct) and the FineTuneJob template
  (``--finetune-template``, as an air-gapped organisation writes it) loads it from the PVC ``models`` at
  ``{model}``. Those weights cannot be downloaded here: the **tiny model** (``make_tiny_base``) is put at that
  path and stands in for the catalog model's weights, so the gate judges the tiny model, not Qwen;
* **the model servers**: vLLM cannot run here, so every replica pod of the SLMDeployment is served by the
  OpenAI stand-in (e2e/replicas.py) and the LLM is another stand-in. The test sets what they answer: the same
  JSON (in a different key order and spacing) from both, so the gateway's comparison finds them agreeing; then
  errors from the SLM's stand-ins. The stand-ins do not run the trained adapter.
* **the promotion thresholds**: `advise` writes ``promote: {backend: ...}`` with the API's defaults (200
  compared answers); the test lowers the rule's ``minSamples`` to 20 (as a reviewer may), which at the 10 %
  shadow share `advise` writes takes about 200 calls instead of 2,000 on the 2-core machine.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from e2e import test_operator
from e2e.conftest import REPO, Cluster, wait_for
from e2e.operator import (
    GATEWAY_SA,
    GROUP,
    SYSTEM_NS,
    VERSION,
    Answer,
    GatewayProcess,
    Operator,
    chat,
    condition,
    custom,
    free_port,
    grant_callers,
    is_true,
    kubectl_apply,
    placement,
    replica_pods,
    wait_served,
)
from e2e.replicas import KWOK_POD_CIDR, EventLoopThread, Replicas, random_loopback, serve
from e2e.standin import Behaviour, StandIn
from e2e.test_finetune import (
    TRAIN,
    condition_is,
    finetune_job,
    ftj,
    synthetic_jsonl,
    tiny_base,
    trainer_operator,
)
from e2e.test_finetune_usage import captured, pg, write_calls
from e2e.test_operator import assert_pods_where_planned, export_task, pool, wait_ready
from slm_operator.advisor.traces import OPEN_CHAT, TASK_TYPES, generate
from slm_operator.capture import CaptureRecord
from slm_operator.contract import ADAPTER_ANNOTATION, ADVISOR_TASK_ANNOTATION
from tests.postgres import PostgresServer

pytestmark = pytest.mark.e2e
operator = test_operator.operator  # fixtures: the operator as the chart's ServiceAccount, GPUPools cleaned up
pools = test_operator.pools
__all__ = ["pg", "trainer_operator"]  # fixtures: PostgreSQL; the operator with the trainer image

TINY = 800  # captured calls of the tiny task: its training set in e2e/test_finetune.py
CHAT = 300  # captured open-ended chat: clusters of at most about 70 calls, which stay on the LLM
MIN_CALLS = 400  # --min-calls: the tiny task moves, no chat cluster does
LIVE = 400  # other prompts of the tiny task, which the agent sends through the gateway in turn
MIN_SAMPLES = 20  # the rule's promote.minSamples, lowered from the API's 200 (see the module's docstring)
ROUTE, MODEL = "agent-llm", "gpt-4o-mini"
# what the LLM and the SLM answer: equal as JSON, not as text (the gateway compares JSON values)
LLM_ANSWER = '{"order_id": "26", "city": "Turin"}'
SLM_ANSWER = '{"city":"Turin","order_id":"26"}'
CONVERGE = 120.0
PROMOTE = 180.0  # the status writer decides at every routing-table rebuild and every 30 s


@dataclass
class Loop:
    pool: str
    store: str  # the usage store's URL (PostgreSQL)
    models: Path  # host folder of the PVC `models`
    adapters: Path  # host folder of the PVC `slm-adapters` (advise's default --adapters-pvc)
    gateway: GatewayProcess
    replicas: Replicas
    token: str  # the agent's ServiceAccount token (bound to the route-user ClusterRole)


@pytest.fixture
def loop(
    cluster: Cluster,
    trainer_operator: Operator,
    pools: list[str],
    ns: str,
    pg: PostgresServer,
    tmp_path: Path,
) -> Iterator[Loop]:
    """A pool of gpu-h100-1 with a fine-tuning segment, the claims `models` and `slm-adapters`, the usage store
    and its Secret, the LLM's stand-in, the route `agent-llm` the agents call it through (capturing every call),
    the replicas' stand-ins and the gateway under the chart's ServiceAccount."""
    name = f"loop-{ns}"
    pools.append(name)
    kubectl_apply(
        cluster,
        [pool(name, node="gpu-h100-1", segments=[{"name": "finetune", "purpose": "FineTuning", "gpus": 1}])],
    )
    models = cluster.host_volume(ns, "models")
    adapters = cluster.host_volume(ns, "slm-adapters")
    store = pg.create_database(f"usage_{ns.replace('-', '_')}")
    cluster.core.create_namespaced_secret(
        ns, client.V1Secret(metadata=client.V1ObjectMeta(name="usage-store"), string_data={"url": store})
    )
    token, _ = grant_callers(cluster, ns)
    loops = EventLoopThread()
    llm = StandIn("llm", Behaviour(content=LLM_ANSWER))
    llm_port = free_port()
    llm_runner = loops.run(serve(llm, "127.0.0.1", llm_port))
    loopback = random_loopback()
    replicas = Replicas(cluster.core, loops, loopback)
    threading.Thread(target=replicas.run_forever, daemon=True).start()
    llm_backend = {"name": "llm", "external": {"url": f"http://127.0.0.1:{llm_port}/v1", "model": MODEL}}
    route = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "SLMRoute",
        "metadata": {"name": ROUTE, "namespace": ns},
        "spec": {
            "model": MODEL,
            "backends": [llm_backend],
            "defaultBackend": "llm",
            "capture": {"sampleRate": "1", "redact": []},
        },
    }
    kubectl_apply(cluster, [route])
    gateway = GatewayProcess(
        kubeconfig=cluster.token_kubeconfig(SYSTEM_NS, GATEWAY_SA, tmp_path / "gateway.kc"),
        dial_map=f"{KWOK_POD_CIDR}={loopback}",
        store=store,
        work=tmp_path,
    )
    try:
        gateway.start()
        yield Loop(name, store, models, adapters, gateway, replicas, token)
    finally:
        gateway.stop()
        print("----- gateway log -----\n" + gateway.log.read_text(errors="replace")[-20000:])
        replicas.close()
        loops.run(llm_runner.cleanup())
        loops.close()


def advise(cluster: Cluster, loop: Loop, out: Path, template: Path, *extra: str) -> str:
    """`slm-operator advise` on the usage store, planning on what the cluster has (as the chart's CronJob runs
    it); its stdout."""
    cmd = [
        sys.executable, "-m", "slm_operator", "advise", "--from", loop.store, "-o", str(out),
        "--cluster", "--kubeconfig", cluster.kubeconfig, "--pool", loop.pool, "--min-calls", str(MIN_CALLS),
        "--usage-store-secret", "usage-store/url", "--finetune-template", str(template), "--no-examples",
        *extra,
    ]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    return r.stdout


def manifests(out: Path) -> dict[str, list[dict[str, Any]]]:
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for path in sorted((out / "manifests").glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        by_kind.setdefault(doc["kind"], []).append(doc)
    return by_kind


def route_obj(cluster: Cluster, ns: str) -> dict[str, Any]:
    return dict(custom(cluster.api).get_namespaced_custom_object(GROUP, VERSION, ns, "slmroutes", ROUTE))


def rule_status(cluster: Cluster, ns: str, rule: str) -> dict[str, Any]:
    for s in (route_obj(cluster, ns).get("status") or {}).get("rules") or []:
        if s["name"] == rule:
            return dict(s)
    return {}


def route_events(cluster: Cluster, ns: str, reason: str) -> list[client.CoreV1Event]:
    sel = f"involvedObject.kind=SLMRoute,involvedObject.name={ROUTE},reason={reason}"
    return list(cluster.core.list_namespaced_event(ns, field_selector=sel).items)


def call_until(
    loop: Loop,
    prompts: Iterator[list[dict[str, Any]]],
    check: Callable[[Answer], None],
    done: Callable[[Answer], bool],
    what: str,
    timeout: float,
) -> list[Answer]:
    """The agent calls the route with the task's prompts (no ``x-slm-task``: the classifier tags them), each
    answer checked by ``check``, until ``done(answer)`` holds after a call; the answers."""
    answers: list[Answer] = []

    def step() -> bool:
        answer = chat(loop.gateway.url, MODEL, token=loop.token, messages=next(prompts))
        check(answer)
        answers.append(answer)
        return done(answer)

    wait_for(step, timeout, what, interval=0)
    return answers


def test_captured_calls_become_a_trained_slm_that_serves_once_it_agrees_and_steps_back_when_it_fails(
    cluster: Cluster, ns: str, loop: Loop, tmp_path: Path
) -> None:
    co = custom(cluster.api)
    # ---- S1: the calls the gateway captured: the tiny task, untagged, and open-ended chat, over the last hour
    now = datetime.now(UTC)
    tiny = [json.loads(line) for line in synthetic_jsonl(TINY + LIVE, seed=0).splitlines()]
    chat_calls = generate(
        CHAT,
        seed=3,
        start=now - timedelta(hours=1),
        route=f"{ns}/{ROUTE}",
        mix={label: 0 for label in TASK_TYPES if label != OPEN_CHAT},
        hours=1,
    )
    assert {c["label"] for c in chat_calls} == {OPEN_CHAT}
    write_calls(
        loop.store,
        [captured(r, f"{ns}/{ROUTE}", now - timedelta(seconds=4 * (TINY - i)), task=None)
         for i, r in enumerate(tiny[:TINY])]
        + [CaptureRecord.model_validate(c) for c in chat_calls],
    )  # fmt: skip

    # ---- S3/S4: advise proposes; the weights of the model it picks go where the template says
    template = tmp_path / "finetune-template.yaml"
    tiny_spec = finetune_job("x", "x", "x")["spec"]  # the tiny task's training (e2e/test_finetune.py)
    template.write_text(
        yaml.safe_dump(
            {
                # an air-gapped cluster loads the base weights of the catalog model advise picks from a PVC
                "modelSource": {"pvc": {"claimName": "models", "path": "{model}"}},
                "hyperparameters": tiny_spec["hyperparameters"],
                # the tiny task's answers are its cities: Location is not redacted
                "sanitization": tiny_spec["sanitization"],
            }
        )
    )
    review = advise(cluster, loop, tmp_path / "review", template)
    assert f"{TINY + CHAT} calls" in review and "1 to move" in review, review
    proposed = manifests(tmp_path / "review")
    [job_doc] = proposed["FineTuneJob"]
    [dep_doc] = proposed["SLMDeployment"]
    model = dep_doc["spec"]["model"]["name"]
    assert job_doc["spec"]["baseModel"] == model
    assert job_doc["spec"]["modelSource"]["pvc"] == {"claimName": "models", "path": model}
    tiny_base(loop.models / model)  # the tiny model stands in for the catalog model's weights

    out = tmp_path / "advice"
    applied = advise(cluster, loop, out, template, "--apply")
    assert manifests(out) == proposed  # the same calls and seed: the same proposal
    dep, job = dep_doc["metadata"]["name"], job_doc["metadata"]["name"]
    task = dep_doc["metadata"]["annotations"][ADVISOR_TASK_ANNOTATION]
    assignments = [json.loads(x) for x in (out / "assignments.jsonl").read_text().splitlines()]
    assert sum(1 for a in assignments if a["task"] == task) == TINY  # every tiny call, no chat call
    assert f"tagged {sum(1 for a in assignments if a['task'])} calls" in applied, applied
    for line in (f"SLMDeployment {ns}/{dep}", f"FineTuneJob {ns}/{job}", f"SLMRoute {ns}/{ROUTE}"):
        assert f"applied {line}" in applied, applied
    assert sorted(asyncio.run(export_task(loop.store, task))) == sorted(
        a["id"] for a in assignments if a["task"] == task
    )

    # ---- the operator places the SLMDeployment on the share advise planned
    assert [d["metadata"]["name"] for d in co.list_namespaced_custom_object(GROUP, VERSION, ns, "slmdeployments")[
        "items"]] == [dep]  # fmt: skip
    wait_ready(cluster, ns, dep)
    assert_pods_where_planned(cluster, ns)
    tasks = json.loads((out / "tasks.json").read_text())["tasks"]
    planned = next(t for t in tasks if t["id"] == task)["recommendation"]["chosen"]
    for p in replica_pods(cluster.core, ns, dep):
        where = placement(p)
        assert " ".join(filter(None, (where["mechanism"], where.get("migProfile")))) == planned["share"], (
            where
        )
        assert p.spec.node_name == "gpu-h100-1"

    # ---- S5: the FineTuneJob trains on the task's calls in the store, passes its gate, promotes its adapter
    assert [j["metadata"]["name"] for j in co.list_namespaced_custom_object(GROUP, VERSION, ns, "finetunejobs")[
        "items"]] == [job]  # fmt: skip
    wait_for(lambda: condition_is(cluster, ns, job, "Promoted", "True"), TRAIN, f"FineTuneJob {job} Promoted")
    obj = ftj(cluster, ns, job)
    assert obj["status"]["sanitization"]["exported"] == TINY
    evaluated = condition(obj, "Evaluated")
    assert evaluated and evaluated["reason"] == "GatePassed", evaluated
    assert obj["status"]["evaluation"]["score"] >= 80
    adapter = loop.adapters / dep / job
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
    dep_obj = wait_ready(cluster, ns, dep)  # rolled onto the adapter
    assert dep_obj["metadata"]["annotations"][ADAPTER_ANNOTATION] == f"pvc://slm-adapters/{dep}/{job}"
    replicas = dep_obj["spec"]["replicas"]
    wait_served(loop.replicas, cluster, ns, dep, replicas, CONVERGE)

    # ---- S6: the route's shadow rule with promote, which the gateway acts on
    spec = route_obj(cluster, ns)["spec"]
    [rule] = [r for r in spec["rules"] if r["match"]["tasks"] == [task]]
    assert rule["backend"] == "llm" and rule["shadow"]["backends"] == [dep]
    assert rule["promote"]["backend"] == dep and rule["promote"]["minSamples"] == 200  # the API's default
    assert spec["taskClassifier"]["configMapRef"]["name"] == "slm-task-classifier"
    index = spec["rules"].index(rule)
    patch = [{"op": "replace", "path": f"/spec/rules/{index}/promote/minSamples", "value": MIN_SAMPLES}]
    cluster.kubectl("-n", ns, "patch", "slmroute", ROUTE, "--type=json", "-p", json.dumps(patch))
    wait_for(lambda: is_true(route_obj(cluster, ns), "Ready"), CONVERGE, "the gateway's Ready on the route")

    prompts = itertools.cycle([r["messages"][:-1] for r in tiny[TINY:]])
    loop.replicas.behave(ns, dep, Behaviour(content=SLM_ANSWER))

    def phase() -> str | None:
        return rule_status(cluster, ns, rule["name"]).get("phase")

    def from_the_llm(a: Answer) -> None:
        assert a.status == 200, a.body
        assert a.headers.get("x-slm-task") == task, a.headers  # tagged by the classifier advise published
        if a.headers["x-slm-backend"] == dep:  # promoted since the last call: the status said so first
            assert a.text == SLM_ANSWER and phase() == "Serving", (a.headers, a.body)
        else:
            assert a.headers["x-slm-backend"] == "llm" and a.text == LLM_ANSWER, (a.headers, a.body)
            assert "x-slm-fallback" not in a.headers, a.headers

    # Shadow: the LLM answers the agent, a share goes to the SLM, which agrees; then the rule moves to Serving
    shadow = call_until(
        loop,
        prompts,
        from_the_llm,
        lambda _: phase() == "Serving",
        "the rule promoted to Serving",
        PROMOTE,
    )
    assert sum(1 for a in shadow if a.headers["x-slm-backend"] == "llm") >= MIN_SAMPLES
    assert loop.replicas.received(ns, dep) >= MIN_SAMPLES  # the shadow copies reached the SLM's replicas
    status = rule_status(cluster, ns, rule["name"])
    assert status["backend"] == dep, status
    [promoted] = wait_for(lambda: route_events(cluster, ns, "Promoted"), 30, "the Promoted Event")
    assert promoted.type == "Normal" and f"promoted {dep}" in promoted.message, promoted.message

    # Serving: the SLM answers the agent (the status is written first, the gateway routes by it a moment later)
    served = call_until(
        loop, prompts, from_the_llm, lambda a: a.headers["x-slm-backend"] == dep, "the SLM answering", 10
    )
    served += [chat(loop.gateway.url, MODEL, token=loop.token, messages=next(prompts)) for _ in range(5)]
    assert {(a.status, a.headers["x-slm-backend"], a.text) for a in served[-6:]} == {(200, dep, SLM_ANSWER)}

    # The SLM fails: every call falls back to the LLM (the agent still gets its answer), the rule goes back
    loop.replicas.behave(ns, dep, Behaviour(status=500))

    def answered_anyway(a: Answer) -> None:
        assert a.status == 200 and a.text == LLM_ANSWER, (a.status, a.headers, a.body)
        assert a.headers["x-slm-backend"] == "llm" and a.headers.get("x-slm-task") == task, a.headers
        if "x-slm-fallback" in a.headers:  # the SLM failed, the LLM answered instead
            assert a.headers["x-slm-fallback"] == "error", a.headers
        else:  # demoted since the last call: the status said so first
            assert phase() == "Shadow", a.headers

    failing = call_until(
        loop,
        prompts,
        answered_anyway,
        lambda _: phase() == "Shadow",
        "the rule demoted to Shadow",
        PROMOTE,
    )
    # sent back once at least min(minSamples, 50) calls went to the SLM and more than 5 % of them fell back
    fell_back = sum(1 for a in failing if a.headers.get("x-slm-fallback") == "error")
    answered = sum(1 for a in served if a.headers["x-slm-backend"] == dep)
    assert fell_back and fell_back + answered >= min(MIN_SAMPLES, 50), (fell_back, answered)
    [demoted] = wait_for(lambda: route_events(cluster, ns, "Demoted"), 30, "the Demoted Event")
    assert demoted.type == "Warning" and f"demoted {dep}" in demoted.message, demoted.message
    assert rule_status(cluster, ns, rule["name"])["backend"] == "llm"

    # S1 again: the gateway captured the agent's calls tagged with the task, for the next run of the loop
    sent = len(shadow) + len(served) + len(failing)
    wait_for(
        lambda: len(asyncio.run(export_task(loop.store, task))) == TINY + sent,
        60,
        f"the gateway's {sent} captured calls tagged with the task",
        interval=1,
    )
