"""Gateway benchmark: what the gateway adds to a call, against the same fast local upstream, in one run.

    python -m bench.gateway                  # 1, 50, 200 callers; whole and streamed; capture off and on
    python -m bench.gateway --seconds 2      # shorter cells

Four processes serve: the OpenAI-compatible stand-in (``e2e/standin.py``, the "fast local upstream"), a bare
aiohttp proxy (``bench/bare_proxy.py``: the same HTTP server, client and event loop as the gateway and nothing
else, the floor of any gateway on this stack), the gateway without capture, and the gateway capturing every call
into SQLite in a temporary folder (``--store``). The load
generator is this process: N callers, each a keep-alive connection sending one call after another, written on bare
asyncio streams (request bytes formatted from a template, Content-Length and chunked responses parsed by hand) so
that the client costs as little CPU as possible and the same for every path. Each cell runs ``--seconds`` after a
warm-up. Every call asks about another invoice number (each caller counts up from a random one), so captured
requests are not alike and the sanitiser's memo of recent strings helps only with what real calls repeat.

After each capture cell the benchmark waits until the capturing gateway has redacted and stored (or dropped) every
record it queued, reading its ``/metrics``, so the next cell does not share the CPUs with that backlog. The cell
reports the records kept and dropped and the rate they were kept at, from the cell's start to the drain's end: the
rate capture sustains, which is below the call rate when redaction cannot keep up.

Added latency is the difference of percentiles (gateway p50 - direct p50, p99 - p99), not the percentile of
differences. Throughput is completed calls per second. Results go to ``BENCH_OUT`` (default
bench/out/gateway.json) and are printed as a table; docs/benchmarks.md records them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import platform
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

KEY = "sk-bench-0123456789"
CALLERS = (1, 50, 200)
PATHS = ("direct", "bare proxy", "gateway", "gateway+capture")
#: the paced row: this many callers offering --paced calls per second in all (below what the CPUs carry)
PACED_CALLERS = 50
ROUTE = """
apiVersion: slm.io/v1alpha1
kind: SLMRoute
metadata: {{name: bench, namespace: bench}}
spec:
  model: bench-model
  backends:
  - {{name: slm, slmDeploymentRef: {{name: standin}}, maxQueue: 10000}}
  apiKeySecretRefs: [{{name: callers}}]
{capture}
---
apiVersion: v1
kind: Secret
metadata: {{name: callers, namespace: bench}}
stringData: {{bench: "sha256:{digest}"}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout} s")


def request_template(port: int, stream: bool, auth: bool) -> tuple[bytes, bytes]:
    """The bytes of a call up to and after its invoice number (a 9-digit number, so Content-Length is fixed)."""
    body = json.dumps(
        {
            "model": "bench-model",
            "messages": [
                {
                    "role": "user",
                    "content": "Extract the total of invoice #########: 3 items, 12.50 EUR each.",
                }
            ],
            "max_tokens": 32,
            "stream": stream,
        }
    ).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        + (f"Authorization: Bearer {KEY}\r\n" if auth else "")
        + f"Content-Length: {len(body)}\r\n\r\n"
    )
    before, after = (head.encode() + body).split(b"#########")
    return before, after


async def one_call(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: bytes) -> float:
    """Send one call on a keep-alive connection and read the whole answer; returns the time to the first body byte."""
    start = time.perf_counter()
    writer.write(raw)
    head = await reader.readuntil(b"\r\n\r\n")
    if head[9:12] != b"200":
        raise RuntimeError(f"answer {head[:40]!r}")
    lower = head.lower()
    i = lower.find(b"content-length:")
    if i >= 0:
        n = int(lower[i + 15 : lower.index(b"\r\n", i)])
        await reader.readexactly(n)
        return time.perf_counter() - start
    first = 0.0
    while True:  # chunked
        size = int((await reader.readuntil(b"\r\n")).strip(), 16)
        if not first:
            first = time.perf_counter() - start
        if size == 0:
            await reader.readuntil(b"\r\n")
            return first
        await reader.readexactly(size + 2)


async def caller(
    port: int,
    template: tuple[bytes, bytes],
    first_number: int,
    warm_until: float,
    end: float,
    out: list[float],
    ttfts: list[float],
    interval: float,
) -> None:
    """Calls one after another on one connection; with ``interval``, one call per interval (paced, open loop)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    due = time.perf_counter() + random.random() * interval
    number = first_number
    try:
        while True:
            if interval:
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                due += interval
            t0 = time.perf_counter()
            if t0 >= end:
                return
            number += 1
            first = await one_call(reader, writer, b"%s%09d%s" % (template[0], number, template[1]))
            if t0 >= warm_until:
                out.append(time.perf_counter() - t0)
                ttfts.append(first)
    finally:
        writer.close()


@dataclass
class Cell:
    path: str  # direct | gateway | gateway+capture
    stream: bool
    callers: int
    paced: float  # calls per second offered (0: closed loop, each caller as fast as answers come)
    calls: int
    seconds: float
    throughput: float  # calls per second
    p50_ms: float
    p99_ms: float
    ttft_p50_ms: float
    cpu_us_per_call: dict[str, float]  # CPU time (user + system) per call of each serving process (redaction:
    # the capturing gateway's child processes)
    capture: dict[str, float] | None = None  # capture cells: records queued, kept, dropped; drain s; kept/s


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else float("nan")


def cpu_seconds(pid: int) -> dict[str, float]:
    """CPU time (user + system) of a process (``own``) and of its live child processes (``children``: a
    capturing gateway's redaction processes)."""
    total = {"own": 0.0, "children": 0.0}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if stat.parent.name == str(pid) or fields[1] == str(pid):
            which = "own" if stat.parent.name == str(pid) else "children"
            total[which] += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


async def measure(
    path: str,
    port: int,
    stream: bool,
    callers: int,
    seconds: float,
    pids: dict[str, int],
    paced: float = 0.0,
    store: Path | None = None,
) -> Cell:
    """One cell; ``store``: the capturing gateway's SQLite file, whose records are waited for."""
    template = request_template(port, stream, auth=path != "direct")
    lat: list[float] = []
    ttfts: list[float] = []
    warmup = min(1.0, seconds / 2)
    interval = callers / paced if paced else 0.0
    before = None
    if store is not None:
        before = await capture_counts(port) | {"rows": float(store_rows(store))}
    now = time.perf_counter()
    warm_until, end = now + warmup, now + warmup + seconds
    cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
    n0 = len(lat)
    await asyncio.gather(
        *(
            caller(port, template, random.randrange(10**9 - 10**6), warm_until, end, lat, ttfts, interval)
            for _ in range(callers)
        )
    )
    calls = max(len(lat) - n0, 1)
    # the capture backlog is worked off before the CPU is read: its redaction and writes count per call
    captured = await drained(port, before, now, store) if before is not None and store else None
    # CPU is read over warm-up and measurement together: per call of both
    total = len(lat) * (seconds + warmup) / seconds
    cpu: dict[str, float] = {}
    for name, pid in pids.items():
        now_cpu = cpu_seconds(pid)
        cpu[name] = (now_cpu["own"] - cpu0[name]["own"]) / max(total, 1) * 1e6
        if now_cpu["children"] or cpu0[name]["children"]:
            cpu["redaction"] = (now_cpu["children"] - cpu0[name]["children"]) / max(total, 1) * 1e6
    return Cell(
        path, stream, callers, paced, calls, seconds, len(lat) / seconds,
        percentile(lat, 0.5), percentile(lat, 0.99), percentile(ttfts, 0.5), cpu, captured,
    )  # fmt: skip


async def capture_counts(port: int) -> dict[str, float]:
    """The capturing gateway's capture series: queued, written and dropped (all reasons)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
        text = (await reader.read()).decode()
    finally:
        writer.close()
    counts = {"queued": 0.0, "written": 0.0, "dropped": 0.0}
    names = {
        "slm_capture_queued_total": "queued",
        "slm_capture_written_total": "written",
        "slm_capture_dropped_total": "dropped",
    }
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        key = names.get(name.split("{", 1)[0])
        if key and not line.startswith("#"):
            counts[key] += float(value)
    return counts


async def drained(
    port: int, before: dict[str, float], started: float, store: Path, limit: float = 300.0
) -> dict[str, float]:
    """Wait until every record queued since ``before`` is kept or dropped; what happened to them, and how fast.

    The wait counts the store's rows (read here, costing the gateway nothing) and reads the gateway's
    ``/metrics`` (several milliseconds of its CPU each) only every few seconds and at the end."""
    rows0 = before["rows"]
    now = await capture_counts(port)
    scraped = time.perf_counter()
    while True:
        queued = now["queued"] - before["queued"]
        dropped = now["dropped"] - before["dropped"]
        elapsed = time.perf_counter() - started
        if store_rows(store) - rows0 + dropped >= queued or elapsed > limit:
            now = await capture_counts(port)
            return {
                "queued": now["queued"] - before["queued"],
                "kept": now["written"] - before["written"],
                "dropped": now["dropped"] - before["dropped"],
                "seconds": elapsed,
                "keptPerSecond": (now["written"] - before["written"]) / elapsed,
            }
        await asyncio.sleep(0.25)
        if time.perf_counter() - scraped > 5:
            now, scraped = await capture_counts(port), time.perf_counter()


def store_rows(store: Path) -> int:
    with contextlib.closing(sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=5)) as db:
        return int(db.execute("SELECT count(*) FROM captured_calls").fetchone()[0])


def start(cmd: list[str], port: int, log: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(log, "wb"), start_new_session=True)  # noqa: SIM115
    wait_port(port, proc)
    return proc


def machine() -> dict[str, Any]:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    return {
        "cpus": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "load": os.getloadavg(),
    }


def servers(
    tmp: Path, event_loop: str, redact_processes: int = 1
) -> tuple[dict[str, int], dict[str, subprocess.Popen[bytes]]]:
    upstream = free_port()
    procs = {
        "direct": start(
            [sys.executable, "-m", "e2e.standin", "--listen", f"127.0.0.1:{upstream}", "--name", "standin"],
            upstream,
            tmp / "standin.log",
        )
    }
    digest = hashlib.sha256(KEY.encode()).hexdigest()
    ports: dict[str, int] = {"direct": upstream}
    bare = ports["bare proxy"] = free_port()
    procs["bare proxy"] = start(
        [sys.executable, "-m", "bench.bare_proxy", "--listen", f"127.0.0.1:{bare}", "--upstream", f"http://127.0.0.1:{upstream}"],
        bare,
        tmp / "bare-proxy.log",
    )  # fmt: skip
    for path, capture in (("gateway", ""), ("gateway+capture", '  capture: {sampleRate: "1"}')):
        folder = tmp / path.replace("+", "-")
        folder.mkdir()
        (folder / "route.yaml").write_text(ROUTE.format(capture=capture, digest=digest))
        port = ports[path] = free_port()
        cmd = [sys.executable, "-m", "slm_operator.cli", "gateway", "-f", str(folder / "route.yaml"), "--listen", f"127.0.0.1:{port}",
               "--endpoint", f"bench/standin=http://127.0.0.1:{upstream}", "--log-level", "warning",
               "--event-loop", event_loop]  # fmt: skip
        if capture:
            cmd += ["--store", f"sqlite:///{folder}/usage.db", "--spool-dir", str(folder / "spool"),
                    "--redact-processes", str(redact_processes)]  # fmt: skip
        procs[path] = start(cmd, port, folder / "gateway.log")
    return ports, procs


def table(cells: list[Cell]) -> str:
    by = {(c.path, c.stream, c.callers, c.paced): c for c in cells}
    lines = [
        f"{'mode':<7}{'callers':>12} | {'direct p50/p99 ms':>17} | {'gateway p50/p99':>15} | {'added p50/p99':>13} | "
        f"{'calls/s direct':>14} {'bare':>5} {'ratio':>5} {'gateway':>7} {'ratio':>5} | "
        f"{'capture p50/p99':>15} {'calls/s':>7} {'vs gw':>5} | "
        f"{'CPU us/call: upstream':>21} {'bare':>5} {'gateway':>7} {'capture':>7} {'redact':>7} | "
        f"{'kept/s':>6} {'dropped':>7}"
    ]
    for stream in (False, True):
        for n, rate in sorted({(c.callers, c.paced) for c in cells}, key=lambda t: (t[1] > 0, t[0])):
            d, b, g, k = (by[(p, stream, n, rate)] for p in PATHS)
            who = f"{n}@{rate:.0f}/s" if rate else str(n)
            lines.append(
                f"{'stream' if stream else 'whole':<7}{who:>12} | {d.p50_ms:>7.2f}/{d.p99_ms:<9.2f} | "
                f"{g.p50_ms:>6.2f}/{g.p99_ms:<8.2f} | {g.p50_ms - d.p50_ms:>5.2f}/{g.p99_ms - d.p99_ms:<7.2f} | "
                f"{d.throughput:>14.0f} {b.throughput:>5.0f} {b.throughput / d.throughput:>5.0%} "
                f"{g.throughput:>7.0f} {g.throughput / d.throughput:>5.0%} | "
                f"{k.p50_ms:>6.2f}/{k.p99_ms:<8.2f} {k.throughput:>7.0f} {k.throughput / g.throughput:>5.0%} | "
                f"{d.cpu_us_per_call['upstream']:>21.0f} {b.cpu_us_per_call['gateway']:>5.0f} "
                f"{g.cpu_us_per_call['gateway']:>7.0f} "
                f"{k.cpu_us_per_call['gateway']:>7.0f} {k.cpu_us_per_call.get('redaction', 0):>7.0f} | "
                f"{(k.capture or {}).get('keptPerSecond', 0):>6.0f} {(k.capture or {}).get('dropped', 0):>7.0f}"
            )
    return "\n".join(lines)


async def run_cells(
    ports: dict[str, int],
    pids: dict[str, int],
    seconds: float,
    callers: tuple[int, ...],
    paced: float,
    store: Path,
) -> list[Cell]:
    cells = []
    runs = [(n, 0.0) for n in callers] + ([(PACED_CALLERS, paced)] if paced else [])
    for stream in (False, True):
        for n, rate in runs:
            for path in PATHS:
                serving = {"upstream": pids["direct"]} | ({"gateway": pids[path]} if path != "direct" else {})
                kept = store if path == "gateway+capture" else None
                cell = await measure(path, ports[path], stream, n, seconds, serving, rate, kept)
                print(f"  {path:<16} {'stream' if stream else 'whole':<7} {n:>4} callers{f' at {rate:.0f}/s' if rate else ''}: "
                      f"{cell.throughput:7.0f} calls/s, p50 {cell.p50_ms:6.2f} ms, p99 {cell.p99_ms:6.2f} ms, "
                      f"CPU/call {', '.join(f'{k} {v:.0f} us' for k, v in cell.cpu_us_per_call.items())}", file=sys.stderr)  # fmt: skip
                if cell.capture:
                    print(f"    capture: {cell.capture['kept']:.0f} of {cell.capture['queued']:.0f} records kept, "
                          f"{cell.capture['dropped']:.0f} dropped, {cell.capture['seconds']:.1f} s to drain, "
                          f"{cell.capture['keptPerSecond']:.0f} kept/s", file=sys.stderr)  # fmt: skip
                cells.append(cell)
    return cells


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seconds", type=float, default=4.0, help="measured seconds per cell (default %(default)s)"
    )
    parser.add_argument(
        "--callers", type=int, nargs="+", default=list(CALLERS), help="concurrent callers per cell"
    )
    parser.add_argument(
        "--paced",
        type=float,
        default=200.0,
        help=f"also offer this many calls per second from {PACED_CALLERS} callers (0: skip; default %(default)s)",
    )
    parser.add_argument(
        "--event-loop",
        default="auto",
        choices=["auto", "uvloop", "asyncio"],
        help="the gateways' --event-loop (default %(default)s; the stand-in and the callers always use asyncio)",
    )
    parser.add_argument(
        "--redact-processes",
        type=int,
        default=1,
        help="the capturing gateway's --redact-processes (default %(default)s; 0: a thread of its own process)",
    )
    args = parser.parse_args(argv)
    before = machine()
    from slm_operator.gateway.standalone import event_loop

    loop = event_loop(args.event_loop)
    with tempfile.TemporaryDirectory(prefix="slm-bench-gateway-") as tmp:
        ports, procs = servers(Path(tmp), loop, args.redact_processes)
        try:
            pids = {name: p.pid for name, p in procs.items()}
            store = Path(tmp) / "gateway-capture" / "usage.db"
            cells = asyncio.run(run_cells(ports, pids, args.seconds, tuple(args.callers), args.paced, store))
        finally:
            for p in procs.values():
                os.killpg(p.pid, signal.SIGTERM)
            for p in procs.values():
                p.wait(timeout=30)
    after = machine()
    print(f"machine: {before['cpus']} CPUs ({before['cpu']}), Python {before['python']}, gateway event loop {loop}, "
          f"redaction processes {args.redact_processes}, "
          f"load average before {before['load'][0]:.2f}, after {after['load'][0]:.2f}")  # fmt: skip
    print(table(cells))
    out = Path(os.environ.get("BENCH_OUT", "bench/out/gateway.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "machine": before,
                "loadAfter": after["load"],
                "eventLoop": loop,
                "redactProcesses": args.redact_processes,
                "cells": [asdict(c) for c in cells],
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
