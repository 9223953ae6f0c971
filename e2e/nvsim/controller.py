"""The simulator's Kubernetes side: plays mig-manager, the device plugin's config-manager and GFD per node.

All state lives in the cluster (node labels/annotations, ConfigMaps), so the simulator can be restarted at any
time. Annotations it owns on a node:

* ``nvsim.slm.io/hardware``            the node's GPUs (product, count, PCI id, default MIG strategy); written
                                       once from the GFD labels when the node manifest does not carry it.
* ``nvsim.slm.io/mig-layout``          the simulated hardware state: per GPU the MIG mode and its instances
                                       with their placements (JSON list, one entry per GPU).
* ``nvsim.slm.io/mig-config-observed`` the last mig.config value (+ content hash) mig-manager finished with.
* ``nvsim.slm.io/mig-config-pending``  the config being applied while the state label is ``pending``.
* ``nvsim.slm.io/device-plugin-config`` the device-plugin config in effect (config-manager's copy).
* ``nvsim.slm.io/device-plugin-status`` ``ok`` or why the simulated device plugin is not serving.

What it follows, per component (each rule in :mod:`.migparted` and :mod:`.deviceplugin` cites its file too):

* mig-manager (NVIDIA/mig-parted ``cmd/nvidia-mig-manager/main.go``, ``pkg/mig/reconfigure/reconfigure.go``):
  reads its config file from a **mounted ConfigMap volume** (gpu-operator ``controllers/object_controls.go``:
  ``CONFIG_FILE=/mig-parted-config/config.yaml``), which the kubelet refreshes only on its periodic sync, so the
  simulator sees the mig-parted ConfigMap as it was ``config_volume_delay_seconds`` ago; acts only when the
  ``nvidia.com/mig.config`` label **changes** (or when its pod starts): it validates the name the way
  ``nvidia-mig-parted assert --valid-config`` does, and on ``failed`` it waits for the next label change
  (removing the state label, fixing the ConfigMap or a remount of the volume does not make it retry);
* mig-manager's pods (``Settings.mig_manager_pods``, off by default): stand-ins for the GPU Operator's DaemonSet
  ``nvidia-mig-manager`` (gpu-operator ``assets/state-mig-manager/0600_daemonset.yaml``: label
  ``app: nvidia-mig-manager``, the mig-parted ConfigMap as volume ``mig-parted-config`` at ``/mig-parted-config``;
  on the nodes labelled ``nvidia.com/gpu.deploy.mig-manager=true``), one per node whose mig-manager the simulator
  plays, named ``nvidia-mig-manager-<node>``; the simulator creates the missing ones and deletes those whose node
  is gone or no longer labelled, as the DaemonSet controller would (kwok marks them Running; nothing runs). A
  change of such a pod that the kubelet counts (kubernetes v1.36.3 ``pkg/kubelet/config/config.go``
  ``podsDifferSemantically``, lines 345-354: spec, labels, annotations other than the kubelet's local ones,
  deletion timestamp and grace period) makes the kubelet run ``SyncPod``, which calls
  ``volumeManager.WaitForAttachAndMount`` (``pkg/kubelet/kubelet.go`` line 2196), which calls
  ``desiredStateOfWorldPopulator.ReprocessPod`` (``pkg/kubelet/volumemanager/volume_manager.go`` lines 411-415):
  volumes that require a remount (``pkg/volume/configmap/configmap.go`` ``RequiresRemount``: true) are set up
  again from the kubelet's watch-based ConfigMap cache (``pkg/kubelet/util/manager/watch_based_manager.go``),
  i.e. with the content the API server has then. So node N's mig-manager sees the ConfigMap as of
  max(now - ``config_volume_delay_seconds``, its pod's last such change, ordered by resourceVersion); a new pod
  mounts the current content; without a pod on the node, the delay alone. The remount is taken as instant: a
  pod change written before the label change is in effect when mig-manager reads the file (the kubelet's
  populator and reconciler loops take ~0.1 s). A new pod on a node (a deleted one re-created) is a mig-manager
  start: it applies the label's config again;
* the device plugin's config-manager (NVIDIA/k8s-device-plugin ``cmd/config-manager/main.go``): follows the
  ``nvidia.com/device-plugin.config`` label; a missing key keeps the previous config;
* the device plugin and GFD (:mod:`.deviceplugin`): ``MIG_STRATEGY`` in the container environment (the
  simulated GPU Operator install's ``mig.strategy``, ``Settings.mig_strategy_env``) overrides the config file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from . import deviceplugin as dp
from . import migparted as mp
from .devices import device_by_product as gpu_by_product

log = logging.getLogger("nvsim")

MIG_CONFIG = "nvidia.com/mig.config"
MIG_STATE = "nvidia.com/mig.config.state"
DP_CONFIG = "nvidia.com/device-plugin.config"
MIG_MANAGER_DEPLOY = "nvidia.com/gpu.deploy.mig-manager"
GPU_PRESENT = "nvidia.com/gpu.present"
# mig-manager pauses these operands while it reconfigures (mig-parted pkg/mig/reconfigure, facts section 3.2)
PAUSABLE = tuple(
    f"nvidia.com/gpu.deploy.{c}"
    for c in ("device-plugin", "gpu-feature-discovery", "dcgm-exporter", "dcgm", "nvsm", "client")
)
PAUSED = "paused-for-mig-change"

ANN = "nvsim.slm.io/"
HARDWARE = ANN + "hardware"
LAYOUT = ANN + "mig-layout"
MIG_OBSERVED = ANN + "mig-config-observed"
MIG_PENDING = ANN + "mig-config-pending"
DP_STATE = ANN + "device-plugin-config"
DP_STATUS = ANN + "device-plugin-status"

MIG_COMPONENT = "nvsim/nvidia-mig-manager"
DP_COMPONENT = "nvsim/nvidia-device-plugin"

# the GPU Operator's mig-manager DaemonSet (gpu-operator assets/state-mig-manager/0600_daemonset.yaml)
MIG_MANAGER_APP = "nvidia-mig-manager"
MIG_MANAGER_SELECTOR = f"app={MIG_MANAGER_APP}"
MIG_MANAGER_IMAGE = "nvcr.io/nvidia/cloud-native/k8s-mig-manager:v0.13.0"
MIG_MANAGER_CONFIG_DIR = "/mig-parted-config"
# annotations the kubelet keeps on its own copy and leaves out of the comparison (kubernetes v1.36.3
# pkg/kubelet/config/config.go localAnnotations, lines 282-286)
KUBELET_LOCAL_ANNOTATIONS = (
    "kubernetes.io/config.source",
    "kubernetes.io/config.mirror",
    "kubernetes.io/config.seen",
)


@dataclass(frozen=True)
class Settings:
    namespace: str = "gpu-operator"
    mig_config_map: str = "slm-mig-parted-config"
    mig_config_key: str = "config.yaml"
    device_plugin_config_map: str = "slm-device-plugin-config"
    apply_delay_seconds: float = 1.0
    resync_seconds: int = 30
    # ClusterPolicy spec.mig.strategy of the simulated GPU Operator: the device plugin's and GFD's MIG_STRATEGY
    # env (None: unset, each node's config decides)
    mig_strategy_env: str | None = None
    # how old the mig-parted ConfigMap content mig-manager sees is (kubelet sync of a mounted ConfigMap)
    config_volume_delay_seconds: float = 0.0
    # keep a stand-in mig-manager pod per node mig-manager runs on; a change of the pod remounts the ConfigMap
    mig_manager_pods: bool = False


def _json(text: str | None) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def _dump(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def _rv(value: str | None) -> int | None:
    """A resourceVersion as a number: etcd's revision, ordered across all objects (the API calls it opaque; the
    simulator runs against etcd-backed API servers and falls back to its own clock where it is not a number)."""
    try:
        return int(value) if value else None
    except ValueError:
        return None


def mig_manager_pod_name(node: str) -> str:
    """``nvidia-mig-manager-<node>``; a name over 253 characters (a DNS subdomain, the limit of a pod name) is cut
    and ends in a hash of the node's name instead."""
    name = f"{MIG_MANAGER_APP}-{node}"
    if len(name) <= 253:
        return name
    digest = hashlib.sha256(node.encode()).hexdigest()[:10]
    return f"{name[: 253 - 11].rstrip('.-')}-{digest}"


@dataclass(frozen=True)
class _Version:
    """One content of the mig-parted config file: when the simulator first saw it (monotonic) and the
    resourceVersion that wrote it (None: unknown)."""

    seen: float
    rv: int | None
    text: str | None


@dataclass(frozen=True)
class _PodSeen:
    node: str
    uid: str
    rv: int | None
    semantic: str  # what podsDifferSemantically compares
    deleting: bool


@dataclass(frozen=True)
class _Refresh:
    """The last remount of a node's mig-parted volume: when the simulator saw the pod change (monotonic), and
    the pod's resourceVersion then."""

    at: float
    rv: int | None

    def covers(self, v: _Version) -> bool:
        """Whether the remount shows ``v`` (written before the pod change)."""
        if self.rv is not None and v.rv is not None:
            return v.rv <= self.rv
        return v.seen <= self.at


def _base_product(label: str) -> str:
    base = label.removesuffix("-SHARED")
    cut = base.find("-MIG-")
    return base[:cut] if cut > 0 else base


class _Queue:
    """Node names with a due time; ``add`` keeps the earliest."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._due: dict[str, float] = {}

    def add(self, name: str, delay: float = 0.0) -> None:
        due = time.monotonic() + delay
        with self._cv:
            if name not in self._due or due < self._due[name]:
                self._due[name] = due
                self._cv.notify()

    def get(self, stop: threading.Event) -> str | None:
        with self._cv:
            while not stop.is_set():
                if self._due:
                    name, due = min(self._due.items(), key=lambda kv: kv[1])
                    wait = due - time.monotonic()
                    if wait <= 0:
                        del self._due[name]
                        return name
                    self._cv.wait(min(wait, 1.0))
                else:
                    self._cv.wait(1.0)
        return None


class Simulator:
    def __init__(self, api: client.ApiClient, settings: Settings) -> None:
        self.core = client.CoreV1Api(api)
        self.s = settings
        self.queue = _Queue()
        self.stop = threading.Event()
        self.nodes: set[str] = set()
        self._unknown_products: set[str] = set()
        self._lock = threading.Lock()  # the mig-parted versions and the pods (watch threads and worker)
        self._mig_versions: list[_Version] = []  # oldest first; seen and rv both increase
        self._mig_rv = -1  # the resourceVersion the mig-parted ConfigMap is known at
        self._looked_at: set[str] = set()  # nodes mig-manager has looked at since this process started
        self._pods: dict[str, _PodSeen] = {}  # mig-manager pods by name
        self._pods_listed = False  # the pod watch has listed once (pods there before are no news)
        self._refreshed: dict[str, _Refresh] = {}  # node -> last remount of its mig-manager's volume

    # ----------------------------------------------------------------------------------------------------------
    # loops

    def run(self) -> None:
        self._ensure_namespace()
        threads = [
            threading.Thread(target=self._watch_nodes, name="watch-nodes", daemon=True),
            threading.Thread(target=self._watch_config_maps, name="watch-configmaps", daemon=True),
            threading.Thread(target=self._work, name="worker", daemon=True),
        ]
        if self.s.mig_manager_pods:
            threads.append(threading.Thread(target=self._watch_pods, name="watch-pods", daemon=True))
        for t in threads:
            t.start()
        log.info(
            "started: namespace=%s mig-config=%s[%s] device-plugin-config=%s apply-delay=%ss "
            "config-volume-delay=%ss mig-manager-pods=%s",
            self.s.namespace,
            self.s.mig_config_map,
            self.s.mig_config_key,
            self.s.device_plugin_config_map,
            self.s.apply_delay_seconds,
            self.s.config_volume_delay_seconds,
            self.s.mig_manager_pods,
        )
        while not self.stop.wait(0.5):
            pass
        log.info("stopped")

    def _ensure_namespace(self) -> None:
        try:
            self.core.read_namespace(self.s.namespace)
        except ApiException as e:
            if e.status != 404:
                raise
            body = client.V1Namespace(metadata=client.V1ObjectMeta(name=self.s.namespace))
            try:
                self.core.create_namespace(body)
                log.info("created namespace %s", self.s.namespace)
            except ApiException as e2:
                if e2.status != 409:
                    raise

    def _list_and_watch(
        self,
        what: str,
        list_fn: Callable[..., Any],
        listed: Callable[[Any], None],
        event: Callable[[str, Any], None],
        *args: Any,
        **kw: Any,
    ) -> None:
        """List, then watch from the list's resourceVersion until the resync period ends; list again then, after
        a 410 Gone and after a dropped connection. ``listed`` gets each list, ``event`` each watch event."""
        while not self.stop.is_set():
            try:
                items = list_fn(*args, **kw)
                listed(items)
                stream = watch.Watch().stream(
                    list_fn,
                    *args,
                    resource_version=items.metadata.resource_version,
                    timeout_seconds=self.s.resync_seconds,
                    _request_timeout=self.s.resync_seconds + 15,
                    **kw,
                )
                for ev in stream:
                    event(ev["type"], ev["object"])
                    if self.stop.is_set():
                        return
            except ApiException as e:
                if e.status != 410:
                    log.warning("%s watch: %s %s", what, e.status, e.reason)
                    self.stop.wait(1)
            except Exception as e:  # connection drops etc.: relist
                log.warning("%s watch: %s", what, e)
                self.stop.wait(1)

    def _watch_nodes(self) -> None:
        def listed(nodes: Any) -> None:
            self.nodes = {n.metadata.name for n in nodes.items}
            for name in self.nodes:  # resync
                self.queue.add(name)

        def event(type_: str, obj: Any) -> None:
            name = obj.metadata.name
            if type_ == "DELETED":
                self.nodes.discard(name)
                if self.s.mig_manager_pods:
                    self.queue.add(name)  # its mig-manager pod goes
            else:
                self.nodes.add(name)
                self.queue.add(name)

        self._list_and_watch("node", self.core.list_node, listed, event)

    def _watch_config_maps(self) -> None:
        names = {self.s.mig_config_map, self.s.device_plugin_config_map}

        def listed(cms: Any) -> None:
            mig = [cm for cm in cms.items if cm.metadata.name == self.s.mig_config_map]
            self._record_mig_content(
                _rv(mig[0].metadata.resource_version if mig else cms.metadata.resource_version),
                (mig[0].data or {}).get(self.s.mig_config_key) if mig else None,
                _rv(cms.metadata.resource_version),
            )

        def event(type_: str, obj: Any) -> None:
            if obj.metadata.name == self.s.mig_config_map and type_ != "BOOKMARK":
                text = None if type_ == "DELETED" else (obj.data or {}).get(self.s.mig_config_key)
                self._record_mig_content(_rv(obj.metadata.resource_version), text)
            if obj.metadata.name in names:
                log.info("configmap %s/%s %s", self.s.namespace, obj.metadata.name, type_)
                for name in list(self.nodes):
                    self.queue.add(name)

        self._list_and_watch(
            "configmap", self.core.list_namespaced_config_map, listed, event, self.s.namespace
        )

    def _watch_pods(self) -> None:
        """The mig-manager pods of the namespace (label ``app=nvidia-mig-manager``), as the kubelet of their node
        sees them: a change ``podsDifferSemantically`` counts remounts the node's mig-parted volume."""

        def listed(pods: Any) -> None:
            names = {p.metadata.name for p in pods.items}
            for pod in pods.items:
                self._pod_seen(pod)
            with self._lock:
                gone = [n for n in self._pods if n not in names]
            for name in gone:
                self._pod_gone(name)
            self._pods_listed = True

        def event(type_: str, obj: Any) -> None:
            if type_ == "DELETED":
                self._pod_gone(obj.metadata.name)
            elif type_ in ("ADDED", "MODIFIED"):
                self._pod_seen(obj)

        self._list_and_watch(
            "pod",
            self.core.list_namespaced_pod,
            listed,
            event,
            self.s.namespace,
            label_selector=MIG_MANAGER_SELECTOR,
        )

    def _pod_seen(self, pod: client.V1Pod) -> None:
        """Record a mig-manager pod as listed, watched or read. A new pod, or a change the kubelet counts
        (``podsDifferSemantically``), remounts its node's volume now; pods already there when this process
        started are no news (content from before the start counts as synced anyway)."""
        meta = pod.metadata
        node = (pod.spec and pod.spec.node_name) or ""
        if not node:
            return
        annotations = {
            k: v for k, v in (meta.annotations or {}).items() if k not in KUBELET_LOCAL_ANNOTATIONS
        }
        semantic = _dump(
            {
                "spec": self.core.api_client.sanitize_for_serialization(pod.spec),
                "labels": meta.labels or {},
                "annotations": annotations,
                "deletionTimestamp": str(meta.deletion_timestamp),
                "deletionGracePeriodSeconds": meta.deletion_grace_period_seconds,
            }
        )
        rv = _rv(meta.resource_version)
        seen = _PodSeen(node, meta.uid, rv, semantic, meta.deletion_timestamp is not None)
        with self._lock:
            prev = self._pods.get(meta.name)
            if prev is not None and prev.uid == seen.uid:
                if prev.rv is not None and rv is not None and rv <= prev.rv:
                    return  # not newer than what was seen (a read overtook the watch)
                if prev.semantic == semantic:  # e.g. a status update
                    self._pods[meta.name] = seen
                    return
            self._pods[meta.name] = seen
            if prev is None and not self._pods_listed:
                return
            self._refreshed[node] = _Refresh(time.monotonic(), rv)
        if prev is None or prev.uid != seen.uid:
            # a new mig-manager pod is a mig-manager start: it applies the label's config (main.go)
            self._looked_at.discard(node)
            log.info("%s: mig-manager pod %s/%s new: it mounts the ConfigMap as it is now",
                     node, self.s.namespace, meta.name)  # fmt: skip
        else:
            log.info("%s: mig-manager pod %s/%s changed: the kubelet remounts its ConfigMap volume",
                     node, self.s.namespace, meta.name)  # fmt: skip
        self.queue.add(node)

    def _pod_gone(self, name: str) -> None:
        with self._lock:
            prev = self._pods.pop(name, None)
            if prev is None:
                return
            if not any(p.node == prev.node for p in self._pods.values()):
                self._refreshed.pop(prev.node, None)
        log.info("%s: mig-manager pod %s/%s deleted", prev.node, self.s.namespace, name)
        self.queue.add(prev.node)

    def _work(self) -> None:
        while True:
            name = self.queue.get(self.stop)
            if name is None:
                return
            try:
                again = self.reconcile(name)
            except ApiException as e:
                log.warning("%s: API error %s %s; retrying", name, e.status, e.reason)
                again = 1.0
            except Exception:
                log.exception("%s: reconcile failed; retrying", name)
                again = 2.0
            if again is not None:
                self.queue.add(name, again)

    # ----------------------------------------------------------------------------------------------------------
    # reconcile

    def reconcile(self, name: str) -> float | None:
        """Bring one node's labels/status in line with its selected configs. Returns seconds until the next
        look (a pending MIG change), or None."""
        try:
            node = self.core.read_node(name)
        except ApiException as e:
            if e.status == 404:
                return self._sync_mig_manager_pod(name, False) if self.s.mig_manager_pods else None
            raise
        labels: dict[str, str] = dict(node.metadata.labels or {})
        ann: dict[str, str] = dict(node.metadata.annotations or {})
        label_patch: dict[str, str | None] = {}
        ann_patch: dict[str, str | None] = {}
        events: list[tuple[str, str, str, str]] = []  # (type, reason, message, component)

        found = self._hardware(name, labels, ann, ann_patch)
        # mig-manager runs where the GPU Operator deploys it (its DaemonSet's node selector)
        runs_mig_manager = found is not None and labels.get(MIG_MANAGER_DEPLOY) == "true"
        pod_again = self._sync_mig_manager_pod(name, runs_mig_manager) if self.s.mig_manager_pods else None
        if found is None:
            return pod_again
        hw, default_strategy = found
        layout = self._layout(name, ann, hw)
        dp_data = self._read_config_map(self.s.device_plugin_config_map)
        sharing, dp_error = self._select_device_plugin_config(name, labels, ann, dp_data, ann_patch, events)

        again = None
        if runs_mig_manager and labels.get(MIG_CONFIG):
            again, layout = self._mig_manager(
                node, hw, default_strategy, labels, ann, layout, (sharing, dp_error),
                lambda: self._mounted_mig_config(name), label_patch, ann_patch, events,
            )  # fmt: skip

        view = dp.node_view(hw, layout, sharing, default_strategy, dp_error, self.s.mig_strategy_env)
        status = view.problem or "ok"
        if ann.get(DP_STATUS) != status:
            ann_patch[DP_STATUS] = status
            if view.problem:
                events.append(("Warning", "DevicePluginFailed", view.problem, DP_COMPONENT))
                log.info("%s: device plugin not serving: %s", name, view.problem)
            elif DP_STATUS in ann:
                log.info("%s: device plugin serving again", name)
        self._publish(node, labels, ann, view, label_patch, ann_patch)
        for ev in events:
            self._event(node, *ev)
        if again is None or pod_again is None:
            return again if pod_again is None else pod_again
        return min(again, pod_again)

    # ---- mig-manager's pod (the GPU Operator's DaemonSet) -----------------------------------------------------

    def _sync_mig_manager_pod(self, node: str, wanted: bool) -> float | None:
        """Create the node's mig-manager pod when it should have one and has none; delete it when it should not
        (its node gone or no longer selected), as the DaemonSet controller does (kubernetes v1.36.3
        ``pkg/controller/daemon/daemon_controller.go`` ``podsShouldBeOnNode``). Returns seconds until the next
        try when the API refused."""
        name = mig_manager_pod_name(node)
        with self._lock:
            on_node = [(n, p) for n, p in self._pods.items() if p.node == node]
        if wanted and not on_node and not self._pods_listed:
            return 0.5  # the pod watch has not listed yet: the pod may well be there
        try:
            if wanted and not on_node:
                self.core.create_namespaced_pod(self.s.namespace, self._mig_manager_pod(node, name))
                log.info("%s: created mig-manager pod %s/%s", node, self.s.namespace, name)
            elif not wanted:
                for pod_name, seen in on_node:
                    if pod_name == name and not seen.deleting:
                        self.core.delete_namespaced_pod(name, self.s.namespace, grace_period_seconds=0)
                        log.info("%s: deleted mig-manager pod %s/%s", node, self.s.namespace, name)
        except ApiException as e:
            if e.status in (404, 409):  # already gone / already there: the watch tells
                return None
            # e.g. ServiceAccount admission before the namespace's default ServiceAccount exists
            log.warning("%s: mig-manager pod %s: %s %s; retrying", node, name, e.status, e.reason)
            return 2.0
        return None

    def _mig_manager_pod(self, node: str, name: str) -> client.V1Pod:
        """A pod like the DaemonSet's (gpu-operator assets/state-mig-manager/0600_daemonset.yaml) bound to the
        node, tolerating every taint, without resource requests."""
        volume = "mig-parted-config"
        container = client.V1Container(
            name=MIG_MANAGER_APP,
            image=MIG_MANAGER_IMAGE,
            env=[
                client.V1EnvVar(
                    name="NODE_NAME",
                    value_from=client.V1EnvVarSource(
                        field_ref=client.V1ObjectFieldSelector(field_path="spec.nodeName")
                    ),
                ),
                client.V1EnvVar(
                    name="CONFIG_FILE", value=f"{MIG_MANAGER_CONFIG_DIR}/{self.s.mig_config_key}"
                ),
            ],
            volume_mounts=[client.V1VolumeMount(name=volume, mount_path=MIG_MANAGER_CONFIG_DIR)],
        )
        return client.V1Pod(
            metadata=client.V1ObjectMeta(
                name=name, namespace=self.s.namespace, labels={"app": MIG_MANAGER_APP}
            ),
            spec=client.V1PodSpec(
                node_name=node,
                tolerations=[client.V1Toleration(operator="Exists")],
                containers=[container],
                volumes=[
                    client.V1Volume(
                        name=volume, config_map=client.V1ConfigMapVolumeSource(name=self.s.mig_config_map)
                    )
                ],
                automount_service_account_token=False,
                termination_grace_period_seconds=0,
            ),
        )

    def _observe_pod(self, node: str) -> None:
        """Read the node's mig-manager pod now, so that a change written before the label change mig-manager
        acts on is in effect (the remount taken as instant), whichever order the two watches deliver in."""
        try:
            pod = self.core.read_namespaced_pod(mig_manager_pod_name(node), self.s.namespace)
        except ApiException as e:
            if e.status == 404:
                return
            raise
        if (pod.metadata.labels or {}).get("app") == MIG_MANAGER_APP:
            self._pod_seen(pod)

    def _hardware(
        self, name: str, labels: Mapping[str, str], ann: Mapping[str, str], ann_patch: dict[str, str | None]
    ) -> tuple[mp.GpuHardware, str] | None:
        raw = _json(ann.get(HARDWARE))
        if raw is None:
            if labels.get(GPU_PRESENT) != "true" or "nvidia.com/gpu.product" not in labels:
                return None
            model = gpu_by_product(labels["nvidia.com/gpu.product"])
            if model is None:
                raw = {"product": _base_product(labels["nvidia.com/gpu.product"])}
            else:
                raw = {
                    "product": _base_product(labels["nvidia.com/gpu.product"]),
                    "gpus": int(labels.get("nvidia.com/gpu.count", "0")),
                    "pci_device_id": model.pci_device_ids[0],
                    "mig_strategy": labels.get(
                        "nvidia.com/mig.strategy", "mixed" if model.mig_capable else "none"
                    ),
                }
                ann_patch[HARDWARE] = _dump(raw)
                log.info("%s: recorded hardware %s", name, ann_patch[HARDWARE])
        model = gpu_by_product(str(raw.get("product", "")))
        if model is None or not raw.get("gpus"):
            if name not in self._unknown_products:
                self._unknown_products.add(name)
                log.warning("%s: GPU product %r not in the catalog (or no GPUs); ignoring node", name, raw)
            return None
        hw = mp.GpuHardware(
            model=model,
            product=str(raw["product"]),
            gpus=int(raw["gpus"]),
            pci_device_id=str(raw.get("pci_device_id") or model.pci_device_ids[0]).lower(),
            pci_subsystem_id=raw.get("pci_subsystem_id"),
        )
        strategy = raw.get("mig_strategy") or ("mixed" if model.mig_capable else "none")
        return hw, strategy

    def _layout(self, name: str, ann: Mapping[str, str], hw: mp.GpuHardware) -> list[mp.GpuLayout]:
        text = ann.get(LAYOUT)
        if text:
            try:
                return mp.layout_from_json(text, hw.gpus)
            except (ValueError, KeyError, TypeError) as e:
                log.warning("%s: ignoring unreadable %s annotation: %s", name, LAYOUT, e)
        return mp.all_disabled_layout(hw.gpus)

    def _read_config_map(self, name: str) -> dict[str, str] | None:
        try:
            return dict(self.core.read_namespaced_config_map(name, self.s.namespace).data or {})
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def _mounted_mig_config(self, node: str) -> str | None:
        """The mig-parted config file as the node's mig-manager reads it from its volume. The ConfigMap is read
        now (so that the history has the current content whatever the watch's lag), and so is the node's
        mig-manager pod (a change of it made before the label change is in effect)."""
        found = self.core.list_namespaced_config_map(
            self.s.namespace, field_selector=f"metadata.name={self.s.mig_config_map}"
        )
        list_rv = _rv(found.metadata.resource_version)
        if found.items:
            cm = found.items[0]
            text = (cm.data or {}).get(self.s.mig_config_key)
            self._record_mig_content(_rv(cm.metadata.resource_version), text, list_rv)
        else:  # deleted at or before the list's resourceVersion
            self._record_mig_content(list_rv, None)
        if self.s.mig_manager_pods:
            self._observe_pod(node)
        return self._as_mounted(node)

    def _record_mig_content(self, rv: int | None, text: str | None, known_at: int | None = None) -> None:
        """Add the content the API has (written at resourceVersion ``rv``; the ConfigMap is known as of
        ``known_at``, default ``rv``) to the history, unless it is not newer than what is known. Content already
        there when the simulator started counts as synced."""
        known_at = rv if known_at is None else known_at
        with self._lock:
            if known_at is not None:
                if known_at <= self._mig_rv:
                    return
                self._mig_rv = known_at
            if self._mig_versions and self._mig_versions[-1].text == text:
                return
            first = not self._mig_versions
            self._mig_versions.append(_Version(float("-inf") if first else time.monotonic(), rv, text))
            self._prune_locked(time.monotonic() - self.s.config_volume_delay_seconds)
        if not first:
            for name in list(self.nodes):  # look again once the new content is "synced"
                self.queue.add(name, self.s.config_volume_delay_seconds + 0.1)

    def _as_mounted(self, node: str) -> str | None:
        """The mig-parted config file as the node's mig-manager's mounted volume shows it: the content the API
        had ``config_volume_delay_seconds`` ago (the kubelet refreshes a ConfigMap volume only on its periodic
        sync, kubelet ``pkg/volume/configmap``; ``syncFrequency`` 1m + cache TTL by default), or, where later, the
        content it had at the last change of the node's mig-manager pod (the kubelet's ``ReprocessPod``
        remount, see the module's docstring)."""
        horizon = time.monotonic() - self.s.config_volume_delay_seconds
        with self._lock:
            self._prune_locked(horizon)
            refresh = self._refreshed.get(node)
            shown = 0  # synced (after the pruning), or what was there when the simulator started
            for i, v in enumerate(self._mig_versions):
                if v.seen <= horizon or (refresh is not None and refresh.covers(v)):
                    shown = i
            return self._mig_versions[shown].text if self._mig_versions else None

    def _prune_locked(self, horizon: float) -> None:
        """Forget the versions no node sees any more: every node's view is at least as late as the newest
        version seen before ``horizon`` (a remount only makes it later)."""
        synced = [i for i, v in enumerate(self._mig_versions) if v.seen <= horizon]
        if len(synced) > 1:
            del self._mig_versions[: synced[-1]]

    # ---- device plugin config-manager -----------------------------------------------------------------------

    def _select_device_plugin_config(
        self,
        name: str,
        labels: Mapping[str, str],
        ann: Mapping[str, str],
        data: Mapping[str, str] | None,
        ann_patch: dict[str, str | None],
        events: list[tuple[str, str, str, str]],
    ) -> tuple[dp.SharingConfig | None, str | None]:
        default = {"label": None, "key": None, "hash": None, "config": None, "error": None, "missing": None}
        prev = _json(ann.get(DP_STATE)) or default
        want = labels.get(DP_CONFIG)
        where = f"ConfigMap {self.s.namespace}/{self.s.device_plugin_config_map}"
        if want is None:
            new = default
            if prev.get("key") is not None:
                log.info("%s: device-plugin.config label removed -> default config (no sharing)", name)
        elif data is None or want not in data:
            new = {**prev, "label": want, "missing": want}
            if prev.get("missing") != want:
                msg = (
                    f"device-plugin config {want!r} is not a key of {where}; "
                    f"keeping the previous config ({prev.get('key') or 'default'})"
                )
                log.info("%s: %s", name, msg)
                events.append(("Warning", "UnknownDevicePluginConfig", msg, DP_COMPONENT))
        else:
            digest = hashlib.sha256(data[want].encode()).hexdigest()[:16]
            if prev.get("key") == want and prev.get("hash") == digest:
                new = {**prev, "label": want, "missing": None}
            else:
                try:
                    cfg = dp.parse_config_file(data[want])
                    new = {**default, "label": want, "key": want, "hash": digest, "config": cfg.to_json()}
                    log.info("%s: device-plugin config %r applied: %s", name, want, _dump(cfg.to_json()))
                    events.append(
                        (
                            "Normal",
                            "DevicePluginConfigApplied",
                            f"config {want!r}: {cfg.strategy}",
                            DP_COMPONENT,
                        )
                    )
                except dp.DevicePluginConfigError as e:
                    new = {
                        **default,
                        "label": want,
                        "key": want,
                        "hash": digest,
                        "error": f"config {want!r}: {e}",
                    }
                    log.info("%s: device-plugin config %r invalid: %s", name, want, e)
        if new != prev:
            ann_patch[DP_STATE] = _dump(new)
        sharing = dp.SharingConfig.from_json(new["config"]) if new.get("config") else None
        return sharing, new.get("error")

    # ---- mig-manager ------------------------------------------------------------------------------------------

    def _resolve_mig_config(
        self, wanted: str, hw: mp.GpuHardware, text: str | None
    ) -> tuple[list[mp.MigSpec] | None, str | None]:
        custom: dict[str, list[mp.MigSpec]] = {}
        error = None
        if text is not None:
            try:
                custom = mp.parse_config_file(text)
            except mp.MigConfigError as e:
                error = str(e)
        if wanted in custom:
            return custom[wanted], None
        builtins = mp.builtin_configs(hw.model)
        if wanted in builtins:
            return builtins[wanted], None
        where = f"ConfigMap {self.s.namespace}/{self.s.mig_config_map}[{self.s.mig_config_key}]"
        if error:  # assert --valid-config: "error parsing config file"
            return None, f"error parsing config file ({where}): {error}"
        # cmd/nvidia-mig-parted/assert/assert.go GetSelectedMigConfig
        return None, f"selected mig-config not present: {wanted} ({where}, as mounted)"

    def _mig_manager(
        self,
        node: client.V1Node,
        hw: mp.GpuHardware,
        default_strategy: str,
        labels: Mapping[str, str],
        ann: Mapping[str, str],
        layout: list[mp.GpuLayout],
        dp_selection: tuple[dp.SharingConfig | None, str | None],
        mounted: Callable[[], str | None],
        label_patch: dict[str, str | None],
        ann_patch: dict[str, str | None],
        events: list[tuple[str, str, str, str]],
    ) -> tuple[float | None, list[mp.GpuLayout]]:
        name = node.metadata.name
        wanted = labels[MIG_CONFIG]
        state = labels.get(MIG_STATE)
        observed = _json(ann.get(MIG_OBSERVED)) or {}
        pending = _json(ann.get(MIG_PENDING)) or {}
        # mig-manager acts when the label changes (main.go: it blocks on the label's value, SyncableMigConfig)
        # or when its pod starts; not when the state label is removed, nor when the ConfigMap changes or its
        # volume is remounted
        started = name not in self._looked_at
        self._looked_at.add(name)
        # a change still pending for another config is superseded by the new label: mig-manager runs the
        # reconfiguration for the label's current value (reconfigure.go Run: already applied -> success)
        superseded = bool(pending) and pending.get("name") != wanted
        if observed.get("name") == wanted and not started and not superseded:
            return None, layout
        specs, error = self._resolve_mig_config(wanted, hw, mounted())
        target = {"name": wanted, "hash": mp.specs_hash(specs)}

        def finish(result: str, message: str, new_layout: list[mp.GpuLayout] | None = None) -> None:
            label_patch[MIG_STATE] = result
            for key in PAUSABLE:
                if labels.get(key) == PAUSED:
                    label_patch[key] = "true"
            ann_patch[MIG_OBSERVED] = _dump(target)
            ann_patch[MIG_PENDING] = None
            if new_layout is not None:
                ann_patch[LAYOUT] = mp.layout_to_json(new_layout)
            log.info("%s: mig.config=%s -> %s: %s", name, wanted, result, message)
            if result == "failed":
                events.append(("Warning", "MigConfigFailed", f"{wanted}: {message}", MIG_COMPONENT))
            else:
                events.append(("Normal", "MigConfigApplied", f"{wanted}: {message}", MIG_COMPONENT))

        if specs is None:  # `nvidia-mig-parted assert --valid-config` fails: failed, no pending
            finish("failed", str(error))
            return None, layout
        plan: list[mp.GpuLayout] | None
        try:
            plan = mp.plan_layout(specs, hw, layout)
            problem = None
        except mp.MigConfigError as e:
            plan, problem = None, str(e)
        if plan is not None and all(a.same_config(b) for a, b in zip(plan, layout, strict=True)):
            finish("success", "already applied")
            return None, layout

        now = time.time()
        if state != "pending" or pending.get("name") != wanted or pending.get("hash") != target["hash"]:
            label_patch[MIG_STATE] = "pending"
            for key in PAUSABLE:
                if labels.get(key) not in (None, "false", PAUSED):
                    label_patch[key] = PAUSED
            ann_patch[MIG_PENDING] = _dump({**target, "since": now})
            log.info("%s: mig.config=%s -> pending", name, wanted)
            return self.s.apply_delay_seconds, layout
        remaining = float(pending.get("since", 0)) + self.s.apply_delay_seconds - now
        if remaining > 0:
            return remaining, layout

        if plan is None:
            finish("failed", str(problem))
            return None, layout
        new_view = dp.node_view(
            hw, plan, dp_selection[0], default_strategy, dp_selection[1], self.s.mig_strategy_env
        )
        used = self._used_resources(name)
        short = {
            r: (u, new_view.resources.get(r, 0)) for r, u in used.items() if u > new_view.resources.get(r, 0)
        }
        if short:
            what = ", ".join(f"{r}: {u} in use, {n} after the change" for r, (u, n) in sorted(short.items()))
            finish("failed", f"refusing to destroy devices in use by pods on the node ({what})")
            return None, layout
        summary = "; ".join(
            f"GPU {g.index}: "
            + (",".join(f"{d.profile}@{d.start}" for d in g.devices) if g.mig_enabled else "MIG off")
            for g in plan
            if not g.same_config(layout[g.index])
        )
        finish("success", summary or "no change", plan)
        return None, plan

    def _used_resources(self, node_name: str) -> dict[str, int]:
        """nvidia.com/* resources requested by pods bound to the node that have not terminated."""
        pods = self.core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={node_name}")
        used: dict[str, int] = {}
        for pod in pods.items:
            if (pod.status and pod.status.phase) in ("Succeeded", "Failed"):
                continue
            want: dict[str, int] = {}
            for c in pod.spec.containers or []:
                for r, q in _extended(c).items():
                    want[r] = want.get(r, 0) + q
            for c in pod.spec.init_containers or []:
                for r, q in _extended(c).items():
                    want[r] = max(want.get(r, 0), q)
            for r, q in want.items():
                used[r] = used.get(r, 0) + q
        return used

    # ---- writing ----------------------------------------------------------------------------------------------

    def _publish(
        self,
        node: client.V1Node,
        labels: Mapping[str, str],
        ann: Mapping[str, str],
        view: dp.NodeView,
        label_patch: Mapping[str, str | None],
        ann_patch: Mapping[str, str | None],
    ) -> None:
        """Status first (through the status subresource), then labels/annotations, each only when changed."""
        name = node.metadata.name
        capacity = dict((node.status and node.status.capacity) or {})
        allocatable = dict((node.status and node.status.allocatable) or {})
        desired = {r: str(n) for r, n in view.resources.items()}
        for r in set(capacity) | set(allocatable):
            if r.startswith("nvidia.com/") and r not in desired:
                desired[r] = "0"  # the kubelet keeps a resource whose plugin stopped advertising it at 0
        changed = {r: v for r, v in desired.items() if capacity.get(r) != v or allocatable.get(r) != v}
        if changed:
            self.core.patch_node_status(name, {"status": {"capacity": changed, "allocatable": changed}})
            log.info("%s: status %s", name, " ".join(f"{r}={v}" for r, v in sorted(changed.items())))

        want: dict[str, str | None] = dict(view.labels)
        for key in labels:
            if key.startswith("nvidia.com/mig-") and key not in want:
                want[key] = None
        want.update(label_patch)
        label_changes = {
            k: v for k, v in want.items() if labels.get(k) != v and not (v is None and k not in labels)
        }
        ann_changes = {
            k: v for k, v in ann_patch.items() if ann.get(k) != v and not (v is None and k not in ann)
        }
        if label_changes or ann_changes:
            self.core.patch_node(name, {"metadata": {"labels": label_changes, "annotations": ann_changes}})
            shown = {k: v for k, v in label_changes.items() if not k.startswith("nvidia.com/mig-")}
            extra = len(label_changes) - len(shown)
            log.info(
                "%s: labels %s%s%s",
                name,
                " ".join(f"{k}={v}" for k, v in sorted(shown.items(), key=lambda kv: kv[0])) or "-",
                f" (+{extra} nvidia.com/mig-* labels)" if extra else "",
                f"; annotations {sorted(ann_changes)}" if ann_changes else "",
            )

    def _event(self, node: client.V1Node, type_: str, reason: str, message: str, component: str) -> None:
        now = datetime.now(UTC)
        body = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{node.metadata.name}.", namespace="default"),
            involved_object=client.V1ObjectReference(
                api_version="v1", kind="Node", name=node.metadata.name, uid=node.metadata.uid
            ),
            reason=reason,
            message=message[:1024],
            type=type_,
            source=client.V1EventSource(component=component, host=node.metadata.name),
            reporting_component=component,
            reporting_instance=node.metadata.name,
            first_timestamp=now,
            last_timestamp=now,
            count=1,
        )
        try:
            self.core.create_namespaced_event("default", body)
        except ApiException as e:
            log.warning(
                "%s: could not record event %s: %s %s", node.metadata.name, reason, e.status, e.reason
            )


def _extended(container: client.V1Container) -> dict[str, int]:
    res = container.resources
    if res is None:
        return {}
    merged = {**(res.requests or {}), **(res.limits or {})}  # extended resources: request == limit
    out: dict[str, int] = {}
    for r, q in merged.items():
        if r.startswith("nvidia.com/"):
            try:
                out[r] = int(str(q))
            except ValueError:
                continue
    return out
