"""Server reflection that also resolves method symbols, for ghz and grpcurl.

ghz asks reflection for the file containing a *method* symbol
(``recsys.v1.Gateway/Recommend`` -> ``recsys.v1.Gateway.Recommend``). The stock
``grpcio-reflection`` looks the name up with
``DescriptorPool.FindFileContainingSymbol``, which with protobuf's upb backend
knows messages, enums and services but not methods, so it answers
"Symbol not found". We fall back to the enclosing service's file.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from grpc_reflection.v1alpha import _async, reflection


class MethodAwareReflectionServicer(_async.ReflectionServicer):
    def _file_containing_symbol(self, request, fully_qualified_name):
        response = super()._file_containing_symbol(request, fully_qualified_name)
        if not response.HasField("error_response"):
            return response
        service_name, _, method_name = fully_qualified_name.rpartition(".")
        try:
            service = self._pool.FindServiceByName(service_name)
        except KeyError:
            return response
        if method_name not in service.methods_by_name:
            return response
        return super()._file_containing_symbol(request, service_name)


def enable(server: grpc.aio.Server, service_names: Iterable[str]) -> None:
    names = [*service_names, reflection.SERVICE_NAME]
    reflection._reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
        MethodAwareReflectionServicer(names), server
    )
