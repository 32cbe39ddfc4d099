"""Composes the query and index tiers: user ids in, top-k movies out.

Concurrent Recommend calls are gathered by a MicroBatcher into one Search
call per index shard. A request that names only a user id needs no query-tier
call: the index looks the user's vector up in the same bundle version as the
items it searches (known users), or answers with the most popular items
(unknown users). Requests that describe a new user (user_features), and every
request when the index's bundle holds no user vectors, are embedded by the
query service first (one EmbedUsers call per batch), and the index is asked for
exactly the version the query service embedded with. If a tier does not hold
the version asked for, or the shards answer with different versions (a
roll-out in progress), we pin, for a short while, the newest version that the
tiers hold and ask again with it. A response never mixes versions.
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

from gateway.peers import Tier, TierNotReady
from recsys.internal.v1 import (
    admin_pb2, admin_pb2_grpc, index_service_pb2, index_service_pb2_grpc, query_service_pb2, query_service_pb2_grpc,
)
from recsys.v1 import common_pb2
from serving import errors, request_id, tracing
from serving.batching import MicroBatcher

log = logging.getLogger(__name__)

_NO_FEATURES = common_pb2.UserFeatures()

# How long to keep using an older common version after a mismatch before
# trying the query tier's newest again.
PIN_SECONDS = 1.0
# How long the index's genre names are trusted before asking again (a new
# model version may bring other genres).
GENRES_MAX_AGE_S = 5.0
# An upper bound on the bytes one result (item id, title, score) takes in a
# Search response: internal calls are split so that each response stays
# within the message size limit.
SEARCH_RESULT_BYTES = 256
# After an index answered that its bundle holds no user vectors (a version
# exported before they were shipped), known users go through the query tier
# for this long before the index is asked to look them up again.
LOOKUP_RETRY_S = 30.0
# Queries whose k differ more than this factor go to separate Search calls
# (every query of a call is searched with the call's largest k).
K_SPREAD_PER_CALL = 4


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
        query: Tier,
        index_shards: Sequence[Tier],
        *,
        max_batch: int,
        batch_wait_us: int,
        concurrency: int,
        default_timeout_s: float,
        max_message_bytes: int = 8 * 1024 * 1024,
        index_user_lookup: bool = True,
    ):
        self.query_tier = query
        self.index_user_lookup = index_user_lookup
        self._no_lookup_until = -LOOKUP_RETRY_S
        self.index_tiers = list(index_shards)
        self.query = query_service_pb2_grpc.QueryServiceStub(query.channel)
        self.index_shards = [index_service_pb2_grpc.IndexServiceStub(t.channel) for t in self.index_tiers]
        # Every backend server also serves recsys.internal.v1.ModelAdmin on the same channel.
        self.query_admin = admin_pb2_grpc.ModelAdminStub(query.channel)
        self.index_admins = [admin_pb2_grpc.ModelAdminStub(t.channel) for t in self.index_tiers]
        self.default_timeout_s = default_timeout_s
        self._pinned: tuple[str, float] | None = None
        self.search_results_per_call = max(1, max_message_bytes // SEARCH_RESULT_BYTES)
        self._genres: tuple[tuple[str, ...], float] = ((), -GENRES_MAX_AGE_S)
        self._genres_lock = asyncio.Lock()
        self.batcher: MicroBatcher[RecRequest, RecResult] = MicroBatcher(
            self._run_batch, max_batch=max_batch, max_wait_us=batch_wait_us, concurrency=concurrency, stage="gateway"
        )

    async def recommend(self, requests: list[RecRequest]) -> list[RecResult]:
        return await self.batcher.submit(requests)

    # ------------------------------------------------------------------ one batch

    async def _run_batch(self, batch: list[RecRequest]) -> list[RecResult | PeerError]:
        # Peers see one id per batch; this line ties it to the callers' ids. Reset
        # after: an idle caller's batch runs in the caller's own task (MicroBatcher).
        token = request_id.current.set(batch[0].request_id if len(batch) == 1 else request_id.new_id())
        if len(batch) > 1 and log.isEnabledFor(logging.DEBUG):
            log.debug("batch", extra={"request_ids": [r.request_id for r in batch]})
        try:
            return await self._run_batch_in_one_version(batch)
        finally:
            request_id.current.reset(token)

    async def _run_batch_in_one_version(self, batch: list[RecRequest]) -> list[RecResult | PeerError]:
        timeout = self._timeout(batch)
        version = self._pinned_version()
        try:
            return await self._answer(batch, version, timeout)
        except PeerError as exc:
            if exc.code != grpc.StatusCode.FAILED_PRECONDITION:
                raise
            # One tier does not hold the version the other used (a roll-out in
            # progress, or a version one tier refused), or the shards answered
            # with different versions: use the newest version all the tiers this
            # batch needs hold, for a while, instead of mixing embedding spaces.
            with_query = not all(self._index_looks_up(r) for r in batch)
            version = await self._common_version(timeout, with_query=with_query)
            log.warning("model versions differ between tiers; pinning the newest common one",
                        extra={"failed": str(exc), "pinned": version})
            self._pinned = (version, time.monotonic() + PIN_SECONDS)
        try:
            return await self._answer(batch, version, timeout)
        except PeerError as exc:
            if exc.code != grpc.StatusCode.FAILED_PRECONDITION:
                raise
            raise PeerError(grpc.StatusCode.UNAVAILABLE, f"model versions are changing on the tiers; retry ({exc})",
                            tier=exc.tier, shard=exc.shard, reason="MODEL_VERSIONS_CHANGING")

    def _index_looks_up(self, r: RecRequest) -> bool:
        """Whether the index takes ``r``'s vector from its own table (no query-tier call)."""
        return r.user_features is None and self.index_user_lookup and time.monotonic() >= self._no_lookup_until

    async def _answer(self, batch: list[RecRequest], version: str, timeout: float) -> list[RecResult | PeerError]:
        """Searches every request of the batch with ``version`` ("" = the newest): id-only requests straight
        at the index, the others with vectors from the query tier (both at once)."""
        direct = [i for i, r in enumerate(batch) if self._index_looks_up(r)]
        if len(direct) == len(batch):
            results = await self._search(batch, [None] * len(batch), version, timeout)
        else:
            direct_set = set(direct)
            embedded = [i for i in range(len(batch)) if i not in direct_set]
            parts = await asyncio.gather(
                self._search([batch[i] for i in direct], [None] * len(direct), version, timeout),
                self._embed_and_search([batch[i] for i in embedded], version, timeout),
            )
            results = [None] * len(batch)
            for positions, part in zip((direct, embedded), parts):
                for i, result in zip(positions, part):
                    results[i] = result
        # Versions whose bundle holds no user vectors: those users are embedded by the query tier, with that version.
        by_version: dict[str, list[int]] = {}
        for i, result in enumerate(results):
            if isinstance(result, _NeedsVector):
                by_version.setdefault(result.model_version, []).append(i)
        for needs_version, positions in by_version.items():
            self._no_lookup_until = time.monotonic() + LOOKUP_RETRY_S
            log.warning("the index holds no user vectors for this version; embedding known users with the query tier",
                        extra={"model_version": needs_version})
            redo = await self._embed_and_search([batch[i] for i in positions], needs_version, timeout)
            for i, result in zip(positions, redo):
                results[i] = result
        return results

    async def _embed_and_search(self, batch: list[RecRequest], version: str, timeout: float):
        embedded = await self._embed(batch, version, timeout)
        return await self._search(batch, embedded.per_request, embedded.model_version, timeout)

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

    async def _embed(self, batch: list[RecRequest], version: str, timeout: float) -> _Embedded:
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
        # Unknown users get the most popular items: no vector (and no TensorFlow
        # call) is needed for them. Seen lists stay in the index (exclude_seen by user id).
        request = query_service_pb2.EmbedUsersRequest(
            user_ids=user_ids, model_version=version, skip_unknown_users=True,
            user_features=features if any(r.user_features is not None for r in batch) else (),
        )
        response = await _call(self.query_tier, self.query.EmbedUsers, request, timeout)
        embeddings = response.embeddings
        return _Embedded(response, [embeddings[slot] for slot in slots])

    async def _search(
        self, batch: list[RecRequest], users: list[query_service_pb2.UserEmbedding | None], version: str, timeout: float
    ) -> list[RecResult | PeerError | _NeedsVector]:
        """Searches every shard for the batch; a request the index refuses fails alone.

        ``users[i]`` is request i's vector from the query tier, or None: the index looks it up by user id.
        """
        try:
            return await self._search_calls(batch, users, version, timeout)
        except PeerError as exc:
            if exc.code != grpc.StatusCode.INVALID_ARGUMENT or len(batch) == 1:
                raise
        # The gateway checks what it can before batching, so this is rare (e.g. a
        # genre a new version dropped): find the culprit by searching each request
        # alone with the vectors already embedded; the query tier is not asked again.
        outcomes = await asyncio.gather(
            *(self._search_calls([r], [user], version, timeout) for r, user in zip(batch, users)),
            return_exceptions=True,
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException) and not isinstance(outcome, PeerError):
                raise outcome
        return [o if isinstance(o, PeerError) else o[0] for o in outcomes]

    async def _search_calls(
        self, batch: list[RecRequest], users: list[query_service_pb2.UserEmbedding | None], version: str,
        timeout: float,
    ) -> list[RecResult | _NeedsVector]:
        """One Search call per shard for each chunk of the batch (see ``search_chunks``), all at once."""
        chunks = search_chunks([r.k for r in batch], self.search_results_per_call)
        answers = await _all(self._search_chunk(batch, users, chunk, version, timeout) for chunk in chunks)
        out: list[RecResult | _NeedsVector] = [None] * len(batch)  # type: ignore[list-item]
        for chunk, per_shard in zip(chunks, answers):
            answered = per_shard[0].model_version
            if any(resp.model_version != answered for resp in per_shard):
                # Possible only when no version was asked for (the newest): a roll-out reached some shards first.
                raise PeerError(grpc.StatusCode.FAILED_PRECONDITION, "index shards answered with different model "
                                f"versions ({sorted({r.model_version for r in per_shard})}): a roll-out is in progress",
                                tier="index")
            for qi, i in enumerate(chunk):
                user = users[i]
                results = [resp.results[qi] for resp in per_shard]
                if user is None:
                    lookup = results[0].user_lookup
                    if lookup not in (index_service_pb2.USER_LOOKUP_FOUND, index_service_pb2.USER_LOOKUP_UNKNOWN_USER):
                        out[i] = _NeedsVector(answered)
                        continue
                    fallback = lookup == index_service_pb2.USER_LOOKUP_UNKNOWN_USER
                else:
                    fallback = not (user.known or user.from_features)
                out[i] = RecResult(_merge_top_k(results, batch[i].k), answered, fallback)
        return out

    async def _search_chunk(
        self, batch: list[RecRequest], users: list[query_service_pb2.UserEmbedding | None], chunk: list[int],
        version: str, timeout: float,
    ) -> list[index_service_pb2.SearchResponse]:
        queries = []
        for i in chunk:
            r, user = batch[i], users[i]
            if user is None:  # the index takes the vector from its own table (most popular for unknown users)
                query = index_service_pb2.Query(exclude_item_ids=r.exclude_item_ids, genre_filter=r.genre_filter,
                                                user_id=r.user_id, lookup_user_vector=True, exclude_seen=r.exclude_seen)
                queries.append(query)
                continue
            excluded = r.exclude_item_ids
            if r.exclude_seen and user.from_features:
                excluded = (*excluded, *r.user_features.watched_item_ids)
            query = index_service_pb2.Query(exclude_item_ids=excluded, genre_filter=r.genre_filter)
            if user.known or user.from_features:
                query.vector.extend(user.values)
            else:
                query.most_popular = True
            if r.exclude_seen and user.known:
                query.user_id = r.user_id
                query.exclude_seen = True
            queries.append(query)
        request = index_service_pb2.SearchRequest(
            queries=queries, k=max(batch[i].k for i in chunk), model_version=version
        )
        return await _all(_call(tier, shard.Search, request, timeout)
                          for tier, shard in zip(self.index_tiers, self.index_shards))

    async def genre_names(self, timeout: float) -> tuple[str, ...]:
        """The genre names of the index's newest version, for checking filters before batching.

        Asked of the first index shard at most every GENRES_MAX_AGE_S; empty when
        it cannot be reached (the index then checks the names itself).
        """
        async with self._genres_lock:
            names, fetched_at = self._genres
            if time.monotonic() - fetched_at < GENRES_MAX_AGE_S:
                return names
            try:
                status = await _call(self.index_tiers[0], self.index_admins[0].GetModelStatus,
                                     admin_pb2.GetModelStatusRequest(), timeout)
            except PeerError as exc:
                log.warning("could not fetch the genre names from the index", extra={"failed": str(exc)})
                # Ask again in a second, not on every request while the index is down.
                self._genres = (names, time.monotonic() - GENRES_MAX_AGE_S + 1.0)
                return names
            newest = [v for s in status.services for v in s.versions if v.is_default]
            names = tuple(newest[0].genres) if newest else ()
            self._genres = (names, time.monotonic())
            return names

    async def _common_version(self, timeout: float, with_query: bool = True) -> str:
        """The newest version loaded on every index shard and (``with_query``) on the query tier."""
        request = admin_pb2.GetModelStatusRequest()
        peers = [(self.query_tier, self.query_admin)] if with_query else []
        peers += list(zip(self.index_tiers, self.index_admins))
        statuses = await asyncio.gather(*(_call(tier, stub.GetModelStatus, request, timeout) for tier, stub in peers))
        held = [_available(status) for status in statuses]
        common = set.intersection(*held)
        if not common:
            where = (f"on both tiers (query holds {sorted(held[0])}, index holds {[sorted(h) for h in held[1:]]})"
                     if with_query else f"on every index shard (they hold {[sorted(h) for h in held]})")
            raise PeerError(
                grpc.StatusCode.UNAVAILABLE,
                f"no model version is loaded {where}; wait for the roll-out to finish",
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
            *(_call(tier, s.GetItemEmbeddings, lookup, timeout) for tier, s in zip(self.index_tiers, self.index_shards))
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
                *(_call(tier, s.Search, request, timeout) for tier, s in zip(self.index_tiers, self.index_shards))
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
        request = admin_pb2.GetModelStatusRequest()
        peers = [(self.query_tier, self.query_admin)] + list(zip(self.index_tiers, self.index_admins))

        async def one(tier: Tier, stub):
            try:
                response = await _call(tier, stub.GetModelStatus, request, timeout)
            except PeerError as exc:
                return [common_pb2.ServiceModelStatus(service=tier.service, address=tier.target, error=str(exc))]
            for status in response.services:
                status.address = tier.target
            return list(response.services)

        return [s for group in await asyncio.gather(*(one(*peer) for peer in peers)) for s in group]


@dataclasses.dataclass(frozen=True)
class _NeedsVector:
    """The index was asked to look a user's vector up, but this version's bundle holds none."""

    model_version: str


@dataclasses.dataclass(frozen=True)
class _Embedded:
    response: query_service_pb2.EmbedUsersResponse
    per_request: list[query_service_pb2.UserEmbedding]  # aligned with the batch

    @property
    def model_version(self) -> str:
        return self.response.model_version


def _available(status: admin_pb2.GetModelStatusResponse) -> set[int]:
    return {
        int(v.version)
        for s in status.services
        for v in s.versions
        if v.state == common_pb2.MODEL_VERSION_STATE_AVAILABLE
    }


def search_chunks(ks: Sequence[int], results_per_call: int) -> list[list[int]]:
    """Groups request positions into Search calls: each call asks for at most
    ``results_per_call`` results (queries x its largest k), and mixes only ks
    within a factor K_SPREAD_PER_CALL of each other. One call in the common case."""
    chunks: list[list[int]] = []
    current: list[int] = []
    for i in sorted(range(len(ks)), key=ks.__getitem__):
        # ks ascend, so ks[i] is the largest k of the chunk if i joins it.
        if current and ((len(current) + 1) * ks[i] > results_per_call or ks[i] > K_SPREAD_PER_CALL * ks[current[0]]):
            chunks.append(current)
            current = []
        current.append(i)
    if current:
        chunks.append(current)
    return chunks


def _merge_top_k(results: Sequence[index_service_pb2.SearchResult], k: int) -> list[Scored]:
    """Merges per-shard top lists (each sorted by score) into the global top k."""
    if len(results) == 1:
        r = results[0]
        return list(zip(r.item_ids[:k], r.titles[:k], r.scores[:k]))
    streams = [zip(r.scores, r.item_ids, r.titles) for r in results]
    # Equal scores are ordered by item id, as each index orders its own ties.
    merged = heapq.merge(*streams, key=lambda row: (-row[0], row[1]))
    return [(item_id, title, score) for score, item_id, title in itertools.islice(merged, k)]


async def _all(coroutines) -> list:
    """``asyncio.gather`` of the coroutines, but a lone one is awaited in place: a request alone
    (one chunk, one shard) then pays for no task creation and no extra event-loop turns."""
    coroutines = list(coroutines)
    if len(coroutines) == 1:
        return [await coroutines[0]]
    return await asyncio.gather(*coroutines)


async def _call(tier: Tier, method, request, timeout: float):
    """One inner call to ``tier``, within ``timeout`` seconds; errors become PeerErrors naming the tier.

    A tier without a ready replica (starting, restarting, reconnecting) is waited
    for within the caller's time, and the call itself waits for a connection
    (``wait_for_ready``) instead of failing while one is being made.
    """
    started = time.monotonic()
    try:
        await tier.wait_ready(timeout)
    except TierNotReady as exc:
        code = grpc.StatusCode.DEADLINE_EXCEEDED if exc.deadline_expired else grpc.StatusCode.UNAVAILABLE
        raise PeerError(code, str(exc), **_where(tier.name)) from None
    timeout = max(0.001, timeout - (time.monotonic() - started))
    peer = tier.name
    try:
        if tracing.enabled:
            with tracing.client_span(peer, _method_name(method, request), **_span_attributes(peer)) as trace_metadata:
                return await method(request, timeout=timeout, wait_for_ready=True,
                                    metadata=(*request_id.outgoing_metadata(), *trace_metadata))
        return await method(request, timeout=timeout, metadata=request_id.outgoing_metadata(), wait_for_ready=True)
    except grpc.aio.AioRpcError as exc:
        code = exc.code()
        where = _where(peer)
        if code == grpc.StatusCode.DEADLINE_EXCEEDED and not tier.ready:
            raise PeerError(code, f"{peer} was not ready within the request's deadline: no replica of "
                                  f"{tier.target} reported SERVING (starting or reconnecting)", **where) from exc
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
    """``/recsys.internal.v1.IndexService/Search`` for a stub's method (its path), else the request's type."""
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
