"""What one gateway replica counts for the rules with ``promote`` (S6): compared and agreed shadow answers, and
while a rule's promoted backend serves, its calls and those that fell back. Per (route, rule), on the
``routing.promotion.basis`` the routing table shows for the rule: its phase, the model its ``promote.backend``
serves and (in shadow) whether a FineTuneJob for that backend is pending. A new basis starts from zero, and a
call routed under an older one is not counted. The status Lease's holder decides on its own counts
(``routing.promotion``)."""

from __future__ import annotations

from dataclasses import dataclass

from slm_operator.api.v1alpha1 import RulePhase
from slm_operator.gateway.metrics import GatewayMetrics
from slm_operator.routing.promotion import NO_FACTS, Basis, RuleCounts, basis
from slm_operator.routing.table import CompiledRoute, RouteTable


@dataclass
class Tally:
    basis: Basis
    compared: int = 0
    agreed: int = 0
    served: int = 0
    fell_back: int = 0

    def counts(self) -> RuleCounts:
        return RuleCounts(self.compared, self.agreed, self.served, self.fell_back)


def rule_basis(route: CompiledRoute, rule: str, phase: RulePhase) -> Basis:
    """The basis of the rule's counts in ``phase``, with what ``route`` (a table's) knows of its backend."""
    return basis(phase, route.facts.get(rule, NO_FACTS))


class Tallies:
    def __init__(self, metrics: GatewayMetrics) -> None:
        self.metrics = metrics
        self.tallies: dict[tuple[str, str], Tally] = {}  # (route key, rule) -> counts on a basis

    def follow(self, table: RouteTable) -> None:
        """Keep the counts of the rules whose basis the new table keeps; start the others from zero."""
        kept: dict[tuple[str, str], Tally] = {}
        for route in table.routes.values():
            for rule, phase in route.phases.items():
                b = rule_basis(route, rule, phase)
                tally = self.tallies.get((route.key, rule))
                kept[(route.key, rule)] = tally if tally is not None and tally.basis == b else Tally(b)
                for p in RulePhase:
                    self.metrics.child(self.metrics.rule_phase, route.key, rule, p.value).set(p is phase)
        self.tallies = kept

    def _tally(self, route: CompiledRoute, rule: str, phase: RulePhase) -> Tally | None:
        tally = self.tallies.get((route.key, rule))
        return tally if tally is not None and tally.basis == rule_basis(route, rule, phase) else None

    def compared(self, route: CompiledRoute, rule: str, phase: RulePhase, agreed: bool) -> None:
        tally = self._tally(route, rule, phase)
        if tally is not None:
            tally.compared += 1
            tally.agreed += agreed

    def served(self, route: CompiledRoute, rule: str, phase: RulePhase, fell_back: bool) -> None:
        tally = self._tally(route, rule, phase)
        if tally is not None:
            tally.served += 1
            tally.fell_back += fell_back

    def counts(self, route: CompiledRoute, phases: dict[str, RulePhase]) -> dict[str, RuleCounts]:
        """The counts of the route's rules in the phases given, on the basis ``route`` shows (a rule counted on
        another basis: nothing)."""
        out = {}
        for rule, phase in phases.items():
            tally = self._tally(route, rule, phase)
            if tally is not None:
                out[rule] = tally.counts()
        return out

    def restart(self, route: CompiledRoute, rule: str, phase: RulePhase) -> None:
        """Count from zero in ``phase`` (the holder, once it wrote a change of phase)."""
        self.tallies[(route.key, rule)] = Tally(rule_basis(route, rule, phase))
