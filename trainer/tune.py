"""K-fold cross-validation of the warm start's hyper-parameters (numpy only).

The validation slice that early stopping uses holds 5% of the training
ratings (4,000 pairs on ml-100k), so its HR@10 has a standard error of about
0.006, larger than the differences between neighbouring warm-start settings.
``cross_validate`` measures every (tau, lambda) cell of a grid on K folds of
the *training* part of the same train/test split that ``train`` makes: each
fold's ratings are held out in turn, the rank-r (temporal) EASE model of the
warm start is fitted on the rest, and the held-out pairs are scored by the
same HR@K as ``trainer.evaluate``, seen movies excluded and all ranked. Every
training rating is held out exactly once, so a cell's figure rests on the
whole training part, and cells are compared fold by fold (paired), which
removes most of the fold-to-fold noise. The test split is never read.

The scores are those of the untrained towers (``trainer.warm_start``):
``x_u · U S^a · (V S^(1-a))ᵀ`` with the 0/1 fit history x_u (how the singular values are shared
between the towers does not change the product). The mean-pooling
and the softmax scale of the real towers divide each user's scores by a
positive number, which changes no ranking.

Cost: per fold one [items, items] Gram per tau and one inverse and SVD per
cell, all dense, as in the warm start itself (fine up to a few ten thousand
movies; ml-100k's default 5 x 5 grid, 10 folds: about 7 minutes on 2 cores).
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable, Sequence

import numpy as np

from trainer.dataset import Dataset, Interactions
from trainer.evaluate import PROTOCOLS, hit_rates
from trainer.features import seen_csr
from trainer.warm_start import dense_interactions, ease_weights, factorise, temporal_gram

# Cells are ranked by the early-stopping score of ``trainer.train``: HR@10 + HR@100 / 4, seen excluded.
SELECTION = "HR@10 + HR@100/4 (seen excluded)"
POPULARITY = "popularity"  # the baseline's key in a fold's hits
_KS = (10, 100)


@dataclasses.dataclass(frozen=True)
class Cell:
    """One warm-start setting: ``tau`` 0 = plain co-occurrence XᵀX."""

    tau: float
    lam: float

    @property
    def flags(self) -> str:
        return f"--ease-tau {self.tau:g} --ease-lambda {self.lam:g}"


@dataclasses.dataclass(frozen=True)
class FoldHits:
    """Hits of one cell on one fold: ``hits[protocol][k]`` held-out pairs in the top k."""

    pairs: int
    hits: dict[str, dict[int, int]]


def fold_rows(n: int, folds: int, seed: int) -> list[np.ndarray]:
    """A seeded partition of 0..n-1 into ``folds`` near-equal parts (int64, sorted)."""
    if folds < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got {folds}")
    if n < folds:
        raise ValueError(f"{n} ratings cannot be split into {folds} folds")
    order = np.random.default_rng(seed).permutation(n)
    return [np.sort(part) for part in np.array_split(order, folds)]


def _hits(
    fit: Interactions, held: Interactions, user_count: int, item_count: int, cells: Sequence[Cell], rank: int
) -> dict[Cell | str, FoldHits]:
    """One fold: the hits of every cell, and of the fit part's popularity under ``POPULARITY``."""
    seen = seen_csr(fit.users, fit.items, user_count)
    x = dense_interactions(seen, item_count)

    def fold_hits(users: np.ndarray, items: np.ndarray) -> FoldHits:
        hits = {}
        for protocol in PROTOCOLS:
            excluded = seen if protocol == "seen_excluded" else None
            rates = hit_rates(users, items, held.users, held.items, excluded, max_k=max(_KS))
            hits[protocol] = {k: int(round(rates[k - 1] * len(held))) for k in _KS}
        return FoldHits(pairs=len(held), hits=hits)

    counts = np.bincount(fit.items, minlength=item_count).astype(np.float32)
    out: dict[Cell | str, FoldHits] = {POPULARITY: fold_hits(np.ones((user_count, 1), np.float32), counts[:, None])}
    for tau in sorted({c.tau for c in cells}):
        gram = temporal_gram(fit.users, fit.items, fit.timestamps, item_count, tau) if tau > 0 else None
        for cell in (c for c in cells if c.tau == tau):
            query_side, item_side = factorise(ease_weights(x, cell.lam, gram), rank)
            out[cell] = fold_hits((x @ query_side).astype(np.float32), item_side.astype(np.float32))
    return out


def cross_validate(
    dataset: Dataset,
    train_rows: np.ndarray,
    taus: Sequence[float],
    lams: Sequence[float],
    rank: int = 32,
    folds: int = 10,
    seed: int = 0,
    progress: Callable[[str], None] = print,
) -> dict:
    """Fits every (tau, lambda) on K-1 folds of the interactions ``train_rows`` (the training
    part of ``trainer.split.split_interactions``) and scores the held-out fold.

    Returns a JSON-able report: the grid, per-cell HR@10 / HR@100 (pooled over
    the folds) under both protocols, each cell's paired difference to the best
    cell with its standard error over the folds, and the best cell's flags.
    """
    if any(t < 0 for t in taus) or any(lam <= 0 for lam in lams):
        raise ValueError("tau must be 0 or more and lambda positive")
    cells = [Cell(float(t), float(lam)) for t, lam in itertools.product(dict.fromkeys(taus), dict.fromkeys(lams))]
    if not cells:
        raise ValueError("the grid is empty: give at least one tau and one lambda")
    train = dataset.interactions.take(train_rows)
    parts = fold_rows(len(train), folds, seed)
    per_fold: list[dict[Cell | str, FoldHits]] = []
    started = time.monotonic()
    for f, held_rows in enumerate(parts):
        fit_rows = np.concatenate([p for g, p in enumerate(parts) if g != f])
        per_fold.append(_hits(train.take(fit_rows), train.take(held_rows), len(dataset.users), len(dataset.items), cells, rank))
        progress(f"fold {f + 1}/{folds}: {len(cells)} cells, {time.monotonic() - started:.0f} s")
    return _report(cells, per_fold, rank=rank, folds=folds, seed=seed, ratings=len(train))


def _score(fold: FoldHits) -> float:
    hits = fold.hits["seen_excluded"]
    return (hits[10] + hits[100] / 4) / fold.pairs


def _report(cells: list[Cell], per_fold: list[dict[Cell | str, FoldHits]], **meta) -> dict:
    pairs = sum(fold[cells[0]].pairs for fold in per_fold)

    def pooled(cell: Cell | str, protocol: str, k: int) -> float:
        return sum(fold[cell].hits[protocol][k] for fold in per_fold) / pairs

    def selection(cell: Cell) -> float:
        return pooled(cell, "seen_excluded", 10) + pooled(cell, "seen_excluded", 100) / 4

    def figures(cell: Cell | str) -> dict[str, float]:
        return {f"{protocol}/hr@{k}": round(pooled(cell, protocol, k), 6) for protocol in PROTOCOLS for k in _KS}

    best = max(cells, key=selection)  # first of equals: the grid's order
    rows = []
    for cell in sorted(cells, key=selection, reverse=True):
        diffs = np.array([_score(fold[cell]) - _score(fold[best]) for fold in per_fold])
        rows.append(
            {
                "tau": cell.tau,
                "lambda": cell.lam,
                **figures(cell),
                "selection": round(selection(cell), 6),
                "vs_best": round(selection(cell) - selection(best), 6),
                "vs_best_se": round(float(diffs.std(ddof=1) / np.sqrt(len(diffs))), 6),
            }
        )
    return {
        **meta,
        "pairs": pairs,
        "selection": SELECTION,
        "cells": rows,
        "popularity": figures(POPULARITY),
        "best": {"tau": best.tau, "lambda": best.lam, "flags": best.flags},
    }


def format_table(report: dict) -> str:
    """The report's cells, best first, as fixed-width text."""
    lines = [
        f"{report['folds']}-fold cross-validation over {report['pairs']} training ratings, rank {report['rank']}; "
        f"sorted by {report['selection']}; Δ = paired difference to the best cell ± its standard error over the folds",
        f"{'tau':>6} {'lambda':>8} {'HR@10 excl.':>12} {'HR@100 excl.':>13} {'HR@10 all':>10} {'HR@100 all':>11} {'Δ score':>18}",
    ]
    for row in report["cells"]:
        lines.append(
            f"{row['tau']:>6g} {row['lambda']:>8g} {row['seen_excluded/hr@10']:>12.4f} {row['seen_excluded/hr@100']:>13.4f} "
            f"{row['all/hr@10']:>10.4f} {row['all/hr@100']:>11.4f} {row['vs_best']:>+10.4f} ± {row['vs_best_se']:.4f}"
        )
    pop = report["popularity"]
    lines.append(
        f"{'popularity':>15} {pop['seen_excluded/hr@10']:>12.4f} {pop['seen_excluded/hr@100']:>13.4f} "
        f"{pop['all/hr@10']:>10.4f} {pop['all/hr@100']:>11.4f}"
    )
    lines.append(f"best: {report['best']['flags']}")
    return "\n".join(lines)
