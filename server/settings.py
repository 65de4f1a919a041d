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

    max_upload_buffer_bytes: int = Field(
        256 << 20, gt=0, description="Memory for images being uploaded or sent to Triton across "
        "all streams of the process (an image counts 5x its size: the copies it takes on its "
        "way); when full, stream readers wait (HTTP/2 flow control slows the senders).")
    stream_idle_timeout_s: float = Field(
        30.0, gt=0, description="An upload stream with no message for this long ends with "
        "DEADLINE_EXCEEDED (reason STREAM_IDLE); its open image fails.")
    max_stream_protocol_errors: int = Field(
        16, gt=0, description="Protocol mistakes one stream may make before it is ended with "
        "INVALID_ARGUMENT (reason TOO_MANY_PROTOCOL_ERRORS).")
    max_jpeg_scans: int = Field(
        100, gt=0, description="Most scans a JPEG may have (a progressive JPEG has ~10); more "
        "is refused as IMAGE_TOO_COMPLEX before any decoding.")
    max_jpeg_scan_pixels: int = Field(
        640_000_000, gt=0, description="Largest width x height x scans of a progressive JPEG "
        "(decode cost grows with each); libjpeg's 10-scan default at 40 MP fits, IMAGE_TOO_COMPLEX "
        "beyond.")

    def image_limits(self) -> ImageLimits:
        return ImageLimits(max_bytes=self.max_image_bytes, max_pixels=self.max_image_pixels,
                           max_jpeg_scans=self.max_jpeg_scans,
                           max_jpeg_scan_pixels=self.max_jpeg_scan_pixels)


class AdmissionSettings(BaseModel):
    """Load shedding per process (server/interceptors/admission.py). The defaults suit 2 cores
    and one CPU Triton: about 8 images keep both cores busy, a few more wait briefly."""

    max_in_flight: int = Field(
        16, gt=0, description="Calls being served at once; the rest wait or are refused.")
    max_streams: int = Field(
        128, gt=0, description="Streaming calls (uploads) open at once, counted apart from "
        "max_in_flight: a stream lives long and its memory is bounded by the upload budget.")
    max_waiting: int = Field(
        32, ge=0, description="Calls waiting for a slot beyond their connection's fair share "
        "(max_fair_wait_s); beyond this RESOURCE_EXHAUSTED at once.")
    max_wait_s: float = Field(
        0.02, ge=0, description="Longest wait for a slot before RESOURCE_EXHAUSTED, seconds.")
    max_fair_wait_s: float = Field(
        1.0, ge=0, description="Longest wait for a slot of a call whose peer holds less than "
        "its fair share (max_in_flight split between the peers that hold or want a slot); such "
        "a call gets the next slot ahead of calls over their share.")
    peer_share: float = Field(
        0.75, gt=0, le=1, description="Share of max_in_flight one peer (connection) may hold, "
        "so a heavy caller cannot starve a light one.")
    min_deadline_s: float = Field(
        0.05, ge=0, description="Calls with less time left than this are refused with "
        "DEADLINE_EXCEEDED before any work.")
    retry_after_s: float = Field(
        0.5, gt=0, description="RetryInfo delay sent with RESOURCE_EXHAUSTED, seconds.")
    pace_after: int = Field(
        16, ge=0, description="Refusals one connection gets at once within retry_after_s; its "
        "further refusals in that time are sent when it ends (callers that ignore RetryInfo are "
        "paced instead of refused as fast as the CPU allows). A connection shared by many "
        "callers that honour RetryInfo may see some refusals late: raise it, or 0 for none.")


class BreakerSettings(BaseModel):
    """The circuit breaker on the Triton channel (server/triton/breaker.py)."""

    failure_threshold: int = Field(
        5, gt=0, description="Consecutive backend failures (UNAVAILABLE, INTERNAL) that open it.")
    reset_after_s: float = Field(
        2.0, gt=0, description="How long it stays open before one probe call is let through.")


class AggregationSettings(BaseModel):
    """Request aggregation for detection (server/triton/aggregation.py): concurrent calls for
    one model go to Triton as one request. On by default: it never cost throughput in the
    bench and saves the gateway CPU where the model is cheap (bench/REPORT.md, the rule)."""

    enabled: bool = Field(True, description="Aggregate concurrent detection calls.")
    max_batch: int = Field(32, gt=0, le=32, description="Most images in one aggregated request "
                           "(the models' max_batch_size is 32).")
    max_delay_s: float = Field(
        0.01, ge=0, description="Longest a call waits for others once batches are at Triton.")
    max_batches_in_flight: int | None = Field(
        None, gt=0, description="Batches per model at Triton at once before calls wait to be "
        "batched; below it a call goes at once. Default: the model's instance count in Triton.")
    max_call_bytes: int = Field(
        1 << 20, gt=0, description="A call whose image is larger goes to Triton alone: its "
        "decode outweighs the call's overhead, and batches of large images (uploads) would hold "
        "memory beyond the upload budget.")


class ConnectionSettings(BaseModel):
    """HTTP/2 connection limits of the gRPC server (grpc.aio.server options)."""

    max_receive_message_bytes: int = Field(
        (4 << 20) + (64 << 10), gt=0, description="Largest request message: a 4 MiB image plus "
        "64 KiB for the rest of the request; larger images go through the upload streams.")
    max_concurrent_streams: int = Field(
        1024, gt=0, description="Concurrent calls per HTTP/2 connection; beyond it a call waits "
        "in the caller's own gRPC library, and one opened as another ends may be refused "
        "(RST_STREAM: UNAVAILABLE, no RetryInfo). Admission answers overload below it; 4 or 16 "
        "did not raise goodput under a retry storm (bench/report/overload.md).")
    keepalive_time_s: float = Field(
        60.0, gt=0, description="Server pings an idle connection this often, seconds.")
    keepalive_timeout_s: float = Field(
        20.0, gt=0, description="A ping unanswered this long closes the connection, seconds.")
    min_client_ping_interval_s: float = Field(
        10.0, gt=0, description="Clients pinging more often than this are sent GOAWAY.")
    max_connection_idle_s: float = Field(
        300.0, gt=0, description="A connection with no calls for this long is closed.")
    max_connection_age_s: float = Field(
        1800.0, gt=0, description="Connections are recycled after this long (rebalancing).")
    max_connection_age_grace_s: float = Field(
        30.0, ge=0, description="Calls on a recycled connection get this long to finish.")
    http2_bdp_probe: bool = Field(
        False, description="Let gRPC grow each stream's HTTP/2 receive window from bandwidth-"
        "delay probes (up to megabytes per stream). Off, a stream's window stays at 64 KiB "
        "beyond the message the server is reading, so data the server has not asked for (an "
        "upload waiting for the upload budget) stays with the sender: 100 unread 10 MB "
        "uploads cost the server ~0.8 GB with it on, ~40 MB off (bench/overload.py). Turn it "
        "on only for high-latency links where throughput matters more than that bound.")


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


class IngestSettings(BaseModel):
    """What ingest decides beyond analysing the image (server/pipeline/ingest.py)."""

    near_duplicate_cosine: float = Field(
        0.92, ge=-1, le=1, description="An ingested image whose image embedding has at least "
        "this cosine similarity with a stored image's is reported as its duplicate "
        "(`duplicate_of`); same bytes always are. Calibrated on re-encodes and resizes versus "
        "distinct photos of one scene (bench/similarity.py, README).")


class PeopleSettings(BaseModel):
    """How faces group into people at ingest (server/pipeline/people.py)."""

    match_cosine: float = Field(
        0.55, ge=-1, le=1, description="A stored face joins the person of its nearest stored "
        "face when their identity-embedding cosine similarity reaches this; otherwise it starts "
        "a new person. Calibrated on same versus different people (bench/similarity.py, "
        "README).")


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
    """Where ingested images are stored (server/store; `open_store` takes this object). The
    embedded store is one directory, which the processes of `--workers N` share (SQLite takes
    every process's writes); several servers on several machines share an OpenSearch cluster."""

    backend: Literal["embedded", "opensearch"] = Field(
        "embedded", description="embedded (a directory, no server) or opensearch.")
    path: Path = Field(Path("var/store"), description="The embedded store's directory.")
    url: str = Field("http://127.0.0.1:4607", description="OpenSearch's URL.")
    index_prefix: str = Field("vision", description="Prefix of the OpenSearch index aliases.")
    username: str | None = Field(None, description="OpenSearch basic-auth user, if any.")
    password: str | None = Field(None, description="OpenSearch basic-auth password, if any.")
    verify_certs: bool = Field(True, description="Check OpenSearch's TLS certificate.")
    timeout_s: float = Field(10.0, gt=0, description="Per-request timeout to OpenSearch, seconds.")
    ef_search: int = Field(
        1000, ge=1, le=10_000, description="OpenSearch k-NN's method_parameters.ef_search: the "
        "candidates Lucene's HNSW search keeps, at least k (1 000 on every page of a search); "
        "higher finds more of the true nearest neighbours, slower.")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="VISION_", env_nested_delimiter="__", cli_kebab_case=True, extra="ignore"
    )

    host: str = Field("127.0.0.1", description="Address the gRPC server binds to.")
    port: int = Field(4603, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    workers: int = Field(
        1, ge=1, description="Server processes sharing the port (SO_REUSEPORT), each with its "
        "own event loop and Triton client, under one supervisor (server/supervisor.py); 1 runs "
        "the server in this process.")
    grace_period_s: float = Field(
        10.0, ge=0, description="On SIGTERM, how long in-flight calls may finish, seconds."
    )
    drain_delay_s: float = Field(
        2.0, ge=0, description="On SIGTERM, how long health says NOT_SERVING before the "
        "listener stops accepting, so load balancers see it first, seconds.")
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
    admission: AdmissionSettings = Field(default_factory=AdmissionSettings)
    breaker: BreakerSettings = Field(default_factory=BreakerSettings)
    aggregation: AggregationSettings = Field(default_factory=AggregationSettings)
    connection: ConnectionSettings = Field(default_factory=ConnectionSettings)
    triton: TritonSettings = Field(default_factory=TritonSettings)
    limits: LimitsSettings = Field(default_factory=LimitsSettings)
    detection: DetectionSettings = Field(default_factory=DetectionSettings)
    embedding: EmbeddingSettings = Field(default_factory=EmbeddingSettings)
    faces: FaceSettings = Field(default_factory=FaceSettings)
    ocr: OcrSettings = Field(default_factory=OcrSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    people: PeopleSettings = Field(default_factory=PeopleSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)


def load_settings(argv: list[str] | None = None) -> Settings:
    """Settings from the environment, overridden by flags such as `--port` or `--triton.url`."""
    args: list[str] | bool = argv if argv is not None else True
    cli: CliSettingsSource[Settings] = CliSettingsSource(
        Settings, cli_parse_args=args, cli_prog_name="vision-grpc"
    )
    return Settings(_cli_settings_source=cli(args=args))
