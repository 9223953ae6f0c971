"""MIG layout targets: the layouts the GPUs a tier opens should end up with (docs/planner.md section 4.2).

Placing largest first, replicas of one MIG profile would fill GPUs by themselves: 4 x 1g.20gb uses all 8 memory
slices of an H100 but 4 of its 7 compute slices, 7 x 1g.10gb all compute slices but 7 memory slices, where
1g.20gb + 6 x 1g.10gb uses both. So before a tier is placed, its replicas are counted per (GPU model, profile
they would open a GPU with), and a greedy cover picks maximal legal layouts that fill the most of a GPU (memory
and compute slices) with that demand (:meth:`MigTargets.plan`). A GPU opened for a profile takes the next such
layout that contains it as its target (:meth:`MigTargets.take`) and accepts only what the target still has
room for (:func:`target_room`); the targets are dropped when the tier's first pass is over
(:meth:`MigTargets.drop`): the tier's last-resort pass, later tiers and consolidation fill whatever is left.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache

from slm_operator.planner.mig import Counts, MigGeometry, geometry
from slm_operator.planner.state import Dep, Gpu, Rep

#: no layout target (the id of a GPU without one)
NO_TARGET = 0


@lru_cache(maxsize=16384)
def target_room(model_key: str, want: Counts, have: Counts) -> frozenset[int]:
    """Profiles a GPU with layout target ``want`` may still take while it holds ``have``.

    An instance may fill a target slot of its own profile or of a profile at least as large in memory and
    compute slices (a replica that needs 1g.10gb takes a 1g.20gb slot rather than a bigger instance elsewhere;
    ``+me`` profiles only their own slots).
    The instances held are matched to slots largest first, each to the smallest slot that holds it; what the
    remaining slots hold is accepted. Nothing is accepted when the instances held do not match the target."""
    geo = geometry(model_key)
    assert geo is not None
    size = [(pr.memory_slices, pr.compute_slices) for pr in geo.profiles]
    slots = sorted((size[q], q) for q, c in enumerate(want) for _ in range(c))
    held = sorted((size[p] for p, c in enumerate(have) for _ in range(c)), reverse=True)
    for mem, cmp in held:
        for i, ((slot_mem, slot_cmp), _q) in enumerate(slots):
            if slot_mem >= mem and slot_cmp >= cmp:
                del slots[i]
                break
        else:
            return frozenset()
    return frozenset(
        p
        for p, (mem, cmp) in enumerate(size)
        if any(
            q == p or (slot_mem >= mem and slot_cmp >= cmp and not geo.profiles[p].media_extensions)
            for (slot_mem, slot_cmp), q in slots
        )
    )


@dataclass(slots=True)
class _Cover:
    """One layout of a tier's cover and how many more GPUs may take it as their target."""

    layout: Counts
    copies_left: int


def _greedy_cover(geo: MigGeometry, remaining: list[int]) -> list[_Cover]:
    """Maximal layouts, each with its number of copies, that cover ``remaining`` instances per profile."""
    weight = [
        pr.memory_slices / geo.memory_slices + pr.compute_slices / geo.compute_slices for pr in geo.profiles
    ]
    layouts = [state for i, state in enumerate(geo.states) if geo.maximal[i]]
    cover: list[_Cover] = []
    while any(remaining):
        best: Counts | None = None
        best_value = 0.0
        for layout in layouts:
            value = sum(min(c, remaining[p]) * weight[p] for p, c in enumerate(layout) if c)
            if value > best_value + 1e-9:
                best, best_value = layout, value
        if best is None:
            break
        copies = min((remaining[p] // c for p, c in enumerate(best) if c and remaining[p] >= c), default=1)
        copies = max(1, copies)
        for p, c in enumerate(best):
            remaining[p] = max(0, remaining[p] - c * copies)
        cover.append(_Cover(best, copies))
    return cover


class MigTargets:
    """The layout targets of the tier being placed, and which GPU was opened for which target.

    Target ids number the distinct layouts (id 0: no target); open MIG GPUs are indexed by (target id, layout
    state), so a GPU with a target is only offered what its target still has room for."""

    def __init__(self) -> None:
        #: per GPU model: the cover's layouts, in the order it chose them
        self.pending: dict[str, list[_Cover]] = {}
        #: target id of each GPU opened for one (by gid)
        self.of_gpu: dict[int, int] = {}
        #: the layout of each target id
        self.layouts: list[Counts] = [()]
        self._ids: dict[Counts, int] = {}

    def plan(self, queue: Iterable[Rep], opening_profile: Callable[[Dep], tuple[str, int] | None]) -> None:
        """Choose the targets for a tier from its whole demand. ``opening_profile(dep)`` is the (GPU model,
        MIG profile) a replica of ``dep`` would open a new GPU with, or None when it would not open a MIG GPU."""
        self.pending = {}
        deps: dict[int, Dep] = {}
        replicas: dict[int, int] = {}
        for r in queue:
            deps[r.dep.uid] = r.dep
            replicas[r.dep.uid] = replicas.get(r.dep.uid, 0) + 1
        demand: dict[str, list[int]] = {}
        for dep_id, count in replicas.items():
            dep = deps[dep_id]
            opening = opening_profile(dep)
            if opening is None:
                continue
            model, profile = opening
            geo = geometry(model)
            assert geo is not None
            counts = demand.setdefault(model, [0] * len(geo.profiles))
            counts[profile] += count
        for model, remaining in sorted(demand.items()):
            geo = geometry(model)
            assert geo is not None
            self.pending[model] = _greedy_cover(geo, remaining)

    def take(self, gpu: Gpu, profile: int) -> None:
        """Give a GPU opened for MIG ``profile`` the next target of its model that contains the profile."""
        self.of_gpu.pop(gpu.gid, None)
        for cover in self.pending.get(gpu.key, ()):
            layout = cover.layout
            if cover.copies_left > 0 and layout[profile] > 0:
                cover.copies_left -= 1
                target = self._ids.get(layout)
                if target is None:
                    target = self._ids[layout] = len(self.layouts)
                    self.layouts.append(layout)
                self.of_gpu[gpu.gid] = target
                return

    def drop(self) -> list[int]:
        """Forget the targets (the tier's first pass is over); returns the gids of the GPUs that had one."""
        self.pending = {}
        targeted = list(self.of_gpu)
        self.of_gpu = {}
        return targeted
