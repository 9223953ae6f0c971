"""A FineTuneJob that learns from the gateway's usage store (``dataset.usageStore``), on the real control plane
with its trainer really run (issue 11, item 1: the trainer reads usage records from the usage store).

A real PostgreSQL (``tests/postgres.py``, on 127.0.0.1) holds captured calls of two SLMRoutes of the test's
namespace, written with the capture store's own API (``PostgresStore.write``); the records are the tiny
extraction task (``slm_operator.trainer.tiny.synthetic_records``) as the gateway would have captured them. The
store URL is in a Secret; the Job's ``export`` step gets it from the host kubelet (``secretKeyRef``, as the
kubelet resolves it) and runs ``slm-operator usage export`` from the trainer image (``.venv-train``), so the
export, ``sanitize`` and ``train`` all run as host processes. What the test shows: only the named route's calls,
and only those inside ``since``, reach training; a Secret key that is not there gives a condition that says
which key of which Secret, and the job goes on once the Secret is fixed.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kubernetes import client

from e2e import test_operator
from e2e.conftest import Cluster, wait_for
from e2e.operator import Operator, condition
from e2e.test_finetune import (
    TRAIN,
    condition_is,
    finetune_job,
    ftj,
    synthetic_jsonl,
    tiny_base,
    trainer_operator,
)
from e2e.test_operator import kubectl_apply, pool
from slm_operator.capture import CaptureRecord
from slm_operator.capture.postgres_store import PostgresStore
from slm_operator.contract import FINETUNE_JOB_LABEL
from tests.postgres import PostgresServer, postgres_server

pytestmark = pytest.mark.e2e
operator = test_operator.operator  # fixtures: the operator as the chart's ServiceAccount, GPUPools cleaned up
pools = test_operator.pools
__all__ = ["trainer_operator"]  # the fixture, from e2e/test_finetune.py: the operator with the trainer image

SUPPORT = 300  # recent calls of the route the job learns from
OLD = 40  # calls of the same route older than `since`
BILLING = 120  # calls of the namespace's other route


def captured(
    record: dict[str, Any], route: str, when: datetime, task: str | None = "extract-order"
) -> CaptureRecord:
    """A chat record of the tiny task as the gateway captures the call: the prompt as the request, the last
    assistant turn as the response's choice; ``task`` as the caller's ``x-slm-task`` (None: untagged, as the
    gateway stores a call that names no task and no classifier tagged)."""
    *prompt, answer = record["messages"]
    return CaptureRecord(
        id=uuid.uuid4().hex,
        time=when,
        route=route,
        task=task,
        backend="tiny",
        model="gpt-4o-mini",
        request={"model": "gpt-4o-mini", "messages": prompt},
        response={"choices": [{"index": 0, "message": answer, "finish_reason": "stop"}]},
        stream=False,
        status=200,
        total_ms=120.0,
        caller="c0ffee",
    )


def write_calls(url: str, records: list[CaptureRecord]) -> None:
    async def write() -> None:
        async with PostgresStore(url) as store:
            result = await store.write(records)
            assert result.inserted == len(records), result

    asyncio.run(write())


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    with postgres_server() as server:
        yield server


@pytest.fixture
def store(cluster: Cluster, trainer_operator: Operator, pools: list[str], ns: str, pg: PostgresServer) -> str:
    """A pool with a fine-tuning segment on gpu-h100-1, the tiny base model on a claim, the output claim, and a
    usage store with the calls of routes `support` (recent and old) and `billing` of the test's namespace."""
    name = f"ftu-{ns}"
    pools.append(name)
    kubectl_apply(
        cluster,
        [pool(name, node="gpu-h100-1", segments=[{"name": "finetune", "purpose": "FineTuning", "gpus": 1}])],
    )
    tiny_base(cluster.host_volume(ns, "models") / "tiny")
    cluster.host_volume(ns, "adapters")
    url = pg.create_database(f"usage_{ns.replace('-', '_')}")
    now = datetime.now(UTC)
    support = [json.loads(line) for line in synthetic_jsonl(SUPPORT + OLD, seed=0).splitlines()]
    billing = [json.loads(line) for line in synthetic_jsonl(BILLING, seed=1).splitlines()]
    write_calls(
        url,
        [captured(r, f"{ns}/support", now - timedelta(hours=1)) for r in support[:SUPPORT]]
        + [captured(r, f"{ns}/support", now - timedelta(days=40)) for r in support[SUPPORT:]]
        + [captured(r, f"{ns}/billing", now - timedelta(hours=2)) for r in billing],
    )
    cluster.core.create_namespaced_secret(
        ns, client.V1Secret(metadata=client.V1ObjectMeta(name="usage-store"), string_data={"url": url})
    )
    return name


def usage_job(name: str, pool_name: str, key: str = "url") -> dict[str, Any]:
    job = finetune_job(name, pool_name, "none", segment="finetune")
    del job["spec"]["promote"]
    job["spec"]["hyperparameters"]["epochs"] = 1
    job["spec"]["dataset"] = {
        "usageStore": {
            "urlSecretRef": {"name": "usage-store", "key": key},
            "route": "support",
            "since": "30d",
        }
    }
    return job


def test_the_job_trains_on_its_routes_recent_calls_only(cluster: Cluster, ns: str, store: str) -> None:
    kubectl_apply(cluster, [usage_job("from-store", store)], ns)
    wait_for(lambda: condition_is(cluster, ns, "from-store", "Trained", "True"), TRAIN, "FineTuneJob Trained")
    obj = ftj(cluster, ns, "from-store")
    sanitized = condition(obj, "Sanitized")
    assert sanitized is not None and sanitized["message"].startswith(
        f"{SUPPORT} records sanitised, 0 skipped"
    )
    assert sanitized["message"].endswith(f"; {SUPPORT} records exported from the usage store")
    assert obj["status"]["sanitization"]["exported"] == SUPPORT
    pod = cluster.core.list_namespaced_pod(ns, label_selector=f"{FINETUNE_JOB_LABEL}=from-store").items[0]
    export = next(s for s in pod.status.init_container_statuses if s.name == "export")
    assert json.loads(export.state.terminated.message) == {"records": SUPPORT}
    train = next(s for s in pod.status.container_statuses if s.name == "train")
    examples = json.loads(train.state.terminated.message)["examples"]
    assert examples["train"] + examples["eval"] == SUPPORT  # not billing's, not the calls before `since`
    assert obj["status"]["evaluation"]["trainExamples"] == examples["train"]
    # the store URL never appears in the Job: the kubelet took it from the Secret
    assert "postgresql://" not in json.dumps(pod.spec.to_dict())


def test_a_wrong_secret_key_says_which_and_the_job_goes_on_once_the_secret_has_it(
    cluster: Cluster, ns: str, store: str
) -> None:
    kubectl_apply(cluster, [usage_job("wrong-key", store, key="uri")], ns)
    blocked = wait_for(
        lambda: (
            (c := condition_is(cluster, ns, "wrong-key", "Sanitized", "False"))
            and c["reason"] == "ExportBlocked"
            and c
        ),
        TRAIN,
        "Sanitized ExportBlocked",
    )
    assert f"couldn't find key uri in Secret {ns}/usage-store" in blocked["message"]
    assert "CreateContainerConfigError" in blocked["message"] and "urlSecretRef" in blocked["message"]
    assert condition_is(cluster, ns, "wrong-key", "Failed", "False")
    # the user adds the key: the kubelet retries, the export runs, the data is sanitised
    encoded = cluster.core.read_namespaced_secret("usage-store", ns).data["url"]  # base64, as served
    cluster.core.patch_namespaced_secret("usage-store", ns, {"data": {"uri": encoded}})
    done = wait_for(
        lambda: condition_is(cluster, ns, "wrong-key", "Sanitized", "True"), TRAIN, "Sanitized after the fix"
    )
    assert done["message"].endswith(f"; {SUPPORT} records exported from the usage store")
