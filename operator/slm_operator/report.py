"""Human-readable rendering of a plan (``slm-operator plan`` and ``make demo``): a table per pool and a summary."""

from __future__ import annotations

from slm_operator.planner.model import GiB, Plan

TIER = {"Guaranteed": "G", "Burstable": "B", "BestEffort": "BE"}


def _gib(n: int) -> str:
    return f"{n / GiB:.1f}"


def render_table(plan: Plan) -> str:
    pp = plan.pool
    lines = [f"GPUPool {pp.name}: {pp.gpus_used}/{pp.gpus_total} GPUs used", ""]
    nodes = {n.name: n for n in plan.nodes}
    header = f"{'NODE':<14}{'GPU':>3}  {'PRODUCT':<14}{'MODE':<12}{'LAYOUT':<42}{'FREE GiB':>8}  TENANTS"
    lines.append(header)
    for g in plan.gpus:
        if g.mode == "MIG":
            layout = " ".join(
                f"{i.profile}@{i.start}" for i in sorted(g.mig_instances, key=lambda i: i.start)
            )
        elif g.mode in ("MPS", "TimeSlicing"):
            n = nodes.get(g.node)
            layout = f"{n.replicas_per_gpu if n else '?'} replicas/GPU (node-wide)"
        elif g.mode in ("Reserved", "Segment"):
            layout = g.reservation or g.segment or ""
        else:
            layout = "whole GPU" if g.mode == "Exclusive" else ""
        tenants = ", ".join(
            f"{r.deployment.split('/')[-1]}#{r.ordinal}({TIER[r.qos]}{'*' if r.borrowed else ''} {_gib(r.memory_bytes)})"
            for r in g.replicas
        )
        lines.append(
            f"{g.node:<14}{g.index:>3}  {g.product:<14}{g.mode:<12}{layout[:41]:<42}{_gib(g.free_bytes):>8}  {tenants}"
        )
    lines += [
        "",
        f"GPUs used {pp.gpus_used}/{pp.gpus_total} (free {pp.gpus_free}, reserved {pp.gpus_reserved}, "
        f"segment {pp.gpus_segment}, lent {pp.gpus_borrowed})",
        f"memory allocated {_gib(pp.memory_allocated_bytes)} GiB of {_gib(pp.memory_total_bytes)} GiB; "
        f"stranded {_gib(pp.memory_stranded_bytes)} GiB",
        f"replicas placed {pp.replicas_placed}/{pp.replicas_desired}, unplaced {pp.replicas_unplaced}, "
        f"moved {pp.replicas_moved}",
        "(tenant = deployment#replica(tier G/B/BE, GiB); * = on a lent reserved GPU)",
    ]
    lines += _tenant_lines(plan)
    for d in plan.deployments:
        for u in d.unplaced:
            lines.append(f"unplaced {d.deployment}#{u.ordinal}: {u.reason}: {u.message}")
    for e in pp.evictions:
        where = f" -> {e.to_node}/{e.to_gpu}" if e.to_node else ""
        lines.append(
            f"evict {e.deployment}#{e.ordinal} from {e.node}/{e.gpu_index}{where}: {e.reason}: {e.message}"
        )
    return "\n".join(lines) + "\n"


def _tenant_lines(plan: Plan) -> list[str]:
    """Per tenant of the pool (docs/tenants.md): GPU-equivalents held within its quota and borrowed, share
    memory, and replicas placed and unplaced."""
    if not plan.tenants:
        return []
    lines = [
        "",
        f"{'TENANT':<16}{'GUARANTEED':>11}{'CEILING':>9}{'USED':>8}{'BORROWED':>10}{'MEMORY GiB':>12}"
        f"{'REPLICAS':>10}{'UNPLACED':>10}",
    ]
    for t in plan.tenants:
        ceiling = f"{t.ceiling:g}" if t.ceiling is not None else "-"
        memory = _gib(t.memory_guaranteed_bytes + t.memory_borrowed_bytes)
        lines.append(
            f"{t.name[:15]:<16}{t.guaranteed:>11g}{ceiling:>9}{t.used_guaranteed:>8.2f}{t.used_borrowed:>10.2f}"
            f"{memory:>12}{t.replicas_guaranteed + t.replicas_borrowed:>10}{t.replicas_unplaced:>10}"
        )
    lines.append(
        "(GPU-equivalents: a share counts the larger of its GPU memory and compute fractions; USED = "
        "within the guaranteed quota, BORROWED = beyond it, first to yield to another tenant)"
    )
    return lines
