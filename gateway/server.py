"""``python -m gateway``: flags, start-up and shutdown of the gateway."""

from __future__ import annotations

import argparse
import asyncio
import logging

from serving.config import FlagParser, add_server_flags, log_config, setup_logging

log = logging.getLogger("gateway")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = FlagParser(prog="python -m gateway", description="Recommends movies for a user id.", env_prefix="GATEWAY_")
    add_server_flags(parser, default_port=50051)
    parser.flag("--query-target", "127.0.0.1:50052", str, "gRPC target of the query tier", shared=True)
    parser.flag(
        "--index-targets", "127.0.0.1:50053", str,
        "gRPC target of the index tier; for a sharded index, one target per shard separated by ';'",
        shared=True,
    )
    parser.flag("--peer-tls-ca", "", str, "PEM CA that signed the peers' certificates: talk TLS to peers", shared=True)
    parser.flag("--peer-tls-cert", "", str, "PEM client certificate for mutual TLS to peers", shared=True)
    parser.flag("--peer-tls-key", "", str, "PEM key of --peer-tls-cert", shared=True)
    parser.flag("--max-batch", 256, int, "most requests gathered into one backend call")
    parser.flag("--batch-wait-us", 0, int, "extra wait for a fuller batch when requests are queueing")
    parser.flag("--batch-concurrency", 1, int, "batches in flight at once (fewer: larger batches, less CPU)")
    parser.flag("--max-batch-request", 1000, int, "most requests in one RecommendBatch call")
    parser.flag("--expose-peer-addresses", False, bool,
                "admin: GetModelStatus tells every client the peers' internal addresses")
    parser.flag("--default-timeout", 5.0, float, "seconds allowed for the inner calls when the caller sets no deadline")
    args = parser.parse_args(argv)
    if not any(target.strip() for target in args.index_targets.split(";")):
        parser.error("--index-targets needs at least one target, e.g. 127.0.0.1:50053")
    return args


async def serve(args: argparse.Namespace) -> None:
    from gateway.peers import open_channel
    from gateway.recommender import Recommender
    from gateway.servicer import GatewayServicer
    from recsys.v1 import gateway_pb2_grpc, index_service_pb2_grpc, query_service_pb2_grpc
    from serving import tls
    from serving.server import GrpcServer

    credentials = tls.channel_credentials(args.peer_tls_ca, args.peer_tls_cert, args.peer_tls_key)
    query_channel = open_channel(args.query_target, "recsys.v1.QueryService", args.max_message_bytes, credentials)
    index_targets = [target.strip() for target in args.index_targets.split(";") if target.strip()]
    index_channels = [
        open_channel(target, "recsys.v1.IndexService", args.max_message_bytes, credentials) for target in index_targets
    ]
    recommender = Recommender(
        query_service_pb2_grpc.QueryServiceStub(query_channel),
        [index_service_pb2_grpc.IndexServiceStub(c) for c in index_channels],
        max_batch=args.max_batch,
        batch_wait_us=args.batch_wait_us,
        concurrency=args.batch_concurrency,
        default_timeout_s=args.default_timeout,
        query_target=args.query_target,
        index_targets=index_targets,
    )
    servicer = GatewayServicer(recommender, max_batch_request=args.max_batch_request,
                               expose_peer_addresses=args.expose_peer_addresses)
    server = GrpcServer(args, [servicer.service_name])
    gateway_pb2_grpc.add_GatewayServicer_to_server(servicer, server.registrar)
    await server.start()
    # The gateway holds no model; it is ready as soon as it listens. Peers that
    # are down show up as UNAVAILABLE per request and in GetModelStatus.
    await server.set_serving(True)

    async def close() -> None:
        await recommender.batcher.stop()
        for channel in (query_channel, *index_channels):
            await channel.close()

    await server.run_until_stopped(on_stop=close)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    log_config("gateway", args)
    asyncio.run(serve(args))
