"""The service registry: each vision.v1 service declares once its servicer (wired to its
pipeline and adapter), how it is added to a server, its full name, the models it needs and the
tensors its adapter expects of them. Reflection, health and the start-up model checks are all
derived from this list, so adding a service means adding an entry here.

Each task (detection, embedding, faces, OCR) is one TaskEntry in TASKS: its settings block,
pipeline factory, adapter tensors, analysis key and analysis conversions. Its own service, its
place in AnalyzeImage, the analysis and ingest services' models and the model catalog are all
derived from that entry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message
from google.rpc import status_pb2

from server.domain import Task
from server.pipeline.analysis import (
    AnalysisKey,
    AnalysisPipeline,
    AnalysisStep,
    ImageResult,
    TaskPipeline,
)
from server.pipeline.catalog import CatalogPipeline
from server.pipeline.detection import OBJECTS, DetectionConfig, DetectionPipeline
from server.pipeline.embedding import EMBEDDING, EmbeddingConfig, EmbeddingPipeline
from server.pipeline.faces import FACES, FacesConfig, FacesPipeline
from server.pipeline.ingest import STORED_ANALYSES, IngestConfig, IngestPipeline
from server.pipeline.ocr import TEXT, OcrConfig, OcrPipeline
from server.pipeline.options import ModelChoice
from server.pipeline.people import PeoplePipeline
from server.pipeline.search import SearchPipeline
from server.servicers.analysis import AnalysisConversion, AnalysisServicer
from server.servicers.detection import DetectionServicer, detection_options, objects_analysis
from server.servicers.embedding import EmbeddingServicer, embedding_analysis, embedding_options
from server.servicers.faces import FaceServicer, face_options, faces_analysis
from server.servicers.ingest import IngestServicer
from server.servicers.models import ModelServicer
from server.servicers.ocr import OcrServicer, ocr_options, text_analysis
from server.servicers.people import PeopleServicer
from server.servicers.search import SearchServicer
from server.servicers.streams import StreamLimits, UploadBudget
from server.settings import Settings, TaskSettings
from server.store import Space, VectorStore
from server.triton import detection as triton_detection
from server.triton import embedding as triton_embedding
from server.triton import faces as triton_faces
from server.triton import ocr as triton_ocr
from server.triton.calls import Inference, TritonCalls
from server.triton.catalog import TritonCatalog
from server.triton.tensors import ModelTensors
from vision.v1 import (
    analysis_service_pb2,
    analysis_service_pb2_grpc,
    detection_service_pb2,
    detection_service_pb2_grpc,
    embedding_service_pb2,
    embedding_service_pb2_grpc,
    face_service_pb2,
    face_service_pb2_grpc,
    ingest_service_pb2,
    ingest_service_pb2_grpc,
    model_service_pb2,
    model_service_pb2_grpc,
    ocr_service_pb2,
    ocr_service_pb2_grpc,
    people_service_pb2,
    people_service_pb2_grpc,
    search_service_pb2,
    search_service_pb2_grpc,
)

CATALOG_TIMEOUT_S = 5.0
G = TypeVar("G")
R = TypeVar("R", bound=ImageResult)


@dataclass(frozen=True, slots=True)
class Resources:
    """What servicers are built from; owned and closed by server.app."""

    settings: Settings
    triton: TritonCalls
    store: VectorStore
    upload_budget: UploadBudget  # shared by every upload stream of the process
    detection_calls: Inference  # triton, or its aggregator when aggregation is enabled


@dataclass(frozen=True, slots=True)
class Service:
    descriptor: ServiceDescriptor
    # Called with an InterceptedServer; the generated stubs type it as the grpc server it
    # stands in for, hence Any.
    add_to_server: Callable[[Any, Any], None]
    build: Callable[[Resources], object]
    models: Callable[[Settings], list[str]]
    # What the service's adapter expects of each of `models`; None for services that only
    # reuse other services' models or none at all.
    tensors: Callable[[Settings], ModelTensors] | None

    @property
    def name(self) -> str:
        name: str = self.descriptor.full_name
        return name


@dataclass(frozen=True, slots=True)
class TaskEntry(Generic[G, R]):
    """One task, declared once. Its key types the rest: the pipeline takes the key's options
    and gives its result, and the conversions read and write the key's analysis fields."""

    task: Task
    task_enum: model_service_pb2.Task.ValueType  # its value in ListModels and Model.task
    settings: Callable[[Settings], TaskSettings]
    pipeline: Callable[[Resources], TaskPipeline[G, Any, R]]
    tensors: Callable[[Settings], ModelTensors]
    key: AnalysisKey[G, R]
    # The AnalysisOptions field's message to the task's options as given.
    options: Callable[[Any], G]
    # The ImageAnalysis field's message from the task's status and result.
    message: Callable[[status_pb2.Status, R | None], Message]
    # The task's own service.
    descriptor: ServiceDescriptor
    add_to_server: Callable[[Any, Any], None]
    servicer: Callable[[Resources], object]

    def service(self) -> Service:
        return Service(descriptor=self.descriptor, add_to_server=self.add_to_server,
                       build=self.servicer,
                       models=lambda settings: list(self.settings(settings).models),
                       tensors=self.tensors)

    def step(self, resources: Resources) -> AnalysisStep[G, Any, R]:
        return AnalysisStep(self.key, self.pipeline(resources))

    def conversion(self) -> AnalysisConversion[G, R]:
        return AnalysisConversion(self.key, self.options, self.message)


def _choice(task: TaskSettings) -> ModelChoice:
    return ModelChoice(frozenset(task.models), task.default_model)


def _detection_pipeline(resources: Resources) -> DetectionPipeline:
    settings = resources.settings
    task = settings.detection
    return DetectionPipeline(
        triton_detection.TritonDetector(resources.detection_calls),
        DetectionConfig(
            models=_choice(task),
            default_score_threshold=task.default_score_threshold,
            default_iou_threshold=task.default_iou_threshold,
            default_max_detections=task.default_max_detections,
            limits=settings.limits.image_limits(),
        ),
    )


def _embedding_pipeline(resources: Resources) -> EmbeddingPipeline:
    settings = resources.settings
    task = settings.embedding
    return EmbeddingPipeline(
        triton_embedding.TritonEmbedder(resources.triton, task.output_dimension),
        EmbeddingConfig(models=_choice(task),
                        default_max_classifications=task.default_max_classifications,
                        limits=settings.limits.image_limits()),
    )


def _faces_pipeline(resources: Resources) -> FacesPipeline:
    settings = resources.settings
    task = settings.faces
    return FacesPipeline(
        triton_faces.TritonFaceDetector(resources.triton, task.output_dimension),
        FacesConfig(models=_choice(task), default_score_threshold=task.default_score_threshold,
                    default_max_faces=task.default_max_faces,
                    limits=settings.limits.image_limits()),
    )


def _ocr_pipeline(resources: Resources) -> OcrPipeline:
    settings = resources.settings
    return OcrPipeline(triton_ocr.TritonTextReader(resources.triton),
                       OcrConfig(models=_choice(settings.ocr),
                                 limits=settings.limits.image_limits()))


def _stream_limits(resources: Resources) -> StreamLimits:
    limits = resources.settings.limits
    return StreamLimits(
        max_image_bytes=limits.max_image_bytes, max_in_flight=limits.max_stream_in_flight,
        idle_timeout_s=limits.stream_idle_timeout_s,
        max_protocol_errors=limits.max_stream_protocol_errors, budget=resources.upload_budget)


def _analysis_pipeline(resources: Resources) -> AnalysisPipeline:
    return AnalysisPipeline([task.step(resources) for task in TASKS],
                            resources.settings.limits.image_limits())


def _analysis(resources: Resources) -> AnalysisServicer:
    return AnalysisServicer(_analysis_pipeline(resources), _stream_limits(resources),
                            [task.conversion() for task in TASKS])


def _ingest(resources: Resources) -> IngestServicer:
    settings = resources.settings
    config = IngestConfig(near_duplicate_cosine=settings.ingest.near_duplicate_cosine,
                          match_cosine=settings.people.match_cosine)
    return IngestServicer(IngestPipeline(_analysis_pipeline(resources), resources.store, config),
                          _stream_limits(resources))


def _search(resources: Resources) -> SearchServicer:
    settings = resources.settings
    dims = {Space.IMAGES: settings.embedding.output_dimension,
            Space.FACES: settings.faces.output_dimension}
    return SearchServicer(SearchPipeline(_embedding_pipeline(resources),
                                         _faces_pipeline(resources), resources.store, dims))


def _every_default_model(settings: Settings) -> list[str]:
    return [task.settings(settings).default_model for task in TASKS]


def _stored_default_models(settings: Settings) -> list[str]:
    """The default model of each analysis that ingest stores."""
    return [task.settings(settings).default_model for task in TASKS
            if STORED_ANALYSES.asks(task.key)]


def _models(resources: Resources) -> ModelServicer:
    settings = resources.settings
    choices = {task.task: _choice(task.settings(settings)) for task in TASKS}
    return ModelServicer(
        CatalogPipeline(TritonCatalog(resources.triton, CATALOG_TIMEOUT_S), choices),
        settings.limits.image_limits(), {task.task: task.task_enum for task in TASKS})


TASKS = (
    TaskEntry(
        task=Task.DETECTION, task_enum=model_service_pb2.TASK_DETECTION,
        settings=lambda settings: settings.detection,
        pipeline=_detection_pipeline,
        tensors=lambda settings: triton_detection.TENSORS,
        key=OBJECTS, options=detection_options, message=objects_analysis,
        descriptor=detection_service_pb2.DESCRIPTOR.services_by_name["DetectionService"],
        add_to_server=detection_service_pb2_grpc.add_DetectionServiceServicer_to_server,
        servicer=lambda resources: DetectionServicer(_detection_pipeline(resources),
                                                     _stream_limits(resources)),
    ),
    TaskEntry(
        task=Task.EMBEDDING, task_enum=model_service_pb2.TASK_EMBEDDING,
        settings=lambda settings: settings.embedding,
        pipeline=_embedding_pipeline,
        tensors=lambda settings: triton_embedding.tensors(settings.embedding.output_dimension),
        key=EMBEDDING, options=embedding_options, message=embedding_analysis,
        descriptor=embedding_service_pb2.DESCRIPTOR.services_by_name["EmbeddingService"],
        add_to_server=embedding_service_pb2_grpc.add_EmbeddingServiceServicer_to_server,
        servicer=lambda resources: EmbeddingServicer(_embedding_pipeline(resources)),
    ),
    TaskEntry(
        task=Task.FACES, task_enum=model_service_pb2.TASK_FACES,
        settings=lambda settings: settings.faces,
        pipeline=_faces_pipeline,
        tensors=lambda settings: triton_faces.tensors(settings.faces.output_dimension),
        key=FACES, options=face_options, message=faces_analysis,
        descriptor=face_service_pb2.DESCRIPTOR.services_by_name["FaceService"],
        add_to_server=face_service_pb2_grpc.add_FaceServiceServicer_to_server,
        servicer=lambda resources: FaceServicer(_faces_pipeline(resources)),
    ),
    TaskEntry(
        task=Task.OCR, task_enum=model_service_pb2.TASK_OCR,
        settings=lambda settings: settings.ocr,
        pipeline=_ocr_pipeline,
        tensors=lambda settings: triton_ocr.TENSORS,
        key=TEXT, options=ocr_options, message=text_analysis,
        descriptor=ocr_service_pb2.DESCRIPTOR.services_by_name["OcrService"],
        add_to_server=ocr_service_pb2_grpc.add_OcrServiceServicer_to_server,
        servicer=lambda resources: OcrServicer(_ocr_pipeline(resources)),
    ),
)

SERVICES: tuple[Service, ...] = (
    *(task.service() for task in TASKS),
    Service(
        descriptor=analysis_service_pb2.DESCRIPTOR.services_by_name["AnalysisService"],
        add_to_server=analysis_service_pb2_grpc.add_AnalysisServiceServicer_to_server,
        build=_analysis,
        models=_every_default_model,
        tensors=None,
    ),
    Service(
        descriptor=ingest_service_pb2.DESCRIPTOR.services_by_name["IngestService"],
        add_to_server=ingest_service_pb2_grpc.add_IngestServiceServicer_to_server,
        build=_ingest,
        models=_stored_default_models,
        tensors=None,
    ),
    Service(
        descriptor=search_service_pb2.DESCRIPTOR.services_by_name["SearchService"],
        add_to_server=search_service_pb2_grpc.add_SearchServiceServicer_to_server,
        build=_search,
        models=lambda settings: [settings.embedding.default_model,
                                 settings.faces.default_model],
        tensors=None,
    ),
    Service(
        descriptor=people_service_pb2.DESCRIPTOR.services_by_name["PeopleService"],
        add_to_server=people_service_pb2_grpc.add_PeopleServiceServicer_to_server,
        build=lambda resources: PeopleServicer(PeoplePipeline(resources.store)),
        models=lambda settings: [],
        tensors=None,
    ),
    Service(
        descriptor=model_service_pb2.DESCRIPTOR.services_by_name["ModelService"],
        add_to_server=model_service_pb2_grpc.add_ModelServiceServicer_to_server,
        build=_models,
        models=lambda settings: [],
        tensors=None,
    ),
)
