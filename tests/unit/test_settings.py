"""Settings: documented defaults, VISION_ environment variables (nested with __), and flags that
take precedence over the environment."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from server.app import server_options
from server.settings import ConnectionSettings, load_settings


def test_defaults_match_the_documented_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("VISION_PORT", "VISION_TRITON__URL"):
        monkeypatch.delenv(key, raising=False)
    settings = load_settings([])
    assert (settings.host, settings.port, settings.triton.url) == (
        "127.0.0.1", 4603, "127.0.0.1:4601")
    assert settings.limits.max_image_bytes == 32 << 20


def test_environment_then_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VISION_PORT", "5001")
    monkeypatch.setenv("VISION_TRITON__URL", "triton:9001")
    monkeypatch.setenv("VISION_LIMITS__MAX_IMAGE_BYTES", "1024")
    from_env = load_settings([])
    assert (from_env.port, from_env.triton.url, from_env.limits.max_image_bytes) == (
        5001, "triton:9001", 1024)
    flagged = load_settings(["--port", "5002", "--triton.url", "other:1"])
    assert (flagged.port, flagged.triton.url, flagged.limits.max_image_bytes) == (
        5002, "other:1", 1024)


def test_invalid_values_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VISION_DETECTION__DEFAULT_SCORE_THRESHOLD", "1.5")
    with pytest.raises(ValidationError):
        load_settings([])


def test_unread_upload_data_stays_with_the_sender_by_default() -> None:
    """Without BDP probing a stream's HTTP/2 window stays at 64 KiB beyond the message being
    read, so a stream waiting for the upload budget is held back by flow control instead of
    buffered by gRPC (bench/overload.py measures the memory this saves)."""
    options = dict(server_options(ConnectionSettings()))
    assert options["grpc.http2.bdp_probe"] == 0
    probing = dict(server_options(ConnectionSettings(http2_bdp_probe=True)))
    assert probing["grpc.http2.bdp_probe"] == 1
