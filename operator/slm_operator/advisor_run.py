"""The shell of ``slm-operator advise``: read the calls and the manifests, run the advisor, write and apply.

It gathers (a JSON-lines file, stdin or the usage store; the GPUPool, Nodes, SLMDeployments and SLMRoute from
``-f``), calls the pure core (``advisor.cluster.find_tasks``, ``advisor.analysis.advise_records``) and applies
(files under ``-o``; with ``--apply``, server-side apply to the cluster). Errors are ``AdviseError`` with a
message that says what to pass.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import yaml
from kubernetes import dynamic
from kubernetes.client.exceptions import ApiException

from slm_operator.advisor.analysis import Example, Inputs, Outputs, advise_records
from slm_operator.advisor.classifier import TaskClassifier
from slm_operator.advisor.cluster import find_tasks
from slm_operator.advisor.features import text_of
from slm_operator.advisor.profile import TokenPrice
from slm_operator.advisor.proposals import TemplateError, check_template
from slm_operator.advisor.records import CallRecord, Unparsable, parse_lines
from slm_operator.advisor.report import render_html, render_markdown
from slm_operator.advisor.select import PoolContext, SelectionSettings
from slm_operator.api.v1alpha1 import SLMRoute
from slm_operator.capture import open_store
from slm_operator.capture.stores import STORE_ERRORS, shown_url
from slm_operator.contract import (
    ADVICE_CONFIGMAP,
    ADVISE_FIELD_MANAGER,
    API_VERSION,
    TASK_CLASSIFIER_CONFIGMAP,
    TASK_CLASSIFIER_KEY,
)
from slm_operator.events import Event
from slm_operator.inventory import PoolNodeError, pool_inputs
from slm_operator.kubeconfig import KubeConfigError, load_config
from slm_operator.manifests import ManifestError, Manifests, load_manifests, manifests_of
from slm_operator.sanitize import Sanitizer, SanitizerUnavailable
from slm_operator.sanitize.classes import DEFAULT_REDACT
from slm_operator.timebound import parse_time_bound

STORE_SCHEMES = ("sqlite:", "postgresql:", "postgres:")


class AdviseError(Exception):
    """Bad input to ``advise``: the message says what to pass."""


@dataclass(frozen=True)
class Calls:
    records: list[CallRecord]
    skipped: int
    source: str


def _from_lines(lines: Iterable[str | bytes], source: str) -> Calls:
    records: list[CallRecord] = []
    skipped = 0
    for item in parse_lines(lines):
        if isinstance(item, Unparsable):
            skipped += 1
        else:
            records.append(item)
    return Calls(records, skipped, source)


async def _tag(url: str, tasks: Sequence[tuple[str, str]]) -> int:
    async with open_store(url) as store:
        return await store.tag_tasks(tasks)


def tag_store(url: str, records: Sequence[CallRecord], assignments: Sequence[str | None]) -> int:
    """Tag the store's calls with the tasks they were assigned (never overwriting a task they have), so a
    FineTuneJob with ``usageStore.task`` finds them; returns how many were tagged."""
    pairs = [(r.id, t) for r, t in zip(records, assignments, strict=True) if t is not None]
    try:
        return asyncio.run(_tag(url, pairs))
    except STORE_ERRORS as exc:
        raise AdviseError(f"usage store {shown_url(url)}: {type(exc).__name__}: {exc}") from None


async def _export(url: str, route: str | None, since: datetime | None) -> list[CallRecord]:
    out: list[CallRecord] = []
    async with open_store(url, existing=True) as store:
        async for record in store.export(since, None, route):
            out.append(CallRecord.model_validate(record.model_dump()))
    return out


def read_calls(source: str, stdin: TextIO, *, route: str | None, since: str | None) -> Calls:
    """The calls of a JSON-lines file, of stdin (``-``) or of a usage store URL (only ``route``'s, from
    ``since`` on, when given)."""
    if source.startswith(STORE_SCHEMES):
        try:
            start = parse_time_bound(since, datetime.now(UTC)) if since else None
            return Calls(asyncio.run(_export(source, route, start)), 0, f"usage store {shown_url(source)}")
        except ValueError as exc:
            raise AdviseError(str(exc)) from None
        except STORE_ERRORS as exc:
            raise AdviseError(f"usage store {shown_url(source)}: {type(exc).__name__}: {exc}") from None
    if route or since:
        raise AdviseError("--route and --since filter a usage store; a file is read whole (filter it first)")
    if source == "-":
        return _from_lines(stdin, "stdin")
    try:
        with open(source, "rb") as f:
            return _from_lines(f, source)
    except OSError as exc:
        raise AdviseError(f"--from {source}: cannot read ({exc.strerror})") from None


def pool_context(m: Manifests, name: str | None) -> PoolContext | None:
    """The pool to plan on: ``name``, or the only one in the manifests; None when no pool was given."""
    if not m.pools:
        if name:
            raise AdviseError(f"--pool {name}: no GPUPool in the given manifests (-f)")
        return None
    if name is None and len(m.pools) > 1:
        names = ", ".join(sorted(p.metadata.name for p in m.pools))
        raise AdviseError(f"the manifests hold several GPUPools ({names}): choose one with --pool")
    pool = next((p for p in m.pools if name in (None, p.metadata.name)), None)
    if pool is None:
        raise AdviseError(f"--pool {name}: not among the GPUPools of the manifests")
    try:
        inputs = pool_inputs(pool, m.nodes, m.deployments)
    except PoolNodeError as exc:
        raise AdviseError(f"{m.sources.get(f'Node/{exc.node}', '')}: {exc}") from None
    return PoolContext(pool, inputs.policy, tuple(inputs.nodes), tuple(inputs.demands))


def route_of(m: Manifests, records: Sequence[CallRecord], route: str | None) -> SLMRoute | None:
    """The SLMRoute the calls came through (``--route``, else the route most of them name), if given in -f."""
    wanted = route or next(iter(Counter(r.route for r in records if r.route).most_common(1)), ("",))[0]
    for r in m.routes:
        if f"{r.metadata.namespace}/{r.metadata.name}" == wanted:
            return r
    return None


def example_maker(enabled: bool) -> tuple[Example, str | None]:
    """A function from a call to its last user turn with PII replaced by the shared Presidio sanitiser (its
    default classes), and why examples are left out when they are."""
    if not enabled:
        return (lambda _r: ""), "Examples left out (--no-examples)."
    try:
        sanitizer = Sanitizer(DEFAULT_REDACT)
    except SanitizerUnavailable as exc:
        return (lambda _r: ""), f"Examples left out: the sanitiser cannot run ({exc})."

    def example(record: CallRecord) -> str:
        turns = [
            m for m in record.request.get("messages") or [] if isinstance(m, dict) and m.get("role") == "user"
        ]
        text = text_of(turns[-1].get("content")) if turns else ""
        return sanitizer.sanitize_text(text[:600])[0]

    return example, None


#: what the report ConfigMap may hold (a ConfigMap holds at most 1 MiB)
REPORT_BYTES = 900_000


def report_configmap(namespace: str, markdown: str, tasks_json: str) -> dict[str, Any]:
    """The ConfigMap ``--apply`` leaves the run's report in (``kubectl get cm slm-advice -o
    jsonpath='{.data.report\\.md}'``); ``tasks.json`` too when both fit."""
    data = {"report.md": markdown[:REPORT_BYTES]}
    if len(markdown) + len(tasks_json) <= REPORT_BYTES:
        data["tasks.json"] = tasks_json
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": ADVICE_CONFIGMAP, "namespace": namespace},
        "data": data,
    }


def _file_name(index: int, doc: dict[str, Any]) -> str:
    return f"{index:02d}-{doc['kind'].lower()}-{doc['metadata']['name']}.yaml"


def write_outputs(out: Path, outputs: Outputs, markdown: str, page: str) -> list[Path]:
    """The report, tasks.json, assignments.jsonl, classifier.json (the next run's ``--previous-classifier``)
    and one file per manifest under ``out/manifests`` (whose earlier YAML files are removed: the folder is what
    this run proposes)."""
    manifests = out / "manifests"
    manifests.mkdir(parents=True, exist_ok=True)
    for old in manifests.glob("*.yaml"):
        old.unlink()
    (out / "report.md").write_text(markdown, encoding="utf-8")
    (out / "report.html").write_text(page, encoding="utf-8")
    (out / "tasks.json").write_text(outputs.tasks_json, encoding="utf-8")
    (out / "assignments.jsonl").write_text(outputs.assignments_jsonl, encoding="utf-8")
    (out / "classifier.json").write_text(outputs.clustering.classifier.to_json(), encoding="utf-8")
    written = []
    for i, doc in enumerate(outputs.manifests, start=1):
        path = manifests / _file_name(i, doc)
        path.write_text(yaml.safe_dump(doc, sort_keys=False, width=1000), encoding="utf-8")
        written.append(path)
    return written


#: what ``--cluster`` reads: the pools and their nodes, the deployments already there, the routes
CLUSTER_KINDS = (
    (API_VERSION, "GPUPool"),
    ("v1", "Node"),
    (API_VERSION, "SLMDeployment"),
    (API_VERSION, "SLMRoute"),
)


def _dynamic(kubeconfig: str | None) -> dynamic.DynamicClient:
    try:
        return dynamic.DynamicClient(load_config(kubeconfig))  # type: ignore[no-untyped-call]  # untyped package
    except KubeConfigError as exc:
        raise AdviseError(str(exc)) from None


def cluster_objects(kubeconfig: str | None) -> list[dict[str, Any]]:
    """The GPUPools, Nodes, SLMDeployments and SLMRoutes of the cluster, as the API server has them."""
    api = _dynamic(kubeconfig)
    out: list[dict[str, Any]] = []
    for api_version, kind in CLUSTER_KINDS:
        try:
            listed = api.resources.get(api_version=api_version, kind=kind).get().to_dict()
        except ApiException as exc:
            raise AdviseError(f"cannot list {kind}s ({exc.status} {exc.reason}): {_message(exc)}") from None
        out += [{"apiVersion": api_version, "kind": kind, **item} for item in listed.get("items") or []]
    return out


def gather_manifests(files: Sequence[str] | None, kubeconfig: str | None, cluster: bool) -> Manifests:
    """The manifests of ``-f``, and with ``--cluster`` the cluster's objects (a file's object wins over the
    cluster's of the same kind and name: a planned change is reviewed against what runs)."""
    try:
        m = load_manifests(files) if files else Manifests()
    except ManifestError as exc:
        raise AdviseError(str(exc)) from None
    if not cluster:
        return m
    given = {
        (type(o).__name__, o.metadata.namespace, o.metadata.name)
        for o in [*m.pools, *m.deployments, *m.routes]
    }
    given |= {("Node", None, n["metadata"]["name"]) for n in m.nodes}
    live = [
        o
        for o in cluster_objects(kubeconfig)
        if (o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) not in given
    ]
    try:
        found = manifests_of(live, "the cluster")
    except ManifestError as exc:
        raise AdviseError(str(exc)) from None
    m.pools += found.pools
    m.nodes += found.nodes
    m.deployments += found.deployments
    m.routes += found.routes
    return m


def _message(exc: ApiException) -> str:
    try:
        return str(json.loads(exc.body).get("message", exc.reason)) if exc.body else str(exc.reason)
    except ValueError:
        return str(exc.reason)


#: kinds whose existing objects ``--apply`` keeps as they are: a FineTuneJob's spec is immutable, and a task has
#: at most one (a new one is the user's decision, under a new name)
KEEP_EXISTING = frozenset({"FineTuneJob"})


def _exists(resource: Any, name: str, namespace: str | None) -> bool:
    try:
        resource.get(name=name, namespace=namespace)
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


def apply_manifests(docs: Sequence[dict[str, Any]], kubeconfig: str | None) -> list[str]:
    """Server-side apply of each manifest (field manager ``slm-operator-advise``), but an existing FineTuneJob
    is kept; one line per object."""
    api = _dynamic(kubeconfig)
    lines = []
    for doc in docs:
        meta = doc["metadata"]
        what = f"{doc['kind']} {meta.get('namespace', '')}/{meta['name']}"
        try:
            resource = api.resources.get(api_version=doc["apiVersion"], kind=doc["kind"])
            if doc["kind"] in KEEP_EXISTING and _exists(resource, meta["name"], meta.get("namespace")):
                lines.append(f"kept {what} (it exists; its spec cannot change)")
                continue
            resource.server_side_apply(
                body=doc,
                name=meta["name"],
                namespace=meta.get("namespace"),
                field_manager=ADVISE_FIELD_MANAGER,
                force_conflicts=True,
            )
        except ApiException as exc:
            raise AdviseError(f"{what}: the API server refused it: {_message(exc)}") from None
        lines.append(f"applied {what}")
    return lines


def parse_price(value: str | None) -> TokenPrice | None:
    if not value:
        return None
    try:
        prompt, completion = (float(x) for x in value.split(","))
        return TokenPrice(input_per_million=prompt, output_per_million=completion)
    except ValueError:
        raise AdviseError(
            f"--llm-price {value}: give the prompt and completion prices per million tokens, e.g. 2.5,10"
        ) from None


def settings_of(args: argparse.Namespace, namespace: str) -> SelectionSettings:
    licenses = (
        None if args.license == "any" else frozenset(x.strip() for x in args.license.split(",") if x.strip())
    )
    return SelectionSettings(
        namespace=namespace,
        min_calls=args.min_calls,
        min_share=args.min_share,
        licenses=licenses,
        gpu_hour_cost=args.gpu_hour_cost,
    )


def main_route(calls: Calls, route: str | None) -> tuple[str, str] | None:
    """(namespace, name) of ``--route``, else of the route most calls came through; None if they name none."""
    if route is None:
        counted = Counter(r.route for r in calls.records if r.route and "/" in r.route)
        route = counted.most_common(1)[0][0] if counted else None
    if route is None or "/" not in route:
        return None
    namespace, name = route.split("/", 1)
    return namespace, name


def store_secret(value: str | None) -> tuple[str, str] | None:
    if value is None:
        return None
    name, _, key = value.partition("/")
    if not name or not key:
        raise AdviseError(
            f"--usage-store-secret {value}: give the Secret and its key as NAME/KEY, e.g. usage-store/url"
        )
    return name, key


def previous_classifier(path: str) -> TaskClassifier:
    """``--previous-classifier``: a classifier's JSON, or the ConfigMap manifest an earlier run wrote
    (``manifests/NN-configmap-slm-task-classifier.yaml``)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise AdviseError(f"--previous-classifier {path}: cannot read ({exc.strerror})") from None
    try:
        doc = yaml.safe_load(text)
        if isinstance(doc, dict) and doc.get("kind") == "ConfigMap":
            text = (doc.get("data") or {})[TASK_CLASSIFIER_KEY]
        return TaskClassifier.from_json(text)
    except (yaml.YAMLError, KeyError, ValueError) as exc:
        raise AdviseError(
            f"--previous-classifier {path}: not a task classifier (the JSON of one, or the ConfigMap "
            f"{TASK_CLASSIFIER_CONFIGMAP} an earlier run wrote): {str(exc).splitlines()[0]}"
        ) from None


@dataclass(frozen=True)
class LastRun:
    """What the cluster keeps of the advisor's last run in a namespace: its classifier and the FineTuneJobs."""

    classifier: TaskClassifier | None
    jobs: list[dict[str, Any]]
    note: str | None = None


def last_run(kubeconfig: str | None, namespace: str) -> LastRun:
    """The classifier ConfigMap the last run published in ``namespace`` (none on a first run, or when it does
    not parse: said in ``note``) and the namespace's FineTuneJobs."""
    api = _dynamic(kubeconfig)
    try:
        jobs = (
            api.resources.get(api_version=API_VERSION, kind="FineTuneJob").get(namespace=namespace).to_dict()
        )
    except ApiException as exc:
        raise AdviseError(
            f"cannot list FineTuneJobs in {namespace} ({exc.status} {exc.reason}): {_message(exc)}"
        ) from None
    found = [{"apiVersion": API_VERSION, "kind": "FineTuneJob", **j} for j in jobs.get("items") or []]
    try:
        cm = api.resources.get(api_version="v1", kind="ConfigMap").get(
            name=TASK_CLASSIFIER_CONFIGMAP, namespace=namespace
        )
    except ApiException as exc:
        if exc.status == 404:
            return LastRun(None, found)
        raise AdviseError(
            f"cannot read ConfigMap {namespace}/{TASK_CLASSIFIER_CONFIGMAP} ({exc.status} {exc.reason}): "
            f"{_message(exc)}"
        ) from None
    text = ((cm.to_dict().get("data")) or {}).get(TASK_CLASSIFIER_KEY)
    try:
        return LastRun(TaskClassifier.from_json(text or ""), found)
    except ValueError as exc:
        why = str(exc).splitlines()[0]
        note = (
            f"The last run's classifier ({namespace}/{TASK_CLASSIFIER_CONFIGMAP}) does not parse ({why}): "
            "tasks were not compared with it."
        )
        return LastRun(None, found, note)


def post_events(events: Sequence[Event], kubeconfig: str | None) -> int:
    """Posts the Events (best effort: one that is refused is counted out, never stops the run)."""
    api = _dynamic(kubeconfig)
    resource = api.resources.get(api_version="v1", kind="Event")
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    posted = 0
    for event in events:
        body = event.body(ADVISE_FIELD_MANAGER, now)
        try:
            resource.create(body=body, namespace=body["metadata"]["namespace"])
            posted += 1
        except ApiException as exc:
            print(
                f"could not post Event {event.reason} on {event.kind} {event.name}: {_message(exc)}",
                file=sys.stderr,
            )
    return posted


def finetune_template(path: str | None) -> dict[str, Any] | None:
    """The FineTuneJob spec fields of ``--finetune-template`` (a YAML mapping of them, or a FineTuneJob whose
    ``spec`` holds them)."""
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
    except OSError as exc:
        raise AdviseError(f"--finetune-template {path}: cannot read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise AdviseError(f"--finetune-template {path}: not YAML ({exc})") from None
    if isinstance(doc, dict) and doc.get("kind") == "FineTuneJob":
        doc = doc.get("spec")
    if not isinstance(doc, dict):
        raise AdviseError(f"--finetune-template {path}: give a mapping of FineTuneJob spec fields")
    try:
        check_template(doc)
    except TemplateError as exc:
        raise AdviseError(f"--finetune-template {path}: {exc}") from None
    return doc


def run(args: argparse.Namespace) -> int:
    """``slm-operator advise``: 0 when it wrote (and applied) its results; ``AdviseError`` for bad input."""
    calls = read_calls(args.source, sys.stdin, route=args.route, since=args.since)
    if len(calls.records) < 2:
        raise AdviseError(
            f"{calls.source}: {len(calls.records)} call records ({calls.skipped} lines skipped); "
            "the advisor needs captured calls (id, request, response per line)"
        )
    template = finetune_template(args.finetune_template)
    m = gather_manifests(args.filename, args.kubeconfig if args.cluster else None, args.cluster)
    clustering = find_tasks(calls.records, seed=args.seed, method=args.method)
    example, why = example_maker(not args.no_examples)
    route = main_route(calls, args.route)
    from_store = args.source.startswith(STORE_SCHEMES)
    secret = store_secret(args.usage_store_secret)
    if secret and not from_store:
        raise AdviseError(
            "--usage-store-secret needs --from a usage store: the FineTuneJobs read what advise read"
        )
    namespace = args.namespace or (route[0] if route else "default")
    previous = previous_classifier(args.previous_classifier) if args.previous_classifier else None
    last = LastRun(previous, [])
    if args.cluster:
        last = last_run(args.kubeconfig, namespace)
        if previous is not None:
            last = LastRun(previous, last.jobs)
    inputs = Inputs(
        records=calls.records,
        skipped=calls.skipped,
        source=calls.source,
        clustering=clustering,
        settings=settings_of(args, namespace),
        pool=pool_context(m, args.pool),
        route=route_of(m, calls.records, args.route),
        price=parse_price(args.llm_price),
        currency=args.currency,
        adapters_pvc=args.adapters_pvc,
        store_secret=secret,
        route_name=route[1] if route else None,
        finetune_template=template,
        previous=last.classifier,
        jobs=last.jobs,
        drift=args.drift,
        fallback_rise=args.fallback_rise,
    )
    try:
        notes = [x for x in (why, last.note) if x]
        outputs = advise_records(inputs, datetime.now(UTC), example, notes=notes)
    except TemplateError as exc:
        raise AdviseError(f"--finetune-template {args.finetune_template}: {exc}") from None
    out = Path(args.output_dir)
    written = write_outputs(out, outputs, render_markdown(outputs.advice), render_html(outputs.advice))
    a = outputs.advice
    print(
        f"{a.calls} calls, {len(a.tasks)} tasks, {len(a.moved)} to move; wrote {out}/report.md, report.html, "
        f"tasks.json, assignments.jsonl and {len(written)} manifests"
    )
    for change in a.changes:
        print(f"{change.kind}: {change.message}")
    for line in a.retrains:
        print(f"autoRetrain: {line}")
    if args.apply:
        if from_store:
            tagged = tag_store(args.source, calls.records, outputs.clustering.assignments)
            print(f"tagged {tagged} calls in {calls.source} with their task")
        report = report_configmap(
            inputs.settings.namespace, render_markdown(outputs.advice), outputs.tasks_json
        )
        for line in apply_manifests([*outputs.manifests, report], args.kubeconfig):
            print(line)
        if outputs.events and inputs.route is not None:
            meta = inputs.route.metadata
            posted = post_events(outputs.events, args.kubeconfig)
            print(f"posted {posted} Events on SLMRoute {meta.namespace}/{meta.name}")
    return 0
