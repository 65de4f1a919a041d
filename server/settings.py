"""The service's one typed settings object, read from the environment (VISION_ prefix, nested
with `__`, e.g. VISION_TRITON__URL) and from command-line flags, which take precedence.

pydantic-settings is used because it gives typed, validated, nested settings from both sources
with one declaration, the shape Immich and MLServer use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import (
    BaseSettings,
    CliImplicitFlag,
    CliSettingsSource,
    SettingsConfigDict,
)

from server.domain import ImageLimits


class TritonSettings(BaseModel):
    url: str = Field("127.0.0.1:4601", description="Triton's gRPC endpoint, host:port.")
    timeout_s: float = Field(
        30.0, gt=0, description="Per-call timeout when the caller sets no deadline, seconds."
    )
    health_poll_interval_s: float = Field(
        2.0, gt=0, description="How often readiness of Triton and its models is checked, seconds."
    )


class LimitsSettings(BaseModel):
    max_image_bytes: int = Field(32 << 20, gt=0, description="Largest encoded image, bytes.")
    max_image_pixels: int = Field(
        40_000_000, gt=0, description="Largest image by width x height from its header."
    )
    max_stream_in_flight: int = Field(
        8, gt=0, description="Images of one upload stream under inference at once (backpressure)."
    )

    def image_limits(self) -> ImageLimits:
        return ImageLimits(max_bytes=self.max_image_bytes, max_pixels=self.max_image_pixels)


class TaskSettings(BaseModel):
    """The models of one task (detection, embedding, ...): one block per task, same shape."""

    default_model: str = Field(description="Model used when a call names none.")
    models: list[str] = Field(
        default_factory=list,
        description="Triton models callers may name for this task; the default is always one.",
    )

    @model_validator(mode="after")
    def _default_is_served(self) -> TaskSettings:
        if self.default_model not in self.models:
            self.models = [self.default_model, *self.models]
        return self


class DetectionSettings(TaskSettings):
    default_model: str = Field("yolox_nano", description="Detector used when a call names none.")
    default_score_threshold: float = Field(0.25, ge=0, le=1)
    default_iou_threshold: float = Field(0.45, ge=0, le=1)
    default_max_detections: int = Field(100, gt=0, le=1000)


class EmbeddingSettings(TaskSettings):
    default_model: str = Field("mobilenet_v2", description="Image embedding model by default.")
    output_dimension: int = Field(
        1280, gt=0, description="Embedding size of every allowed model (one vector space).")
    default_max_classifications: int = Field(5, gt=0, le=1000)


class FaceSettings(TaskSettings):
    default_model: str = Field("yunet_mobilefacenet", description="Face model by default.")
    output_dimension: int = Field(
        128, gt=0, description="Identity embedding size of every allowed model.")
    default_score_threshold: float = Field(0.6, ge=0, le=1)
    default_max_faces: int = Field(100, gt=0, le=1000)


class OcrSettings(TaskSettings):
    default_model: str = Field("ppocr_v6", description="OCR model by default.")


class AuthSettings(BaseModel):
    key_file: Path | None = Field(
        None, description="API key file (TOML or JSON, see server/auth.py); none = open server.")
    reload_interval_s: float = Field(
        1.0, gt=0, le=1.0, description="How often the key file is checked for changes, seconds.")
    open_health: bool = Field(True, description="grpc.health.v1 answers without a key.")
    open_reflection: bool = Field(True, description="Reflection answers without a key.")


class TlsSettings(BaseModel):
    cert_file: Path | None = Field(None, description="Server certificate chain (PEM); TLS on.")
    key_file: Path | None = Field(None, description="Server private key (PEM).")
    client_ca_file: Path | None = Field(
        None, description="CA (PEM) that client certificates must chain to (mTLS).")
    require_client_cert: bool = Field(
        True, description="With client_ca_file: refuse callers without a valid certificate.")

    @model_validator(mode="after")
    def _pairs(self) -> TlsSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("tls.cert_file and tls.key_file go together")
        if self.client_ca_file is not None and self.cert_file is None:
            raise ValueError("tls.client_ca_file needs tls.cert_file and tls.key_file")
        return self


class StoreSettings(BaseModel):
    """Where ingested images are stored (server/store). The embedded store is one directory
    owned by one server process; several processes share an OpenSearch cluster instead."""

    backend: Literal["embedded", "opensearch"] = Field(
        "embedded", description="embedded (a directory, no server) or opensearch.")
    path: str = Field("var/store", description="The embedded store's directory.")
    url: str = Field("http://127.0.0.1:4607", description="OpenSearch's URL.")
    index_prefix: str = Field("vision", description="Prefix of the OpenSearch index aliases.")
    username: str | None = Field(None, description="OpenSearch basic-auth user, if any.")
    password: str | None = Field(None, description="OpenSearch basic-auth password, if any.")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="VISION_", env_nested_delimiter="__", cli_kebab_case=True, extra="ignore"
    )

    host: str = Field("127.0.0.1", description="Address the gRPC server binds to.")
    port: int = Field(4603, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    grace_period_s: float = Field(
        10.0, ge=0, description="On SIGTERM, how long in-flight calls may finish, seconds."
    )
    log_level: str = Field("INFO", description="Python logging level.")
    log_format: Literal["text", "json"] = Field(
        "text", description="Log lines as text or as one JSON object each.")
    metrics_port: int = Field(
        4604, ge=0, le=65535, description="Prometheus /metrics port; 0 picks a free one.")
    metrics_host: str | None = Field(None, description="Address of /metrics; default: host.")
    triton_stats_interval_s: float = Field(
        5.0, gt=0, description="How often Triton's per-model statistics are read, seconds.")
    allow_insecure_public: CliImplicitFlag[bool] = Field(
        False, description="Allow a non-loopback host with neither API keys nor TLS.")
    auth: AuthSettings = Field(default_factory=AuthSettings)
    tls: TlsSettings = Field(default_factory=TlsSettings)
    triton: TritonSettings = Field(default_factory=TritonSettings)
    limits: LimitsSettings = Field(default_factory=LimitsSettings)
    detection: DetectionSettings = Field(default_factory=DetectionSettings)
    embedding: EmbeddingSettings = Field(default_factory=EmbeddingSettings)
    faces: FaceSettings = Field(default_factory=FaceSettings)
    ocr: OcrSettings = Field(default_factory=OcrSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)


def load_settings(argv: list[str] | None = None) -> Settings:
    """Settings from the environment, overridden by flags such as `--port` or `--triton.url`."""
    args: list[str] | bool = argv if argv is not None else True
    cli: CliSettingsSource[Settings] = CliSettingsSource(
        Settings, cli_parse_args=args, cli_prog_name="vision-grpc"
    )
    return Settings(_cli_settings_source=cli(args=args))
