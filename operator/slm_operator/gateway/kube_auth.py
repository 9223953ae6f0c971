"""Callers in the cluster: ServiceAccount tokens checked with a TokenReview, authorised with a SubjectAccessReview
for verb ``use`` on ``slmroutes/<name>`` in the route's namespace, so access to a model is ordinary RBAC.

API keys (a Secret named by the route) are accepted too, as in the standalone mode: a token whose hash a route's
Secret holds is an API key, anything else goes to the TokenReview. Answers are cached for ``ttl`` seconds
(refusals for ``negative_ttl``) and concurrent calls with the same token or for the same route share one review,
so a burst of calls costs the API server one request.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable
from typing import Generic, Protocol, TypeVar

from slm_operator.gateway.auth import AuthError, Caller, bearer_token
from slm_operator.gateway.kube import TokenResult
from slm_operator.routing.table import CompiledRoute, RouteTable, key_allows

T = TypeVar("T")
SA_PREFIX = "system:serviceaccount:"
MAX_ENTRIES = 10000


class Reviewer(Protocol):
    def token_review(self, token: str) -> TokenResult: ...

    def access_review(
        self, user: str, uid: str, groups: tuple[str, ...], namespace: str, route: str
    ) -> bool: ...


class TtlCache(Generic[T]):
    """Values that expire, computed once for concurrent askers (the first computes, the others wait for it)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._values: dict[str, tuple[float, T]] = {}
        self._pending: dict[str, asyncio.Future[T]] = {}

    async def get(self, key: str, compute: Callable[[], Awaitable[T]], ttl: Callable[[T], float]) -> T:
        now = self.clock()
        hit = self._values.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        pending = self._pending.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._pending[key] = fut
        try:
            value = await compute()
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: no "never retrieved" warning when nobody else waited
            raise
        finally:
            self._pending.pop(key, None)
        if len(self._values) >= MAX_ENTRIES:
            self._values = {k: v for k, v in self._values.items() if v[0] > now}
        self._values[key] = (self.clock() + ttl(value), value)
        fut.set_result(value)
        return value


def service_account_namespace(user: str) -> str | None:
    """``system:serviceaccount:<ns>:<name>`` -> ``<ns>``."""
    if not user.startswith(SA_PREFIX):
        return None
    ns, _, name = user.removeprefix(SA_PREFIX).partition(":")
    return ns if ns and name else None


class KubeAuth:
    """API keys first, then ServiceAccount (or any user) tokens through the API server."""

    def __init__(
        self,
        reviewer: Reviewer,
        *,
        ttl: float = 60.0,
        negative_ttl: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.reviewer = reviewer
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self._tokens: TtlCache[TokenResult] = TtlCache(clock)
        self._access: TtlCache[bool] = TtlCache(clock)

    async def authenticate(self, authorization: str | None, table: RouteTable) -> Caller:
        token = bearer_token(authorization)
        grants = table.grants(token)
        if grants:
            return Caller(identity=grants[0].identity, namespace=grants[0].namespace, grants=grants)
        digest = hashlib.sha256(token.encode()).hexdigest()
        try:
            result = await self._tokens.get(
                digest,
                lambda: asyncio.to_thread(self.reviewer.token_review, token),
                lambda r: self.ttl if r.authenticated else self.negative_ttl,
            )
        except Exception as exc:
            raise AuthError(503, f"the token could not be checked (TokenReview failed: {exc})") from None
        if not result.authenticated:
            raise AuthError(401, f"neither an API key of a route nor a valid token ({result.error})")
        return Caller(
            identity=result.user,
            namespace=service_account_namespace(result.user),
            uid=result.uid,
            groups=result.groups,
        )

    async def may_use(self, caller: Caller, route: CompiledRoute) -> bool:
        if caller.grants:
            return any(key_allows(g, route) for g in caller.grants)
        key = f"{caller.identity}\x00{caller.uid}\x00{','.join(caller.groups)}\x00{route.key}"
        try:
            return await self._access.get(
                key,
                lambda: asyncio.to_thread(
                    self.reviewer.access_review,
                    caller.identity,
                    caller.uid,
                    caller.groups,
                    route.namespace,
                    route.name,
                ),
                lambda allowed: self.ttl if allowed else self.negative_ttl,
            )
        except Exception as exc:
            raise AuthError(
                503, f"access to {route.key} could not be checked (SubjectAccessReview failed: {exc})"
            ) from None
