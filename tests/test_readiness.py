"""Issue 20: SERVING means a request succeeds, and `make run` reports only its own children's health."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from procs import REPO, Service, free_port, health_status, running, service_env, stack
from recsys.v1 import common_pb2, gateway_pb2 as pb, gateway_pb2_grpc
from stack_fixtures import load_bundle

pytestmark = pytest.mark.slow

RUN_STACK = REPO / "scripts" / "run_stack.py"


def wait_for_health(address: str, service: str, timeout: float) -> float:
    """Polls health (not the RPC under test) until SERVING; returns time.monotonic() then."""
    deadline = time.monotonic() + timeout
    while health_status(address, service, timeout=0.5) != "SERVING":
        assert time.monotonic() < deadline, f"{address} not SERVING after {timeout} s"
        time.sleep(0.01)
    return time.monotonic()


def test_gateway_is_not_serving_until_both_tiers_are_then_the_first_call_succeeds(trained_model_base):
    [user, *_] = load_bundle(trained_model_base)[1].ids.tolist()
    query, index, gateway = stack(trained_model_base)
    try:
        gateway.start()
        assert gateway.wait_answering() == "NOT_SERVING"
        # The process is alive (for liveness probes) while it waits for its peers.
        assert health_status(gateway.address, "liveness") == "SERVING"
        index.start().wait_serving(60)
        time.sleep(1.0)  # time for the gateway to see the index tier; the query tier is still missing
        assert health_status(gateway.address) == "NOT_SERVING"
        assert health_status(gateway.address, "recsys.v1.Gateway") == "NOT_SERVING"
        query.start()
        serving_at = wait_for_health(gateway.address, "recsys.v1.Gateway", timeout=90)
        # The first call, the moment health says SERVING, with no retry.
        with grpc.insecure_channel(gateway.address) as channel:
            response = gateway_pb2_grpc.GatewayStub(channel).Recommend(pb.RecommendRequest(user_id=user, k=5),
                                                                        timeout=5)
        assert len(response.items) == 5 and not response.fallback
        assert health_status(query.address, "recsys.internal.v1.QueryService") == "SERVING"
        print("first call after SERVING:", json.dumps({"ms_after_serving": round((time.monotonic() - serving_at) * 1e3, 1)}))
    finally:
        for service in (gateway, query, index):
            service.stop()


def test_a_request_in_flight_while_a_peer_restarts_succeeds(live_stack):
    user = live_stack.users.ids[0]
    index = Service("index_service", ["--model-base", str(live_stack.model_base), "--poll-interval", "0"])
    gateway = Service("gateway", ["--query-target", live_stack.query.address, "--index-targets", index.address])
    with running(index, gateway):
        with grpc.insecure_channel(gateway.address) as channel:
            stub = gateway_pb2_grpc.GatewayStub(channel)
            want = stub.Recommend(pb.RecommendRequest(user_id=user, k=10), timeout=5)
            index.signal(signal.SIGKILL)
            index.proc.wait()
            index.start()  # the same port: importing, then listening NOT_SERVING, then loading
            assert health_status(index.address, timeout=0.2) != "SERVING"
            started = time.monotonic()
            got = stub.Recommend(pb.RecommendRequest(user_id=user, k=10), timeout=2)
            elapsed = time.monotonic() - started
    assert [i.item_id for i in got.items] == [i.item_id for i in want.items]
    print("request across a peer restart:", json.dumps({"deadline_s": 2, "answered_after_s": round(elapsed, 3)}))


def test_a_deadline_that_expires_while_a_tier_starts_names_the_tier(trained_model_base):
    index = Service("index_service", ["--model-base", str(trained_model_base), "--poll-interval", "0"])
    dead_query = f"127.0.0.1:{free_port()}"
    gateway = Service("gateway", ["--query-target", dead_query, "--index-targets", index.address,
                                  "--peer-restart-wait", "30"])
    with running(index):
        try:
            gateway.start().wait_answering()
            with grpc.insecure_channel(gateway.address) as channel:
                stub = gateway_pb2_grpc.GatewayStub(channel)
                started = time.monotonic()
                with pytest.raises(grpc.RpcError) as err:  # a new user described by features needs the query tier
                    stub.Recommend(pb.RecommendRequest(user_id="new", user_features=common_pb2.UserFeatures(age=30)),
                                   timeout=1)
                elapsed = time.monotonic() - started
        finally:
            gateway.stop()
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "query service was not ready" in err.value.details(), err.value.details()
    assert elapsed < 1.5


def test_a_tier_gone_past_its_restart_window_fails_fast_naming_it(trained_model_base):
    index = Service("index_service", ["--model-base", str(trained_model_base), "--poll-interval", "0"])
    dead_query = f"127.0.0.1:{free_port()}"
    gateway = Service("gateway", ["--query-target", dead_query, "--index-targets", index.address,
                                  "--peer-restart-wait", "0.5"])
    with running(index):
        try:
            gateway.start().wait_answering()
            time.sleep(0.6)
            with grpc.insecure_channel(gateway.address) as channel:
                stub = gateway_pb2_grpc.GatewayStub(channel)
                for _ in range(5):
                    started = time.monotonic()
                    with pytest.raises(grpc.RpcError) as err:
                        stub.Recommend(pb.RecommendRequest(user_id="new", user_features=common_pb2.UserFeatures(age=30)),
                                       timeout=10)
                    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
                    assert "query service" in err.value.details() and dead_query in err.value.details()
                    assert time.monotonic() - started < 0.5
        finally:
            gateway.stop()


# ---------------------------------------------------------------- make run (scripts/run_stack.py)


def processes_mentioning(text: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmdline:
                found.append(int(proc.name))
    return found


def run_stack_command(model_base, ports, log_dir, *extra):
    gateway, query, index = ports
    return [sys.executable, str(RUN_STACK), "--model-base", str(model_base), "--gateway-port", str(gateway),
            "--query-port", str(query), "--index-port", str(index), "--log-dir", str(log_dir), *extra]


def test_run_stack_with_a_port_in_use_exits_at_once_and_starts_nothing(trained_model_base, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        query_port, index_port = free_port(), free_port()
        started = time.monotonic()
        result = subprocess.run(run_stack_command(trained_model_base, (port, query_port, index_port), tmp_path, "--once"),
                                capture_output=True, text=True, timeout=60, env=service_env(), cwd=REPO)
        elapsed = time.monotonic() - started
    print("port-in-use message:", result.stderr.strip())
    assert result.returncode != 0
    assert f"port {port} (for gateway) is already in use by pid {os.getpid()}" in result.stderr
    assert "started" not in result.stdout
    assert elapsed < 10
    for other in (query_port, index_port):
        assert processes_mentioning(f"--port {other}") == []


def test_run_stack_when_training_fails_says_so_and_starts_nothing(tmp_path):
    """No bundle and a data folder that does not exist: the trainer's error, one line from
    run_stack, its exit code, no traceback and no service."""
    ports = (free_port(), free_port(), free_port())
    command = run_stack_command(tmp_path / "models", ports, tmp_path, "--once", "--data-dir", str(tmp_path / "missing"))
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=service_env(), cwd=REPO)
    print("training-failed message:", result.stderr.strip()[-500:])
    assert result.returncode != 0
    assert "missing" in result.stderr and "no service started" in result.stderr
    assert "Traceback" not in result.stderr and "started" not in result.stdout
    for port in ports:
        assert processes_mentioning(f"--port {port}") == []


def test_run_stack_brings_the_stack_down_when_a_child_exits(trained_model_base, tmp_path):
    ports = (free_port(), free_port(), free_port())
    proc = subprocess.Popen(run_stack_command(trained_model_base, ports, tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=service_env(), cwd=REPO)
    pids = {}
    try:
        deadline = time.monotonic() + 120
        for line in proc.stdout:
            if match := re.match(r"started (\w+) \(pid (\d+)\)", line):
                pids[match[1]] = int(match[2])
            if line.startswith("serving on"):
                break
            assert time.monotonic() < deadline and proc.poll() is None, "run_stack never served"
        assert set(pids) == {"query_service", "index_service", "gateway"}
        os.kill(pids["index_service"], signal.SIGKILL)
        code = proc.wait(30)
        stderr = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
    assert code != 0
    assert f"index_service (pid {pids['index_service']}) exited with -9" in stderr, stderr
    assert "Last lines of" in stderr and "listening" in stderr  # the child's own log
    for pid in pids.values():
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
