"""``python -m serving.healthcheck``: exit 0 if a gRPC server reports SERVING, else 1.

For container health checks and scripts, where the grpc_health_probe binary
is not available. Uses the standard grpc.health.v1.Health/Check.
"""

from __future__ import annotations

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from serving import tls


def add_tls_client_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tls-ca", default="", help="PEM CA to trust: connect with TLS")
    parser.add_argument("--tls-cert", default="", help="PEM client certificate (mutual TLS)")
    parser.add_argument("--tls-key", default="", help="PEM key of --tls-cert")


def client_credentials(args: argparse.Namespace):
    return tls.channel_credentials(args.tls_ca, args.tls_cert, args.tls_key)


def check(address: str, service: str = "", timeout_s: float = 2.0, credentials=None) -> str:
    """The serving status name ("SERVING", "NOT_SERVING", ...) or the RPC error's code name."""
    with tls.open_channel(address, credentials, aio=False) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
            )
        except grpc.RpcError as exc:
            return exc.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.healthcheck", description=__doc__.splitlines()[0])
    parser.add_argument("--address", default="127.0.0.1:50051", help="host:port of the server")
    parser.add_argument("--service", default="", help="service name to check ('' = the whole server)")
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for the answer")
    add_tls_client_flags(parser)
    args = parser.parse_args(argv)
    status = check(args.address, args.service, args.timeout, client_credentials(args))
    print(status)
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())
