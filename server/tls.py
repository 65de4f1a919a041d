"""Transport security from settings: the server certificate (TLS), optionally a client CA that
every caller's certificate must chain to (mTLS); and the start-up rule that the server is not
exposed beyond loopback with neither API keys nor TLS unless the operator says so."""

from __future__ import annotations

import ipaddress
import logging

import grpc

from server.settings import Settings, TlsSettings

log = logging.getLogger(__name__)


class InsecureExposureError(RuntimeError):
    """A non-loopback bind without auth or TLS, and no --allow-insecure-public."""


def server_credentials(tls: TlsSettings) -> grpc.ServerCredentials | None:
    """Credentials for add_secure_port; None when TLS is off (no certificate configured)."""
    if tls.cert_file is None or tls.key_file is None:
        return None
    root = tls.client_ca_file.read_bytes() if tls.client_ca_file is not None else None
    return grpc.ssl_server_credentials(
        [(tls.key_file.read_bytes(), tls.cert_file.read_bytes())],
        root_certificates=root,
        require_client_auth=root is not None and tls.require_client_cert,
    )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve to anything


def check_exposure(settings: Settings) -> None:
    """Refuses to start open to a network, and says at start-up how the server is exposed."""
    auth_on = settings.auth.key_file is not None
    tls_on = settings.tls.cert_file is not None
    if not auth_on:
        log.warning("no API key file configured (auth.key_file): every caller is served, "
                    "as tenant 'default'")
    if is_loopback(settings.host) or auth_on or tls_on:
        return
    if not settings.allow_insecure_public:
        raise InsecureExposureError(
            f"refusing to serve {settings.host} without API keys or TLS; configure "
            "auth.key_file and/or tls.cert_file, or pass --allow-insecure-public")
    log.warning("serving %s with neither API keys nor TLS (--allow-insecure-public)",
                settings.host)
