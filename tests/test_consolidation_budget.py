"""The pure parts of consolidation moves: the disruption budget (quiet hours, moves per hour, the history the
pool status keeps) and the move state machine read from pods (reconcile/budget.py, reconcile/moves.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from slm_operator.api.v1alpha1 import ConsolidationMove, ConsolidationPolicy, MoveOutcome, QuietWindow
from slm_operator.contract import MOVE_ANNOTATION, PLACEMENT_ANNOTATION, PlacementRecord
from slm_operator.planner import Move
from slm_operator.planner.model import CurrentPlacement, Demand
from slm_operator.reconcile.budget import (
    abandoned_recently,
    held_back,
    in_quiet_hours,
    merge_history,
    moves_left,
)
from slm_operator.reconcile.moves import (
    MoveNote,
    Phase,
    busy_deployments,
    find_moves,
    hold_of,
    move_phase,
    planner_view,
    startable,
)
from slm_operator.reconcile.world import ReplicaKey
from slm_operator.views import PodView

NOW = datetime(2026, 11, 26, 10, 30, tzinfo=UTC)


def _at(minutes_ago: float) -> str:
    return (NOW - timedelta(minutes=minutes_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _record(
    dep: str = "ns/a", minutes_ago: float = 10, outcome: MoveOutcome = MoveOutcome.COMPLETED
) -> ConsolidationMove:
    return ConsolidationMove(
        deployment=dep, replica=0, source="n/0", target="n/1", started=_at(minutes_ago), outcome=outcome
    )


# ------------------------------------------------------------------------------------------ quiet hours
def _hhmm(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


@given(st.integers(0, 1439), st.integers(0, 1439), st.integers(0, 1439))
def test_a_quiet_window_holds_exactly_the_minutes_from_its_start_to_its_end(
    start: int, end: int, minute: int
) -> None:
    if start == end:
        return
    window = QuietWindow(start=_hhmm(start), end=_hhmm(end))
    inside = {
        (start + i) % 1440 for i in range((end - start) % 1440)
    }  # walk forward from start, past midnight
    now = datetime(2026, 11, 26, tzinfo=UTC) + timedelta(minutes=minute)
    assert (in_quiet_hours([window], now) is not None) == (minute in inside)


def test_an_empty_quiet_window_is_refused() -> None:
    with pytest.raises(ValueError, match="must differ"):
        QuietWindow(start="08:00", end="08:00")


# ------------------------------------------------------------------------------------------ moves per hour
def test_moves_left_counts_the_last_hour_only_and_stops_when_off_or_quiet() -> None:
    policy = ConsolidationPolicy(enabled=True, max_moves_per_hour=3)
    history = [_record(minutes_ago=5), _record("ns/b", 50, MoveOutcome.ABANDONED), _record("ns/c", 61)]
    assert moves_left(policy, history, NOW) == 1  # the move 61 minutes ago no longer counts; abandoned does
    assert moves_left(policy, [*history, _record("ns/d", 1)], NOW) == 0
    assert held_back(policy, [*history, _record("ns/d", 1)], NOW) == "BudgetExhausted"
    assert moves_left(policy.model_copy(update={"enabled": False}), [], NOW) == 0
    quiet = policy.model_copy(update={"quiet_hours": [QuietWindow(start="10:00", end="11:00")]})
    assert moves_left(quiet, [], NOW) == 0 and held_back(quiet, [], NOW) == "QuietHours"
    assert held_back(policy, history, NOW) == ""


def test_a_deployment_whose_move_was_abandoned_rests_for_the_hour() -> None:
    history = [_record("ns/a", 30, MoveOutcome.ABANDONED), _record("ns/b", 70, MoveOutcome.ABANDONED)]
    assert abandoned_recently(history, NOW) == {"ns/a"}


# ------------------------------------------------------------------------------------------ the history
def test_merge_history_never_doubles_a_move_and_resolves_one_that_ended_unseen() -> None:
    in_flight = _record("ns/a", 20, MoveOutcome.IN_FLIGHT)
    gone = _record("ns/b", 30, MoveOutcome.IN_FLIGHT)
    lost = _record("ns/c", 40, MoveOutcome.IN_FLIGHT)
    placed = {("ns/b", 0): "n/1", ("ns/c", 0): "n/0"}  # b runs on its target, c where it was
    once = merge_history([in_flight, gone, lost], [in_flight], placed, NOW)
    twice = merge_history(once, [in_flight], placed, NOW)
    assert once == twice
    outcomes = {m.deployment: m.outcome for m in once}
    assert outcomes == {
        "ns/a": MoveOutcome.IN_FLIGHT,
        "ns/b": MoveOutcome.COMPLETED,
        "ns/c": MoveOutcome.ABANDONED,
    }
    # a move the status never recorded (the operator stopped before writing it) is added from the pods
    assert [m.deployment for m in merge_history([], [in_flight], {}, NOW)] == ["ns/a"]


@given(st.lists(st.tuples(st.sampled_from(["ns/a", "ns/b"]), st.integers(0, 120)), max_size=12))
def test_merge_history_keeps_one_record_per_move_within_the_hour(moves: list[tuple[str, int]]) -> None:
    records = [_record(dep, ago) for dep, ago in moves]
    merged = merge_history(records, records, {}, NOW)
    assert len(merged) == len({(dep, ago) for dep, ago in moves if ago < 60})
    assert [m.started for m in merged] == sorted(m.started for m in merged)


# ------------------------------------------------------------------------------------------ the state machine
@pytest.mark.parametrize(
    ("source_live", "target_live", "target_ready", "expired", "phase"),
    [
        (True, True, False, False, Phase.IN_FLIGHT),
        (True, True, True, False, Phase.COMPLETE),
        (True, True, True, True, Phase.COMPLETE),  # Ready wins over a deadline that passed meanwhile
        (True, True, False, True, Phase.ABANDON),
        (False, True, False, False, Phase.SETTLING),
        (False, True, True, True, Phase.SETTLING),
        (True, False, False, False, Phase.UNWINDING),
    ],
)
def test_move_phase(
    source_live: bool, target_live: bool, target_ready: bool, expired: bool, phase: Phase
) -> None:
    got = move_phase(
        source_live=source_live, target_live=target_live, target_ready=target_ready, expired=expired
    )
    assert got == phase


def _pod(gpu: int, *, ready: bool = True, note: MoveNote | None = None, deleting: bool = False) -> PodView:
    rec = PlacementRecord(
        deployment="ns/a", ordinal=0, node="n", gpu=gpu, mechanism="MPS", memory_bytes=1 << 33
    )
    annotations = {PLACEMENT_ANNOTATION: rec.to_annotation()}
    if note is not None:
        annotations[MOVE_ANNOTATION] = note.to_annotation()
    meta: dict[str, Any] = {"name": f"a-0-{gpu}", "namespace": "ns", "annotations": annotations}
    if deleting:
        meta["deletionTimestamp"] = _at(0)
    status = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}
    return PodView({"metadata": meta, "spec": {"nodeName": "n"}, "status": status})


def _note(minutes_ago: float = 1) -> MoveNote:
    source = json.loads(_pod(0).annotations[PLACEMENT_ANNOTATION])
    return MoveNote(
        source=json.dumps(source, sort_keys=True), started=_at(minutes_ago), reason="frees GPU n/0"
    )


def test_a_note_survives_its_annotation_and_garbage_is_no_note() -> None:
    note = _note()
    assert MoveNote.from_annotation(note.to_annotation()) == note
    assert MoveNote.from_annotation("{not json") is None and MoveNote.from_annotation('{"x": 1}') is None


def test_find_moves_reads_each_phase_from_the_pods() -> None:
    timeout = timedelta(minutes=15)
    old, new = _pod(0), _pod(1, ready=False, note=_note())
    (m,) = find_moves([old, new], NOW, timeout)
    assert (m.key, m.phase, m.source.gpu_index, m.target.gpu_index) == (
        ReplicaKey("ns/a", 0),
        Phase.IN_FLIGHT,
        0,
        1,
    )
    assert m.held is not None and m.held[0].gpu_index == 1 and m.deletes is None
    (m,) = find_moves([old, _pod(1, note=_note())], NOW, timeout)
    assert m.phase == Phase.COMPLETE and m.deletes == (old, "Consolidated")
    (m,) = find_moves([old, _pod(1, ready=False, note=_note(20))], NOW, timeout)
    assert m.phase == Phase.ABANDON and m.deletes is not None and m.deletes[1] == "MoveAbandoned"
    (m,) = find_moves([_pod(0, deleting=True), _pod(1, note=_note())], NOW, timeout)
    assert m.phase == Phase.SETTLING and m.held is not None and m.held[0].gpu_index == 0
    assert find_moves([_pod(1, note=_note())], NOW, timeout) == ()  # the old pod is gone: just the replica
    assert find_moves([old], NOW, timeout) == ()


def test_the_planner_sees_the_replica_where_it_counts_and_holds_the_other_share() -> None:
    demand = Demand(deployment="ns/a", tier="Burstable", replicas=1, memory_bytes=8 << 30)
    here = CurrentPlacement(deployment="ns/a", ordinal=0, node="n", gpu_index=0, mechanism="MPS")
    for pods, counts_on, held_on in (
        ([_pod(0), _pod(1, ready=False, note=_note())], 0, 1),  # in flight: on the old share, new one held
        ([_pod(0), _pod(1, note=_note())], 1, 0),  # complete: on the new share, old one held while it goes
    ):
        moves = find_moves(pods, NOW, timedelta(minutes=15))
        view = planner_view([demand], [here], moves)
        (replica,) = [c for c in view.current if c.deployment == "ns/a"]
        (held,) = [c for c in view.current if c.deployment in view.holds]
        assert (replica.gpu_index, held.gpu_index) == (counts_on, held_on)
        assert hold_of(held.deployment) == ReplicaKey("ns/a", 0)
        (hold_demand,) = [d for d in view.demands if d.deployment in view.holds]
        assert hold_demand.share is not None and hold_demand.share.mechanism == "MPS"
        assert busy_deployments(pods, view.current, view.demands, moves) >= {"ns/a", held.deployment}


def test_a_deployment_with_a_replica_not_ready_is_busy() -> None:
    demand = Demand(deployment="ns/a", tier="Burstable", replicas=1, memory_bytes=8 << 30)
    here = CurrentPlacement(deployment="ns/a", ordinal=0, node="n", gpu_index=0, mechanism="MPS")
    assert busy_deployments([_pod(0)], [here], [demand], ()) == frozenset()
    assert busy_deployments([_pod(0, ready=False)], [here], [demand], ()) == {"ns/a"}
    assert busy_deployments([_pod(0)], [here], [demand.model_copy(update={"replicas": 2})], ()) == {"ns/a"}


def _move(
    dep: str, src: tuple[str, int], dst: tuple[str, int], tier: str = "Burstable", mbb: bool = True
) -> Move:
    def at(where: tuple[str, int]) -> CurrentPlacement:
        return CurrentPlacement(deployment=dep, ordinal=0, node=where[0], gpu_index=where[1], mechanism="MIG")

    return Move(
        deployment=dep,
        ordinal=0,
        tier=tier,
        source=at(src),
        target=at(dst),
        make_before_break=mbb,
        reason="r",
    )


def test_moves_start_together_only_up_to_one_that_needs_an_earlier_one_done() -> None:
    a = _move("ns/a", ("n", 0), ("n", 1))
    b = _move("ns/b", ("n", 2), ("n", 3))
    chained = _move("ns/c", ("n", 4), ("n", 0))  # takes the instance a leaves: only once a is done
    d = _move("ns/d", ("n", 5), ("n", 6))
    assert startable([a, b, chained, d], ("BestEffort",)) == (a, b)
    no_room = _move("ns/e", ("n", 5), ("n", 6), tier="Burstable", mbb=False)
    assert startable([a, no_room, b], ("BestEffort",)) == (a,)
    best_effort = _move("ns/e", ("n", 5), ("n", 6), tier="BestEffort", mbb=False)
    assert startable([a, best_effort, b], ("BestEffort",)) == (a, best_effort, b)
    assert startable([best_effort], ()) == ()


def test_a_drain_starts_a_deployments_second_move_and_moves_onto_a_refilled_node_later() -> None:
    """A node drain may move two replicas of one deployment: the second starts once the first is done (one
    replica of a deployment at a time). A move onto a node that earlier moves empty to give it a new config
    (``after_node``) waits for them."""
    a = _move("ns/a", ("x", 0), ("spare", 0))
    a_again = _move("ns/a", ("x", 1), ("spare", 1))
    b = _move("ns/b", ("x", 1), ("spare", 0))
    assert startable([a, b, a_again], ("BestEffort",)) == (a, b)
    onto_x = _move("ns/c", ("y", 0), ("x", 5)).model_copy(update={"after_node": "x"})
    assert startable([a, b, onto_x], ("BestEffort",)) == (a, b)
    # once the node is empty the planner proposes the move again, with nothing before it
    assert startable([onto_x], ("BestEffort",)) == (onto_x,)


def test_moves_back_onto_a_node_drained_in_place_start_all_together_after_its_other_moves() -> None:
    """A node drained in place: the make-before-break move off it starts first; its BestEffort replicas' moves
    back onto it (break-before-make, ``after_node`` their own node) start in one later batch, all of them, or
    not at all (half of them restarted under the node's new config next to the others under the old one would
    be no legal state)."""
    off = _move("ns/v", ("x", 1), ("other", 0))
    back = [
        _move(f"ns/{k}", ("x", i), ("x", 0), tier="BestEffort", mbb=False).model_copy(
            update={"after_node": "x"}
        )
        for i, k in ((0, "b"), (0, "c"), (1, "d"))
    ]
    assert startable([off, *back], ("BestEffort",)) == (off,)
    # the planner proposes them again once the node holds only them
    assert startable(back, ("BestEffort",)) == tuple(back)
    assert startable(back, ()) == ()
    again = back[2].model_copy(update={"deployment": "ns/b"})  # two replicas of a deployment: neither starts
    assert startable([*back[:2], again], ("BestEffort",)) == ()
    other = _move("ns/e", ("y", 0), ("z", 0))
    assert startable([other, *back], ("BestEffort",)) == (other, *back)
