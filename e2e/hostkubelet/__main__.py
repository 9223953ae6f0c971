"""``python -m e2e.hostkubelet``: run the host kubelet until SIGTERM/SIGINT (its containers keep running)."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from kubernetes import client, config

from e2e.hostkubelet.images import DEFAULT_IMAGES, HostImage, ImageTable
from e2e.hostkubelet.kubelet import HostKubelet, log
from e2e.hostkubelet.runtime import Runtime, kill_all
from e2e.hostkubelet.volumes import HostPathMap

REPO = Path(__file__).resolve().parents[2]
E2E_PV_PREFIX = "/var/lib/slm-e2e"  # the hostPath of e2e/cluster/volumes.yaml and of the tests' volumes


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m e2e.hostkubelet", description=__doc__)
    p.add_argument("--kubeconfig", required=True)
    p.add_argument(
        "--label", required=True, help="run the pods that carry this label key (kwok must skip them)"
    )
    p.add_argument(
        "--root", type=Path, help="state, logs and pod volumes (default: <kubeconfig dir>/hostkubelet)"
    )
    p.add_argument(
        "--host-path",
        action="append",
        default=[],
        metavar="/PREFIX=DIR",
        help=f"where a hostPath below PREFIX lives on this host (default: {E2E_PV_PREFIX}=<kubeconfig dir>/volumes)",
    )
    p.add_argument(
        "--image",
        action="append",
        default=[],
        metavar="REPOSITORY=DOCKERFILE:VENV",
        help="an image this host can run (default: "
        + ", ".join(f"{i.repository}={i.dockerfile}:{i.venv}" for i in DEFAULT_IMAGES)
        + ")",
    )
    p.add_argument("--repo", type=Path, default=REPO, help="where the Dockerfiles and virtualenvs are")
    p.add_argument("--resync-seconds", type=float, default=0.5)
    p.add_argument("--kill-all", action="store_true", help="SIGKILL every container under --root, then exit")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    cluster_dir = Path(args.kubeconfig).resolve().parent
    root = args.root or cluster_dir / "hostkubelet"
    if args.kill_all:
        for c in kill_all(root):
            log(f"killed {c}")
        return 0
    images = tuple(HostImage.parse(i) for i in args.image) or DEFAULT_IMAGES
    host_paths = HostPathMap.parse(args.host_path or [f"{E2E_PV_PREFIX}={cluster_dir / 'volumes'}"])
    core = client.CoreV1Api(config.new_client_from_config(config_file=args.kubeconfig))
    kubelet = HostKubelet(core, args.label, ImageTable(args.repo, images), Runtime(root), host_paths)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()
        kubelet.wake.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    kubelet.run(stop, args.resync_seconds)
    log("stopped (containers keep running under their shims)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
