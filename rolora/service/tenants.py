"""Who is calling, and what is theirs: API keys, the domains each may use, and the threads each has started.

A thread belongs to the key that created it. The service never hands a caller's ``thread_id`` to the agent as is:
it stores the run under ``<tenant namespace>/<thread_id>``, where the namespace is derived from the key itself
(a SHA-256 prefix, never the key). Another key asking for the same ``thread_id`` therefore reaches a different
run — or none — and cannot read, resume, stream or overwrite the first one: to it, that thread does not exist.
The namespace is the same in every worker process that has the same key, so a run started through one worker
resumes through another.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass

from fastapi import HTTPException, Request

from rolora.config import ApiConfig
from rolora.errors import ConfigError

__all__ = ["OPEN", "Tenant", "authenticate", "resolve_api_keys"]

_SEP = "/"  # never allowed in a caller's thread_id (AskRequest's pattern), so namespaces cannot be forged


@dataclass(frozen=True)
class Tenant:
    """An API key's holder: its name, the domains it may use (``"*"`` = all), its thread namespace and quota."""

    name: str
    domains: frozenset[str]
    namespace: str = ""  # "" only in open mode (no keys configured)
    max_concurrency: int | None = None  # request units in flight for this key (None: api.tenant_max_concurrency)

    def allows(self, domain: str) -> bool:
        return "*" in self.domains or domain in self.domains

    def only_domain(self) -> str | None:
        return next(iter(self.domains)) if len(self.domains) == 1 and "*" not in self.domains else None

    def thread(self, thread_id: str) -> str:
        """The agent's thread id for this caller's ``thread_id``."""
        return f"{self.namespace}{_SEP}{thread_id}" if self.namespace else thread_id

    def public(self, agent_thread_id: str) -> str:
        """The caller's ``thread_id`` for the agent's (the namespace is never shown)."""
        prefix = f"{self.namespace}{_SEP}"
        return agent_thread_id.removeprefix(prefix) if self.namespace else agent_thread_id


OPEN = Tenant("open", frozenset({"*"}))  # no keys configured: local use, one shared namespace


def _namespace(key: str) -> str:
    return "t" + hashlib.sha256(key.encode()).hexdigest()[:20]


def resolve_api_keys(api: ApiConfig, env: Mapping[str, str] | None = None) -> list[tuple[str, Tenant]]:
    """``(key, tenant)`` for every configured key; a ``key_env`` that is not set is a ConfigError naming it."""
    env = os.environ if env is None else env
    out: list[tuple[str, Tenant]] = []
    for i, k in enumerate(api.keys):
        value = k.key if k.key is not None else env.get(k.key_env or "")
        if not value:
            raise ConfigError(f"api.keys.{i}.key_env: environment variable {k.key_env} is not set; export it")
        tenant = Tenant(k.name or f"key {i}", frozenset(k.domains), _namespace(value), k.max_concurrency)
        out.append((value, tenant))
    if len({key for key, _ in out}) < len(out):
        raise ConfigError("api.keys: the same key is configured twice; give each tenant its own key")
    return out


def _presented_key(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("x-api-key") or None


def authenticate(keys: list[tuple[str, Tenant]], request: Request, *, required: bool = True) -> Tenant | None:
    """The caller's tenant (``OPEN`` when no keys are configured). A missing key is 401 when ``required``, else
    None; an unknown key is always 401. Every configured key is compared, in constant time."""
    if not keys:
        return OPEN
    presented = _presented_key(request)
    if presented is None:
        if not required:
            return None
        raise HTTPException(
            401,
            "missing API key: send Authorization: Bearer KEY or X-API-Key: KEY",
            headers={"WWW-Authenticate": "Bearer"},
        )
    tenant = None
    for key, t in keys:
        if hmac.compare_digest(key.encode(), presented.encode()):
            tenant = t
    if tenant is None:
        raise HTTPException(401, "unknown API key", headers={"WWW-Authenticate": "Bearer"})
    return tenant
