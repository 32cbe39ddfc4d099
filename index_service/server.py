"""``python -m index_service``: flags, start-up and shutdown of the index service."""

from __future__ import annotations

import argparse
import asyncio
import logging

from serving.config import FlagParser, add_model_flags, add_server_flags, log_config, setup_logging

log = logging.getLogger("index_service")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = FlagParser(prog="python -m index_service", description="ScaNN search over item embeddings.", env_prefix="INDEX_")
    add_server_flags(parser, default_port=50053)
    add_model_flags(parser)
    parser.flag("--max-batch", 1024, int, "most queries in one Search call")
    parser.flag("--max-excluded", 100_000, int, "most excluded item ids per query")
    parser.flag("--shard-index", 0, int, "which shard of the catalog this process holds (0-based)")
    parser.flag("--num-shards", 1, int, "how many shards the catalog is split into")
    args = parser.parse_args(argv)
    if not 0 <= args.shard_index < args.num_shards:
        parser.error(f"--shard-index must be 0..{args.num_shards - 1} for --num-shards {args.num_shards}")
    return args


async def serve(args: argparse.Namespace) -> None:
    from index_service.index import make_loader
    from index_service.servicer import IndexServicer
    from recsys.internal.v1 import admin_pb2_grpc, index_service_pb2_grpc
    from serving import metrics
    from serving.lifecycle import ModelManager
    from serving.admin import ADMIN_SERVICE
    from serving.server import GrpcServer

    def size_of(index) -> int:
        metrics.INDEX_SIZE.labels(str(index.version)).set(len(index))
        return len(index)

    manager = ModelManager(
        args.model_base, make_loader(args.shard_index, args.num_shards), service="index",
        keep=args.keep_versions, size_of=size_of,
    )
    servicer = IndexServicer(
        manager, max_batch=args.max_batch, max_excluded=args.max_excluded, allow_reload=args.allow_reload,
        shard_index=args.shard_index, num_shards=args.num_shards,
    )
    server = GrpcServer(args, [servicer.service_name, ADMIN_SERVICE])
    index_service_pb2_grpc.add_IndexServiceServicer_to_server(servicer, server.registrar)
    admin_pb2_grpc.add_ModelAdminServicer_to_server(servicer, server.registrar)
    await server.start()
    await server.run_with_models(manager, args.poll_interval)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    log_config("index_service", args)
    asyncio.run(serve(args))
