"""An OTLP/gRPC trace receiver that counts spans and drops them: the far end of the tracing benchmark.

The services' exporter does its real work (batching, protobuf encoding, the gRPC
export call) against it, without a collector on the machine. Run it beside
``python -m bench`` with the services pointed at it::

    python -m bench.otlp_sink --port 4317 &
    OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317 OTEL_TRACES_SAMPLER=parentbased_traceidratio \\
        OTEL_TRACES_SAMPLER_ARG=0.01 python -m bench ...

On SIGTERM/SIGINT it prints how many export calls and spans it received.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


class CountingSink(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.exports = 0
        self.spans = 0

    async def Export(self, request, context):
        self.exports += 1
        self.spans += sum(len(scope.spans) for rs in request.resource_spans for scope in rs.scope_spans)
        return trace_service_pb2.ExportTraceServiceResponse()


async def serve(host: str, port: int) -> None:
    sink = CountingSink()
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(sink, server)
    server.add_insecure_port(f"{host}:{port}")
    await server.start()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1)
    print(f"otlp sink: {sink.exports} export calls, {sink.spans} spans", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.otlp_sink", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4317)
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
