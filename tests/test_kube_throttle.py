"""A throttled API server (429 Too Many Requests: API Priority and Fairness, max-inflight): ``Kube`` sends the
request again after the server's Retry-After or a longer back-off, a bounded number of times, re-checking the
leader's fence before each re-send; a failing planning pass backs off too (handlers.retry_seconds)."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kubernetes.client.exceptions import ApiException

from slm_operator import metrics
from slm_operator.controllers import handlers
from slm_operator.controllers.kube import (
    DEFAULT_RETRY_AFTER,
    THROTTLE_MAX_WAIT,
    THROTTLE_RETRIES,
    Kube,
    retry_after,
    throttle_wait,
)
from slm_operator.controllers.leader import LeadershipLost

POD = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "ns"}}


def refusal(status: int = 429, after: str | None = "1") -> ApiException:
    exc = ApiException(status=status, reason="Too Many Requests")
    exc.headers = {"Retry-After": after} if after is not None else {}
    exc.body = '{"message": "too many requests, please try again later"}'
    return exc


class Pods:
    """The Pod resource of an API server that answers the first creates with ``answers`` (exceptions), then
    creates the pod."""

    def __init__(self, *answers: ApiException) -> None:
        self.answers = list(answers)
        self.sent = 0
        self.created: list[dict[str, Any]] = []

    def create(self, body: dict[str, Any], namespace: str | None, field_manager: str, serializer: Any) -> Any:
        self.sent += 1
        if self.answers:
            raise self.answers.pop(0)
        self.created.append(body)
        return serializer(None, body)


def kube(pods: Pods) -> tuple[Kube, list[float]]:
    k = Kube(None)  # type: ignore[arg-type]  # the resource is stubbed: no discovery
    k._res[("v1", "Pod")] = pods
    waits: list[float] = []
    k.sleep = waits.append
    k.jitter = lambda: 1.0
    return k, waits


def throttled() -> float:
    return metrics.REGISTRY.get_sample_value("slm_api_errors_total", {"verb": "create", "code": "429"}) or 0.0


def test_a_throttled_create_is_sent_again_after_retry_after_and_lands_once() -> None:
    pods = Pods(refusal(after="3"), refusal(after="3"))
    k, waits = kube(pods)
    before = throttled()
    assert k.create(POD) == POD
    assert pods.created == [POD]
    assert waits == [3.0, 3.0]  # the server's Retry-After, longer than the back-off's first steps
    assert k.requests == 3 and pods.sent == 3
    assert throttled() - before == 2


def test_a_request_refused_every_time_fails_after_bounded_backed_off_retries() -> None:
    pods = Pods(*[refusal(after=None) for _ in range(THROTTLE_RETRIES + 5)])
    k, waits = kube(pods)
    with pytest.raises(ApiException) as err:
        k.create(POD)
    assert err.value.status == 429
    assert pods.sent == THROTTLE_RETRIES + 1, "retried without bound"
    assert waits == [1.0, 2.0, 4.0, 8.0, 8.0]  # exponential, capped: never a tight loop
    assert pods.created == []


def test_the_fence_is_checked_again_before_each_resend() -> None:
    pods = Pods(refusal(after="5"))
    k, waits = kube(pods)
    checks: list[int] = []

    def fence() -> None:
        checks.append(1)
        if len(checks) > 1:  # the renew deadline passed while this write waited
            raise LeadershipLost("the Lease was last renewed 11.0 s ago")

    k.fence = fence
    with pytest.raises(LeadershipLost):
        k.create(POD)
    assert pods.sent == 1 and pods.created == [] and waits == [5.0]


@pytest.mark.parametrize("status", [409, 403, 500, 503])
def test_other_errors_are_not_resent(status: int) -> None:
    pods = Pods(refusal(status=status))
    k, waits = kube(pods)
    if status == 409:
        assert k.create(POD) is None  # already exists: the create's own answer
    else:
        with pytest.raises(ApiException):
            k.create(POD)
    assert pods.sent == 1 and waits == []


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("2", 2.0),
        ("0.5", 0.5),
        (None, DEFAULT_RETRY_AFTER),
        ("soon", DEFAULT_RETRY_AFTER),
        ("-3", DEFAULT_RETRY_AFTER),
    ],
)
def test_retry_after_is_read_from_the_header(header: str | None, seconds: float) -> None:
    assert retry_after(refusal(after=header)) == seconds


@given(
    attempt=st.integers(0, THROTTLE_RETRIES),
    after=st.floats(0, 1e6, allow_nan=False),
    jitter=st.floats(1.0, 1.5),
)
def test_the_wait_honours_retry_after_grows_and_is_capped(attempt: int, after: float, jitter: float) -> None:
    wait = throttle_wait(attempt, after, jitter)
    assert min(after, THROTTLE_MAX_WAIT) <= wait <= THROTTLE_MAX_WAIT * 1.5
    assert wait >= 1.0  # never a tight loop
    assert throttle_wait(attempt + 1, after, jitter) >= wait


def test_failed_passes_in_a_row_back_off_to_the_resync_interval() -> None:
    waits = [handlers.retry_seconds(n) for n in range(0, 12)]
    assert waits[0] == waits[1] == handlers.RETRY_SECONDS
    assert waits[2] == 2 * handlers.RETRY_SECONDS
    assert all(a <= b for a, b in itertools.pairwise(waits))
    assert waits[-1] == max(handlers.RESYNC_SECONDS, handlers.RETRY_SECONDS)


class Stopped:
    """kopf's DaemonStopped for a daemon run in the test's thread: records each wait, stops after ``passes``."""

    def __init__(self, passes: int, counter: list[int]) -> None:
        self.passes, self.counter = passes, counter
        self.waits: list[float] = []

    def __bool__(self) -> bool:
        return len(self.counter) >= self.passes

    def wait(self, seconds: float) -> None:
        self.waits.append(seconds)


class FailingPools:
    """A PoolReconciler whose passes fail (the API server refusing past Kube's retries) and wake the pool again,
    as the events of a busy cluster would."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self.passes: list[int] = []

    def reconcile(self, name: str) -> bool:
        self.passes.append(1)
        self.ctx.trigger(name)  # an event arrived meanwhile
        raise ApiException(status=429, reason="Too Many Requests")


def test_a_failing_pass_backs_off_even_when_events_keep_waking_the_pool() -> None:
    from slm_operator.controllers.context import OperatorContext, memo_for

    ctx = OperatorContext(kube=None, cfg=None, pools=None, finetune=None)  # type: ignore[arg-type]
    pools = FailingPools(ctx)
    ctx.pools = pools  # type: ignore[assignment]
    stopped = Stopped(6, pools.passes)
    handlers.pool_daemon(name="p", stopped=stopped, logger=handlers.log, memo=memo_for(ctx))  # type: ignore[arg-type]
    backoffs = [w for w in stopped.waits if w != handlers.DEBOUNCE_SECONDS]
    assert len(pools.passes) == 6
    assert backoffs == [handlers.retry_seconds(n) for n in range(1, 7)]
    assert backoffs[-1] > backoffs[0]
