"""Domain types shared by the pipeline and the adapters: frozen dataclasses and typed errors.

This is the ground floor: it imports nothing from the project, and nothing here knows gRPC.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class ImageFormat(enum.Enum):
    JPEG = "jpeg"
    PNG = "png"
    WEBP = "webp"
    BMP = "bmp"


@dataclass(frozen=True, slots=True)
class ImageInfo:
    """What the header of an encoded image says, read without decoding it."""

    format: ImageFormat
    width: int
    height: int
    size_bytes: int


@dataclass(frozen=True, slots=True)
class ImageLimits:
    max_bytes: int
    max_pixels: int
    max_jpeg_scans: int = 100
    max_jpeg_scan_pixels: int = 640_000_000


@dataclass(frozen=True, slots=True)
class ModelRef:
    name: str
    version: str = ""


@dataclass(frozen=True, slots=True)
class DetectOptionsInput:
    """Options as the caller gave them: None or empty means 'use the default'."""

    model: ModelRef
    score_threshold: float | None = None
    iou_threshold: float | None = None
    class_allowlist: tuple[str, ...] = ()
    max_detections: int = 0


@dataclass(frozen=True, slots=True)
class DetectOptions:
    """Options resolved against the defaults and validated."""

    model: ModelRef
    score_threshold: float
    iou_threshold: float
    class_allowlist: frozenset[str]
    max_detections: int


@dataclass(frozen=True, slots=True)
class Box:
    """An axis-aligned box; pixels of the original image unless said otherwise."""

    x_min: float
    y_min: float
    x_max: float
    y_max: float

    def normalized(self, width: int, height: int) -> Box:
        return Box(self.x_min / width, self.y_min / height, self.x_max / width, self.y_max / height)


@dataclass(frozen=True, slots=True)
class Detection:
    label: str
    class_id: int
    score: float
    box: Box


@dataclass(frozen=True, slots=True)
class DetectionResult:
    detections: tuple[Detection, ...]
    width: int
    height: int
    model: ModelRef


@dataclass(frozen=True, slots=True)
class Classification:
    label: str
    class_id: int
    score: float


@dataclass(frozen=True, slots=True)
class EmbedOptionsInput:
    """Embedding options as the caller gave them: empty or 0 means 'use the default'."""

    model: ModelRef
    max_classifications: int = 0


@dataclass(frozen=True, slots=True)
class EmbedOptions:
    model: ModelRef
    max_classifications: int


@dataclass(frozen=True, slots=True)
class EmbeddingResult:
    """An image's L2-normalised embedding and its classes, best first."""

    embedding: tuple[float, ...]
    classifications: tuple[Classification, ...]
    width: int
    height: int
    model: ModelRef


@dataclass(frozen=True, slots=True)
class FaceOptionsInput:
    model: ModelRef
    score_threshold: float | None = None
    include_embeddings: bool = False
    max_faces: int = 0


@dataclass(frozen=True, slots=True)
class FaceOptions:
    model: ModelRef
    score_threshold: float
    include_embeddings: bool
    max_faces: int


@dataclass(frozen=True, slots=True)
class Point:
    x: float
    y: float


@dataclass(frozen=True, slots=True)
class Face:
    box: Box
    score: float
    landmarks: tuple[Point, ...]  # right eye, left eye, nose tip, right and left mouth corner
    embedding: tuple[float, ...] | None  # L2-normalised, when asked for


@dataclass(frozen=True, slots=True)
class FacesResult:
    faces: tuple[Face, ...]
    width: int
    height: int
    model: ModelRef


@dataclass(frozen=True, slots=True)
class OcrOptionsInput:
    model: ModelRef


@dataclass(frozen=True, slots=True)
class OcrOptions:
    model: ModelRef


@dataclass(frozen=True, slots=True)
class TextLine:
    text: str
    confidence: float
    polygon: tuple[Point, Point, Point, Point]  # clockwise from the text's top-left corner

    @property
    def box(self) -> Box:
        xs = [p.x for p in self.polygon]
        ys = [p.y for p in self.polygon]
        return Box(min(xs), min(ys), max(xs), max(ys))


@dataclass(frozen=True, slots=True)
class OcrResult:
    lines: tuple[TextLine, ...]  # reading order
    width: int
    height: int
    model: ModelRef

    @property
    def text(self) -> str:
        return "\n".join(line.text for line in self.lines)


class Task(enum.Enum):
    DETECTION = "detection"
    EMBEDDING = "embedding"
    FACES = "faces"
    OCR = "ocr"


@dataclass(frozen=True, slots=True)
class ModelVersion:
    version: str
    ready: bool


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """A served model as Triton's repository index and model configuration describe it."""

    name: str
    task: Task
    versions: tuple[ModelVersion, ...]  # newest first
    output_dimension: int
    platform: str

    @property
    def ready(self) -> bool:
        return any(v.ready for v in self.versions)


class Input(enum.Enum):
    """The input of a pipeline that a field path is relative to. Pipelines and adapters name
    fields relative to their own inputs; the servicer knows where each input sits in its request
    (`image.content` in a unary call, `chunk.data` in a stream) and prefixes the path."""

    IMAGE = "image"  # the encoded image bytes themselves
    OPTIONS = "options"  # the task's options message
    REQUEST = "request"  # the request message itself (paths are already absolute)


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """A bad field: `path` is relative to `input` ("" = the input itself), e.g. OPTIONS +
    "iou_threshold"."""

    input: Input
    path: str
    description: str


class VisionError(Exception):
    """Base of the errors the pipeline and adapters raise; errors.py maps each to a status.

    `message` is safe to show a caller; it never names a field path, because the path depends on
    the request's shape (the status's BadRequest detail carries the paths)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason


class InvalidArgumentError(VisionError):
    def __init__(self, reason: str, violations: tuple[FieldViolation, ...]) -> None:
        super().__init__("; ".join(v.description for v in violations), reason)
        self.violations = violations

    @classmethod
    def one(cls, reason: str, input: Input, path: str, description: str) -> InvalidArgumentError:
        return cls(reason, (FieldViolation(input, path, description),))


class ModelNotFoundError(VisionError):
    """A model (or version) the service does not serve; `path` is relative to the options."""

    def __init__(self, model: ModelRef, path: str) -> None:
        what = f"model {_clipped(model.name)!r}" + (
            f" version {_clipped(model.version)!r}" if model.version else "")
        super().__init__(f"{what} is not served here", "MODEL_NOT_FOUND")
        self.model = model
        self.path = path


class BackendUnavailableError(VisionError):
    """The inference backend cannot be reached or is not ready; the caller may retry."""

    def __init__(self, retry_after_s: float = 1.0) -> None:
        super().__init__("the inference backend is unavailable; retry later", "BACKEND_UNAVAILABLE")
        self.retry_after_s = retry_after_s


class NotFoundError(VisionError):
    """A resource the caller named does not exist (for this caller); `path` is relative to the
    request."""

    def __init__(self, resource_type: str, name: str, path: str) -> None:
        super().__init__(f"{resource_type} {_clipped(name)!r} was not found", "NOT_FOUND")
        self.resource_type = resource_type
        self.name = name
        self.path = path


class StoreError(VisionError):
    """The store failed in a way the caller cannot fix; `detail` goes to the log only."""

    def __init__(self, detail: str) -> None:
        super().__init__("the vector store failed", "STORE_ERROR")
        self.detail = detail


class StoreUnavailableError(VisionError):
    """The store cannot be reached now; the caller may retry."""

    def __init__(self, detail: str, retry_after_s: float = 1.0) -> None:
        super().__init__("the vector store is unavailable; retry later", "STORE_UNAVAILABLE")
        self.detail = detail
        self.retry_after_s = retry_after_s


class ResourceExhaustedError(VisionError):
    """The service (or the backend's queue) is full; the caller may retry after retry_after_s.
    `reason` says which bound: OVERLOADED (the server's admission), BACKEND_QUEUE_FULL (Triton's
    queue policy) or STREAM_BUFFER_FULL."""

    def __init__(self, reason: str = "OVERLOADED", retry_after_s: float = 0.5) -> None:
        super().__init__("the service is at capacity; retry later", reason)
        self.retry_after_s = retry_after_s


class FailedPreconditionError(VisionError):
    """The call cannot work with the service as configured (e.g. no text-embedding model)."""


class DeadlineExceededError(VisionError):
    def __init__(self, message: str = "the deadline passed before inference finished",
                 reason: str = "DEADLINE_EXCEEDED") -> None:
        super().__init__(message, reason)


class BackendError(VisionError):
    """The backend failed in a way the caller cannot fix; details go to the log, not the caller."""

    def __init__(self, detail: str) -> None:
        super().__init__("inference failed", "BACKEND_ERROR")
        self.detail = detail


MAX_ECHOED_CHARS = 64


def _clipped(value: str) -> str:
    """A caller's value as echoed in a message: long values are cut so that an error always fits
    in gRPC's metadata limit."""
    return value if len(value) <= MAX_ECHOED_CHARS else value[:MAX_ECHOED_CHARS] + "…"
