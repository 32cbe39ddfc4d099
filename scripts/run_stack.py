"""Runs the whole system locally: train if needed, start the three services, answer a request.

``make run`` calls this inside the project's virtual environment. It first
checks that the three ports are free (a port in use is an error naming it and,
where it can be found, the process holding it; nothing is started). It trains
a bundle when ``--model-base`` holds none (reading the data folder
``--data-dir`` [env DATA_DIR, else ML100K_DIR], in any layout the trainer
reads, else downloading MovieLens 100k once; ``TRAIN_ARGS`` adds trainer
flags), starts the query, index and gateway services as local processes, waits
until each of *its own* children is alive, holds its port and reports SERVING,
prints ``Recommend(user_id=42, k=10)``, and keeps serving until Ctrl-C, when it
stops all three. A child that exits brings the stack down, with the last lines
of its log, and a non-zero exit.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "protos")]

from gateway import cli  # noqa: E402
from serving import bundle  # noqa: E402
from serving.healthcheck import check  # noqa: E402

EXIT_PORT_IN_USE = 2
EXIT_CHILD_DIED = 3
LOG_TAIL_LINES = 20


@dataclasses.dataclass
class Child:
    module: str
    port: int
    log_path: Path
    log_offset: int = 0  # where this run's output starts in the (appended) log
    proc: subprocess.Popen | None = None

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        with open(self.log_path, "rb") as f:
            f.seek(self.log_offset)
            text = f.read().decode(errors="replace")
        return "\n".join("    " + line for line in text.splitlines()[-lines:]) or "    (empty)"


class StackError(SystemExit):
    """Stops the stack with a message and an exit code."""

    def __init__(self, message: str, code: int):
        super().__init__(code)
        self.message = message


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-base", default=os.environ.get("MODEL_BASE", str(REPO / "models" / "movielens")))
    parser.add_argument("--data-dir", default=os.environ.get("DATA_DIR") or os.environ.get("ML100K_DIR"),
                        help="data folder to train on when there is no bundle [env DATA_DIR, else ML100K_DIR]")
    parser.add_argument("--train-args", default=os.environ.get("TRAIN_ARGS", ""),
                        help="more trainer flags, e.g. '--format generic --max-bad-rows 10' [env TRAIN_ARGS]")
    parser.add_argument("--user-id", default="42")
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--gateway-port", type=int, default=50051)
    parser.add_argument("--query-port", type=int, default=50052)
    parser.add_argument("--index-port", type=int, default=50053)
    parser.add_argument("--log-dir", type=Path, default=REPO / "logs")
    parser.add_argument("--startup-timeout", type=float, default=180.0, help="seconds for all three to be SERVING")
    parser.add_argument("--once", action="store_true", help="stop after printing the answer (for scripts)")
    args = parser.parse_args()

    ports = {"query_service": args.query_port, "index_service": args.index_port, "gateway": args.gateway_port}
    try:
        check_ports_free(ports)
    except StackError as exc:
        print(exc.message, file=sys.stderr, flush=True)
        return exc.code

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "protos")]),
               MODEL_BASE=args.model_base, OPENBLAS_NUM_THREADS="1", LOG_FORMAT=os.environ.get("LOG_FORMAT", "text"))
    if not bundle.version_dirs(args.model_base):
        print(f"no model bundle in {args.model_base}: training one", flush=True)
        data = ["--data-dir", args.data_dir] if args.data_dir else []
        trained = subprocess.run([sys.executable, "-m", "trainer", "train", "--model-base", args.model_base, *data,
                                  *shlex.split(args.train_args)], env=env, cwd=REPO)
        if trained.returncode != 0:  # the trainer has printed why; nothing was started
            print(f"training failed (exit {trained.returncode}); no service started", file=sys.stderr, flush=True)
            return trained.returncode

    args.log_dir.mkdir(parents=True, exist_ok=True)
    extra = {
        "gateway": ["--query-target", f"127.0.0.1:{args.query_port}", "--index-targets", f"127.0.0.1:{args.index_port}"],
    }
    children = [Child(module, port, args.log_dir / f"{module}.log") for module, port in ports.items()]
    try:
        for child in children:
            with open(child.log_path, "ab") as log:
                child.log_offset = log.tell()
                child.proc = subprocess.Popen(
                    [sys.executable, "-m", child.module, "--host", "127.0.0.1", "--port", str(child.port),
                     *extra.get(child.module, [])],
                    env=env, cwd=REPO, stdout=log, stderr=log,
                )
            print(f"started {child.module} (pid {child.proc.pid}) on 127.0.0.1:{child.port} (log: {child.log_path})",
                  flush=True)
        wait_all_serving(children, args.startup_timeout)
        print(flush=True)
        code = cli.main(["--address", f"127.0.0.1:{args.gateway_port}", "recommend", args.user_id, "-k", str(args.k)])
        if code or args.once:
            return code
        print(f"\nserving on 127.0.0.1:{args.gateway_port} - try: python -m gateway.cli recommend 7 -k 5; "
              "Ctrl-C stops", flush=True)
        while True:
            exited_child(children)
            time.sleep(0.5)
    except KeyboardInterrupt:
        return 0
    except StackError as exc:
        print(exc.message, file=sys.stderr, flush=True)
        return exc.code
    finally:
        stop(children)


def check_ports_free(ports: dict[str, int]) -> None:
    """Raises StackError naming every port (and its holder) that another process is listening on."""
    problems = []
    for module, port in ports.items():
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC binds: a TIME_WAIT is no conflict
            try:
                s.bind(("127.0.0.1", port))
                continue
            except OSError as exc:
                reason = exc.strerror
        holder = listener_of(port)
        who = f"by pid {holder[0]} ({holder[1]})" if holder else "by a process this user cannot inspect"
        problems.append(f"port {port} (for {module}) is already in use {who}: {reason}")
    if problems:
        raise StackError(
            "cannot start the stack:\n  " + "\n  ".join(problems)
            + "\nstop that process, or choose other ports with --gateway-port/--query-port/--index-port; "
              "nothing was started", EXIT_PORT_IN_USE)


def listener_of(port: int, pids: list[int] | None = None) -> tuple[int, str] | None:
    """(pid, command line) of the process listening on TCP ``port``, from /proc; None if not found.

    ``pids`` limits the search to those processes (e.g. our own children).
    """
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A = LISTEN
                inodes.add(f"socket:[{inode}]")
    if not inodes:
        return None
    candidates = [Path(f"/proc/{pid}") for pid in pids] if pids is not None else Path("/proc").iterdir()
    for proc in candidates:
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) in inodes:
                    cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
                    return int(proc.name), cmdline[:200]
        except OSError:  # another user's process, or one that just exited
            continue
    return None


def exited_child(children: list[Child]) -> None:
    """Raises StackError, with the last lines of its log, if any child has exited."""
    for child in children:
        if child.proc is not None and child.proc.poll() is not None:
            raise StackError(
                f"{child.module} (pid {child.proc.pid}) exited with {child.proc.returncode}; stopping the stack. "
                f"Last lines of {child.log_path}:\n{child.log_tail()}", EXIT_CHILD_DIED)


def wait_all_serving(children: list[Child], timeout: float) -> None:
    """Waits until every child is alive, listens on its port itself and reports SERVING."""
    deadline = time.monotonic() + timeout
    pending = list(children)
    while pending:
        exited_child(children)
        for child in list(pending):
            # Only our own child's answer counts: another process on the port (which the
            # child then failed to bind) must not pass for it.
            if listener_of(child.port, [child.proc.pid]) is None:
                continue  # not listening yet
            if check(f"127.0.0.1:{child.port}", timeout_s=1.0) == "SERVING":
                print(f"{child.module} (pid {child.proc.pid}) is SERVING on 127.0.0.1:{child.port}", flush=True)
                pending.remove(child)
        if pending and time.monotonic() > deadline:
            names = ", ".join(c.module for c in pending)
            raise StackError(f"{names} not SERVING after {timeout:.0f}s; last lines of {pending[0].log_path}:\n"
                             f"{pending[0].log_tail()}", EXIT_CHILD_DIED)
        time.sleep(0.1)


def stop(children: list[Child]) -> None:
    started = [c for c in children if c.proc is not None]
    for child in started:
        if child.proc.poll() is None:
            child.proc.send_signal(signal.SIGTERM)
    for child in started:
        try:
            child.proc.wait(30)
        except subprocess.TimeoutExpired:
            child.proc.kill()
            child.proc.wait()
        print(f"stopped {child.module} (exit {child.proc.returncode})", flush=True)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    # Explicitly: a shell that starts us in the background leaves SIGINT ignored.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    sys.exit(main())
