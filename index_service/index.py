"""One version's item index: ScaNN over the candidate embeddings of this shard's items.

No TensorFlow here (see ``serving.ann``).
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

import numpy as np

from serving import ann, bundle

# A genre filter keeping at most this many items is scored exactly over just them.
SUBSET_EXACT_BELOW = 20_000


@dataclasses.dataclass(frozen=True)
class SeenLists:
    """Each training user's interactions, as rows of this shard's items (CSR).

    Loaded from the bundle (user_ids, seen_indptr, seen_items) so that
    ``exclude_seen`` is applied here from a user id, instead of the item ids
    being looked up by the query tier, sent to the gateway, copied into every
    shard's request and looked up again by string.
    """

    user_row: bundle.IdIndex  # user id -> row of indptr
    indptr: np.ndarray  # int64 [users + 1]
    rows: np.ndarray  # int32 [nnz], this shard's item rows

    def of(self, user_ids: list[str]) -> list[np.ndarray]:
        """This shard's item rows each user saw in training (empty for unknown users)."""
        users = self.user_row.rows(user_ids)
        empty = self.rows[:0]
        return [self.rows[self.indptr[u] : self.indptr[u + 1]] if u >= 0 else empty for u in users.tolist()]


@dataclasses.dataclass(frozen=True)
class UserVectors:
    """The user tower's vector of every training user, from the same bundle as the items searched.

    With it a known user's query needs no query-tier call: the index looks the
    vector up by user id (the bundle's ``user_embeddings.npy``, which the query
    service checks against its own tower's output), so the vector and the items
    always come from one model version.
    """

    user_row: bundle.IdIndex  # user id -> row of vectors
    vectors: np.ndarray  # float32 [users, dim]

    def lookup(self, user_ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(float32 [n, dim], zero for unknown users; bool [n] known)."""
        rows = self.user_row.rows(user_ids)
        found = rows >= 0
        out = np.zeros((len(user_ids), self.vectors.shape[1]), dtype=np.float32)
        out[found] = self.vectors[rows[found]]
        return out, found


def seen_lists(users: bundle.UserTable, shard_rows: np.ndarray | None, item_count: int) -> SeenLists:
    """``users``' seen lists in the numbering of a shard holding ``shard_rows`` (None: the whole catalog)."""
    if shard_rows is None:
        return SeenLists(users.row_of, users.seen_indptr, users.seen_items.astype(np.int32, copy=False))
    local = np.full(item_count, -1, dtype=np.int32)
    local[shard_rows] = np.arange(len(shard_rows), dtype=np.int32)
    mapped = local[users.seen_items]
    kept = mapped >= 0
    owner = np.repeat(np.arange(len(users.ids)), np.diff(users.seen_indptr))[kept]
    counts = np.bincount(owner, minlength=len(users.ids))
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return SeenLists(users.row_of, indptr, mapped[kept])


@dataclasses.dataclass(frozen=True, eq=False)
class GenreSubset:
    """The items a genre filter keeps: a mask over this shard's rows, their number, and the rows themselves
    when few enough to score exactly."""

    mask: np.ndarray  # bool [n], read-only
    count: int
    rows: np.ndarray | None  # int64 rows, when count <= SUBSET_EXACT_BELOW


@dataclasses.dataclass(frozen=True, eq=False)
class ItemIndex:
    """Search over one shard of one version's items.

    Rows are this shard's rows (0..n-1); ``items`` holds only this shard's items.
    """

    version: int
    items: bundle.ItemTable
    searcher: Any
    config: dict[str, Any]
    popular_rows: np.ndarray  # this shard's rows, most popular first
    genre_names: tuple[str, ...]
    seen: SeenLists | None = None  # the training users' seen lists, for exclude_seen
    users: UserVectors | None = None  # the training users' vectors (None: the bundle has none)

    @property
    def dim(self) -> int:
        return self.items.embeddings.shape[1]

    def __len__(self) -> int:
        return len(self.items)

    def search(self, queries: np.ndarray, fetch: int, exact: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Top-``fetch`` rows and dot-product scores for float32 queries [q, dim].

        Returns (rows int64 [q, m], scores float32 [q, m]) with m = min(fetch, n),
        best first.
        """
        fetch = min(fetch, len(self))
        if fetch == 0:
            empty = np.zeros((len(queries), 0))
            return empty.astype(np.int64), empty.astype(np.float32)
        if exact:
            return _exact_top(queries, self.items.embeddings, fetch)
        pre = max(fetch, self.config.get("reorder", fetch))
        rows, scores = self.searcher.search_batched(queries, final_num_neighbors=fetch, pre_reorder_num_neighbors=pre)
        return rows.astype(np.int64), scores

    def most_popular(self, fetch: int) -> tuple[np.ndarray, np.ndarray]:
        rows = self.popular_rows[: min(fetch, len(self))]
        return rows, self.items.popularity[rows]

    def genre_mask(self, names) -> int:
        """Bitmask of genre names (case-insensitive); ValueError names the valid ones."""
        lookup = {g.lower(): bit for bit, g in enumerate(self.genre_names)}
        mask = 0
        for name in names:
            bit = lookup.get(name.lower())
            if bit is None:
                raise ValueError(f"unknown genre {name[:40]!r}; known genres: {', '.join(self.genre_names)}")
            mask |= 1 << bit
        return mask

    @functools.lru_cache(maxsize=64)  # noqa: B019  (one cache per loaded version is what we want)
    def allowed_rows(self, include_mask: int, exclude_mask: int) -> GenreSubset:
        """The items with any genre of include_mask (if non-zero) and none of exclude_mask.

        Computed once per filter (a scan of the catalog), so that a request pays
        only for the rows it looks at.
        """
        genres = self.items.genres
        allowed = np.ones(len(genres), dtype=bool) if not include_mask else (genres & include_mask) != 0
        if exclude_mask:
            allowed &= (genres & exclude_mask) == 0
        allowed.setflags(write=False)
        count = int(allowed.sum())
        rows = np.flatnonzero(allowed) if count <= SUBSET_EXACT_BELOW else None
        return GenreSubset(allowed, count, rows)

    @functools.lru_cache(maxsize=16)  # noqa: B019
    def popular_allowed(self, include_mask: int, exclude_mask: int) -> np.ndarray:
        """This shard's rows passing the filter, most popular first (for unknown users with a filter)."""
        allowed = self.allowed_rows(include_mask, exclude_mask).mask
        return self.popular_rows[allowed[self.popular_rows]]

    def search_filtered(
        self, query: np.ndarray, k: int, excluded: np.ndarray, allowed: GenreSubset, exact: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k among ``allowed`` rows not in ``excluded``, for one float32 query [dim].

        Over-fetches from ScaNN by the inverse of the filter's selectivity and
        widens until k survive; a filter that keeps few items is scored exactly
        over just those items, which is then cheaper than any over-fetch. No
        step copies or counts the whole catalog per request.
        """
        excluded = np.unique(excluded)
        excluded = excluded[allowed.mask[excluded]]  # only exclusions the filter lets through matter
        n_candidates = allowed.count - len(excluded)
        if exact or n_candidates <= SUBSET_EXACT_BELOW or self.config["mode"] == "brute_force":
            return self._exact_among(query, k, allowed, excluded)
        selectivity = n_candidates / len(self)
        fetch = int((k + len(excluded)) / selectivity * 1.5) + 16
        while True:
            rows, scores = self.search(query[None, :], fetch)
            keep = allowed.mask[rows[0]]
            if excluded.size:
                keep &= ~np.isin(rows[0], excluded, assume_unique=False)
            if keep.sum() >= k:
                return rows[0][keep][:k], scores[0][keep][:k]
            if fetch >= len(self) // 4:
                return self._exact_among(query, k, allowed, excluded)
            fetch *= 4

    def _exact_among(self, query: np.ndarray, k: int, allowed: GenreSubset, excluded: np.ndarray):
        rows = allowed.rows if allowed.rows is not None else np.flatnonzero(allowed.mask)
        if excluded.size:
            rows = rows[~np.isin(rows, excluded)]
        top_rows, top_scores = _exact_top(query[None, :], self.items.embeddings[rows], min(k, len(rows)))
        return rows[top_rows[0]], top_scores[0]


def _exact_top(queries: np.ndarray, embeddings: np.ndarray, fetch: int) -> tuple[np.ndarray, np.ndarray]:
    if fetch == 0:
        return np.zeros((len(queries), 0), dtype=np.int64), np.zeros((len(queries), 0), dtype=np.float32)
    scores = queries @ embeddings.T
    top = np.argpartition(-scores, fetch - 1, axis=1)[:, :fetch] if fetch < scores.shape[1] else np.tile(
        np.arange(scores.shape[1]), (len(queries), 1)
    )
    top_scores = np.take_along_axis(scores, top, axis=1)
    order = np.argsort(-top_scores, axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1), np.take_along_axis(top_scores, order, axis=1)


def shard_rows(items: bundle.ItemTable, shard_index: int, num_shards: int) -> np.ndarray | None:
    """The catalog rows a shard holds, ascending (None when there is one shard: all of them)."""
    if num_shards == 1:
        return None
    return np.flatnonzero([bundle.shard_of(i, num_shards) == shard_index for i in items.ids.tolist()])


def shard_items(items: bundle.ItemTable, keep: np.ndarray | None) -> bundle.ItemTable:
    """The rows ``keep`` of ``items`` (all of them for None), as a table of their own."""
    if keep is None:
        return items
    ids = items.ids[keep]
    return bundle.ItemTable(
        ids=ids,
        titles=items.titles[keep],
        genres=items.genres[keep],
        popularity=items.popularity[keep],
        embeddings=np.ascontiguousarray(items.embeddings[keep]),
        row_of=bundle.IdIndex(ids),
    )


def make_loader(shard_index: int = 0, num_shards: int = 1):
    """The ModelManager loader: validate the bundle, keep this shard's items, get its ScaNN searcher.

    A replica that holds the whole catalog loads the searcher serialized in the
    bundle (``scann/``, checksummed by the manifest) when there is one: seconds
    instead of a rebuild. A shard, or a bundle without ``scann/``, builds its
    own, with the parameters for its own item count.
    """

    def load(path: Path, manifest: bundle.Manifest) -> ItemIndex:
        catalog, users = bundle.validate(path, manifest)
        rows = shard_rows(catalog, shard_index, num_shards)
        items = shard_items(catalog, rows)
        seen = seen_lists(users, rows, len(catalog))
        if len(items) == 0:
            raise bundle.BundleError(f"{path}: shard {shard_index} of {num_shards} holds no items")
        recorded = manifest.raw.get("scann") or {}
        serialized = recorded.get("serialized")
        if num_shards == 1 and serialized:
            config = {**ann.scann_config(len(items)), **recorded}
            searcher = _load_searcher(path, manifest, serialized, items)
        else:
            # The recorded parameters were chosen for the whole catalog, not this shard.
            config = ann.scann_config(len(items)) if num_shards > 1 else {**ann.scann_config(len(items)), **recorded}
            searcher = ann.build_searcher(items.embeddings, config)
        popular = bundle.popularity_order(items)
        vectors = None if users.vectors is None else UserVectors(users.row_of, users.vectors)
        return ItemIndex(manifest.version, items, searcher, config, popular, manifest.genres, seen, vectors)

    return load


def _load_searcher(path: Path, manifest: bundle.Manifest, folder: str, items: bundle.ItemTable):
    if not isinstance(folder, str) or not folder.strip("/"):
        raise bundle.BundleError(f"{path}: manifest field scann.serialized must name a folder, got {folder!r}")
    prefix = folder.rstrip("/") + "/"
    if not any(name.startswith(prefix) for name in manifest.files):
        raise bundle.BundleError(f"{path}: manifest says the searcher is in {prefix} but lists no file there")
    searcher = ann.load_serialized(path / folder)  # its files were checksummed by bundle.validate
    ann.check_matches(searcher, items.embeddings)
    return searcher
