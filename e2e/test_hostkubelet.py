"""The e2e host kubelet (e2e/hostkubelet) against the real control plane: kwok leaves the labelled pods to it, it
runs their containers as host processes the way a kubelet would, and the real Job controller and scheduler act
on what it reports. Nothing here needs the trainer: the containers run the operator image (``Dockerfile``:
ENTRYPOINT ``slm-operator``) or, with ``command``, that image's ``python``."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from e2e.conftest import OPERATOR_IMAGE, REPO, Cluster, wait_for
from slm_operator.contract import FINETUNE_JOB_LABEL

pytestmark = pytest.mark.e2e
RUN = 90.0  # scheduling, a Python start-up, the Job controller: seconds in practice


def job(name: str, pod_spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": {FINETUNE_JOB_LABEL: name}},
                "spec": {"restartPolicy": "Never", **pod_spec},
            },
        },
    }


def python(name: str, script: str, *args: str, **extra: Any) -> dict[str, Any]:
    """A container of the operator image that runs a Python script with the image's python."""
    return {
        "name": name,
        "image": OPERATOR_IMAGE,
        "command": ["python", "-c", textwrap.dedent(script), *args],
        **extra,
    }


def job_condition(cluster: Cluster, ns: str, name: str, type_: str) -> dict[str, Any] | None:
    j = client.BatchV1Api(cluster.api).read_namespaced_job(name, ns)
    for c in j.status.conditions or []:
        if c.type == type_ and c.status == "True":
            return {"reason": c.reason, "message": c.message}
    return None


def job_pod(cluster: Cluster, ns: str, name: str) -> client.V1Pod:
    pods = cluster.core.list_namespaced_pod(ns, label_selector=f"job-name={name}").items
    assert len(pods) == 1, [p.metadata.name for p in pods]
    return pods[0]


def pod_of(cluster: Cluster, ns: str, name: str) -> dict[str, Any]:
    return dict(json.loads(cluster.core.read_namespaced_pod(name, ns, _preload_content=False).data))


def terminated(status: dict[str, Any]) -> dict[str, Any]:
    return dict(status["state"]["terminated"])


@pytest.fixture
def batch(cluster: Cluster) -> client.BatchV1Api:
    return client.BatchV1Api(cluster.api)


COPY = """
    import json, os, sys
    src, dst, term = sys.argv[1:]
    lines = open(src).read().splitlines()
    with open(dst, "w") as f:
        f.write("\\n".join(lines) + "\\n")
    with open(term, "w") as f:
        json.dump({"records": len(lines), "pod": os.environ["POD_NAME"], "home": os.environ["HOME"]}, f)
"""


def test_a_job_pod_runs_its_init_container_then_its_container_as_host_processes(
    cluster: Cluster, ns: str, batch: client.BatchV1Api
) -> None:
    """Init container ``slm-operator crds --output-dir /out/crds`` (the image's ENTRYPOINT + args), then a
    container reading a ConfigMap item and writing the claim: the Job completes through the real Job controller,
    the files are in the PersistentVolume's host folder, and the pod's status says what a kubelet would."""
    records = '{"prompt": "a"}\n{"prompt": "b"}\n'
    cluster.core.create_namespaced_config_map(
        ns, {"metadata": {"name": "calls"}, "data": {"records": records, "other": "not mounted"}}
    )
    out = cluster.host_volume(ns, "output")
    spec = {
        "volumes": [
            {
                "name": "data",
                "configMap": {"name": "calls", "items": [{"key": "records", "path": "in/calls.jsonl"}]},
            },
            {"name": "out", "persistentVolumeClaim": {"claimName": "output"}},
        ],
        "initContainers": [
            {
                "name": "crds",
                "image": OPERATOR_IMAGE,
                "args": ["crds", "--output-dir", "/out/crds"],
                "volumeMounts": [{"name": "out", "mountPath": "/out"}],
            }
        ],
        "containers": [
            python(
                "copy",
                COPY,
                "/data/in/calls.jsonl",
                "/out/copy.jsonl",
                "/dev/termination-log",
                env=[{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                volumeMounts=[
                    {"name": "data", "mountPath": "/data", "readOnly": True},
                    {"name": "out", "mountPath": "/out"},
                ],
            )
        ],
    }
    batch.create_namespaced_job(ns, job("copy", spec))
    wait_for(lambda: job_condition(cluster, ns, "copy", "Complete"), RUN, "Job copy Complete")

    # the operator image's `crds` wrote the CRDs this repository commits
    assert sorted(p.name for p in (out / "crds").iterdir()) == sorted(
        p.name for p in REPO.glob("crds/*.yaml")
    )
    assert (out / "copy.jsonl").read_text() == records
    pod = pod_of(cluster, ns, job_pod(cluster, ns, "copy").metadata.name)
    st = pod["status"]
    assert st["phase"] == "Succeeded"
    assert "podIP" not in st  # kwok's pod-ready stage (which gives every pod an IP) left it alone
    init, main = terminated(st["initContainerStatuses"][0]), terminated(st["containerStatuses"][0])
    assert (init["exitCode"], init["reason"]) == (0, "Completed")
    assert (main["exitCode"], main["reason"]) == (0, "Completed")
    assert init["finishedAt"] <= main["startedAt"]  # one after the other
    message = json.loads(main["message"])  # the file the process wrote at /dev/termination-log
    assert message["records"] == 2 and message["pod"] == pod["metadata"]["name"]
    assert message["home"].startswith(str(cluster.dir / "hostkubelet" / "pods"))
    conditions = {c["type"]: c for c in st["conditions"]}
    assert conditions["Initialized"]["status"] == "True"
    assert (conditions["Ready"]["status"], conditions["Ready"]["reason"]) == ("False", "PodCompleted")
    assert conditions["PodScheduled"]["status"] == "True"  # the scheduler's, kept


NOISY_FAILURE = """
    import sys
    for i in range(100):
        print(f"line {i:03d}", flush=True)
    sys.exit(3)
"""


def test_a_failing_container_fails_the_pod_and_the_job_with_the_tail_of_its_log(
    cluster: Cluster, ns: str, batch: client.BatchV1Api
) -> None:
    """Exit code 3 with an empty termination-message file and FallbackToLogsOnError: the message is the log's
    last 80 lines (the kubelet's limit), the pod Failed, the Job Failed (backoffLimit 0)."""
    spec = {"containers": [python("train", NOISY_FAILURE, terminationMessagePolicy="FallbackToLogsOnError")]}
    batch.create_namespaced_job(ns, job("noisy", spec))
    failed = wait_for(lambda: job_condition(cluster, ns, "noisy", "Failed"), RUN, "Job noisy Failed")
    assert failed["reason"] == "BackoffLimitExceeded"
    st = pod_of(cluster, ns, job_pod(cluster, ns, "noisy").metadata.name)["status"]
    assert st["phase"] == "Failed"
    term = terminated(st["containerStatuses"][0])
    assert (term["exitCode"], term["reason"]) == (3, "Error")
    lines = term["message"].splitlines()
    assert lines == [f"line {i:03d}" for i in range(20, 100)]


BAD_INPUT = """
    import sys
    open(sys.argv[1], "w").write("dataset /data/x.jsonl: no such file")
    sys.exit(2)
"""


def test_a_failing_init_container_fails_the_pod_and_its_container_never_starts(
    cluster: Cluster, ns: str, batch: client.BatchV1Api
) -> None:
    spec = {
        "initContainers": [python("sanitize", BAD_INPUT, "/dev/termination-log")],
        "containers": [python("train", "open('/never', 'w')")],
    }
    batch.create_namespaced_job(ns, job("badinput", spec))
    wait_for(lambda: job_condition(cluster, ns, "badinput", "Failed"), RUN, "Job badinput Failed")
    st = pod_of(cluster, ns, job_pod(cluster, ns, "badinput").metadata.name)["status"]
    assert st["phase"] == "Failed"
    init = terminated(st["initContainerStatuses"][0])
    assert (init["exitCode"], init["message"]) == (2, "dataset /data/x.jsonl: no such file")
    assert st["containerStatuses"][0]["state"] == {"waiting": {"reason": "PodInitializing"}}
    conditions = {c["type"]: c for c in st["conditions"]}
    assert conditions["Initialized"]["message"] == "containers with incomplete status: [sanitize]"


GRACEFUL = """
    import signal, sys, time
    out, term = sys.argv[1:]
    def stop(signum, frame):
        open(term, "w").write("checkpoint saved at step 7")
        open(out + "/got-sigterm", "w").write("yes")
        sys.exit(143)
    signal.signal(signal.SIGTERM, stop)
    open(out + "/started", "w").write("yes")
    while True:
        time.sleep(0.1)
"""
STUBBORN = """
    import signal, sys, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    open(sys.argv[1] + "/stubborn-started", "w").write("yes")
    while True:
        time.sleep(0.1)
"""
HOLD = "e2e.slm.io/hold"  # a finalizer of the test's, so the final status can be read after the deletion


def test_deleting_a_running_pod_sends_sigterm_then_sigkill_after_the_grace_period(
    cluster: Cluster, ns: str
) -> None:
    out = cluster.host_volume(ns, "output")
    pod = {
        "metadata": {"name": "trainer", "labels": {FINETUNE_JOB_LABEL: "t"}, "finalizers": [HOLD]},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 3,
            "volumes": [{"name": "out", "persistentVolumeClaim": {"claimName": "output"}}],
            "containers": [
                python(
                    "graceful",
                    GRACEFUL,
                    "/out",
                    "/dev/termination-log",
                    volumeMounts=[{"name": "out", "mountPath": "/out"}],
                ),
                python("stubborn", STUBBORN, "/out", volumeMounts=[{"name": "out", "mountPath": "/out"}]),
            ],
        },
    }
    cluster.core.create_namespaced_pod(ns, pod)
    try:
        _delete_running_pod(cluster, ns, out)
    finally:
        cluster.core.patch_namespaced_pod("trainer", ns, {"metadata": {"finalizers": None}})
    wait_for(lambda: not cluster.core.list_namespaced_pod(ns).items, RUN, "the pod gone")


def _delete_running_pod(cluster: Cluster, ns: str, out: Path) -> None:
    def running() -> bool:
        st = pod_of(cluster, ns, "trainer")["status"]
        statuses = st.get("containerStatuses") or []
        return (
            st["phase"] == "Running" and len(statuses) == 2 and all("running" in s["state"] for s in statuses)
        )

    wait_for(running, RUN, "both containers running")
    wait_for(
        lambda: (out / "started").exists() and (out / "stubborn-started").exists(), RUN, "signal handlers set"
    )
    cluster.core.delete_namespaced_pod("trainer", ns)  # the pod's own grace period (3 s)

    def finished() -> dict[str, Any] | None:
        st = pod_of(cluster, ns, "trainer")["status"]
        return st if st["phase"] == "Failed" else None

    st = wait_for(finished, RUN, "the deleted pod's final status")
    by_name = {s["name"]: terminated(s) for s in st["containerStatuses"]}
    assert (by_name["graceful"]["exitCode"], by_name["graceful"]["message"]) == (
        143,
        "checkpoint saved at step 7",
    )
    assert by_name["stubborn"]["exitCode"] == 137  # SIGKILL once the grace period was over
    assert (out / "got-sigterm").read_text() == "yes"


WAIT_FOR_GO = """
    import os, sys, time
    out = sys.argv[1]
    open(out + "/pid", "w").write(str(os.getpid()))
    while not os.path.exists(out + "/go"):
        time.sleep(0.1)
    open(out + "/done", "w").write(str(os.getpid()))
"""


def test_a_restarted_host_kubelet_re_adopts_the_containers_it_was_running(
    cluster: Cluster, ns: str, batch: client.BatchV1Api
) -> None:
    """The host kubelet is killed while a container runs and started again: the container was not restarted
    (same process, same startedAt) and its completion is reported; the Job completes."""
    out = cluster.host_volume(ns, "output")
    spec = {
        "volumes": [{"name": "out", "persistentVolumeClaim": {"claimName": "output"}}],
        "containers": [
            python("work", WAIT_FOR_GO, "/out", volumeMounts=[{"name": "out", "mountPath": "/out"}])
        ],
    }
    batch.create_namespaced_job(ns, job("longrun", spec))

    def started() -> str | None:
        pods = cluster.core.list_namespaced_pod(ns, label_selector="job-name=longrun").items
        if not pods:
            return None  # the Job controller has not created it yet (slow under load: it once failed CI)
        st = pod_of(cluster, ns, pods[0].metadata.name)["status"]
        running = (st.get("containerStatuses") or [{}])[0].get("state", {}).get("running")
        return running["startedAt"] if running else None

    started_at = wait_for(started, RUN, "the container running")
    cluster.stop_hostkubelet(kill=True)
    try:
        (out / "go").write_text("")
        wait_for(
            lambda: (out / "done").exists(), RUN, "the container finishing while the host kubelet is down"
        )
    finally:
        cluster.start_hostkubelet()
    wait_for(lambda: job_condition(cluster, ns, "longrun", "Complete"), RUN, "Job longrun Complete")
    assert (out / "done").read_text() == (out / "pid").read_text()  # one process, not a second start
    st = pod_of(cluster, ns, job_pod(cluster, ns, "longrun").metadata.name)["status"]
    term = terminated(st["containerStatuses"][0])
    assert (term["exitCode"], term["startedAt"]) == (0, started_at)


def test_a_pod_whose_image_has_no_host_mapping_waits_with_err_image_pull(cluster: Cluster, ns: str) -> None:
    pod = {
        "metadata": {"name": "unknown", "labels": {FINETUNE_JOB_LABEL: "t"}},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "c", "image": "registry.invalid/nothing:1"}],
        },
    }
    cluster.core.create_namespaced_pod(ns, pod)

    def waiting() -> dict[str, Any] | None:
        statuses = pod_of(cluster, ns, "unknown")["status"].get("containerStatuses") or []
        return statuses[0]["state"].get("waiting") if statuses else None

    state = wait_for(lambda: (w := waiting()) and w["reason"] == "ErrImagePull" and w, RUN, "ErrImagePull")
    assert "no host mapping for image 'registry.invalid/nothing:1'" in state["message"]
    assert pod_of(cluster, ns, "unknown")["status"]["phase"] == "Pending"
