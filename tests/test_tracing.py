"""Distributed tracing: one Recommend through a 2-shard stack of real processes is one trace.

Each process exports its spans to its own file (``RECSYS_TRACES_FILE``, JSON lines,
written by the SDK's console exporter); the test stops the processes (which flushes
the exporters) and reads the spans back.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import grpc
import pytest

from procs import Service, running
from recsys.v1 import common_pb2, gateway_pb2 as pb, gateway_pb2_grpc
from serving import tracing


def test_off_unless_the_environment_asks():
    assert not tracing.wanted({})
    assert not tracing.wanted({"OTEL_TRACES_EXPORTER": "none"})
    assert tracing.wanted({"OTEL_TRACES_EXPORTER": "otlp"})
    assert tracing.wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"})
    assert tracing.wanted({tracing.TRACES_FILE_ENV: "/tmp/spans.jsonl"})
    assert not tracing.wanted({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"})
    assert not tracing.wanted({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"})


def test_default_service_names():
    assert tracing.default_service_name(["recsys.internal.v1.IndexService"]) == "recsys-index-service"
    assert tracing.default_service_name(["recsys.v1.Gateway"]) == "recsys-gateway"


def _spans(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _tree(spans: list[dict], root_parent: str) -> str:
    """The spans as an indented tree, children by start time: what the test prints on failure and with -s."""
    children: dict[str | None, list[dict]] = {}
    for s in spans:
        children.setdefault(s["parent_id"], []).append(s)
    lines = []

    def walk(parent, depth):
        for s in sorted(children.get(parent, []), key=lambda s: s["start_time"]):
            attrs = s["attributes"]
            extra = ", ".join(f"{k}={attrs[k]}" for k in ("recsys.shard", "recsys.batch.size", "recsys.queries")
                              if k in attrs)
            ms = (_ns(s["end_time"]) - _ns(s["start_time"])) / 1e6
            lines.append(f"{'  ' * depth}{s['name']} [{s['resource']['attributes']['service.name']} "
                         f"pid {s['resource']['attributes']['process.pid']}] {s['kind'].split('.')[-1]} "
                         f"{ms:.2f} ms" + (f" ({extra})" if extra else ""))
            walk(s["context"]["span_id"], depth + 1)

    walk(root_parent, 0)
    return "\n".join(lines)


def _ns(timestamp: str) -> int:
    from datetime import datetime

    whole, _, frac = timestamp.rstrip("Z").partition(".")
    return int(datetime.fromisoformat(whole).timestamp()) * 10**9 + int(frac.ljust(9, "0")[:9])


@pytest.mark.slow
def test_one_recommend_is_one_trace_across_four_processes(live_stack, tmp_path):
    files = {name: tmp_path / f"{name}.jsonl" for name in ("query", "index0", "index1", "gateway")}

    def env(name):
        return {tracing.TRACES_FILE_ENV: str(files[name])}

    common = ["--model-base", str(live_stack.model_base), "--poll-interval", "0"]
    query = Service("query_service", common, env=env("query"))
    shards = [
        Service("index_service", [*common, "--shard-index", str(i), "--num-shards", "2"], env=env(f"index{i}"))
        for i in range(2)
    ]
    gateway = Service("gateway", [
        "--query-target", query.address, "--index-targets", ";".join(s.address for s in shards),
    ], env=env("gateway"))
    # The caller's own span, as a W3C traceparent: the trace must continue it.
    trace_id, caller_span = secrets.token_hex(16), secrets.token_hex(8)
    with running(query, *shards, gateway), grpc.insecure_channel(gateway.address) as channel:
        # With features the request goes through the query tier too (a known user's id alone needs only the index).
        response = gateway_pb2_grpc.GatewayStub(channel).Recommend(
            pb.RecommendRequest(user_id=live_stack.users.ids[0], k=5, user_features=common_pb2.UserFeatures(age=30)),
            timeout=10, metadata=(("traceparent", f"00-{trace_id}-{caller_span}-01"),),
        )
        assert len(response.items) == 5
        # A caller that did not sample its trace: no process records it (parent-based sampling).
        unsampled = secrets.token_hex(16)
        gateway_pb2_grpc.GatewayStub(channel).Recommend(
            pb.RecommendRequest(user_id=live_stack.users.ids[1], k=5), timeout=10,
            metadata=(("traceparent", f"00-{unsampled}-{secrets.token_hex(8)}-00"),),
        )
    # Stopped: every exporter has flushed.
    by_process = {name: _spans(path) for name, path in files.items()}
    assert not [s for found in by_process.values() for s in found if s["context"]["trace_id"] == f"0x{unsampled}"]
    spans = [s for found in by_process.values() for s in found if s["context"]["trace_id"] == f"0x{trace_id}"]
    tree = _tree(spans, f"0x{caller_span}")
    print(tree)
    for name, found in by_process.items():
        assert any(s["context"]["trace_id"] == f"0x{trace_id}" for s in found), f"no span of the trace from {name}"
    assert len({s["resource"]["attributes"]["service.instance.id"] for s in spans}) == 4, tree

    def one(name, parent, **attributes):
        found = [s for s in spans if s["name"] == name and s["parent_id"] == parent["context"]["span_id"]
                 and all(s["attributes"].get(k) == v for k, v in attributes.items())]
        assert len(found) == 1, f"want one {name} {attributes} under {parent['name']}:\n{tree}"
        return found[0]

    [root] = [s for s in spans if s["parent_id"] == f"0x{caller_span}"]
    assert root["name"] == "recsys.v1.Gateway/Recommend" and root["kind"] == "SpanKind.SERVER"
    assert root["resource"]["attributes"]["service.name"] == "recsys-gateway"
    batch = one("batch gateway", root)
    assert batch["attributes"]["recsys.batch.size"] == 1
    embed = one("recsys.internal.v1.QueryService/EmbedUsers", batch, **{"recsys.tier": "query"})
    query_server = one("recsys.internal.v1.QueryService/EmbedUsers", embed)
    assert query_server["kind"] == "SpanKind.SERVER"
    assert query_server["resource"]["attributes"]["service.name"] == "recsys-query-service"
    index_pids = set()
    for shard in range(2):
        client = one("recsys.internal.v1.IndexService/Search", batch, **{"recsys.tier": "index", "recsys.shard": shard})
        assert client["kind"] == "SpanKind.CLIENT"
        server = one("recsys.internal.v1.IndexService/Search", client)
        assert server["kind"] == "SpanKind.SERVER" and server["attributes"]["rpc.grpc.status_code"] == 0
        search = one("ScaNN search", server)
        assert search["attributes"]["recsys.queries"] == 1 and search["attributes"]["recsys.k"] == 5
        index_pids.add(server["resource"]["attributes"]["process.pid"])
    assert len(index_pids) == 2, "both shards' spans came from one process"
    # Children start after and end before their parents (clock of one machine).
    by_id = {s["context"]["span_id"]: s for s in spans}
    for s in spans:
        parent = by_id.get(s["parent_id"])
        if parent is not None and parent["resource"] == s["resource"]:
            assert _ns(parent["start_time"]) <= _ns(s["start_time"]) <= _ns(s["end_time"]) <= _ns(parent["end_time"])


@pytest.mark.slow
def test_sampling_ratio_zero_records_nothing(live_stack, tmp_path):
    spans_file = tmp_path / "gateway.jsonl"
    gateway = Service("gateway", [
        "--query-target", live_stack.query.address, "--index-targets", live_stack.index.address,
    ], env={tracing.TRACES_FILE_ENV: str(spans_file), "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": "0"})
    with running(gateway), grpc.insecure_channel(gateway.address) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        for user in live_stack.users.ids[:20].tolist():
            stub.Recommend(pb.RecommendRequest(user_id=user, k=5), timeout=10)
        # A caller that sampled its trace is followed (parent-based), whatever the ratio.
        trace_id = secrets.token_hex(16)
        stub.Recommend(pb.RecommendRequest(user_id="1", k=5), timeout=10,
                       metadata=(("traceparent", f"00-{trace_id}-{secrets.token_hex(8)}-01"),))
    spans = _spans(spans_file)
    assert spans and {s["context"]["trace_id"] for s in spans} == {f"0x{trace_id}"}
