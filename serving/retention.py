"""Retention of published bundles: remove the oldest versions, never one a service has loaded.

``python -m trainer prune --model-base DIR --keep N --query-target T --index-targets T1;T2``
keeps the newest ``N`` complete versions plus every version that any replica of
the given services reports as LOADING or AVAILABLE (``GetModelStatus``), and
removes the other complete versions. The services are asked, not guessed: a
target that resolves to several replicas (``dns:///index:50053``, a static
``ipv4:a,b`` list) is expanded and every replica is asked on its own, and if any
replica does not answer, nothing is removed. ``--no-services`` says explicitly
that no service reads this model base.

Never touched: staging folders of runs in progress (``.staging-*``), folders
that are not complete versions, and the newest version (so version numbers
are never reused). A version is first renamed to a hidden ``.pruning-*``
folder (atomic: a service scanning the base sees it whole or not at all), then
deleted; a ``.pruning-*`` folder left by an interrupted prune is deleted by the
next one.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import socket
from collections.abc import Iterable, Mapping
from pathlib import Path

import grpc

from recsys.internal.v1 import admin_pb2, admin_pb2_grpc
from recsys.v1 import common_pb2
from serving import bundle

log = logging.getLogger(__name__)

_PRUNING_PREFIX = ".pruning-"
# States in which a service holds (or is reading) a version's files.
_HELD = (common_pb2.MODEL_VERSION_STATE_LOADING, common_pb2.MODEL_VERSION_STATE_AVAILABLE)


class RetentionError(Exception):
    """Pruning cannot be done safely; nothing was removed. The message says why and what to do."""


@dataclasses.dataclass(frozen=True)
class Plan:
    kept: list[int]  # newest first
    removed: list[int]
    loaded: Mapping[int, list[str]]  # version -> the replicas that hold it


def replica_addresses(target: str) -> list[str]:
    """Every address a gRPC target resolves to, so that each replica can be asked on its own.

    ``ipv4:a:1,b:2`` -> ["a:1", "b:2"]; ``dns:///host:port`` or ``host:port`` ->
    one ``ip:port`` per address DNS returns; anything else is asked as given.
    """
    target = target.strip()
    for scheme in ("ipv4:", "ipv6:"):
        if target.startswith(scheme):
            return [a.strip() for a in target[len(scheme):].split(",") if a.strip()]
    if target.startswith("dns:"):
        target = target[len("dns:"):].lstrip("/")
        target = target.split("/", 1)[1] if "/" in target else target  # drop a dns://authority/
    elif ":" not in target or target.startswith(("unix:", "unix-abstract:", "vsock:")):
        return [target]
    host, _, port = target.rpartition(":")
    host = host.strip("[]")
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except (OSError, ValueError) as exc:
        raise RetentionError(f"cannot resolve {target!r} to ask its replicas: {exc}; nothing removed") from exc
    addresses = []
    for family, _, _, _, sockaddr in infos:
        ip = sockaddr[0]
        address = f"[{ip}]:{sockaddr[1]}" if family == socket.AF_INET6 else f"{ip}:{sockaddr[1]}"
        if address not in addresses:
            addresses.append(address)
    return addresses


def ask_loaded_versions(
    targets: Mapping[str, Iterable[str]], timeout_s: float = 5.0
) -> dict[int, list[str]]:
    """Version -> replicas holding it, from ModelAdmin.GetModelStatus of every replica of every target.

    ``targets`` maps a service (``"recsys.internal.v1.QueryService"``, ``"recsys.internal.v1.IndexService"``)
    to its gRPC targets. Raises RetentionError if any replica does not answer.
    """
    loaded: dict[int, list[str]] = {}
    for service, service_targets in targets.items():
        for target in service_targets:
            for address in replica_addresses(target):
                with grpc.insecure_channel(address) as channel:
                    try:
                        response = admin_pb2_grpc.ModelAdminStub(channel).GetModelStatus(
                            admin_pb2.GetModelStatusRequest(), timeout=timeout_s)
                    except grpc.RpcError as exc:
                        raise RetentionError(
                            f"{service} at {address} (from {target}) did not report its model versions "
                            f"({exc.code().name}: {exc.details()}); nothing removed. Retry when every replica "
                            f"is up, or leave out a target that no longer exists"
                        ) from exc
                for status in response.services:
                    for version in status.versions:
                        if version.state in _HELD and version.version.isdigit():
                            loaded.setdefault(int(version.version), []).append(f"{service} at {address}")
    return loaded


def plan(model_base: str | os.PathLike[str], keep: int, loaded: Mapping[int, list[str]]) -> Plan:
    """Which complete versions to keep (newest ``keep`` + every loaded one) and which to remove."""
    if keep < 1:
        raise RetentionError(f"--keep must be at least 1 (the newest version is never removed), got {keep}")
    versions = sorted(bundle.version_dirs(model_base), reverse=True)
    kept = [v for i, v in enumerate(versions) if i < keep or v in loaded]
    removed = [v for v in versions if v not in kept]
    return Plan(kept, sorted(removed), dict(loaded))


def prune(model_base: str | os.PathLike[str], keep: int, loaded: Mapping[int, list[str]]) -> Plan:
    """Removes what ``plan`` says; returns the plan."""
    base = Path(model_base)
    for leftover in base.glob(_PRUNING_PREFIX + "*"):
        shutil.rmtree(leftover, ignore_errors=True)
    result = plan(base, keep, loaded)
    dirs = bundle.version_dirs(base)
    for version in result.removed:
        doomed = base / f"{_PRUNING_PREFIX}{version}-{os.getpid()}"
        os.rename(dirs[version], doomed)
        shutil.rmtree(doomed)
        log.info("model version removed", extra={"version": version, "model_base": str(base)})
    return result
