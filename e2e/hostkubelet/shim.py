"""The per-container shim of the e2e host kubelet: the stand-in for containerd-shim.

    python e2e/hostkubelet/shim.py CONTAINER_DIR

Reads ``CONTAINER_DIR/spec.json`` (``argv``, ``env``, ``cwd``), starts the container's process in a session of
its own (so a signal to its process group reaches everything it started, as a container's cgroup would), sends
its stdout and stderr to ``CONTAINER_DIR/0.log`` and waits for it. It records what a container runtime reports
to the kubelet, as files, so that a restarted host kubelet can read them (re-adoption):

* ``pid`` (``<pid> <starttime>``: the process and its start time from /proc, which tells a reused pid apart)
  and ``started`` (RFC 3339) once the process runs;
* ``exit.json`` (``exitCode``, ``finishedAt``, and for a process that could not be started ``reason``
  ``StartError`` with exit code 128 and the error as ``message``, as containerd reports it) when it ends.
  A process killed by signal N exits with 128+N, as runtimes report it.

The shim is started in a session of its own too, so it outlives the host kubelet (like containerd-shim outlives
containerd and the kubelet). It ignores SIGTERM/SIGINT/SIGHUP with a handler (not SIG_IGN, which the container
would inherit). Only the standard library: it runs before anything else is imported.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def proc_starttime(pid: int) -> str:
    """Field 22 of /proc/<pid>/stat (clock ticks since boot): with the pid, identifies the process."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2 :].split()[19]


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _ignore(signum: int, frame: FrameType | None) -> None:
    pass


def run(cdir: Path) -> int:
    spec = json.loads((cdir / "spec.json").read_text())
    with (cdir / "0.log").open("ab") as log:
        try:
            proc = subprocess.Popen(
                spec["argv"],
                env=spec["env"],
                cwd=spec["cwd"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            message = f"failed to start container process {spec['argv'][0]!r}: {exc.strerror or exc}"
            exit_ = {"exitCode": 128, "finishedAt": now(), "reason": "StartError", "message": message}
            write_atomically(cdir / "exit.json", json.dumps(exit_))
            return 0
        write_atomically(cdir / "pid", f"{proc.pid} {proc_starttime(proc.pid)}\n")
        write_atomically(cdir / "started", now() + "\n")
        code = proc.wait()
    exit_ = {"exitCode": code if code >= 0 else 128 - code, "finishedAt": now()}
    write_atomically(cdir / "exit.json", json.dumps(exit_))
    return 0


def main() -> int:
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _ignore)
    return run(Path(sys.argv[1]))


if __name__ == "__main__":
    sys.exit(main())
