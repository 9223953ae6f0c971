"""The Argo CD health checks of deploy/argocd/slm.io/<Kind>/health.lua, run in a real Lua interpreter (lupa).

Each script runs against every ``testdata/*.yaml`` of its kind and must return the status and message listed in
its ``health_test.yaml`` (Argo CD's own resource-customization test format). The scripts run in Lua 5.1 (the
language of Argo CD's gopher-lua) and Lua 5.4, with the libraries Argo CD does not offer removed. The fixtures
themselves must be valid objects of the generated CRDs, so they cannot drift from the API; and
deploy/argocd/argocd-cm.yaml must be what hack/gen_argocd_cm.py generates from the scripts.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.structural import validate

ROOT = Path(__file__).resolve().parent.parent
ARGOCD = ROOT / "deploy" / "argocd"
KINDS = ("SLMDeployment", "GPUPool", "FineTuneJob", "SLMRoute")
STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}
# what each kind's fixtures must cover
REQUIRED_STATUSES = {
    "SLMDeployment": {"Healthy", "Progressing", "Degraded", "Suspended"},
    "GPUPool": {"Healthy", "Progressing", "Degraded"},
    "FineTuneJob": {"Healthy", "Progressing", "Degraded"},
    "SLMRoute": {"Healthy", "Progressing", "Degraded"},
}
# Argo CD's Lua VM opens base, table, string and math (and no I/O, OS or module loading)
UNAVAILABLE = ("io", "os", "require", "dofile", "loadfile", "package", "debug", "load", "loadstring")


def _runtimes() -> list[str]:
    out = []
    for name in ("lua51", "lua54"):
        try:
            importlib.import_module(f"lupa.{name}")
            out.append(name)
        except ImportError:
            pass
    return out


RUNTIMES = _runtimes()


def _to_lua(lua: Any, value: Any) -> Any:
    if isinstance(value, dict):
        return lua.table_from({k: _to_lua(lua, v) for k, v in value.items()})
    if isinstance(value, list):
        return lua.table_from([_to_lua(lua, v) for v in value])
    return value


def health(kind: str, obj: dict[str, Any], runtime: str = "lua51") -> dict[str, Any]:
    """Run ``health.lua`` of ``kind`` on ``obj`` the way Argo CD does: ``obj`` global, a table returned."""
    lupa = importlib.import_module(f"lupa.{runtime}")
    lua = lupa.LuaRuntime(register_eval=False, register_builtins=False)
    g = lua.globals()
    for name in UNAVAILABLE:
        g[name] = None
    g.obj = _to_lua(lua, obj)
    result = lua.execute((ARGOCD / "slm.io" / kind / "health.lua").read_text())
    assert result is not None, f"{kind}/health.lua returned nothing"
    return {k: result[k] for k in ("status", "message") if result[k] is not None}


def cases() -> list[tuple[str, str, dict[str, Any]]]:
    out = []
    for kind in KINDS:
        doc = yaml.safe_load((ARGOCD / "slm.io" / kind / "health_test.yaml").read_text())
        for t in doc["tests"]:
            out.append((kind, t["inputPath"], t["healthStatus"]))
    return out


CASES = cases()


@pytest.mark.skipif(not RUNTIMES, reason="lupa has no Lua runtime")
@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize(("kind", "input_path", "expected"), CASES, ids=[f"{k}/{p}" for k, p, _ in CASES])
def test_health(kind: str, input_path: str, expected: dict[str, Any], runtime: str) -> None:
    obj = yaml.safe_load((ARGOCD / "slm.io" / kind / input_path).read_text())
    assert health(kind, obj, runtime) == expected


def test_every_fixture_is_tested_and_every_status_covered() -> None:
    for kind in KINDS:
        folder = ARGOCD / "slm.io" / kind
        tested = {p for k, p, _ in CASES if k == kind}
        on_disk = {f"testdata/{p.name}" for p in (folder / "testdata").glob("*.yaml")}
        assert tested == on_disk, f"{kind}: fixtures without a test or tests without a fixture"
        statuses = {e["status"] for k, _, e in CASES if k == kind}
        assert statuses >= REQUIRED_STATUSES[kind], (
            f"{kind}: no fixture for {REQUIRED_STATUSES[kind] - statuses}"
        )
        assert statuses <= STATUSES
        for _, path, e in (c for c in CASES if c[0] == kind):
            prefix = Path(path).stem.split("-")[0]
            assert prefix == e["status"].lower(), (
                f"{kind}/{path}: the file name says {prefix}, the test {e['status']}"
            )


def _stale(obj: dict[str, Any]) -> dict[str, Any]:
    obj = yaml.safe_load(yaml.safe_dump(obj))
    obj["metadata"]["generation"] = int(obj["metadata"].get("generation", 1)) + 1
    return obj


@pytest.mark.parametrize("kind", KINDS)
def test_a_newer_generation_is_progressing_whatever_the_conditions(kind: str) -> None:
    """observedGeneration < generation: whatever the (old) conditions say, the operator has not caught up."""
    for path in sorted((ARGOCD / "slm.io" / kind / "testdata").glob("*.yaml")):
        obj = _stale(yaml.safe_load(path.read_text()))
        got = health(kind, obj)
        want = f"waiting for the operator to observe generation {obj['metadata']['generation']}"
        assert got == {"status": "Progressing", "message": want}, path.name


# ------------------------------------------------------------------------------------------- properties

CONDITION_TYPES = {
    "SLMDeployment": ["Ready", "Placed", "Progressing", "Degraded"],
    "GPUPool": ["Ready", "Degraded"],
    "FineTuneJob": ["Sanitized", "Trained", "Evaluated", "Promoted", "Failed"],
    "SLMRoute": ["Ready", "Accepted"],
}


@st.composite
def objects(draw: st.DrawFn, kind: str) -> dict[str, Any]:
    generation = draw(st.integers(min_value=1, max_value=5))
    obj: dict[str, Any] = {
        "apiVersion": "slm.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": "x", "generation": generation},
    }
    obj["spec"] = {}
    if kind == "SLMDeployment" and draw(st.booleans()):
        obj["spec"]["suspend"] = draw(st.booleans())
    if kind == "FineTuneJob" and draw(st.booleans()):
        obj["spec"]["promote"] = {"slmDeploymentRef": {"name": "d"}}
    if draw(st.booleans()):
        status: dict[str, Any] = {}
        if draw(st.booleans()):
            status["observedGeneration"] = draw(st.integers(min_value=0, max_value=generation))
        types = draw(st.lists(st.sampled_from(CONDITION_TYPES[kind]), unique=True))
        status["conditions"] = [
            {
                "type": t,
                "status": draw(st.sampled_from(["True", "False", "Unknown"])),
                "reason": "Because",
                "message": draw(st.sampled_from(["", "a message"])),
                "observedGeneration": draw(st.integers(min_value=0, max_value=generation)),
            }
            for t in types
        ]
        obj["status"] = status
    return obj


@pytest.mark.parametrize("kind", KINDS)
def test_any_object_gets_a_status_and_a_message(kind: str) -> None:
    @settings(max_examples=150, deadline=None)
    @given(objects(kind))
    def check(obj: dict[str, Any]) -> None:
        got = health(kind, obj)
        assert got["status"] in {"Healthy", "Progressing", "Degraded", "Suspended"}
        assert isinstance(got.get("message"), str) and got["message"]
        if kind == "SLMDeployment" and got["status"] == "Suspended":
            assert obj["spec"].get("suspend") is True
        if got["status"] == "Healthy":
            st_ = obj["status"]
            seen = st_.get("observedGeneration")
            assert seen is None or seen >= obj["metadata"]["generation"]

    check()


# ------------------------------------------------------------------------------------------- fixtures vs CRDs


@pytest.mark.parametrize("kind", KINDS)
def test_fixtures_are_valid_objects_of_the_crds(kind: str) -> None:
    crd = next(
        yaml.safe_load(p.read_text())
        for p in (ROOT / "crds").glob("*.yaml")
        if yaml.safe_load(p.read_text())["spec"]["names"]["kind"] == kind
    )
    (version,) = [v for v in crd["spec"]["versions"] if v["storage"]]
    schema = version["schema"]["openAPIV3Schema"]
    for path in sorted((ARGOCD / "slm.io" / kind / "testdata").glob("*.yaml")):
        obj = yaml.safe_load(path.read_text())
        assert obj["apiVersion"] == f"{crd['spec']['group']}/{version['name']}" and obj["kind"] == kind
        errors = validate({k: v for k, v in obj.items() if k in ("spec", "status")}, schema)
        assert not errors, f"{kind}/testdata/{path.name}:\n" + "\n".join(errors)


# ------------------------------------------------------------------------------------------- argocd-cm


def test_argocd_cm_is_generated_from_the_scripts() -> None:
    spec = importlib.util.spec_from_file_location("gen_argocd_cm", ROOT / "hack" / "gen_argocd_cm.py")
    assert spec and spec.loader
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    assert (ARGOCD / "argocd-cm.yaml").read_text() == gen.render(), (
        "deploy/argocd/argocd-cm.yaml is out of date: run `python hack/gen_argocd_cm.py`"
    )
    cm = yaml.safe_load((ARGOCD / "argocd-cm.yaml").read_text())
    assert cm["kind"] == "ConfigMap" and cm["metadata"] == {
        "name": "argocd-cm",
        "namespace": "argocd",
        "labels": {"app.kubernetes.io/name": "argocd-cm", "app.kubernetes.io/part-of": "argocd"},
    }
    assert cm["data"] == {
        f"resource.customizations.health.slm.io_{kind}": (ARGOCD / "slm.io" / kind / "health.lua").read_text()
        for kind in KINDS
    }


def test_application_points_at_the_chart_and_the_examples() -> None:
    apps = {a["metadata"]["name"]: a for a in yaml.safe_load_all((ARGOCD / "application.yaml").read_text())}
    chart = apps["slm-operator"]["spec"]["source"]
    assert (ROOT / chart["path"] / "Chart.yaml").exists()
    values = chart["helm"]["valuesObject"]
    assert values["operator"]["nvidia"]["namespace"] == "gpu-operator"
    workloads = apps["slm-workloads"]["spec"]
    assert (ROOT / workloads["source"]["path"]).is_dir()
    options = set(workloads["syncPolicy"]["syncOptions"])
    assert {"SkipDryRunOnMissingResource=true", "ApplyOutOfSyncOnly=true"} <= options
    for app in apps.values():
        assert app["apiVersion"] == "argoproj.io/v1alpha1" and app["kind"] == "Application"
        assert app["metadata"]["namespace"] == "argocd"
