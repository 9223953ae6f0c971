"""The host kubelet's sync loop: the pods it owns, their containers started, stopped and reported.

It owns every pod that carries the label it is given and is bound to a node (``spec.nodeName``, set by the
real scheduler); kwok leaves those pods alone (``e2e/cluster/kwok_stages.py``). Level-triggered, like the
kubelet's pod workers: every ``--resync-seconds`` (sooner when a pod watch sees a change) each pod is brought
one step closer to its spec from what the API and the runtime's files say, so a restart loses nothing.

* **Start** (``restartPolicy: Never`` only; other policies are run as Never): volumes first (a claim not yet
  bound or a ConfigMap not there keeps the pod Pending with a ``FailedMount`` event, and is retried); then the
  init containers one at a time in order; when all succeeded, every container at once. An init container that
  fails fails the pod and nothing else starts. A container whose ``env`` names a ConfigMap key, Secret or Secret
  key that is not there (and not ``optional``) waits with ``CreateContainerConfigError`` and is retried each
  sync, as the kubelet does.
* **Stop** (the pod has a ``deletionTimestamp``: deleted, evicted, or preempted by the scheduler, which adds
  ``DisruptionTarget`` and then deletes it): SIGTERM to every running container, SIGKILL to its process group
  once ``metadata.deletionGracePeriodSeconds`` (at least 2 s) has passed (kuberuntime ``killContainer``,
  ``minimumGracePeriodInSeconds``), then the final status with a terminal phase and the deletion finished with
  grace period 0 and the pod's UID as precondition (``pkg/kubelet/status/status_manager.go``, ``syncPod``).
* **Orphans**: containers of a pod that is gone from the API (deleted with grace 0) get SIGTERM, then SIGKILL
  after 2 s; the pod's emptyDir and configMap directories are removed once nothing runs.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from e2e.hostkubelet.images import ImageError, ImageTable, process_argv
from e2e.hostkubelet.runtime import Runtime, now
from e2e.hostkubelet.status import TERMINAL, pod_status
from e2e.hostkubelet.volumes import (
    HostPathMap,
    Reader,
    VolumeError,
    container_mounts,
    prepare_volumes,
    remove_pod_volumes,
    rewrite_arg,
    rewrite_path,
)

Obj = Mapping[str, Any]
MINIMUM_GRACE_SECONDS = 2  # kuberuntime_container.go minimumGracePeriodInSeconds
DEFAULT_GRACE_SECONDS = 30
_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.\-]*)\)")


def log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} hostkubelet: {msg}", file=sys.stderr, flush=True)


def expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` references (``$$`` is a literal ``$``; an undefined reference stays as written)."""

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _REF.sub(one, value)


def field_ref(pod: Obj, path: str) -> str:
    """``valueFrom.fieldRef.fieldPath`` (the downward API fields a container env may name)."""
    meta, spec = pod["metadata"], pod["spec"]
    m = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if m:
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    simple = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.podIP": "",
        "status.hostIP": "",
    }
    if path not in simple:
        raise ImageError(
            "CreateContainerConfigError", f"fieldRef {path!r} is not supported by the host kubelet"
        )
    return str(simple[path] or "")


def _json(response: Any) -> dict[str, Any]:
    return dict(json.loads(response.data))


class HostKubelet:
    def __init__(
        self,
        core: client.CoreV1Api,
        label: str,
        images: ImageTable,
        runtime: Runtime,
        host_paths: HostPathMap,
    ) -> None:
        self.core = core
        self.label = label
        self.images = images
        self.runtime = runtime
        self.host_paths = host_paths
        self.reader = Reader(pvc=self._pvc, pv=self._pv, config_map=self._config_map)
        self.patched: dict[str, dict[str, Any]] = {}  # uid -> the status last written (skip equal writes)
        self.deleted: set[str] = set()  # uids whose final deletion was sent
        self.events: set[tuple[str, str, str]] = set()  # (uid, reason, what): one event each
        self.wake = threading.Event()

    # ---- API reads -------------------------------------------------------------------------------------------

    def _pvc(self, ns: str, name: str) -> Obj:
        return _json(self.core.read_namespaced_persistent_volume_claim(name, ns, _preload_content=False))

    def _pv(self, name: str) -> Obj:
        return _json(self.core.read_persistent_volume(name, _preload_content=False))

    def _config_map(self, ns: str, name: str) -> Obj | None:
        try:
            return _json(self.core.read_namespaced_config_map(name, ns, _preload_content=False))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def _secret(self, ns: str, name: str) -> Obj | None:
        try:
            return _json(self.core.read_namespaced_secret(name, ns, _preload_content=False))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def pods(self) -> list[dict[str, Any]]:
        resp = self.core.list_pod_for_all_namespaces(label_selector=self.label, _preload_content=False)
        return list(_json(resp)["items"])

    # ---- the loop --------------------------------------------------------------------------------------------

    def run(self, stop: threading.Event, resync: float) -> None:
        threading.Thread(target=self._watch, args=(stop,), daemon=True).start()
        log(f"running pods labelled {self.label}; state in {self.runtime.root}")
        while not stop.is_set():
            try:
                self.sync_all()
            except Exception as exc:  # an API hiccup: the next round retries
                log(f"sync failed: {exc!r}")
            self.wake.wait(resync)
            self.wake.clear()

    def _watch(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                for _ in watch.Watch().stream(
                    self.core.list_pod_for_all_namespaces, label_selector=self.label, timeout_seconds=30
                ):
                    self.wake.set()
                    if stop.is_set():
                        return
            except Exception:
                time.sleep(1)

    def sync_all(self) -> None:
        pods = self.pods()
        for pod in pods:
            if pod["spec"].get("nodeName"):
                try:
                    self.sync_pod(pod)
                except ApiException as exc:
                    if exc.status not in (404, 409):
                        raise
        self.clean_orphans({p["metadata"]["uid"] for p in pods})
        self.runtime.reap()

    def sync_pod(self, pod: dict[str, Any]) -> None:
        pdir = self.runtime.pod_dir(pod)
        if pod["metadata"].get("deletionTimestamp"):
            self.terminate(pod, pdir)
            return
        if (pod.get("status") or {}).get("phase") in TERMINAL:
            return
        try:
            volumes = prepare_volumes(pod, pdir, self.reader, self.host_paths)
        except VolumeError as exc:
            self.event(pod, "Warning", "FailedMount", f"MountVolume.SetUp failed for {exc}", key=str(exc))
            self.write_status(
                pod, pod_status(pod, self.states(pod, pdir), sandbox=False, waiting={}, now=now())
            )
            return
        waiting = self.advance(pod, pdir, volumes)
        self.write_status(
            pod, pod_status(pod, self.states(pod, pdir), sandbox=True, waiting=waiting, now=now())
        )

    # ---- containers ------------------------------------------------------------------------------------------

    def states(self, pod: Obj, pdir: Path) -> dict[str, Any]:
        spec = pod["spec"]
        return {
            c["name"]: self.runtime.state(pdir / c["name"], c.get("terminationMessagePolicy") or "File")
            for c in [*(spec.get("initContainers") or []), *spec["containers"]]
        }

    def advance(self, pod: Obj, pdir: Path, volumes: Mapping[str, Path]) -> dict[str, tuple[str, str]]:
        """Start what is due: the next init container, or (all init containers succeeded) every container.
        Returns the waiting reasons of containers that could not be started."""
        waiting: dict[str, tuple[str, str]] = {}
        states = self.states(pod, pdir)
        for c in pod["spec"].get("initContainers") or []:
            st = states[c["name"]]
            if not st.created:
                self.start(pod, c, pdir, volumes, waiting)
                return waiting
            if st.running or st.exit_code != 0:
                return waiting
        for c in pod["spec"]["containers"]:
            if not states[c["name"]].created:
                self.start(pod, c, pdir, volumes, waiting)
        return waiting

    def start(
        self,
        pod: Obj,
        c: Obj,
        pdir: Path,
        volumes: Mapping[str, Path],
        waiting: dict[str, tuple[str, str]],
    ) -> None:
        cdir = pdir / c["name"]
        try:
            argv, env, cwd = self.process(pod, c, pdir, volumes)
        except ImageError as exc:
            waiting[c["name"]] = (exc.reason, exc.message)
            self.event(pod, "Warning", "Failed", exc.message, key=c["name"])
            return
        self.runtime.start(cdir, argv, env, cwd)
        log(f"{self.ref(pod)}: started {c['name']}: {' '.join(argv)} (log {cdir / '0.log'})")
        self.event(
            pod, "Normal", "Started", f"Started container {c['name']} as a host process", key=c["name"]
        )

    def process(
        self, pod: Obj, c: Obj, pdir: Path, volumes: Mapping[str, Path]
    ) -> tuple[list[str], dict[str, str], Path]:
        """argv, environment and working directory of the container's host process."""
        image = self.images.resolve(c["image"])
        declared: dict[str, str] = {}
        for e in c.get("env") or []:
            value = self.env_value(pod, e, declared)
            if value is not None:
                declared[e["name"]] = value
        mounts = container_mounts(c, volumes, pdir / c["name"] / "termination-log")
        home = pdir / "home"
        home.mkdir(exist_ok=True)
        env = {**image.config.env, "PATH": image.path, "HOME": str(home), "HOSTNAME": pod["metadata"]["name"]}
        env.update({k: rewrite_path(v, mounts) for k, v in declared.items()})
        argv = process_argv(image.config, c.get("command"), c.get("args"))
        argv = [rewrite_arg(expand(a, declared), mounts) for a in argv]
        workdir = c.get("workingDir") or image.config.workdir or ""
        cwd = (
            Path(rewrite_path(workdir, mounts))
            if workdir and rewrite_path(workdir, mounts) != workdir
            else home
        )
        return argv, env, cwd

    def env_value(self, pod: Obj, e: Obj, declared: Mapping[str, str]) -> str | None:
        """One ``env`` entry's value; None when an optional source is missing (the variable is not set).

        As the kubelet's ``makeEnvironmentVariables`` (kubernetes/kubernetes ``pkg/kubelet/kubelet_pods.go``):
        a ConfigMap or Secret key that is not there, or a Secret that is not there, is an error unless the
        reference is ``optional``; the error keeps the container from being created
        (``CreateContainerConfigError``, its message as the waiting message) and is retried on the next sync,
        so the container starts once the Secret is fixed."""
        source = e.get("valueFrom")
        if not source:
            return expand(str(e.get("value", "")), declared)
        ns = pod["metadata"]["namespace"]
        if "fieldRef" in source:
            return field_ref(pod, source["fieldRef"]["fieldPath"])
        if "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            data = (self._config_map(ns, ref["name"]) or {}).get("data") or {}
            if ref["key"] in data:
                return str(data[ref["key"]])
            if ref.get("optional"):
                return None
            raise ImageError(
                "CreateContainerConfigError",
                f"couldn't find key {ref['key']} in ConfigMap {ns}/{ref['name']}",
            )
        if "secretKeyRef" in source:
            return self._secret_value(ns, source["secretKeyRef"])
        raise ImageError(
            "CreateContainerConfigError",
            f"env {e['name']}: only value, fieldRef, configMapKeyRef and secretKeyRef are supported by the host "
            "kubelet",
        )

    def _secret_value(self, ns: str, ref: Obj) -> str | None:
        secret = self._secret(ns, ref["name"])
        if secret is None:
            if ref.get("optional"):
                return None
            raise ImageError("CreateContainerConfigError", f'secret "{ref["name"]}" not found')
        data = secret.get("data") or {}  # base64, as the API serves it (stringData is folded in on write)
        if ref["key"] in data:
            return base64.b64decode(data[ref["key"]]).decode("utf-8")
        if ref.get("optional"):
            return None
        raise ImageError(
            "CreateContainerConfigError", f"couldn't find key {ref['key']} in Secret {ns}/{ref['name']}"
        )

    # ---- stopping --------------------------------------------------------------------------------------------

    def stop_containers(self, pdir: Path, grace: float, on_term: Callable[[str], None]) -> bool:
        """SIGTERM, then SIGKILL after the grace period; True once nothing runs."""
        running = False
        for cdir in sorted(p for p in pdir.iterdir() if (p / "spec.json").exists()):
            st = self.runtime.state(cdir)
            if not st.running:
                continue
            running = True
            if st.term_sent_at is None:
                self.runtime.signal(cdir, signal.SIGTERM)
                on_term(cdir.name)
            elif time.time() >= st.term_sent_at + max(grace, MINIMUM_GRACE_SECONDS):
                self.runtime.signal(cdir, signal.SIGKILL)
        return not running

    def terminate(self, pod: dict[str, Any], pdir: Path) -> None:
        meta = pod["metadata"]
        grace = meta.get("deletionGracePeriodSeconds")
        grace = DEFAULT_GRACE_SECONDS if grace is None else int(grace)

        def killing(name: str) -> None:
            log(f"{self.ref(pod)}: SIGTERM to {name} (grace {grace}s)")
            self.event(pod, "Normal", "Killing", f"Stopping container {name}", key=name)

        if not self.stop_containers(pdir, grace, killing):
            return
        status = pod_status(pod, self.states(pod, pdir), sandbox=False, waiting={}, now=now(), terminal=True)
        self.write_status(pod, status)
        if meta["uid"] not in self.deleted:
            body = client.V1DeleteOptions(
                grace_period_seconds=0, preconditions=client.V1Preconditions(uid=meta["uid"])
            )
            with contextlib.suppress(ApiException):
                self.core.delete_namespaced_pod(meta["name"], meta["namespace"], body=body)
            self.deleted.add(meta["uid"])
            log(f"{self.ref(pod)}: stopped, phase {status['phase']}; deletion finished")

    def clean_orphans(self, live: set[str]) -> None:
        for pdir, ident in self.runtime.pod_dirs():
            if ident["uid"] in live or (pdir / "removed").exists():
                continue
            ref = f"{ident['namespace']}/{ident['name']}"

            def killing(name: str, ref: str = ref) -> None:
                log(f"{ref} (gone): SIGTERM to {name}")

            if self.stop_containers(pdir, 0, killing):
                remove_pod_volumes(pdir)
                (pdir / "removed").write_text(now() + "\n")
                log(f"{ref} (gone): cleaned up")

    # ---- API writes ------------------------------------------------------------------------------------------

    def write_status(self, pod: Obj, status: dict[str, Any]) -> None:
        uid = pod["metadata"]["uid"]
        if self.patched.get(uid) == status:
            return
        old = (pod.get("status") or {}).get("phase")
        self.core.patch_namespaced_pod_status(
            pod["metadata"]["name"], pod["metadata"]["namespace"], {"status": status}
        )
        self.patched[uid] = status
        if old != status["phase"]:
            log(f"{self.ref(pod)}: phase {old} -> {status['phase']}")

    def event(self, pod: Obj, type_: str, reason: str, message: str, key: str = "") -> None:
        meta = pod["metadata"]
        if (meta["uid"], reason, key) in self.events:
            return
        self.events.add((meta["uid"], reason, key))
        stamp = now()
        body = {
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
            },
            "reason": reason,
            "message": message,
            "type": type_,
            "source": {"component": "hostkubelet", "host": pod["spec"].get("nodeName", "")},
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        with contextlib.suppress(ApiException):
            self.core.create_namespaced_event(meta["namespace"], body)

    @staticmethod
    def ref(pod: Obj) -> str:
        return f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"
