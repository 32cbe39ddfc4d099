"""bench/cold_start.py's mechanics, without training: the held-out draws leave nothing of
the held-out part in the training data, and the baselines reproduce the issue's rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench import cold_start, cold_start_baselines as base
from trainer.readers import ReadOptions, read_folder

ML100K = Path(__file__).resolve().parents[1].parent.parent / "shared" / "data" / "ml-100k"


def _decoded(table, name: str) -> list:
    """Feature ``name`` of every row as values (codes decoded), for comparisons across vocabularies."""
    feature = table.feature(name)
    if feature.codes is not None:
        return [feature.vocab[c - 1] if c else "" for c in feature.codes]
    if feature.values is not None:
        return feature.values.tolist()
    s, v = feature.lists.splits, feature.lists.values
    return [tuple(feature.vocab[c - 1] for c in v[s[r] : s[r + 1]]) for r in range(feature.lists.rows)]


def test_held_out_users_and_items_leave_nothing_behind(small_movielens_dir):
    ds = read_folder(small_movielens_dir, ReadOptions())
    _, held_users = base.held_out(len(ds.users), 7)
    _, held_items = base.held_out(len(ds.items), 7)
    for kind, held in (("users", held_users), ("items", held_items)):
        trained = cold_start._vocabulary_free(cold_start.without(ds, **{kind: held}))
        before, after = getattr(ds, kind), getattr(trained, kind)
        assert len(after) == len(before) - len(held) and not set(after.ids) & set(before.ids[held])
        kept = np.setdiff1d(np.arange(len(before)), held)
        for feature in before.features:  # every kept row keeps its own values
            assert _decoded(after, feature.name) == [_decoded(before, feature.name)[r] for r in kept]
            if feature.kind != "numeric":  # values only the held-out rows had are unknown to training
                present = {x for row in _decoded(after, feature.name) for x in (row if isinstance(row, tuple) else [row])}
                assert set(after.feature(feature.name).vocab) == present - {""}
        inter = trained.interactions
        users, items = trained.users.ids[inter.users], trained.items.ids[inter.items]
        original = ds.interactions
        held_ids = set(before.ids[held])
        expected = {(u, i) for u, i in zip(ds.users.ids[original.users], ds.items.ids[original.items])
                    if (u if kind == "users" else i) not in held_ids}
        assert set(zip(users, items)) == expected
    assert cold_start.without(ds, items=held_items).item_titles.tolist() == \
        ds.item_titles[np.setdiff1d(np.arange(len(ds.items)), held_items)].tolist()


def test_ties_are_broken_by_row_or_at_random():
    scores = np.zeros((1, 100))
    columns = np.arange(100)
    by_row = base.hit_ranks(scores, np.zeros(100, int), columns)
    assert by_row.tolist() == columns.tolist()  # the issue's convention: the earlier column first
    shuffled = base.hit_ranks(scores, np.zeros(100, int), columns, tie_seed=7)
    assert sorted(shuffled.tolist()) == columns.tolist() and shuffled.tolist() != columns.tolist()
    excluded = np.zeros((1, 100), bool)
    excluded[0, 0] = True
    assert base.hit_ranks(np.arange(100.0)[None, :], np.zeros(1, int), np.zeros(1, int), excluded)[0] == 100


@pytest.mark.skipif(not ML100K.is_dir(), reason="needs the shared MovieLens 100k folder beside the repository")
def test_baselines_reproduce_the_issues_seed_7_rows():
    ds = read_folder(ML100K, ReadOptions(format="ml-100k"))
    inter = ds.interactions
    x = np.zeros((len(ds.users), len(ds.items)))
    x[inter.users, inter.items] = 1.0
    train, held = base.held_out(len(ds.users), 7)
    popularity = np.tile(x[train].sum(axis=0), (len(held), 1))
    ages = base.age_buckets(ds.users.feature("age").values)
    segment = base.segment_popularity(ds.users.feature("gender").codes, ages, ds.users.feature("occupation").codes,
                                      x, train, held)
    assert base.hit_rates(popularity, x[held], None) == pytest.approx({"hr@10": 0.0449, "hr@100": 0.2925}, abs=1e-4)
    assert base.hit_rates(segment, x[held], None) == pytest.approx({"hr@10": 0.0470, "hr@100": 0.2924}, abs=1e-4)
    named, rest = base.earliest(inter.users, inter.items, inter.timestamps, len(ds.items), held)
    assert (named.sum(axis=1) == 5).all()
    assert base.hit_rates(base.ease_from_named(x[train], named), rest, named.astype(bool)) == pytest.approx(
        {"hr@10": 0.0303, "hr@100": 0.2069}, abs=1e-4)
