"""A synthetic interaction log with planted low-rank taste, in the MovieLens and generic layouts.

For benchmarks and tests of training at scale: a log shaped like MovieLens 25M
(162,541 users, 62,423 items, 25,000,095 interactions, the default) or like a
large catalog (``PRESETS["1m-items"]``: 1,000,000 items, 10M interactions),
whose structure a model can learn and be checked against.

The planted model (rank ``rank``, temperature ``T``):

* every item has a popularity prior ``pop_i`` (Zipf-Mandelbrot over a random
  order of the items: ``(r + q)^-2.5`` with ``q = items / 62``, which at the
  ML-25M shape gives the top item ~0.15 % of all interactions, a median item
  ~6 and a few thousand items no one touched, as in ML-25M);
* every item has a factor ``v_i = c_k(i) + e_i``: the unit direction of one of
  ``topics`` topics plus a small item-specific offset (norm <= ``item_spread``);
* every user has a unit factor ``u`` and an activity ``n_u`` (20 + log-normal,
  heavy-tailed like ML-25M's 20 / 71 / 154 min / median / mean, capped at a
  tenth of the catalog), scaled so the counts sum exactly to ``interactions``;
* a user's interactions are drawn, without repeating an item, from
  ``softmax(u . v_i / T + log pop_i)`` over the whole catalog.

Sampling is exact and costs O(interactions x rank), never users x items: a
topic is drawn from ``P(k | u) ∝ W_k exp(u . c_k / T)`` (``W_k`` the topic's
popularity mass), an item within it from ``pop_i``, and the item is accepted
with probability ``exp((u . e_i - |e|max) / T)`` (rejection for the offset
term). "Without repeating" keeps the first occurrence of each item in a
with-replacement stream, which is exactly successive sampling. Users are
processed in chunks, so memory stays bounded.

Time: each user's items are put in a random order and given increasing
timestamps (sessions of minutes, gaps of days); the planted taste does not
drift. Item metadata carries signal: genres are drawn from the item factors
(a logistic model per genre direction), the year from one factor direction,
the title's first word from the item's topic. User demographics (generic and
ml-100k layouts, which have a users file) are drawn from the user factors.

Held out: ``heldout_users`` users get one interaction more than their count;
that last one (in time) goes to ``heldout.csv`` (user id, item id), not to the
log, so a model trained on the whole log (``--test-fraction 0``) can be scored
against popularity on it (``bench/train.py`` does; seen items excluded).

numpy only: no TensorFlow (and Parquet output only if pyarrow is installed).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

LAYOUTS = ("ml-25m", "generic", "ml-100k")
FORMATS = ("csv", "parquet")


@dataclasses.dataclass(frozen=True)
class LogShape:
    users: int
    items: int
    interactions: int


PRESETS = {
    "ml-25m": LogShape(users=162_541, items=62_423, interactions=25_000_095),
    "1m-items": LogShape(users=100_000, items=1_000_000, interactions=10_000_000),
}

# MovieLens 25M's genres, in the order its README lists them; "(no genres listed)" marks an item with none.
GENRES = (
    "Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
    "Film-Noir", "Horror", "IMAX", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
NO_GENRES = "(no genres listed)"
# Base rates, roughly ML-25M's (Drama and Comedy common, IMAX and Film-Noir rare).
GENRE_BASE_RATE = (
    0.12, 0.07, 0.04, 0.04, 0.27, 0.09, 0.09, 0.40, 0.05, 0.006, 0.09, 0.003, 0.02, 0.04, 0.11, 0.06, 0.14, 0.03,
    0.02,
)  # fmt: skip
# ml-100k's u.genre order (bit g <=> genre g) and the ML-25M name each stands for.
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
OCCUPATIONS = (
    "administrator", "artist", "doctor", "educator", "engineer", "entertainment", "executive", "healthcare",
    "homemaker", "lawyer", "librarian", "marketing", "none", "other", "programmer", "retired", "salesman",
    "scientist", "student", "technician", "writer",
)  # fmt: skip

FIRST_TIMESTAMP = 946_684_800  # 2000-01-01
LAST_START = 1_546_300_800  # 2019-01-01: users start before this
SYLLABLES = tuple(c + v for c in "bcdfghjklmnprstvz" for v in "aeiou")


@dataclasses.dataclass(frozen=True)
class LogConfig:
    """What to generate. ``topics`` 0 = items // 100, clipped to [8, 4096]."""

    users: int = PRESETS["ml-25m"].users
    items: int = PRESETS["ml-25m"].items
    interactions: int = PRESETS["ml-25m"].interactions
    seed: int = 0
    rank: int = 16
    topics: int = 0
    temperature: float = 0.15
    item_spread: float = 0.12
    popularity_exponent: float = 2.5
    min_per_user: int = 20
    max_user_share: float = 0.1
    heldout_users: int = -1  # -1 = min(10,000, users // 10)

    def __post_init__(self) -> None:
        for name in ("users", "items", "interactions", "rank"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.interactions < self.users:
            raise ValueError(f"{self.interactions} interactions cannot give each of {self.users} users one")
        if self.interactions > self.users * self.max_items_per_user:
            raise ValueError(
                f"{self.interactions} interactions exceed {self.users} users x {self.max_items_per_user} items each "
                f"({self.max_user_share:.0%} of {self.items} items); add items or users"
            )
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")

    @property
    def max_items_per_user(self) -> int:
        return max(1, int(self.items * self.max_user_share))

    @property
    def topic_count(self) -> int:
        return self.topics or int(np.clip(self.items // 100, 8, 4096))

    @property
    def heldout_user_count(self) -> int:
        wanted = min(10_000, self.users // 10) if self.heldout_users < 0 else self.heldout_users
        return min(wanted, self.users)


@dataclasses.dataclass(frozen=True)
class World:
    """The planted model and the metadata drawn from it (all row-aligned, 0-based rows)."""

    config: LogConfig
    popularity: np.ndarray  # float64 [items], sums to 1: the prior pop_i
    item_topic: np.ndarray  # int32 [items]
    topic_vectors: np.ndarray  # float32 [topics, rank], unit norm
    item_offsets: np.ndarray  # float32 [items, rank], norm <= item_spread
    user_vectors: np.ndarray  # float32 [users, rank], unit norm
    counts: np.ndarray  # int64 [users]: interactions in the log (sums to config.interactions)
    heldout: np.ndarray  # bool [users]: one more interaction, held out
    user_ids: np.ndarray  # int64 [users], 1..users
    item_ids: np.ndarray  # int64 [items], increasing, sparse (like MovieLens' movieId)
    item_genres: np.ndarray  # bool [items, len(GENRES)]
    item_years: np.ndarray  # int32 [items]
    item_titles: np.ndarray  # str [items], without the year
    user_ages: np.ndarray  # int32 [users]
    user_genders: np.ndarray  # str [users], "M" / "F"
    user_occupations: np.ndarray  # str [users]
    user_zips: np.ndarray  # str [users], 5 digits

    @property
    def item_vectors(self) -> np.ndarray:
        return self.topic_vectors[self.item_topic] + self.item_offsets


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def _exact_counts(weights: np.ndarray, total: int, floor: int, cap: int) -> np.ndarray:
    """Integers in [floor, cap] proportional to ``weights`` above ``floor``, summing to ``total``."""
    counts = np.full(len(weights), floor, dtype=np.int64)
    free = np.ones(len(weights), dtype=bool)
    remaining = total - counts.sum()
    while remaining > 0:
        share = np.where(free, weights, 0.0)
        target = counts + remaining * share / share.sum()
        over = free & (target >= cap)
        if over.any():  # pin the capped users and spread their excess over the rest
            counts[over] = cap
            free &= ~over
            remaining = total - counts.sum()
            continue
        whole = np.floor(target).astype(np.int64)
        leftover = total - whole.sum()
        # The largest fractional parts get the last units.
        whole[np.argsort(-(target - whole), kind="stable")[:leftover]] += 1
        return whole
    return counts


def _words(rng: np.random.Generator, count: int) -> np.ndarray:
    """``count`` distinct pronounceable pseudo-words of 2-4 syllables."""
    words: set[str] = set()
    while len(words) < count:
        syllables = rng.integers(0, len(SYLLABLES), size=(count, 4))
        lengths = rng.integers(2, 5, size=count)
        words.update("".join(SYLLABLES[s] for s in row[:n]) for row, n in zip(syllables.tolist(), lengths.tolist()))
    return np.array(sorted(words)[:count])[rng.permutation(count)]


def plant(config: LogConfig) -> World:
    """Draws the planted model, the activity of every user and the metadata of every item and user."""
    rng = np.random.default_rng(config.seed)
    items, users, rank = config.items, config.users, config.rank

    ranks = rng.permutation(items).astype(np.float64) + 1.0
    popularity = (ranks + items / 62.0) ** -config.popularity_exponent
    popularity /= popularity.sum()

    topics = config.topic_count
    topic_vectors = _unit(rng.normal(size=(topics, rank)))
    item_topic = rng.integers(0, topics, size=items).astype(np.int32)
    offsets = rng.normal(scale=config.item_spread / math.sqrt(rank), size=(items, rank))
    norms = np.linalg.norm(offsets, axis=1, keepdims=True)
    offsets = (offsets * np.minimum(1.0, config.item_spread / np.maximum(norms, 1e-12))).astype(np.float32)
    user_vectors = _unit(rng.normal(size=(users, rank)))

    floor = max(1, min(config.min_per_user, config.interactions // users))
    activity = rng.lognormal(mean=math.log(51.0), sigma=1.39, size=users)
    counts = _exact_counts(activity, config.interactions, floor, config.max_items_per_user)
    heldout = np.zeros(users, dtype=bool)
    eligible = np.flatnonzero(counts < min(items, config.max_items_per_user + 1))
    heldout[rng.choice(eligible, size=min(config.heldout_user_count, len(eligible)), replace=False)] = True

    item_ids = np.sort(rng.choice(np.arange(1, 3 * items + 1), size=items, replace=False)).astype(np.int64)
    user_ids = np.arange(1, users + 1, dtype=np.int64)

    item_vectors = topic_vectors[item_topic] + offsets
    genre_directions = _unit(rng.normal(size=(len(GENRES), rank)))
    base = np.log(np.array(GENRE_BASE_RATE) / (1 - np.array(GENRE_BASE_RATE)))
    genre_logits = 4.0 * (item_vectors @ genre_directions.T) + base - 1.0
    item_genres = rng.random(size=genre_logits.shape) < 1.0 / (1.0 + np.exp(-genre_logits))
    year_direction = _unit(rng.normal(size=(1, rank)))[0]
    years = 1995 + 18 * np.tanh(1.5 * item_vectors @ year_direction) + rng.normal(scale=6, size=items)
    item_years = np.clip(np.round(years), 1902, 2019).astype(np.int32)

    vocabulary = _words(rng, 4000)
    topic_words = vocabulary[rng.integers(0, 400, size=(topics, 6))]  # each topic leans on a few words
    first = topic_words[item_topic, rng.integers(0, 6, size=items)]
    word_weights = 1.0 / np.arange(1, len(vocabulary) + 1)
    more = vocabulary[rng.choice(len(vocabulary), size=(items, 3), p=word_weights / word_weights.sum())]
    lengths = rng.integers(1, 4, size=items)
    titles = [" ".join([a, *rest[: n - 1]]).title() for a, rest, n in zip(first.tolist(), more.tolist(), lengths.tolist())]
    # A tenth get MovieLens' "Name, The" form, so the CSV needs quoting.
    the = rng.random(items) < 0.1
    item_titles = np.array([f"{t}, The" if flag else t for t, flag in zip(titles, the.tolist())])

    demographics = user_vectors @ _unit(rng.normal(size=(2 + len(OCCUPATIONS), rank))).T
    user_ages = np.clip(np.round(33 + 14 * demographics[:, 0] + rng.normal(scale=8, size=users)), 7, 73).astype(np.int32)
    user_genders = np.where(demographics[:, 1] + rng.normal(scale=0.3, size=users) > -0.2, "M", "F")
    occupation = np.argmax(4 * demographics[:, 2:] + rng.gumbel(size=(users, len(OCCUPATIONS))), axis=1)
    user_occupations = np.array(OCCUPATIONS)[occupation]
    user_zips = np.char.zfill(rng.integers(1000, 99999, size=users).astype(str), 5)

    return World(
        config=config, popularity=popularity, item_topic=item_topic, topic_vectors=topic_vectors,
        item_offsets=offsets, user_vectors=user_vectors, counts=counts, heldout=heldout, user_ids=user_ids,
        item_ids=item_ids, item_genres=item_genres, item_years=item_years, item_titles=item_titles,
        user_ages=user_ages, user_genders=user_genders, user_occupations=user_occupations, user_zips=user_zips,
    )  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Chunk:
    """Some users' interactions, grouped by user (ascending row) and in time order within a user."""

    users: np.ndarray  # int32 rows
    items: np.ndarray  # int32 rows
    timestamps: np.ndarray  # int64 seconds
    affinity: np.ndarray  # float32 u . v_i (drives the rating)
    heldout: np.ndarray  # bool: the user's held-out last interaction


class _Sampler:
    """Exact draws from softmax(u . v_i / T + log pop_i), see the module docstring."""

    def __init__(self, world: World, rng: np.random.Generator):
        self.world, self.rng = world, rng
        config = world.config
        self.inv_t = 1.0 / config.temperature
        order = np.argsort(world.item_topic, kind="stable")
        self.items_by_topic = order.astype(np.int32)
        topic_of_sorted = world.item_topic[order]
        self.topic_mass = np.bincount(world.item_topic, weights=world.popularity, minlength=config.topic_count)
        # Within-topic CDF shifted by the topic number, so one searchsorted serves every topic.
        cumulative = np.cumsum(world.popularity[order])
        starts = np.searchsorted(topic_of_sorted, np.arange(config.topic_count))
        before = np.concatenate([[0.0], cumulative])[starts][topic_of_sorted]
        within = (cumulative - before) / np.maximum(self.topic_mass[topic_of_sorted], 1e-300)
        self.item_cdf = topic_of_sorted + np.minimum(within, 1.0)
        self.offset_bound = float(np.linalg.norm(world.item_offsets, axis=1).max())
        self.log_topic_mass = np.log(np.maximum(self.topic_mass, 1e-300))

    def topic_probabilities(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """P(topic | user) = softmax(u . c_k / T + log W_k) and u . c_k: float64, float32 [len(users), topics]."""
        scores = self.world.user_vectors[users] @ self.world.topic_vectors.T
        logits = scores * self.inv_t + self.log_topic_mass
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        return probs / probs.sum(axis=1, keepdims=True), scores

    def draw(
        self, users: np.ndarray, topic_probs: np.ndarray, topic_scores: np.ndarray, counts: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``counts[j]`` proposals for ``users[j]`` (row j of ``topic_probs`` / ``topic_scores``)
        -> (users, items, affinity u . v_i) of the accepted ones, grouped by user."""
        world, rng = self.world, self.rng
        topics_n = topic_probs.shape[1]
        per_topic = rng.multinomial(counts, topic_probs).ravel()  # [len(users) * topics]
        rows = np.repeat(np.repeat(np.arange(len(users)), topics_n), per_topic)
        topics = np.repeat(np.tile(np.arange(topics_n), len(users)), per_topic)
        positions = np.searchsorted(self.item_cdf, topics + rng.random(len(topics)) * (1 - 1e-12), side="right")
        items = self.items_by_topic[np.minimum(positions, len(self.items_by_topic) - 1)]
        # Float rounding could land on a neighbouring topic's first item; such draws are dropped.
        consistent = world.item_topic[items] == topics
        offset_score = np.einsum("ij,ij->i", world.user_vectors[users[rows]], world.item_offsets[items])
        threshold = np.exp((offset_score - self.offset_bound) * self.inv_t)
        accept = consistent & (rng.random(len(items), dtype=np.float32) < threshold)
        rows, topics, items = rows[accept], topics[accept], items[accept]
        affinity = topic_scores[rows, topics] + offset_score[accept]
        return users[rows], items, affinity.astype(np.float32)


def _chunks_of_users(counts: np.ndarray, per_chunk: int) -> Iterator[np.ndarray]:
    """Consecutive user rows whose counts add up to about ``per_chunk`` (at least one user each)."""
    ends = np.searchsorted(np.cumsum(counts), np.arange(per_chunk, int(counts.sum()) + per_chunk, per_chunk))
    start = 0
    for stop in np.unique(np.minimum(ends + 1, len(counts))).tolist():
        if stop > start:
            yield np.arange(start, stop)
            start = stop


def sample(world: World, chunk_interactions: int = 1 << 18) -> Iterator[Chunk]:
    """The log, chunk by chunk (about ``chunk_interactions`` each), users in row order.

    Each round proposes a few times what a user still misses, puts the
    accepted draws in a random (stream) order and keeps, per user, the first
    ones that are new for that user, up to what is missing: the kept set is
    then the first n distinct items of an i.i.d. stream (successive sampling).
    """
    config = world.config
    rng = np.random.default_rng(config.seed + 1)
    sampler = _Sampler(world, rng)
    need_all = world.counts + world.heldout
    for users in _chunks_of_users(need_all, chunk_interactions):
        need = need_all[users]
        probs, scores = sampler.topic_probabilities(users)
        kept_keys = np.zeros(0, dtype=np.int64)  # user * items + item, sorted
        kept_affinity = np.zeros(0, dtype=np.float32)
        missing = need.copy()
        rounds = 0
        while (active := np.flatnonzero(missing)).size:
            # ~1/2 of proposals are accepted; later rounds face more repeats, so propose more.
            proposals = np.ceil(missing[active] * 2.5 * 2.0 ** min(rounds, 10)).astype(np.int64)
            u, i, a = sampler.draw(users[active], probs[active], scores[active], proposals)
            stream = np.lexsort((rng.random(len(u), dtype=np.float32), u))
            keys, a = u[stream].astype(np.int64) * config.items + i[stream], a[stream]
            _, first = np.unique(keys, return_index=True)  # the first of each repeat in stream order
            first.sort()
            first = first[~np.isin(keys[first], kept_keys, assume_unique=True)]
            local = u[stream][first] - users[0]
            place = np.arange(len(first)) - np.searchsorted(local, local)
            take = first[place < missing[local]]
            merged = np.concatenate([kept_keys, keys[take]])
            order = np.argsort(merged, kind="stable")
            kept_keys, kept_affinity = merged[order], np.concatenate([kept_affinity, a[take]])[order]
            missing = need - np.bincount(kept_keys // config.items - users[0], minlength=len(users))
            rounds += 1
            if rounds > 60:
                raise RuntimeError("sampling without replacement did not converge; lower max_user_share")
        user_rows = (kept_keys // config.items).astype(np.int32)
        item_rows = (kept_keys % config.items).astype(np.int32)
        # Time order: a random permutation of each user's items.
        shuffle = np.lexsort((rng.random(len(user_rows)), user_rows))
        item_rows, affinity = item_rows[shuffle], kept_affinity[shuffle]
        first_of_user = np.searchsorted(user_rows, user_rows)
        place = np.arange(len(user_rows)) - first_of_user
        # Sessions: gaps of minutes, now and then days; each user starts somewhere in 2000-2018.
        gaps = np.where(rng.random(len(user_rows)) < 0.05, rng.exponential(5 * 86_400, len(user_rows)),
                        rng.exponential(120, len(user_rows))).astype(np.int64) + 1  # fmt: skip
        gaps[place == 0] = 0
        elapsed = np.cumsum(gaps)
        elapsed -= elapsed[first_of_user]
        starts = rng.integers(FIRST_TIMESTAMP, LAST_START, size=len(users))
        timestamps = starts[user_rows - users[0]] + elapsed
        last = np.r_[user_rows[1:] != user_rows[:-1], True]
        yield Chunk(user_rows, item_rows, timestamps, affinity, last & world.heldout[user_rows])


# --------------------------------------------------------------------------- writing


def _digits(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Non-negative ints -> (uint8 [n, width] right-aligned ASCII digits, int [n] digit counts)."""
    values = values.astype(np.int64)
    width = max(1, len(str(int(values.max())))) if len(values) else 1
    powers = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)
    digits = (values[:, None] // powers[None, :]) % 10
    lengths = np.maximum(1, np.floor(np.log10(np.maximum(values, 1))).astype(np.int64) + 1)
    return (digits + ord("0")).astype(np.uint8), lengths


def delimited_lines(columns: list[np.ndarray], separator: str = ",") -> bytes:
    """Rows of delimited text, vectorised: int columns in decimal, bytes (``S``) columns as they are.

    The bytes columns must need no quoting. Costs a few bytes of memory per output byte.
    """
    parts, keeps = [], []
    n = len(columns[0])
    sep = np.frombuffer(separator.encode(), dtype=np.uint8)
    for index, column in enumerate(columns):
        if column.dtype.kind == "S":
            width = column.dtype.itemsize
            block = np.frombuffer(column.tobytes(), dtype=np.uint8).reshape(n, width)
            keep = block != 0
        else:
            block, lengths = _digits(column)
            keep = np.arange(block.shape[1])[None, :] >= (block.shape[1] - lengths)[:, None]
        parts.append(block)
        keeps.append(keep)
        end = np.full((n, len(sep)), sep, dtype=np.uint8) if index < len(columns) - 1 else np.full((n, 1), 10, np.uint8)
        parts.append(end)
        keeps.append(np.ones(end.shape, dtype=bool))
    return np.concatenate(parts, axis=1)[np.concatenate(keeps, axis=1)].tobytes()


RATING_TEXT = np.array([f"{r / 2:.1f}".encode() for r in range(0, 11)], dtype="S3")  # half stars: b"0.0".. b"5.0"


def _half_star_ratings(affinity: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """0.5..5.0 in half stars (as int 1..10), higher for a better match."""
    score = 3.5 + 1.6 * affinity + rng.normal(scale=0.8, size=len(affinity))
    return np.clip(np.round(2 * score), 1, 10).astype(np.int64)


def _genre_lists(world: World, names: tuple[str, ...] = GENRES) -> list[list[str]]:
    return [[names[g] for g in np.flatnonzero(row)] for row in world.item_genres]


def write_ml25m(world: World, out: Path, chunks: Iterator[Chunk]) -> dict:
    """ratings.csv and movies.csv exactly as GroupLens publishes ML-25M (no users file)."""
    rng = np.random.default_rng(world.config.seed + 2)
    with open(out / "movies.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["movieId", "title", "genres"])
        for item_id, title, year, genres in zip(
            world.item_ids.tolist(), world.item_titles.tolist(), world.item_years.tolist(), _genre_lists(world)
        ):
            writer.writerow([item_id, f"{title} ({year})", "|".join(genres) or NO_GENRES])
    heldout = []
    with open(out / "ratings.csv", "wb") as f:
        f.write(b"userId,movieId,rating,timestamp\n")
        for chunk in chunks:
            heldout.append((chunk.users[chunk.heldout], chunk.items[chunk.heldout], chunk.timestamps[chunk.heldout]))
            kept = ~chunk.heldout
            users, items, stamps = chunk.users[kept], chunk.items[kept], chunk.timestamps[kept]
            ratings = _half_star_ratings(chunk.affinity[kept], rng)
            order = np.lexsort((world.item_ids[items], users))  # GroupLens: by userId, then movieId
            f.write(delimited_lines([world.user_ids[users[order]], world.item_ids[items[order]],
                                     RATING_TEXT[ratings[order]], stamps[order]]))  # fmt: skip
    return {"interactions": "ratings.csv", "items": "movies.csv", "heldout_parts": heldout}


def write_ml100k(world: World, out: Path, chunks: Iterator[Chunk]) -> dict:
    """u.data, u.item, u.user, u.genre as in GroupLens' ml-100k (for the trainer's ml-100k reader)."""
    rng = np.random.default_rng(world.config.seed + 2)
    (out / "u.genre").write_text("".join(f"{name}|{bit}\n" for bit, name in enumerate(ML100K_GENRES)) + "\n")
    column = {name: ML100K_GENRES.index("Children's" if name == "Children" else name)
              for name in GENRES if name != "IMAX"}  # fmt: skip
    with open(out / "u.item", "w", encoding="latin-1") as f:
        for item_id, title, year, genres in zip(
            world.item_ids.tolist(), world.item_titles.tolist(), world.item_years.tolist(), _genre_lists(world)
        ):
            flags = ["0"] * len(ML100K_GENRES)
            for name in genres:
                if name in column:
                    flags[column[name]] = "1"
            if "1" not in flags:
                flags[0] = "1"
            f.write(f"{item_id}|{title} ({year})|01-Jan-{year}||http://example.invalid/{item_id}|{'|'.join(flags)}\n")
    with open(out / "u.user", "w", encoding="latin-1") as f:
        for row in zip(world.user_ids.tolist(), world.user_ages.tolist(), world.user_genders.tolist(),
                       world.user_occupations.tolist(), world.user_zips.tolist()):  # fmt: skip
            f.write("|".join(map(str, row)) + "\n")
    heldout = []
    with open(out / "u.data", "wb") as f:
        for chunk in chunks:
            heldout.append((chunk.users[chunk.heldout], chunk.items[chunk.heldout], chunk.timestamps[chunk.heldout]))
            kept = ~chunk.heldout
            stars = (_half_star_ratings(chunk.affinity[kept], rng) + 1) // 2
            f.write(delimited_lines([world.user_ids[chunk.users[kept]], world.item_ids[chunk.items[kept]], stars,
                                     chunk.timestamps[kept]], separator="\t"))  # fmt: skip
    return {"interactions": "u.data", "items": "u.item", "users": "u.user", "heldout_parts": heldout}


def generic_user_ids(world: World, rows: np.ndarray) -> np.ndarray:
    return np.char.add("user-", world.user_ids[rows].astype(str))


def generic_item_ids(world: World, rows: np.ndarray) -> np.ndarray:
    return np.char.add("item-", world.item_ids[rows].astype(str))


GENERIC_SCHEMA = {
    "interactions": {"file": "interactions.csv"},
    "items": {"file": "items.csv", "features": {"title": "text", "genres": {"kind": "multi", "separator": "|"}, "year": "numeric"},
              "genre_filter": "genres"},
    "users": {"file": "users.csv", "features": {"age": "numeric", "gender": "categorical", "occupation": "categorical"}},
}  # fmt: skip


def write_generic(world: World, out: Path, chunks: Iterator[Chunk], file_format: str = "csv") -> dict:
    """interactions.<csv|parquet> (user_id,item_id,timestamp; string ids), items.csv, users.csv, schema.yaml."""
    schema = json.loads(json.dumps(GENERIC_SCHEMA))
    with open(out / "items.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["item_id", "title", "genres", "year"])
        ids = generic_item_ids(world, np.arange(world.config.items)).tolist()
        for row in zip(ids, world.item_titles.tolist(), map("|".join, _genre_lists(world)), world.item_years.tolist()):
            writer.writerow(row)
    with open(out / "users.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["user_id", "age", "gender", "occupation"])
        ids = generic_user_ids(world, np.arange(world.config.users)).tolist()
        writer.writerows(zip(ids, world.user_ages.tolist(), world.user_genders.tolist(), world.user_occupations.tolist()))
    heldout = []
    if file_format == "parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise RuntimeError("--file-format parquet needs pyarrow (pip install pyarrow)") from None
        schema["interactions"]["file"] = "interactions.parquet"
        arrow_schema = pa.schema([("user_id", pa.string()), ("item_id", pa.string()), ("timestamp", pa.int64())])
        with pq.ParquetWriter(out / "interactions.parquet", arrow_schema) as writer:
            for chunk in chunks:
                heldout.append((chunk.users[chunk.heldout], chunk.items[chunk.heldout], chunk.timestamps[chunk.heldout]))
                kept = ~chunk.heldout
                writer.write_table(pa.table({
                    "user_id": generic_user_ids(world, chunk.users[kept]),
                    "item_id": generic_item_ids(world, chunk.items[kept]),
                    "timestamp": chunk.timestamps[kept],
                }, schema=arrow_schema))  # fmt: skip
    else:
        with open(out / "interactions.csv", "wb") as f:
            f.write(b"user_id,item_id,timestamp\n")
            for chunk in chunks:
                heldout.append((chunk.users[chunk.heldout], chunk.items[chunk.heldout], chunk.timestamps[chunk.heldout]))
                kept = ~chunk.heldout
                f.write(delimited_lines([np.char.add(b"user-", world.user_ids[chunk.users[kept]].astype("S")),
                                         np.char.add(b"item-", world.item_ids[chunk.items[kept]].astype("S")),
                                         chunk.timestamps[kept]]))  # fmt: skip
    import yaml

    (out / "schema.yaml").write_text(
        "# Generated by python -m trainer synthetic-log: the column roles and feature kinds of this folder.\n"
        + yaml.safe_dump(schema, sort_keys=False)
    )
    return {"interactions": schema["interactions"]["file"], "items": "items.csv", "users": "users.csv",
            "schema": "schema.yaml", "heldout_parts": heldout}  # fmt: skip


HELDOUT_FILE = "heldout.csv"
META_FILE = "synthetic.json"


def write_log(
    out: Path,
    config: LogConfig,
    layout: str = "ml-25m",
    file_format: str = "csv",
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Generates the log into ``out`` (created) in ``layout``; returns the summary also written to synthetic.json.

    ``heldout.csv`` (header ``user_id,item_id``; ids as in the layout's files) holds each
    held-out user's last interaction, which is not in the log.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if file_format not in FORMATS or (file_format == "parquet" and layout != "generic"):
        raise ValueError(f"file format {file_format!r}: the MovieLens layouts are csv; parquet is for --layout generic")
    started = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    world = plant(config)
    if progress:
        progress(f"planted {config.users} users, {config.items} items, {config.topic_count} topics "
                 f"in {time.monotonic() - started:.1f}s")  # fmt: skip

    touched = np.zeros(config.items, dtype=bool)

    def chunks() -> Iterator[Chunk]:
        done = 0
        for chunk in sample(world):
            done += len(chunk.users)
            touched[chunk.items[~chunk.heldout]] = True
            if progress:
                progress(f"  {done:,} / {config.interactions + int(world.heldout.sum()):,} interactions "
                         f"({time.monotonic() - started:.0f}s)")  # fmt: skip
            yield chunk

    if layout == "ml-25m":
        files = write_ml25m(world, out, chunks())
    elif layout == "ml-100k":
        files = write_ml100k(world, out, chunks())
    else:
        files = write_generic(world, out, chunks(), file_format)
    parts = files.pop("heldout_parts")
    users = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int32)
    items = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int32)
    if layout == "generic":
        user_text, item_text = generic_user_ids(world, users), generic_item_ids(world, items)
    else:
        user_text, item_text = world.user_ids[users].astype(str), world.item_ids[items].astype(str)
    with open(out / HELDOUT_FILE, "w", encoding="utf-8") as f:
        f.write("user_id,item_id\n")
        f.writelines(f"{u},{i}\n" for u, i in zip(user_text.tolist(), item_text.tolist()))
    summary = {
        "layout": layout,
        "config": dataclasses.asdict(config),
        "topics": config.topic_count,
        "interactions": int(world.counts.sum()),
        "users": config.users,
        "items": config.items,
        "items_with_interactions": int(touched.sum()),
        "heldout_pairs": int(len(users)),
        "files": {**files, "heldout": HELDOUT_FILE},
        "seconds": round(time.monotonic() - started, 1),
    }
    (out / META_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


# --------------------------------------------------------------------------- command line


def add_command(commands) -> None:
    """Adds ``synthetic-log`` to the trainer's sub-command parsers (``python -m trainer synthetic-log``)."""
    defaults = LogConfig()
    parser = commands.add_parser(
        "synthetic-log",
        help="write a synthetic interaction log with planted low-rank taste (numpy only, no TensorFlow)",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument("--out", type=Path, required=True, help="folder to write (created)")
    parser.add_argument("--layout", choices=LAYOUTS, default="ml-25m",
                        help="ml-25m: ratings.csv + movies.csv as GroupLens publishes them; generic: interactions "
                             "+ items + users + schema.yaml with string ids; ml-100k: u.data, u.item, u.user, u.genre "
                             "(default %(default)s)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="ml-25m",
                        help="shape: ml-25m = 162,541 users, 62,423 items, 25,000,095 interactions; "
                             "1m-items = 100,000 users, 1,000,000 items, 10,000,000 interactions (default %(default)s)")
    parser.add_argument("--users", type=int, help="override the preset's user count")
    parser.add_argument("--items", type=int, help="override the preset's item count")
    parser.add_argument("--interactions", type=int, help="override the preset's interaction count (rows of the log)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="default %(default)s")
    parser.add_argument("--rank", type=int, default=defaults.rank, help="rank of the planted taste (default %(default)s)")
    parser.add_argument("--temperature", type=float, default=defaults.temperature,
                        help="softmax temperature of the planted taste; lower = more predictable (default %(default)s)")
    parser.add_argument("--heldout-users", type=int, default=defaults.heldout_users,
                        help="users whose last interaction goes to heldout.csv instead of the log; "
                             "-1 = min(10000, users / 10) (default %(default)s)")
    parser.add_argument("--file-format", choices=FORMATS, default="csv",
                        help="--layout generic: the interactions file's format (default %(default)s)")
    parser.set_defaults(handler=run_command)


def run_command(args) -> int:
    shape = PRESETS[args.preset]
    try:
        config = LogConfig(
            users=args.users or shape.users,
            items=args.items or shape.items,
            interactions=args.interactions or shape.interactions,
            seed=args.seed,
            rank=args.rank,
            temperature=args.temperature,
            heldout_users=args.heldout_users,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"writing {config.users:,} users x {config.items:,} items, {config.interactions:,} interactions "
          f"({args.layout}) to {args.out}", flush=True)  # fmt: skip
    last = [0.0]

    def progress(message: str) -> None:
        if time.monotonic() - last[0] >= 5 or "planted" in message:
            last[0] = time.monotonic()
            print(message, flush=True)

    summary = write_log(args.out, config, args.layout, args.file_format, progress)
    print(f"wrote {summary['interactions']:,} interactions ({summary['items_with_interactions']:,} items touched), "
          f"{summary['heldout_pairs']:,} held-out pairs in {summary['seconds']} s: {args.out}")  # fmt: skip
    return 0
