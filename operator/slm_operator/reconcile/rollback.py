"""A node rolled back to its last good MIG layout when mig-manager fails to apply a new one (phases 1, 5, 10).

mig-manager acts only when ``nvidia.com/mig.config`` changes (or its pod restarts), and a failed apply leaves the
GPUs as they were (``shared/facts/gpu-sharing.md`` 3.2). So, on a node the operator repartitions:

* when the plan wants another MIG config while the node reports ``success`` for its current one, that one is its
  last good config: recorded on the node (``slm.io/mig-last-good``: its name and mig-parted entries), in the
  pass that relabels it;
* when every try of the new config failed (``MIG_CONFIG_MAX_TRIES`` names; one name on a node rolled back
  recently), the node is relabelled to its last good config (mig-manager finds it applied: ``success``) and the
  rollback is recorded on the node (``slm.io/mig-rollback``), so that a restarted operator keeps it;
* for a back-off (``--mig-rollback-seconds``, doubled per failure in a row on the node, at most
  ``MIG_ROLLBACK_MAX_FACTOR`` times) the node is planned as it is: its running replicas stay in the layout they
  run in, nothing new is placed on it, and the replicas that wanted the new layout are planned again (on other
  nodes, or they wait and say why); the pool is ``Degraded`` (``MigLayoutRolledBack``) and each affected
  SLMDeployment has a ``MigLayoutRolledBack`` condition;
* after the back-off the plan may want a new layout on the node again (the failed one or, as its replicas run
  elsewhere now, another or none): one try, not a loop. A failure within the longest back-off of the last one
  counts as "in a row", whatever the layout, so a node that takes no layout at all is not tried every 10 min.

A node without a last good record (taken over while ``failed``, or an older operator's) stays as before: the
pool is ``Degraded`` with ``MigConfigFailed`` and its replicas wait.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from slm_operator.api.v1alpha1 import SLMDeployment, SLMDeploymentStatus
from slm_operator.contract import (
    MIG_CONFIG_LABEL,
    MIG_CONFIG_MAX_TRIES,
    MIG_CONFIG_STATE_LABEL,
    MIG_DISABLED_CONFIG,
    MIG_LAST_GOOD_ANNOTATION,
    MIG_ROLLBACK_ANNOTATION,
    MIG_ROLLBACK_MAX_FACTOR,
    MigConfigState,
    PlacementRecord,
    mig_retry_of,
)
from slm_operator.events import Event
from slm_operator.inventory import deployment_key
from slm_operator.planner.model import Plan
from slm_operator.status import condition, set_condition
from slm_operator.timebound import seconds_between
from slm_operator.views import NodeView

#: the condition on the pool (``Degraded`` reason) and on each affected SLMDeployment (its type), the Event reason
ROLLED_BACK = "MigLayoutRolledBack"


@dataclass(frozen=True)
class LastGood:
    """The MIG config a node last reported ``success`` for: its name and entries (None: all-disabled)."""

    config: str
    entries: list[dict[str, Any]] | None

    def to_annotation(self) -> str:
        return json.dumps({"config": self.config, "entries": self.entries}, sort_keys=True)

    @classmethod
    def of(cls, view: NodeView) -> LastGood | None:
        """The record on a node, or None when it is absent or unreadable (never raises)."""
        try:
            data = json.loads(view.annotations.get(MIG_LAST_GOOD_ANNOTATION) or "null")
            config, entries = str(data["config"]), data.get("entries")
        except (ValueError, KeyError, TypeError):
            return None
        if not config or not (entries is None or isinstance(entries, list)):
            return None
        return cls(config, entries)


@dataclass(frozen=True)
class Rollback:
    """A node's last rollback: the config mig-manager failed (``failures`` times in a row), the last good one it
    went back to, when, until when its layout is held, and the deployments whose replicas wanted the new one."""

    failed: str  # the config's base name (without -retryN)
    to: str
    failures: int
    since: str
    until: str
    #: per deployment ("namespace/name"), the ordinals of its replicas that waited for the new layout
    replicas: tuple[tuple[str, tuple[int, ...]], ...] = ()

    def active(self, now: str) -> bool:
        """The node's layout is still held."""
        return self.failures > 0 and seconds_between(now, self.until) > 0

    def recent(self, now: str, first_backoff: float) -> bool:
        """A failure now repeats this one: its back-off ended less than the longest back-off ago."""
        return (
            self.failures > 0 and seconds_between(self.until, now) < first_backoff * MIG_ROLLBACK_MAX_FACTOR
        )

    def to_annotation(self) -> str:
        data = {
            "failed": self.failed,
            "to": self.to,
            "failures": self.failures,
            "since": self.since,
            "until": self.until,
            "replicas": {d: list(o) for d, o in self.replicas},
        }
        return json.dumps(data, sort_keys=True)

    @classmethod
    def of(cls, view: NodeView) -> Rollback | None:
        """The record on a node, or None when it is absent or unreadable (never raises)."""
        try:
            d = json.loads(view.annotations.get(MIG_ROLLBACK_ANNOTATION) or "null")
            return cls(
                failed=str(d["failed"]),
                to=str(d["to"]),
                failures=int(d["failures"]),
                since=str(d["since"]),
                until=str(d["until"]),
                replicas=tuple(
                    (str(k), tuple(int(o) for o in v)) for k, v in sorted((d.get("replicas") or {}).items())
                ),
            )
        except (ValueError, KeyError, TypeError):
            return None

    def message(self, node: str) -> str:
        times = "once" if self.failures == 1 else f"{self.failures} times in a row"
        return (
            f"node {node}: mig-manager failed to apply MIG config {self.failed} ({times}); rolled back to its "
            f"last good config {self.to}, held until {self.until}"
        )


@dataclass(frozen=True)
class RolledBack:
    """A node whose MIG layout is held on its last good config in this pass."""

    record: Rollback
    last_good: LastGood
    started: bool  # the rollback starts in this pass (the node is relabelled back, an Event says so)


def tries_for(record: Rollback | None, now: str, first_backoff: float) -> int:
    """How many names a new MIG config is tried under before the node is rolled back: ``MIG_CONFIG_MAX_TRIES``,
    or one on a node rolled back recently (after its back-off: one try, whatever config the plan wants then)."""
    recent = record is not None and first_backoff > 0 and record.recent(now, first_backoff)
    return 1 if recent else MIG_CONFIG_MAX_TRIES


def exhausted(view: NodeView, tries: int) -> str | None:
    """The config (its base name) mig-manager failed on every one of ``tries``, from the node's labels, or None."""
    if view.labels.get(MIG_CONFIG_STATE_LABEL) != MigConfigState.FAILED:
        return None
    base, retries = mig_retry_of(view.labels.get(MIG_CONFIG_LABEL, MIG_DISABLED_CONFIG))
    return base if retries + 1 >= tries else None


def backoff_seconds(first: float, failures: int) -> float:
    """The back-off after the ``failures``-th failure in a row: ``first``, doubled per failure, capped."""
    return float(first * min(2 ** max(0, failures - 1), MIG_ROLLBACK_MAX_FACTOR))


def later(now: str, seconds: float) -> str:
    """RFC 3339 ``now`` plus ``seconds`` (whole seconds, UTC)."""
    t = datetime.fromisoformat(now.replace("Z", "+00:00"))
    t = t if t.tzinfo is not None else t.replace(tzinfo=UTC)
    return (t + timedelta(seconds=round(seconds))).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def node_rollback(
    view: NodeView,
    now: str,
    first_backoff: float,
    deployments: Iterable[SLMDeployment] = (),
    pods: Iterable[Mapping[str, Any]] = (),
) -> RolledBack | None:
    """Whether the node's MIG layout is held on its last good config in this pass (phase 1): a rollback still
    in its back-off, or one that starts now because every try of a new config failed. ``first_backoff`` <= 0
    turns rollbacks off."""
    last_good = LastGood.of(view)
    if last_good is None or first_backoff <= 0:
        return None
    record = Rollback.of(view)
    if record is not None and record.active(now):
        return RolledBack(record, last_good, started=False)
    failed = exhausted(view, tries_for(record, now, first_backoff))
    if failed is None or mig_retry_of(last_good.config)[0] == failed:
        return None
    failures = record.failures + 1 if record is not None and record.recent(now, first_backoff) else 1
    new = Rollback(
        failed=failed,
        to=last_good.config,
        failures=failures,
        since=now,
        until=later(now, backoff_seconds(first_backoff, failures)),
        replicas=waiting_on(view.name, deployments, pods),
    )
    return RolledBack(new, last_good, started=True)


def waiting_on(
    node: str, deployments: Iterable[SLMDeployment], pods: Iterable[Mapping[str, Any]]
) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """The replicas that waited for ``node``'s new configuration, per deployment: those whose status says they
    wait (``Waiting``; the reason names the node: CREATE_GATES, explain_reconfigurations) without a pod on it."""
    running = {
        (r.deployment, r.ordinal)
        for r in map(PlacementRecord.from_pod, pods)
        if r is not None and r.node == node
    }
    names = re.compile(rf"\bnode {re.escape(node)}(?![-.a-z0-9])")
    out = []
    for dep in deployments:
        key = deployment_key(dep)
        placements = dep.status.placements if dep.status and dep.status.placements else []
        ordinals = {
            p.replica
            for p in placements
            if p.state == "Waiting" and names.search(p.reason) and (key, p.replica) not in running
        }
        if ordinals:
            out.append((key, tuple(sorted(ordinals))))
    return tuple(sorted(out))


def rolled_back_inventory_node(node: Mapping[str, Any], last_good: LastGood) -> dict[str, Any]:
    """The node as its inventory should read it while held: labelled with its last good config (its GPUs are
    still in that layout whatever the label says while it is being relabelled back)."""
    meta = dict(node.get("metadata") or {})
    meta["labels"] = {**(meta.get("labels") or {}), MIG_CONFIG_LABEL: last_good.config}
    return {**node, "metadata": meta}


def last_good_now(view: NodeView, wanted: str, mig_configs: Mapping[str, Any]) -> LastGood | None:
    """The node's current MIG config as its last good one, when the plan changes it (``wanted`` differs) while
    the node reports ``success``; None when there is nothing to record (a name the operator's ConfigMap lacks,
    other than all-disabled, could not be rolled back to)."""
    label = view.labels.get(MIG_CONFIG_LABEL, MIG_DISABLED_CONFIG)
    if label == wanted or view.labels.get(MIG_CONFIG_STATE_LABEL) != MigConfigState.SUCCESS:
        return None
    if label == MIG_DISABLED_CONFIG:
        return LastGood(label, None)
    entries = mig_configs.get(label)
    return LastGood(label, list(entries)) if isinstance(entries, list) else None


# ------------------------------------------------------------------------------------------ 10. reports
def pool_message(rolled: Mapping[str, RolledBack]) -> str:
    """The pool's ``Degraded`` message for its rolled-back nodes."""
    return "; ".join(r.record.message(n) for n, r in sorted(rolled.items())) + (
        ". Nothing new is placed on the node until then; see the node's events and docs/operations.md"
    )


def node_events(rolled: Mapping[str, RolledBack], uids: Mapping[str, str | None]) -> list[Event]:
    """A Warning Event on each node whose rollback starts in this pass."""
    return [
        Event("Node", None, n, "Warning", ROLLED_BACK, r.record.message(n), uids.get(n), api_version="v1")
        for n, r in sorted(rolled.items())
        if r.started
    ]


def report_deployments(
    deployments: Iterable[SLMDeployment],
    statuses: Mapping[str, SLMDeploymentStatus],
    rolled: Mapping[str, RolledBack],
    plan: Plan,
    now: str,
) -> tuple[dict[str, SLMDeploymentStatus], list[Event]]:
    """Each SLMDeployment a rollback affects gets a ``MigLayoutRolledBack`` condition (True while the node is
    held: where its replicas that waited there are planned now, or why they still wait), False once no rollback
    holds it; a Warning Event when the rollback starts."""
    out = dict(statuses)
    events: list[Event] = []
    affected: dict[str, list[tuple[str, RolledBack, tuple[int, ...]]]] = {}
    for node, r in sorted(rolled.items()):
        for dkey, ordinals in r.record.replicas:
            affected.setdefault(dkey, []).append((node, r, ordinals))
    where = {(c.deployment, c.ordinal): c.node for c in plan.placements()}
    plans = {dp.deployment: dp for dp in plan.deployments}
    for dep in deployments:
        dkey = deployment_key(dep)
        st = out.get(dkey)
        if st is None:
            continue
        gen = dep.metadata.generation
        if dkey not in affected:
            old = condition(st.conditions, ROLLED_BACK)
            if old is not None and old.status == "True":
                done = "no node holds back the MIG layout this deployment's replicas waited for"
                st.conditions = set_condition(
                    st.conditions, ROLLED_BACK, False, "BackOffEnded", done, gen, now
                )
            continue
        dp = plans.get(dkey)
        unplaced = {u.ordinal: u.message for u in dp.unplaced} if dp is not None else {}
        parts = [
            f"{r.record.message(node)}; {_fates(dkey, ordinals, where, unplaced)}"
            for node, r, ordinals in affected[dkey]
        ]
        message = "; ".join(parts)
        st.conditions = set_condition(st.conditions, ROLLED_BACK, True, ROLLED_BACK, message, gen, now)
        if any(r.started for _, r, _ in affected[dkey]):
            ns, name = dep.metadata.namespace, dep.metadata.name
            events.append(Event("SLMDeployment", ns, name, "Warning", ROLLED_BACK, message, dep.metadata.uid))
    return out, events


def _fates(
    dkey: str, ordinals: Iterable[int], where: Mapping[tuple[str, int], str], unplaced: Mapping[int, str]
) -> str:
    """Where each replica that waited for the held layout is planned now, or why it still waits."""
    fates = []
    for o in ordinals:
        if (dkey, o) in where:
            fates.append(f"replica {o} planned again on node {where[(dkey, o)]}")
        else:
            fates.append(f"replica {o} waits: {unplaced.get(o, 'not planned')}")
    return ", ".join(fates)
