"""Fixtures that run the three real services on 127.0.0.1 over a trained bundle.

Registered from conftest.py (``pytest_plugins``). ``live_stack`` is shared by
the read-only tests of a session; tests that publish versions or kill
processes start their own stack with ``procs.stack``.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import grpc
import pytest

from procs import Service, free_port, running, stack
from recsys.v1 import gateway_pb2_grpc
from serving import bundle


@dataclasses.dataclass
class LiveStack:
    model_base: Path
    query: Service
    index: Service
    gateway: Service
    stub: gateway_pb2_grpc.GatewayStub
    items: bundle.ItemTable
    users: bundle.UserTable
    manifest: bundle.Manifest
    metrics_port: int


def load_bundle(model_base: Path):
    [path] = bundle.version_dirs(model_base).values()
    manifest = bundle.read_manifest(path)
    return bundle.load_items(path, manifest), bundle.load_users(path, manifest), manifest


@pytest.fixture(scope="session")
def live_stack(trained_model_base, tmp_path_factory):
    model_base = tmp_path_factory.mktemp("live") / "models"
    shutil.copytree(trained_model_base, model_base)
    items, users, manifest = load_bundle(model_base)
    metrics_port = free_port()
    query, index, gateway = stack(model_base, gateway_args=["--metrics-port", str(metrics_port)])
    with running(query, index, gateway):
        with grpc.insecure_channel(gateway.address) as channel:
            yield LiveStack(model_base, query, index, gateway, gateway_pb2_grpc.GatewayStub(channel),
                            items, users, manifest, metrics_port)
