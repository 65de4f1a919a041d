"""The tenant of the call being served: bound by the auth interceptor from the caller's API key
(or DEFAULT_TENANT when the server runs without keys), read by whatever scopes data to a tenant
(ingest, search, the store) through `current_tenant()`."""

from __future__ import annotations

import contextvars

DEFAULT_TENANT = "default"

_current: contextvars.ContextVar[str] = contextvars.ContextVar("tenant", default=DEFAULT_TENANT)


def current_tenant() -> str:
    """The tenant of the call being served; DEFAULT_TENANT outside a call or with auth off."""
    return _current.get()


def bind(tenant: str) -> contextvars.Token[str]:
    return _current.set(tenant)


def unbind(token: contextvars.Token[str]) -> None:
    _current.reset(token)
