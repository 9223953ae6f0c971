"""MIG layout geometry: the legal-layout state machine agrees with the facts file and the catalog."""

from __future__ import annotations

import pytest

from slm_operator.catalog import find_layout, gpu_by_key
from slm_operator.planner.mig import complete, fitting_profiles, geometry, place, starts_legal

EIGHT_SLICE = ("A100-40GB", "A100-80GB", "H100-80GB", "H200-141GB")


def _counts(model: str, **named: int) -> tuple[int, ...]:
    geo = geometry(model)
    assert geo is not None
    names = []
    for name, n in named.items():
        names += [name.replace("_", ".").replace("p", "+")] * n
    return geo.counts_of(names)


@pytest.mark.parametrize("model", EIGHT_SLICE)
def test_28_maximal_layouts_without_media_extensions(model: str) -> None:
    geo = geometry(model)
    assert geo is not None
    maximal = [
        s
        for s, m in zip(geo.states, geo.maximal, strict=True)
        if m and not any(c for c, p in zip(s, geo.profiles, strict=True) if p.media_extensions)
    ]
    assert len(maximal) == 28  # gpu-sharing.md section 1.4


def test_a30_has_four_maximal_layouts() -> None:
    geo = geometry("A30")
    assert geo is not None
    maximal = [
        s
        for s, m in zip(geo.states, geo.maximal, strict=True)
        if m and not any(c for c, p in zip(s, geo.profiles, strict=True) if p.media_extensions)
    ]
    assert len(maximal) == 4


def test_non_mig_gpu_has_no_geometry() -> None:
    assert geometry("L4") is None
    assert fitting_profiles("L4", 1) == ()


@pytest.mark.parametrize("model", (*EIGHT_SLICE, "A30", "B200"))
def test_every_state_places_legally_and_matches_the_catalog(model: str) -> None:
    geo = geometry(model)
    assert geo is not None
    gpu = gpu_by_key(model)
    for counts in geo.states:
        pairs = place(model, counts)
        assert pairs is not None
        assert starts_legal(model, pairs)
        assert find_layout(gpu, geo.names(counts)) is not None
        full = complete(model, counts)
        assert all(f >= c for f, c in zip(full, counts, strict=True))
        assert geo.maximal[geo.state_of(full)]


def test_known_legal_and_illegal_layouts() -> None:
    geo = geometry("H100-80GB")
    assert geo is not None
    legal = [
        {"4g.40gb": 1, "3g.40gb": 1},
        {"3g.40gb": 1, "2g.20gb": 2},
        {"2g.20gb": 3, "1g.20gb": 1},
        {"1g.10gb": 6, "1g.20gb": 1},
        {"1g.10gb": 6, "1g.10gb+me": 1},
        {"1g.20gb": 4},
    ]
    illegal = [
        {"4g.40gb": 1, "3g.40gb": 1, "1g.10gb": 1},  # 8 compute slices
        {"1g.10gb": 7, "1g.20gb": 1},  # 8 compute slices
        {"1g.10gb+me": 2},  # one +me per GPU
        {"4g.40gb": 1, "2g.20gb": 2},  # a 4g forbids 2g at 0/2: only 2g@4 remains
        {"3g.40gb": 3},
        {"7g.80gb": 1, "1g.10gb": 1},
    ]
    for layout in legal:
        assert geo.state_of(geo.counts_of([n for n, c in layout.items() for _ in range(c)])) >= 0, layout
    for layout in illegal:
        assert geo.state_of(geo.counts_of([n for n, c in layout.items() for _ in range(c)])) < 0, layout


def test_slice_seven_conflict_between_one_slice_and_two_slice_profiles() -> None:
    # a 1g at start 6 blocks a 1g.20gb at start 6; the canonical placement avoids it when possible
    pairs = place("H100-80GB", _counts("H100-80GB", **{"1g_10gb": 5, "1g_20gb": 1}))
    assert pairs is not None and starts_legal("H100-80GB", pairs)


def test_transitions_are_consistent() -> None:
    geo = geometry("A100-40GB")
    assert geo is not None
    for st, row in enumerate(geo.add):
        for pi, nxt in enumerate(row):
            if nxt >= 0:
                a, b = geo.states[st], geo.states[nxt]
                assert b[pi] == a[pi] + 1 and sum(b) == sum(a) + 1


def test_fitting_profiles_use_usable_memory_not_the_name() -> None:
    gpu = gpu_by_key("H100-80GB")
    nine_and_a_half = int(9.5 * (1 << 30))
    ten = 10 * (1 << 30)  # "1g.10gb" holds only 9.75 GiB
    first = gpu.mig_profiles[fitting_profiles("H100-80GB", nine_and_a_half)[0]]
    assert first.name == "1g.10gb"
    first = gpu.mig_profiles[fitting_profiles("H100-80GB", ten)[0]]
    assert first.name == "1g.20gb"  # 2 memory slices, 1 compute slice: before 2g.20gb
