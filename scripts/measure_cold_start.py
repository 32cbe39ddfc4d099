"""Cold starts of `make run`'s stack, each with a client that calls Recommend the moment health says SERVING.

``python scripts/measure_cold_start.py --runs 20`` starts ``scripts/run_stack.py``
(what ``make run`` runs) on free 127.0.0.1 ports, polls the gateway's
``grpc.health.v1`` status every 10 ms, and the moment it is SERVING sends one
``Recommend(user_id="42", k=10)`` with a 5 s deadline and no retry. Then it
stops the stack with SIGINT and checks that it exited 0. Prints one line per
run and a summary, and writes both to ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import grpc

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "protos")]

from recsys.v1 import gateway_pb2, gateway_pb2_grpc  # noqa: E402
from serving.healthcheck import check  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_cold_start(model_base: str, log_dir: Path, user_id: str, timeout_s: float) -> dict:
    ports = {"--gateway-port": free_port(), "--query-port": free_port(), "--index-port": free_port()}
    address = f"127.0.0.1:{ports['--gateway-port']}"
    command = [sys.executable, str(REPO / "scripts" / "run_stack.py"), "--model-base", model_base,
               "--log-dir", str(log_dir), *(str(x) for kv in ports.items() for x in kv)]
    started = time.monotonic()
    stack = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO)
    seen = {}
    result = {"ok": False}
    try:
        while True:
            status = check(address, "recsys.v1.Gateway", timeout_s=0.5)
            seen[status] = seen.get(status, 0) + 1
            if status == "SERVING":
                break
            if stack.poll() is not None or time.monotonic() - started > timeout_s:
                result["error"] = f"never SERVING (run_stack exit {stack.poll()})"
                return result
            time.sleep(0.01)
        serving_at = time.monotonic()
        with grpc.insecure_channel(address) as channel:
            try:
                response = gateway_pb2_grpc.GatewayStub(channel).Recommend(
                    gateway_pb2.RecommendRequest(user_id=user_id, k=10), timeout=5)
                result.update(ok=len(response.items) == 10, items=len(response.items))
            except grpc.RpcError as exc:
                result["error"] = f"{exc.code().name}: {exc.details()}"
        result["first_call_ms"] = round((time.monotonic() - serving_at) * 1e3, 2)
        result["seconds_to_serving"] = round(serving_at - started, 3)
        result["health_answers_before_serving"] = {k: v for k, v in seen.items() if k != "SERVING"}
    finally:
        stack.send_signal(signal.SIGINT)
        try:
            result["run_stack_exit"] = stack.wait(60)
        except subprocess.TimeoutExpired:
            stack.kill()
            result["run_stack_exit"] = stack.wait()
        stderr = stack.stderr.read().decode(errors="replace").strip()
        if stderr and not result["ok"]:
            result["stderr"] = stderr[-2000:]
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--model-base", default=str(REPO / "models" / "movielens"))
    parser.add_argument("--user-id", default="42")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds for one stack to be SERVING")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "cold_start.json")
    args = parser.parse_args()
    log_dir = REPO / "logs" / "cold_start"
    log_dir.mkdir(parents=True, exist_ok=True)
    runs = []
    for i in range(args.runs):
        run = one_cold_start(args.model_base, log_dir, args.user_id, args.timeout)
        runs.append(run)
        print(f"run {i + 1:2d}: {json.dumps(run)}", flush=True)
    ok = [r for r in runs if r["ok"]]
    summary = {
        "runs": len(runs),
        "failed_first_calls": len(runs) - len(ok),
        "clean_exits": sum(r.get("run_stack_exit") == 0 for r in runs),
        "runs_that_saw_NOT_SERVING_first": sum(bool(r.get("health_answers_before_serving", {}).get("NOT_SERVING"))
                                               for r in runs),
        "seconds_to_serving_median": statistics.median(r["seconds_to_serving"] for r in ok) if ok else None,
        "seconds_to_serving_max": max((r["seconds_to_serving"] for r in ok), default=None),
        "first_call_ms_median": statistics.median(r["first_call_ms"] for r in ok) if ok else None,
        "first_call_ms_max": max((r["first_call_ms"] for r in ok), default=None),
    }
    print("summary:", json.dumps(summary), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": " ".join(sys.argv), "summary": summary, "runs": runs}, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0 if summary["failed_first_calls"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
