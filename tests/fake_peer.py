"""A stand-in for the query and index tiers that is slow or failing on purpose.

``python -m fake_peer --port P [--delay S] [--fail-code NAME]`` serves
QueryService, IndexService and ModelAdmin (health SERVING at once). Every Search and
EmbedUsers call sleeps ``--delay`` seconds, then fails with ``--fail-code`` if
given. GetModelStatus reports version 1, with ``size`` = calls received so far,
so tests can count retries.
"""

from __future__ import annotations

import argparse
import asyncio

import grpc

from recsys.internal.v1 import (
    admin_pb2, admin_pb2_grpc, index_service_pb2, index_service_pb2_grpc, query_service_pb2, query_service_pb2_grpc,
)
from recsys.v1 import common_pb2
from serving.config import FlagParser, add_server_flags, setup_logging
from serving.server import GrpcServer


class Fake(query_service_pb2_grpc.QueryServiceServicer, index_service_pb2_grpc.IndexServiceServicer,
           admin_pb2_grpc.ModelAdminServicer):
    def __init__(self, delay: float, fail_code: str):
        self.delay = delay
        self.fail_code = grpc.StatusCode[fail_code] if fail_code else None
        self.calls = 0

    async def _behave(self, context):
        self.calls += 1
        await asyncio.sleep(self.delay)
        if self.fail_code is not None:
            await context.abort(self.fail_code, "fake peer failing on purpose")

    async def EmbedUsers(self, request, context):
        await self._behave(context)
        return query_service_pb2.EmbedUsersResponse(
            embeddings=[query_service_pb2.UserEmbedding(user_id=u, values=[1.0] * 32, known=True)
                        for u in request.user_ids],
            model_version="1", dimension=32,
        )

    async def Search(self, request, context):
        await self._behave(context)
        k = request.k or 10
        results = [index_service_pb2.SearchResult(
            item_ids=[str(i) for i in range(1, k + 1)], scores=[float(k - i) for i in range(k)],
            titles=[f"Movie {i}" for i in range(1, k + 1)],
            # Every user is known here, as every EmbedUsers answer says.
            user_lookup=index_service_pb2.USER_LOOKUP_FOUND if q.lookup_user_vector else 0,
        ) for q in request.queries]
        return index_service_pb2.SearchResponse(results=results, model_version="1")

    async def GetModelStatus(self, request, context):
        version = common_pb2.ModelVersionStatus(
            version="1", state=common_pb2.MODEL_VERSION_STATE_AVAILABLE, size=self.calls, is_default=True
        )
        return admin_pb2.GetModelStatusResponse(services=[common_pb2.ServiceModelStatus(versions=[version])])


async def serve(args: argparse.Namespace) -> None:
    fake = Fake(args.delay, args.fail_code)
    server = GrpcServer(args, ["recsys.internal.v1.QueryService", "recsys.internal.v1.IndexService",
                               "recsys.internal.v1.ModelAdmin"])
    query_service_pb2_grpc.add_QueryServiceServicer_to_server(fake, server.registrar)
    index_service_pb2_grpc.add_IndexServiceServicer_to_server(fake, server.registrar)
    admin_pb2_grpc.add_ModelAdminServicer_to_server(fake, server.registrar)
    await server.start()
    await server.set_serving(True)
    await server.run_until_stopped()


if __name__ == "__main__":
    parser = FlagParser(prog="fake_peer", env_prefix="FAKE_")
    add_server_flags(parser, default_port=0)
    parser.flag("--delay", 0.0, float, "seconds each call sleeps")
    parser.flag("--fail-code", "", str, "status code every call fails with")
    args = parser.parse_args()
    setup_logging(args.log_level, args.log_format)
    asyncio.run(serve(args))
