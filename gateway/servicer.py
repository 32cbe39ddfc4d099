"""Gateway servicer: validates public requests, delegates to the Recommender, builds responses."""

from __future__ import annotations

import time

import grpc

from gateway.recommender import PeerError, Recommender, RecRequest, RecResult
from recsys.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from serving import request_id
from serving.user_features import feature_problem

MAX_K = 1000
DEFAULT_K = 10
MAX_USER_ID_BYTES = 256
MAX_EXCLUDED = 10_000
MAX_GENRE_NAMES = 64
# The most movies one RecommendBatch may ask for (the sum of its k): the answer
# is one message, which the gateway sends up to about RESULT_BYTES each.
MAX_BATCH_RESULTS = 100_000
RESULT_BYTES = 256
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
    features = None
    if request.HasField("user_features") and request.user_features.ByteSize():
        features = request.user_features
        if (problem := feature_problem(features)) is not None:
            raise InvalidRequest(f"user_features: {problem}")
    return RecRequest(
        user_id,
        parse_k(request.k),
        request.exclude_seen,
        parse_excluded(request.exclude_item_ids),
        deadline,
        parse_genre_filter(request),
        request_id.current.get(),
        features,
    )


def parse_k(k: int) -> int:
    if k == 0:
        return DEFAULT_K
    if not 1 <= k <= MAX_K:
        raise InvalidRequest(f"k must be 1..{MAX_K} (0 means {DEFAULT_K}); got {k}")
    return k


def parse_excluded(ids) -> tuple[str, ...]:
    if len(ids) > MAX_EXCLUDED:
        raise InvalidRequest(f"exclude_item_ids has {len(ids)} ids; at most {MAX_EXCLUDED}")
    return tuple(dict.fromkeys(ids))


def parse_genre_filter(request) -> common_pb2.GenreFilter | None:
    """The request's filter, or None when it filters nothing. Names are checked by ``check_genre_names``."""
    if not request.HasField("genre_filter"):
        return None
    f = request.genre_filter
    names = [*f.include_genres, *f.exclude_genres]
    if not names:
        return None
    if len(names) > MAX_GENRE_NAMES or any(not n or len(n) > 64 for n in names):
        raise InvalidRequest(f"genre_filter takes at most {MAX_GENRE_NAMES} non-empty genre names of up to 64 chars")
    return f


def check_genre_names(genre_filter: common_pb2.GenreFilter | None, known: tuple[str, ...]) -> None:
    """InvalidRequest naming the valid genres if the filter names one the model does not know.

    ``known`` empty means the names could not be fetched: the index checks them then.
    """
    if genre_filter is None or not known:
        return
    lookup = {g.lower() for g in known}
    for name in (*genre_filter.include_genres, *genre_filter.exclude_genres):
        if name.lower() not in lookup:
            raise InvalidRequest(f"genre_filter: unknown genre {name[:40]!r}; known genres: {', '.join(known)}")


def to_response(result: RecResult) -> gateway_pb2.RecommendResponse:
    response = gateway_pb2.RecommendResponse(model_version=result.model_version, fallback=result.fallback)
    add_item = response.items.add
    for item_id, title, score in result.items:
        add_item(item_id=item_id, title=title, score=score)
    return response


class GatewayServicer(gateway_pb2_grpc.GatewayServicer):
    service_name = "recsys.v1.Gateway"

    def __init__(self, recommender: Recommender, *, max_batch_request: int = 1000, status_timeout_s: float = 2.0):
        self.recommender = recommender
        self.max_batch_request = max_batch_request
        self.status_timeout_s = status_timeout_s

    async def Recommend(self, request, context):
        deadline = await _deadline(context)
        try:
            parsed = parse_recommend(request, deadline)
            if parsed.genre_filter is not None:
                check_genre_names(parsed.genre_filter, await self._genre_names(deadline))
        except InvalidRequest as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        try:
            [result] = await self.recommender.recommend([parsed])
        except PeerError as exc:
            await context.abort(exc.code, str(exc))
        return to_response(result)

    async def RecommendBatch(self, request, context):
        deadline = await _deadline(context)
        n = len(request.requests)
        if not 1 <= n <= self.max_batch_request:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"requests holds {n} entries; send 1..{self.max_batch_request} (split larger jobs)",
            )
        parsed = []
        genres: tuple[str, ...] | None = None
        for i, r in enumerate(request.requests):
            try:
                parsed.append(parse_recommend(r, deadline))
                if parsed[-1].genre_filter is not None:
                    genres = await self._genre_names(deadline) if genres is None else genres
                    check_genre_names(parsed[-1].genre_filter, genres)
            except InvalidRequest as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"requests[{i}]: {exc}")
        total = sum(p.k for p in parsed)
        if total > MAX_BATCH_RESULTS:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"requests ask for {total} movies in all (the sum of their k); at most {MAX_BATCH_RESULTS} per "
                "RecommendBatch call fit one response: split the job",
            )
        try:
            results = await self.recommender.recommend(parsed)
        except PeerError as exc:
            await context.abort(exc.code, str(exc))
        return gateway_pb2.RecommendBatchResponse(responses=[to_response(r) for r in results])

    async def SimilarItems(self, request, context):
        deadline = await _deadline(context)
        try:
            if not request.item_id:
                raise InvalidRequest('item_id is required, e.g. "50"')
            k = parse_k(request.k)
            excluded = parse_excluded(request.exclude_item_ids)
            genre_filter = parse_genre_filter(request)
            if genre_filter is not None:
                check_genre_names(genre_filter, await self._genre_names(deadline))
        except InvalidRequest as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        timeout = self.recommender.default_timeout_s if deadline is None else deadline - time.monotonic()
        try:
            result = await self.recommender.similar_items(request.item_id, k, excluded, genre_filter, timeout)
        except PeerError as exc:
            await context.abort(exc.code, str(exc))
        return gateway_pb2.SimilarItemsResponse(
            items=[gateway_pb2.ScoredItem(item_id=i, title=t, score=s) for i, t, s in result.items],
            model_version=result.model_version,
        )

    async def _genre_names(self, deadline: float | None) -> tuple[str, ...]:
        timeout = self.recommender.default_timeout_s if deadline is None else max(0.001, deadline - time.monotonic())
        return await self.recommender.genre_names(timeout)

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
