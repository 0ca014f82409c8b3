"""gRPC test helpers: a generic client that knows nothing but what server reflection tells it (as grpcurl
does), and the HTTP -> gRPC status table the hostile-input tests expect."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

# What a REST error status becomes over gRPC.
GRPC_FOR_HTTP = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
}


class ReflectionClient:
    """Blocking, descriptor-less: lists services and calls unary methods with JSON in and out, every
    message type built from the descriptors the server sends. Run it in a thread when the server shares
    the test's event loop."""

    def __init__(self, target: str) -> None:
        self.channel = grpc.insecure_channel(target)
        self.db = ProtoReflectionDescriptorDatabase(self.channel)
        self.pool = descriptor_pool.DescriptorPool(self.db)

    def services(self) -> list[str]:
        return sorted(self.db.get_services())

    def methods(self, service: str) -> list[str]:
        return [m.name for m in self.pool.FindServiceByName(service).methods]

    def call(self, full_method: str, request: dict[str, Any], timeout_s: float = 30.0) -> dict[str, Any]:
        """`package.Service/Method` with a JSON-shaped request -> the JSON-shaped response."""
        service_name, method_name = full_method.split("/")
        method = self.pool.FindServiceByName(service_name).methods_by_name[method_name]
        request_cls = message_factory.GetMessageClass(method.input_type)
        response_cls = message_factory.GetMessageClass(method.output_type)
        call = self.channel.unary_unary(
            f"/{full_method}",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response_cls.FromString,
        )
        response = call(json_format.ParseDict(request, request_cls()), timeout=timeout_s)
        result: dict[str, Any] = json_format.MessageToDict(response, preserving_proto_field_name=True)
        return result

    def close(self) -> None:
        self.channel.close()


def error_code(e: grpc.RpcError) -> str:
    """The server's short error code from the trailing metadata ("" when gRPC itself refused the call)."""
    return next((str(v) for k, v in (e.trailing_metadata() or ()) if k == "rtdetect-error"), "")  # type: ignore[attr-defined]
