"""The tenant a call acts for: everything it ingests or searches is scoped to it. Bound once per
call by authentication; calls on a server without API keys act for the default tenant."""

from __future__ import annotations

import contextvars

DEFAULT_TENANT = "default"

_current: contextvars.ContextVar[str] = contextvars.ContextVar("tenant", default=DEFAULT_TENANT)


def current() -> str:
    return _current.get()


def bind(tenant: str) -> contextvars.Token[str]:
    return _current.set(tenant)


def unbind(token: contextvars.Token[str]) -> None:
    _current.reset(token)
