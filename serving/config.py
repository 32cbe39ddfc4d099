"""Flags with environment-variable defaults, and logging set-up, for every service.

Each service declares its flags in one place (its ``config.py``); every flag
can also be set through an environment variable named by the flag (``--model-base``
-> ``MODEL_BASE``, with the service's prefix for its own address and ports), so
that docker compose and Kubernetes configure services through the environment.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from pythonjsonlogger.json import JsonFormatter

from serving import request_id

log = logging.getLogger(__name__)


def env_var_for(flag: str, prefix: str = "") -> str:
    return prefix + flag.lstrip("-").replace("-", "_").upper()


class FlagParser(argparse.ArgumentParser):
    """An ArgumentParser whose flags default to an environment variable.

    ``parser.flag("--port", 50051, int, "...", env_prefix="GATEWAY_")`` reads
    ``GATEWAY_PORT`` when set, else 50051; the help text names the variable.
    """

    def __init__(self, *args: Any, env_prefix: str = "", **kwargs: Any):
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)
        self.env_prefix = env_prefix

    def flag(
        self,
        name: str,
        default: Any,
        type: Callable[[str], Any] = str,
        help: str = "",
        *,
        shared: bool = False,
        choices: Sequence[Any] | None = None,
    ) -> None:
        """Adds ``name``; ``shared=True`` drops the service prefix (e.g. MODEL_BASE)."""
        env = env_var_for(name, "" if shared else self.env_prefix)
        raw = os.environ.get(env)
        if type is bool:
            value = default if raw is None else raw.strip().lower() in ("1", "true", "yes", "on")
            self.add_argument(name, default=value, action=argparse.BooleanOptionalAction, help=f"{help} [env {env}]")
            return
        value = default
        if raw is not None:
            try:
                value = type(raw)
            except ValueError:
                self.error(f"environment variable {env}={raw!r} is not a valid {getattr(type, '__name__', type)}")
        self.add_argument(name, default=value, type=type, choices=choices, help=f"{help} [env {env}]")


def add_server_flags(parser: FlagParser, default_port: int) -> None:
    """The flags every gRPC server shares: where to listen, limits, shutdown, logs, metrics."""
    parser.flag("--host", "0.0.0.0", str, "address to listen on (127.0.0.1 for loopback only)")
    parser.flag("--port", default_port, int, "gRPC port")
    parser.flag("--metrics-port", 0, int, "Prometheus /metrics HTTP port (0 = disabled)")
    parser.flag("--grace-period", 10.0, float, "seconds to finish in-flight requests on SIGTERM")
    parser.flag("--max-message-bytes", 8 * 1024 * 1024, int, "largest gRPC message accepted or sent")
    parser.flag("--max-concurrent-rpcs", 256, int, "requests in flight at once; beyond it: RESOURCE_EXHAUSTED")
    parser.flag("--max-connection-age", 60.0, float, "seconds before a client connection is recycled (re-resolves DNS)")
    parser.flag("--tls-cert", "", str, "PEM certificate: serve TLS (with --tls-key)")
    parser.flag("--tls-key", "", str, "PEM private key of --tls-cert")
    parser.flag("--tls-client-ca", "", str, "PEM CA: require client certificates signed by it (mutual TLS)")
    parser.flag("--log-level", "INFO", str, "logging level", shared=True)
    parser.flag("--log-format", "json", str, "log line format", shared=True, choices=("json", "text"))


def add_model_flags(parser: FlagParser) -> None:
    """The flags of a service that serves model bundles (query and index)."""
    parser.flag("--model-base", "./models/movielens", str, "folder of numbered bundle versions", shared=True)
    parser.flag("--keep-versions", 2, int, "newest valid versions kept loaded", shared=True)
    parser.flag("--poll-interval", 5.0, float, "seconds between scans for new versions (0 = only on ReloadModels)", shared=True)
    parser.flag("--allow-reload", True, bool, "serve the ReloadModels admin RPC")


def setup_logging(level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(request_id.LogFilter())
    if fmt == "json":
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s", rename_fields={"levelname": "level"}
            )
        )
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def log_config(service: str, args: argparse.Namespace) -> None:
    log.info("%s starting", service, extra={"config": {k: v for k, v in sorted(vars(args).items())}})
