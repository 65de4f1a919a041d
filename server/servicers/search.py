"""vision.v1.SearchService: Search, and the pure conversions between its messages and the
domain."""

from __future__ import annotations

from typing import Any

import grpc

from server import converters, request_ids, tenants
from server.errors import RequestPaths, unary
from server.pipeline.search import FiltersInput, RangeInput, SearchInput, SearchPage
from server.pipeline.search import SearchPipeline as Pipeline
from server.records import IndexKind
from vision.v1 import search_service_pb2 as search_pb2
from vision.v1 import search_service_pb2_grpc as search_grpc

INDEXES = {
    search_pb2.INDEX_IMAGES: IndexKind.IMAGES,
    search_pb2.INDEX_FACES: IndexKind.FACES,
    search_pb2.INDEX_OBJECTS: IndexKind.OBJECTS,
    search_pb2.INDEX_OCR: IndexKind.OCR,
}
INDEX_ENUMS = {kind: value for value, kind in INDEXES.items()}

Context = grpc.aio.ServicerContext[Any, Any]


class SearchServicer(search_grpc.SearchServiceServicer):
    def __init__(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline

    @unary(lambda request: RequestPaths(image=f"{request.WhichOneof('query') or 'query'}.content",
                                        options=""))
    async def Search(  # noqa: N802 (gRPC method name)
        self, request: search_pb2.SearchRequest, context: Context
    ) -> search_pb2.SearchResponse:
        page = await self._pipeline.search(tenants.current(), search_input(request),
                                           request_ids.current(), context.time_remaining())
        return search_response(page)


def search_input(request: search_pb2.SearchRequest) -> SearchInput:
    which = request.WhichOneof("query")
    filters = request.filters
    given = FiltersInput(
        labels=tuple(filters.labels),
        metadata=dict(filters.metadata),
        ranges=tuple(RangeInput(r.key, r.gte, r.lte, r.numeric) for r in filters.ranges),
        indexes=tuple(INDEXES[i] for i in filters.indexes if i in INDEXES),
        person_ids=tuple(filters.person_ids),
    )
    return SearchInput(
        text=request.text if which == "text" else None,
        image=converters.image_content(request.image) if which == "image" else None,
        face_image=(converters.image_content(request.face_image)
                    if which == "face_image" else None),
        vector=tuple(request.vector.values) if which == "vector" else None,
        vector_index=INDEXES.get(request.vector.index) if which == "vector" else None,
        similar_to_id=request.similar_to_id if which == "similar_to_id" else None,
        filters=given,
        page_size=request.page_size,
        page_token=request.page_token,
        min_score=request.min_score if request.HasField("min_score") else None,
    )


def search_response(page: SearchPage) -> search_pb2.SearchResponse:
    return search_pb2.SearchResponse(
        hits=[search_pb2.SearchHit(
            id=hit.image_id, score=hit.score,
            indexes=[INDEX_ENUMS[kind] for kind in hit.indexes],
            matches=[search_pb2.Match(
                index=INDEX_ENUMS[m.index], position=m.position, text=m.text,
                box=converters.box(m.box) if m.box is not None else None)
                for m in hit.matches])
            for hit in page.hits],
        next_page_token=page.next_page_token,
    )
