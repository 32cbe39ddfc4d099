"""Structured gRPC errors: machine-readable details next to the human-readable message.

After Google's API design guide (AIP-193), a failed call carries a
``google.rpc.Status`` in the ``grpc-status-details-bin`` trailer (``grpcio-status``
writes it; any gRPC client reads it, in Python ``grpc_status.rpc_status.from_call``):

- INVALID_ARGUMENT: a ``google.rpc.BadRequest`` with one ``FieldViolation`` per bad
  field, named by its path in the request (``requests[3].k``, ``user_features.age``,
  ``genre_filter.include_genres[0]``), so a client can tell from code which field
  was wrong;
- a failure of a tier behind the gateway (UNAVAILABLE, FAILED_PRECONDITION,
  DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED): a ``google.rpc.ErrorInfo`` whose reason
  says what happened and whose metadata says where (``tier``, ``shard``).

The status message stays the sentence a person reads; it is built from the same
violations, so the two never disagree.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import NoReturn

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from serving import request_id

# ErrorInfo.domain: the system that produced the error (AIP-193 asks for a
# globally unique name; this stack has no DNS name of its own).
DOMAIN = "recsys.v1"
# Status and details travel in HTTP/2 trailers, which peers cap at a few KiB:
# a batch with a thousand bad entries reports the first few and a count.
MAX_REPORTED_VIOLATIONS = 20


@dataclasses.dataclass(frozen=True)
class Violation:
    """One bad field: its path in the request and a sentence that says what is allowed."""

    field: str
    description: str

    @property
    def message(self) -> str:
        # "requests[1].user_features.age" + "age must be ..." -> "requests[1].user_features: age must be ..."
        parent = self.field.rpartition(".")[0]
        return f"{parent}: {self.description}" if parent else self.description

    def under(self, prefix: str) -> Violation:
        return Violation(f"{prefix}.{self.field}", self.description)


class InvalidArgument(ValueError):
    """One or more bad fields of a request; becomes INVALID_ARGUMENT with a BadRequest."""

    def __init__(self, violations: Iterable[Violation]):
        self.violations = list(violations)
        shown = self.violations[:MAX_REPORTED_VIOLATIONS]
        more = len(self.violations) - len(shown)
        super().__init__("; ".join(v.message for v in shown) + (f" (and {more} more bad fields)" if more else ""))

    @classmethod
    def of(cls, field: str, description: str) -> InvalidArgument:
        return cls([Violation(field, description)])

    def under(self, prefix: str) -> InvalidArgument:
        """The same violations as fields of ``prefix`` (e.g. ``requests[3]``)."""
        return InvalidArgument(v.under(prefix) for v in self.violations)


class Violations:
    """Collects every bad field of one request before failing, so a client fixes them all at once."""

    def __init__(self) -> None:
        self.found: list[Violation] = []

    def add(self, field: str, description: str) -> None:
        self.found.append(Violation(field, description))

    def extend(self, violations: Iterable[Violation]) -> None:
        self.found.extend(violations)

    def raise_if_any(self) -> None:
        if self.found:
            raise InvalidArgument(self.found)


def _status(code: grpc.StatusCode, message: str, detail) -> grpc.Status:
    """A status with one detail message; to_status puts it in the grpc-status-details-bin trailer."""
    packed = any_pb2.Any()
    packed.Pack(detail)
    return rpc_status.to_status(status_pb2.Status(code=code.value[0], message=message, details=[packed]))


def plain(code: grpc.StatusCode, message: str) -> grpc.Status:
    return rpc_status.to_status(status_pb2.Status(code=code.value[0], message=message))


def bad_request(exc: InvalidArgument) -> grpc.Status:
    detail = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
            for v in exc.violations[:MAX_REPORTED_VIOLATIONS]
        ]
    )
    return _status(grpc.StatusCode.INVALID_ARGUMENT, str(exc), detail)


def error_info(code: grpc.StatusCode, message: str, reason: str, metadata: Mapping[str, str] | None = None) -> grpc.Status:
    detail = error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata=dict(metadata or {}))
    return _status(code, message, detail)


async def abort(context: grpc.aio.ServicerContext, status: grpc.Status) -> NoReturn:
    """Ends the call with ``status``; the request id stays in the trailers next to the details."""
    trailers = tuple(status.trailing_metadata)
    if rid := request_id.current.get():
        trailers += ((request_id.HEADER, rid),)
    await context.abort(status.code, status.details, trailing_metadata=trailers)


async def abort_invalid(context: grpc.aio.ServicerContext, exc: InvalidArgument) -> NoReturn:
    await abort(context, bad_request(exc))


async def abort_invalid_field(context: grpc.aio.ServicerContext, field: str, description: str) -> NoReturn:
    await abort(context, bad_request(InvalidArgument.of(field, description)))


def details_of(error: grpc.RpcError) -> list:
    """The decoded details (BadRequest, ErrorInfo, ...) of a failed call, for clients; [] when none."""
    status = rpc_status.from_call(error)
    if status is None:
        return []
    out = []
    for packed in status.details:
        for kind in (error_details_pb2.BadRequest, error_details_pb2.ErrorInfo):
            if packed.Is(kind.DESCRIPTOR):
                detail = kind()
                packed.Unpack(detail)
                out.append(detail)
    return out
