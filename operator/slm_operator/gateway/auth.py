"""Who is calling, and may they use a route.

Standalone (and for callers outside the cluster): an API key, ``Authorization: Bearer <key>``, whose SHA-256 a
Secret named by the route holds (``spec.apiKeySecretRefs``; :mod:`slm_operator.routing.table`). In the cluster a
ServiceAccount token is checked with TokenReview and authorised with a SubjectAccessReview
(:mod:`slm_operator.gateway.kube_auth`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from slm_operator.routing.table import ApiKeyGrant, CompiledRoute, RouteTable, key_allows


@dataclass(frozen=True)
class Caller:
    identity: str  # "apikey:ns/secret/entry" or "system:serviceaccount:ns:name"
    namespace: str | None = None  # the caller's own namespace, preferred when several routes serve a model
    grants: tuple[ApiKeyGrant, ...] = field(default=())  # API keys: where the key is granted
    uid: str = ""  # token callers: as the TokenReview says, for the SubjectAccessReview
    groups: tuple[str, ...] = ()


class AuthError(Exception):
    """Refused: ``status`` 401 (no or unknown credentials), 403 (not allowed), 503 (the API server could not say)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def bearer_token(header: str | None) -> str:
    """The token of an ``Authorization: Bearer`` header; raises AuthError 401 without one."""
    if not header:
        raise AuthError(401, "no credentials: send `Authorization: Bearer <API key or ServiceAccount token>`")
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError(401, "the Authorization header must be `Bearer <API key or ServiceAccount token>`")
    return token.strip()


class Authenticator(Protocol):
    async def authenticate(self, authorization: str | None, table: RouteTable) -> Caller: ...

    async def may_use(self, caller: Caller, route: CompiledRoute) -> bool: ...


class ApiKeyAuth:
    """API keys whose hashes the routes' Secrets hold."""

    async def authenticate(self, authorization: str | None, table: RouteTable) -> Caller:
        token = bearer_token(authorization)
        grants = table.grants(token)
        if not grants:
            raise AuthError(401, "unknown API key")
        first = grants[0]
        return Caller(identity=first.identity, namespace=first.namespace, grants=grants)

    async def may_use(self, caller: Caller, route: CompiledRoute) -> bool:
        return any(key_allows(g, route) for g in caller.grants)


def identity_for(caller: Caller, route: CompiledRoute) -> str:
    """The caller's identity on ``route``: the grant that allows it (one key may sit in several Secrets)."""
    for g in caller.grants:
        if key_allows(g, route):
            return g.identity
    return caller.identity
