"""Cold-start research for issue 17 (numpy only): new users from demographics, new
users from a few named movies, new movies from metadata, all in the two-tower
serving shape (score = q · c, q and c in R^32), on MovieLens 100k.

Run from the repository root with the project venv:

    OPENBLAS_NUM_THREADS=1 .venv/bin/python docs/experiments/cold_start.py [--data-dir ../shared/data/ml-100k]

Prints every table and writes docs/experiments/cold_start.json. The EASE
factors come from trainer.warm_start (the code that ships); everything else
here is research code, not product code.
"""

from __future__ import annotations

import argparse
import json
import pickle
import re
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from bench import cold_start_baselines as baselines  # noqa: E402  (the protocols' ranking and baselines)
from trainer.warm_start import ease_weights, factorise, temporal_gram  # noqa: E402

RANK = 32
TAU, LAMBDA = 40.0, 100.0  # the shipped warm start
AGE_BOUNDARIES = (18, 25, 35, 45, 50, 56)  # trainer.features' buckets
DRAW_SEEDS = (7, 8, 9, 10, 11)
HELD_SHARE = 0.10
NAMED = 5  # protocol 2: movies a new user names
_TITLE_YEAR_RE = re.compile(r"\s*\((\d{4})\)\s*$")
_TOKEN_RE = re.compile(r"[a-z0-9]+")


# ----------------------------------------------------------------------------- data


class Data:
    """ml-100k as 0-based int arrays: ratings (user, item, timestamp) in file order,
    user demographics and movie metadata in file order."""

    def __init__(self, data_dir: Path):
        raw = np.loadtxt(data_dir / "u.data", dtype=np.int64)
        self.users, self.items, self.stamps = raw[:, 0] - 1, raw[:, 1] - 1, raw[:, 3]
        rows = [line.split("|") for line in (data_dir / "u.user").read_text("latin-1").splitlines() if line]
        self.n_users = len(rows)
        self.age = np.array([int(r[1]) for r in rows])
        self.gender = np.array([r[2] for r in rows])
        self.occupation = np.array([r[3] for r in rows])
        self.zip2 = np.array([r[4].strip()[:2].upper() for r in rows])
        self.age_bucket = np.searchsorted(AGE_BOUNDARIES, self.age, side="right")
        rows = [line.split("|") for line in (data_dir / "u.item").read_text("latin-1").splitlines() if line]
        self.n_items = len(rows)
        self.genres = np.array([[int(f) for f in r[5:]] for r in rows], dtype=np.float64)
        years = []
        for r in rows:
            m = re.search(r"(\d{4})\s*$", r[2]) or _TITLE_YEAR_RE.search(r[1])
            years.append(int(m.group(1)) if m else 0)
        self.year = np.array(years)
        self.title_tokens = [_TOKEN_RE.findall(_TITLE_YEAR_RE.sub("", r[1]).lower()) for r in rows]


def matrix(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int) -> np.ndarray:
    x = np.zeros((n_users, n_items))
    x[users, items] = 1.0
    return x


def popularity(x: np.ndarray) -> np.ndarray:
    return x.sum(axis=0)


# ----------------------------------------------------------------------------- ranking


def hit_ranks(scores: np.ndarray, pair_rows: np.ndarray, pair_cols: np.ndarray, excluded: np.ndarray | None = None) -> np.ndarray:
    """bench.cold_start_baselines.hit_ranks (ties: the earlier column ranks higher)."""
    return baselines.hit_ranks(scores, pair_rows, pair_cols, excluded)


def hr(ranks: np.ndarray, ks=(10, 100)) -> dict[str, float]:
    return {f"hr@{k}": float(np.mean(ranks < k)) for k in ks}


# ----------------------------------------------------------------------------- EASE factors


def ease_factors(users, items, stamps, n_items: int, rank: int = RANK, lam: float = LAMBDA, tau: float = TAU):
    """Rank-``rank`` temporal EASE as the towers hold it: (history side, item side), each [items, rank].
    A user's query is the (mean-pooled) sum of the history rows of their movies."""
    gram = temporal_gram(users, items, stamps, n_items, tau)
    return factorise(ease_weights(None, lam, gram), rank)


def plain_ease(x: np.ndarray, lam: float) -> np.ndarray:
    """Full-rank EASE on XᵀX (the issue's "EASE (λ 500) from the 5" baseline)."""
    return ease_weights(x, lam)


class Factors:
    """Temporal EASE fitted once, cut to rank 32 (shipped) and rank 31 (one dimension
    left for a popularity direction): history side P*, item side Q*, each [items, rank]."""

    def __init__(self, users, items, stamps, n_items: int):
        gram = temporal_gram(users, items, stamps, n_items, TAU)
        self.p32, self.q32 = factorise(ease_weights(None, LAMBDA, gram), RANK)
        self.p31, self.q31 = self.p32[:, : RANK - 1], self.q32[:, : RANK - 1]


# ----------------------------------------------------------------------------- softmax fit


def fit_softmax(
    a: np.ndarray, c: np.ndarray, y: np.ndarray, l2: float, free_rows: int = 0, steps: int = 300, lr: float = 0.05
) -> np.ndarray:
    """W minimising  Σ_r [n_r·logsumexp(z_r) − y_r·z_r] / Σ n_r + l2·‖W[free_rows:]‖²,  z = A W Cᵀ.

    A: [rows, fa] query-side inputs; C: [items, fc] candidate-side inputs (one of the
    two is frozen embeddings, the other the features W reads); y: [rows, items]
    interaction counts; the first ``free_rows`` rows of W (the intercept) are not
    penalised. Rows of A that are equal are merged (same objective, less work).
    Full-batch Adam from zero (the problem is convex in W). -> W [fa, fc]."""
    a, inverse = np.unique(a, axis=0, return_inverse=True)
    merged = np.zeros((len(a), y.shape[1]))
    np.add.at(merged, inverse.ravel(), y)
    y = merged
    w = np.zeros((a.shape[1], c.shape[1]))
    penalty = np.ones((a.shape[1], 1))
    penalty[:free_rows] = 0.0
    n = y.sum(axis=1, keepdims=True)
    total = n.sum()
    m1, m2 = np.zeros_like(w), np.zeros_like(w)
    b1, b2 = 0.9, 0.999
    for t in range(1, steps + 1):
        z = a @ w @ c.T
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        g = a.T @ ((n * p - y) / total) @ c + 2 * l2 * penalty * w
        m1 = b1 * m1 + (1 - b1) * g
        m2 = b2 * m2 + (1 - b2) * g * g
        w -= lr * (m1 / (1 - b1**t)) / (np.sqrt(m2 / (1 - b2**t)) + 1e-8)
    return w


def softmax_loss(a, w, c, y) -> float:
    z = a @ w @ c.T
    top = z.max(axis=1, keepdims=True)
    lse = np.log(np.exp(z - top).sum(axis=1)) + top[:, 0]
    return float((y.sum(1) * lse - (y * z).sum(1)).sum() / y.sum())


def fit_ridge(a: np.ndarray, target: np.ndarray, l2: float) -> np.ndarray:
    """argmin_W ‖A W − T‖² + l2·‖W‖² (rows of A equally weighted)."""
    return np.linalg.solve(a.T @ a + l2 * np.eye(a.shape[1]), a.T @ target)


def selection_score(h: dict[str, float]) -> float:
    """What the trainer's early stopping maximises: HR@10 + HR@100 / 4 (HR@50 / 4 for new movies)."""
    return h["hr@10"] + h.get("hr@100", h.get("hr@50", 0.0)) / 4


# ----------------------------------------------------------------------------- features


def one_hot(values: np.ndarray, vocab: np.ndarray) -> np.ndarray:
    """values [n] -> [n, len(vocab)] 0/1 (a value outside ``vocab`` is all zeros)."""
    return (values[:, None] == vocab[None, :]).astype(np.float64)


def demographics(d: Data, rows: np.ndarray, vocab_rows: np.ndarray) -> np.ndarray:
    """Query-side features of users ``rows``: intercept, age bucket, gender, occupation,
    zip prefix (2 characters) and gender × age bucket, one-hot; the vocabularies come
    from the users ``vocab_rows`` (training users), so an unseen value is all zeros."""
    cross = np.char.add(d.gender, d.age_bucket.astype(str))
    blocks = [np.ones((len(rows), 1))]
    for values in (d.age_bucket.astype(str), d.gender, d.occupation, d.zip2, cross):
        blocks.append(one_hot(values[rows], np.unique(values[vocab_rows])))
    return np.hstack(blocks)


def metadata(d: Data, rows: np.ndarray, vocab_rows: np.ndarray, tokens: bool = True) -> np.ndarray:
    """Candidate-side features of movies ``rows``: intercept, genres multi-hot, release
    year in 5-year buckets (as trainer.features) and title tokens seen in at least two
    movies of ``vocab_rows`` (the known movies)."""
    bucket = np.where(d.year > 0, np.clip((d.year - 1920) // 5, 0, 16) + 1, 0).astype(str)
    blocks = [np.ones((len(rows), 1)), d.genres[rows], one_hot(bucket[rows], np.unique(bucket))]
    if tokens:
        counts = Counter(t for r in vocab_rows for t in set(d.title_tokens[r]))
        vocab = sorted(t for t, c in counts.items() if c >= 2)
        index = {t: i for i, t in enumerate(vocab)}
        tok = np.zeros((len(rows), len(vocab)))
        for j, r in enumerate(rows):
            for t in d.title_tokens[r]:
                if t in index:
                    tok[j, index[t]] = 1.0
        blocks.append(tok)
    return np.hstack(blocks)


def unit_rms(a: np.ndarray) -> np.ndarray:
    return a / np.sqrt(np.mean(a**2))


def segment_popularity(d: Data, x: np.ndarray, train_users: np.ndarray, rows: np.ndarray, min_users: int = 20) -> np.ndarray:
    """bench.cold_start_baselines.segment_popularity over the users of ``d``."""
    return baselines.segment_popularity(d.gender, d.age_bucket, d.occupation, x, train_users, rows, min_users)


def earliest(d: Data, user_rows: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """bench.cold_start_baselines.earliest over the ratings of ``d``."""
    return baselines.earliest(d.users, d.items, d.stamps, d.n_items, user_rows, count)


def ratings_of(d: Data, user_rows: np.ndarray | None = None, item_mask: np.ndarray | None = None):
    keep = np.ones(len(d.users), dtype=bool)
    if user_rows is not None:
        keep &= np.isin(d.users, user_rows)
    if item_mask is not None:
        keep &= item_mask[d.items]
    return d.users[keep], d.items[keep], d.stamps[keep]


# ----------------------------------------------------------------------------- item spaces

SOFTMAX_L2 = (1e-2, 1e-1, 1.0)  # new-user feature path (intercept unpenalised)
RIDGE_L2 = (1.0, 10.0, 100.0, 1000.0)
PRIOR_WEIGHTS = (0.0, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)  # protocol 2: prior weight / (spread of history scores / spread of prior)
META_L2 = (1e-4, 1e-3, 1e-2)  # new-movie metadata path, softmax
META_RIDGE_L2 = (0.1, 1.0, 10.0, 100.0)
DEMO_FEATURES = 1 + 7 + 2 + 21  # intercept, age bucket, gender, occupation (zip and crosses: see notes)
FULL_LOGIT_L2 = 1e-3
KNOWN_PRIOR_SHARES = (0.003, 0.01, 0.03, 0.1)  # known users: fractions of the 5-movie prior weight


def log_popularity(x: np.ndarray) -> np.ndarray:
    lp = np.log(x.sum(axis=0) + 1.0)
    return lp - lp.mean()


def demographic_directions(a: np.ndarray, x: np.ndarray, count: int, prior: float = 2000.0) -> np.ndarray:
    """The ``count`` item directions along which demographic groups' tastes differ most:
    right singular vectors of the smoothed log-lift matrix (one row per demographic
    value f: sqrt(N_f) · log(share of item i among f's ratings / overall share))."""
    pop = x.sum(axis=0)
    share = (pop + 1) / (pop.sum() + len(pop))
    counts = a[:, 1:].T @ x
    totals = counts.sum(axis=1, keepdims=True)
    lift = np.sqrt(totals) * (np.log((counts + prior * share) / (totals + prior)) - np.log(share))
    return np.linalg.svd(lift, full_matrices=False)[2][:count].T


def item_spaces(f: Factors, x: np.ndarray, a: np.ndarray) -> dict[str, tuple[int, np.ndarray]]:
    """Frozen 32-dim item vectors for the new-user path -> {name: (EASE rank kept, C [items, 32])}.
    Known users' queries are their EASE history factors in the first ``rank`` dims, zero elsewhere."""
    lp = unit_rms(log_popularity(x))[:, None]
    p32 = f.q32
    return {
        "32 EASE dims": (32, unit_rms(p32)),
        "31 EASE dims + log-popularity dim": (31, np.hstack([unit_rms(p32[:, :31]), lp])),
        "28 EASE dims + log-popularity + 3 demographic dims": (
            28,
            np.hstack([unit_rms(p32[:, :28]), lp, unit_rms(demographic_directions(a, x, 3))]),
        ),
    }


# ----------------------------------------------------------------------------- protocols 1 and 2


def held_users(d: Data, seed: int) -> tuple[np.ndarray, np.ndarray]:
    held = np.sort(np.random.default_rng(seed).choice(d.n_users, int(round(d.n_users * HELD_SHARE)), replace=False))
    return np.setdiff1d(np.arange(d.n_users), held), held


def new_user_scores(
    d: Data, x: np.ndarray, train: np.ndarray, target: np.ndarray, f: Factors, choice: dict | None, ceiling: bool = True
) -> tuple[dict, dict, dict]:
    """Protocol 1 scores of the users ``target`` from features only, every model fitted on
    the users ``train``. ``choice`` None: every grid value (for validation) -> keys
    (method, hyper-parameter); else the chosen hyper-parameter per method.
    Returns (scores, priors for protocol 2: method -> logits, EASE rank of each method)."""
    y = x[train]
    a = demographics(d, train, train)[:, :DEMO_FEATURES]
    a_target = demographics(d, target, train)[:, :DEMO_FEATURES]
    scores, priors, ranks = {}, {}, {}
    pop = y.sum(axis=0)
    scores[("popularity", None)] = np.tile(pop, (len(target), 1))
    scores[("segment popularity", None)] = segment_popularity(d, x, train, target)
    c32 = unit_rms(f.q32)
    mean_vector = y @ c32 / y.sum(axis=1, keepdims=True)
    for l2 in RIDGE_L2 if choice is None else (choice["ridge onto the mean item vector (32 EASE dims)"],):
        w = fit_ridge(a, mean_vector, l2)
        scores[("ridge onto the mean item vector (32 EASE dims)", l2)] = a_target @ w @ c32.T
    for name, (rank, c) in item_spaces(f, y, a).items():
        method = f"softmax, {name}"
        ranks[method] = rank
        for l2 in SOFTMAX_L2 if choice is None else (choice[method],):
            w = fit_softmax(a, c, y, l2, free_rows=1)
            scores[(method, l2)] = a_target @ w @ c.T
            priors[(method, l2)] = scores[(method, l2)]
    intercept = fit_softmax(np.ones((len(train), 1)), c32, y, 0.0, free_rows=1)
    priors[("popularity in the 32 EASE dims", None)] = np.tile(intercept @ c32.T, (len(target), 1))
    priors[("log-popularity dim", None)] = np.tile(log_popularity(y), (len(target), 1))
    if choice is not None and ceiling:  # the unrestricted multinomial logit: a ceiling, not a 32-dim model
        w = fit_softmax(a, np.eye(d.n_items), y, FULL_LOGIT_L2, free_rows=1)
        scores[("reference: full-rank multinomial logit on demographics (not 32-dim)", FULL_LOGIT_L2)] = a_target @ w
    return scores, priors, ranks


def few_movie_scores(
    d: Data, x: np.ndarray, train: np.ndarray, target: np.ndarray, named: np.ndarray, f: Factors, priors: dict, ranks: dict, choice: dict | None, units: dict
):
    """Protocol 2: the users ``target`` name the movies ``named`` (0/1 [target, items]).
    History path = sum-pooled EASE history factors of the named movies (the tower's mean
    pooling ranks the same); a prior (popularity or the demographic path) is added with
    weight k, which is the same as mean pooling plus k / n times the prior."""
    out = {}
    y = x[train]
    out[("popularity", None)] = np.tile(y.sum(axis=0), (len(target), 1))
    out[("EASE λ500 (full rank, plain Gram) from the named movies", None)] = named @ plain_ease(y, 500.0)
    history = {rank: named @ f.p32[:, :rank] @ f.q32[:, :rank].T for rank in (28, 31, 32)}
    out[("temporal EASE rank 32 from the named movies (the shipped towers)", None)] = history[32]
    combos = {
        "rank-32 history + popularity in the 32 EASE dims": (32, "popularity in the 32 EASE dims"),
        "rank-31 history + log-popularity dim": (31, "log-popularity dim"),
    }
    for method, rank in ranks.items():
        combos[f"rank-{rank} history + demographic path ({method.removeprefix('softmax, ')})"] = (rank, method)
    for name, (rank, prior_name) in combos.items():
        prior = next(v for (m, _), v in priors.items() if m == prior_name)
        hist = history[rank]
        unit = units[name] = hist.std() / prior.std()  # so that the weight grid is scale-free
        for weight in PRIOR_WEIGHTS if choice is None else (choice[name],):
            out[(name, weight)] = hist + weight * unit * prior
    return out


def pairs(target_matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.nonzero(target_matrix)


def evaluate(scores: dict, test: np.ndarray, excluded: np.ndarray | None, ks=(10, 100)) -> dict:
    rows, cols = pairs(test)
    return {key: hr(hit_ranks(s, rows, cols, excluded), ks) for key, s in scores.items()}


def choose(results: dict) -> dict:
    """Best hyper-parameter per method by HR@10 + HR@100 / 4 on validation."""
    best: dict = {}
    for (method, value), h in results.items():
        if method not in best or selection_score(h) > selection_score(results[(method, best[method])]):
            best[method] = value
    return best


def new_user_draw(d: Data, x: np.ndarray, seed: int) -> dict:
    train, held = held_users(d, seed)
    # validation: 10% of the training users play the new users
    val = np.sort(np.random.default_rng(seed + 1000).choice(train, int(round(len(train) * HELD_SHARE)), replace=False))
    fit = np.setdiff1d(train, val)
    f_fit = Factors(*ratings_of(d, fit), d.n_items)
    s1, priors, ranks = new_user_scores(d, x, fit, val, f_fit, None)
    choice1 = choose(evaluate(s1, x[val], None))
    named_val, rest_val = earliest(d, val, NAMED)
    prior_choice = {m: (choice1.get(m) if m in choice1 else None) for m, _ in priors}
    chosen_priors = {k: v for k, v in priors.items() if k[1] == prior_choice[k[0]]}
    s2 = few_movie_scores(d, x, fit, val, named_val, f_fit, chosen_priors, ranks, None, {})
    choice2 = choose(evaluate(s2, rest_val, named_val.astype(bool)))
    units: dict = {}
    # test: everything refitted on all training users with the chosen values
    f = Factors(*ratings_of(d, train), d.n_items)
    s1, priors, ranks = new_user_scores(d, x, train, held, f, choice1)
    r1 = evaluate(s1, x[held], None)
    named, rest = earliest(d, held, NAMED)
    s2 = few_movie_scores(d, x, train, held, named, f, priors, ranks, choice2, units)
    r2 = evaluate(s2, rest, named.astype(bool))
    absolute = {name: choice2[name] * unit for name, unit in units.items()}
    return {"protocol1": r1, "protocol2": r2, "choice1": choice1, "choice2": choice2, "absolute_weight2": absolute}


# ----------------------------------------------------------------------------- protocol 3


def genre_profile_scores(x_known: np.ndarray, genres: np.ndarray, new: np.ndarray, idf: bool = False) -> np.ndarray:
    """bench.cold_start_baselines.genre_profile_scores; with ``idf``, each genre of the
    profile divided by its count over all training ratings first."""
    if not idf:
        return baselines.genre_profile_scores(x_known, genres, new)
    weighted = genres / np.maximum(x_known.sum(axis=0) @ genres, 1.0)[None, :]
    profile = x_known @ weighted
    profile /= np.maximum(np.linalg.norm(profile, axis=1, keepdims=True), 1e-12)
    g = genres[new] / np.maximum(np.linalg.norm(genres[new], axis=1, keepdims=True), 1e-12)
    return profile @ g.T


def new_movie_scores(d: Data, x: np.ndarray, known: np.ndarray, new: np.ndarray, choice: dict | None) -> dict:
    """Scores [users, len(new)] of the movies ``new``, which have no rating in the fit:
    EASE and every model see only the ratings of the movies ``known``."""
    mask = np.zeros(d.n_items, dtype=bool)
    mask[known] = True
    f = Factors(*ratings_of(d, item_mask=mask), d.n_items)
    x_known = x * mask[None, :]
    active = x_known.sum(axis=1) > 0
    queries = x_known @ f.p32  # sum pooling; any per-user scale ranks the same
    queries_mean = unit_rms(queries / np.maximum(x_known.sum(axis=1, keepdims=True), 1.0))
    out = {
        ("genre profile · movie genres (cosine)", None): genre_profile_scores(x_known, d.genres, new),
        ("genre profile, genres weighted by 1 / their rating count (cosine)", None): genre_profile_scores(x_known, d.genres, new, idf=True),
    }
    for tokens in (False, True):
        label = "genres, year bucket" + (", title tokens" if tokens else "")
        m_known = metadata(d, known, known, tokens)
        m_new = metadata(d, new, known, tokens)
        name = f"ridge onto known movies' EASE item vectors ({label})"
        for l2 in META_RIDGE_L2 if choice is None else (choice[name],):
            v = fit_ridge(m_known, f.q32[known], l2)
            out[(name, l2)] = queries @ (m_new @ v).T
        if tokens:  # the softmax fit with ~500 token columns is slow; ridge shows what tokens add
            continue
        name = f"softmax metadata tower vs frozen known-user queries ({label})"
        for l2 in META_L2 if choice is None else (choice[name],):
            w = fit_softmax(queries_mean[active], m_known, x_known[active][:, known], l2)
            out[(name, l2)] = queries_mean @ (m_new @ w.T).T
    return out


def new_movie_draw(d: Data, x: np.ndarray, seed: int) -> dict:
    held = int(round(d.n_items * HELD_SHARE))
    new = np.sort(np.random.default_rng(seed).choice(d.n_items, held, replace=False))
    known = np.setdiff1d(np.arange(d.n_items), new)
    val = np.sort(np.random.default_rng(seed + 2000).choice(known, int(round(len(known) * HELD_SHARE)), replace=False))
    fit = np.setdiff1d(known, val)
    choice = choose(evaluate(new_movie_scores(d, x, fit, val, None), x[:, val], None, (10, 50)))
    results = evaluate(new_movie_scores(d, x, known, new, choice), x[:, new], None, (10, 50))
    results[("uniform random (expected)", None)] = {"hr@10": 10 / len(new), "hr@50": 50 / len(new)}
    return {"protocol3": results, "choice3": choice}


def new_movies_in_catalog(d: Data, x: np.ndarray, seed: int, l2: float) -> dict:
    """Diagnostic for serving (one draw): the new movies' ridge vectors placed in the whole
    catalog beside the known movies' EASE vectors. Each (user, new movie) pair is ranked
    among all movies with the user's known movies excluded; also the share of top-10
    slots the new movies get. Variants: ridge vectors as fitted, and rescaled so their
    mean norm equals the known movies' (ridge predictions shrink towards the mean)."""
    held = int(round(d.n_items * HELD_SHARE))
    new = np.sort(np.random.default_rng(seed).choice(d.n_items, held, replace=False))
    known = np.setdiff1d(np.arange(d.n_items), new)
    mask = np.zeros(d.n_items, dtype=bool)
    mask[known] = True
    f = Factors(*ratings_of(d, item_mask=mask), d.n_items)
    x_known = x * mask[None, :]
    queries = x_known @ f.p32
    meta = metadata(d, np.arange(d.n_items), known, tokens=False)
    v = fit_ridge(meta[known], f.q32[known], l2)
    test = x * ~mask[None, :]
    out = {"share of new movies in the catalog": len(new) / d.n_items, "share of ratings on new movies": float(test.sum() / x.sum())}
    known_norm = np.linalg.norm(f.q32[known], axis=1).mean()
    for label, scale in (("as fitted", None), ("rescaled to the known movies' mean norm", known_norm)):
        items = f.q32.copy()
        predicted = meta[new] @ v
        if scale is not None:
            predicted *= scale / np.linalg.norm(predicted, axis=1).mean()
        items[new] = predicted
        scores = queries @ items.T
        h = evaluate({("x", None): scores}, test, x_known.astype(bool))[("x", None)]
        top = np.argsort(-np.where(x_known.astype(bool), -np.inf, scores), axis=1)[:, :10]
        h["share of top-10 slots on new movies"] = float(np.isin(top, new).mean())
        out[label] = h
    return out


def distinct_lists(d: Data, x: np.ndarray, seed: int, l2: float) -> dict:
    """Is the features-only path personalised? Distinct top-10 lists among the held-out
    users of one draw (31 EASE dims + log-popularity, softmax L2 ``l2``), and the two
    profiles of the issue (F 25 student, M 60 retired) compared."""
    train, held = held_users(d, seed)
    f = Factors(*ratings_of(d, train), d.n_items)
    y = x[train]
    a = demographics(d, train, train)[:, :DEMO_FEATURES]
    _, c = item_spaces(f, y, a)["31 EASE dims + log-popularity dim"]
    w = fit_softmax(a, c, y, l2, free_rows=1)
    top = np.argsort(-(demographics(d, held, train)[:, :DEMO_FEATURES] @ w @ c.T), axis=1, kind="stable")[:, :10]
    profiles = {}
    for label, age, gender, occupation in (("F 25 student", 25, "F", "student"), ("M 60 retired", 60, "M", "retired")):
        row = np.concatenate([[1.0], one_hot(np.array([str(np.searchsorted(AGE_BOUNDARIES, age, side="right"))]), np.unique(d.age_bucket[train].astype(str)))[0],
                              one_hot(np.array([gender]), np.unique(d.gender[train]))[0], one_hot(np.array([occupation]), np.unique(d.occupation[train]))[0]])
        profiles[label] = np.argsort(-(row @ w @ c.T), kind="stable")[:10]
    pop_top = np.argsort(-y.sum(axis=0), kind="stable")[:10]
    return {
        "held-out users": len(held),
        "distinct top-10 lists": len({tuple(t) for t in top.tolist()}),
        "top-10 overlap F 25 student / M 60 retired": len(set(profiles["F 25 student"]) & set(profiles["M 60 retired"])),
        "top-10 overlap with popularity, F 25 student": len(set(profiles["F 25 student"]) & set(pop_top)),
        "top-10 overlap with popularity, M 60 retired": len(set(profiles["M 60 retired"]) & set(pop_top)),
    }


GATE_COUNTS = (1, 2, 5, 10, 15)  # named movies
GATE_WEIGHTS = (0.0, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)


def prior_weight_by_length(d: Data, x: np.ndarray, seed: int, choice1: dict) -> list[dict]:
    """How the weight of the demographic path (31 EASE + log-popularity space) should
    depend on the history length n: protocol 2 with the n earliest movies named, the
    weight chosen on the validation users for each n, reported as the absolute k of
    score = Σ hist + k · demographic logits (comparable with the known-user table)."""
    method = "softmax, 31 EASE dims + log-popularity dim"
    train, held = held_users(d, seed)
    val = np.sort(np.random.default_rng(seed + 1000).choice(train, int(round(len(train) * HELD_SHARE)), replace=False))
    fit = np.setdiff1d(train, val)

    def parts(fit_users, target):
        f = Factors(*ratings_of(d, fit_users), d.n_items)
        scores, _, _ = new_user_scores(d, x, fit_users, target, f, choice1, ceiling=False)
        return f, scores[(method, choice1[method])], x[fit_users].sum(axis=0)

    f_val, prior_val, _ = parts(fit, val)
    f, prior, pop = parts(train, held)
    rows = []
    for n in GATE_COUNTS:
        named, rest = earliest(d, val, n)
        hist = named @ f_val.p31 @ f_val.q31.T
        unit = hist.std() / prior_val.std()
        tried = {(None, m): hist + m * unit * prior_val for m in GATE_WEIGHTS}
        best = choose(evaluate(tried, rest, named.astype(bool)))[None]
        k = best * unit
        named, rest = earliest(d, held, n)
        hist = named @ f.p31 @ f.q31.T
        result = evaluate(
            {"popularity": np.tile(pop, (len(held), 1)), "history only": hist, "history + k · demographic path": hist + k * prior},
            rest,
            named.astype(bool),
        )
        rows.append({"named": n, "weight multiple": best, "k": float(k), **{name: h for name, h in result.items()}})
    return rows


# ----------------------------------------------------------------------------- known users


def known_users(d: Data, choice1: dict, absolute_weight2: dict) -> dict:
    """Seed-42 80/20 rating split, seen excluded: what each item space costs known users
    (their queries: EASE history factors in the kept dims, zero in the cold-start dims),
    and what adding the demographic path with protocol 2's absolute weight costs them
    (sum-pooled history + k · demographic logits, k as chosen for 5-movie users)."""
    order = np.random.default_rng(42).permutation(len(d.users))
    held = len(d.users) // 5
    tr, te = order[:-held], order[-held:]
    f = Factors(d.users[tr], d.items[tr], d.stamps[tr], d.n_items)
    x = matrix(d.users[tr], d.items[tr], d.n_users, d.n_items)
    test = matrix(d.users[te], d.items[te], d.n_users, d.n_items)
    everyone = np.arange(d.n_users)
    history = {rank: x @ f.p32[:, :rank] @ f.q32[:, :rank].T for rank in (32, 31, 28)}
    out = {(f"rank-{rank} EASE history, cold-start dims zero", None): s for rank, s in history.items()}
    scores, _, ranks = new_user_scores(d, x, everyone, everyone, f, choice1, ceiling=False)
    for method, rank in ranks.items():
        name = f"rank-{rank} history + demographic path ({method.removeprefix('softmax, ')})"
        weight = absolute_weight2[name]
        out[(name, weight)] = history[rank] + weight * scores[(method, choice1[method])]
        if rank == 31:  # how much of that prior can known users take?
            for share in KNOWN_PRIOR_SHARES:
                out[(f"{name}, {share:g} × that weight", weight * share)] = history[rank] + weight * share * scores[(method, choice1[method])]
    return evaluate(out, test, x.astype(bool))


# ----------------------------------------------------------------------------- report


def summarise(per_draw: list[dict]) -> list[dict]:
    """[{method -> {hr@k}}] over draws -> rows with mean and standard error per K and
    the hyper-parameter chosen in each draw."""
    rows = []
    methods = [m for m, _ in per_draw[0]]
    for method in methods:
        picks = [next((v, h) for (m, v), h in draw.items() if m == method) for draw in per_draw]
        row = {"method": method, "chosen": [p[0] for p in picks]}
        for k in picks[0][1]:
            values = np.array([p[1][k] for p in picks])
            row[k] = {"mean": float(values.mean()), "se": float(values.std(ddof=1) / np.sqrt(len(values))), "draws": values.round(5).tolist()}
        rows.append(row)
    return rows


def print_table(title: str, rows: list[dict]) -> None:
    print(f"\n## {title}")
    ks = [k for k in rows[0] if k.startswith("hr@")]
    print("| method | " + " | ".join(f"{k.upper()} mean ± SE" for k in ks) + " | seed-7 draw | chosen per draw |")
    print("|---|" + "---|" * (len(ks) + 2))
    for row in rows:
        cells = " | ".join(f"{row[k]['mean']:.4f} ± {row[k]['se']:.4f}" for k in ks)
        first = " / ".join(f"{row[k]['draws'][0]:.4f}" for k in ks)
        chosen = ", ".join("—" if c is None else f"{c:g}" for c in row["chosen"])
        print(f"| {row['method']} | {cells} | {first} | {chosen} |")


def ratios(rows: list[dict], per_draw: list[dict], baseline: str) -> dict:
    """Per method: mean over draws of HR / the baseline's HR on the same draw (± SE)."""
    out = {}
    for row in rows:
        method = row["method"]
        base = next(r for r in rows if r["method"] == baseline)
        out[method] = {}
        for k in (k for k in row if k.startswith("hr@")):
            r = np.array(row[k]["draws"]) / np.array(base[k]["draws"])
            out[method][k] = {"mean": float(r.mean()), "se": float(r.std(ddof=1) / np.sqrt(len(r)))}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent.parent / "shared" / "data" / "ml-100k")
    parser.add_argument("--draws", type=int, default=len(DRAW_SEEDS))
    parser.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".json"))
    parser.add_argument("--cache", type=Path, default=None, help="folder for per-draw results (reused when present)")
    args = parser.parse_args()
    if args.cache:
        args.cache.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    d = Data(args.data_dir)
    x = matrix(d.users, d.items, d.n_users, d.n_items)
    seeds = DRAW_SEEDS[: args.draws]
    users, movies = [], []
    for seed in seeds:
        cached = args.cache and args.cache / f"draw{seed}.pickle"
        if cached and cached.exists():
            u, m = pickle.loads(cached.read_bytes())
        else:
            u, m = new_user_draw(d, x, seed), new_movie_draw(d, x, seed)
            if cached:
                cached.write_bytes(pickle.dumps((u, m)))
        users.append(u)
        movies.append(m)
        print(f"draw {seed} done, {time.monotonic() - started:.0f} s", flush=True)
    report: dict = {"draw_seeds": list(seeds), "tables": {}, "ratios": {}}
    for key, title, baseline, runs in (
        ("protocol1", "(1) new users from age, gender, occupation only (10% of users held out, whole catalog)", "popularity", users),
        ("protocol2", "(2) new users who name their 5 earliest movies (named ones excluded)", "popularity", users),
        ("protocol3", "(3) new movies from metadata only (ranked among the held-out movies)", "genre profile · movie genres (cosine)", movies),
    ):
        rows = summarise([r[key] for r in runs])
        report["tables"][key] = rows
        report["ratios"][key] = ratios(rows, [r[key] for r in runs], baseline)
        print_table(title, rows)
        print(f"ratio to '{baseline}' on the same draw (mean ± SE):")
        for method, by_k in report["ratios"][key].items():
            print(f"  {method}: " + ", ".join(f"{k} {v['mean']:.3f} ± {v['se']:.3f}" for k, v in by_k.items()))
    # known users: the hyper-parameters most often chosen, and the mean absolute prior weight
    choice1 = {m: Counter(r["choice1"][m] for r in users).most_common(1)[0][0] for m in users[0]["choice1"]}
    absolute = {m: float(np.mean([r["absolute_weight2"][m] for r in users])) for m in users[0]["absolute_weight2"]}
    known = known_users(d, choice1, absolute)
    report["known_users"] = [{"method": m, "weight": w, **h} for (m, w), h in known.items()]
    report["known_users_settings"] = {"softmax_l2": choice1, "prior_weight_absolute": absolute}
    print("\n## known users, seed-42 80/20 split, seen excluded (shipped: 0.1777 / 0.6432; floor 0.175 / 0.63)")
    print("| query / item space | HR@10 | HR@100 |\n|---|---|---|")
    for (m, w), h in known.items():
        print(f"| {m}{'' if w is None else f' (k = {w:.3g})'} | {h['hr@10']:.4f} | {h['hr@100']:.4f} |")
    l2 = movies[0]["choice3"]["ridge onto known movies' EASE item vectors (genres, year bucket)"]
    report["new_movies_in_catalog"] = new_movies_in_catalog(d, x, seeds[0], l2)
    print(f"\n## new movies in the whole catalog (draw {seeds[0]}, ridge, genres + year, λ {l2:g})")
    print(json.dumps(report["new_movies_in_catalog"], indent=1))
    l2 = users[0]["choice1"]["softmax, 31 EASE dims + log-popularity dim"]
    report["personalisation"] = distinct_lists(d, x, seeds[0], l2)
    print(f"\n## is the features-only path personalised? (draw {seeds[0]}, 31 EASE + log-pop, L2 {l2:g})")
    print(json.dumps(report["personalisation"], indent=1))
    report["prior_weight_by_length"] = prior_weight_by_length(d, x, seeds[0], choice1)
    print(f"\n## weight of the demographic path by history length (draw {seeds[0]}, 31 EASE + log-pop)")
    print("| named movies | weight chosen (× spread ratio) | k | popularity HR@10 / @100 | history only | history + k · demographic |")
    print("|---|---|---|---|---|---|")
    for row in report["prior_weight_by_length"]:
        cells = " | ".join(f"{row[m]['hr@10']:.4f} / {row[m]['hr@100']:.4f}" for m in ("popularity", "history only", "history + k · demographic path"))
        print(f"| {row['named']} | {row['weight multiple']:g} | {row['k']:.3g} | {cells} |")
    report["seconds"] = round(time.monotonic() - started, 1)
    args.out.write_text(json.dumps(report, indent=1, ensure_ascii=False))
    print(f"\nwrote {args.out} ({report['seconds']} s)")


if __name__ == "__main__":
    main()
