"""The NVIDIA-stack simulator follows the GPU Operator's protocols (mig-manager, device-plugin config-manager, GFD)."""

from __future__ import annotations

import json
import textwrap
import time
import uuid

import pytest

from .conftest import (
    CONFIG_VOLUME_DELAY,
    DP_CONFIG,
    DP_CONFIG_MAP,
    GPU_NODES,
    GPU_OPERATOR_NS,
    MIG_CONFIG,
    MIG_CONFIG_MAP,
    MIG_STATE,
    Cluster,
    wait_for,
)

pytestmark = pytest.mark.e2e

H100 = "gpu-h100-0"
H100_B = "gpu-h100-1"
A100 = "gpu-a100-0"
L4 = "gpu-l4-0"

MIG_CONFIGS = textwrap.dedent(
    """\
    version: v1
    mig-configs:
      # GPUs 0-3: 2x 2g.20gb (slices 0-1, 2-3) + 1x 3g.40gb (slices 4-7) = 7 compute slices; GPUs 4-7 whole
      e2e-h100-mixed:
        - device-filter: "0x233010DE"
          devices: [0, 1, 2, 3]
          mig-enabled: true
          mig-devices: {"3g.40gb": 1, "2g.20gb": 2}
        - devices: [4, 5, 6, 7]
          mig-enabled: false
      # two 4g.40gb would both need memory slices 0-3 (4g only starts at 0)
      e2e-h100-overlap:
        - devices: all
          mig-enabled: true
          mig-devices: {"4g.40gb": 2}
      # 3g + 3g fill all 8 memory slices: no room for a 1g
      e2e-h100-too-big:
        - devices: all
          mig-enabled: true
          mig-devices: {"3g.40gb": 2, "1g.10gb": 1}
      # 1g.5gb is an A100-40GB profile
      e2e-foreign-profile:
        - devices: [0]
          mig-enabled: true
          mig-devices: {"1g.5gb": 7}
      e2e-out-of-range:
        - devices: [8]
          mig-enabled: true
          mig-devices: {"1g.10gb": 7}
    """
)

TIME_SLICING_4 = textwrap.dedent(
    """\
    version: v1
    flags: {migStrategy: mixed}
    sharing:
      timeSlicing:
        renameByDefault: true
        resources:
          - name: nvidia.com/gpu
            replicas: 4
    """
)

MPS_2 = textwrap.dedent(
    """\
    version: v1
    flags: {migStrategy: none}
    sharing:
      mps:
        resources:
          - name: nvidia.com/gpu
            replicas: 2
    """
)


def _layout(cluster: Cluster, node: str) -> list[dict]:
    return json.loads(cluster.annotations(node)["nvsim.slm.io/mig-layout"])


def test_legal_mig_config_goes_pending_then_success(gpu_nodes: Cluster, ns: str) -> None:
    c = gpu_nodes
    c.put_config_map(MIG_CONFIG_MAP, {"config.yaml": MIG_CONFIGS})
    rec = c.record_label(H100, MIG_STATE)
    c.set_labels(H100, {MIG_CONFIG: "e2e-h100-mixed"})
    labels = c.wait_mig_state(H100, "e2e-h100-mixed", "success")
    assert rec.stop()[-2:] == ["pending", "success"]

    assert c.nonzero_resources(H100) == {
        "nvidia.com/gpu": 4,
        "nvidia.com/mig-3g.40gb": 4,
        "nvidia.com/mig-2g.20gb": 8,
    }
    assert labels["nvidia.com/mig-2g.20gb.count"] == "8"
    assert labels["nvidia.com/mig-3g.40gb.count"] == "4"
    assert labels["nvidia.com/mig-3g.40gb.slices.gi"] == "3"
    assert labels["nvidia.com/mig-3g.40gb.memory"] == "40448"
    assert labels["nvidia.com/gpu.deploy.device-plugin"] == "true"  # un-paused after the change
    layout = _layout(c, H100)
    assert [g["mig"] for g in layout] == [True] * 4 + [False] * 4
    assert sorted((d["profile"], d["start"]) for d in layout[0]["devices"]) == [
        ("2g.20gb", 0),
        ("2g.20gb", 2),
        ("3g.40gb", 4),
    ]

    c.pod(ns, "mig-pod", {"nvidia.com/mig-2g.20gb": "1"})
    assert c.wait_pod_running(ns, "mig-pod").spec.node_name == H100


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        ("e2e-h100-overlap", "exceeds the maximum of 1"),
        ("e2e-h100-too-big", "no legal placement"),
        ("e2e-foreign-profile", "does not exist on H100-80GB"),
        ("e2e-out-of-range", "out of range"),
    ],
)
def test_illegal_mig_config_fails_and_keeps_capacity(gpu_nodes: Cluster, config: str, reason: str) -> None:
    c = gpu_nodes
    c.put_config_map(MIG_CONFIG_MAP, {"config.yaml": MIG_CONFIGS})
    before = c.nvidia_resources(H100)
    rec = c.record_label(H100, MIG_STATE)
    c.set_labels(H100, {MIG_CONFIG: config})
    c.wait_mig_state(H100, config, "failed")
    assert rec.stop()[-2:] == ["pending", "failed"]
    c.wait_node_event(H100, "MigConfigFailed", reason)
    assert c.nvidia_resources(H100) == before
    assert all(not g["mig"] for g in _layout(c, H100))


def test_unknown_mig_config_name_fails(gpu_nodes: Cluster) -> None:
    c = gpu_nodes
    c.set_labels(H100, {MIG_CONFIG: "no-such-config"})
    c.wait_mig_state(H100, "no-such-config", "failed")
    c.wait_node_event(H100, "MigConfigFailed", "selected mig-config not present: no-such-config")
    assert c.nonzero_resources(H100) == {"nvidia.com/gpu": 8}


def test_builtin_all_balanced_on_a100(gpu_nodes: Cluster) -> None:
    c = gpu_nodes
    c.set_labels(A100, {MIG_CONFIG: "all-balanced"})
    c.wait_mig_state(A100, "all-balanced", "success")
    assert c.nonzero_resources(A100) == {
        "nvidia.com/mig-1g.5gb": 16,
        "nvidia.com/mig-2g.10gb": 8,
        "nvidia.com/mig-3g.20gb": 8,
    }
    # back to all-disabled: the MIG resources stay at 0, as the kubelet keeps them
    c.set_labels(A100, {MIG_CONFIG: "all-disabled"})
    labels = c.wait_mig_state(A100, "all-disabled", "success")
    resources = c.nvidia_resources(A100)
    assert {k: v for k, v in resources.items() if v} == {"nvidia.com/gpu": 8}
    assert resources["nvidia.com/mig-1g.5gb"] == resources["nvidia.com/mig-3g.20gb"] == 0
    assert not [k for k in labels if k.startswith("nvidia.com/mig-")]


def test_mig_change_refused_while_devices_in_use(gpu_nodes: Cluster, ns: str) -> None:
    c = gpu_nodes
    c.pod(ns, "whole-gpus", {"nvidia.com/gpu": "2"}, node=H100_B)
    c.wait_pod_running(ns, "whole-gpus")
    c.set_labels(H100_B, {MIG_CONFIG: "all-1g.10gb"})
    c.wait_mig_state(H100_B, "all-1g.10gb", "failed")
    c.wait_node_event(H100_B, "MigConfigFailed", "nvidia.com/gpu: 2 in use, 0 after the change")
    assert c.nonzero_resources(H100_B) == {"nvidia.com/gpu": 8}

    # a layout that keeps enough whole GPUs is fine
    c.put_config_map(
        MIG_CONFIG_MAP,
        {
            "config.yaml": "version: v1\nmig-configs:\n  six-small:\n"
            "    - {devices: [2, 3, 4, 5, 6, 7], mig-enabled: true, mig-devices: {1g.10gb: 7}}\n"
        },
    )
    c.set_labels(H100_B, {MIG_CONFIG: "six-small"})
    c.wait_mig_state(H100_B, "six-small", "success")
    assert c.nonzero_resources(H100_B) == {"nvidia.com/gpu": 2, "nvidia.com/mig-1g.10gb": 42}


def test_time_slicing_renamed_and_back(gpu_nodes: Cluster) -> None:
    c = gpu_nodes
    c.put_config_map(DP_CONFIG_MAP, {"ts-4": TIME_SLICING_4, "mps-2": MPS_2})
    c.set_labels(H100_B, {DP_CONFIG: "ts-4"})

    def shared() -> bool:
        resources = c.nvidia_resources(H100_B)
        return resources["nvidia.com/gpu"] == 0 and c.nonzero_resources(H100_B) == {
            "nvidia.com/gpu.shared": 32
        }

    wait_for(shared, 60, "nvidia.com/gpu.shared=32")
    # GFD's labels follow the device plugin's resources (separate components, separate updates)
    labels = wait_for(
        lambda: (lab := c.labels(H100_B))["nvidia.com/gpu.replicas"] == "4" and lab, 60, "gpu.replicas=4"
    )
    assert labels["nvidia.com/gpu.sharing-strategy"] == "time-slicing"
    assert labels["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"  # renamed: no -SHARED suffix

    # an unknown key keeps the previous config (config-manager skips it) and warns
    c.set_labels(H100_B, {DP_CONFIG: "no-such-key"})
    c.wait_node_event(H100_B, "UnknownDevicePluginConfig", "no-such-key")
    assert shared()

    c.set_labels(H100_B, {DP_CONFIG: None})
    wait_for(
        lambda: (
            c.nvidia_resources(H100_B).get("nvidia.com/gpu.shared") == 0
            and c.nonzero_resources(H100_B) == {"nvidia.com/gpu": 8}
        ),
        60,
        "back to 8 whole GPUs",
    )
    labels = wait_for(
        lambda: (lab := c.labels(H100_B))["nvidia.com/gpu.replicas"] == "1" and lab, 60, "gpu.replicas=1"
    )
    assert labels["nvidia.com/gpu.sharing-strategy"] == "none"


def test_time_slicing_pods_share_gpus(gpu_nodes: Cluster, ns: str) -> None:
    c = gpu_nodes
    c.put_config_map(DP_CONFIG_MAP, {"ts-4": TIME_SLICING_4})
    c.set_labels(L4, {DP_CONFIG: "ts-4"})
    wait_for(lambda: c.nvidia_resources(L4).get("nvidia.com/gpu.shared") == 16, 60, "16 shared L4 GPUs")
    for i in range(5):
        c.pod(ns, f"shared-{i}", {"nvidia.com/gpu.shared": "1"})
    for i in range(5):
        assert c.wait_pod_running(ns, f"shared-{i}").spec.node_name == L4


def test_mps_refused_with_mig_enabled(gpu_nodes: Cluster) -> None:
    c = gpu_nodes
    c.put_config_map(DP_CONFIG_MAP, {"mps-2": MPS_2})
    c.set_labels(A100, {MIG_CONFIG: "all-balanced"})
    c.wait_mig_state(A100, "all-balanced", "success")
    c.set_labels(A100, {DP_CONFIG: "mps-2"})
    c.wait_node_event(A100, "DevicePluginFailed", "MPS is not supported on devices with MIG enabled")
    wait_for(lambda: not any(c.nvidia_resources(A100).values()), 60, "all A100 GPU resources at 0")
    assert c.labels(A100)["nvidia.com/mps.capable"] == "false"

    c.set_labels(A100, {DP_CONFIG: None})
    wait_for(lambda: c.nvidia_resources(A100).get("nvidia.com/mig-1g.5gb") == 16, 60, "MIG resources back")


def test_mps_on_whole_gpus(gpu_nodes: Cluster) -> None:
    c = gpu_nodes
    c.put_config_map(DP_CONFIG_MAP, {"mps-2": MPS_2})
    c.set_labels(L4, {DP_CONFIG: "mps-2"})
    wait_for(lambda: c.nonzero_resources(L4) == {"nvidia.com/gpu": 8}, 60, "8 MPS shares on the L4 node")
    labels = wait_for(
        lambda: (lab := c.labels(L4))["nvidia.com/mps.capable"] == "true" and lab, 60, "mps.capable=true"
    )
    assert labels["nvidia.com/gpu.sharing-strategy"] == "mps"
    assert labels["nvidia.com/gpu.replicas"] == "2"
    assert labels["nvidia.com/gpu.product"] == "NVIDIA-L4-SHARED"


def test_simulator_state_survives_restart(gpu_nodes: Cluster) -> None:
    """The hardware layout lives in the node annotation: a config already applied is not redone. Removing the
    state label does not make mig-manager look again (it acts on label changes); its restart does."""
    c = gpu_nodes
    c.set_labels(A100, {MIG_CONFIG: "all-1g.5gb"})
    c.wait_mig_state(A100, "all-1g.5gb", "success")
    layout = _layout(c, A100)
    rec = c.record_label(A100, MIG_STATE)
    c.set_labels(A100, {MIG_STATE: None})
    time.sleep(2)
    assert MIG_STATE not in c.labels(A100)  # mig-manager ignores the removal
    c.stop_simulator()
    c.start_simulator()  # a mig-manager pod start applies the label's config: already applied -> success
    c.wait_mig_state(A100, "all-1g.5gb", "success")
    assert "pending" not in rec.stop()
    assert _layout(c, A100) == layout
    assert c.nvidia_resources(A100)["nvidia.com/mig-1g.5gb"] == 56


def test_simulator_killed_while_pending_finishes_after_restart(gpu_nodes: Cluster) -> None:
    """All simulator state is in the cluster: a MIG change interrupted in 'pending' completes after a restart."""
    c = gpu_nodes
    # a long pending phase, so the kill lands inside it however slowly this machine runs the poll
    c.stop_simulator()
    c.start_simulator(apply_delay=10)
    try:
        c.set_labels(H100_B, {MIG_CONFIG: "all-balanced"})
        wait_for(lambda: c.labels(H100_B).get(MIG_STATE) == "pending", 30, "state pending")
        c.stop_simulator(kill=True)
        assert c.labels(H100_B)[MIG_STATE] == "pending"
    finally:
        c.stop_simulator(kill=True)  # a no-op once killed
        c.start_simulator()
    c.wait_mig_state(H100_B, "all-balanced", "success")
    assert c.nonzero_resources(H100_B) == {
        "nvidia.com/mig-1g.10gb": 16,
        "nvidia.com/mig-2g.20gb": 8,
        "nvidia.com/mig-3g.40gb": 8,
    }


def test_a_label_changed_back_while_pending_is_applied(gpu_nodes: Cluster) -> None:
    """The label moves on while a change is pending (the operator or a user changes its mind): mig-manager
    acts on the label's current value, here the layout the node already has, and reports success."""
    c = gpu_nodes
    c.stop_simulator()
    c.start_simulator(apply_delay=10)  # a long pending phase: the label changes back inside it
    try:
        c.set_labels(H100_B, {MIG_CONFIG: "all-balanced"})
        wait_for(lambda: c.labels(H100_B).get(MIG_STATE) == "pending", 30, "state pending")
        c.set_labels(H100_B, {MIG_CONFIG: "all-disabled"})
        c.wait_mig_state(H100_B, "all-disabled", "success", 30)
        assert not any(k.startswith("nvidia.com/mig-") for k in c.nonzero_resources(H100_B))
    finally:
        c.stop_simulator()
        c.start_simulator()


def test_failed_stays_until_the_label_changes(gpu_nodes: Cluster) -> None:
    """mig-manager does not retry a failed config when its content is fixed (nor when the state label is
    removed): only a label change makes it look again; a content change while in success is not applied."""
    c = gpu_nodes

    def configs(devices: str, name: str = "e2e-fixable") -> dict[str, str]:
        text = f"version: v1\nmig-configs:\n  {name}:\n    - {{devices: all, mig-enabled: true, mig-devices: {devices}}}\n"
        return {"config.yaml": text}

    c.put_config_map(MIG_CONFIG_MAP, configs('{"4g.40gb": 2}'))
    c.set_labels(H100, {MIG_CONFIG: "e2e-fixable"})
    c.wait_mig_state(H100, "e2e-fixable", "failed")
    fixed = configs('{"4g.40gb": 1, "3g.40gb": 1}')["config.yaml"]
    alias = fixed.replace("e2e-fixable", "e2e-fixable-retry1").split("mig-configs:\n")[1]
    c.put_config_map(MIG_CONFIG_MAP, {"config.yaml": fixed + alias})  # waits out the volume delay
    c.set_labels(H100, {MIG_STATE: None})
    time.sleep(2)
    assert c.labels(H100).get(MIG_STATE) is None and not c.nonzero_resources(H100).get(
        "nvidia.com/mig-4g.40gb"
    )
    c.set_labels(H100, {MIG_CONFIG: "e2e-fixable-retry1"})  # the same content under another name
    c.wait_mig_state(H100, "e2e-fixable-retry1", "success")
    assert c.nonzero_resources(H100) == {"nvidia.com/mig-4g.40gb": 8, "nvidia.com/mig-3g.40gb": 8}
    # content change while in success: mig-manager only acts on label changes, so the layout stays
    c.put_config_map(MIG_CONFIG_MAP, configs('{"1g.10gb": 7}', "e2e-fixable-retry1"))
    c.set_labels(H100_B, {MIG_CONFIG: "e2e-fixable-retry1"})  # sync point: the simulator saw the new content
    c.wait_mig_state(H100_B, "e2e-fixable-retry1", "success")
    assert c.nonzero_resources(H100_B) == {"nvidia.com/mig-1g.10gb": 56}
    assert c.labels(H100)[MIG_STATE] == "success"
    assert c.nonzero_resources(H100) == {"nvidia.com/mig-4g.40gb": 8, "nvidia.com/mig-3g.40gb": 8}


def test_mig_manager_sees_the_config_map_through_a_late_volume(gpu_nodes: Cluster) -> None:
    """A label naming an entry written just now fails (the mounted file does not have it yet) and stays failed
    after the file catches up: 'selected mig-config not present', as `nvidia-mig-parted assert --valid-config`."""
    c = gpu_nodes
    text = "version: v1\nmig-configs:\n  e2e-new:\n    - {devices: all, mig-enabled: true, mig-devices: {7g.80gb: 1}}\n"
    c.put_config_map(MIG_CONFIG_MAP, {"config.yaml": text}, synced=False)
    c.set_labels(H100, {MIG_CONFIG: "e2e-new"})
    c.wait_mig_state(H100, "e2e-new", "failed")
    c.wait_node_event(H100, "MigConfigFailed", "selected mig-config not present: e2e-new")
    time.sleep(CONFIG_VOLUME_DELAY + 1)
    assert c.labels(H100)[MIG_STATE] == "failed"
    c.set_labels(H100, {MIG_CONFIG: "all-disabled"})
    c.wait_mig_state(H100, "all-disabled", "success")
    c.set_labels(H100, {MIG_CONFIG: "e2e-new"})  # the label changes again, the file has the entry now
    c.wait_mig_state(H100, "e2e-new", "success")
    assert c.nonzero_resources(H100) == {"nvidia.com/mig-7g.80gb": 8}


def _refresh_mig_manager(c: Cluster, node: str) -> None:
    """Change an annotation of the node's mig-manager pod (what the kubelet counts as a pod change)."""
    c.annotate_pod(GPU_OPERATOR_NS, f"nvidia-mig-manager-{node}", {"e2e.slm.io/refresh": uuid.uuid4().hex})


def _new_entry(name: str) -> dict[str, str]:
    text = f"version: v1\nmig-configs:\n  {name}:\n    - {{devices: all, mig-enabled: true, mig-devices: {{7g.80gb: 1}}}}\n"
    return {"config.yaml": text}


def test_one_mig_manager_pod_per_mig_node(cluster: Cluster) -> None:
    """Like the GPU Operator's DaemonSet: one pod per node mig-manager runs on, bound to it, re-created."""
    c = cluster
    mig_nodes = sorted(n for n, (_, mig) in GPU_NODES.items() if mig)
    pods = wait_for(
        lambda: (p := c.mig_manager_pods()) and sorted(p) == mig_nodes and p,
        60,
        "a mig-manager pod per MIG node",
    )
    for node, on_node in pods.items():
        assert [p.metadata.name for p in on_node] == [f"nvidia-mig-manager-{node}"]
        pod = on_node[0]
        assert pod.metadata.labels == {"app": "nvidia-mig-manager"}
        assert [(t.operator, t.key, t.effect) for t in pod.spec.tolerations] == [("Exists", None, None)]
        assert {e.name: e.value for e in pod.spec.containers[0].env}["CONFIG_FILE"] == (
            "/mig-parted-config/config.yaml"
        )
        assert [v.config_map.name for v in pod.spec.volumes if v.config_map] == [MIG_CONFIG_MAP]
    old = pods[A100][0]
    c.wait_pod_running(GPU_OPERATOR_NS, old.metadata.name)  # kwok plays the kubelet
    c.core.delete_namespaced_pod(old.metadata.name, GPU_OPERATOR_NS, grace_period_seconds=0)
    new = wait_for(
        lambda: (p := c.mig_manager_pods().get(A100)) and p[0].metadata.uid != old.metadata.uid and p[0],
        30,
        "the deleted mig-manager pod re-created",
    )
    assert new.metadata.name == old.metadata.name and new.spec.node_name == A100
    c.wait_pod_running(GPU_OPERATOR_NS, new.metadata.name)
    assert sorted(c.mig_manager_pods()) == mig_nodes


def test_a_mig_manager_pod_update_remounts_the_config_map(gpu_nodes: Cluster) -> None:
    """The entry written just now is in the mounted file once the node's mig-manager pod changed (the kubelet's
    SyncPod remounts its ConfigMap volume); without that change the label fails (the test above)."""
    c = gpu_nodes
    c.put_config_map(MIG_CONFIG_MAP, _new_entry("e2e-remounted"), synced=False)
    _refresh_mig_manager(c, H100)
    c.set_labels(H100, {MIG_CONFIG: "e2e-remounted"})
    c.wait_mig_state(H100, "e2e-remounted", "success")
    assert c.nonzero_resources(H100) == {"nvidia.com/mig-7g.80gb": 8}


def test_a_mig_manager_pod_update_before_the_entry_does_not_help(gpu_nodes: Cluster) -> None:
    """The remount shows the content the API had at the pod change: an entry written after it is not there."""
    c = gpu_nodes
    _refresh_mig_manager(c, H100)
    c.put_config_map(MIG_CONFIG_MAP, _new_entry("e2e-too-late"), synced=False)
    c.set_labels(H100, {MIG_CONFIG: "e2e-too-late"})
    c.wait_mig_state(H100, "e2e-too-late", "failed")
    c.wait_node_event(H100, "MigConfigFailed", "selected mig-config not present: e2e-too-late")


def test_a_remount_does_not_make_a_failed_node_retry(gpu_nodes: Cluster) -> None:
    """mig-manager acts on label changes only: a pod change that shows it the entry leaves the node failed."""
    c = gpu_nodes
    c.put_config_map(MIG_CONFIG_MAP, _new_entry("e2e-retry"), synced=False)
    c.set_labels(H100, {MIG_CONFIG: "e2e-retry"})
    c.wait_mig_state(H100, "e2e-retry", "failed")
    _refresh_mig_manager(c, H100)
    # sync point: the simulator has seen the refreshes (its pod watch delivers in order, one worker)
    _refresh_mig_manager(c, H100_B)
    c.set_labels(H100_B, {MIG_CONFIG: "e2e-retry"})
    c.wait_mig_state(H100_B, "e2e-retry", "success")
    time.sleep(1)
    labels = c.labels(H100)
    assert labels[MIG_STATE] == "failed"
    assert '"name":"e2e-retry"' in c.annotations(H100)["nvsim.slm.io/mig-config-observed"]
    assert not any(k.startswith("nvidia.com/mig-") for k in c.nonzero_resources(H100))
    c.set_labels(H100, {MIG_CONFIG: "all-disabled"})  # a label change: now it acts
    c.wait_mig_state(H100, "all-disabled", "success")
    c.set_labels(H100, {MIG_CONFIG: "e2e-retry"})
    c.wait_mig_state(H100, "e2e-retry", "success")


def test_mig_strategy_env_overrides_the_config_file(gpu_nodes: Cluster) -> None:
    """A GPU Operator installed with mig.strategy=mixed sets MIG_STRATEGY=mixed, which wins over the config
    file's `migStrategy: none`: the MPS config is refused and the plugin crash-loops (no resources)."""
    c = gpu_nodes
    c.stop_simulator()
    c.start_simulator(mig_strategy_env="mixed")
    try:
        c.put_config_map(DP_CONFIG_MAP, {"mps-2": MPS_2})
        c.set_labels(L4, {DP_CONFIG: "mps-2"})
        c.wait_node_event(L4, "DevicePluginFailed", "using --mig-strategy=mixed is not supported with MPS")
        wait_for(lambda: not any(c.nvidia_resources(L4).values()), 60, "all L4 GPU resources at 0")
    finally:
        c.stop_simulator()
        c.start_simulator()
    # unset (each node's config decides): the same config works
    wait_for(lambda: c.nonzero_resources(L4) == {"nvidia.com/gpu": 8}, 60, "8 MPS shares on the L4 node")
