"""Leader election's fence (controllers/leader.py): a replica stops writing before another may take the Lease."""

from __future__ import annotations

import pytest

from slm_operator.controllers.leader import LeaderElector, LeadershipLost


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
