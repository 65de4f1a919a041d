"""Authenticates every call by its API key (`authorization: Bearer <key>` or `x-api-key`) and
checks the key's grant covers the service called, before any work. Binds the key's tenant for
the call (server.tenants). Refusals are google.rpc.Status with ErrorInfo, counted by reason.
Health and reflection may be left open (for probes and grpcurl) by settings."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from server import call_records, metrics, tenants
from server.auth import Grant, KeyStore
from server.errors import DOMAIN, abort
from server.interceptors.wrapping import Handler, responses, wrap_handler

AUTHORIZATION = "authorization"
API_KEY = "x-api-key"
_BEARER = "bearer "


def service_of(method: str) -> str:
    """"vision.v1.DetectionService" for "/vision.v1.DetectionService/DetectObjects"."""
    return method.lstrip("/").split("/", 1)[0]


def presented_key(metadata: Any) -> str | None:
    """The key a caller sent, from either header; None when it sent none."""
    for key, value in metadata or ():
        text = value if isinstance(value, str) else value.decode("ascii", "replace")
        if key == API_KEY and text:
            return text.strip()
        if key == AUTHORIZATION and text[:len(_BEARER)].lower() == _BEARER:
            return text[len(_BEARER):].strip()
    return None


def _refusal(code: int, reason: str, message: str, service: str) -> status_pb2.Status:
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN,
                                          metadata={"service": service} if service else {}))
    return status_pb2.Status(code=code, message=message, details=[info])


class AuthInterceptor:
    def __init__(self, keys: KeyStore, open_services: frozenset[str]) -> None:
        self._keys = keys
        self._open = open_services

    def wrap(self, method: str, handler: Handler) -> Handler:
        service = service_of(method)
        if service in self._open:
            return handler
        return wrap_handler(handler, lambda b: _unary(self, b, service),
                            lambda b: _streaming(self, b, service))

    async def tenant_of(self, context: grpc.aio.ServicerContext[Any, Any], service: str) -> str:
        """The tenant of the caller's key; aborts the call when the key is missing, unknown or
        not allowed this service."""
        outcome = self._check(context.invocation_metadata(), service)
        if isinstance(outcome, Grant):
            return outcome.tenant
        metrics.record_rejection(outcome[0])
        await abort(context, outcome[1])

    def _check(self, metadata: Any, service: str) -> Grant | tuple[str, status_pb2.Status]:
        key = presented_key(metadata)
        if key is None:
            return "auth_missing_key", _refusal(
                code_pb2.UNAUTHENTICATED, "API_KEY_MISSING",
                f"an API key is required: send it as '{AUTHORIZATION}: Bearer <key>' "
                f"or '{API_KEY}: <key>'", "")
        grant = self._keys.grant_for(key)
        if grant is None:
            return "auth_invalid_key", _refusal(
                code_pb2.UNAUTHENTICATED, "API_KEY_INVALID",
                "the API key is not valid (unknown or revoked)", "")
        if not grant.allows(service):
            return "auth_permission_denied", _refusal(
                code_pb2.PERMISSION_DENIED, "SERVICE_NOT_ALLOWED",
                f"this API key may not call {service}", service)
        return grant


def _unary(auth: AuthInterceptor, behavior: Callable[..., Any], service: str
           ) -> Callable[..., Any]:
    async def bound(request: Any, context: Any) -> Any:
        tenant = await auth.tenant_of(context, service)
        token = tenants.bind(tenant)
        call_records.note_tenant(tenant)
        try:
            return await behavior(request, context)
        finally:
            tenants.unbind(token)

    return bound


def _streaming(auth: AuthInterceptor, behavior: Callable[..., Any], service: str
               ) -> Callable[..., Any]:
    async def bound(request: Any, context: Any) -> AsyncIterator[Any]:
        tenant = await auth.tenant_of(context, service)
        token = tenants.bind(tenant)
        call_records.note_tenant(tenant)
        try:
            async for response in responses(behavior, request, context):
                yield response
        finally:
            tenants.unbind(token)

    return bound
