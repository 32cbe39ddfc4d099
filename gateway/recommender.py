"""Composes the query and index tiers: user ids in, top-k movies out.

Concurrent Recommend calls are gathered by a MicroBatcher into one EmbedUsers
call and one Search call per index shard. Both calls use one model version:
the index is asked for exactly the version the query service embedded with,
and if it does not hold it (a roll-out in progress) we pin, for a short while,
the newest version that both tiers hold and embed again with it. A response
never mixes versions.
"""

from __future__ import annotations

import asyncio
import dataclasses
import heapq
import itertools
import logging
import time
from collections.abc import Sequence

import grpc

from recsys.v1 import common_pb2, index_service_pb2, index_service_pb2_grpc, query_service_pb2, query_service_pb2_grpc
from serving import errors, request_id, tracing
from serving.batching import MicroBatcher

log = logging.getLogger(__name__)

_NO_FEATURES = common_pb2.UserFeatures()

# How long to keep using an older common version after a mismatch before
# trying the query tier's newest again.
PIN_SECONDS = 1.0


@dataclasses.dataclass(frozen=True)
class RecRequest:
    user_id: str
    k: int
    exclude_seen: bool
    exclude_item_ids: tuple[str, ...]
    deadline: float | None  # time.monotonic() by which the caller needs the answer
    genre_filter: common_pb2.GenreFilter | None = None
    request_id: str = ""
    user_features: common_pb2.UserFeatures | None = None  # for a user the model does not know


# (item_id, title, score): plain tuples, built straight from the index's columns.
Scored = tuple[str, str, float]


@dataclasses.dataclass(frozen=True)
class RecResult:
    items: list[Scored]
    model_version: str
    fallback: bool


class PeerError(Exception):
    """A peer failed; carries the status code to return to our caller and where it failed.

    ``tier`` ("query" or "index") and ``shard`` say which peer; ``reason`` overrides
    the ErrorInfo reason the gateway derives from the code; ``field`` is the
    request field a peer's INVALID_ARGUMENT names (e.g. ``genre_filter.include_genres[0]``).
    """

    def __init__(self, code: grpc.StatusCode, message: str, *, tier: str = "", shard: int | None = None,
                 reason: str = "", field: str = ""):
        super().__init__(message)
        self.code = code
        self.tier, self.shard, self.reason, self.field = tier, shard, reason, field


class Recommender:
    def __init__(
        self,
        query: query_service_pb2_grpc.QueryServiceStub,
        index_shards: Sequence[index_service_pb2_grpc.IndexServiceStub],
        *,
        max_batch: int,
        batch_wait_us: int,
        concurrency: int,
        default_timeout_s: float,
        query_target: str = "",
        index_targets: Sequence[str] = (),
    ):
        self.query = query
        self.index_shards = list(index_shards)
        # Only for status reports: where each peer was reached.
        self.query_target = query_target
        self.index_targets = list(index_targets) or [""] * len(self.index_shards)
        self.default_timeout_s = default_timeout_s
        self._pinned: tuple[str, float] | None = None
        self.batcher: MicroBatcher[RecRequest, RecResult] = MicroBatcher(
            self._run_batch, max_batch=max_batch, max_wait_us=batch_wait_us, concurrency=concurrency, stage="gateway"
        )

    async def recommend(self, requests: list[RecRequest]) -> list[RecResult]:
        return await self.batcher.submit(requests)

    # ------------------------------------------------------------------ one batch

    async def _run_batch(self, batch: list[RecRequest]) -> list[RecResult | PeerError]:
        # Peers see one id per batch; this line ties it to the callers' ids.
        request_id.current.set(batch[0].request_id if len(batch) == 1 else request_id.new_id())
        if len(batch) > 1 and log.isEnabledFor(logging.DEBUG):
            log.debug("batch", extra={"request_ids": [r.request_id for r in batch]})
        try:
            return await self._run_batch_once(batch)
        except PeerError as exc:
            if exc.code != grpc.StatusCode.INVALID_ARGUMENT or len(batch) == 1:
                raise
        # One request the index refused (e.g. an unknown genre) must not fail the
        # others it was batched with: answer each on its own.
        outcomes = await asyncio.gather(*(self._run_batch_once([r]) for r in batch), return_exceptions=True)
        return [o[0] if isinstance(o, list) else o for o in outcomes]

    async def _run_batch_once(self, batch: list[RecRequest]) -> list[RecResult]:
        timeout = self._timeout(batch)
        version = self._pinned_version()
        try:
            return await self._search(batch, await self._embed(batch, version, timeout), timeout)
        except PeerError as exc:
            if exc.code != grpc.StatusCode.FAILED_PRECONDITION:
                raise
            # One tier does not hold the version the other used (a roll-out in
            # progress, or a version one tier refused): use the newest version
            # both hold, for a while, instead of mixing embedding spaces.
            version = await self._common_version(timeout)
            log.warning("model versions differ between tiers; pinning the newest common one",
                        extra={"failed": str(exc), "pinned": version})
            self._pinned = (version, time.monotonic() + PIN_SECONDS)
        try:
            return await self._search(batch, await self._embed(batch, version, timeout), timeout)
        except PeerError as exc:
            if exc.code != grpc.StatusCode.FAILED_PRECONDITION:
                raise
            raise PeerError(grpc.StatusCode.UNAVAILABLE, f"model versions are changing on the tiers; retry ({exc})",
                            tier=exc.tier, shard=exc.shard, reason="MODEL_VERSIONS_CHANGING")

    def _timeout(self, batch: list[RecRequest]) -> float:
        deadlines = [r.deadline for r in batch if r.deadline is not None]
        if len(deadlines) < len(batch):
            return self.default_timeout_s
        return max(0.001, max(deadlines) - time.monotonic())

    def _pinned_version(self) -> str:
        if self._pinned and time.monotonic() < self._pinned[1]:
            return self._pinned[0]
        self._pinned = None
        return ""

    async def _embed(self, batch: list[RecRequest], version: str, timeout: float):
        # One entry per distinct user id; a request carrying features gets its own
        # entry (two new users may share a placeholder id but not their features).
        user_ids: list[str] = []
        features: list[common_pb2.UserFeatures] = []
        entry_of: dict[str, int] = {}
        slots = []
        for r in batch:
            if r.user_features is None and (slot := entry_of.get(r.user_id)) is not None:
                slots.append(slot)
                continue
            slots.append(len(user_ids))
            if r.user_features is None:
                entry_of[r.user_id] = len(user_ids)
            user_ids.append(r.user_id)
            features.append(r.user_features or _NO_FEATURES)
        request = query_service_pb2.EmbedUsersRequest(
            user_ids=user_ids, model_version=version, include_seen=any(r.exclude_seen for r in batch),
            user_features=features if any(r.user_features is not None for r in batch) else (),
        )
        response = await _call("query service", self.query.EmbedUsers, request, timeout)
        embeddings = response.embeddings
        return _Embedded(response, [embeddings[slot] for slot in slots])

    async def _search(self, batch: list[RecRequest], embedded: _Embedded, timeout: float) -> list[RecResult]:
        queries = []
        for r, user in zip(batch, embedded.per_request):
            excluded = list(r.exclude_item_ids)
            if r.exclude_seen:
                excluded.extend(user.seen_item_ids)
                if user.from_features:
                    excluded.extend(r.user_features.watched_item_ids)
            query = index_service_pb2.Query(exclude_item_ids=excluded, genre_filter=r.genre_filter)
            if user.known or user.from_features:
                query.vector.extend(user.values)
            else:
                query.most_popular = True
            queries.append(query)
        request = index_service_pb2.SearchRequest(
            queries=queries, k=max(r.k for r in batch), model_version=embedded.model_version
        )
        responses = await asyncio.gather(
            *(_call(f"index shard {i}", shard.Search, request, timeout) for i, shard in enumerate(self.index_shards))
        )
        out = []
        for qi, (r, user) in enumerate(zip(batch, embedded.per_request)):
            merged = _merge_top_k([resp.results[qi] for resp in responses], r.k)
            out.append(RecResult(merged, embedded.model_version, fallback=not (user.known or user.from_features)))
        return out

    async def _common_version(self, timeout: float) -> str:
        """The newest version loaded on the query tier and on every index shard."""
        request = common_pb2.BackendModelStatusRequest()
        statuses = await asyncio.gather(
            _call("query service", self.query.GetModelStatus, request, timeout),
            *(_call(f"index shard {i}", s.GetModelStatus, request, timeout) for i, s in enumerate(self.index_shards)),
        )
        held = [_available(status) for status in statuses]
        common = set.intersection(*held)
        if not common:
            raise PeerError(
                grpc.StatusCode.UNAVAILABLE,
                f"no model version is loaded on both tiers (query holds {sorted(held[0])}, index holds "
                f"{[sorted(h) for h in held[1:]]}); wait for the roll-out to finish",
                reason="NO_COMMON_MODEL_VERSION",
            )
        return str(max(common))

    # ------------------------------------------------------------------ item to item

    async def similar_items(
        self, item_id: str, k: int, exclude: tuple[str, ...], genre_filter: common_pb2.GenreFilter | None,
        timeout: float,
    ) -> RecResult:
        """The k items whose embeddings score highest against ``item_id``'s (itself excluded)."""
        lookup = index_service_pb2.GetItemEmbeddingsRequest(item_ids=[item_id])
        answers = await asyncio.gather(
            *(_call(f"index shard {i}", s.GetItemEmbeddings, lookup, timeout) for i, s in enumerate(self.index_shards))
        )
        found = [(a.model_version, item) for a in answers for item in a.items if item.found]
        if not found:
            raise PeerError(grpc.StatusCode.NOT_FOUND, f"item_id {item_id[:64]!r} is not in the catalog")
        version, item = found[0]
        query = index_service_pb2.Query(
            vector=item.values, exclude_item_ids=[item_id, *exclude], genre_filter=genre_filter
        )
        request = index_service_pb2.SearchRequest(queries=[query], k=k, model_version=version)
        try:
            responses = await asyncio.gather(
                *(_call(f"index shard {i}", s.Search, request, timeout) for i, s in enumerate(self.index_shards))
            )
        except PeerError as exc:
            if exc.code == grpc.StatusCode.FAILED_PRECONDITION:
                raise PeerError(grpc.StatusCode.UNAVAILABLE, f"index shards are switching model versions; retry ({exc})",
                                tier=exc.tier, shard=exc.shard, reason="MODEL_VERSIONS_CHANGING")
            raise
        return RecResult(_merge_top_k([r.results[0] for r in responses], k), version, fallback=False)

    # ------------------------------------------------------------------ status

    async def peer_status(self, timeout: float) -> list[common_pb2.ServiceModelStatus]:
        """Each peer's own status, tagged with the target the gateway reaches it at."""
        request = common_pb2.BackendModelStatusRequest()
        peers = [("recsys.v1.QueryService", self.query_target, self.query)] + [
            ("recsys.v1.IndexService", target, stub) for target, stub in zip(self.index_targets, self.index_shards)
        ]

        async def one(name, target, stub):
            try:
                response = await _call(name, stub.GetModelStatus, request, timeout)
            except PeerError as exc:
                return [common_pb2.ServiceModelStatus(service=name, address=target, error=str(exc))]
            for status in response.services:
                status.address = target
            return list(response.services)

        return [s for group in await asyncio.gather(*(one(*peer) for peer in peers)) for s in group]


@dataclasses.dataclass(frozen=True)
class _Embedded:
    response: query_service_pb2.EmbedUsersResponse
    per_request: list[query_service_pb2.UserEmbedding]  # aligned with the batch

    @property
    def model_version(self) -> str:
        return self.response.model_version


def _available(status: common_pb2.BackendModelStatusResponse) -> set[int]:
    return {
        int(v.version)
        for s in status.services
        for v in s.versions
        if v.state == common_pb2.MODEL_VERSION_STATE_AVAILABLE
    }


def _merge_top_k(results: Sequence[index_service_pb2.SearchResult], k: int) -> list[Scored]:
    """Merges per-shard top lists (each sorted by score) into the global top k."""
    if len(results) == 1:
        r = results[0]
        return list(zip(r.item_ids[:k], r.titles[:k], r.scores[:k]))
    streams = [zip(r.scores, r.item_ids, r.titles) for r in results]
    # Equal scores are ordered by item id, as each index orders its own ties.
    merged = heapq.merge(*streams, key=lambda row: (-row[0], row[1]))
    return [(item_id, title, score) for score, item_id, title in itertools.islice(merged, k)]


async def _call(peer: str, method, request, timeout: float):
    try:
        if tracing.enabled:
            with tracing.client_span(peer, _method_name(method, request), **_span_attributes(peer)) as trace_metadata:
                return await method(request, timeout=timeout,
                                    metadata=(*request_id.outgoing_metadata(), *trace_metadata))
        return await method(request, timeout=timeout, metadata=request_id.outgoing_metadata())
    except grpc.aio.AioRpcError as exc:
        code = exc.code()
        where = _where(peer)
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            raise PeerError(code, f"{peer}: {exc.details()}", field=_request_field(exc), **where) from exc
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.FAILED_PRECONDITION,
                    grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.CANCELLED):
            raise PeerError(code, f"{peer}: {exc.details()}", **where) from exc
        # Anything else is a fault of that peer, not of the caller: report the peer
        # as unavailable (retryable) rather than passing INTERNAL/UNKNOWN through.
        raise PeerError(grpc.StatusCode.UNAVAILABLE, f"{peer} failed with {code.name}: {exc.details()}",
                        **where) from exc


def _where(peer: str) -> dict:
    """``"index shard 1"`` -> tier "index", shard 1; ``"query service"`` -> tier "query"."""
    tier, _, shard = peer.partition(" shard ")
    return {"tier": tier.split()[0], "shard": int(shard) if shard.isdigit() else None}


def _method_name(method, request) -> str:
    """``/recsys.v1.IndexService/Search`` for a stub's method (its path), else the request's type."""
    path = getattr(method, "_method", None)
    return path.decode() if isinstance(path, bytes) else type(request).__name__


def _span_attributes(peer: str) -> dict:
    where = _where(peer)
    return {"recsys.tier": where["tier"], **({"recsys.shard": where["shard"]} if where["shard"] is not None else {})}


def _request_field(exc: grpc.aio.AioRpcError) -> str:
    """The bad field a peer's BadRequest names, as a field of the caller's request.

    An index query's ``genre_filter`` is the caller's, so ``queries[3].genre_filter.include_genres[0]``
    is the caller's ``genre_filter.include_genres[0]``.
    """
    for detail in errors.details_of(exc):
        for violation in getattr(detail, "field_violations", ()):
            return violation.field.partition(".")[2] if violation.field.startswith("queries[") else violation.field
    return ""
