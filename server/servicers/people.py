"""vision.v1.PeopleService: ListPeople, GetPerson, UpdatePerson and MergePeople, and the pure
conversions between their messages and the domain."""

from __future__ import annotations

from typing import Any

import grpc

from server import converters, tenants
from server.errors import RequestPaths, unary
from server.pipeline.people import PeoplePipeline
from server.store.base import Person
from vision.v1 import people_service_pb2 as people_pb2
from vision.v1 import people_service_pb2_grpc as people_grpc
from vision.v1 import person_pb2

PATHS = RequestPaths(image="", options="")

Context = grpc.aio.ServicerContext[Any, Any]


class PeopleServicer(people_grpc.PeopleServiceServicer):
    def __init__(self, pipeline: PeoplePipeline) -> None:
        self._pipeline = pipeline

    @unary(PATHS)
    async def ListPeople(  # noqa: N802 (gRPC method name)
        self, request: people_pb2.ListPeopleRequest, context: Context
    ) -> people_pb2.ListPeopleResponse:
        page = await self._pipeline.list(tenants.current(), request.page_size,
                                         request.page_token)
        return people_pb2.ListPeopleResponse(people=[person(p) for p in page.people],
                                             next_page_token=page.next_page_token)

    @unary(PATHS)
    async def GetPerson(  # noqa: N802 (gRPC method name)
        self, request: people_pb2.GetPersonRequest, context: Context
    ) -> people_pb2.GetPersonResponse:
        found = await self._pipeline.get(tenants.current(), request.id)
        return people_pb2.GetPersonResponse(person=person(found))

    @unary(PATHS)
    async def UpdatePerson(  # noqa: N802 (gRPC method name)
        self, request: people_pb2.UpdatePersonRequest, context: Context
    ) -> people_pb2.UpdatePersonResponse:
        renamed = await self._pipeline.rename(tenants.current(), request.person.id,
                                              request.person.name)
        return people_pb2.UpdatePersonResponse(person=person(renamed))

    @unary(PATHS)
    async def MergePeople(  # noqa: N802 (gRPC method name)
        self, request: people_pb2.MergePeopleRequest, context: Context
    ) -> people_pb2.MergePeopleResponse:
        merged = await self._pipeline.merge(tenants.current(), tuple(request.person_ids),
                                            request.target_id)
        return people_pb2.MergePeopleResponse(person=person(merged))


def person(value: Person) -> person_pb2.Person:
    return person_pb2.Person(
        id=value.id, name=value.name, face_count=value.face_count,
        image_count=value.image_count, cover_image_id=value.cover_image_id,
        cover_box=converters.box(value.cover_box) if value.cover_box is not None else None)
