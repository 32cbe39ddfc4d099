"""Offline hit rate (HR@K) from exported embeddings, with numpy only.

HR@K is the share of held-out (user, movie) pairs whose movie is among that
user's top K of the whole catalog, ranked by exact dot product. Two protocols:

* ``all``: every catalog movie is ranked, including the user's training movies;
* ``seen_excluded``: the user's training movies are removed before ranking
  (what the serving path does).

Ties are broken by catalog row (the earlier row ranks higher), so the
popularity baseline is deterministic. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from trainer.features import Csr
from trainer.readers import DataError

MAX_K = 100
PROTOCOLS = ("all", "seen_excluded")
TABLE_KS = (1, 5, 10, 20, 50, 100)


def rank_positions(scores: np.ndarray, excluded: np.ndarray | None = None) -> np.ndarray:
    """Rank of every item per user: float scores [u, n] -> int64 [u, n] (0 = top).

    ``excluded`` (bool [u, n]) items are ranked after all others.
    """
    if excluded is not None:
        scores = np.where(excluded, -np.inf, scores)
    order = np.argsort(-scores, axis=1, kind="stable")
    positions = np.empty_like(order)
    np.put_along_axis(positions, order, np.arange(scores.shape[1])[None, :].repeat(len(scores), 0), axis=1)
    return positions


# User x item scores per block (256 MB of float32): each block streams the whole item matrix from
# memory, so small blocks cost a large catalog dearly. 2,000 users x 1M items, one BLAS thread:
# 20.0 s at 2^23 (8 users a block), 9.8 s at 2^25, 7.6 s at 2^26 with 64-dim vectors; 9.9 / 6.0 /
# 5.5 s with 32.
CHUNK_SCORES = 1 << 26


def _top_k_lower_bound(scores: np.ndarray, k: int, groups_per_k: int = 8) -> np.ndarray:
    """Per row of ``scores`` [u, n] (k < n), a score at or below its k-th largest: the k-th
    largest of the maxima of ``groups_per_k`` x k column groups (cheaper than a partition
    of the row, and unhurt by ties)."""
    n = scores.shape[1]
    groups = min(n, groups_per_k * k)
    width = n // groups
    maxima = scores[:, : groups * width].reshape(len(scores), groups, width).max(axis=2)
    if groups * width < n:
        maxima = np.concatenate([maxima, scores[:, groups * width :].max(axis=1, keepdims=True)], axis=1)
    return np.partition(maxima, maxima.shape[1] - k, axis=1)[:, maxima.shape[1] - k]


def hit_rates(
    user_vectors: np.ndarray,
    item_vectors: np.ndarray,
    pair_users: np.ndarray,
    pair_items: np.ndarray,
    seen: Csr | None,
    max_k: int = MAX_K,
    chunk_scores: int = CHUNK_SCORES,
) -> np.ndarray:
    """HR@1..max_k: float64 [max_k].

    user_vectors: float32 [u, dim]; item_vectors: float32 [n, dim];
    pair_users: int [p] rows of user_vectors; pair_items: int [p] item rows;
    seen: Csr with u rows of item rows to exclude (None = exclude nothing).

    A pair's rank is the number of (not excluded) items scoring above its item,
    plus those scoring the same at an earlier row; a held-out item the user also
    has in ``seen`` is never a hit. Each distinct user's row is scored once (a
    user's pairs share it), and only the pairs that can rank within ``max_k``
    are counted item by item; memory stays within ``chunk_scores`` user x item
    scores.
    """
    if len(pair_users) == 0:
        raise ValueError("no held-out pairs to evaluate")
    item_count = len(item_vectors)
    k = min(max_k, item_count)
    counts = np.zeros(max_k + 1, dtype=np.int64)  # counts[r] pairs ranked r; counts[max_k] = beyond
    order = np.argsort(pair_users, kind="stable")
    pair_users, pair_items = np.asarray(pair_users)[order], np.asarray(pair_items)[order].astype(np.int64)
    users, first = np.unique(pair_users, return_index=True)
    bounds = np.append(first, len(pair_users))
    step = max(1, chunk_scores // max(item_count, 1))
    columns = np.arange(item_count)
    for start in range(0, len(users), step):
        block = users[start : start + step]
        lo, hi = bounds[start], bounds[start + len(block)]
        local, items = np.searchsorted(block, pair_users[lo:hi]), pair_items[lo:hi]
        scores = user_vectors[block] @ item_vectors.T
        hit_possible = np.ones(len(items), dtype=bool)
        if seen is not None:
            lengths = seen.splits[block + 1] - seen.splits[block]
            rows = np.repeat(np.arange(len(block)), lengths)
            offsets = np.arange(len(rows)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
            excluded = seen.values[np.repeat(seen.splits[block], lengths) + offsets].astype(np.int64)
            hit_possible = ~np.isin(local * item_count + items, rows * item_count + excluded)
            scores[rows, excluded] = -np.inf  # never above a pair's (finite) score
        target = scores[local, items]
        ranks = np.full(len(items), max_k, dtype=np.int64)
        candidates = np.arange(len(items))
        if k < item_count:
            # At least k items score at or above the k-th largest of the rows' group maxima
            # (one per group), so a pair scoring below it ranks k or lower: beyond max_k.
            candidates = np.flatnonzero(target >= _top_k_lower_bound(scores, k)[local])
        for part in np.array_split(candidates, max(1, len(candidates) * item_count // chunk_scores + 1)):
            row, t, i = scores[local[part]], target[part][:, None], items[part][:, None]
            ranks[part] = ((row > t) | ((row == t) & (columns[None, :] < i))).sum(axis=1)
        ranks = np.where(hit_possible, ranks, max_k)
        counts += np.bincount(np.minimum(ranks, max_k), minlength=max_k + 1)
    return np.cumsum(counts[:max_k]) / len(pair_users)


@dataclasses.dataclass(frozen=True)
class EvaluationSet:
    """Everything needed to score a model on held-out pairs.

    pair_users: int [p] rows into the user vectors; pair_items: int [p] item rows;
    seen: Csr over the same user rows (their training movies); popularity:
    float [n] per item (the baseline's score).
    """

    pair_users: np.ndarray
    pair_items: np.ndarray
    seen: Csr
    popularity: np.ndarray


def evaluate(
    user_vectors: np.ndarray,
    item_vectors: np.ndarray,
    data: EvaluationSet,
    baselines: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
) -> dict:
    """HR@1..100 of the model, the popularity baseline and any further ``baselines``, both protocols.

    ``baselines``: name -> (user vectors, item vectors) scored like the model
    (e.g. "ease": the users' training rows and EASE's item-item weights).
    Returns a JSON-able report: {"k": [...], "pairs": p, "users": u,
    "model": {"all": [...], "seen_excluded": [...]}, "popularity": {...}, ...}.
    """
    popularity_user = np.ones((user_vectors.shape[0], 1), dtype=np.float32)
    popularity_items = data.popularity.astype(np.float32)[:, None]
    report = {
        "k": list(range(1, MAX_K + 1)),
        "pairs": int(len(data.pair_users)),
        "users": int(len(np.unique(data.pair_users))),
    }
    for name, users, items in (
        ("model", user_vectors, item_vectors),
        ("popularity", popularity_user, popularity_items),
        *((name, users, items) for name, (users, items) in (baselines or {}).items()),
    ):
        report[name] = {
            protocol: hit_rates(
                users, items, data.pair_users, data.pair_items, data.seen if protocol == "seen_excluded" else None
            ).round(6).tolist()
            for protocol in PROTOCOLS
        }
    return report


def headline(report: Mapping) -> dict[str, float]:
    """Flat {"model/seen_excluded/hr@10": 0.19, ...} at TABLE_KS, for the manifest."""
    return {
        f"{name}/{protocol}/hr@{k}": report[name][protocol][k - 1]
        for name in _rows(report)
        for protocol in PROTOCOLS
        for k in TABLE_KS
    }


def _rows(report: Mapping) -> list[str]:
    """The scored rows of a report: model, popularity, then any baselines (e.g. ease)."""
    return [name for name, value in report.items() if isinstance(value, Mapping) and "all" in value]


def format_table(report: Mapping) -> str:
    """A fixed-width text table of HR@K at TABLE_KS."""
    header = f"{'HR@K':<28}" + "".join(f"{f'@{k}':>9}" for k in TABLE_KS)
    lines = [f"{report['pairs']} held-out pairs, {report['users']} users", header]
    for name in _rows(report):
        for protocol in PROTOCOLS:
            values = "".join(f"{report[name][protocol][k - 1]:>9.4f}" for k in TABLE_KS)
            lines.append(f"{f'{name} ({protocol})':<28}{values}")
    return "\n".join(lines)


def write_report(report: Mapping, out_dir: Path) -> None:
    """Writes report.json and hr_at_k.png (HR@K curves) into ``out_dir``."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = {"model": "tab:blue", "popularity": "tab:gray", "ease": "tab:orange"}
    for name, color in ((name, colors.get(name, "tab:green")) for name in _rows(report)):
        for protocol, style in (("seen_excluded", "-"), ("all", "--")):
            ax.plot(report["k"], report[name][protocol], style, color=color, label=f"{name}, {protocol.replace('_', ' ')}")
    ax.set_xlabel("K")
    ax.set_ylabel("HR@K")
    ax.set_title(f"Hit rate on {report['pairs']} held-out pairs")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "hr_at_k.png", dpi=100)
    plt.close(fig)


# --------------------------------------------------------------------------- held-out pairs

TEST_INTERACTIONS = "test_interactions.tsv"
_TSV_HEADER = "user_id\titem_id"


def write_test_interactions(path: Path, pairs: tuple[np.ndarray, np.ndarray] | None) -> None:
    """Writes the held-out pairs (user ids, item ids) as ``user_id<TAB>item_id`` lines under a header."""
    lines = [_TSV_HEADER]
    if pairs is not None:
        users, items = pairs
        lines += [f"{u}\t{i}" for u, i in zip(users.tolist(), items.tolist())]
    path.write_text("\n".join(lines) + "\n")


def read_test_interactions(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Reads a file written by ``write_test_interactions`` -> (user ids, item ids), str [p]."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found; was the bundle trained with --test-fraction 0?") from None
    if not lines or lines[0] != _TSV_HEADER:
        raise DataError(f"{path}:1: expected the header {_TSV_HEADER!r}")
    users, items = [], []
    for lineno, line in enumerate(lines[1:], start=2):
        parts = line.split("\t")
        if len(parts) != 2 or not all(parts):
            raise DataError(f"{path}:{lineno}: expected 'user_id<TAB>item_id', got {line!r}")
        users.append(parts[0])
        items.append(parts[1])
    return np.array(users, dtype=str), np.array(items, dtype=str)


def evaluation_set(
    pairs: tuple[np.ndarray, np.ndarray],
    item_ids: np.ndarray,
    seen_user_ids: np.ndarray,
    seen: Csr,
    popularity: np.ndarray,
) -> tuple[EvaluationSet, np.ndarray]:
    """Held-out (user id, item id) pairs -> (EvaluationSet, the distinct user ids).

    The EvaluationSet's user rows index the returned user ids (str [u], sorted),
    whose vectors the caller computes. ``seen`` (rows = ``seen_user_ids``)
    gives each user's training items; users without a row have none.
    Every item must be in ``item_ids``.
    """
    pair_user_ids, pair_item_ids = pairs
    users, pair_users = np.unique(pair_user_ids, return_inverse=True)
    item_row = {item: row for row, item in enumerate(item_ids.tolist())}
    unknown = sorted(set(pair_item_ids.tolist()) - item_row.keys())
    if unknown:
        raise DataError(f"{len(unknown)} held-out movies are not in the catalog, e.g. {unknown[:3]}")
    pair_items = np.fromiter((item_row[i] for i in pair_item_ids.tolist()), dtype=np.int64, count=len(pair_item_ids))
    seen_row = {user: row for row, user in enumerate(seen_user_ids.tolist())}
    lists = []
    for user in users.tolist():
        row = seen_row.get(user)
        lists.append([] if row is None else seen.values[seen.splits[row] : seen.splits[row + 1]].tolist())
    data = EvaluationSet(
        pair_users=pair_users.astype(np.int64),
        pair_items=pair_items,
        seen=Csr.from_lists(lists),
        popularity=popularity,
    )
    return data, users


def bundle_report(bundle_dir: Path) -> dict:
    """Recomputes the HR@K report of a published bundle from its files.

    Verifies the manifest hashes, embeds the held-out users with the bundle's
    own user tower and ranks with its item embeddings. Imports TensorFlow.
    """
    from serving.bundle import EVALUATION, USER_TOWER, load_items, load_users, read_manifest, verify_files
    from trainer.export import embed_users, load_user_tower

    manifest = read_manifest(bundle_dir)
    verify_files(bundle_dir, manifest)
    items = load_items(bundle_dir, manifest)
    users = load_users(bundle_dir, manifest)
    pairs = read_test_interactions(bundle_dir / EVALUATION / TEST_INTERACTIONS)
    if len(pairs[0]) == 0:
        raise DataError(f"{bundle_dir}: the bundle has no held-out pairs (trained with --test-fraction 0)")
    seen = Csr(splits=users.seen_indptr, values=users.seen_items)
    data, user_ids = evaluation_set(pairs, items.ids, users.ids, seen, items.popularity)
    user_vectors = embed_users(load_user_tower(bundle_dir / USER_TOWER), user_ids)
    return evaluate(user_vectors, items.embeddings, data)
