"""The operator's decision for one GPUPool, as a pure function of what the shell gathered.

``decide(world)`` plans the pool and returns every change the shell must make: node labels and the config
entries they name, replica pods to create and delete, Services, statuses and events. It is a pipeline of
named pure phases (below, numbered as in ``docs/architecture.md``); the ordering rules that keep the cluster
safe are gates in :mod:`slm_operator.reconcile.gates`, unit-tested without a cluster:

* a node's ``nvidia.com/mig.config`` / ``nvidia.com/device-plugin.config`` label changes only after every pod
  being deleted on it is gone (drain before repartition) and once the mig-parted entry it names is old enough
  for the kubelet to have synced mig-manager's mounted ConfigMap (phase 8, ``RELABEL_GATES``); a config
  mig-manager reports ``failed`` is retried under an alias name, a bounded number of times (phase 5), then the
  node goes back to its last good MIG config for a back-off, planned as it is (phase 1,
  :mod:`slm_operator.reconcile.rollback`);
* a replica pod is created only when its node reports the planned configuration as applied
  (``nvidia.com/mig.config.state=success`` for MIG, the GFD sharing labels for MPS and time-slicing), and a
  replica that moves or is replaced gets its new pod only after the old pod is gone (phase 9, ``CREATE_GATES``);
* a new spec on the same placement rolls one replica at a time while the others are ready (phase 7,
  ``ROLLING_UPDATE_GATES``);
* a consolidation move is make-before-break: the replica's new pod starts on its target share while the old
  one serves, and the old one is deleted only once the new one is Ready (phases 3b and 9,
  ``MOVE_TARGET_GATES``; :mod:`slm_operator.reconcile.moves`).
* a new replica is planned only while the ResourceQuotas of its namespace (``pods``, ``requests.nvidia.com/*``)
  have room for its pod, by tier then age; a running one is never removed for a quota (phase 4,
  :mod:`slm_operator.reconcile.quotas`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from slm_operator.events import Event
from slm_operator.inventory import pool_policy, shares_per_gpu_limit
from slm_operator.planner.model import CurrentPlacement, Demand, Plan, PoolPolicy
from slm_operator.planner.portfolio import (
    ExactLimits,
    GuideLimits,
    GuideRequest,
    PortfolioOutcome,
    guide_question,
    portfolio_plan,
    solver_installed,
)
from slm_operator.reconcile.consolidation import (
    begin_moves,
    explain_break_before_make,
    finish_moves,
    plan_consolidation,
    report_consolidation,
    target_pods,
)
from slm_operator.reconcile.gates import NodeTarget, pending_configs
from slm_operator.reconcile.inputs import (
    NodeReadings,
    claimed_reservations,
    current_replicas,
    read_nodes,
    size_deployments,
)
from slm_operator.reconcile.moves import without_holds
from slm_operator.reconcile.nodes import (
    Relabels,
    configure_nodes,
    entry_ages,
    entry_times,
    mig_managers,
    node_patches,
    pending_mig_entries,
    refresh_ages,
    refresh_patches,
    refresh_waits,
    relabel_nodes,
    restore_labels,
    with_pending,
)
from slm_operator.reconcile.pods import create_move_targets, create_pods, delete_pods, with_move_deletes
from slm_operator.reconcile.podsets import keep_pods, pod_sets, serving_pods
from slm_operator.reconcile.quotas import plan_within_quotas, read_quotas
from slm_operator.reconcile.rollback import node_events
from slm_operator.reconcile.rollback import report_deployments as report_rollbacks
from slm_operator.reconcile.scaling import drain_counts, explain_reconfigurations
from slm_operator.reconcile.statuses import eviction_events, report_deployments, report_pool
from slm_operator.reconcile.world import Decisions, World
from slm_operator.timebound import seconds_between

__all__ = [
    "Decisions",
    "Event",
    "World",
    "claimed_reservations",
    "decide",
    "node_patches",
    "pending_mig_entries",
    "restore_labels",
]


def decide(world: World) -> Decisions:  # long: the numbered pipeline reads best in one place
    """Plan the pool and decide every change, in phases; each phase is a pure function of earlier ones."""
    # 1. Read nodes: the planner's inventory of each pool node (and the nodes it cannot understand). A node whose
    #    new MIG config failed on every try is held on its last good one: read in it, nothing new placed on it.
    nodes = read_nodes(world)
    # 2. Size deployments: memory per replica and the planner's demand (or why a deployment cannot be sized).
    #    With tenants, each deployment's tenant from its Namespace's labels.
    sizings = size_deployments(world.deployments, world.now, world.pool, world.namespaces)
    # 3. Current replicas: where pods run, or where the status remembers a pod that is briefly gone.
    #    A pod on a lost or deleted node is no replica's place any more (its replica is planned elsewhere).
    serving = serving_pods(world, nodes.lost)
    current = current_replicas(serving, world.deployments)
    # 3b. Consolidation: the moves in flight (the share each one's other pod holds) and the moves that start
    #     now, within the pool's disruption budget.
    claims = claimed_reservations(world, set(nodes.by_name))
    #    Sharing limits no higher than the nodes can run as pods (allocatable pods and CPU).
    limit = shares_per_gpu_limit([r.view.obj for r in nodes.readings], world.cfg.replica_cpu)
    policy = pool_policy(world.pool, claims.claimed, limit)
    step = plan_consolidation(world, policy, nodes.inventories, sizings.demands, current)
    # 4. Plan the pool, with the reserved GPUs the LLM fallback (or a borrowing trainer) has claimed, and the
    #    shares moves hold, within the namespaces' ResourceQuotas: re-planned with lower demands while a quota
    #    holds new replicas back (no more remembered replicas than a quota admits: caps). Small pools: the
    #    exact solver's plan where it is better and disturbs no more (planner/portfolio.py), remembered by input.
    outcomes: dict[str, PortfolioOutcome] = {}
    requests: list[GuideRequest] = []
    within = plan_within_quotas(
        _planner(world, policy, nodes, step.view.current, current, serving, outcomes, requests),
        step.view.demands,
        read_quotas(world.resource_quotas),
        world.pods,
        world.cfg.priority_classes,
    )
    plan = within.plan
    shown = without_holds(plan)
    # 5. Node configs: selector labels, the mig-parted / device-plugin entries they name, GPU roles.
    configs = configure_nodes(nodes, plan, world.mig_configs)
    times = entry_times(world, configs)
    # 6. Pod sets: the replica pods the plan wants against those that exist (pods on lost nodes are stranded,
    #    replicas a quota holds back are not wanted); a move's pods are kept.
    moving = begin_moves(world, step, plan)
    sets = keep_pods(pod_sets(world, plan, sizings, nodes.lost, within.held), frozenset(moving.keep))
    # 7. Deletions: pods not wanted as they are; in-place replacements pass ROLLING_UPDATE_GATES; a move's old
    #    pod once its new one is Ready, its new pod once it missed its deadline.
    deletions = with_move_deletes(delete_pods(sets, plan), tuple(moving.delete), sets)
    # 8. Relabels: changed node labels, once the node's deleted pods are gone and the MIG config they name has
    #    reached mig-manager's mounted ConfigMap (RELABEL_GATES).
    #    A node with a running mig-manager pod gets the pod refreshed once the entry is in the ConfigMap (its
    #    kubelet remounts the volume), and is relabelled mig_manager_refresh_seconds later.
    ages = entry_ages(times, world.now)
    managers = mig_managers(world.mig_manager_pods)
    relabels = relabel_nodes(
        nodes,
        configs,
        deletions.draining_nodes,
        ages,
        world.cfg.configmap_sync_seconds,
        refresh_ages(managers, world.now),
        world.cfg.mig_manager_refresh_seconds,
    )
    # 9. Creations: missing pods that pass CREATE_GATES (share free, node configured as planned), and the new
    #    pods of moves that start now (MOVE_TARGET_GATES).
    creations = create_pods(sets, nodes, configs, relabels)
    targets = create_move_targets(target_pods(world, step, plan, sizings), sets, nodes, configs, relabels)
    moves = finish_moves(moving, step, targets)
    # 10. Statuses and events; a replica that waits for a node's new MIG config or sharing mode says so, with
    #     the drain and the time it is expected to take.
    drains = drain_counts((p for r in sets.existing.values() for p in r.pods), deletions.pods)
    sooner = refresh_waits(managers, world.cfg.mig_manager_refresh_seconds)
    waiting = explain_reconfigurations(
        shown, creations.waiting, drains, world.cfg.configmap_sync_seconds, sooner
    )
    waiting = explain_break_before_make(world, moves, waiting, [*creations.pods, *moves.create])
    deployments = report_deployments(world, shown, sizings, sets, waiting, nodes, within)
    statuses, rollback_events = report_rollbacks(
        world.deployments, deployments.statuses, nodes.rolled_back, shown, world.now
    )
    pool = report_pool(world, shown, nodes, configs, claims, relabels)
    report_consolidation(world, pool, moves, step)
    return Decisions(
        plan=shown,
        node_labels=dict(relabels.labels),
        node_annotations=with_pending(configs.annotations, relabels.pending),
        node_configs=dict(configs.by_node),
        mig_entries=dict(configs.mig_entries),
        mig_entry_times=times,
        device_plugin_entries=dict(configs.device_plugin_entries),
        pods_create=[*creations.pods, *moves.create],
        pods_delete=list(deletions.pods),
        services=list(deployments.services),
        deployment_statuses=statuses,
        pool_status=pool,
        events=[
            *deployments.events,
            *eviction_events(world, shown),
            *moves.events,
            *rollback_events,
            *node_events(
                nodes.rolled_back, {n: r.view.metadata.get("uid") for n, r in nodes.by_name.items()}
            ),
        ],
        # a NotReady node is checked again soon: once it is lost, its replicas are planned elsewhere
        waiting=bool(
            deletions.held or relabels.waiting_nodes or creations.waiting or moves.waiting or nodes.not_ready
        ),
        recheck_seconds=time_gates(world, nodes, relabels),
        consolidation=moves,
        mig_rollbacks={n: r.started for n, r in nodes.rolled_back.items()},
        config_pending=pending_configs(
            {name: NodeTarget(nodes.by_name[name].view, nc) for name, nc in configs.by_node.items()}
        ),
        mig_failed=dict(configs.mig_failed),
        plan_memo=outcomes,
        pod_patches=refresh_patches(managers, relabels.refresh, world.now),
        guide_request=requests[-1] if requests else None,
    )


def _planner(
    world: World,
    policy: PoolPolicy,
    nodes: NodeReadings,
    view_current: Sequence[CurrentPlacement],
    current: Sequence[CurrentPlacement],
    serving: Sequence[Mapping[str, Any]],
    outcomes: dict[str, PortfolioOutcome],
    requests: list[GuideRequest],
) -> Callable[[Sequence[Demand], Mapping[str, int]], Plan]:
    """``plan_for(demands, caps)`` for :func:`plan_within_quotas`: the pool planned from the consolidation step's
    view of the running replicas (moves hold their other share), less the replicas that only the deployments'
    status remembers beyond what a ResourceQuota admits (``caps``). Each exact-solver answer goes into
    ``outcomes`` (the shell hands them back as ``world.plan_memo`` on the pool's next pass). A pool in the
    guided size range is also packed from ``world.plan_guide`` (planner/guided.py); when that answers another
    question, or none came yet, the request for this one goes into ``requests``."""
    known = {(c.deployment, c.ordinal) for c in current}
    cfg = world.cfg
    limits = ExactLimits(cfg.exact_max_gpus, cfg.exact_max_replicas, cfg.exact_budget_seconds)
    guided = GuideLimits(cfg.guided_min_gpus, cfg.guided_max_gpus, cfg.guided_time_limit_seconds)
    answer = world.plan_guide

    def plan_for(demands: Sequence[Demand], caps: Mapping[str, int]) -> Plan:
        pinned = list(view_current)
        if caps:
            admitted = {(c.deployment, c.ordinal) for c in current_replicas(serving, world.deployments, caps)}
            pinned = [
                c
                for c in pinned
                if (c.deployment, c.ordinal) in admitted or (c.deployment, c.ordinal) not in known
            ]
        guide = None
        if guided.admits(policy, nodes.inventories) and solver_installed():
            question = guide_question(policy, nodes.inventories, demands)
            if answer is None or answer.question != question:
                requests.append(GuideRequest(question, policy, tuple(nodes.inventories), tuple(demands)))
            guide = answer.guide if answer is not None else None
        plan, outcome = portfolio_plan(
            policy, nodes.inventories, demands, pinned, limits, world.plan_memo, guide
        )
        if outcome is not None:
            outcomes[outcome.key] = outcome
        return plan

    return plan_for


def time_gates(world: World, nodes: NodeReadings, relabels: Relabels) -> float | None:
    """Seconds until the first gate that opens with time alone, not with a change the watches report: a held
    node's MIG config entry old enough for mig-manager (``configmap_sync_seconds``), a NotReady node lost
    (``node_lost_seconds``). None when no such gate holds anything. The shell passes again then (or sooner,
    on an event), instead of re-planning every second while it waits."""
    times = [] if relabels.synced_in is None else [relabels.synced_in]
    times += [
        world.cfg.node_lost_seconds - seconds_between(since, world.now)
        for since in nodes.not_ready.values()
        if since
    ]
    return max(0.0, min(times)) if times else None
