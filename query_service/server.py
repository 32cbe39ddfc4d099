"""``python -m query_service``: flags, start-up and shutdown of the query service."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from serving.config import FlagParser, add_model_flags, add_server_flags, log_config, setup_logging

log = logging.getLogger("query_service")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = FlagParser(prog="python -m query_service", description="Embeds user ids with the user tower.", env_prefix="QUERY_")
    add_server_flags(parser, default_port=50052)
    add_model_flags(parser)
    parser.flag("--max-batch", 1024, int, "most user ids in one TF call (and in one request)")
    parser.flag("--batch-wait-us", 0, int, "extra wait for a fuller batch when requests are queueing")
    parser.flag("--tf-threads", 1, int, "TensorFlow intra/inter-op threads")
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    # TensorFlow is imported here, not at module import, so --help stays fast.
    from query_service.model import configure_tensorflow, load_user_tower
    from query_service.servicer import QueryServicer
    from recsys.internal.v1 import admin_pb2_grpc, query_service_pb2_grpc
    from serving.lifecycle import ModelManager
    from serving.admin import ADMIN_SERVICE
    from serving.server import GrpcServer

    configure_tensorflow(args.tf_threads)
    # A new version loads on a worker thread while this one serves; switching the GIL
    # more often keeps the event loop answering during the load.
    sys.setswitchinterval(0.0005)
    manager = ModelManager(args.model_base, load_user_tower, service="query", keep=args.keep_versions,
                           size_of=lambda tower: len(tower.users.ids))
    servicer = QueryServicer(manager, max_batch=args.max_batch, batch_wait_us=args.batch_wait_us,
                             allow_reload=args.allow_reload)
    server = GrpcServer(args, [servicer.service_name, ADMIN_SERVICE])
    query_service_pb2_grpc.add_QueryServiceServicer_to_server(servicer, server.registrar)
    admin_pb2_grpc.add_ModelAdminServicer_to_server(servicer, server.registrar)
    await server.start()
    await server.run_with_models(manager, args.poll_interval)
    await servicer.batcher.stop()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    log_config("query_service", args)
    asyncio.run(serve(args))
