"""Server reflection under both names clients look for: `grpc.reflection.v1alpha` (the servicer of
grpcio-reflection) and `grpc.reflection.v1` (buf curl, newer grpcurl, Postman). The two protocols
are the same messages under another package, so the one servicer answers both."""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from server.interceptors.wrapping import HandlerRegistry

V1_SERVICE_NAME = "grpc.reflection.v1.ServerReflection"


def enable_reflection(service_names: Iterable[str], server: HandlerRegistry) -> None:
    """Registers reflection of service_names (plus both reflection services) on server."""
    names = (*service_names, reflection.SERVICE_NAME, V1_SERVICE_NAME)
    servicer = reflection.aio.ReflectionServicer(names)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    # Wire-identical messages: v1alpha's (de)serializers read and write v1's bytes unchanged.
    v1 = grpc.method_handlers_generic_handler(V1_SERVICE_NAME, {
        "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo,
            request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
            response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString),
    })
    server.add_generic_rpc_handlers((v1,))
