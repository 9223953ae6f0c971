"""``python -m e2e.nvsim --kubeconfig K [--namespace gpu-operator] [--apply-delay-seconds 1]
[--mig-strategy-env mixed] [--config-volume-delay-seconds 3] [--mig-manager-pods]``."""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from kubernetes import client, config

from .controller import Settings, Simulator


def main(argv: list[str] | None = None) -> int:
    d = Settings()
    p = argparse.ArgumentParser(prog="python -m e2e.nvsim", description=__doc__)
    p.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG / ~/.kube/config)")
    p.add_argument("--namespace", default=d.namespace, help="where the GPU Operator's ConfigMaps live")
    p.add_argument("--mig-config-map", default=d.mig_config_map, help="mig-parted config ConfigMap")
    p.add_argument("--mig-config-key", default=d.mig_config_key, help="key of the mig-parted config file")
    p.add_argument(
        "--device-plugin-config-map",
        default=d.device_plugin_config_map,
        help="device-plugin configs ConfigMap",
    )
    p.add_argument(
        "--apply-delay-seconds", type=float, default=d.apply_delay_seconds, help="time spent in state pending"
    )
    p.add_argument("--resync-seconds", type=int, default=d.resync_seconds, help="full relist period")
    p.add_argument(
        "--mig-strategy-env",
        default="",
        choices=["", "none", "single", "mixed"],
        help="the simulated GPU Operator's ClusterPolicy mig.strategy, i.e. the MIG_STRATEGY env of the device "
        "plugin and GFD (empty: unset, each node's config decides)",
    )
    p.add_argument(
        "--config-volume-delay-seconds",
        type=float,
        default=d.config_volume_delay_seconds,
        help="mig-manager sees the mig-parted ConfigMap as it was this long ago (mounted-volume sync)",
    )
    p.add_argument(
        "--mig-manager-pods",
        action="store_true",
        default=d.mig_manager_pods,
        help="keep a stand-in pod of the GPU Operator's mig-manager DaemonSet (nvidia-mig-manager-<node>, label "
        "app=nvidia-mig-manager, in --namespace) on every node mig-manager runs on; a change of the pod the "
        "kubelet counts (e.g. an annotation) remounts its ConfigMap volume: that node's mig-manager sees the "
        "mig-parted ConfigMap as the API had it then, sooner than --config-volume-delay-seconds",
    )
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)

    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    api = config.new_client_from_config(config_file=args.kubeconfig) if args.kubeconfig else None
    if api is None:
        config.load_kube_config()
        api = client.ApiClient()
    sim = Simulator(
        api,
        Settings(
            namespace=args.namespace,
            mig_config_map=args.mig_config_map,
            mig_config_key=args.mig_config_key,
            device_plugin_config_map=args.device_plugin_config_map,
            apply_delay_seconds=args.apply_delay_seconds,
            resync_seconds=args.resync_seconds,
            mig_strategy_env=args.mig_strategy_env or None,
            config_volume_delay_seconds=args.config_volume_delay_seconds,
            mig_manager_pods=args.mig_manager_pods,
        ),
    )
    signal.signal(signal.SIGTERM, lambda *_: sim.stop.set())
    signal.signal(signal.SIGINT, lambda *_: sim.stop.set())
    sim.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
