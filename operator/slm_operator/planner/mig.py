"""MIG layout geometry: every legal multiset of GPU-instance profiles of one GPU model, as a state machine.

A layout is a multiset of profiles (a count vector in catalog profile order). It is *legal* when its instances
can be given start slots from each profile's legal starts without overlapping memory slices, with at most
``max_count`` of each profile, at most one ``+me`` instance and no more compute slices than the GPU has. Legal
layouts are closed under removal, so the planner keeps one integer state per GPU and moves between states with
a precomputed transition table (``add[state][profile]``): testing whether a profile still fits is one lookup.
The table is built once per GPU model by exhaustive enumeration of placements (8 memory slices: a few hundred
states), and ``place`` returns canonical start slots for a legal multiset.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

from slm_operator.catalog import GpuModel, MigProfile, gpu_by_key

Counts = tuple[int, ...]


@dataclass(frozen=True, slots=True)
class MigGeometry:
    """Legal MIG layouts of one GPU model."""

    model_key: str
    profiles: tuple[MigProfile, ...]
    index: Mapping[str, int]
    states: tuple[Counts, ...]
    state_id: Mapping[Counts, int]
    #: add[state][profile] -> next state, or -1 when the profile no longer fits.
    add: tuple[tuple[int, ...], ...]
    #: memory slices / compute slices used per state
    slices: tuple[int, ...]
    compute: tuple[int, ...]
    #: no profile can be added any more
    maximal: tuple[bool, ...]
    memory_slices: int
    compute_slices: int

    @property
    def empty(self) -> int:
        return 0

    def counts_of(self, names: Sequence[str]) -> Counts:
        counts = [0] * len(self.profiles)
        for n in names:
            counts[self.index[n]] += 1
        return tuple(counts)

    def state_of(self, counts: Counts) -> int:
        """State id of a count vector, -1 when the multiset is not a legal layout."""
        return self.state_id.get(counts, -1)

    def names(self, counts: Counts) -> dict[str, int]:
        """{profile name: count} in catalog order, zero counts left out."""
        return dict(_names(self.model_key, counts))


@lru_cache(maxsize=8192)
def _names(model_key: str, counts: Counts) -> tuple[tuple[str, int], ...]:
    geo = geometry(model_key)
    assert geo is not None
    return tuple((geo.profiles[i].name, c) for i, c in enumerate(counts) if c)


def _enumerate(gpu: GpuModel) -> set[Counts]:
    profiles = gpu.mig_profiles
    n_slices = gpu.memory_slices
    # placements starting at each slice: (profile index, size)
    by_start: list[list[tuple[int, int]]] = [[] for _ in range(n_slices)]
    for pi, p in enumerate(profiles):
        for s in p.starts:
            by_start[s].append((pi, p.memory_slices))
    found: set[Counts] = set()
    counts = [0] * len(profiles)

    def legal() -> bool:
        compute = 0
        me = 0
        for pi, c in enumerate(counts):
            if not c:
                continue
            p = profiles[pi]
            if c > p.max_count:
                return False
            compute += c * p.compute_slices
            if p.media_extensions:
                me += c
        return compute <= gpu.compute_slices and me <= 1

    def walk(pos: int) -> None:
        if pos >= n_slices:
            found.add(tuple(counts))
            return
        walk(pos + 1)  # leave slice `pos` free
        for pi, size in by_start[pos]:
            if pos + size > n_slices:
                continue
            counts[pi] += 1
            if legal():
                walk(pos + size)
            counts[pi] -= 1

    walk(0)
    return found


@lru_cache(maxsize=64)
def geometry(model_key: str) -> MigGeometry | None:
    """The layout state machine of a catalog GPU model, or None when it is not MIG-capable."""
    gpu = gpu_by_key(model_key)
    if not gpu.mig_capable or not gpu.mig_profiles:
        return None
    legal = _enumerate(gpu)
    # canonical order: by total slices, then lexicographic; the empty layout is state 0
    states = tuple(sorted(legal, key=lambda c: (sum(c), c)))
    state_id = {c: i for i, c in enumerate(states)}
    n = len(gpu.mig_profiles)
    add: list[tuple[int, ...]] = []
    for c in states:
        row = []
        for pi in range(n):
            nxt = list(c)
            nxt[pi] += 1
            row.append(state_id.get(tuple(nxt), -1))
        add.append(tuple(row))
    slices = tuple(sum(c[i] * gpu.mig_profiles[i].memory_slices for i in range(n)) for c in states)
    compute = tuple(sum(c[i] * gpu.mig_profiles[i].compute_slices for i in range(n)) for c in states)
    maximal = tuple(all(x < 0 for x in row) for row in add)
    return MigGeometry(
        model_key=gpu.key,
        profiles=gpu.mig_profiles,
        index={p.name: i for i, p in enumerate(gpu.mig_profiles)},
        states=states,
        state_id=state_id,
        add=tuple(add),
        slices=slices,
        compute=compute,
        maximal=maximal,
        memory_slices=gpu.memory_slices,
        compute_slices=gpu.compute_slices,
    )


@lru_cache(maxsize=4096)
def place(model_key: str, counts: Counts) -> tuple[tuple[int, int], ...] | None:
    """Canonical (profile index, start) pairs for a legal multiset, or None if it is not legal.

    Profiles with the most memory slices are placed first, each at the lowest start that still lets the rest be
    placed (exhaustive backtracking over at most 8 slices), so the same multiset always gets the same starts.
    """
    geo = geometry(model_key)
    if geo is None or len(counts) != len(geo.profiles):
        return None
    wanted: list[int] = []
    for pi in sorted(range(len(counts)), key=lambda i: (-geo.profiles[i].memory_slices, i)):
        wanted.extend([pi] * counts[pi])
    if sum(geo.profiles[pi].compute_slices for pi in wanted) > geo.compute_slices:
        return None
    chosen: list[int] = []
    if not _place_from(geo, wanted, chosen, 0, 0):
        return None
    return tuple(sorted(zip(wanted, chosen, strict=True), key=lambda t: (t[1], t[0])))


def _place_from(geo: MigGeometry, wanted: list[int], chosen: list[int], i: int, used: int) -> bool:
    """``place``'s backtracking from the ``i``-th wanted profile, ``used`` the memory slices taken (a bit mask);
    the starts found go to ``chosen``. A function of its own, not a recursive closure, which would be a reference
    cycle left to the cyclic collector (docs/planner.md §4.4)."""
    if i == len(wanted):
        return True
    p = geo.profiles[wanted[i]]
    lo = chosen[i - 1] + 1 if i and wanted[i - 1] == wanted[i] else 0
    mask_base = (1 << p.memory_slices) - 1
    for s in p.starts:
        if s < lo:
            continue
        mask = mask_base << s
        if used & mask:
            continue
        chosen.append(s)
        if _place_from(geo, wanted, chosen, i + 1, used | mask):
            return True
        chosen.pop()
    return False


def starts_legal(model_key: str, instances: Sequence[tuple[int, int]]) -> bool:
    """Whether explicit (profile index, start) pairs form a legal layout."""
    geo = geometry(model_key)
    if geo is None:
        return False
    used = 0
    counts = [0] * len(geo.profiles)
    for pi, s in instances:
        p = geo.profiles[pi]
        if s not in p.starts:
            return False
        mask = ((1 << p.memory_slices) - 1) << s
        if used & mask:
            return False
        used |= mask
        counts[pi] += 1
    return geo.state_of(tuple(counts)) >= 0


@lru_cache(maxsize=4096)
def complete(model_key: str, counts: Counts) -> Counts:
    """Add spare instances to a legal layout until no profile fits (spares are free capacity for later replicas
    without a repartition). Greedy: most usable memory per compute slice first, then most memory; +me never."""
    geo = geometry(model_key)
    if geo is None:
        return counts
    order = sorted(
        (i for i, p in enumerate(geo.profiles) if not p.media_extensions),
        key=lambda i: (
            -geo.profiles[i].memory_mib / geo.profiles[i].compute_slices,
            -geo.profiles[i].memory_mib,
            i,
        ),
    )
    st = geo.state_of(counts)
    if st < 0:
        return counts
    progress = True
    while progress:
        progress = False
        for pi in order:
            nxt = geo.add[st][pi]
            if nxt >= 0:
                st = nxt
                progress = True
                break
    return geo.states[st]


def fitting_profiles(model_key: str, memory_bytes: int) -> tuple[int, ...]:
    """Indices of non-+me profiles whose usable memory holds ``memory_bytes``, smallest first
    (fewest memory slices, then fewest compute slices)."""
    return _fitting(model_key, memory_bytes)


@lru_cache(maxsize=65536)
def _fitting(model_key: str, memory_bytes: int) -> tuple[int, ...]:
    geo = geometry(model_key)
    if geo is None:
        return ()
    fits = [
        i for i, p in enumerate(geo.profiles) if not p.media_extensions and p.memory_bytes >= memory_bytes
    ]
    fits.sort(key=lambda i: (geo.profiles[i].memory_slices, geo.profiles[i].compute_slices, i))
    return tuple(fits)
