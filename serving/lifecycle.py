"""Model lifecycle shared by the query and index services, after TensorFlow Serving.

Three roles, one small implementation:

- the *source* lists ``<model_base>/<N>/`` folders that hold a manifest
  (``bundle.version_dirs``; staging folders are never seen, because the trainer
  renames a bundle into place only when it is complete);
- the *loader* is the service's function ``load(path, manifest) -> model`` that
  verifies checksums and shapes and builds what the service serves; it raises
  ``BundleError`` (or anything else) to reject a version;
- the ``ModelManager`` keeps the newest ``keep`` valid versions loaded, loads a
  new version off the event loop while the old ones keep serving, and swaps
  the version table in one assignment, so a request sees either the old table
  or the new one, never a half-built one.

A rejected version is logged with its reason and remembered as FAILED (it is
retried only if its manifest changes); the previous versions keep serving.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Generic, TypeVar

from serving import bundle, metrics

log = logging.getLogger(__name__)

M = TypeVar("M")


class State(enum.Enum):
    LOADING = 1
    AVAILABLE = 2
    FAILED = 3
    UNLOADED = 4


@dataclasses.dataclass(frozen=True)
class VersionStatus:
    version: int
    state: State
    error: str = ""
    size: int = 0


class VersionUnavailable(LookupError):
    """The requested version is not loaded here (or nothing is loaded yet)."""

    def __init__(self, requested: str, available: list[int]):
        self.requested = requested
        self.available = available
        held = ", ".join(map(str, available)) or "none"
        super().__init__(f"model version {requested!r} is not loaded here (loaded: {held})")


def parse_version(text: str) -> int | None:
    """``""`` -> None (the newest); a decimal string -> int; else ValueError."""
    if text == "":
        return None
    if not text.isdigit() or len(text) > 18 or int(text) <= 0:
        raise ValueError(f"model_version must be empty or a positive integer like '3', got {text[:40]!r}")
    return int(text)


class ModelManager(Generic[M]):
    """Loads, validates, serves and retires model versions found under ``model_base``."""

    def __init__(
        self,
        model_base: str | os.PathLike[str],
        load: Callable[[Path, bundle.Manifest], M],
        *,
        service: str,
        keep: int = 2,
        size_of: Callable[[M], int] = lambda m: 0,
    ):
        if keep < 1:
            raise ValueError("keep must be at least 1")
        self.model_base = Path(model_base)
        self.service = service
        self._load = load
        self._keep = keep
        self._size_of = size_of
        # Replaced, never mutated, so readers need no lock.
        self._loaded: Mapping[int, M] = {}
        self._status: dict[int, VersionStatus] = {}
        self._failed_manifest_mtime: dict[int, float] = {}
        self._refresh_lock = asyncio.Lock()

    # ------------------------------------------------------------------ reading

    def get(self, version: int | None = None) -> tuple[int, M]:
        """The model for ``version`` (None = newest). Raises VersionUnavailable."""
        loaded = self._loaded
        if version is None:
            if not loaded:
                raise VersionUnavailable("newest", [])
            version = max(loaded)
        model = loaded.get(version)
        if model is None:
            raise VersionUnavailable(str(version), sorted(loaded, reverse=True))
        return version, model

    @property
    def versions(self) -> list[int]:
        """Loaded versions, newest first."""
        return sorted(self._loaded, reverse=True)

    @property
    def ready(self) -> bool:
        return bool(self._loaded)

    def status(self) -> list[VersionStatus]:
        return sorted(self._status.values(), key=lambda s: s.version, reverse=True)

    # ------------------------------------------------------------------ loading

    def refresh(self) -> list[int]:
        """Scans the model base once and converges to the newest ``keep`` valid versions.

        Blocking (loading may take seconds): call ``refresh_async`` from the event
        loop. Returns the versions loaded afterwards, newest first.
        """
        on_disk = bundle.version_dirs(self.model_base)
        wanted: dict[int, M] = {}
        for version in sorted(on_disk, reverse=True):
            if len(wanted) == self._keep:
                break
            if version in self._loaded:
                wanted[version] = self._loaded[version]
                continue
            path = on_disk[version]
            mtime = _mtime(path / bundle.MANIFEST)
            if self._failed_manifest_mtime.get(version) == mtime:
                continue
            model = self._try_load(version, path, mtime)
            if model is not None:
                wanted[version] = model
        if not wanted:
            # Nothing valid on disk (e.g. the folder was emptied): keep serving what we have.
            return self.versions
        retired = [v for v in self._loaded if v not in wanted]
        self._loaded = wanted
        for version in retired:
            self._status[version] = dataclasses.replace(self._status[version], state=State.UNLOADED)
            log.info("model version unloaded", extra={"service": self.service, "version": version})
        metrics.MODEL_VERSION.labels(self.service).set(max(wanted))
        metrics.LOADED_VERSIONS.labels(self.service).set(len(wanted))
        return self.versions

    def _try_load(self, version: int, path: Path, mtime: float) -> M | None:
        self._status[version] = VersionStatus(version, State.LOADING)
        started = time.perf_counter()
        try:
            manifest = bundle.read_manifest(path)
            model = self._load(path, manifest)
        except Exception as exc:  # any failure rejects the version; the service keeps serving
            reason = f"{type(exc).__name__}: {exc}" if not isinstance(exc, bundle.BundleError) else str(exc)
            self._status[version] = VersionStatus(version, State.FAILED, error=reason)
            self._failed_manifest_mtime[version] = mtime
            log.error("model version rejected", extra={"service": self.service, "version": version, "reason": reason})
            return None
        size = self._size_of(model)
        self._status[version] = VersionStatus(version, State.AVAILABLE, size=size)
        log.info(
            "model version loaded",
            extra={
                "service": self.service,
                "version": version,
                "size": size,
                "seconds": round(time.perf_counter() - started, 3),
            },
        )
        return model

    async def refresh_async(self) -> list[int]:
        """``refresh`` on a worker thread; concurrent calls wait for the one running."""
        async with self._refresh_lock:
            return await asyncio.to_thread(self.refresh)

    async def poll(self, interval_s: float, on_change: Callable[[], object] | None = None) -> None:
        """Refreshes every ``interval_s`` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            before = self.versions
            try:
                after = await self.refresh_async()
            except Exception:  # a poll must never kill the service
                log.exception("model refresh failed", extra={"service": self.service})
                continue
            if after != before and on_change is not None:
                on_change()


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return -1.0
