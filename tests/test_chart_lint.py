"""kube-linter's default checks over the rendered chart, evaluated here because kube-linter cannot be installed here.

kube-linter (stackrox/kube-linter) is a Go binary: the Go module proxy answers 403 for ``golang.stackrox.io/kube-linter``
and ``github.com/stackrox/kube-linter``, PyPI has no ``kube-linter`` and github.com does not resolve from the build
machines (charts/slm-operator/README.md, "Linting the chart"). So the 30 checks that upstream enables by default
(``docs/generated/checks.md`` at commit 8d689190b7dcd63a8bbb50d05e1739273dbc1e9a, "Enabled by default: Yes") are
written below, one small function per check, named after it, following the semantics of the template it
instantiates (``docs/generated/templates.md``) with the parameters that checks.md gives. Where this code is
stricter than the template, the function says so; it is never laxer. ``make lint-chart`` runs the real
kube-linter instead wherever it is on PATH.

What is linted: the objects ``helm template`` renders for every value set of tests/test_chart.py (the defaults
and each ``charts/slm-operator/ci/*-values.yaml``) plus ``all-on`` (the advisor, observability and the gateway's
capture together). A finding is ``(check, "Kind/component")``: either it fails the test, or it is in ANSWERED
with the reason, which the chart's README states too; an ANSWERED entry that no longer is a finding fails as
well, so no exemption outlives its cause. Each check has a unit test that feeds it a small bad manifest.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.test_chart import CHART, ROOT, VALUE_SETS, render
from tests.test_chart import helm_env as helm_env  # the session fixture (helm found, or skip / fail)

Obj = dict[str, Any]
#: (check, "Kind/component") -> what kube-linter would say
Findings = dict[tuple[str, str], list[str]]
Check = Callable[[Obj, list[Obj]], list[str]]

UPSTREAM_COMMIT = "8d689190b7dcd63a8bbb50d05e1739273dbc1e9a"
#: every check "Enabled by default: Yes" in docs/generated/checks.md at UPSTREAM_COMMIT
DEFAULT_CHECKS = frozenset(
    {
        "dangling-service",
        "deprecated-service-account-field",
        "docker-sock",
        "drop-net-raw-capability",
        "duplicate-env-var",
        "env-var-secret",
        "host-ipc",
        "host-network",
        "host-pid",
        "invalid-target-ports",
        "latest-tag",
        "liveness-port",
        "mismatching-selector",
        "no-anti-affinity",
        "no-extensions-v1beta",
        "no-read-only-root-fs",
        "non-existent-service-account",
        "pdb-max-unavailable",
        "pdb-min-available",
        "pdb-unhealthy-pod-eviction-policy",
        "privilege-escalation-container",
        "privileged-container",
        "readiness-port",
        "run-as-non-root",
        "sensitive-host-mounts",
        "ssh-port",
        "startup-port",
        "unsafe-sysctls",
        "unset-cpu-requirements",
        "unset-memory-requirements",
    }
)

#: Findings that are right to keep: (check, "Kind/component") -> why. Each is also answered in
#: charts/slm-operator/README.md ("Linting the chart"). None today: every finding was a defect and is fixed.
ANSWERED: dict[tuple[str, str], str] = {}

#: the defaults and ci/ value sets, plus everything optional switched on at once
LINT_SETS: dict[str, tuple[list[Path], tuple[str, ...]]] = {n: (v, ()) for n, v in VALUE_SETS.items()} | {
    "all-on": (
        [CHART / "ci" / "advisor-values.yaml", CHART / "ci" / "observability-values.yaml"],
        ("gateway.capture.store=postgresql://slm@usage-db:5432/usage", "gateway.routeNamespaces={agents}"),
    )
}
README = CHART / "README.md"


# ------------------------------------------------------------------------------------------- objects


def ident(obj: Obj) -> str:
    """``Kind/component`` (the chart's component label), so that findings read the same under any release name."""
    meta = obj.get("metadata", {})
    return (
        f"{obj['kind']}/{(meta.get('labels') or {}).get('app.kubernetes.io/component') or meta.get('name')}"
    )


#: kube-linter's "DeploymentLike" objects with a pod template under spec.template
TEMPLATE_KINDS = {"Deployment", "DaemonSet", "StatefulSet", "ReplicaSet", "ReplicationController", "Job"}


def pod_template(obj: Obj) -> Obj | None:
    """The pod template ({metadata, spec}) of a deployment-like object (a Pod is its own), else None."""
    kind = obj.get("kind")
    if kind in TEMPLATE_KINDS:
        return obj.get("spec", {}).get("template")  # type: ignore[no-any-return]
    if kind == "CronJob":
        return obj.get("spec", {}).get("jobTemplate", {}).get("spec", {}).get("template")  # type: ignore[no-any-return]
    if kind == "Pod":
        return obj
    return None


def pod_spec(obj: Obj) -> Obj | None:
    template = pod_template(obj)
    return None if template is None else template.get("spec") or {}


def containers(obj: Obj, init: bool = True) -> list[Obj]:
    """The containers of a deployment-like object, init containers first (kube-linter's AllContainers)."""
    spec = pod_spec(obj)
    if spec is None:
        return []
    return (spec.get("initContainers") or [] if init else []) + (spec.get("containers") or [])


def replicas(obj: Obj) -> int | None:
    """spec.replicas (default 1) of the kinds that have one; None for DaemonSets, Jobs, CronJobs and Pods."""
    if obj.get("kind") in ("Deployment", "StatefulSet", "ReplicaSet", "ReplicationController"):
        return int(obj.get("spec", {}).get("replicas", 1))
    return None


def namespace(obj: Obj) -> str:
    return str(obj.get("metadata", {}).get("namespace", ""))


def selector_matches(selector: Obj | None, labels: dict[str, str]) -> bool:
    """A metav1.LabelSelector against labels (matchLabels and matchExpressions); an empty one matches all."""
    selector = selector or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def _sc(container: Obj) -> Obj:
    return container.get("securityContext") or {}


# ------------------------------------------------------------------------------------------- checks

CHECKS: dict[str, Check] = {}


def check(name: str) -> Callable[[Check], Check]:
    def register(fn: Check) -> Check:
        CHECKS[name] = fn
        return fn

    return register


@check("dangling-service")  # template dangling-service
def dangling_service(obj: Obj, objs: list[Obj]) -> list[str]:
    if obj["kind"] != "Service" or obj.get("spec", {}).get("type") == "ExternalName":
        return []
    selector = obj.get("spec", {}).get("selector") or {}
    if not selector:
        return ["service has no selector specified"]
    for other in objs:
        template = pod_template(other)
        if template is None or namespace(other) != namespace(obj):
            continue
        if selector_matches({"matchLabels": selector}, template.get("metadata", {}).get("labels") or {}):
            return []
    return [f"no pods found matching service labels {selector}"]


@check("deprecated-service-account-field")  # template deprecated-service-account-field
def deprecated_service_account_field(obj: Obj, objs: list[Obj]) -> list[str]:
    sa = (pod_spec(obj) or {}).get("serviceAccount")
    return [f"serviceAccount is specified ({sa}); use serviceAccountName"] if sa else []


def _host_mounts(obj: Obj, dirs: list[str]) -> list[str]:
    """Template host-mounts: hostPath volumes whose path matches one of dirs, mounted into a container."""
    spec = pod_spec(obj) or {}
    flagged = {
        v["name"]: v["hostPath"]["path"]
        for v in spec.get("volumes") or []
        if "hostPath" in v and any(re.search(d, v["hostPath"].get("path", "")) for d in dirs)
    }
    return [
        f"host system directory {flagged[m['name']]} is mounted on container {c['name']}"
        for c in containers(obj)
        for m in c.get("volumeMounts") or []
        if m["name"] in flagged
    ]


@check("docker-sock")  # template host-mounts, dirs: [docker.sock$]
def docker_sock(obj: Obj, objs: list[Obj]) -> list[str]:
    return _host_mounts(obj, [r"docker.sock$"])


@check("sensitive-host-mounts")  # template host-mounts, dirs: the list below
def sensitive_host_mounts(obj: Obj, objs: list[Obj]) -> list[str]:
    return _host_mounts(obj, ["^/$", "^/boot$", "^/dev$", "^/etc$", "^/lib$", "^/proc$", "^/sys$", "^/usr$"])


@check("drop-net-raw-capability")  # template verify-container-capabilities, forbiddenCapabilities: [NET_RAW]
def drop_net_raw_capability(obj: Obj, objs: list[Obj]) -> list[str]:
    """NET_RAW (or ALL) must be dropped and not added. Stricter than the template, which looks only at
    containers that have a capabilities section: a container without one keeps NET_RAW too."""
    out = []
    for c in containers(obj):
        caps = _sc(c).get("capabilities") or {}
        if any(str(x).upper() in ("NET_RAW", "ALL") for x in caps.get("add") or []):
            out.append(f"container {c['name']} adds NET_RAW")
        if not any(str(x).upper() in ("NET_RAW", "ALL") for x in caps.get("drop") or []):
            out.append(f"container {c['name']} does not drop NET_RAW")
    return out


@check("duplicate-env-var")  # template duplicate-env-var
def duplicate_env_var(obj: Obj, objs: list[Obj]) -> list[str]:
    out = []
    for c in containers(obj):
        names = [e["name"] for e in c.get("env") or []]
        out += [
            f"container {c['name']} has env {n} twice"
            for n in sorted({n for n in names if names.count(n) > 1})
        ]
    return out


@check("env-var-secret")  # template env-var, name: (?i).*secret.*, value: .+
def env_var_secret(obj: Obj, objs: list[Obj]) -> list[str]:
    return [
        f"container {c['name']}: environment variable {e['name']} holds a literal secret"
        for c in containers(obj)
        for e in c.get("env") or []
        if re.search(r"(?i).*secret.*", e["name"]) and re.search(r".+", str(e.get("value") or ""))
    ]


def _host_namespace(field: str) -> Check:
    def host_namespace(obj: Obj, objs: list[Obj]) -> list[str]:
        return [f"resource shares the host's namespace ({field})"] if (pod_spec(obj) or {}).get(field) else []

    return host_namespace


check("host-ipc")(_host_namespace("hostIPC"))  # template host-ipc
check("host-network")(_host_namespace("hostNetwork"))  # template host-network
check("host-pid")(_host_namespace("hostPID"))  # template host-pid

#: k8s.io/apimachinery IsValidPortName: at most 15 of [a-z0-9-], a letter, no leading/trailing/double hyphen
_PORT_NAME = re.compile(r"^(?=.*[a-z])(?!-)(?!.*--)[a-z0-9-]{1,15}(?<!-)$")


@check("invalid-target-ports")  # template target-port
def invalid_target_ports(obj: Obj, objs: list[Obj]) -> list[str]:
    if obj["kind"] == "Service":
        out = []
        for p in obj.get("spec", {}).get("ports") or []:
            target = p.get("targetPort", 0)
            if isinstance(target, str) and not _PORT_NAME.match(target):
                out.append(f"targetPort {target!r} is not a valid port name")
            if isinstance(target, int) and target != 0 and not 1 <= target <= 65535:
                out.append(f"targetPort {target} is not a valid port number")
        return out
    return [
        f"port name {p['name']!r} of container {c['name']} is not a valid port name"
        for c in containers(obj)
        for p in c.get("ports") or []
        if p.get("name") and not _PORT_NAME.match(p["name"])
    ]


#: checks.md's BlockList of latest-tag (Go regexps match anywhere, as re.search does)
LATEST_TAG_BLOCKLIST = [r".*:(latest)$", r"^[^:]*$", r"(.*/[^:]+)$"]


@check("latest-tag")  # template latest-tag
def latest_tag(obj: Obj, objs: list[Obj]) -> list[str]:
    return [
        f"container {c['name']} image {c.get('image')!r} has the latest tag or none"
        for c in containers(obj)
        if any(re.search(b, str(c.get("image", ""))) for b in LATEST_TAG_BLOCKLIST)
    ]


def _probe_port(probe: str) -> Check:
    """Templates liveness-port, readiness-port, startup-port: the probe's port (httpGet, tcpSocket, grpc; by
    name or number) is one the container exposes. Non-init containers only: init containers are not probed."""

    def probe_port(obj: Obj, objs: list[Obj]) -> list[str]:
        out = []
        for c in containers(obj, init=False):
            handler = c.get(probe) or {}
            port = next(
                (handler[h].get("port") for h in ("httpGet", "tcpSocket", "grpc") if h in handler), None
            )
            exposed = {p.get("name") for p in c.get("ports") or []} | {
                p["containerPort"] for p in c.get("ports") or []
            }
            if port is not None and port not in exposed:
                out.append(f"container {c['name']} {probe} port {port} is not exposed")
        return out

    return probe_port


check("liveness-port")(_probe_port("livenessProbe"))
check("readiness-port")(_probe_port("readinessProbe"))
check("startup-port")(_probe_port("startupProbe"))


@check("mismatching-selector")  # template mismatching-selector
def mismatching_selector(obj: Obj, objs: list[Obj]) -> list[str]:
    template = pod_template(obj)
    if template is None or obj["kind"] == "Pod":
        return []  # a Pod has no selector
    spec = obj.get("spec", {})
    selector = (spec.get("jobTemplate", {}).get("spec", {}) if obj["kind"] == "CronJob" else spec).get(
        "selector"
    )
    if not selector or not (selector.get("matchLabels") or selector.get("matchExpressions")):
        # a Job's (and so a CronJob's) selector may be left to the API server, which generates it
        return [] if obj["kind"] in ("Job", "CronJob") else ["object has no selector specified"]
    labels = template.get("metadata", {}).get("labels") or {}
    return (
        [] if selector_matches(selector, labels) else [f"selector {selector} does not match labels {labels}"]
    )


@check("no-anti-affinity")  # template anti-affinity, minReplicas: 2, topologyKey kubernetes.io/hostname
def no_anti_affinity(obj: Obj, objs: list[Obj]) -> list[str]:
    n, template = replicas(obj), pod_template(obj)
    if n is None or n < 2 or template is None:
        return []
    anti = ((template.get("spec") or {}).get("affinity") or {}).get("podAntiAffinity") or {}
    terms = [
        t.get("podAffinityTerm") or {}
        for t in anti.get("preferredDuringSchedulingIgnoredDuringExecution") or []
    ]
    terms += anti.get("requiredDuringSchedulingIgnoredDuringExecution") or []
    labels = template.get("metadata", {}).get("labels") or {}
    for term in terms:
        in_namespace = not term.get("namespaces") or namespace(obj) in term["namespaces"]
        on_nodes = term.get("topologyKey") == "kubernetes.io/hostname"
        if in_namespace and on_nodes and selector_matches(term.get("labelSelector"), labels):
            return []
    return [
        f"object has {n} replicas but no inter-pod anti-affinity per kubernetes.io/hostname over its pods"
    ]


@check("no-extensions-v1beta")  # template disallowed-api-obj, group: extensions, version: v1beta.+
def no_extensions_v1beta(obj: Obj, objs: list[Obj]) -> list[str]:
    group, _, version = str(obj.get("apiVersion", "")).rpartition("/")
    return (
        [f"disallowed API object {obj['apiVersion']}"]
        if group == "extensions" and re.search(r"v1beta.+", version)
        else []
    )


@check("no-read-only-root-fs")  # template read-only-root-fs
def no_read_only_root_fs(obj: Obj, objs: list[Obj]) -> list[str]:
    return [
        f"container {c['name']} does not have a read-only root file system"
        for c in containers(obj)
        if _sc(c).get("readOnlyRootFilesystem") is not True
    ]


@check("non-existent-service-account")  # template non-existent-service-account
def non_existent_service_account(obj: Obj, objs: list[Obj]) -> list[str]:
    spec = pod_spec(obj) or {}
    sa = spec.get("serviceAccountName") or spec.get("serviceAccount") or ""
    if sa in ("", "default"):
        return []  # the default ServiceAccount always exists
    known = {
        o["metadata"]["name"]
        for o in objs
        if o["kind"] == "ServiceAccount" and namespace(o) == namespace(obj)
    }
    return [] if sa in known else [f"serviceAccount {sa!r} not found"]


def _pdb_targets(pdb: Obj, objs: list[Obj]) -> Iterator[tuple[Obj, int]]:
    """The deployment-likes with replicas in the PDB's namespace whose pods it selects."""
    for o in objs:
        n, template = replicas(o), pod_template(o)
        if n is None or template is None or namespace(o) != namespace(pdb):
            continue
        if selector_matches(
            pdb.get("spec", {}).get("selector"), template.get("metadata", {}).get("labels") or {}
        ):
            yield o, n


def _scaled(value: int | str, n: int) -> int:
    """An IntOrString of a PDB for n pods (a percentage rounds up, as the disruption controller does)."""
    return math.ceil(int(value.removesuffix("%")) * n / 100) if isinstance(value, str) else value


@check("pdb-max-unavailable")  # template pdb-max-unavailable
def pdb_max_unavailable(obj: Obj, objs: list[Obj]) -> list[str]:
    value = obj.get("spec", {}).get("maxUnavailable") if obj["kind"] == "PodDisruptionBudget" else None
    if value is None or int(str(value).removesuffix("%")) > 0:
        return []
    return [f"maxUnavailable is {value}: no pod it selects may ever be evicted"]


@check("pdb-min-available")  # template pdb-min-available
def pdb_min_available(obj: Obj, objs: list[Obj]) -> list[str]:
    value = obj.get("spec", {}).get("minAvailable") if obj["kind"] == "PodDisruptionBudget" else None
    if value is None:
        return []
    return [
        f"minAvailable {value} leaves no disruption to {ident(o)} with {n} replicas"
        for o, n in _pdb_targets(obj, objs)
        if _scaled(value, n) >= n
    ]


@check("pdb-unhealthy-pod-eviction-policy")  # template pdb-unhealthy-pod-eviction-policy
def pdb_unhealthy_pod_eviction_policy(obj: Obj, objs: list[Obj]) -> list[str]:
    if obj["kind"] != "PodDisruptionBudget" or obj.get("spec", {}).get("unhealthyPodEvictionPolicy"):
        return []
    return ["unhealthyPodEvictionPolicy is not set"]


@check("privilege-escalation-container")  # template privilege-escalation-container
def privilege_escalation_container(obj: Obj, objs: list[Obj]) -> list[str]:
    """Stricter than the template (which flags only an explicit allowPrivilegeEscalation: true): the check's
    remediation in full, allowPrivilegeEscalation false, not privileged, no CAP_SYS_ADMIN added."""
    out = []
    for c in containers(obj):
        sc = _sc(c)
        added = {str(x).upper().removeprefix("CAP_") for x in (sc.get("capabilities") or {}).get("add") or []}
        if (
            sc.get("allowPrivilegeEscalation") is not False
            or sc.get("privileged")
            or added & {"SYS_ADMIN", "ALL"}
        ):
            out.append(f"container {c['name']} may escalate privileges")
    return out


@check("privileged-container")  # template privileged
def privileged_container(obj: Obj, objs: list[Obj]) -> list[str]:
    return [f"container {c['name']} is privileged" for c in containers(obj) if _sc(c).get("privileged")]


@check("run-as-non-root")  # template run-as-non-root
def run_as_non_root(obj: Obj, objs: list[Obj]) -> list[str]:
    """runAsNonRoot (container over pod) true without runAsUser 0, or a non-zero runAsUser. Also a non-zero
    runAsGroup, which later upstream versions of the template require."""
    pod = (pod_spec(obj) or {}).get("securityContext") or {}
    out = []
    for c in containers(obj):
        sc = _sc(c)
        user, group = sc.get("runAsUser", pod.get("runAsUser")), sc.get("runAsGroup", pod.get("runAsGroup"))
        non_root = sc.get("runAsNonRoot", pod.get("runAsNonRoot")) is True
        if not ((non_root and user != 0) or (user or 0) > 0):
            out.append(f"container {c['name']} is not set to runAsNonRoot")
        if not (group or 0) > 0:
            out.append(f"container {c['name']} has runAsGroup {group} (unset or root)")
    return out


@check("ssh-port")  # template ports, port: 22, protocol: TCP
def ssh_port(obj: Obj, objs: list[Obj]) -> list[str]:
    return [
        f"container {c['name']} exposes port 22/TCP"
        for c in containers(obj)
        for p in c.get("ports") or []
        if p.get("containerPort") == 22 and p.get("protocol", "TCP") == "TCP"
    ]


UNSAFE_SYSCTLS = ("kernel.msg", "kernel.sem", "kernel.shm", "fs.mqueue.", "net.")


@check("unsafe-sysctls")  # template unsafe-sysctls
def unsafe_sysctls(obj: Obj, objs: list[Obj]) -> list[str]:
    sysctls = ((pod_spec(obj) or {}).get("securityContext") or {}).get("sysctls") or []
    return [
        f"unsafe sysctl {s['name']}" for s in sysctls if str(s.get("name", "")).startswith(UNSAFE_SYSCTLS)
    ]


def _is_zero(quantity: Any) -> bool:
    """A resource quantity that is unset or zero (lowerBound 0, upperBound 0 of the requirements templates)."""
    number = re.match(r"^[+-]?[0-9.]*", str(quantity if quantity is not None else "0")).group()  # type: ignore[union-attr]
    return float(number or 0) == 0


@check("unset-cpu-requirements")  # template cpu-requirements, requirementsType: request
def unset_cpu_requirements(obj: Obj, objs: list[Obj]) -> list[str]:
    return [
        f"container {c['name']} has no CPU request"
        for c in containers(obj)
        if _is_zero(((c.get("resources") or {}).get("requests") or {}).get("cpu"))
    ]


@check("unset-memory-requirements")  # template memory-requirements, requirementsType: limit
def unset_memory_requirements(obj: Obj, objs: list[Obj]) -> list[str]:
    return [
        f"container {c['name']} has no memory limit"
        for c in containers(obj)
        if _is_zero(((c.get("resources") or {}).get("limits") or {}).get("memory"))
    ]


def lint(objs: list[Obj], checks: dict[str, Check] = CHECKS) -> Findings:
    """Every finding of every check over every object, keyed by (check, "Kind/component")."""
    findings: Findings = {}
    for name, fn in sorted(checks.items()):
        for obj in objs:
            for message in fn(obj, objs):
                findings.setdefault((name, ident(obj)), []).append(message)
    return findings


# ------------------------------------------------------------------------------------------- the chart

_renders: dict[str, list[Obj]] = {}


def lint_set(env: dict[str, str], name: str) -> Findings:
    if name not in _renders:
        values, sets = LINT_SETS[name]
        _renders[name] = render(env, values, sets)
    return lint(_renders[name])


def unanswered(findings: Findings, answered: dict[tuple[str, str], str]) -> Findings:
    """The findings that fail: those without an answer."""
    return {k: v for k, v in findings.items() if k not in answered}


def stale(found: set[tuple[str, str]], answered: dict[tuple[str, str], str]) -> list[tuple[str, str]]:
    """The answers to findings that are no longer found."""
    return sorted(set(answered) - found)


def _report(findings: Findings) -> str:
    return "\n".join(
        f"  {check_} {obj}: {'; '.join(msgs)}" for (check_, obj), msgs in sorted(findings.items())
    )


@pytest.mark.parametrize("name", sorted(LINT_SETS))
def test_chart_passes_kube_linter_default_checks(helm_env: dict[str, str], name: str) -> None:
    failing = unanswered(lint_set(helm_env, name), ANSWERED)
    assert not failing, (
        f"[{name}] kube-linter default checks (upstream {UPSTREAM_COMMIT[:12]}) find:\n{_report(failing)}\n"
        "fix the chart, or answer the finding in ANSWERED and charts/slm-operator/README.md"
    )


def test_every_answered_finding_is_still_found(helm_env: dict[str, str]) -> None:
    found = {k for name in LINT_SETS for k in lint_set(helm_env, name)}
    gone = stale(found, ANSWERED)
    assert not gone, (
        f"ANSWERED entries no value set produces any more (remove them and their README text): {gone}"
    )


def test_every_answered_finding_is_answered_in_the_readme() -> None:
    section = README.read_text().partition("## Linting the chart")[2]
    assert section, f"{README.relative_to(ROOT)} has no 'Linting the chart' section"
    for check_, obj in ANSWERED:
        assert f"`{check_}`" in section and obj in section, f"{check_} {obj} is not answered in the README"


def test_the_checks_are_kube_linters_defaults() -> None:
    assert set(CHECKS) == DEFAULT_CHECKS
    assert len(DEFAULT_CHECKS) == 30


def test_all_on_turns_on_the_optional_workloads(helm_env: dict[str, str]) -> None:
    """all-on renders every workload and the gateway's capture volumes: the lint sees all of the chart's pods."""
    lint_set(helm_env, "all-on")
    idents = {ident(o) for o in _renders["all-on"]}
    assert {"Deployment/operator", "Deployment/gateway", "DaemonSet/agent", "CronJob/advisor"} <= idents
    assert {"PodDisruptionBudget/operator", "PodDisruptionBudget/gateway", "NetworkPolicy/gateway"} <= idents
    (gateway,) = [o for o in _renders["all-on"] if ident(o) == "Deployment/gateway"]
    assert {v["name"] for v in gateway["spec"]["template"]["spec"]["volumes"]} >= {"state", "salt"}


def test_the_lint_catches_a_weakened_chart(helm_env: dict[str, str]) -> None:
    """The chart test can fail: values that undo a fix bring its findings back."""
    sets = ("operator.podAntiAffinity=none", "gateway.securityContext.readOnlyRootFilesystem=false")
    findings = lint(render(helm_env, [], sets))
    assert ("no-anti-affinity", "Deployment/operator") in findings
    assert ("no-read-only-root-fs", "Deployment/gateway") in findings
    assert ("no-anti-affinity", "Deployment/gateway") not in findings


# ------------------------------------------------------------------------------------------- each check


def good() -> list[Obj]:
    """A small manifest every default check passes: a 2-replica Deployment, its ServiceAccount, Service, PDB."""
    labels = {"app.kubernetes.io/component": "web"}
    meta = {"name": "web", "namespace": "ns", "labels": labels}
    container = {
        "name": "app",
        "image": "registry.example.com:5000/team/app:1.0",
        "env": [
            {"name": "MODE", "value": "serve"},
            {"name": "API_SECRET", "valueFrom": {"secretKeyRef": {}}},
        ],
        "ports": [{"name": "http", "containerPort": 8080}],
        "livenessProbe": {"httpGet": {"path": "/", "port": "http"}},
        "readinessProbe": {"tcpSocket": {"port": 8080}},
        "startupProbe": {"grpc": {"port": 8080}},
        "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": "128Mi"}},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    anti = {"labelSelector": {"matchLabels": labels}, "topologyKey": "kubernetes.io/hostname"}
    spec = {
        "serviceAccountName": "web",
        "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000},
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {}}],
        "affinity": {
            "podAntiAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100, "podAffinityTerm": anti}]
            }
        },
    }
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": meta,
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": labels},
                "template": {"metadata": {"labels": labels}, "spec": spec},
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": meta,
            "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": "http"}]},
        },
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": meta,
            "spec": {
                "maxUnavailable": 1,
                "unhealthyPodEvictionPolicy": "AlwaysAllow",
                "selector": {"matchLabels": labels},
            },
        },
    ]


class Parts:
    """The parts of good() a bad case changes (each its own deep copy)."""

    def __init__(self, objs: list[Obj]) -> None:
        self.objs = objs
        self.deployment, self.service, self.pdb = objs[1], objs[2], objs[3]
        self.pod = self.deployment["spec"]["template"]["spec"]
        self.container = self.pod["containers"][0]
        self.sc = self.container["securityContext"]

    def as_cronjob(self, selector: Obj | None = None) -> None:
        """The Deployment turned into a CronJob of the same pods, with selector on its Job template if given."""
        job: Obj = {"template": self.deployment["spec"]["template"]} | (
            {"selector": selector} if selector else {}
        )
        self.deployment.update(apiVersion="batch/v1", kind="CronJob")
        self.deployment["spec"] = {"schedule": "0 3 * * *", "jobTemplate": {"spec": job}}

    def host_path(self, path: str) -> None:
        self.pod["volumes"].append({"name": "host", "hostPath": {"path": path}})
        self.container["volumeMounts"].append({"name": "host", "mountPath": "/host"})


#: check -> bad cases: (what is wrong, the change to good(), the object the finding is on)
BAD: dict[str, list[tuple[str, Callable[[Parts], object], str]]] = {
    "dangling-service": [
        ("selects nothing", lambda p: p.service["spec"].update(selector={"app": "none"}), "Service/web"),
        ("no selector", lambda p: p.service["spec"].pop("selector"), "Service/web"),
    ],
    "deprecated-service-account-field": [
        ("serviceAccount", lambda p: p.pod.update(serviceAccount="web"), "Deployment/web")
    ],
    "docker-sock": [("docker.sock", lambda p: p.host_path("/var/run/docker.sock"), "Deployment/web")],
    "drop-net-raw-capability": [
        ("drops other caps", lambda p: p.sc.update(capabilities={"drop": ["CHOWN"]}), "Deployment/web"),
        (
            "adds NET_RAW",
            lambda p: p.sc.update(capabilities={"drop": ["ALL"], "add": ["NET_RAW"]}),
            "Deployment/web",
        ),
        ("no capabilities", lambda p: p.sc.pop("capabilities"), "Deployment/web"),
    ],
    "duplicate-env-var": [
        ("MODE twice", lambda p: p.container["env"].append({"name": "MODE", "value": "x"}), "Deployment/web")
    ],
    "env-var-secret": [
        (
            "literal",
            lambda p: p.container["env"].append({"name": "db_Secret", "value": "x"}),
            "Deployment/web",
        )
    ],
    "host-ipc": [("hostIPC", lambda p: p.pod.update(hostIPC=True), "Deployment/web")],
    "host-network": [("hostNetwork", lambda p: p.pod.update(hostNetwork=True), "Deployment/web")],
    "host-pid": [("hostPID", lambda p: p.pod.update(hostPID=True), "Deployment/web")],
    "invalid-target-ports": [
        (
            "service name",
            lambda p: p.service["spec"]["ports"][0].update(targetPort="http_alt"),
            "Service/web",
        ),
        ("service number", lambda p: p.service["spec"]["ports"][0].update(targetPort=70000), "Service/web"),
        (
            "container name",
            lambda p: p.container["ports"].append({"name": "a-very-long-port-name", "containerPort": 1}),
            "Deployment/web",
        ),
    ],
    "latest-tag": [
        (":latest", lambda p: p.container.update(image="registry.example.com/app:latest"), "Deployment/web"),
        ("no tag", lambda p: p.container.update(image="app"), "Deployment/web"),
        ("registry port, no tag", lambda p: p.container.update(image="localhost:5000/app"), "Deployment/web"),
    ],
    "liveness-port": [
        ("closed", lambda p: p.container["livenessProbe"]["httpGet"].update(port="admin"), "Deployment/web")
    ],
    "readiness-port": [
        ("closed", lambda p: p.container["readinessProbe"]["tcpSocket"].update(port=9999), "Deployment/web")
    ],
    "startup-port": [
        ("closed", lambda p: p.container["startupProbe"]["grpc"].update(port=9999), "Deployment/web")
    ],
    "mismatching-selector": [
        ("CronJob", lambda p: p.as_cronjob(selector={"matchLabels": {"app": "x"}}), "CronJob/web"),
        (
            "other labels",
            lambda p: p.deployment["spec"].update(selector={"matchLabels": {"app": "x"}}),
            "Deployment/web",
        ),
        (
            "expression",
            lambda p: p.deployment["spec"].update(
                selector={
                    "matchExpressions": [
                        {"key": "app.kubernetes.io/component", "operator": "NotIn", "values": ["web"]}
                    ]
                }
            ),
            "Deployment/web",
        ),
    ],
    "no-anti-affinity": [
        ("none", lambda p: p.pod.pop("affinity"), "Deployment/web"),
        (
            "per zone",
            lambda p: p.pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][
                0
            ]["podAffinityTerm"].update(topologyKey="topology.kubernetes.io/zone"),
            "Deployment/web",
        ),
        (
            "other pods",
            lambda p: p.pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][
                0
            ]["podAffinityTerm"].update(labelSelector={"matchLabels": {"app": "x"}}),
            "Deployment/web",
        ),
    ],
    "no-extensions-v1beta": [
        (
            "extensions/v1beta1",
            lambda p: p.deployment.update(apiVersion="extensions/v1beta1"),
            "Deployment/web",
        )
    ],
    "no-read-only-root-fs": [("writable", lambda p: p.sc.pop("readOnlyRootFilesystem"), "Deployment/web")],
    "non-existent-service-account": [
        ("ghost", lambda p: p.pod.update(serviceAccountName="ghost"), "Deployment/web")
    ],
    "pdb-max-unavailable": [
        ("0", lambda p: p.pdb["spec"].update(maxUnavailable=0), "PodDisruptionBudget/web"),
        ("0%", lambda p: p.pdb["spec"].update(maxUnavailable="0%"), "PodDisruptionBudget/web"),
    ],
    "pdb-min-available": [
        (
            "2 of 2",
            lambda p: (p.pdb["spec"].pop("maxUnavailable"), p.pdb["spec"].update(minAvailable=2)),
            "PodDisruptionBudget/web",
        ),
        (
            "100%",
            lambda p: (p.pdb["spec"].pop("maxUnavailable"), p.pdb["spec"].update(minAvailable="100%")),
            "PodDisruptionBudget/web",
        ),
    ],
    "pdb-unhealthy-pod-eviction-policy": [
        ("unset", lambda p: p.pdb["spec"].pop("unhealthyPodEvictionPolicy"), "PodDisruptionBudget/web")
    ],
    "privilege-escalation-container": [
        ("allowed", lambda p: p.sc.update(allowPrivilegeEscalation=True), "Deployment/web"),
        ("SYS_ADMIN", lambda p: p.sc["capabilities"].update(add=["CAP_SYS_ADMIN"]), "Deployment/web"),
    ],
    "privileged-container": [("privileged", lambda p: p.sc.update(privileged=True), "Deployment/web")],
    "run-as-non-root": [
        (
            "root",
            lambda p: p.pod.update(securityContext={"runAsUser": 0, "runAsGroup": 1000}),
            "Deployment/web",
        ),
        ("unset", lambda p: p.pod.pop("securityContext"), "Deployment/web"),
        ("container overrides", lambda p: p.sc.update(runAsNonRoot=False, runAsUser=0), "Deployment/web"),
        ("root group", lambda p: p.sc.update(runAsGroup=0), "Deployment/web"),
    ],
    "sensitive-host-mounts": [("/etc", lambda p: p.host_path("/etc"), "Deployment/web")],
    "ssh-port": [
        ("22", lambda p: p.container["ports"].append({"name": "ssh", "containerPort": 22}), "Deployment/web")
    ],
    "unsafe-sysctls": [
        (
            "net.",
            lambda p: p.pod["securityContext"].update(
                sysctls=[{"name": "net.ipv4.ip_forward", "value": "1"}]
            ),
            "Deployment/web",
        )
    ],
    "unset-cpu-requirements": [
        ("unset", lambda p: p.container["resources"]["requests"].pop("cpu"), "Deployment/web"),
        ("zero", lambda p: p.container["resources"]["requests"].update(cpu="0m"), "Deployment/web"),
    ],
    "unset-memory-requirements": [
        ("unset", lambda p: p.container["resources"]["limits"].pop("memory"), "Deployment/web"),
        ("zero", lambda p: p.container["resources"]["limits"].update(memory="0"), "Deployment/web"),
    ],
}
BAD_CASES = [(name, what, change, on) for name, cases in sorted(BAD.items()) for what, change, on in cases]


def test_the_good_manifest_passes_every_check() -> None:
    assert lint(good()) == {}


def test_an_answer_silences_its_finding_until_the_finding_goes() -> None:
    """The ANSWERED bookkeeping: an answered finding does not fail; once fixed, its answer is stale."""
    answer = {("no-anti-affinity", "Deployment/web"): "one node per replica is wanted"}
    objs = copy.deepcopy(good())
    Parts(objs).pod.pop("affinity")
    findings = lint(objs)
    assert set(findings) == set(answer)
    assert unanswered(findings, answer) == {}
    assert stale(set(findings), answer) == []
    assert stale(set(lint(good())), answer) == list(answer)
    assert unanswered(findings, {}) == findings


def test_every_check_has_a_bad_case() -> None:
    assert set(BAD) == set(CHECKS)


@pytest.mark.parametrize(
    ("name", "what", "change", "on"), BAD_CASES, ids=[f"{c[0]}-{c[1]}" for c in BAD_CASES]
)
def test_each_check_finds_its_bad_manifest(
    name: str, what: str, change: Callable[[Parts], object], on: str
) -> None:
    objs = copy.deepcopy(good())
    change(Parts(objs))
    assert (name, on) in lint(objs, {name: CHECKS[name]}), f"{name} misses: {what}"


@pytest.mark.parametrize(
    "image",
    [
        "ghcr.io/slm-operator/slm-operator:0.1.0",
        "registry.example.com:5000/a/b:1.0",
        "r.example.com/a/b@sha256:" + "0" * 64,
    ],
)
def test_pinned_images_are_not_latest(image: str) -> None:
    objs = copy.deepcopy(good())
    Parts(objs).container["image"] = image
    assert lint(objs, {"latest-tag": CHECKS["latest-tag"]}) == {}


def test_a_job_may_leave_its_selector_to_the_api_server() -> None:
    objs = copy.deepcopy(good())
    Parts(objs).as_cronjob()
    assert lint(objs, {"mismatching-selector": CHECKS["mismatching-selector"]}) == {}


def test_one_replica_needs_no_anti_affinity_and_a_daemonset_none() -> None:
    objs = copy.deepcopy(good())
    parts = Parts(objs)
    parts.pod.pop("affinity")
    parts.deployment["spec"]["replicas"] = 1
    assert lint(objs, {"no-anti-affinity": CHECKS["no-anti-affinity"]}) == {}
    parts.deployment.update(kind="DaemonSet")
    parts.deployment["spec"].pop("replicas")
    assert lint(objs, {"no-anti-affinity": CHECKS["no-anti-affinity"]}) == {}


@given(
    labels=st.dictionaries(st.sampled_from("abcdef"), st.sampled_from("xyz"), max_size=6),
    data=st.data(),
)
def test_a_selector_matches_exactly_the_labels_it_names(labels: dict[str, str], data: st.DataObject) -> None:
    """matchLabels that are a subset of the labels match; one differing value, or one more key, does not."""
    subset = {k: v for k, v in labels.items() if data.draw(st.booleans())}
    assert selector_matches({"matchLabels": subset}, labels)
    key = data.draw(st.sampled_from("abcdefg"))
    assert not selector_matches({"matchLabels": {**subset, key: labels.get(key, "x") + "-other"}}, labels)
