"""Command-line client: ``python -m gateway.cli recommend 42 -k 10``, ``similar 50``, ``batch FILE.jsonl``, ``health``, ``status``.

A new user can be described: ``recommend new-1 --age 30 --gender F --watched 50 --watched 181``.
Genres: ``recommend 42 --genre Comedy --genre Drama --exclude-genre Horror`` (also for ``similar``).
Many users: ``batch requests.jsonl`` reads one RecommendRequest per line in protobuf's JSON form
(``{"user_id": "42", "k": 5, "genre_filter": {"include_genres": ["Comedy"]}}``; ``-`` reads stdin),
sends them in RecommendBatch calls and prints one JSON response per line, in order.

Prints readable tables; exits non-zero with the gRPC status on failure, and each bad field
(for ``batch``, by input line) or the failing tier when the server says which.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable

import grpc
from google.protobuf import json_format
from google.rpc import error_details_pb2

from recsys.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from serving import errors, tls
from serving.healthcheck import add_tls_client_flags, check, client_credentials

SERVICES = ("", "recsys.v1.Gateway")


class CliError(Exception):
    """A failure to report as it is; ``exit_code`` 1 for a failed call, 2 for bad input."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


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
            user_features=features if features.ByteSize() else None, genre_filter=genre_filter(args),
        ),
        timeout=args.timeout,
    )
    rows = [[str(rank), item.item_id, f"{item.score:.4f}", item.title] for rank, item in enumerate(response.items, 1)]
    note = " (fallback: user unknown to the model, most popular movies)" if response.fallback else ""
    header = f"user {args.user_id} - model version {response.model_version}{note}"
    return header + "\n" + table(["rank", "item_id", "score", "title"], rows)


def cmd_similar(stub, args) -> str:
    response = stub.SimilarItems(
        gateway_pb2.SimilarItemsRequest(item_id=args.item_id, k=args.k, genre_filter=genre_filter(args)),
        timeout=args.timeout,
    )
    rows = [[str(rank), item.item_id, f"{item.score:.4f}", item.title] for rank, item in enumerate(response.items, 1)]
    header = f"movies similar to {args.item_id} - model version {response.model_version}"
    return header + "\n" + table(["rank", "item_id", "score", "title"], rows)


def genre_filter(args) -> common_pb2.GenreFilter | None:
    if not args.genre and not args.exclude_genre:
        return None
    return common_pb2.GenreFilter(include_genres=args.genre, exclude_genres=args.exclude_genre)


def read_requests(lines) -> list[tuple[int, gateway_pb2.RecommendRequest]]:
    """(line number, request) for each non-blank line; CliError naming the line for one that does not parse."""
    requests = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            requests.append((number, json_format.Parse(line, gateway_pb2.RecommendRequest())))
        except json_format.ParseError as exc:
            raise CliError(f"line {number}: not a RecommendRequest in JSON form: {exc}", exit_code=2) from exc
    if not requests:
        raise CliError("no requests: the file has no non-blank lines", exit_code=2)
    return requests


def cmd_batch(stub, args) -> str:
    if args.file == "-":
        requests = read_requests(sys.stdin)
    else:
        try:
            with open(args.file, encoding="utf-8") as f:
                requests = read_requests(f)
        except OSError as exc:
            raise CliError(f"cannot read {args.file}: {exc.strerror}", exit_code=2) from exc
    out = []
    for start in range(0, len(requests), args.batch_size):
        chunk = requests[start : start + args.batch_size]
        try:
            response = stub.RecommendBatch(
                gateway_pb2.RecommendBatchRequest(requests=[r for _, r in chunk]), timeout=args.timeout
            )
        except grpc.RpcError as exc:
            lines = [number for number, _ in chunk]
            # requests[3].k of this call -> "line 7: k" of the file.
            raise CliError(describe_error(exc, lambda field: _field_by_line(field, lines)), exit_code=1) from exc
        for (_, request), answer in zip(chunk, response.responses):
            fields = json.loads(json_format.MessageToJson(answer, preserving_proto_field_name=True, indent=None))
            out.append(json.dumps({"user_id": request.user_id, **fields}, ensure_ascii=False))
    return "\n".join(out)


def _field_by_line(field: str, lines: list[int]) -> str:
    prefix, _, rest = field.partition("]")
    if prefix.startswith("requests[") and prefix[9:].isdigit() and int(prefix[9:]) < len(lines):
        return f"line {lines[int(prefix[9:])]}: {rest.lstrip('.') or 'request'}"
    return field


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


def describe_error(exc: grpc.RpcError, field_name: Callable[[str], str] = str) -> str:
    """The status line, then each bad field (BadRequest) or where it failed (ErrorInfo)."""
    lines = [f"error: {exc.code().name}: {exc.details()}"]
    for detail in errors.details_of(exc):
        if isinstance(detail, error_details_pb2.BadRequest):
            lines += [f"  {field_name(v.field)}: {v.description}" for v in detail.field_violations]
        else:
            where = ", ".join(f"{k}={v}" for k, v in sorted(detail.metadata.items()))
            lines.append(f"  reason: {detail.reason}" + (f" ({where})" if where else ""))
    return "\n".join(lines)


def add_genre_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--genre", action="append", default=[], metavar="NAME",
                        help="only movies of this genre (repeat for any of several), e.g. Comedy")
    parser.add_argument("--exclude-genre", action="append", default=[], metavar="NAME",
                        help="no movies of this genre (repeatable)")


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
    add_genre_flags(rec)
    rec.set_defaults(run=cmd_recommend)
    sim = sub.add_parser("similar", help="movies most similar to a movie")
    sim.add_argument("item_id")
    sim.add_argument("-k", type=int, default=10, help="how many movies (1..1000)")
    add_genre_flags(sim)
    sim.set_defaults(run=cmd_similar)
    batch = sub.add_parser("batch", help="recommend for every request in a JSON-lines file, one JSON answer per line")
    batch.add_argument("file", help='one RecommendRequest per line, e.g. {"user_id": "42", "k": 5}; - for stdin')
    batch.add_argument("--batch-size", type=int, default=1000,
                       help="requests per RecommendBatch call (at most what the gateway accepts)")
    batch.set_defaults(run=cmd_batch)
    sub.add_parser("status", help="model versions on every service").set_defaults(run=cmd_status)
    sub.add_parser("health", help="health of the gateway").set_defaults(run=cmd_health)
    args = parser.parse_args(argv)
    if getattr(args, "batch_size", 1) < 1:
        parser.error("--batch-size must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tls.open_channel(args.address, client_credentials(args), aio=False) as channel:
        try:
            print(args.run(gateway_pb2_grpc.GatewayStub(channel), args))
        except grpc.RpcError as exc:
            print(describe_error(exc), file=sys.stderr)
            return 1
        except CliError as exc:
            print(f"error: {exc}" if exc.exit_code == 2 else str(exc), file=sys.stderr)
            return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
