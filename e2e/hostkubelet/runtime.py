"""The host kubelet's container runtime: one directory per container, one shim process per container.

Layout under the root (``<cluster dir>/hostkubelet``), like the kubelet's ``/var/log/pods``:

    pods/<namespace>_<pod>_<uid>/
        pod.json              namespace, name, uid (to find orphans after a restart)
        volumes/<volume>/     emptyDir and configMap volumes
        home/                 HOME and working directory of the pod's processes
        <container>/          spec.json, 0.log, termination-log, pid, started, exit.json, term, shim.log

All state is in these files and in the shims (``shim.py``), which outlive the host kubelet: a restarted host
kubelet re-adopts running containers and reports the ones that ended meanwhile. A container whose shim and
process are both gone without an ``exit.json`` is reported the way the kubelet reports a container that
disappeared: exit code 137, reason ``ContainerStatusUnknown`` (kubernetes ``pkg/kubelet/kubelet_pods.go``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SHIM = Path(__file__).resolve().with_name("shim.py")

# kubernetes pkg/kubelet/container/runtime.go
MAX_CONTAINER_TERMINATION_MESSAGE_LENGTH = 1024 * 4
MAX_CONTAINER_TERMINATION_MESSAGE_LOG_LENGTH = 1024 * 2
MAX_CONTAINER_TERMINATION_MESSAGE_LOG_LINES = 80


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


def _alive(pid_line: str | None) -> bool:
    """``<pid> <starttime>`` names a live process (not a zombie, not a reused pid)."""
    if not pid_line or not pid_line.split():
        return False
    pid, *starttime = pid_line.split()
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[0] != "Z" and (not starttime or fields[19] == starttime[0])


@dataclass(frozen=True)
class ContainerState:
    """What the runtime knows about one container (the CRI ContainerStatus, in short)."""

    created: bool = False
    running: bool = False
    started_at: str | None = None
    exit_code: int | None = None
    finished_at: str | None = None
    reason: str | None = None  # StartError, ContainerStatusUnknown; None: Completed/Error by the exit code
    message: str = ""  # from the runtime (StartError) and the termination message
    term_sent_at: float | None = None  # when the kubelet sent SIGTERM (epoch seconds)

    @property
    def exited(self) -> bool:
        return self.exit_code is not None


def tail_bytes(path: Path, limit: int) -> bytes:
    """The last ``limit`` bytes of a file (kubernetes ``pkg/util/tail.ReadAtMost``)."""
    with path.open("rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - limit))
        return f.read()


def log_tail(path: Path) -> str:
    """The last 80 lines of the log, at most their last 2048 bytes (kuberuntime
    ``readLastStringFromContainerLogs``: TailLines 80 into a 2048-byte circular buffer)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return ""
    lines = data.splitlines(keepends=True)[-MAX_CONTAINER_TERMINATION_MESSAGE_LOG_LINES:]
    return b"".join(lines)[-MAX_CONTAINER_TERMINATION_MESSAGE_LOG_LENGTH:].decode(errors="replace")


def termination_message(cdir: Path, policy: str, exit_code: int, reason: str | None) -> str:
    """kuberuntime ``getTerminationMessage``: the last 4096 bytes of the termination-message file; with
    ``FallbackToLogsOnError``, a non-zero exit and an empty or missing file, the log's tail instead."""
    fallback = policy == "FallbackToLogsOnError" and exit_code != 0 and reason != "ContainerCannotRun"
    try:
        data = tail_bytes(cdir / "termination-log", MAX_CONTAINER_TERMINATION_MESSAGE_LENGTH)
    except FileNotFoundError:
        data = b""
    if data:
        return data.decode(errors="replace")
    return log_tail(cdir / "0.log") if fallback else ""


class Runtime:
    def __init__(self, root: Path, python: str = sys.executable) -> None:
        self.root = root
        self.python = python
        self.shims: dict[Path, subprocess.Popen[bytes]] = {}  # reaped by reap()

    def pod_dir(self, pod: Mapping[str, Any]) -> Path:
        meta = pod["metadata"]
        d = self.root / "pods" / f"{meta['namespace']}_{meta['name']}_{meta['uid']}"
        if not (d / "pod.json").exists():
            d.mkdir(parents=True, exist_ok=True)
            ident = {k: meta[k] for k in ("namespace", "name", "uid")}
            (d / "pod.json").write_text(json.dumps(ident))
        return d

    def pod_dirs(self) -> list[tuple[Path, dict[str, str]]]:
        out = []
        for d in sorted((self.root / "pods").glob("*_*_*")):
            ident = _read(d / "pod.json")
            if ident:
                out.append((d, json.loads(ident)))
        return out

    def state(self, cdir: Path, policy: str = "File") -> ContainerState:
        if not (cdir / "spec.json").exists():
            return ContainerState()
        term = _read(cdir / "term")
        term_at = float(term) if term else None
        alive = _alive(_read(cdir / "pid")) or _alive(_read(cdir / "shim.pid"))
        exit_text = _read(cdir / "exit.json")  # read after the liveness check: a dead shim wrote it already
        started = (_read(cdir / "started") or "").strip() or None
        if not exit_text and not alive:
            lost = {
                "exitCode": 137,
                "finishedAt": now(),
                "reason": "ContainerStatusUnknown",
                "message": "The container could not be located when the pod was terminated",
            }
            exit_text = json.dumps(lost)
            (cdir / "exit.json").write_text(exit_text)
        if exit_text:
            ex = json.loads(exit_text)
            code, reason = int(ex["exitCode"]), ex.get("reason")
            msg = ex.get("message", "")
            tmsg = termination_message(cdir, policy, code, reason)
            msg = f"{msg}: {tmsg}" if msg and tmsg else (msg or tmsg)
            return ContainerState(True, False, started, code, ex["finishedAt"], reason, msg, term_at)
        return ContainerState(True, True, started, term_sent_at=term_at)

    def start(self, cdir: Path, argv: Sequence[str], env: Mapping[str, str], cwd: Path) -> None:
        """Create and start the container: its spec, an empty termination-message file, and its shim."""
        cdir.mkdir(parents=True, exist_ok=True)
        (cdir / "termination-log").touch()
        spec = {"argv": list(argv), "env": dict(env), "cwd": str(cwd)}
        (cdir / "spec.json.tmp").write_text(json.dumps(spec))
        os.replace(cdir / "spec.json.tmp", cdir / "spec.json")
        with (cdir / "shim.log").open("ab") as log:
            proc = subprocess.Popen(
                [self.python, str(SHIM), str(cdir)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            )
        (cdir / "shim.pid").write_text(f"{proc.pid}\n")
        self.shims[cdir] = proc

    def signal(self, cdir: Path, sig: int) -> None:
        """SIGTERM to the container's process (the runtime's StopContainer); SIGKILL to its whole group."""
        line = _read(cdir / "pid")
        if not _alive(line):
            return
        assert line is not None
        pid = int(line.split()[0])
        with contextlib.suppress(ProcessLookupError):
            if sig == signal.SIGKILL:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)
        if sig == signal.SIGTERM and not (cdir / "term").exists():
            (cdir / "term").write_text(f"{time.time()}\n")

    def reap(self) -> None:
        for cdir, proc in list(self.shims.items()):
            if proc.poll() is not None:
                del self.shims[cdir]


def kill_all(root: Path) -> list[str]:
    """SIGKILL every container process still running under ``root`` (teardown); the containers killed."""
    killed = []
    for pid_file in sorted((root / "pods").glob("*/*/pid")):
        line = _read(pid_file)
        if _alive(line):
            assert line is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(int(line.split()[0]), signal.SIGKILL)
            killed.append(str(pid_file.parent))
    return killed
