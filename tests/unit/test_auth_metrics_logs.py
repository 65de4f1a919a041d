"""The operations pieces that need no server: key files and grants, key headers, the exposure
rule, Triton statistics as Prometheus series, and the JSON log line."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from server import request_ids
from server.access_log import FIELDS_ATTR, JsonFormatter
from server.auth import KeyFileError, KeyStore, hash_key, parse_key_file
from server.interceptors.auth import presented_key, service_of
from server.metrics import TritonStatsCollector
from server.settings import AuthSettings, Settings, TlsSettings
from server.tls import InsecureExposureError, check_exposure, is_loopback
from tools import api_keys


def test_added_keys_resolve_to_their_grant_and_revoked_ones_do_not(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    acme = api_keys.add(path, "acme", frozenset({"*"}))
    globex = api_keys.add(path, "globex", frozenset({"vision.v1.ModelService"}))
    assert acme.startswith("vk_") and acme not in path.read_text()
    store = KeyStore(path, poll_interval_s=1.0)
    store.load()
    grant = store.grant_for(globex)
    assert grant is not None and grant.tenant == "globex"
    assert grant.allows("vision.v1.ModelService")
    assert not grant.allows("vision.v1.DetectionService")
    acme_grant = store.grant_for(acme)
    assert acme_grant is not None and acme_grant.allows("vision.v1.DetectionService")
    assert store.grant_for("vk_unknown") is None
    assert api_keys.revoke(path, hash_key(acme)[:12]) == 1
    store.load()
    assert store.grant_for(acme) is None and store.generation == 2


@pytest.mark.parametrize(("text", "problem"), [
    ('[keys."abc"]\ntenant = "a"\nservices = ["*"]\n', "hex SHA-256"),
    (f'[keys."{"0" * 64}"]\ntenant = "a b"\nservices = ["*"]\n', "tenant"),
    (f'[keys."{"0" * 64}"]\ntenant = "a"\nservices = []\n', "services"),
    ("keys = 3\n", "'keys' table"),
    ("not toml [", "TOMLDecodeError"),
])
def test_malformed_key_files_are_refused(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "keys.toml"
    path.write_text(text)
    with pytest.raises(KeyFileError, match=problem):
        parse_key_file(path)


async def test_a_broken_edit_keeps_the_previous_keys(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    key = api_keys.add(path, "acme", frozenset({"*"}))
    store = KeyStore(path, poll_interval_s=1.0)
    store.load()
    path.write_text("{broken")
    await store.reload_if_changed()
    assert store.generation == 1 and store.grant_for(key) is not None


def test_keys_are_read_from_either_header() -> None:
    assert presented_key((("authorization", "Bearer vk_a"),)) == "vk_a"
    assert presented_key((("authorization", "bearer  vk_b "),)) == "vk_b"
    assert presented_key((("x-api-key", b"vk_c"),)) == "vk_c"
    assert presented_key((("authorization", "Basic abc"),)) is None
    assert presented_key(None) is None
    assert service_of("/vision.v1.OcrService/ReadText") == "vision.v1.OcrService"


def test_exposure_rule(tmp_path: Path) -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("vision.example")
    check_exposure(Settings(host="127.0.0.1"))
    with pytest.raises(InsecureExposureError):
        check_exposure(Settings(host="0.0.0.0"))
    check_exposure(Settings(host="0.0.0.0", allow_insecure_public=True))
    check_exposure(Settings(host="0.0.0.0", auth=AuthSettings(key_file=tmp_path / "k.toml")))
    check_exposure(Settings(host="0.0.0.0", tls=TlsSettings(
        cert_file=tmp_path / "c.pem", key_file=tmp_path / "k.pem")))
    with pytest.raises(ValueError, match="go together"):
        TlsSettings(cert_file=tmp_path / "c.pem")


def test_triton_statistics_become_counters_per_model() -> None:
    collector = TritonStatsCollector()
    registry = CollectorRegistry()
    registry.register(collector)
    collector.update([{
        "name": "yolox_nano_onnx", "version": "1", "inference_count": "12",
        "execution_count": "5",
        "inference_stats": {"queue": {"count": "12", "ns": "3000000000"},
                            "compute_infer": {"count": "5", "ns": "500000000"}},
        "batch_stats": [{"batch_size": "1", "compute_infer": {"count": "2"}},
                        {"batch_size": "5", "compute_infer": {"count": "2"}}],
    }])
    text = generate_latest(registry).decode()
    labels = 'model="yolox_nano_onnx",version="1"'
    for line in (f"vision_triton_inferences_total{{{labels}}} 12.0",
                 f"vision_triton_executions_total{{{labels}}} 5.0",
                 f'vision_triton_batch_executions_total{{batch_size="5",{labels}}} 2.0',
                 f"vision_triton_queue_seconds_total{{{labels}}} 3.0",
                 f"vision_triton_compute_infer_seconds_total{{{labels}}} 0.5",
                 f"vision_triton_mean_batch_size{{{labels}}} 2.4"):
        assert line in text.splitlines(), line


def test_json_log_line() -> None:
    record = logging.LogRecord("vision.access", logging.INFO, __file__, 1, "rpc %s", ("x",), None)
    setattr(record, FIELDS_ATTR, {"tenant": "acme", "code": "OK", "duration_ms": 1.5})
    token = request_ids.bind("rid-1")
    try:
        line = json.loads(JsonFormatter().format(record))
    finally:
        request_ids.unbind(token)
    assert {k: line[k] for k in ("message", "request_id", "tenant", "code", "duration_ms",
                                 "level")} == {"message": "rpc x", "request_id": "rid-1",
                                               "tenant": "acme", "code": "OK",
                                               "duration_ms": 1.5, "level": "INFO"}
