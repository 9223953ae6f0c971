"""The pod status the kubelet reports, computed from the pod and what the runtime knows of its containers.

Pure: no API, no files. The rules are the kubelet's for ``restartPolicy: Never`` (the Job pods this host kubelet
runs), each cited where it is written:

* container states (kubernetes ``pkg/kubelet/kubelet_pods.go``, ``convertToAPIContainerStatuses``): a container
  not created yet is ``waiting`` with ``PodInitializing`` when the pod has init containers, else
  ``ContainerCreating``; a started one ``running``; an exited one ``terminated`` with its exit code, the
  runtime's reason (containerd ``internal/cri/server/helpers.go``: ``Completed`` for 0, ``Error`` otherwise,
  ``StartError`` with 128 when it could not start) and the termination message;
* termination messages: each at most 12 KiB / (containers + init containers) bytes, its start kept
  (``pkg/kubelet/status/status_manager.go``, ``normalizeStatus``; ``MaxPodTerminationMessageLogLength``);
* phase (``kubelet_pods.go``, ``getPhase``): an init container that failed fails the pod; the pod is Pending
  until every init container succeeded and while a container waits; Running while one runs; then Succeeded
  when every container exited 0, else Failed. A pod the kubelet finishes after its deletion gets a terminal
  phase: Failed unless it Succeeded (KEP-3329, ``kubelet_pods.go`` ``generateAPIPodStatus``);
* conditions (``pkg/kubelet/status/generate.go``): ``PodReadyToStartContainers``, ``Initialized``
  (``ContainersNotInitialized``: "containers with incomplete status: [..]"), ``ContainersReady`` and
  ``Ready`` (``ContainersNotReady``: "containers with unready status: [..]", ``PodCompleted`` once the pod
  Succeeded). No probes run: a running container is ready. ``lastTransitionTime`` changes only with the status.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from e2e.hostkubelet.runtime import ContainerState

MAX_POD_TERMINATION_MESSAGE_LOG_LENGTH = 1024 * 12  # kubernetes pkg/kubelet/container/runtime.go
TERMINAL = ("Succeeded", "Failed")
OWN_CONDITIONS = ("PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready")

Obj = Mapping[str, Any]


def truncate(message: str, limit: int) -> str:
    data = message.encode()
    return message if len(data) <= limit else data[:limit].decode(errors="ignore")


def container_status(
    spec: Obj,
    state: ContainerState,
    *,
    container_id: str,
    init: bool,
    waiting: tuple[str, str],
    budget: int,
) -> dict[str, Any]:
    """One entry of ``initContainerStatuses``/``containerStatuses``."""
    out: dict[str, Any] = {"name": spec["name"], "image": spec["image"], "imageID": "", "restartCount": 0}
    if state.exited:
        assert state.exit_code is not None
        term: dict[str, Any] = {
            "exitCode": state.exit_code,
            "reason": state.reason or ("Completed" if state.exit_code == 0 else "Error"),
            "finishedAt": state.finished_at,
            "containerID": container_id,
        }
        if state.started_at:
            term["startedAt"] = state.started_at
        if state.message:
            term["message"] = truncate(state.message, budget)
        ready = init and state.exit_code == 0  # a completed init container is reported ready
        return {
            **out,
            "containerID": container_id,
            "state": {"terminated": term},
            "ready": ready,
            "started": False,
        }
    if state.running and state.started_at:
        running = {"running": {"startedAt": state.started_at}}
        return {**out, "containerID": container_id, "state": running, "ready": not init, "started": True}
    reason, message = waiting
    wait: dict[str, Any] = {"reason": reason}
    if message:
        wait["message"] = message
    return {**out, "state": {"waiting": wait}, "ready": False, "started": False}


def _state(status: Obj) -> str:
    return str(next(iter(status["state"])))  # waiting | running | terminated


def pod_phase(inits: Sequence[Obj], mains: Sequence[Obj]) -> str:
    for s in inits:
        term = s["state"].get("terminated")
        if term and term["exitCode"] != 0:
            return "Failed"
        if not term:
            return "Pending"
    states = [_state(s) for s in mains]
    if "waiting" in states:
        return "Pending"
    if "running" in states:
        return "Running"
    return "Succeeded" if all(s["state"]["terminated"]["exitCode"] == 0 for s in mains) else "Failed"


def _condition(type_: str, ok: bool, reason: str = "", message: str = "") -> dict[str, Any]:
    c: dict[str, Any] = {"type": type_, "status": "True" if ok else "False"}
    if not ok:
        c.update(reason=reason, message=message)
    return c


def pod_conditions(
    phase: str, sandbox: bool, inits: Sequence[Obj], mains: Sequence[Obj]
) -> list[dict[str, Any]]:
    incomplete = [s["name"] for s in inits if (s["state"].get("terminated") or {}).get("exitCode", -1) != 0]
    unready = [s["name"] for s in mains if not s["ready"]]
    if phase == "Succeeded":
        ready = _condition("Ready", False, "PodCompleted")
        containers = _condition("ContainersReady", False, "PodCompleted")
    else:
        msg = f"containers with unready status: [{' '.join(unready)}]"
        ready = _condition("Ready", not unready, "ContainersNotReady", msg)
        containers = _condition("ContainersReady", not unready, "ContainersNotReady", msg)
    return [
        _condition("PodReadyToStartContainers", sandbox and phase not in TERMINAL),
        _condition(
            "Initialized",
            not incomplete,
            "ContainersNotInitialized",
            f"containers with incomplete status: [{' '.join(incomplete)}]",
        ),
        ready,
        containers,
    ]


def keep_transition_times(new: list[dict[str, Any]], old: Sequence[Obj], now: str) -> list[dict[str, Any]]:
    before = {c.get("type"): c for c in old}
    for c in new:
        prev = before.get(c["type"])
        same = prev is not None and prev.get("status") == c["status"] and prev.get("lastTransitionTime")
        c["lastTransitionTime"] = prev["lastTransitionTime"] if same and prev else now
    return new


def pod_status(
    pod: Obj,
    states: Mapping[str, ContainerState],
    *,
    sandbox: bool,
    waiting: Mapping[str, tuple[str, str]],
    now: str,
    terminal: bool = False,
) -> dict[str, Any]:
    """``status`` of the pod: phase, the four kubelet conditions, container statuses, startTime."""
    spec, meta = pod["spec"], pod["metadata"]
    init_specs, main_specs = spec.get("initContainers") or [], spec.get("containers") or []
    budget = MAX_POD_TERMINATION_MESSAGE_LOG_LENGTH // max(1, len(init_specs) + len(main_specs))
    default = ("PodInitializing", "") if init_specs else ("ContainerCreating", "")

    def one(c: Obj, init: bool) -> dict[str, Any]:
        return container_status(
            c,
            states.get(c["name"], ContainerState()),
            container_id=f"hostkubelet://{meta['uid']}/{c['name']}",
            init=init,
            waiting=waiting.get(c["name"], default),
            budget=budget,
        )

    inits = [one(c, True) for c in init_specs]
    mains = [one(c, False) for c in main_specs]
    phase = pod_phase(inits, mains)
    if terminal and phase not in TERMINAL:
        phase = "Failed"
    old = (pod.get("status") or {}).get("conditions") or []
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": keep_transition_times(pod_conditions(phase, sandbox, inits, mains), old, now),
        "containerStatuses": mains,
        "startTime": (pod.get("status") or {}).get("startTime") or now,
    }
    if inits:
        status["initContainerStatuses"] = inits
    return status
