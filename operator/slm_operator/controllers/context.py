"""The operator-wide state the kopf handlers share, carried in kopf's ``memo``.

:func:`slm_operator.controllers.main.run` builds one :class:`OperatorContext` and passes
``kopf.Memo(operator=context)`` to kopf; every handler gets it back with :func:`from_memo` (kopf hands each
handler a shallow copy of the memo, so the context, its triggers and its lock are the same object for all).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any

import kopf

from slm_operator.controllers.autoscaler import Autoscaler
from slm_operator.controllers.finetune import FineTuneReconciler
from slm_operator.controllers.kube import Kube
from slm_operator.controllers.pools import PoolReconciler
from slm_operator.render import OperatorConfig


@dataclass
class OperatorContext:
    kube: Kube
    cfg: OperatorConfig
    pools: PoolReconciler
    finetune: FineTuneReconciler
    #: The autoscaler (None: disabled with --autoscale-interval 0); its loop runs beside kopf's on the leader.
    autoscaler: Autoscaler | None = None
    #: Pool name -> the event its daemon waits on (set: run a planning pass).
    triggers: dict[str, threading.Event] = field(default_factory=dict)
    #: Object key -> fingerprint of what last mattered in it (events that change nothing are dropped).
    fingerprints: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def pool_trigger(self, pool: str) -> threading.Event:
        """The pool's trigger (created on first use)."""
        with self.lock:
            return self.triggers.setdefault(pool, threading.Event())

    def forget_pool(self, pool: str) -> None:
        with self.lock:
            self.triggers.pop(pool, None)

    def knows_pool(self, pool: str) -> bool:
        with self.lock:
            return pool in self.triggers

    def trigger(self, pool: str) -> None:
        self.pool_trigger(pool).set()

    def trigger_all(self) -> None:
        with self.lock:
            for ev in self.triggers.values():
                ev.set()

    def changed(self, key: str, fingerprint: Any) -> bool:
        """Record ``fingerprint`` for ``key``; False when it is the one recorded last."""
        fp = json.dumps(fingerprint, sort_keys=True, default=str)
        with self.lock:
            if self.fingerprints.get(key) == fp:
                return False
            self.fingerprints[key] = fp
            return True


def memo_for(ctx: OperatorContext) -> kopf.Memo:
    return kopf.Memo(operator=ctx)


def from_memo(memo: Any) -> OperatorContext:
    ctx = getattr(memo, "operator", None)
    if not isinstance(ctx, OperatorContext):
        raise TypeError("kopf's memo carries no OperatorContext: start the operator with memo_for(...)")
    return ctx
