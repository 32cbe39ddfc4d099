"""Gateway servicer: validates public requests, delegates to the Recommender, builds responses."""

from __future__ import annotations

import time

import grpc

from gateway.recommender import PeerError, Recommender, RecRequest, RecResult
from recsys.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

MAX_K = 1000
DEFAULT_K = 10
MAX_USER_ID_BYTES = 256
MAX_EXCLUDED = 10_000
# Below this much time left, the inner calls cannot finish: fail now.
MIN_USEFUL_TIME_S = 0.001


class InvalidRequest(ValueError):
    pass


def parse_recommend(request: gateway_pb2.RecommendRequest, deadline: float | None) -> RecRequest:
    user_id = request.user_id
    if not user_id:
        raise InvalidRequest("user_id is required, e.g. \"42\"")
    if len(user_id.encode()) > MAX_USER_ID_BYTES:
        raise InvalidRequest(f"user_id is {len(user_id.encode())} bytes; at most {MAX_USER_ID_BYTES}")
    k = request.k or DEFAULT_K
    if not 1 <= k <= MAX_K:
        raise InvalidRequest(f"k must be 1..{MAX_K} (0 means {DEFAULT_K}); got {request.k}")
    if len(request.exclude_item_ids) > MAX_EXCLUDED:
        raise InvalidRequest(f"exclude_item_ids has {len(request.exclude_item_ids)} ids; at most {MAX_EXCLUDED}")
    return RecRequest(user_id, k, request.exclude_seen, tuple(dict.fromkeys(request.exclude_item_ids)), deadline)


def to_response(result: RecResult) -> gateway_pb2.RecommendResponse:
    return gateway_pb2.RecommendResponse(
        items=[gateway_pb2.ScoredItem(item_id=i.item_id, title=i.title, score=i.score) for i in result.items],
        model_version=result.model_version,
        fallback=result.fallback,
    )


class GatewayServicer(gateway_pb2_grpc.GatewayServicer):
    service_name = "recsys.v1.Gateway"

    def __init__(self, recommender: Recommender, status_timeout_s: float = 2.0):
        self.recommender = recommender
        self.status_timeout_s = status_timeout_s

    async def Recommend(self, request, context):
        deadline = await _deadline(context)
        try:
            parsed = parse_recommend(request, deadline)
        except InvalidRequest as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        try:
            [result] = await self.recommender.recommend([parsed])
        except PeerError as exc:
            await context.abort(exc.code, str(exc))
        return to_response(result)

    async def GetModelStatus(self, request, context):
        peers = await self.recommender.peer_status(self.status_timeout_s)
        return common_pb2.GetModelStatusResponse(
            services=[common_pb2.ServiceModelStatus(service=self.service_name), *peers]
        )


async def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    if remaining is None:
        return None
    if remaining < MIN_USEFUL_TIME_S:
        await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "the request's deadline expired before it was served")
    return time.monotonic() + remaining
