"""The replayed day of `make bench-autoscale` (bench/autoscale.py): its load generator and its replay."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from bench.autoscale import PROFILES, TICK, Profile, bursty_day, replay

HOUR = 3600.0


def test_the_day_is_seeded_and_its_busiest_tick_is_the_stated_peak() -> None:
    for p in PROFILES:
        load = bursty_day(p, seed=7)
        assert load == bursty_day(p, seed=7), "same seed, same day"
        assert len(load) == int(24 * HOUR / TICK)
        assert max(load) == p.peak and min(load) >= 0
    assert bursty_day(PROFILES[0], seed=7) != bursty_day(PROFILES[0], seed=8)


def test_nights_are_quiet_where_the_profile_says_so() -> None:
    p = next(p for p in PROFILES if p.name == "summarizer")  # no night load; bursts mostly in the day
    load = bursty_day(p, seed=1)
    night = load[: int(p.day_start * HOUR / TICK)]
    assert sum(night) < 0.05 * sum(load)


def test_an_idle_deployment_holds_one_replica_until_scale_to_zero_then_none() -> None:
    p = Profile("idle", peak=4, target=2, day_start=9, day_end=17, night_share=0, base_share=0, bursts=1,
                burst_minutes=1)  # fmt: skip
    r = replay([0] * int(HOUR / TICK), p, min_replicas=0, start_delay=60, call_seconds=2)
    # the default scaleToZeroAfter (300 s) with one replica, then nothing for the rest of the hour
    assert r.seconds_at_zero == HOUR - 300 and r.autoscale_replica_hours == round(300 / HOUR, 3)
    assert r.calls_waited == 0 and r.fixed_replicas == 2 and r.fixed_replica_hours == 2.0


def test_a_call_at_zero_waits_for_the_start_delay() -> None:
    p = Profile("x", peak=2, target=2, day_start=0, day_end=24, night_share=1, base_share=1, bursts=1,
                burst_minutes=1)  # fmt: skip
    quiet = int(600 / TICK)
    load = [0] * quiet + [1] + [0] * quiet
    r = replay(load, p, min_replicas=0, start_delay=60, call_seconds=2)
    assert r.longest_wait_spell_seconds == TICK  # the call is one tick long in this load
    longer = replay([0] * quiet + [1] * 60 + [0] * quiet, p, min_replicas=0, start_delay=60, call_seconds=2)
    assert longer.longest_wait_spell_seconds == 60  # held from its first tick until a replica is Ready


@settings(max_examples=20, deadline=None)
@given(
    st.lists(st.integers(0, 40), min_size=1, max_size=400),
    st.integers(0, 1),
    st.sampled_from([0.0, 10.0, 60.0]),
)
def test_autoscaling_never_holds_more_than_the_fixed_replicas(
    load: list[int], min_replicas: int, delay: float
) -> None:
    peak = max(max(load), 1)
    p = Profile("h", peak=peak, target=4, day_start=0, day_end=24, night_share=1, base_share=1, bursts=1,
                burst_minutes=1)  # fmt: skip
    r = replay(load, p, min_replicas=min_replicas, start_delay=delay, call_seconds=2)
    assert r.max_replicas_used <= r.fixed_replicas == math.ceil(peak / 4)
    assert r.autoscale_replica_hours <= r.fixed_replica_hours
    assert r.call_seconds_over_capacity >= 0


def test_a_lower_utilization_keeps_spare_replicas_on_a_steady_load() -> None:
    p = Profile("s", peak=8, target=4, day_start=0, day_end=24, night_share=1, base_share=1, bursts=1,
                burst_minutes=1)  # fmt: skip
    steady = [4] * int(HOUR / TICK)  # one replica's worth of calls all hour
    full = replay(steady, p, min_replicas=1, start_delay=60, call_seconds=2)
    half = replay(steady, p, min_replicas=1, start_delay=60, call_seconds=2, utilization=0.5)
    assert full.max_replicas_used == 1 and full.calls_waited == 0
    assert half.max_replicas_used == 2 and half.autoscale_replica_hours > 1.9
