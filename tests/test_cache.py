"""The watch caches (controllers/cache.py): what a pass reads after lists, watch events, a 410 Gone and its own
writes. The API server's side is scripted here (a 410 cannot be had on demand from a real one); e2e/test_operator.py
runs the caches against the real one."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from fake_kube import FakeKube
from slm_operator.controllers.cache import ClusterCache, Reflector, label_selector_matches
from slm_operator.controllers.shell import contains
from slm_operator.render import OperatorConfig


def pod(name: str, version: int, labels: dict[str, str] | None = None, gpus: int = 0) -> dict[str, Any]:
    limits = {"nvidia.com/gpu": str(gpus)} if gpus else {}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "ns",
            "resourceVersion": str(version),
            "labels": labels or {},
            "managedFields": [{"manager": "kubectl"}],
        },
        "spec": {"containers": [{"name": "c", "resources": {"limits": limits}}]},
    }


class ScriptedApi:
    """Lists and watches answered from scripts: each list returns the next (items, version); each watch yields
    the next script's events, or raises what the script holds, then waits until the test lets it end."""

    def __init__(self, lists: list[tuple[list[dict[str, Any]], str]], watches: list[Any]) -> None:
        self.lists = lists
        self.watches = watches
        self.watched_from: list[str] = []
        self.listed = threading.Event()
        self.idle = threading.Event()  # set when the scripts are used up and the reflector waits

    def list_versioned(self, api_version: str, kind: str, namespace: str | None = None, **_: Any) -> Any:
        out = self.lists.pop(0)
        self.listed.set()
        return out

    def watch(self, api_version: str, kind: str, **kw: Any) -> Iterator[dict[str, Any]]:
        self.watched_from.append(kw["resource_version"])
        if not self.watches:
            self.idle.set()
            threading.Event().wait(3600)
        script = self.watches.pop(0)
        if isinstance(script, Exception):
            raise script
        for type_, obj in script:
            yield {"type": type_, "raw_object": obj}


def started(api: ScriptedApi, **kw: Any) -> tuple[Reflector, list[tuple[str, str]]]:
    r = Reflector(api, "v1", "Pod", **kw)  # type: ignore[arg-type]
    seen: list[tuple[str, str]] = []
    r.on_event = lambda t, o: seen.append((t, o["metadata"]["name"]))
    r.start()
    assert api.idle.wait(10), "the scripts were not all played"
    return r, seen


def names(r: Reflector) -> dict[str, str]:
    return {o["metadata"]["name"]: o["metadata"]["resourceVersion"] for o in r.items()}


def test_a_watch_resumes_from_the_last_version_and_a_410_lists_again_telling_what_changed_meanwhile() -> None:
    api = ScriptedApi(
        lists=[([pod("a", 5), pod("b", 6)], "10"), ([pod("a", 12), pod("c", 30)], "40")],
        watches=[
            [("MODIFIED", pod("b", 11)), ("BOOKMARK", {"metadata": {"resourceVersion": "20"}})],
            ApiException(status=410, reason="Gone: too old resource version"),
        ],
    )
    r, seen = started(api)
    # the first watch starts at the list's version, the second where the bookmark left it; after the 410 the
    # reflector lists again and watches from the new list's version
    assert api.watched_from == ["10", "20", "40"]
    assert names(r) == {"a": "12", "c": "30"}
    assert seen == [
        ("ADDED", "a"),
        ("ADDED", "b"),
        ("MODIFIED", "b"),
        ("MODIFIED", "a"),  # changed while no watch ran
        ("ADDED", "c"),
        ("DELETED", "b"),  # deleted while no watch ran
    ]
    assert r.relists == 1
    assert all("managedFields" not in o["metadata"] for o in r.items()), "stored without managedFields"


def test_a_failing_watch_backs_off_longer_each_time_until_one_works(monkeypatch: pytest.MonkeyPatch) -> None:
    """A watch the API server refuses (403: RBAC without `watch`) after a list it allows must not become a list
    and a watch every second: the back-off grows until a watch delivers something."""
    waits: list[float] = []
    monkeypatch.setattr(Reflector, "_backoff", lambda self, failures: waits.append(failures) or 0.0)
    forbidden = ApiException(status=403, reason="Forbidden")
    api = ScriptedApi(
        lists=[([pod("a", 5)], "10"), ([pod("a", 5)], "11"), ([pod("a", 5)], "12"), ([pod("a", 12)], "13")],
        watches=[
            ConnectionResetError("API server restarting"),
            forbidden,
            [("MODIFIED", pod("a", 12))],  # works for a while ...
            forbidden,  # ... then fails: a first failure again
        ],
    )
    r, seen = started(api)
    assert waits == [1, 2, 1]
    assert seen == [("ADDED", "a"), ("MODIFIED", "a")], "an object listed again unchanged is not told again"
    assert names(r) == {"a": "12"}


def test_a_keep_predicate_drops_objects_that_stop_matching() -> None:
    holds_gpu = pod("llm", 7, gpus=2)
    api = ScriptedApi(
        lists=[([holds_gpu, pod("web", 8)], "10")],
        watches=[[("MODIFIED", pod("llm", 9, gpus=0)), ("ADDED", pod("web2", 11))]],
    )
    r, seen = started(
        api, keep=lambda o: "nvidia.com/gpu" in o["spec"]["containers"][0]["resources"]["limits"]
    )
    assert seen == [("ADDED", "llm"), ("DELETED", "llm")]
    assert names(r) == {}


def test_our_own_writes_are_seen_at_once_but_never_overwrite_a_newer_event() -> None:
    api = ScriptedApi(lists=[([pod("a", 5, {"slm.io/pool": "p"})], "10")], watches=[])
    r, _ = started(api, label_selector="slm.io/pool")
    r.observe(pod("b", 12, {"slm.io/pool": "p"}))  # created by a pass
    r.observe(pod("a", 4, {"slm.io/pool": "p"}))  # an older answer than the store's
    r.observe(pod("x", 13))  # not one of this reflector's (no pool label)
    r.observe({**pod("c", 14, {"slm.io/pool": "p"}), "kind": "Service"})
    assert names(r) == {"a": "5", "b": "12"}


def test_a_reflector_never_started_reads_through_to_the_api_server() -> None:
    fake = FakeKube(pod("a", 1, {"slm.io/pool": "p"}), pod("b", 1), pod("llm", 1, gpus=1))
    cache = ClusterCache(fake.as_kube(), OperatorConfig())
    assert [o["metadata"]["name"] for o in cache.replicas.items()] == ["a"]
    assert [o["metadata"]["name"] for o in cache.gpu_pods.items()] == ["llm"]
    assert [o["metadata"]["name"] for o in cache.replica_pods("p")] == ["a"]
    assert fake.requests == 3
    cache.observe(pod("c", 2, {"slm.io/pool": "p"}))  # nothing stored: every read asks the API server
    assert [o["metadata"]["name"] for o in cache.replica_pods("p")] == ["a"]


def test_a_pass_before_the_first_list_fails_clearly_instead_of_planning_on_nothing() -> None:
    class NeverLists:
        def list_versioned(self, *a: Any, **kw: Any) -> Any:
            threading.Event().wait(3600)

    r = Reflector(NeverLists(), "v1", "Node")  # type: ignore[arg-type]
    r.start()
    with pytest.raises(RuntimeError, match="has not completed its first list"):
        r.wait_synced(0.1)


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ("slm.io/pool", {"slm.io/pool": "p"}, True),
        ("slm.io/pool", {}, False),
        ("!slm.io/pool", {}, True),
        ("!slm.io/pool", {"slm.io/pool": "p"}, False),
        ("a=1,b==2", {"a": "1", "b": "2"}, True),
        ("a=1,b!=2", {"a": "1", "b": "2"}, False),
        ("a in (1,2)", {"a": "1"}, None),
        (None, {}, True),
    ],
)
def test_label_selectors_are_matched_as_the_api_server_matches_them(
    selector: str | None, labels: dict[str, str], expected: bool | None
) -> None:
    assert label_selector_matches(selector, labels) is expected


def test_an_object_that_holds_what_we_would_apply_is_not_sent_again() -> None:
    want = {"metadata": {"labels": {"a": "1"}}, "spec": {"ports": [{"port": 80, "protocol": "TCP"}]}}
    have = {
        "metadata": {"labels": {"a": "1", "b": "2"}, "uid": "u"},
        "spec": {"ports": [{"port": 80, "protocol": "TCP"}], "clusterIP": "10.96.0.9"},
    }
    assert contains(have, want)
    assert not contains(None, want)
    assert not contains({**have, "spec": {"ports": [{"port": 81, "protocol": "TCP"}]}}, want)
    assert not contains({**have, "spec": {"ports": []}}, want)
