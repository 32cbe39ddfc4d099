"""A small synthetic dataset in the MovieLens 100k file layout, for tests.

Users prefer one or two genres and rate movies of those genres more often, so
a model trained on it has real structure to learn. Deterministic for a seed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
OCCUPATIONS = ("student", "engineer", "writer", "artist", "other")
WORDS = ("Night", "Love", "Star", "Return", "City", "Dark", "King", "Dream", "River", "Ghost", "Café")


def write_small_movielens(
    directory: Path, users: int = 60, items: int = 80, ratings: int = 2000, seed: int = 0
) -> Path:
    """Writes u.genre, u.item, u.user, u.data into ``directory``; returns it.

    Movie and user ids are 1..items and 1..users; every movie has 1-2 genres
    (never "unknown") and every user rates at least 5 distinct movies.
    """
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "u.genre").write_text("".join(f"{g}|{i}\n" for i, g in enumerate(GENRES)) + "\n", encoding="latin-1")

    item_genres = [sorted(set(rng.integers(1, len(GENRES), size=rng.integers(1, 3)).tolist())) for _ in range(items)]
    item_lines = []
    for i in range(items):
        year = 1930 + int(rng.integers(0, 68))
        title = f"{rng.choice(WORDS)} {rng.choice(WORDS)} {i + 1} ({year})"
        flags = "|".join("1" if g in item_genres[i] else "0" for g in range(len(GENRES)))
        item_lines.append(f"{i + 1}|{title}|01-Jan-{year}||http://example.invalid/{i + 1}|{flags}\n")
    (directory / "u.item").write_text("".join(item_lines), encoding="latin-1")

    user_lines = []
    for u in range(users):
        gender = "MF"[int(rng.integers(0, 2))]
        zip_code = f"{int(rng.integers(0, 100_000)):05d}"
        user_lines.append(f"{u + 1}|{int(rng.integers(12, 70))}|{gender}|{rng.choice(OCCUPATIONS)}|{zip_code}\n")
    (directory / "u.user").write_text("".join(user_lines), encoding="latin-1")

    popularity = rng.zipf(1.5, size=items).clip(max=50).astype(float)
    pairs: set[tuple[int, int]] = set()
    per_user = max(5, ratings // users)
    for u in range(users):
        liked = set(rng.integers(1, len(GENRES), size=2).tolist())
        affinity = np.array([4.0 if liked & set(g) else 0.3 for g in item_genres]) * popularity
        chosen = rng.choice(items, size=min(per_user, items), replace=False, p=affinity / affinity.sum())
        pairs.update((u, int(i)) for i in chosen)
    data_lines = [
        f"{u + 1}\t{i + 1}\t{int(rng.integers(1, 6))}\t{880_000_000 + int(rng.integers(0, 10_000_000))}\n"
        for u, i in sorted(pairs)
    ]
    order = rng.permutation(len(data_lines))
    (directory / "u.data").write_text("".join(data_lines[k] for k in order))
    return directory
