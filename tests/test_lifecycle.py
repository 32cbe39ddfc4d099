"""ModelManager: newest valid versions served, bad versions rejected, old ones keep serving."""

import asyncio
import shutil

import pytest

from bundles import write_item_bundle
from serving import bundle
from serving.lifecycle import ModelManager, State, VersionUnavailable, parse_version


def item_loader(path, manifest):
    bundle.verify_files(path, manifest)
    return bundle.load_items(path, manifest)


def manager_for(base, keep=2):
    return ModelManager(base, item_loader, service="test", keep=keep, size_of=len)


def test_loads_the_newest_versions_up_to_keep(tmp_path):
    for seed in range(3):
        write_item_bundle(tmp_path, n_items=40 + seed, seed=seed)
    manager = manager_for(tmp_path, keep=2)
    assert manager.refresh() == [3, 2]
    version, items = manager.get()
    assert version == 3 and len(items) == 42
    assert manager.get(2)[0] == 2
    with pytest.raises(VersionUnavailable, match="loaded: 3, 2"):
        manager.get(1)


def test_corrupt_new_version_is_rejected_and_old_keeps_serving(tmp_path, caplog):
    write_item_bundle(tmp_path, n_items=40)
    manager = manager_for(tmp_path)
    manager.refresh()
    bad = write_item_bundle(tmp_path, n_items=40, seed=5)
    data = (bad / "item_embeddings.npy").read_bytes()
    (bad / "item_embeddings.npy").write_bytes(data[: len(data) // 2])
    assert manager.refresh() == [1]
    assert manager.get()[0] == 1
    status = {s.version: s for s in manager.status()}
    assert status[2].state is State.FAILED and "sha256" in status[2].error
    assert any("rejected" in r.getMessage() for r in caplog.records)


def test_failed_version_is_not_retried_until_its_manifest_changes(tmp_path, monkeypatch):
    write_item_bundle(tmp_path, n_items=40)
    bad = write_item_bundle(tmp_path, n_items=40)
    (bad / "item_ids.npy").unlink()
    calls = []
    manager = ModelManager(tmp_path, lambda p, m: calls.append(m.version) or item_loader(p, m), service="t")
    manager.refresh()
    manager.refresh()
    assert calls.count(2) == 1


def test_old_versions_are_unloaded_beyond_keep(tmp_path):
    write_item_bundle(tmp_path)
    manager = manager_for(tmp_path, keep=1)
    manager.refresh()
    write_item_bundle(tmp_path)
    assert manager.refresh() == [2]
    assert {s.version: s.state for s in manager.status()} == {2: State.AVAILABLE, 1: State.UNLOADED}


def test_restart_comes_back_on_newest_valid_version(tmp_path):
    write_item_bundle(tmp_path)
    write_item_bundle(tmp_path)
    broken = write_item_bundle(tmp_path)
    (broken / "item_titles.npy").unlink()
    # A fresh manager is what a restarted service builds.
    assert manager_for(tmp_path, keep=1).refresh() == [2]


def test_emptied_model_base_keeps_serving_what_is_loaded(tmp_path):
    first = write_item_bundle(tmp_path)
    manager = manager_for(tmp_path)
    manager.refresh()
    shutil.rmtree(first)
    assert manager.refresh() == [1]
    assert manager.get()[0] == 1


def test_nothing_loaded_is_unavailable(tmp_path):
    manager = manager_for(tmp_path)
    assert manager.refresh() == []
    assert not manager.ready
    with pytest.raises(VersionUnavailable):
        manager.get()


def test_refresh_async_runs_off_the_event_loop(tmp_path):
    write_item_bundle(tmp_path)
    manager = manager_for(tmp_path)

    async def scenario():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(ticker())
        loaded = await manager.refresh_async()
        task.cancel()
        return loaded, ticks

    loaded, ticks = asyncio.run(scenario())
    assert loaded == [1] and ticks > 0


@pytest.mark.parametrize("text, expected", [("", None), ("3", 3), ("12", 12)])
def test_parse_version(text, expected):
    assert parse_version(text) == expected


@pytest.mark.parametrize("text", ["abc", "-1", "0", "1.5", "9" * 30])
def test_parse_version_rejects(text):
    with pytest.raises(ValueError, match="positive integer"):
        parse_version(text)
