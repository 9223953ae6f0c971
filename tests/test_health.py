"""The operator's /healthz and /readyz answer from process start: a replica standing by must not be restarted."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request

import pytest

from slm_operator.controllers.main import Health


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    ("state", "code"), [("standby", 200), ("leading", 200), ("starting", 503), ("stopping", 503)]
)
def test_health_endpoints_follow_the_replica_state(state: str, code: int) -> None:
    port = _port()
    h = Health()
    h.serve(f"127.0.0.1:{port}")
    h.state = state
    for path in ("/healthz", "/readyz"):
        try:
            resp = urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5)
            got, body = resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            got, body = exc.code, exc.read().decode()
        assert got == code and body.strip() == state
