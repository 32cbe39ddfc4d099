"""The trainer's one in-memory form of a data set, whatever layout it was read from.

Readers (``trainer.readers``: the MovieLens releases and the generic layout) turn
files into a ``Dataset``; everything after them (features, model, training,
evaluation, export) reads only this. It is columnar numpy and integer-coded, so
its memory grows with interactions + users + items (a few bytes per
interaction), with no Python object per row.

Conventions, shared by every column:

* Rows of ``Dataset.users`` / ``Dataset.items`` are 0-based; interactions refer
  to them by row (int32).
* Codes of categorical, multi-valued and text features are 1-based; 0 means
  "missing" (or, at serving time, "a value the model never saw"). Code ``c``
  stands for ``vocab[c - 1]``.
* Numeric features are float32 with NaN for missing.

Nothing here imports TensorFlow.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

import numpy as np

# The kinds of feature column a schema can declare (see the README's generic layout).
CATEGORICAL, MULTI, TEXT, NUMERIC = "categorical", "multi", "text", "numeric"
FEATURE_KINDS = (CATEGORICAL, MULTI, TEXT, NUMERIC)
# The serving genre filter is a uint32 bit mask per item.
MAX_GENRES = 32


@dataclasses.dataclass(frozen=True)
class Csr:
    """Variable-length int lists: row r is ``values[splits[r]:splits[r + 1]]``."""

    splits: np.ndarray  # int64 [rows + 1], splits[0] == 0, non-decreasing
    values: np.ndarray  # int32 [nnz]

    @property
    def rows(self) -> int:
        return len(self.splits) - 1

    def lengths(self) -> np.ndarray:
        return np.diff(self.splits)

    @classmethod
    def from_lists(cls, lists: list[list[int]]) -> Csr:
        lengths = np.array([len(x) for x in lists], dtype=np.int64)
        splits = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        values = np.fromiter((v for x in lists for v in x), dtype=np.int32, count=int(splits[-1]))
        return cls(splits=splits, values=values)


@dataclasses.dataclass(frozen=True)
class Feature:
    """One feature column of the users or items table, row-aligned with its ids.

    kind ``categorical``: ``codes`` int32 [n] (one value per row, e.g. gender);
    kind ``multi``: ``lists`` Csr of codes (several values per row, e.g. genres "Action|Comedy");
    kind ``text``: ``lists`` Csr of token codes (lower-cased word tokens of e.g. a title);
    kind ``numeric``: ``values`` float32 [n] (e.g. age, release year).
    ``vocab`` (str [V]) names the codes of the first three kinds; empty for numeric.
    """

    name: str
    kind: str
    vocab: np.ndarray
    codes: np.ndarray | None = None
    lists: Csr | None = None
    values: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.kind not in FEATURE_KINDS:
            raise ValueError(f"feature {self.name!r}: kind must be one of {FEATURE_KINDS}, got {self.kind!r}")
        held = {"codes": self.codes is not None, "lists": self.lists is not None, "values": self.values is not None}
        wanted = {CATEGORICAL: "codes", MULTI: "lists", TEXT: "lists", NUMERIC: "values"}[self.kind]
        if [name for name, present in held.items() if present] != [wanted]:
            raise ValueError(f"feature {self.name!r} of kind {self.kind} must hold exactly {wanted!r}")


@dataclasses.dataclass(frozen=True)
class Table:
    """The users or the items: unique string ids and their feature columns."""

    ids: np.ndarray  # str [n], unique
    features: tuple[Feature, ...] = ()

    def __len__(self) -> int:
        return len(self.ids)

    def feature(self, name: str) -> Feature | None:
        return next((f for f in self.features if f.name == name), None)


@dataclasses.dataclass(frozen=True)
class Interactions:
    """The log, one entry per row read (file order), as rows of the users/items tables.

    A (user, item) pair that occurs several times is several interactions (a
    repeated event); the set of items a user has seen counts it once.
    """

    users: np.ndarray  # int32 [n]
    items: np.ndarray  # int32 [n]
    timestamps: np.ndarray  # int64 [n] seconds; all 0 when the log has none
    weights: np.ndarray  # float32 [n]; all 1 when the log has none

    def __len__(self) -> int:
        return len(self.users)

    def take(self, rows: np.ndarray) -> Interactions:
        return Interactions(self.users[rows], self.items[rows], self.timestamps[rows], self.weights[rows])


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A log plus the users and the catalog it refers to.

    ``items`` is the whole catalog: items that no one interacted with are rows
    too (the candidate tower embeds them from their features). ``users`` holds
    every user of the log (and of the users file, if any).
    """

    layout: str  # e.g. "ml-100k", "ml-1m", "ml-10m", "ml-25m", "generic"
    interactions: Interactions
    users: Table
    items: Table
    item_titles: np.ndarray  # str [items]; the id when the data has no title
    genre_feature: str | None  # name of the items' multi feature served as genres (genre_filter), if any
    files: Mapping[str, Path]  # role ("interactions", "items", "users", ...) -> path read
    sha256: str  # over the bytes of every file read, in role order
    bad_rows: int = 0  # malformed rows skipped under --max-bad-rows

    @property
    def genres(self) -> tuple[str, ...]:
        """Names of the genres, bit g of ``genre_masks`` <=> genres[g]; () without a genre feature."""
        if self.genre_feature is None:
            return ()
        return tuple(self.items.feature(self.genre_feature).vocab.tolist()[:MAX_GENRES])

    def genre_masks(self) -> np.ndarray:
        """uint32 [items]: bit g set <=> the item has genre g (codes past MAX_GENRES are not served)."""
        masks = np.zeros(len(self.items), dtype=np.uint32)
        if self.genre_feature is None:
            return masks
        lists = self.items.feature(self.genre_feature).lists
        codes = lists.values.astype(np.int64)
        rows = np.repeat(np.arange(lists.rows), lists.lengths())
        keep = (codes >= 1) & (codes <= MAX_GENRES)
        np.bitwise_or.at(masks, rows[keep], (np.uint32(1) << (codes[keep] - 1).astype(np.uint32)))
        return masks
