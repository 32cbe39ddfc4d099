"""Runs the whole system locally: train if needed, start the three services, answer a request.

``make run`` calls this inside the project's virtual environment. It trains a
bundle when ``--model-base`` holds none (reading the data folder ``--data-dir``
[env DATA_DIR, else ML100K_DIR], in any layout the trainer reads, else
downloading MovieLens 100k once; ``TRAIN_ARGS`` adds trainer flags), starts
the query, index and gateway services as local processes, waits until all
report SERVING, prints
``Recommend(user_id=42, k=10)``, and keeps serving until Ctrl-C, when it stops
all three.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "protos")]

from gateway import cli  # noqa: E402
from serving import bundle  # noqa: E402
from serving.healthcheck import check  # noqa: E402

SERVICES = (("query_service", 50052), ("index_service", 50053), ("gateway", 50051))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-base", default=os.environ.get("MODEL_BASE", str(REPO / "models" / "movielens")))
    parser.add_argument("--data-dir", default=os.environ.get("DATA_DIR") or os.environ.get("ML100K_DIR"),
                        help="data folder to train on when there is no bundle [env DATA_DIR, else ML100K_DIR]")
    parser.add_argument("--train-args", default=os.environ.get("TRAIN_ARGS", ""),
                        help="more trainer flags, e.g. '--format generic --max-bad-rows 10' [env TRAIN_ARGS]")
    parser.add_argument("--user-id", default="42")
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--once", action="store_true", help="stop after printing the answer (for scripts)")
    args = parser.parse_args()

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "protos")]),
               MODEL_BASE=args.model_base, OPENBLAS_NUM_THREADS="1", LOG_FORMAT=os.environ.get("LOG_FORMAT", "text"))
    if not bundle.version_dirs(args.model_base):
        print(f"no model bundle in {args.model_base}: training one", flush=True)
        data = ["--data-dir", args.data_dir] if args.data_dir else []
        subprocess.run([sys.executable, "-m", "trainer", "train", "--model-base", args.model_base, *data,
                        *shlex.split(args.train_args)], env=env, cwd=REPO, check=True)

    log_dir = REPO / "logs"
    log_dir.mkdir(exist_ok=True)
    procs = []
    for module, port in SERVICES:
        log = open(log_dir / f"{module}.log", "ab")
        procs.append(subprocess.Popen([sys.executable, "-m", module, "--host", "127.0.0.1", "--port", str(port)],
                                      env=env, cwd=REPO, stdout=log, stderr=log))
        print(f"started {module} on 127.0.0.1:{port} (log: logs/{module}.log)", flush=True)
    try:
        for (module, port), proc in zip(SERVICES, procs):
            wait_serving(module, port, proc)
        print(flush=True)
        code = cli.main(["--address", "127.0.0.1:50051", "recommend", args.user_id, "-k", str(args.k)])
        if code or args.once:
            return code
        print("\nserving on 127.0.0.1:50051 - try: python -m gateway.cli recommend 7 -k 5; Ctrl-C stops", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            return 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for (module, _), proc in zip(SERVICES, procs):
            proc.wait(30)
            print(f"stopped {module} (exit {proc.returncode})", flush=True)


def wait_serving(module: str, port: int, proc: subprocess.Popen, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while check(f"127.0.0.1:{port}", timeout_s=1.0) != "SERVING":
        if proc.poll() is not None:
            raise SystemExit(f"{module} exited with {proc.returncode}; see logs/{module}.log")
        if time.monotonic() > deadline:
            raise SystemExit(f"{module} not SERVING after {timeout:.0f}s; see logs/{module}.log")
        time.sleep(0.2)
    print(f"{module} is SERVING", flush=True)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    # Explicitly: a shell that starts us in the background leaves SIGINT ignored.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    sys.exit(main())
