"""What every unary call of every service goes through: ids, admission, safe decoding, metrics.

Per unary call, in order:

1. request id: read ``x-request-id`` (or mint one), put it on every log line
   and in the trailing metadata (``serving.request_id``);
2. admission: beyond ``max_in_flight`` calls the call fails at once with
   RESOURCE_EXHAUSTED instead of queueing until its deadline; health and
   reflection are exempt so probes keep answering under overload;
3. decoding: a request that is not a valid message (e.g. a string field with
   non-UTF-8 bytes) is INVALID_ARGUMENT, not the INTERNAL grpcio would send;
4. metrics: count by method and status code, and latency;
5. tracing, only when ``serving.tracing`` is on: a SERVER span in the caller's trace.

This is not a ``grpc.aio.ServerInterceptor``: an interceptor runs a coroutine
chain per call just to find the handler. Instead ``WrappingServer`` wraps each
method handler once, when a servicer is registered, so a call costs one extra
Python frame (``bench/README.md`` has the measurement).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import grpc
from google.protobuf.message import DecodeError

from serving import errors, metrics, request_id, tracing

EXEMPT_PREFIXES = ("/grpc.health.", "/grpc.reflection.")


class CallWrapper:
    """Wraps unary-unary method handlers with the steps above; shares one in-flight count."""

    def __init__(self, max_in_flight: int):
        self.max_in_flight = max_in_flight
        self.in_flight = 0

    def wrap(self, method: str, handler: grpc.RpcMethodHandler | None) -> grpc.RpcMethodHandler | None:
        if handler is None or handler.unary_unary is None:
            return handler
        exempt = method.startswith(EXEMPT_PREFIXES)
        inner, decode = handler.unary_unary, handler.request_deserializer
        if tracing.enabled and not exempt:
            inner = tracing.server_handler(method, inner)
        latency = metrics.LATENCY.labels(method)
        outcomes = metrics.RequestCounts(method)

        async def call(raw: bytes, context: grpc.aio.ServicerContext):
            started = time.perf_counter()
            rid = ""
            for key, value in context.invocation_metadata() or ():
                if key == request_id.HEADER:
                    rid = value[: request_id.MAX_LENGTH]
                    break
            rid = rid or request_id.new_id()
            request_id.current.set(rid)  # each call runs in its own task: this stays per call
            context.set_trailing_metadata(((request_id.HEADER, rid),))
            code = "OK"
            admitted = exempt or self.in_flight < self.max_in_flight
            if admitted:
                self.in_flight += 1
            try:
                if not admitted:
                    await errors.abort(context, errors.error_info(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"server busy: {self.max_in_flight} requests in flight; retry with backoff",
                        "SERVER_BUSY",
                    ))
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
                outcomes.inc(code)
                latency.observe(time.perf_counter() - started)

        return grpc.unary_unary_rpc_method_handler(
            call, request_deserializer=None, response_serializer=handler.response_serializer
        )


class _WrappedGeneric(grpc.GenericRpcHandler):
    def __init__(self, inner: grpc.GenericRpcHandler, wrapper: CallWrapper):
        self._inner, self._wrapper = inner, wrapper
        self._cache: dict[str, grpc.RpcMethodHandler | None] = {}

    def service(self, handler_call_details):
        method = handler_call_details.method
        try:
            return self._cache[method]
        except KeyError:
            handler = self._wrapper.wrap(method, self._inner.service(handler_call_details))
            if handler is not None:  # unknown methods are not cached: callers choose their names
                self._cache[method] = handler
            return handler


class WrappingServer:
    """A ``grpc.aio.Server`` whose servicers' handlers go through ``wrapper``.

    Pass it to the generated ``add_XServicer_to_server``; everything else is the
    real server's.
    """

    def __init__(self, server: grpc.aio.Server, wrapper: CallWrapper):
        self._server, self._wrapper = server, wrapper

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers([_WrappedGeneric(h, self._wrapper) for h in handlers])

    def add_registered_method_handlers(self, service_name: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self._server.add_registered_method_handlers(
            service_name,
            {name: self._wrapper.wrap(f"/{service_name}/{name}", h) for name, h in handlers.items()},
        )

    def __getattr__(self, name: str):
        return getattr(self._server, name)


def _code_name(code: grpc.StatusCode | None, default: str) -> str:
    return code.name if isinstance(code, grpc.StatusCode) else default
