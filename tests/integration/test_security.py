"""API keys, tenants and TLS against the real server and Triton: refusals with their codes and
reasons, a key file edited while serving, the tenant each key acts as, and TLS/mTLS with a CA
and certificates made in the test."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import logging
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.access_log import ACCESS_LOGGER, FIELDS_ATTR
from server.app import RunningServer, create_server
from server.auth import hash_key
from server.settings import AuthSettings, Settings, TlsSettings
from server.tls import InsecureExposureError
from tests.images import photo
from tests.integration.conftest import settings_for
from tests.integration.status_details import reason, status_of
from tools import api_keys
from vision.v1 import detection_service_pb2 as det_pb2
from vision.v1 import detection_service_pb2_grpc as det_grpc
from vision.v1 import image_pb2, ingest_pb2
from vision.v1 import ingest_service_pb2 as ing_pb2
from vision.v1 import ingest_service_pb2_grpc as ing_grpc
from vision.v1 import model_service_pb2 as model_pb2
from vision.v1 import model_service_pb2_grpc as model_grpc
from vision.v1 import search_service_pb2 as search_pb2
from vision.v1 import search_service_pb2_grpc as search_grpc

DETECTION = "vision.v1.DetectionService"
MODELS = "vision.v1.ModelService"


def with_settings(triton_url: str, **changes: object) -> Settings:
    """The test settings (a store directory of its own) with `changes`."""
    return settings_for(triton_url).model_copy(update=changes)


@dataclass
class KeyedServer:
    running: RunningServer
    key_file: Path
    full_key: str  # tenant "acme", every service
    models_key: str  # tenant "globex", ModelService only
    other_key: str  # tenant "initech", every service


@pytest_asyncio.fixture(loop_scope="session")
async def keyed(triton_url: str, tmp_path: Path) -> AsyncIterator[KeyedServer]:
    key_file = tmp_path / "api-keys.toml"
    full_key = api_keys.add(key_file, "acme", frozenset({"*"}))
    models_key = api_keys.add(key_file, "globex", frozenset({MODELS}))
    other_key = api_keys.add(key_file, "initech", frozenset({"*"}))
    running = await create_server(with_settings(
        triton_url,
        auth=AuthSettings(key_file=key_file, reload_interval_s=0.2, open_reflection=False)))
    await running.health_watcher.checked.wait()
    yield KeyedServer(running, key_file, full_key, models_key, other_key)
    await running.stop(grace_s=1.0)


def _detect_request() -> det_pb2.DetectObjectsRequest:
    return det_pb2.DetectObjectsRequest(image=image_pb2.Image(content=photo("chelsea.png")))


async def _drain(responses: AsyncIterable[object]) -> None:
    async for _ in responses:
        pass


async def _refused(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value


async def test_keys_codes_and_tenants(keyed: KeyedServer,
                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{keyed.running.port}") as channel:
        detect = det_grpc.DetectionServiceStub(channel)
        models = model_grpc.ModelServiceStub(channel)

        missing = await _refused(detect.DetectObjects(_detect_request(), timeout=30))
        assert missing.code() == grpc.StatusCode.UNAUTHENTICATED
        assert reason(status_of(missing)) == "API_KEY_MISSING"

        stream = detect.StreamDetectObjects(iter(()), timeout=30)
        unkeyed_stream = await _refused(_drain(stream))
        assert unkeyed_stream.code() == grpc.StatusCode.UNAUTHENTICATED
        assert reason(status_of(unkeyed_stream)) == "API_KEY_MISSING"

        wrong = await _refused(detect.DetectObjects(
            _detect_request(), metadata=(("x-api-key", "vk_not-a-key"),), timeout=30))
        assert wrong.code() == grpc.StatusCode.UNAUTHENTICATED
        assert reason(status_of(wrong)) == "API_KEY_INVALID"

        denied = await _refused(detect.DetectObjects(
            _detect_request(), metadata=(("authorization", f"Bearer {keyed.models_key}"),),
            timeout=30))
        assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
        assert reason(status_of(denied)) == "SERVICE_NOT_ALLOWED"
        assert DETECTION in (denied.details() or "")

        listed = await models.ListModels(
            model_pb2.ListModelsRequest(),
            metadata=(("authorization", f"bearer {keyed.models_key}"),), timeout=30)
        assert "yolox_nano" in {m.name for m in listed.models}
        found = await detect.DetectObjects(
            _detect_request(), metadata=(("x-api-key", keyed.full_key),), timeout=60)
        assert found.detections[0].label == "cat"

        # Health stays open by default; reflection was closed by the fixture's settings.
        health = health_pb2_grpc.HealthStub(channel)
        answer = await health.Check(health_pb2.HealthCheckRequest(service=DETECTION))
        assert answer.status == health_pb2.HealthCheckResponse.SERVING

    lines = [r for r in caplog.records if r.name == ACCESS_LOGGER]
    calls = [(getattr(r, FIELDS_ATTR)["method"], getattr(r, FIELDS_ATTR)["code"],
              getattr(r, FIELDS_ATTR)["tenant"]) for r in lines]
    assert calls[:6] == [("DetectObjects", "UNAUTHENTICATED", "default"),
                         ("StreamDetectObjects", "UNAUTHENTICATED", "default"),
                         ("DetectObjects", "UNAUTHENTICATED", "default"),
                         ("DetectObjects", "PERMISSION_DENIED", "default"),
                         ("ListModels", "OK", "globex"),
                         ("DetectObjects", "OK", "acme")]
    for key in (keyed.full_key, keyed.models_key):
        assert key not in caplog.text


async def test_key_file_edited_while_serving(keyed: KeyedServer) -> None:
    keys = keyed.running.operations.keys if keyed.running.operations else None
    assert keys is not None
    generation = keys.generation
    new_key = api_keys.add(keyed.key_file, "initech", frozenset({MODELS}))
    revoked = api_keys.revoke(keyed.key_file, hash_key(keyed.models_key)[:16])
    assert revoked == 1
    # Both edits land within one poll or two; the bound is 2 s for the new key.
    await asyncio.wait_for(keys.wait_for_generation(generation + 1), 2.0)
    if keys.grant_for(keyed.models_key) is not None:
        await asyncio.wait_for(keys.wait_for_generation(generation + 2), 2.0)

    async with grpc.aio.insecure_channel(f"127.0.0.1:{keyed.running.port}") as channel:
        models = model_grpc.ModelServiceStub(channel)
        await models.ListModels(model_pb2.ListModelsRequest(),
                                metadata=(("x-api-key", new_key),), timeout=30)
        removed = await _refused(models.ListModels(
            model_pb2.ListModelsRequest(), metadata=(("x-api-key", keyed.models_key),),
            timeout=30))
        assert removed.code() == grpc.StatusCode.UNAUTHENTICATED
        assert reason(status_of(removed)) == "API_KEY_INVALID"


async def test_closed_health_needs_a_key(triton_url: str, tmp_path: Path) -> None:
    key_file = tmp_path / "keys.json"
    key = api_keys.add(key_file, "acme", frozenset({"grpc.health.v1.Health"}))
    running = await create_server(with_settings(
        triton_url, auth=AuthSettings(key_file=key_file, open_health=False)))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            refused = await _refused(health.Check(health_pb2.HealthCheckRequest(), timeout=10))
            assert refused.code() == grpc.StatusCode.UNAUTHENTICATED
            await health.Check(health_pb2.HealthCheckRequest(), metadata=(("x-api-key", key),),
                               timeout=10)
    finally:
        await running.stop(grace_s=0)


async def test_public_bind_without_auth_or_tls_needs_the_flag(triton_url: str) -> None:
    with pytest.raises(InsecureExposureError):
        await create_server(with_settings(triton_url, host="0.0.0.0"))


async def test_a_tenant_sees_only_its_own_records(keyed: KeyedServer) -> None:
    acme = (("x-api-key", keyed.full_key),)
    initech = (("x-api-key", keyed.other_key),)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{keyed.running.port}") as channel:
        ingest = ing_grpc.IngestServiceStub(channel)
        search = search_grpc.SearchServiceStub(channel)
        await ingest.IngestImage(ing_pb2.IngestImageRequest(
            options=ingest_pb2.IngestOptions(id="cat-1"),
            image=image_pb2.Image(content=photo("chelsea.png"))), metadata=acme, timeout=300)

        own = await search.Search(search_pb2.SearchRequest(text="cat"), metadata=acme,
                                  timeout=60)
        assert [hit.id for hit in own.hits] == ["cat-1"]
        got = await ingest.GetImage(ing_pb2.GetImageRequest(id="cat-1"), metadata=acme,
                                    timeout=60)
        assert got.image.id == "cat-1"

        by_text = await search.Search(search_pb2.SearchRequest(text="cat"), metadata=initech,
                                      timeout=60)
        by_image = await search.Search(search_pb2.SearchRequest(
            image=image_pb2.Image(content=photo("chelsea.png"))), metadata=initech, timeout=60)
        assert list(by_text.hits) == [] and list(by_image.hits) == []
        for call in (ingest.GetImage(ing_pb2.GetImageRequest(id="cat-1"), metadata=initech,
                                     timeout=60),
                     ingest.DeleteImage(ing_pb2.DeleteImageRequest(id="cat-1"),
                                        metadata=initech, timeout=60)):
            refused = await _refused(call)
            assert refused.code() == grpc.StatusCode.NOT_FOUND

        # The other tenant's delete changed nothing.
        still = await search.Search(search_pb2.SearchRequest(text="cat"), metadata=acme,
                                    timeout=60)
        assert [hit.id for hit in still.hits] == ["cat-1"]


# --- TLS ---------------------------------------------------------------------------------------

@dataclass
class Pki:
    ca: bytes
    server_cert: bytes
    server_key: bytes
    client_cert: bytes
    client_key: bytes


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name,
          issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool,
          usage: x509.ObjectIdentifier | None = None) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(issuer).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if usage == ExtendedKeyUsageOID.SERVER_AUTH:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_pki() -> Pki:
    ca_key = _key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vision-grpc test CA")])
    ca = _cert("vision-grpc test CA", ca_key, ca_name, ca_key, ca=True)
    server_key, client_key = _key(), _key()
    server = _cert("localhost", server_key, ca_name, ca_key, ca=False,
                   usage=ExtendedKeyUsageOID.SERVER_AUTH)
    client = _cert("test client", client_key, ca_name, ca_key, ca=False,
                   usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    pem = serialization.Encoding.PEM
    return Pki(ca.public_bytes(pem), server.public_bytes(pem), _pem_key(server_key),
               client.public_bytes(pem), _pem_key(client_key))


def _tls_settings(pki: Pki, folder: Path, mutual: bool) -> TlsSettings:
    files = {"ca.pem": pki.ca, "server.pem": pki.server_cert, "server.key": pki.server_key}
    for name, content in files.items():
        (folder / name).write_bytes(content)
    return TlsSettings(cert_file=folder / "server.pem", key_file=folder / "server.key",
                       client_ca_file=folder / "ca.pem" if mutual else None)


async def _health(channel: grpc.aio.Channel) -> int:
    answer = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(), timeout=10)
    return int(answer.status)


async def test_tls_and_mtls(triton_url: str, tmp_path: Path) -> None:
    pki = make_pki()
    serving = health_pb2.HealthCheckResponse.SERVING
    for mutual in (False, True):
        running = await create_server(with_settings(
            triton_url, tls=_tls_settings(pki, tmp_path, mutual)))
        target = f"127.0.0.1:{running.port}"
        try:
            await running.health_watcher.checked.wait()
            with_cert = grpc.ssl_channel_credentials(pki.ca, pki.client_key, pki.client_cert)
            async with grpc.aio.secure_channel(target, with_cert) as channel:
                assert await _health(channel) == serving
            server_only = grpc.ssl_channel_credentials(pki.ca)
            async with grpc.aio.secure_channel(target, server_only) as channel:
                if mutual:
                    refused = await _refused(_health(channel))
                    assert refused.code() == grpc.StatusCode.UNAVAILABLE
                else:
                    assert await _health(channel) == serving
            async with grpc.aio.insecure_channel(target) as channel:
                refused = await _refused(_health(channel))
                assert refused.code() == grpc.StatusCode.UNAVAILABLE
            # A CA the server's certificate does not chain to is refused by the client.
            other = make_pki()
            async with grpc.aio.secure_channel(
                    target, grpc.ssl_channel_credentials(other.ca)) as channel:
                refused = await _refused(_health(channel))
                assert refused.code() == grpc.StatusCode.UNAVAILABLE
        finally:
            await running.stop(grace_s=0)
