"""gRPC server start/stop shared by every service.

One ``GrpcServer`` per process: a ``grpc.aio`` server with explicit message-size
and concurrency limits, the standard health service (NOT_SERVING until the
service says it is ready), server reflection, Prometheus metrics, and a clean
shutdown on SIGINT/SIGTERM: health turns NOT_SERVING, new calls are refused,
in-flight calls get ``--grace-period`` seconds to finish, then the process exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from serving import interceptors, metrics, reflection, tls, tracing
from serving.lifecycle import ModelManager

log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def channel_options(max_message_bytes: int, max_send_message_bytes: int | None = None) -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", max_send_message_bytes or max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]


class GrpcServer:
    """Owns the aio server, its health status and its shutdown.

    ``service_names`` are the full names of the services registered on it
    (e.g. ``"recsys.v1.Gateway"``); health reports each of them and the
    overall status ("").
    """

    def __init__(self, args: argparse.Namespace, service_names: Sequence[str], *,
                 max_send_message_bytes: int | None = None):
        """``max_send_message_bytes`` raises the limit on answers above --max-message-bytes."""
        self.args = args
        self.service_names = list(service_names)
        # Before any servicer is registered: the call wrappers add spans only if tracing is on by then.
        tracing.setup(tracing.default_service_name(self.service_names))
        self.server = grpc.aio.server(
            options=[
                *channel_options(args.max_message_bytes, max_send_message_bytes),
                ("grpc.so_reuseport", 0),
                # Accept the gateway's keepalive pings on idle channels (every 10 s).
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
                # Clients re-resolve DNS only when a connection ends: closing each one
                # after a while lets the gateway discover index replicas added later.
                ("grpc.max_connection_age_ms", int(args.max_connection_age * 1000)),
                ("grpc.max_connection_age_grace_ms", int(args.grace_period * 1000)),
            ],
        )
        # Register servicers on ``self.registrar`` (not ``self.server``) so that
        # their calls get request ids, admission control, safe decoding and metrics.
        self.registrar = interceptors.WrappingServer(self.server, interceptors.CallWrapper(args.max_concurrent_rpcs))
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.registrar)
        reflection.enable(self.registrar, [*self.service_names, health.SERVICE_NAME])
        self._stop = asyncio.Event()

    async def start(self) -> None:
        address = f"{self.args.host}:{self.args.port}"
        credentials = tls.server_credentials(self.args.tls_cert, self.args.tls_key, self.args.tls_client_ca)
        if credentials is None:
            bound = self.server.add_insecure_port(address)
        else:
            bound = self.server.add_secure_port(address, credentials)
        if bound == 0:
            raise SystemExit(f"cannot listen on {address}: is the port in use?")
        await self.set_serving(False)
        await self.server.start()
        if self.args.metrics_port:
            metrics.start_http_server(self.args.metrics_port, self.args.host)
        log.info("listening", extra={"address": address, "services": self.service_names,
                                     "tls": credentials is not None, "mtls": bool(self.args.tls_client_ca)})

    async def set_serving(self, serving: bool) -> None:
        status = SERVING if serving else NOT_SERVING
        for name in ("", *self.service_names):
            await self.health.set(name, status)

    def request_stop(self) -> None:
        self._stop.set()

    async def run_until_stopped(self, on_stop: Callable[[], Awaitable[None]] | None = None) -> None:
        """Blocks until SIGINT/SIGTERM (or ``request_stop``), then shuts down gracefully."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stop.set)
        await self._stop.wait()
        grace = self.args.grace_period
        log.info("shutting down", extra={"grace_period_s": grace})
        # Tell load balancers and probes first, so no new traffic is routed here.
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        if on_stop is not None:
            await on_stop()
        tracing.shutdown()
        log.info("stopped")


    async def run_with_models(self, manager: ModelManager, poll_interval_s: float) -> None:
        """Serves until stopped: loads models, reports SERVING once one is loaded, polls.

        Health stays NOT_SERVING until the first valid version is loaded, so
        probes and load balancers send no traffic to a replica that cannot answer.
        """

        async def load_then_poll() -> None:
            while not manager.ready:
                await manager.refresh_async()
                if manager.ready:
                    break
                log.warning("no valid model version yet; waiting", extra={"model_base": str(manager.model_base)})
                await asyncio.sleep(poll_interval_s or 2.0)
            await self.set_serving(True)
            if poll_interval_s > 0:
                await manager.poll(poll_interval_s)

        task = asyncio.create_task(load_then_poll())
        try:
            await self.run_until_stopped()
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

