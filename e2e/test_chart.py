"""The Helm chart against a real API server: schema validation, install, upgrade, uninstall, RBAC.

* every value set (defaults + charts/slm-operator/ci/*-values.yaml) passes a server-side dry run with strict
  field validation, and each rendered object validates against the OpenAPI v3 schema the API server publishes;
* ``helm install`` into a fresh namespace that enforces the Pod Security Standard ``restricted`` creates
  everything, the CRDs are Established, the operator and agent pods are admitted and scheduled (kwok runs no
  containers: it marks scheduled pods Running/Ready, so their readiness says nothing about the image);
  ``helm upgrade`` applies changed values; ``helm uninstall`` removes everything except the CRDs;
* the CRD lifecycle itself (upgrade on ``helm upgrade``, kept on uninstall with ``crds.keep``, removed without)
  runs on renamed copies of the CRDs (group ``<ns>.e2e.slm.io``), so it never touches the slm.io CRDs that
  other tests use;
* ``kubectl auth can-i --as`` the operator's and the agent's ServiceAccounts: what they may and may not do.

CRDs are cluster-scoped and shared: when the slm.io CRDs already exist (another test applied crds/), the
releases install with ``crds.enabled=false``; when this module installs them, it leaves them afterwards as
``kubectl apply -f crds/`` would (kept, without Helm's ownership metadata). PriorityClass names are unique per
test, so the releases never collide with deploy/priorityclasses.yaml.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from e2e.conftest import GPU_NODES, GPU_OPERATOR_NS, Cluster, wait_for
from tests.structural import validate

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "slm-operator"
VALUE_SETS: dict[str, list[Path]] = {"default": []} | {
    p.name.removesuffix("-values.yaml"): [p] for p in sorted((CHART / "ci").glob("*-values.yaml"))
}
SLM_CRDS = tuple(sorted(p.stem for p in (REPO / "crds").glob("*.slm.io.yaml")))  # every CRD the chart ships
PC_KEYS = ("guaranteed", "llmFallback", "burstable", "bestEffort", "fineTuning")


# ------------------------------------------------------------------------------------------- helpers


class Helm:
    def __init__(self, cluster: Cluster, home: Path) -> None:
        self.cluster = cluster
        self.env = {
            **os.environ,
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_DATA_HOME": str(home / "data"),
        }

    def __call__(
        self, *args: str, check: bool = True, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.cluster.bin_dir / "helm"), "--kubeconfig", self.cluster.kubeconfig, *args]
        res = subprocess.run(
            cmd, env={**self.env, **(env or {})}, capture_output=True, text=True, check=False
        )
        if check and res.returncode:
            raise AssertionError(f"helm {' '.join(args)} failed:\n{res.stdout}\n{res.stderr}")
        return res

    def template(self, namespace: str, values: list[Path], sets: list[str]) -> list[dict[str, Any]]:
        args = ["template", "slm-operator", str(CHART), "--namespace", namespace]
        for v in values:
            args += ["--values", str(v)]
        for s in sets:
            args += ["--set", s]
        return [d for d in yaml.safe_load_all(self(*args).stdout) if d]


def kubectl(
    cluster: Cluster, *args: str, input_: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    cmd = [str(cluster.bin_dir / "kubectl"), "--kubeconfig", cluster.kubeconfig, *args]
    res = subprocess.run(cmd, input=input_, capture_output=True, text=True, check=False)
    if check and res.returncode:
        raise AssertionError(f"kubectl {' '.join(args)} failed:\n{res.stdout}\n{res.stderr}")
    return res


def crds_exist(cluster: Cluster) -> bool:
    ext = client.ApiextensionsV1Api(cluster.api)
    names = {c.metadata.name for c in ext.list_custom_resource_definition().items}
    return all(n in names for n in SLM_CRDS)


def unique_priority_classes(prefix: str) -> list[str]:
    return [f"priorityClasses.{k}.name={prefix}-{k.lower()}" for k in PC_KEYS]


def make_namespace(cluster: Cluster, labels: dict[str, str] | None = None) -> str:
    name = f"e2e-chart-{uuid.uuid4().hex[:8]}"
    cluster.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=labels)))
    wait_for(lambda: cluster.core.read_namespaced_service_account("default", name), 90, f"{name}/default SA")
    return name


def delete_namespace(cluster: Cluster, name: str) -> None:
    with contextlib.suppress(ApiException):
        cluster.core.delete_namespace(name, grace_period_seconds=0)

    def gone() -> bool:
        try:
            cluster.core.read_namespace(name)
        except ApiException as e:
            return e.status == 404
        return False

    wait_for(gone, 60, f"namespace {name} deleted")


def disown_crds(cluster: Cluster) -> None:
    """Leave the kept slm.io CRDs as `kubectl apply -f crds/` would: without Helm's ownership metadata."""
    for name in SLM_CRDS:
        kubectl(
            cluster,
            "annotate",
            "crd",
            name,
            "meta.helm.sh/release-name-",
            "meta.helm.sh/release-namespace-",
            check=False,
        )
        kubectl(cluster, "label", "crd", name, "app.kubernetes.io/managed-by-", check=False)


@pytest.fixture(scope="module")
def helm(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    assert (cluster.bin_dir / "helm").exists(), "e2e/cluster/build.sh installs helm next to kubectl"
    return Helm(cluster, tmp_path_factory.mktemp("helm-home"))


@pytest.fixture(scope="module")
def nvidia_ns(cluster: Cluster) -> str:
    """The GPU Operator's namespace (the simulator creates it; the chart puts a Role there)."""
    with contextlib.suppress(ApiException):
        cluster.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=GPU_OPERATOR_NS)))
    return GPU_OPERATOR_NS


@pytest.fixture(scope="module")
def chart_ns(cluster: Cluster) -> Iterator[str]:
    name = make_namespace(cluster)
    yield name
    delete_namespace(cluster, name)


# ------------------------------------------------------------------------------------------- OpenAPI v3


class OpenAPI:
    """The API server's published OpenAPI v3 documents, and a strict validator of objects against them."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.index: dict[str, Any] = json.loads(kubectl(cluster, "get", "--raw", "/openapi/v3").stdout)[
            "paths"
        ]
        self.docs: dict[str, dict[str, Any]] = {}

    def document(self, api_version: str) -> dict[str, Any] | None:
        key = "api/v1" if api_version == "v1" else f"apis/{api_version}"
        if key not in self.index:
            return None
        if key not in self.docs:
            url = self.index[key]["serverRelativeURL"]
            self.docs[key] = json.loads(kubectl(self.cluster, "get", "--raw", url).stdout)
        return self.docs[key]

    def schema(self, api_version: str, kind: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
        doc = self.document(api_version)
        if doc is None:
            return None
        group, _, version = api_version.rpartition("/")
        for s in doc["components"]["schemas"].values():
            for gvk in s.get("x-kubernetes-group-version-kind", []):
                if (gvk.get("group", ""), gvk["version"], gvk["kind"]) == (group, version, kind):
                    return doc, s
        return None

    def validate(self, obj: dict[str, Any]) -> list[str]:
        found = self.schema(obj["apiVersion"], obj["kind"])
        if found is None:
            return [f"{obj['apiVersion']} {obj['kind']} is not served by the API server"]
        doc, schema = found
        return validate(obj, schema, f"{obj['kind']}/{obj['metadata']['name']}", doc)


@pytest.fixture(scope="module")
def openapi(cluster: Cluster) -> OpenAPI:
    return OpenAPI(cluster)


def _render_for_cluster(helm: Helm, name: str, namespace: str, nvidia_ns: str) -> list[dict[str, Any]]:
    """A value set rendered for this cluster: namespaces that exist, PriorityClass names no one else uses."""
    sets = [f"operator.nvidia.namespace={nvidia_ns}", f"metrics.dashboard.namespace={namespace}"]
    if name != "existing-priorityclasses":
        sets += unique_priority_classes(namespace)
    if name == "advisor":  # its Role and RoleBinding go to the advised namespace, which must exist
        sets.append(f"advisor.namespace={namespace}")
    return helm.template(namespace, VALUE_SETS[name], sets)


def test_openapi_validator_catches_mistakes(openapi: OpenAPI) -> None:
    bad = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "x"},
        "spec": {
            "replicas": "two",
            "selector": {"matchLabels": {"a": "b"}},
            "template": {"spec": {"containers": [{"name": "c", "imagePullPolicy": "Sometimes", "bogus": 1}]}},
        },
    }
    errors = "\n".join(openapi.validate(bad))
    assert "spec.replicas: want integer" in errors
    assert "containers[0].bogus: unknown field" in errors
    assert "'Sometimes' is not one of" in errors


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_render_validates_against_the_api_server(
    cluster: Cluster, helm: Helm, openapi: OpenAPI, chart_ns: str, nvidia_ns: str, name: str
) -> None:
    objs = _render_for_cluster(helm, name, chart_ns, nvidia_ns)
    served = [o for o in objs if openapi.schema(o["apiVersion"], o["kind"]) is not None]
    skipped = {f"{o['apiVersion']} {o['kind']}" for o in objs if o not in served}
    # the prometheus-operator's kinds (the observability values) are not served here: no prometheus-operator
    # CRDs in this cluster; the PrometheusRule's content is checked by promtool (e2e/rules_test.yaml)
    prometheus_operator = {
        "monitoring.coreos.com/v1 ServiceMonitor",
        "monitoring.coreos.com/v1 PrometheusRule",
    }
    assert skipped <= prometheus_operator, f"not served: {skipped}"
    errors = [e for o in served for e in openapi.validate(o)]
    assert not errors, "\n".join(errors)
    res = kubectl(
        cluster,
        "apply",
        "--dry-run=server",
        "--validate=strict",
        "-f",
        "-",
        input_=yaml.safe_dump_all(served),
        check=False,
    )
    assert res.returncode == 0, f"server-side dry run of {name} failed:\n{res.stderr}"
    assert len(res.stdout.strip().splitlines()) == len(served), res.stdout


# ------------------------------------------------------------------------------------------- install


def _pods(cluster: Cluster, namespace: str, component: str) -> list[client.V1Pod]:
    sel = f"app.kubernetes.io/component={component}"
    return [
        p
        for p in cluster.core.list_namespaced_pod(namespace, label_selector=sel).items
        if not p.metadata.deletion_timestamp
    ]


def _wait_established(ext: client.ApiextensionsV1Api, name: str) -> None:
    wait_for(
        lambda: any(
            c.type == "Established" and c.status == "True"
            for c in ext.read_custom_resource_definition(name).status.conditions or []
        ),
        90,
        f"CRD {name} Established",
    )


def _exists(fn: Any, *args: Any) -> bool:
    try:
        fn(*args)
        return True
    except ApiException as e:
        if e.status == 404:
            return False
        raise


def test_install_upgrade_uninstall(cluster: Cluster, helm: Helm, nvidia_ns: str) -> None:
    ns = make_namespace(cluster, labels={"pod-security.kubernetes.io/enforce": "restricted"})
    release = f"r{ns[-8:]}"
    installs_crds = not crds_exist(cluster)
    sets = [
        f"crds.enabled={str(installs_crds).lower()}",
        f"operator.nvidia.namespace={nvidia_ns}",
        *unique_priority_classes(ns),
    ]
    rbac = client.RbacAuthorizationV1Api(cluster.api)
    sched = client.SchedulingV1Api(cluster.api)
    ext = client.ApiextensionsV1Api(cluster.api)
    fullname = f"{release}-slm-operator"
    try:
        out = helm(
            "install", release, str(CHART), "--namespace", ns, *[a for s in sets for a in ("--set", s)]
        ).stdout
        assert "STATUS: deployed" in out
        assert "kubectl get slm -A" in out, "NOTES.txt tells what to do next"

        # the CRDs are there and Established (installed by this release, or by someone before)
        for crd in SLM_CRDS:
            _wait_established(ext, crd)
            if installs_crds:
                meta = ext.read_custom_resource_definition(crd).metadata
                assert meta.annotations["helm.sh/resource-policy"] == "keep"
                assert meta.annotations["meta.helm.sh/release-name"] == release

        # everything of the release exists
        assert cluster.core.read_namespaced_service_account(fullname, ns)
        assert cluster.core.read_namespaced_service_account(f"{fullname}-agent", ns)
        assert rbac.read_cluster_role(fullname) and rbac.read_cluster_role(f"{fullname}-agent")
        assert rbac.read_cluster_role_binding(fullname) and rbac.read_cluster_role_binding(
            f"{fullname}-agent"
        )
        assert rbac.read_namespaced_role(fullname, nvidia_ns)
        assert rbac.read_namespaced_role(f"{fullname}-leader-election", ns)
        assert cluster.core.read_namespaced_service(f"{fullname}-metrics", ns)
        assert cluster.core.read_namespaced_service(f"{fullname}-agent-metrics", ns)
        for pc in unique_priority_classes(ns):
            assert sched.read_priority_class(pc.split("=")[1])

        # the namespace enforces `restricted`: the pods exist only if admission accepted their security context
        dep = cluster.apps.read_namespaced_deployment(fullname, ns)
        assert dep.spec.replicas == 2
        pods = wait_for(
            lambda: (
                (p := _pods(cluster, ns, "operator"))
                and len(p) == 2
                and all(x.spec.node_name for x in p)
                and p
            ),
            60,
            "2 operator pods admitted and scheduled",
        )
        for p in pods:
            env = {
                e.name: e.value_from.field_ref.field_path for e in p.spec.containers[0].env if e.value_from
            }
            assert env["POD_NAME"] == "metadata.name"
        gpu_nodes = {
            n.metadata.name
            for n in cluster.core.list_node(label_selector="nvidia.com/gpu.present=true").items
        }
        assert set(GPU_NODES) <= gpu_nodes
        ds = wait_for(
            lambda: (
                (
                    d := cluster.apps.read_namespaced_daemon_set(f"{fullname}-agent", ns)
                ).status.desired_number_scheduled
                == len(gpu_nodes)
                and d
            ),
            60,
            "agent DaemonSet scheduled on every GPU node",
        )
        assert ds.status.desired_number_scheduled == len(gpu_nodes)
        wait_for(
            lambda: {p.spec.node_name for p in _pods(cluster, ns, "agent")} == gpu_nodes,
            60,
            "one agent pod per GPU node",
        )
        # kwok runs no container: it reports scheduled pods Running and Ready regardless of the image
        wait_for(
            lambda: (
                (d := cluster.apps.read_namespaced_deployment(fullname, ns)).status.ready_replicas == 2 and d
            ),
            60,
            "operator Deployment ready (as kwok reports it)",
        )
        events = cluster.core.list_namespaced_event(ns).items
        assert not [e for e in events if e.reason == "FailedCreate"], [
            e.message for e in events if e.reason == "FailedCreate"
        ]

        # helm upgrade applies changed values
        helm(
            "upgrade", release, str(CHART), "--namespace", ns, "--reuse-values",
            "--set", "operator.replicas=3", "--set", "operator.resources.requests.cpu=250m",
            "--set", "operator.logLevel=debug",
        )  # fmt: skip
        dep = cluster.apps.read_namespaced_deployment(fullname, ns)
        assert dep.spec.replicas == 3
        container = dep.spec.template.spec.containers[0]
        assert container.resources.requests["cpu"] == "250m"
        assert "--log-level=debug" in container.args
        wait_for(
            lambda: (
                len(p := _pods(cluster, ns, "operator")) == 3
                and all(x.spec.containers[0].resources.requests["cpu"] == "250m" for x in p)
            ),
            90,
            "3 operator pods with the new resources",
        )
        assert helm("history", release, "--namespace", ns).stdout.count("deployed") == 1
    finally:
        helm("uninstall", release, "--namespace", ns, "--wait", "--timeout", "120s", check=False)

    # everything is gone except the CRDs
    assert not _exists(cluster.apps.read_namespaced_deployment, fullname, ns)
    assert not _exists(cluster.apps.read_namespaced_daemon_set, f"{fullname}-agent", ns)
    assert not _exists(cluster.core.read_namespaced_service_account, fullname, ns)
    assert not _exists(cluster.core.read_namespaced_service, f"{fullname}-metrics", ns)
    assert not _exists(rbac.read_cluster_role, fullname)
    assert not _exists(rbac.read_cluster_role, f"{fullname}-agent")
    assert not _exists(rbac.read_cluster_role_binding, fullname)
    assert not _exists(rbac.read_namespaced_role, fullname, nvidia_ns)
    assert not _exists(rbac.read_namespaced_role_binding, fullname, nvidia_ns)
    assert not _exists(rbac.read_namespaced_role, f"{fullname}-leader-election", ns)
    for pc in unique_priority_classes(ns):
        assert not _exists(sched.read_priority_class, pc.split("=")[1])
    for crd in SLM_CRDS:
        assert _exists(ext.read_custom_resource_definition, crd), f"{crd} must survive helm uninstall"
    if installs_crds:
        disown_crds(cluster)
    delete_namespace(cluster, ns)


# ------------------------------------------------------------------------------------------- CRD lifecycle

POST_RENDERER = """\
#!{python}
# Keeps only the CRDs and moves them to group {group} so that the test never touches the slm.io CRDs.
import os, sys, yaml
out = []
for doc in yaml.safe_load_all(sys.stdin):
    if not doc or doc["kind"] != "CustomResourceDefinition":
        continue
    doc["spec"]["group"] = "{group}"
    doc["metadata"]["name"] = doc["spec"]["names"]["plural"] + ".{group}"
    revision = os.environ.get("E2E_CRD_REVISION")
    if revision:
        doc["metadata"]["labels"]["e2e.slm.io/revision"] = revision
        for v in doc["spec"]["versions"]:
            v.setdefault("additionalPrinterColumns", []).append(
                {{"name": "Revision", "type": "string", "jsonPath": ".metadata.name", "description": revision}}
            )
    out.append(doc)
sys.stdout.write(yaml.safe_dump_all(out))
"""


def _crds_left(ext: client.ApiextensionsV1Api, names: list[str]) -> list[str]:
    """The CRDs of ``names`` that still exist, each with its finalizers and Terminating condition (so that a
    timeout says where the apiserver's CRD finalizer is stuck)."""
    left = []
    for n in names:
        try:
            crd = ext.read_custom_resource_definition(n)
        except ApiException as e:
            if e.status == 404:
                continue
            raise
        term = [c for c in crd.status.conditions or [] if c.type == "Terminating"]
        left.append(
            f"{n} finalizers={crd.metadata.finalizers} deleting={bool(crd.metadata.deletion_timestamp)} "
            + (f"Terminating={term[0].status}/{term[0].reason}: {term[0].message}" if term else "")
        )
    return left


def _wait_serving(cluster: Cluster, group: str, plurals: list[str]) -> None:
    """Wait until the API server serves every CRD's instances: right after a CRD is created or changed its
    storage is "(re)initializing", and a CRD deleted before that makes the apiserver's CRD finalizer fail and
    back off exponentially (observed in CI: over 60 s before the CRDs went)."""
    objects = client.CustomObjectsApi(cluster.api)
    for plural in plurals:
        wait_for(
            lambda plural=plural: objects.list_cluster_custom_object(group, "v1alpha1", plural) is not None,
            60,
            f"{plural}.{group} served",
        )


def _wait_crds_gone(
    ext: client.ApiextensionsV1Api, names: list[str], what: str, timeout: float = 180
) -> None:
    # The apiserver's CRD finalizer lists and deletes the instances first; it took over 60 s once under load.
    deadline = time.monotonic() + timeout
    while left := _crds_left(ext, names):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; left: {left}")
        time.sleep(0.2)


def test_crd_lifecycle_upgrade_and_keep(cluster: Cluster, helm: Helm, tmp_path: Path) -> None:
    """Templated CRDs are upgraded by `helm upgrade`, kept on uninstall with crds.keep, removed without."""
    ns = make_namespace(cluster)
    ext = client.ApiextensionsV1Api(cluster.api)
    group = f"{ns}.e2e.slm.io"
    renderer = tmp_path / "post-render.py"
    renderer.write_text(POST_RENDERER.format(python=sys.executable, group=group))
    renderer.chmod(renderer.stat().st_mode | stat.S_IXUSR)
    plurals = [crd.split(".")[0] for crd in SLM_CRDS]
    names = [f"{p}.{group}" for p in plurals]

    def install(release: str, *extra: str, revision: str = "") -> None:
        helm(
            "upgrade", "--install", release, str(CHART), "--namespace", ns, "--post-renderer", str(renderer),
            "--set", "crds.enabled=true", *extra, env={"E2E_CRD_REVISION": revision},
        )  # fmt: skip

    try:
        install("kept")
        for n in names:
            _wait_established(ext, n)
            assert "e2e.slm.io/revision" not in ext.read_custom_resource_definition(n).metadata.labels
        install("kept", revision="v2")
        for n in names:
            crd = ext.read_custom_resource_definition(n)
            assert crd.metadata.labels["e2e.slm.io/revision"] == "v2", "helm upgrade upgraded the CRD"
            assert crd.spec.versions[0].additional_printer_columns[-1].description == "v2"
        _wait_serving(cluster, group, plurals)
        helm("uninstall", "kept", "--namespace", ns, "--wait")
        for n in names:
            assert _exists(ext.read_custom_resource_definition, n), f"{n} kept on uninstall (crds.keep=true)"
        for n in names:
            ext.delete_custom_resource_definition(n)
        _wait_crds_gone(ext, names, "CRDs deleted")

        install("dropped", "--set", "crds.keep=false")
        assert all(_exists(ext.read_custom_resource_definition, n) for n in names)
        _wait_serving(cluster, group, plurals)
        helm("uninstall", "dropped", "--namespace", ns, "--wait")
        _wait_crds_gone(ext, names, "CRDs removed on uninstall with crds.keep=false")
    finally:
        for n in names:
            with contextlib.suppress(ApiException):
                ext.delete_custom_resource_definition(n)
        delete_namespace(cluster, ns)


# ------------------------------------------------------------------------------------------- RBAC


def can_i(cluster: Cluster, sa: str, *args: str) -> bool:
    res = kubectl(cluster, "auth", "can-i", *args, f"--as={sa}", check=False)
    answer = res.stdout.strip().splitlines()[-1] if res.stdout.strip() else ""
    assert answer in ("yes", "no"), f"kubectl auth can-i {args}: {res.stdout} {res.stderr}"
    return answer == "yes"


def test_service_accounts_have_least_privilege(cluster: Cluster, helm: Helm, nvidia_ns: str) -> None:
    ns = make_namespace(cluster)
    release = f"r{ns[-8:]}"
    sets = ["crds.enabled=false", f"operator.nvidia.namespace={nvidia_ns}", *unique_priority_classes(ns)]
    operator = f"system:serviceaccount:{ns}:{release}-slm-operator"
    agent = f"system:serviceaccount:{ns}:{release}-slm-operator-agent"
    try:
        helm("install", release, str(CHART), "--namespace", ns, *[a for s in sets for a in ("--set", s)])
        allowed = [
            ("patch", "nodes"),
            ("watch", "nodes"),
            ("create", "pods", "-n", "default"),
            ("delete", "pods", "-n", "agents"),
            ("patch", "services", "-n", "agents"),
            ("create", "jobs.batch", "-n", "agents"),
            ("create", "events", "-n", "agents"),
            ("list", "customresourcedefinitions.apiextensions.k8s.io"),
            ("list", "namespaces"),
            ("patch", "gpupools.slm.io"),
            ("patch", "slmdeployments.slm.io", "--subresource=status", "-n", "agents"),
            ("get", "configmaps/slm-mig-parted-config", "-n", nvidia_ns),
            ("update", "configmaps/slm-device-plugin-config", "-n", nvidia_ns),
            ("create", "configmaps", "-n", nvidia_ns),
            ("update", "leases.coordination.k8s.io/slm-operator-leader", "-n", ns),
            ("create", "leases.coordination.k8s.io", "-n", ns),
        ]
        denied = [
            ("get", "secrets", "-n", ns),
            ("list", "secrets", "--all-namespaces"),
            ("delete", "nodes"),
            ("update", "nodes"),
            ("create", "nodes"),
            ("create", "clusterroles"),
            ("create", "clusterrolebindings"),
            ("create", "rolebindings", "-n", ns),
            ("bind", "clusterroles"),
            ("escalate", "clusterroles"),
            ("impersonate", "serviceaccounts"),
            ("create", "pods", "--subresource=exec", "-n", "default"),
            ("get", "pods", "--subresource=log", "-n", "default"),
            ("update", "pods", "-n", "default"),
            ("delete", "services", "-n", "agents"),
            ("delete", "gpupools.slm.io"),
            ("create", "slmdeployments.slm.io", "-n", "agents"),
            ("delete", "jobs.batch", "-n", "agents"),
            ("get", "configmaps", "-n", "kube-system"),
            ("update", "configmaps/kube-root-ca.crt", "-n", nvidia_ns),
            ("delete", "configmaps/slm-mig-parted-config", "-n", nvidia_ns),
            ("update", "leases.coordination.k8s.io/slm-operator-leader", "-n", "kube-system"),
            ("update", "leases.coordination.k8s.io/another-lease", "-n", ns),
            ("create", "customresourcedefinitions.apiextensions.k8s.io"),
            ("delete", "namespaces"),
        ]
        wrong = [f"operator may not: {a}" for a in allowed if not can_i(cluster, operator, *a)]
        wrong += [f"operator may: {d}" for d in denied if can_i(cluster, operator, *d)]
        for a in (
            ("get", "nodes/gpu-h100-0"),
            ("patch", "nodes/gpu-l4-0"),
            ("list", "pods", "--all-namespaces"),
        ):
            if not can_i(cluster, agent, *a):
                wrong.append(f"agent may not: {a}")
        for d in (("list", "nodes"), ("delete", "nodes"), ("get", "secrets", "-n", ns), ("create", "pods", "-n", ns),
                  ("get", "pods", "-n", ns), ("patch", "gpupools.slm.io")):  # fmt: skip
            if can_i(cluster, agent, *d):
                wrong.append(f"agent may: {d}")
        assert not wrong, "\n".join(wrong)
    finally:
        helm("uninstall", release, "--namespace", ns, "--wait", check=False)
        delete_namespace(cluster, ns)
