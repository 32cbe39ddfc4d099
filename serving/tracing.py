"""Distributed tracing with OpenTelemetry: one trace per request across the three services.

Off by default. The standard OpenTelemetry environment turns it on and configures it:

- ``OTEL_TRACES_EXPORTER`` (``otlp``, ``console``, ``none``; a comma-separated list)
  or ``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` set: on,
  exporting OTLP over gRPC (e.g. ``http://otel-collector:4317``) or to stdout;
- ``OTEL_TRACES_SAMPLER`` / ``OTEL_TRACES_SAMPLER_ARG``: which traces are kept, e.g.
  ``parentbased_traceidratio`` and ``0.01`` for 1% (the SDK reads them itself; the
  default keeps every trace);
- ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``: who the spans come from
  (the service's own name when unset);
- ``OTEL_TRACES_EXPORTER=none`` or ``OTEL_SDK_DISABLED=true``: off, whatever else is set.

``RECSYS_TRACES_FILE=PATH`` (not an OpenTelemetry variable) also turns tracing on and
appends every finished span to PATH as one JSON object per line: how the tests read
the spans of real server processes back.

W3C trace context (``traceparent``) is read from each call's metadata by
``server_handler`` and sent on every call to a peer by ``client_span``. Spans:
one SERVER span per RPC, one CLIENT span per call to a peer, one span per
micro-batch (``batch_span``: parented to one request it serves, linked to all of
them, with the batch size), and whatever a service wraps in ``span`` (the index's
ScaNN search).

When tracing is off, ``enabled`` is False and the call paths check it once: no
span, context or propagation work is done.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

import grpc

log = logging.getLogger(__name__)

TRACES_FILE_ENV = "RECSYS_TRACES_FILE"

enabled = False
_tracer = None  # opentelemetry.trace.Tracer once set up


def wanted(environ=os.environ) -> bool:
    """Whether the environment asks for tracing."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if environ.get(TRACES_FILE_ENV):
        return True
    exporters = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporters:
        # "none" is off even with an endpoint configured (how the compose files default).
        return exporters != "none"
    return bool(environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def setup(service_name: str, environ=os.environ) -> bool:
    """Turns tracing on for this process if the environment asks for it. Returns whether it is on."""
    global enabled, _tracer
    if enabled or not wanted(environ):
        return enabled
    from opentelemetry import trace
    from opentelemetry.sdk.resources import SERVICE_INSTANCE_ID, SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    resource = Resource.create()
    own = {SERVICE_INSTANCE_ID: uuid.uuid4().hex, "process.pid": os.getpid()}
    if resource.attributes.get(SERVICE_NAME, "").startswith("unknown_service"):
        own[SERVICE_NAME] = service_name
    provider = TracerProvider(resource=resource.merge(Resource(own)))
    for exporter in _exporters(environ, ConsoleSpanExporter):
        # Export off the request path, in the processor's own thread.
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _tracer = trace.get_tracer("recsys")
    enabled = True
    log.info("tracing on", extra={"service_name": resource.merge(Resource(own)).attributes.get(SERVICE_NAME),
                                  "sampler": environ.get("OTEL_TRACES_SAMPLER", "parentbased_always_on"),
                                  "sampler_arg": environ.get("OTEL_TRACES_SAMPLER_ARG", "")})
    return True


def _exporters(environ, console_exporter) -> list:
    names = [n.strip().lower() for n in environ.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    if not names and (environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")):
        names = ["otlp"]
    exporters = []
    for name in names:
        if name == "otlp":
            protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"))
            if protocol != "grpc":
                raise SystemExit(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: this service exports OTLP over grpc only")
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            exporters.append(OTLPSpanExporter())
        elif name == "console":
            exporters.append(console_exporter())
        elif name != "none":
            raise SystemExit(f"OTEL_TRACES_EXPORTER={name!r}: this service knows otlp, console and none")
    if path := environ.get(TRACES_FILE_ENV):
        out = open(path, "a", buffering=1)  # noqa: SIM115 (lives as long as the process)
        exporters.append(console_exporter(out=out, formatter=lambda span: span.to_json(indent=None) + "\n"))
    return exporters


def shutdown() -> None:
    """Exports what is still queued (also done at interpreter exit)."""
    if enabled:
        from opentelemetry import trace

        trace.get_tracer_provider().shutdown()


# ---------------------------------------------------------------- server side
#
# Most requests are not sampled (1% is a typical ratio). For them no span is made
# where one is not needed: a call whose caller did not sample it, a batch none of
# whose requests is sampled, and a peer call under an unsampled request only pass
# the caller's context on (so the peers follow the same decision) instead of
# creating non-recording spans.


def server_handler(method: str, inner: Callable[[Any, Any], Awaitable[Any]]):
    """Wraps a unary handler: a SERVER span per call, in the trace the caller's ``traceparent`` names."""
    from opentelemetry import context as otel_context, propagate, trace
    from opentelemetry.trace import SpanKind, Status, StatusCode

    name = method.lstrip("/")
    service, _, rpc = name.partition("/")
    attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": rpc}
    tracer = _tracer

    async def traced(request, context):
        carrier = {key: value for key, value in context.invocation_metadata() or () if isinstance(value, str)}
        parent = propagate.extract(carrier)
        caller = trace.get_current_span(parent).get_span_context()
        if caller.is_valid and not caller.trace_flags.sampled:
            token = otel_context.attach(parent)
            try:
                return await inner(request, context)
            finally:
                otel_context.detach(token)
        with tracer.start_as_current_span(
            name, context=parent, kind=SpanKind.SERVER, attributes=attributes,
            record_exception=False, set_status_on_exception=False,
        ) as span:
            try:
                return await inner(request, context)
            finally:
                if span.is_recording():
                    code = context.code()
                    number = code.value[0] if isinstance(code, grpc.StatusCode) else 0  # unset: OK
                    span.set_attribute("rpc.grpc.status_code", number)
                    if number:
                        span.set_status(Status(StatusCode.ERROR, code.name))

    return traced


# ---------------------------------------------------------------- client side


@contextlib.contextmanager
def client_span(peer: str, method: str, **attributes: Any) -> Iterator[tuple[tuple[str, str], ...]]:
    """A CLIENT span for one call to a peer; yields the metadata that carries it (``traceparent``)."""
    from opentelemetry import propagate, trace
    from opentelemetry.trace import SpanKind, Status, StatusCode

    if not trace.get_current_span().is_recording():
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        yield tuple(carrier.items())
        return
    name = method.lstrip("/")
    service, _, rpc = name.partition("/")
    with _tracer.start_as_current_span(
        name, kind=SpanKind.CLIENT, record_exception=False, set_status_on_exception=False,
        attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": rpc, "peer.service": peer,
                    **attributes},
    ) as span:
        carrier = {}
        propagate.inject(carrier)
        try:
            yield tuple(carrier.items())
        except BaseException as exc:
            code = getattr(exc, "code", None)
            name = code().name if callable(code) else type(exc).__name__
            span.set_status(Status(StatusCode.ERROR, name))
            raise


# ---------------------------------------------------------------- batches and plain spans


def capture():
    """The caller's trace context, to hand to the batch that will serve it; None when off."""
    if not enabled:
        return None
    from opentelemetry import context

    return context.get_current()


@contextlib.contextmanager
def _within(ctx):
    from opentelemetry import context

    token = context.attach(ctx)
    try:
        yield
    finally:
        context.detach(token)


def batch_span(stage: str, contexts: Sequence[Any], size: int):
    """A span for one micro-batch: child of one request it serves (a sampled one if any), linked to all.

    When none of its requests is sampled, no span: the batch runs in the first
    request's (unsampled) context, which its peer calls pass on.
    """
    if not enabled or not contexts:
        return contextlib.nullcontext()
    from opentelemetry import trace

    callers = [(c, trace.get_current_span(c).get_span_context()) for c in contexts if c is not None]
    callers = [(c, s) for c, s in callers if s.is_valid]
    sampled = [c for c, s in callers if s.trace_flags.sampled]
    if not sampled:
        return _within(callers[0][0]) if callers else contextlib.nullcontext()
    return _tracer.start_as_current_span(
        f"batch {stage}", context=sampled[0], links=[trace.Link(s) for _, s in callers],
        attributes={"recsys.batch.stage": stage, "recsys.batch.size": size, "recsys.batch.callers": len(contexts)},
    )


def span(name: str, **attributes: Any):
    """An internal span around a piece of work; nothing at all when tracing is off."""
    if not enabled:
        return contextlib.nullcontext()
    return _tracer.start_as_current_span(name, attributes=attributes)


def default_service_name(service_names: Sequence[str]) -> str:
    """``["recsys.internal.v1.IndexService"]`` -> ``"recsys-index-service"``-style names for OTEL_SERVICE_NAME's default."""
    if not service_names:
        return os.path.basename(sys.argv[0]) or "recsys"
    last = service_names[0].rsplit(".", 1)[-1]
    words = "".join(f"-{c.lower()}" if c.isupper() else c for c in last).lstrip("-")
    return f"recsys-{words}"
