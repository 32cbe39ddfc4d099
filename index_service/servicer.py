"""IndexService: validates Search requests and answers them from the item index."""

from __future__ import annotations

import grpc
import numpy as np

from index_service.index import ItemIndex
from recsys.internal.v1 import index_service_pb2, index_service_pb2_grpc
from serving import errors, tracing
from serving.admin import ModelAdminMixin
from serving.lifecycle import ModelManager, VersionUnavailable, parse_version

MAX_K = 1000
DEFAULT_K = 10


class InvalidRequest(ValueError):
    """The request is malformed; the message says what is allowed, ``field`` which field it is."""

    def __init__(self, message: str, field: str):
        super().__init__(message)
        self.field = field


class IndexServicer(ModelAdminMixin, index_service_pb2_grpc.IndexServiceServicer):
    service_name = "recsys.internal.v1.IndexService"

    def __init__(
        self,
        manager: ModelManager[ItemIndex],
        *,
        max_batch: int,
        max_excluded: int,
        allow_reload: bool,
        shard_index: int = 0,
        num_shards: int = 1,
    ):
        self.manager = manager
        self.max_batch = max_batch
        self.max_excluded = max_excluded
        self.allow_reload = allow_reload
        self.shard_index = shard_index
        self.num_shards = num_shards

    def _status(self):
        # Each loaded version's genre names, so the gateway can check a genre
        # filter before any call is batched.
        status = super()._status()
        loaded = set(self.manager.versions)
        for entry in status.versions:
            if int(entry.version) in loaded:
                try:
                    entry.genres.extend(self.manager.get(int(entry.version))[1].genre_names)
                except VersionUnavailable:  # unloaded since
                    pass
        return status

    async def Search(self, request, context):
        version, index = await self._model(request.model_version, context)
        try:
            k, vectors, popular, excluded, filters, lookups = self._parse(request, index)
        except InvalidRequest as exc:
            await errors.abort_invalid_field(context, exc.field, str(exc))
        if tracing.enabled:
            with tracing.span("ScaNN search", **{"recsys.queries": len(vectors), "recsys.k": k, "recsys.exact": request.exact}):
                results = search(index, k, vectors, popular, excluded, filters, exact=request.exact)
        else:
            results = search(index, k, vectors, popular, excluded, filters, exact=request.exact)
        for i in np.flatnonzero(lookups).tolist():
            if lookups[i] == index_service_pb2.USER_LOOKUP_NOT_IN_BUNDLE:
                results[i] = index_service_pb2.SearchResult()  # the caller embeds the user and asks again
            results[i].user_lookup = int(lookups[i])
        return index_service_pb2.SearchResponse(
            results=results,
            model_version=str(version),
            shard_index=self.shard_index,
            num_shards=self.num_shards,
        )

    async def GetItemEmbeddings(self, request, context):
        if not 1 <= len(request.item_ids) <= self.max_batch:
            await errors.abort_invalid_field(
                context, "item_ids", f"send 1..{self.max_batch} item_ids; got {len(request.item_ids)}"
            )
        version, index = await self._model(request.model_version, context)
        items = index.items
        out = []
        for item_id, row in zip(request.item_ids, items.row_of.rows(request.item_ids).tolist()):
            if row < 0:
                out.append(index_service_pb2.ItemEmbedding(item_id=item_id, found=False))
            else:
                out.append(index_service_pb2.ItemEmbedding(
                    item_id=item_id, found=True, values=items.embeddings[row], title=items.titles[row]
                ))
        return index_service_pb2.GetItemEmbeddingsResponse(items=out, model_version=str(version))

    async def _model(self, requested: str, context) -> tuple[int, ItemIndex]:
        try:
            return self.manager.get(parse_version(requested))
        except ValueError as exc:
            await errors.abort_invalid_field(context, "model_version", str(exc))
        except VersionUnavailable as exc:
            await errors.abort(context, errors.error_info(
                grpc.StatusCode.FAILED_PRECONDITION, f"{exc}; use one of the loaded versions (vectors of one "
                "version are meaningless against another's items)", "MODEL_VERSION_NOT_LOADED",
                {"requested": exc.requested, "loaded": ",".join(map(str, exc.available))},
            ))

    def _parse(self, request, index: ItemIndex):
        queries = request.queries
        if not queries:
            raise InvalidRequest("queries is empty: send 1 or more queries", "queries")
        if len(queries) > self.max_batch:
            raise InvalidRequest(f"{len(queries)} queries in one call; at most {self.max_batch}: split the batch", "queries")
        k = request.k or DEFAULT_K
        if not 1 <= k <= MAX_K:
            raise InvalidRequest(f"k must be 1..{MAX_K} (0 means {DEFAULT_K}); got {request.k}", "k")
        dim = index.dim
        vectors = np.zeros((len(queries), dim), dtype=np.float32)
        popular = np.zeros(len(queries), dtype=bool)
        excluded: list[np.ndarray] = [_NO_ROWS] * len(queries)
        filters: list[tuple[int, int] | None] = [None] * len(queries)
        seen_of: dict[str, list[int]] = {}  # user id -> the queries that exclude what that user saw
        lookup_of: dict[str, list[int]] = {}  # user id -> the queries searched with that user's vector
        for i, query in enumerate(queries):
            if query.lookup_user_vector:
                if query.most_popular or len(query.vector):
                    raise InvalidRequest(f"queries[{i}]: lookup_user_vector takes the vector from user_id: leave vector "
                                         "and most_popular unset", f"queries[{i}].lookup_user_vector")
                if not query.user_id:
                    raise InvalidRequest(f"queries[{i}]: lookup_user_vector needs the user_id to look up",
                                         f"queries[{i}].user_id")
                lookup_of.setdefault(query.user_id, []).append(i)
            elif query.most_popular:
                if len(query.vector):
                    raise InvalidRequest(f"queries[{i}]: set either vector or most_popular, not both", f"queries[{i}].vector")
                popular[i] = True
            else:
                if len(query.vector) != dim:
                    raise InvalidRequest(
                        f"queries[{i}].vector has {len(query.vector)} values; this index (model version "
                        f"{index.version}) needs {dim}", f"queries[{i}].vector"
                    )
                vectors[i] = query.vector
            if query.exclude_item_ids:
                if len(query.exclude_item_ids) > self.max_excluded:
                    raise InvalidRequest(
                        f"queries[{i}] excludes {len(query.exclude_item_ids)} items; at most {self.max_excluded}",
                        f"queries[{i}].exclude_item_ids",
                    )
                rows = index.items.row_of.rows(query.exclude_item_ids)
                excluded[i] = rows[rows >= 0]
            if query.exclude_seen and query.user_id:
                seen_of.setdefault(query.user_id, []).append(i)
            if query.HasField("genre_filter"):
                try:
                    masks = (index.genre_mask(query.genre_filter.include_genres),
                             index.genre_mask(query.genre_filter.exclude_genres))
                except ValueError as exc:
                    raise InvalidRequest(f"queries[{i}].genre_filter: {exc}", f"queries[{i}].genre_filter") from exc
                filters[i] = masks if any(masks) else None
        lookups = np.zeros(len(queries), dtype=np.int8)  # UserLookup of each query (0: did not ask)
        if lookup_of:
            if index.users is None:
                found_vectors, found = np.zeros((len(lookup_of), dim), dtype=np.float32), None
            else:
                # One id lookup for the whole batch, in the same version's table as the items.
                found_vectors, found = index.users.lookup(list(lookup_of))
            for u, queries_of_user in enumerate(lookup_of.values()):
                for i in queries_of_user:
                    if found is not None and found[u]:
                        vectors[i], lookups[i] = found_vectors[u], index_service_pb2.USER_LOOKUP_FOUND
                    else:
                        popular[i] = True
                        lookups[i] = (index_service_pb2.USER_LOOKUP_NOT_IN_BUNDLE if found is None
                                      else index_service_pb2.USER_LOOKUP_UNKNOWN_USER)
        if seen_of and index.seen is not None:
            # One id lookup for the whole batch; the lists are row numbers already.
            for rows, queries_of_user in zip(index.seen.of(list(seen_of)), seen_of.values()):
                for i in queries_of_user:
                    excluded[i] = np.concatenate([excluded[i], rows]) if excluded[i].size else rows
        if not np.isfinite(vectors).all():
            bad = int(np.flatnonzero(~np.isfinite(vectors).all(axis=1))[0])
            raise InvalidRequest(f"queries[{bad}].vector holds NaN or Inf; every value must be finite", f"queries[{bad}].vector")
        return k, vectors, popular, excluded, filters, lookups


_NO_ROWS = np.zeros(0, dtype=np.int64)


def search(
    index: ItemIndex,
    k: int,
    vectors: np.ndarray,
    popular: np.ndarray,
    excluded: list[np.ndarray],
    filters: list[tuple[int, int] | None],
    exact: bool,
) -> list[index_service_pb2.SearchResult]:
    """Top-k per query with exclusions and genre filters; exactly k whenever the catalog allows.

    ``excluded[i]`` holds query i's excluded rows (duplicates allowed).
    Unfiltered vector queries go to ScaNN as one batch, over-fetching by the
    largest number of excluded items among them, and are cut to k in one
    vectorised step; filtered ones are searched one by one with an over-fetch
    sized by the filter's selectivity.
    """
    results: list[index_service_pb2.SearchResult | None] = [None] * len(vectors)
    plain = [i for i in range(len(vectors)) if not popular[i] and filters[i] is None]
    if plain:
        fetch = k + max(len(excluded[i]) for i in plain)
        rows, scores = index.search(vectors[plain], fetch, exact=exact)
        keep = _first_k_kept(rows, [excluded[i] for i in plain], k, len(index))
        for i, result in zip(plain, _results(index, rows[keep], scores[keep], keep.sum(axis=1))):
            results[i] = result
    for i in range(len(vectors)):
        if results[i] is not None:
            continue
        if popular[i]:
            rows = index.popular_rows if filters[i] is None else index.popular_allowed(*filters[i])
            rows = rows[: k + len(excluded[i])]
            scores = index.items.popularity[rows]
        else:
            rows, scores = index.search_filtered(vectors[i], k, excluded[i], index.allowed_rows(*filters[i]),
                                                 exact=exact)
        keep = _first_k_kept(rows[None, :], [excluded[i]], k, len(index))[0]
        [results[i]] = _results(index, rows[keep], scores[keep], [int(keep.sum())])
    return results  # type: ignore[return-value]


def _first_k_kept(rows: np.ndarray, excluded: list[np.ndarray], k: int, n: int) -> np.ndarray:
    """bool [q, m]: the first k entries of each row of ``rows`` [q, m] (rows of an index of ``n`` items)
    that its query does not exclude.

    One sorted array of (query, row) keys and one binary search for the whole
    batch, instead of a set operation per query.
    """
    keep = np.ones(rows.shape, dtype=bool)
    sizes = [e.size for e in excluded]
    if any(sizes):
        offsets = np.arange(len(rows), dtype=np.int64) * n
        banned = np.sort(np.concatenate(excluded).astype(np.int64) + np.repeat(offsets, sizes))
        keys = rows + offsets[:, None]
        at = np.minimum(np.searchsorted(banned, keys), len(banned) - 1)
        keep = banned[at] != keys
    return keep & (np.cumsum(keep, axis=1) <= k)


def _results(index: ItemIndex, rows: np.ndarray, scores: np.ndarray, counts) -> list[index_service_pb2.SearchResult]:
    """SearchResults from the kept rows of several queries, concatenated in order (``counts`` per query).

    The ids, titles and scores are gathered for the whole batch at once.
    """
    items = index.items
    ids, titles, values = items.ids[rows].tolist(), items.titles[rows].tolist(), scores.tolist()
    out = []
    end = 0
    for count in np.asarray(counts).tolist():
        start, end = end, end + count
        out.append(index_service_pb2.SearchResult(item_ids=ids[start:end], scores=values[start:end],
                                                  titles=titles[start:end]))
    return out
