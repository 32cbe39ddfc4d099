"""Command-line client: ``python -m gateway.cli recommend 42 -k 10``, ``similar 50``, ``health``, ``status``.

A new user can be described: ``recommend new-1 --age 30 --gender F --watched 50 --watched 181``.

Prints readable tables; exits non-zero with the gRPC status on failure.
"""

from __future__ import annotations

import argparse
import os
import sys

import grpc
from google.rpc import error_details_pb2

from recsys.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from serving import errors, tls
from serving.healthcheck import add_tls_client_flags, check, client_credentials

SERVICES = ("", "recsys.v1.Gateway")


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def cmd_recommend(stub, args) -> str:
    features = common_pb2.UserFeatures(
        age=args.age, gender=args.gender, occupation=args.occupation, zip_code=args.zip_code,
        watched_item_ids=args.watched,
    )
    response = stub.Recommend(
        gateway_pb2.RecommendRequest(
            user_id=args.user_id, k=args.k, exclude_seen=args.exclude_seen, exclude_item_ids=args.exclude,
            user_features=features if features.ByteSize() else None,
        ),
        timeout=args.timeout,
    )
    rows = [[str(rank), item.item_id, f"{item.score:.4f}", item.title] for rank, item in enumerate(response.items, 1)]
    note = " (fallback: user unknown to the model, most popular movies)" if response.fallback else ""
    header = f"user {args.user_id} - model version {response.model_version}{note}"
    return header + "\n" + table(["rank", "item_id", "score", "title"], rows)


def cmd_similar(stub, args) -> str:
    response = stub.SimilarItems(
        gateway_pb2.SimilarItemsRequest(item_id=args.item_id, k=args.k), timeout=args.timeout
    )
    rows = [[str(rank), item.item_id, f"{item.score:.4f}", item.title] for rank, item in enumerate(response.items, 1)]
    header = f"movies similar to {args.item_id} - model version {response.model_version}"
    return header + "\n" + table(["rank", "item_id", "score", "title"], rows)


def cmd_status(stub, args) -> str:
    response = stub.GetModelStatus(gateway_pb2.GetModelStatusRequest(), timeout=args.timeout)
    rows = []
    for service in response.services:
        where = service.service + (f" [{service.address}]" if service.address else "")
        if service.num_shards > 1:
            where += f" shard {service.shard_index}/{service.num_shards}"
        if service.error:
            rows.append([where, "-", "UNREACHABLE", "", service.error])
        for v in service.versions:
            state = common_pb2.ModelVersionState.Name(v.state).removeprefix("MODEL_VERSION_STATE_")
            rows.append([where, v.version + (" *" if v.is_default else ""), state, str(v.size), v.error])
    return table(["service", "version", "state", "size", "error"], rows)


def cmd_health(_stub, args) -> str:
    credentials = client_credentials(args)
    rows = [[name or "(overall)", check(args.address, name, args.timeout, credentials)] for name in SERVICES]
    return table(["service", "status"], rows)


def describe_error(exc: grpc.RpcError) -> str:
    """The status line, then each bad field (BadRequest) or where it failed (ErrorInfo)."""
    lines = [f"error: {exc.code().name}: {exc.details()}"]
    for detail in errors.details_of(exc):
        if isinstance(detail, error_details_pb2.BadRequest):
            lines += [f"  {v.field}: {v.description}" for v in detail.field_violations]
        else:
            where = ", ".join(f"{k}={v}" for k, v in sorted(detail.metadata.items()))
            lines.append(f"  reason: {detail.reason}" + (f" ({where})" if where else ""))
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m gateway.cli", description=__doc__.splitlines()[0])
    parser.add_argument("--address", default=os.environ.get("GATEWAY_ADDRESS", "127.0.0.1:50051"),
                        help="gateway host:port [env GATEWAY_ADDRESS]")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per call")
    add_tls_client_flags(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("recommend", help="top-k movies for a user")
    rec.add_argument("user_id")
    rec.add_argument("-k", type=int, default=10, help="how many movies (1..1000)")
    rec.add_argument("--exclude-seen", action="store_true", help="leave out movies the user rated in training")
    rec.add_argument("--exclude", action="append", default=[], metavar="ITEM_ID", help="leave out this movie id")
    new = rec.add_argument_group("a user the model does not know (used only then)")
    new.add_argument("--age", type=int, default=0, help="age in years")
    new.add_argument("--gender", default="", help="M or F")
    new.add_argument("--occupation", default="", help="a MovieLens occupation, e.g. engineer")
    new.add_argument("--zip-code", default="", help="zip code, e.g. 94110")
    new.add_argument("--watched", action="append", default=[], metavar="ITEM_ID", help="a movie the user watched")
    rec.set_defaults(run=cmd_recommend)
    sim = sub.add_parser("similar", help="movies most similar to a movie")
    sim.add_argument("item_id")
    sim.add_argument("-k", type=int, default=10, help="how many movies (1..1000)")
    sim.set_defaults(run=cmd_similar)
    sub.add_parser("status", help="model versions on every service").set_defaults(run=cmd_status)
    sub.add_parser("health", help="health of the gateway").set_defaults(run=cmd_health)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tls.open_channel(args.address, client_credentials(args), aio=False) as channel:
        try:
            print(args.run(gateway_pb2_grpc.GatewayStub(channel), args))
        except grpc.RpcError as exc:
            print(describe_error(exc), file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
