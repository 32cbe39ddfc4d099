"""The one server interceptor every service runs: ids, admission, safe decoding, metrics.

Per unary call, in order:

1. request id: read ``x-request-id`` (or mint one), put it on every log line
   and in the trailing metadata (``serving.request_id``);
2. admission: beyond ``max_in_flight`` calls the call fails at once with
   RESOURCE_EXHAUSTED instead of queueing until its deadline; health and
   reflection are exempt so probes keep answering under overload;
3. decoding: a request that is not a valid message (e.g. a string field with
   non-UTF-8 bytes) is INVALID_ARGUMENT, not the INTERNAL grpcio would send;
4. metrics: count by method and status code, and latency.
"""

from __future__ import annotations

import asyncio
import time

import grpc
from google.protobuf.message import DecodeError

from serving import metrics, request_id

EXEMPT_PREFIXES = ("/grpc.health.", "/grpc.reflection.")


class ServingInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, max_in_flight: int):
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        wrapped = self._wrapped.get(method)
        if wrapped is None:
            handler = await continuation(handler_call_details)
            if handler is None or handler.unary_unary is None:
                return handler
            wrapped = self._wrapped[method] = self._wrap(method, handler)
        return wrapped

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        exempt = method.startswith(EXEMPT_PREFIXES)
        inner, decode = handler.unary_unary, handler.request_deserializer

        async def call(raw: bytes, context: grpc.aio.ServicerContext):
            started = time.perf_counter()
            incoming = dict(context.invocation_metadata() or ()).get(request_id.HEADER, "")
            rid = incoming[: request_id.MAX_LENGTH] if incoming else request_id.new_id()
            request_id.current.set(rid)  # each call runs in its own task: this stays per call
            context.set_trailing_metadata(((request_id.HEADER, rid),))
            code = "OK"
            admitted = exempt or self.in_flight < self.max_in_flight
            if admitted:
                self.in_flight += 1
            try:
                if not admitted:
                    await context.abort(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"server busy: {self.max_in_flight} requests in flight; retry with backoff",
                    )
                try:
                    request = decode(raw) if decode else raw
                except (DecodeError, ValueError, TypeError) as exc:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"request is not a valid message: {exc}")
                return await inner(request, context)
            except asyncio.CancelledError:
                code = "CANCELLED"
                raise
            except BaseException:
                code = _code_name(context.code(), default="UNKNOWN")
                raise
            finally:
                if admitted:
                    self.in_flight -= 1
                if code == "OK":
                    code = _code_name(context.code(), default="OK")
                metrics.REQUESTS.labels(method, code).inc()
                metrics.LATENCY.labels(method).observe(time.perf_counter() - started)

        return grpc.unary_unary_rpc_method_handler(
            call, request_deserializer=None, response_serializer=handler.response_serializer
        )


def _code_name(code: grpc.StatusCode | None, default: str) -> str:
    return code.name if isinstance(code, grpc.StatusCode) else default
