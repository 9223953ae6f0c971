"""Leader election's fence (controllers/leader.py): a replica stops writing before another may take the Lease."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from slm_operator.controllers.leader import AUTH_CACHE_SECONDS, LeaderElector, LeadershipLost


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def elector(clock: Clock, renew: list[bool], request_seconds: float = 0.0) -> LeaderElector:
    """An elector whose renewals answer from ``renew`` (True: renewed) and take ``request_seconds``."""
    e = LeaderElector(None, "slm-system", identity="a", clock=clock, monotonic=clock)  # type: ignore[arg-type]

    def attempt() -> bool:
        clock.t += request_seconds
        return renew.pop(0)

    e.try_acquire_or_renew = attempt  # type: ignore[method-assign]
    return e


def test_a_leader_stops_writing_at_the_renew_deadline_before_another_may_take_the_lease() -> None:
    clock = Clock()
    lost: list[bool] = []
    e = elector(clock, [True])
    assert e.acquire()
    e._on_lost = lambda: lost.append(True)
    clock.t += 9.9
    e.fence()  # still within the deadline: the write goes out
    assert not lost
    clock.t += 0.1  # 10 s after the renewal was sent; another replica may take the Lease at 15 s
    with pytest.raises(LeadershipLost, match=r"last renewed 10\.0 s ago"):
        e.fence()
    assert lost == [True]
    assert e.renew_deadline_seconds < e.lease_seconds


def test_the_deadline_counts_from_when_the_renewal_was_sent_not_when_it_returned() -> None:
    clock = Clock()
    e = elector(clock, [True], request_seconds=4.0)  # a slow API server
    assert e.acquire()
    clock.t += 6.0  # 10 s after the request left: the Lease's renewTime is that old
    assert not e.leading()


def test_a_replica_that_never_led_writes_nothing() -> None:
    e = elector(Clock(), [])
    with pytest.raises(LeadershipLost, match="never"):
        e.fence()


def test_a_paused_leader_resuming_after_another_took_over_is_fenced_before_its_renewer_runs() -> None:
    """SIGSTOP for 30 s: on resume the first write attempt is refused, whatever the renewer thread is doing."""
    clock = Clock()
    lost: list[bool] = []
    e = elector(clock, [True, True])
    assert e.acquire()
    e._on_lost = lambda: lost.append(True)
    assert e._renew() and e.leading()
    clock.t += 30.0
    with pytest.raises(LeadershipLost):
        e.fence()
    assert lost == [True]


def test_a_write_whose_thread_passed_the_fence_before_a_pause_is_refused_at_the_socket() -> None:
    """The fence is checked again as the write's first bytes leave (its HTTP connection): a thread that passed
    the check in ``Kube`` and was then paused past the renew deadline sends nothing when it resumes. Reads still
    go out. A real HTTP server on 127.0.0.1 counts what reaches it."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from kubernetes import client

    from slm_operator.controllers.kube import Kube

    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            seen.append(self.command)
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        do_GET = do_POST = _answer

        def log_message(self, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        conf = client.Configuration()
        conf.host = f"http://127.0.0.1:{server.server_address[1]}"
        kube = Kube(client.ApiClient(conf))
        leading = [True]

        def fence() -> None:
            if not leading[0]:
                raise LeadershipLost("paused past the renew deadline")

        kube.fence = fence
        rest = kube.api.rest_client
        rest.request("POST", f"{conf.host}/api/v1/namespaces/a/pods", body={})
        leading[0] = False  # the pause: Kube's own check was passed before it
        with pytest.raises(LeadershipLost):
            rest.request("POST", f"{conf.host}/api/v1/namespaces/a/pods", body={})
        rest.request("GET", f"{conf.host}/api/v1/pods")
        assert seen == ["POST", "GET"]
    finally:
        server.shutdown()


# ------------------------------------------------------------------------------ fencing out the previous leader


class FakeKube:
    """The few calls the elector makes, over a dict of objects: (kind, namespace, name) -> object."""

    def __init__(self, objects: dict[tuple[str, str, str], dict[str, Any]]) -> None:
        self.objects = objects
        self.deleted: list[tuple[str, dict[str, Any]]] = []

    def get(
        self, api_version: str, kind: str, name: str, namespace: str | None = None
    ) -> dict[str, Any] | None:
        return self.objects.get((kind, namespace or "", name))

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        obj["metadata"]["resourceVersion"] = "1"
        self.objects[(obj["kind"], meta["namespace"], meta["name"])] = obj
        return obj

    def resource(self, api_version: str, kind: str) -> Any:
        kube = self

        class Res:
            def replace(self, body: dict[str, Any], namespace: str) -> None:
                kube.objects[(kind, namespace, body["metadata"]["name"])] = body

        return Res()

    def delete(self, api_version: str, kind: str, name: str, namespace: str | None = None, **kw: Any) -> bool:
        obj = self.objects.pop((kind, namespace or "", name))
        assert kw["body"]["preconditions"]["uid"] == obj["metadata"]["uid"]
        self.deleted.append((name, kw["body"]))
        return True


def _pod(name: str, account: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "uid": f"uid-{name}"}, "spec": {"serviceAccountName": account}}


def _world(holder: str | None, renewed: float, their_account: str = "slm") -> dict[tuple[str, str, str], Any]:
    return {
        ("Lease", "slm-system", "slm-operator-leader"): {
            "metadata": {"name": "slm-operator-leader", "resourceVersion": "7"},
            "spec": {
                "holderIdentity": holder,
                "leaseDurationSeconds": 15,
                "renewTime": datetime.fromtimestamp(renewed, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            },
        },
        ("Pod", "slm-system", "op-a"): _pod("op-a", "slm"),
        ("Pod", "slm-system", "op-b"): _pod("op-b", their_account),
    }


def _standby(kube: FakeKube, clock: Clock, pod_namespace: str | None = "slm-system") -> LeaderElector:
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.t += seconds

    e = LeaderElector(
        kube,  # type: ignore[arg-type]
        "slm-system",
        identity="op-a",
        clock=clock,
        monotonic=clock,
        pod_namespace=pod_namespace,
        sleep=sleep,
    )
    e.slept = slept  # type: ignore[attr-defined]
    return e


def test_taking_over_an_expired_lease_deletes_the_previous_leaders_pod_and_waits_out_the_token_cache() -> (
    None
):
    """The previous leader renewed at 1000 and froze; its Lease expired at 1015 and this replica takes it at
    1016. Its Pod is deleted at once (grace 0, only that Pod: uid precondition), so the API server refuses its
    Pod-bound token; a token authenticated before its renew deadline (1010) may pass from the API server's cache
    until 1020, so the new leader starts writing only then, its Lease renewed again."""
    clock = Clock()
    clock.t = 1016.0
    kube = FakeKube(_world("op-b", 1000.0))
    e = _standby(kube, clock)
    assert e.acquire()
    assert kube.deleted == [("op-b", {"gracePeriodSeconds": 0, "preconditions": {"uid": "uid-op-b"}})]
    assert e.slept == [pytest.approx(4.0)]  # type: ignore[attr-defined]
    assert clock.t == pytest.approx(1000.0 + e.renew_deadline_seconds + AUTH_CACHE_SECONDS)
    lease = kube.get("coordination.k8s.io/v1", "Lease", "slm-operator-leader", "slm-system")
    assert lease is not None and lease["spec"]["holderIdentity"] == "op-a"
    assert lease["spec"]["renewTime"].startswith("1970-01-01T00:17:00")  # renewed after the wait (1020)
    assert e.leading()


@pytest.mark.parametrize(
    ("holder", "their_account", "pod_namespace"),
    [
        (None, "slm", "slm-system"),  # released on shutdown: it writes no more
        ("op-b", "someone-else", "slm-system"),  # a Pod of that name that is not a replica of ours
        ("op-b", "slm", None),  # this replica runs outside a Pod: no identity to compare Pods by
    ],
)
def test_no_pod_is_deleted_unless_it_is_a_replica_that_may_still_run(
    holder: str | None, their_account: str, pod_namespace: str | None
) -> None:
    clock = Clock()
    clock.t = 1016.0
    kube = FakeKube(_world(holder, 1000.0, their_account))
    e = _standby(kube, clock, pod_namespace)
    assert e.acquire()
    assert kube.deleted == [] and e.slept == []  # type: ignore[attr-defined]
    assert ("Pod", "slm-system", "op-b") in kube.objects


def test_a_replica_that_cannot_fence_the_old_leader_out_still_leads_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Deleting the old leader's Pod refused (here: no RBAC for it): the new leader leads anyway, without the
    API server's fence, and the log says what that risks."""
    from kubernetes.client.exceptions import ApiException

    clock = Clock()
    clock.t = 1016.0
    kube = FakeKube(_world("op-b", 1000.0))

    def refuse(*_: Any, **__: Any) -> bool:
        raise ApiException(status=403, reason="Forbidden")

    kube.delete = refuse  # type: ignore[method-assign]
    e = _standby(kube, clock)
    assert e.acquire() and e.leading()
    assert "could not fence the previous leader op-b out (403 Forbidden)" in caplog.text
