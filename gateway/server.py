"""``python -m gateway``: flags, start-up and shutdown of the gateway."""

from __future__ import annotations

import argparse
import asyncio
import logging

from serving.config import FlagParser, add_server_flags, log_config, setup_logging

log = logging.getLogger("gateway")

# A health service name that is SERVING as soon as the gateway listens: for
# liveness and startup probes, which must not restart a gateway whose peers are
# still loading. "" and "recsys.v1.Gateway" are the readiness (start-up gate).
LIVENESS_SERVICE = "liveness"


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
    parser.flag("--index-user-lookup", True, bool,
                "the index looks known users' vectors up itself (one hop, no query-tier call); turn off while "
                "index services older than this gateway are still running")
    parser.flag("--default-timeout", 5.0, float, "seconds allowed for the inner calls when the caller sets no deadline")
    parser.flag(
        "--peer-restart-wait", 5.0, float,
        "seconds a tier without a SERVING replica counts as (re)starting: inner calls wait for it within their "
        "deadline; after that they fail at once with UNAVAILABLE",
    )
    args = parser.parse_args(argv)
    if not any(target.strip() for target in args.index_targets.split(";")):
        parser.error("--index-targets needs at least one target, e.g. 127.0.0.1:50053")
    return args


async def serve(args: argparse.Namespace) -> None:
    from gateway.peers import Tier, open_channel
    from gateway.recommender import Recommender
    from gateway.servicer import MAX_BATCH_RESULTS, RESULT_BYTES, GatewayServicer
    from recsys.v1 import gateway_pb2_grpc
    from serving import tls
    from serving.server import SERVING, GrpcServer

    credentials = tls.channel_credentials(args.peer_tls_ca, args.peer_tls_cert, args.peer_tls_key)

    def tier(name: str, target: str, service: str) -> Tier:
        channel = open_channel(target, service, args.max_message_bytes, credentials)
        return Tier(name, target, channel, service, args.peer_restart_wait)

    index_targets = [target.strip() for target in args.index_targets.split(";") if target.strip()]
    query_tier = tier("query service", args.query_target, "recsys.internal.v1.QueryService")
    index_tiers = [tier(f"index shard {i}", t, "recsys.internal.v1.IndexService") for i, t in enumerate(index_targets)]
    tiers = [query_tier, *index_tiers]
    recommender = Recommender(
        query_tier,
        index_tiers,
        max_batch=args.max_batch,
        batch_wait_us=args.batch_wait_us,
        concurrency=args.batch_concurrency,
        default_timeout_s=args.default_timeout,
        max_message_bytes=args.max_message_bytes,
        index_user_lookup=args.index_user_lookup,
    )
    servicer = GatewayServicer(recommender, max_batch_request=args.max_batch_request,
                               expose_peer_addresses=args.expose_peer_addresses)
    # Requests stay within --max-message-bytes; answers may be as large as the
    # API's largest (a RecommendBatch of MAX_BATCH_RESULTS movies).
    server = GrpcServer(args, [servicer.service_name],
                        max_send_message_bytes=max(args.max_message_bytes, MAX_BATCH_RESULTS * RESULT_BYTES))
    gateway_pb2_grpc.add_GatewayServicer_to_server(servicer, server.registrar)
    await server.start()
    # Liveness (the process answers) is SERVING at once; readiness waits for the peers below.
    await server.health.set(LIVENESS_SERVICE, SERVING)
    watchers = [asyncio.create_task(t.watch()) for t in tiers]

    async def open_gate() -> None:
        # Start-up gate: SERVING only once the query tier and every index shard have
        # answered a health check SERVING, so that "SERVING" means a request succeeds.
        # It then latches: if a whole tier goes away later, every gateway replica
        # would otherwise leave the load balancer at once; requests get UNAVAILABLE
        # naming the tier instead (see the README, "Readiness").
        await asyncio.gather(*(t.first_serving() for t in tiers))
        await server.set_serving(True)
        log.info("every tier answered SERVING; gateway SERVING", extra={"tiers": [t.target for t in tiers]})

    gate = asyncio.create_task(open_gate())

    async def close() -> None:
        for task in (gate, *watchers):
            task.cancel()
        await asyncio.gather(gate, *watchers, return_exceptions=True)
        await recommender.batcher.stop()
        for t in tiers:
            await t.channel.close()

    await server.run_until_stopped(on_stop=close)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    log_config("gateway", args)
    asyncio.run(serve(args))
