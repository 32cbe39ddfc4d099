"""Gateway servicer: validates public requests, delegates to the Recommender, builds responses."""

from __future__ import annotations

import time

import grpc

from gateway.recommender import PeerError, Recommender, RecRequest, RecResult
from recsys.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from serving import errors, request_id
from serving.errors import InvalidArgument, Violations
from serving.user_features import feature_violations

MAX_K = 1000
DEFAULT_K = 10
MAX_USER_ID_BYTES = 256
MAX_EXCLUDED = 10_000
MAX_GENRE_NAMES = 64
MAX_GENRE_NAME_CHARS = 64
# The most movies one RecommendBatch may ask for (the sum of its k): the answer
# is one message, which the gateway sends up to about RESULT_BYTES each.
MAX_BATCH_RESULTS = 100_000
RESULT_BYTES = 256
# Below this much time left, the inner calls cannot finish: fail now.
MIN_USEFUL_TIME_S = 0.001
# The gateway stops waiting on its peers this much before the caller's deadline (at most
# a tenth of the time left), so its own answer, which names the tier that was slow or not
# ready, reaches the caller before the caller's deadline fires with a bare "Deadline Exceeded".
ANSWER_MARGIN_S = 0.05


def parse_recommend(request: gateway_pb2.RecommendRequest, deadline: float | None) -> RecRequest:
    """The request as the Recommender takes it; InvalidArgument naming every bad field."""
    problems = Violations()
    user_id = request.user_id
    if not user_id:
        problems.add("user_id", 'user_id is required, e.g. "42"')
    elif len(user_id.encode()) > MAX_USER_ID_BYTES:
        problems.add("user_id", f"user_id is {len(user_id.encode())} bytes; at most {MAX_USER_ID_BYTES}")
    features = None
    if request.HasField("user_features") and request.user_features.ByteSize():
        features = request.user_features
        problems.extend(feature_violations(features))
    k = _collect(problems, parse_k, request.k)
    excluded = _collect(problems, parse_excluded, request.exclude_item_ids)
    genre_filter = _collect(problems, parse_genre_filter, request)
    problems.raise_if_any()
    return RecRequest(
        user_id, k, request.exclude_seen, excluded, deadline, genre_filter, request_id.current.get(), features
    )


def _collect(problems: Violations, parse, *args):
    try:
        return parse(*args)
    except InvalidArgument as exc:
        problems.extend(exc.violations)
        return None


def parse_k(k: int) -> int:
    if k == 0:
        return DEFAULT_K
    if not 1 <= k <= MAX_K:
        raise InvalidArgument.of("k", f"k must be 1..{MAX_K} (0 means {DEFAULT_K}); got {k}")
    return k


def parse_excluded(ids) -> tuple[str, ...]:
    if len(ids) > MAX_EXCLUDED:
        raise InvalidArgument.of("exclude_item_ids", f"exclude_item_ids has {len(ids)} ids; at most {MAX_EXCLUDED}")
    return tuple(dict.fromkeys(ids))


def parse_genre_filter(request) -> common_pb2.GenreFilter | None:
    """The request's filter, or None when it filters nothing. Names are checked by ``check_genre_names``."""
    if not request.HasField("genre_filter"):
        return None
    f = request.genre_filter
    if not f.include_genres and not f.exclude_genres:
        return None
    problems = Violations()
    for list_name in ("include_genres", "exclude_genres"):
        names = getattr(f, list_name)
        if len(names) > MAX_GENRE_NAMES:
            problems.add(f"genre_filter.{list_name}", f"{list_name} has {len(names)} names; at most {MAX_GENRE_NAMES}")
            continue
        for i, name in enumerate(names):
            if not name or len(name) > MAX_GENRE_NAME_CHARS:
                problems.add(
                    f"genre_filter.{list_name}[{i}]",
                    f"{list_name}[{i}] must be a genre name of 1..{MAX_GENRE_NAME_CHARS} characters, e.g. \"Comedy\"",
                )
    problems.raise_if_any()
    return f


def check_genre_names(genre_filter: common_pb2.GenreFilter | None, known: tuple[str, ...]) -> None:
    """InvalidArgument naming each genre the model does not know, and the valid ones.

    ``known`` empty means the names could not be fetched: the index checks them then.
    """
    if genre_filter is None or not known:
        return
    lookup = {g.lower() for g in known}
    problems = Violations()
    for list_name in ("include_genres", "exclude_genres"):
        for i, name in enumerate(getattr(genre_filter, list_name)):
            if name.lower() not in lookup:
                problems.add(f"genre_filter.{list_name}[{i}]",
                             f"genre_filter: unknown genre {name[:40]!r}; known genres: {', '.join(known)}")
    problems.raise_if_any()


def to_response(result: RecResult) -> gateway_pb2.RecommendResponse:
    response = gateway_pb2.RecommendResponse(model_version=result.model_version, fallback=result.fallback)
    add_item = response.items.add
    for item_id, title, score in result.items:
        add_item(item_id=item_id, title=title, score=score)
    return response


class GatewayServicer(gateway_pb2_grpc.GatewayServicer):
    service_name = "recsys.v1.Gateway"

    def __init__(
        self, recommender: Recommender, *, max_batch_request: int = 1000, status_timeout_s: float = 2.0,
        expose_peer_addresses: bool = False,
    ):
        self.recommender = recommender
        self.max_batch_request = max_batch_request
        self.status_timeout_s = status_timeout_s
        self.expose_peer_addresses = expose_peer_addresses

    async def Recommend(self, request, context):
        deadline = await _deadline(context)
        try:
            parsed = parse_recommend(request, deadline)
            if parsed.genre_filter is not None:
                check_genre_names(parsed.genre_filter, await self._genre_names(deadline))
        except InvalidArgument as exc:
            await errors.abort_invalid(context, exc)
        try:
            [result] = await self.recommender.recommend([parsed])
        except PeerError as exc:
            await errors.abort(context, peer_status(exc))
        return to_response(result)

    async def RecommendBatch(self, request, context):
        deadline = await _deadline(context)
        n = len(request.requests)
        if not 1 <= n <= self.max_batch_request:
            await errors.abort_invalid_field(
                context, "requests", f"requests holds {n} entries; send 1..{self.max_batch_request} (split larger jobs)"
            )
        parsed = []
        problems = Violations()
        genres: tuple[str, ...] | None = None
        for i, r in enumerate(request.requests):
            try:
                parsed.append(parse_recommend(r, deadline))
                if parsed[-1].genre_filter is not None:
                    genres = await self._genre_names(deadline) if genres is None else genres
                    check_genre_names(parsed[-1].genre_filter, genres)
            except InvalidArgument as exc:
                problems.extend(exc.under(f"requests[{i}]").violations)
        if not problems.found and (total := sum(p.k for p in parsed)) > MAX_BATCH_RESULTS:
            problems.add("requests", f"requests ask for {total} movies in all (the sum of their k); at most "
                                     f"{MAX_BATCH_RESULTS} per RecommendBatch call fit one response: split the job")
        try:
            problems.raise_if_any()
        except InvalidArgument as exc:
            await errors.abort_invalid(context, exc)
        try:
            results = await self.recommender.recommend(parsed)
        except PeerError as exc:
            await errors.abort(context, peer_status(exc))
        return gateway_pb2.RecommendBatchResponse(responses=[to_response(r) for r in results])

    async def SimilarItems(self, request, context):
        deadline = await _deadline(context)
        problems = Violations()
        if not request.item_id:
            problems.add("item_id", 'item_id is required, e.g. "50"')
        k = _collect(problems, parse_k, request.k)
        excluded = _collect(problems, parse_excluded, request.exclude_item_ids)
        genre_filter = _collect(problems, parse_genre_filter, request)
        try:
            problems.raise_if_any()
            if genre_filter is not None:
                check_genre_names(genre_filter, await self._genre_names(deadline))
        except InvalidArgument as exc:
            await errors.abort_invalid(context, exc)
        timeout = self.recommender.default_timeout_s if deadline is None else deadline - time.monotonic()
        try:
            result = await self.recommender.similar_items(request.item_id, k, excluded, genre_filter, timeout)
        except PeerError as exc:
            await errors.abort(context, peer_status(exc))
        return gateway_pb2.SimilarItemsResponse(
            items=[gateway_pb2.ScoredItem(item_id=i, title=t, score=s) for i, t, s in result.items],
            model_version=result.model_version,
        )

    async def _genre_names(self, deadline: float | None) -> tuple[str, ...]:
        timeout = self.recommender.default_timeout_s if deadline is None else max(0.001, deadline - time.monotonic())
        return await self.recommender.genre_names(timeout)

    async def GetModelStatus(self, request, context):
        peers = await self.recommender.peer_status(self.status_timeout_s)
        if not self.expose_peer_addresses:
            # The internal topology is the operator's business, not any client's.
            for peer in peers:
                peer.ClearField("address")
        return gateway_pb2.GetModelStatusResponse(
            services=[common_pb2.ServiceModelStatus(service=self.service_name), *peers]
        )


# ErrorInfo.reason of a tier's failure, by the status code the gateway returns.
PEER_REASONS = {
    grpc.StatusCode.UNAVAILABLE: "TIER_UNAVAILABLE",
    grpc.StatusCode.DEADLINE_EXCEEDED: "TIER_DEADLINE_EXCEEDED",
    grpc.StatusCode.FAILED_PRECONDITION: "MODEL_VERSION_UNAVAILABLE",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "TIER_OVERLOADED",
}


def peer_status(exc: PeerError) -> grpc.Status:
    """A failure behind the gateway as the caller sees it: the message, plus where it happened."""
    if exc.code == grpc.StatusCode.INVALID_ARGUMENT:
        # A tier refused part of the request (e.g. an unknown genre name).
        return errors.bad_request(InvalidArgument.of(exc.field, str(exc)))
    reason = exc.reason or PEER_REASONS.get(exc.code)
    if reason is None:  # e.g. NOT_FOUND: the message says it all
        return errors.plain(exc.code, str(exc))
    metadata = {"tier": exc.tier} if exc.tier else {}
    if exc.shard is not None:
        metadata["shard"] = str(exc.shard)
    return errors.error_info(exc.code, str(exc), reason, metadata)


async def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    if remaining is None:
        return None
    if remaining < MIN_USEFUL_TIME_S:
        await errors.abort(context, errors.error_info(
            grpc.StatusCode.DEADLINE_EXCEEDED, "the request's deadline expired before it was served", "DEADLINE_EXPIRED"
        ))
    return time.monotonic() + remaining - min(ANSWER_MARGIN_S, 0.1 * remaining)
