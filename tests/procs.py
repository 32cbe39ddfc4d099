"""Starting and stopping the real services as subprocesses on 127.0.0.1 for tests."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from serving.healthcheck import check

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def service_env(**overrides: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "protos"), str(REPO / "tests"), env.get("PYTHONPATH", "")])
    env.update(OPENBLAS_NUM_THREADS="1", LOG_FORMAT="json", TF_CPP_MIN_LOG_LEVEL="3", TF_USE_LEGACY_KERAS="1")
    env.update(overrides)
    return env


def health_status(address: str, service: str = "", timeout: float = 1.0) -> str:
    return check(address, service, timeout_s=timeout)


class Service:
    """One service process. ``address`` is 127.0.0.1:<port>; logs go to ``log_path``."""

    def __init__(self, module: str, args: list[str], env: dict[str, str] | None = None, port: int | None = None):
        self.module = module
        self.port = port or free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.args = ["--host", "127.0.0.1", "--port", str(self.port), *args]
        self.env = service_env(**(env or {}))
        self.log_path = Path(tempfile.mkstemp(prefix=f"{module}-", suffix=".log")[1])
        self.proc: subprocess.Popen | None = None

    def start(self) -> Service:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.module, *self.args], env=self.env, cwd=REPO, stdout=log, stderr=log
        )
        log.close()
        return self

    def wait_serving(self, timeout: float = 60.0) -> Service:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.module} exited with {self.proc.returncode}:\n{self.log_tail()}")
            if health_status(self.address, timeout=0.5) == "SERVING":
                return self
            time.sleep(0.1)
        raise TimeoutError(f"{self.module} not SERVING after {timeout}s:\n{self.log_tail()}")

    def wait_answering(self, timeout: float = 60.0) -> str:
        """Waits until the server answers health checks (SERVING or not); returns the status."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.module} exited with {self.proc.returncode}:\n{self.log_tail()}")
            status = health_status(self.address, timeout=0.5)
            if status in ("SERVING", "NOT_SERVING"):
                return status
            time.sleep(0.05)
        raise TimeoutError(f"{self.module} not answering after {timeout}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL if it does not exit in time. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@contextlib.contextmanager
def running(*services: Service, timeout: float = 90.0) -> Iterator[tuple[Service, ...]]:
    """Starts the services together, waits for all to be SERVING, stops them all on exit."""
    try:
        for s in services:
            s.start()
        for s in services:
            s.wait_serving(timeout)
        yield services
    finally:
        for s in services:
            s.stop()


def stack(model_base: Path, *, gateway_args: list[str] = (), backend_args: list[str] = (), poll: str = "0.5"):
    """Query, index and gateway services for ``model_base`` (not started)."""
    common = ["--model-base", str(model_base), "--poll-interval", poll, *backend_args]
    query = Service("query_service", common)
    index = Service("index_service", common)
    gateway = Service(
        "gateway", ["--query-target", query.address, "--index-targets", index.address, *gateway_args]
    )
    return query, index, gateway
