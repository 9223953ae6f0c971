"""A FineTuneJob that learns from the usage store (``dataset.usageStore``), without a cluster: the export step
the Job runs first, and the conditions made from what it reported or why it could not start."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from finetune_support import SANITIZED, condition, ftj, job, job_pod, scores, step, world
from slm_operator.api.v1alpha1 import DatasetSource, FineTuneJob
from slm_operator.finetune import FineTuneDecisions, decide_finetune
from slm_operator.timebound import TIME_BOUND_REGEX, check_time_bound

STORE = {"urlSecretRef": {"name": "usage-store", "key": "url"}, "route": "support", "since": "30d"}


def usage_ftj(**store: Any) -> FineTuneJob:
    return ftj(dataset={"usageStore": {**STORE, **store}})


def _pod_spec(f: FineTuneJob) -> dict[str, Any]:
    d = decide_finetune(world(f))
    assert d.job_create is not None, d.status
    spec: dict[str, Any] = d.job_create["spec"]["template"]["spec"]
    return spec


def _pass(f: FineTuneJob, job_: dict[str, Any] | None, pods: list[dict[str, Any]]) -> FineTuneDecisions:
    return decide_finetune(world(f, job=job_, job_pods=pods))


# ------------------------------------------------------------------------------------------ the Job


def test_the_export_step_reads_the_routes_calls_with_the_url_from_the_secret_and_sanitize_reads_its_file() -> (
    None
):
    spec = _pod_spec(usage_ftj())
    export, sanitize = spec["initContainers"]
    assert export["name"] == "export" and export["image"] == sanitize["image"] == "trainer:1"
    assert export["args"] == [
        "usage", "export", "--route", "agents/support", "--since", "30d",
        "--output", "/work/export.jsonl", "--termination-log", "/dev/termination-log",
    ]  # fmt: skip
    # the URL (with its password) is never in the Job, nor on the process's command line: the kubelet reads the
    # Secret into the variable `usage export` reads
    assert export["env"] == [
        {"name": "SLM_USAGE_STORE_URL", "valueFrom": {"secretKeyRef": {"name": "usage-store", "key": "url"}}}
    ]
    assert export["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert "resources" not in export  # no GPU to read a database
    assert sanitize["args"][:2] == ["sanitize", "/work/export.jsonl"]
    mounts = {m["mountPath"]: m.get("readOnly", False) for m in sanitize["volumeMounts"]}
    assert mounts == {"/work": False}  # no /dataset volume: the data is the export
    assert [m["mountPath"] for m in export["volumeMounts"]] == ["/work"]
    assert {v["name"] for v in spec["volumes"]} == {"work", "output"}
    # without since: every call the store kept
    assert "--since" not in _pod_spec(usage_ftj(since=None))["initContainers"][0]["args"]
    # with a task: only that task's calls of the route (what `advise` proposes once it tagged the store)
    args = _pod_spec(usage_ftj(task="t-52d307e4f1"))["initContainers"][0]["args"]
    assert args[:6] == ["usage", "export", "--route", "agents/support", "--task", "t-52d307e4f1"]


def test_a_configmap_dataset_has_no_export_step() -> None:
    spec = _pod_spec(ftj())
    assert [c["name"] for c in spec["initContainers"]] == ["sanitize"]


@pytest.mark.parametrize(
    ("dataset", "says"),
    [
        ({"usageStore": STORE, "configMapRef": {"name": "calls"}}, "exactly one of `configMapRef`, `pvc` or"),
        ({"usageStore": {**STORE, "since": "last month"}}, "`since` must be a duration"),
        ({"usageStore": {**STORE, "since": "2026-02-30"}}, "`since` must be a duration"),
        ({"usageStore": {"route": "support"}}, "urlSecretRef"),
        ({"usageStore": {**STORE, "route": "other/support"}}, "route"),  # never another namespace's
    ],
)
def test_an_unusable_usage_store_source_is_refused_naming_what_to_change(
    dataset: dict[str, Any], says: str
) -> None:
    with pytest.raises(ValidationError) as err:
        DatasetSource.model_validate(dataset)
    assert says in str(err.value)


@given(
    st.one_of(
        st.builds(lambda n, u: f"{n}{u}", st.integers(0, 10_000), st.sampled_from("smhdw")),
        st.dates().map(lambda d: d.isoformat()),
        st.datetimes(timezones=st.sampled_from([None])).map(lambda t: t.isoformat(timespec="seconds") + "Z"),
    )
)
def test_durations_dates_and_utc_times_pass_the_api_servers_rule_and_the_exports_parser(text: str) -> None:
    """The CRD's rule (``TIME_BOUND_REGEX``) and the export's parser agree on what a user writes."""
    assert re.fullmatch(TIME_BOUND_REGEX, text), text
    assert check_time_bound(text) == text


# ------------------------------------------------------------------------------------------ conditions


EXPORTED = json.dumps({"records": 122})


def test_sanitized_says_how_many_records_the_export_read_and_keeps_it() -> None:
    f = usage_ftj()
    d = _pass(f, job(), [job_pod("p1", export=step("running"), phase="Pending")])
    s = condition(d.status, "Sanitized")
    assert (s.status.value, s.reason) == ("False", "Exporting") and "p1" in s.message
    pods = [
        job_pod(
            "p1", export=step("terminated", 0, EXPORTED), sanitize=step("terminated", 0, SANITIZED),
            train=step("terminated", 0, scores(90)), phase="Succeeded",
        )
    ]  # fmt: skip
    d = _pass(f, job(complete=True), pods)
    s = condition(d.status, "Sanitized")
    assert s.status.value == "True" and s.message == (
        "120 records sanitised, 2 skipped as unparsable; redacted: Email 10, Person 7; "
        "122 records exported from the usage store"
    )
    assert d.status.sanitization is not None and d.status.sanitization.exported == 122
    d2 = _pass(f.model_copy(update={"status": d.status}), job(complete=True), [])  # the pod is gone
    assert condition(d2.status, "Sanitized").message == s.message


def test_an_export_that_fails_says_why_and_the_job_fails_with_its_error() -> None:
    err = json.dumps({"error": "usage store postgresql://slm:***@db:5432/usage: ConnectionRefusedError: ..."})
    pods = [job_pod("p1", export=step("terminated", 2, err), phase="Failed")]
    d = _pass(usage_ftj(), job(), pods)
    s = condition(d.status, "Sanitized")
    assert (s.status.value, s.reason) == ("False", "ExportFailed")
    assert "the export step failed: usage store postgresql://slm:***@db" in s.message
    assert (
        condition(d.status, "Trained").reason == "Retrying"
        and "export step" in condition(d.status, "Trained").message
    )
    d = _pass(usage_ftj(), job(failed=("BackoffLimitExceeded", "backoff limit")), pods)
    failed = condition(d.status, "Failed")
    assert (failed.status.value, failed.reason) == ("True", "ExportFailed")
    assert failed.message.startswith("export step: usage store postgresql://slm:***@db")
    assert d.promotion is None


def test_a_secret_or_key_that_is_not_there_keeps_the_export_waiting_and_says_what_to_fix() -> None:
    kubelet = "couldn't find key url in Secret agents/usage-store"
    waiting = step("waiting", message=kubelet, reason="CreateContainerConfigError")
    d = _pass(usage_ftj(), job(), [job_pod("p1", export=waiting, phase="Pending")])
    s = condition(d.status, "Sanitized")
    assert (s.status.value, s.reason) == ("False", "ExportBlocked")
    assert f"CreateContainerConfigError: {kubelet}" in s.message and "urlSecretRef" in s.message
    assert condition(d.status, "Failed").status.value == "False"  # the kubelet retries; nothing failed
    # merely starting is not blocked
    d = _pass(usage_ftj(), job(), [job_pod("p1", export=step("waiting", reason="PodInitializing"))])
    assert condition(d.status, "Sanitized").reason == "Pending"
