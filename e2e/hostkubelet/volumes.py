"""Pod volumes as host directories, and the container paths in a process's arguments rewritten to them.

A container sees its volumes at ``volumeMounts[].mountPath``; a host process sees the host directory behind
each mount. So every argument and environment value that starts with a mount path (the path itself or the
path followed by ``/``; also the value part of ``--flag=VALUE``) is rewritten to the host directory, longest
mount path first. The container's ``terminationMessagePath`` is one more mount: a file of its own.

| volume | host directory |
|---|---|
| ``emptyDir`` | ``<pod dir>/volumes/<name>``, removed when the pod is gone |
| ``configMap`` | ``<pod dir>/volumes/<name>``: one file per key (``items`` pick keys and paths; a missing key fails the mount unless ``optional``), written once when the pod starts |
| ``persistentVolumeClaim`` | the bound PersistentVolume's ``hostPath``, mapped by ``--host-path PREFIX=DIR`` (``/var/lib/slm-e2e`` -> ``<cluster dir>/volumes``), so data outlives the pod (checkpoints) |
| ``hostPath`` | mapped the same way |
| ``projected``, ``secret``, ``downwardAPI`` | an empty directory (the service-account token volume every pod gets is not populated) |

Not modelled: ``readOnly`` (the process can write), ``subPathExpr``, ``defaultMode``, ConfigMap updates after
the start, mount propagation.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Obj = Mapping[str, Any]


class VolumeError(Exception):
    """A volume cannot be set up yet (the kubelet reports ``FailedMount`` and retries)."""


@dataclass(frozen=True)
class Mount:
    container_path: str
    host_path: Path


@dataclass(frozen=True)
class HostPathMap:
    """``(prefix, host dir)`` pairs: a PersistentVolume's or pod's hostPath is only used below one of them."""

    prefixes: tuple[tuple[str, Path], ...]

    @staticmethod
    def parse(items: Sequence[str]) -> HostPathMap:
        pairs = []
        for item in items:
            prefix, _, host = item.partition("=")
            if not (prefix.startswith("/") and host):
                raise ValueError(f"--host-path wants /PREFIX=HOST_DIR, got {item!r}")
            pairs.append((prefix.rstrip("/") or "/", Path(host)))
        return HostPathMap(tuple(sorted(pairs, key=lambda p: len(p[0]), reverse=True)))

    def map(self, path: str) -> Path:
        for prefix, host in self.prefixes:
            if path == prefix or path.startswith(prefix + "/"):
                return host / path[len(prefix) :].lstrip("/")
        known = ", ".join(p for p, _ in self.prefixes) or "none"
        raise VolumeError(f"hostPath {path} is outside the host-path prefixes this host maps ({known})")


@dataclass(frozen=True)
class Reader:
    """Reads of the API the volumes need (each returns the object as a dict, or raises)."""

    pvc: Callable[[str, str], Obj]
    pv: Callable[[str], Obj]
    config_map: Callable[[str, str], Obj | None]  # None: not found


def _write_config_map(target: Path, volume: Obj, cm: Obj | None) -> None:
    name = volume.get("name", "")
    optional = bool(volume.get("optional"))
    if cm is None:
        if optional:
            target.mkdir(parents=True, exist_ok=True)
            return
        raise VolumeError(f'configmap "{name}" not found')
    data: dict[str, str] = dict(cm.get("data") or {})
    items = volume.get("items")
    files = {i["path"]: i["key"] for i in items} if items else {k: k for k in data}
    missing = [k for k in files.values() if k not in data]
    if missing and not optional:
        raise VolumeError(f'configmap "{name}": no key(s) {", ".join(missing)}')
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for path, key in files.items():
        if key in data:
            dest = tmp / path
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(data[key])
    tmp.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, target)


def _claim_dir(namespace: str, source: Obj, reader: Reader, host_paths: HostPathMap) -> Path:
    claim = source["claimName"]
    pvc = reader.pvc(namespace, claim)
    volume_name = (pvc.get("spec") or {}).get("volumeName")
    if (pvc.get("status") or {}).get("phase") != "Bound" or not volume_name:
        raise VolumeError(f'persistentvolumeclaim "{claim}" is not bound')
    host = ((reader.pv(volume_name).get("spec") or {}).get("hostPath") or {}).get("path")
    if not host:
        raise VolumeError(f'persistentvolume "{volume_name}" is not a hostPath volume')
    return host_paths.map(host)


def volume_dir(pod: Obj, volume: Obj, pod_dir: Path, reader: Reader, host_paths: HostPathMap) -> Path:
    """The host directory of one volume, set up (idempotent: a configMap is written once)."""
    namespace = pod["metadata"]["namespace"]
    own: Path = pod_dir / "volumes" / str(volume["name"])
    if "persistentVolumeClaim" in volume:
        target = _claim_dir(namespace, volume["persistentVolumeClaim"], reader, host_paths)
    elif "hostPath" in volume:
        target = host_paths.map(volume["hostPath"]["path"])
    elif "configMap" in volume:
        if not own.is_dir():
            source = volume["configMap"]
            _write_config_map(own, source, reader.config_map(namespace, source.get("name", "")))
        return own
    else:  # emptyDir; projected/secret/downwardAPI are left empty
        target = own
    target.mkdir(parents=True, exist_ok=True)
    return target


def prepare_volumes(pod: Obj, pod_dir: Path, reader: Reader, host_paths: HostPathMap) -> dict[str, Path]:
    """Every volume of the pod by name; VolumeError names the first one that cannot be set up yet."""
    dirs = {}
    for volume in pod["spec"].get("volumes") or []:
        try:
            dirs[volume["name"]] = volume_dir(pod, volume, pod_dir, reader, host_paths)
        except VolumeError as exc:
            raise VolumeError(f'volume "{volume["name"]}": {exc}') from None
    return dirs


def container_mounts(container: Obj, volumes: Mapping[str, Path], termination_log: Path) -> list[Mount]:
    """The container's mounts as host paths (``subPath`` included), plus its termination-message file."""
    mounts = []
    for vm in container.get("volumeMounts") or []:
        host = volumes[vm["name"]]
        if vm.get("subPath"):
            host = host / vm["subPath"]
            host.mkdir(parents=True, exist_ok=True)
        mounts.append(Mount(vm["mountPath"].rstrip("/") or "/", host))
    path = container.get("terminationMessagePath") or "/dev/termination-log"
    mounts.append(Mount(path, termination_log))
    return sorted(mounts, key=lambda m: len(m.container_path), reverse=True)


def rewrite_path(value: str, mounts: Sequence[Mount]) -> str:
    """``value`` with its leading mount path replaced by the host path (longest mount first)."""
    for m in sorted(mounts, key=lambda m: len(m.container_path), reverse=True):
        if m.container_path == "/":  # would capture every absolute path
            continue
        if value == m.container_path or value.startswith(m.container_path.rstrip("/") + "/"):
            return str(m.host_path) + value[len(m.container_path) :]
    return value


def rewrite_arg(arg: str, mounts: Sequence[Mount]) -> str:
    """A path argument, or the path after ``=`` in ``--flag=PATH``."""
    out = rewrite_path(arg, mounts)
    if out == arg and arg.startswith("-") and "=" in arg:
        flag, _, value = arg.partition("=")
        out = f"{flag}={rewrite_path(value, mounts)}"
    return out


def remove_pod_volumes(pod_dir: Path) -> None:
    """emptyDir and configMap directories go with the pod (PersistentVolumes stay)."""
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(pod_dir / "volumes")
