"""Request ids: read from (or minted for) every call, put on every log line, passed to peers.

A caller may send ``x-request-id`` metadata; otherwise the server mints one.
It is returned in the trailing metadata, attached to every log record written
while the call is handled (JSON field ``request_id``), and the gateway sends it
on to its peers so one id follows a request through all three services.
"""

from __future__ import annotations

import contextvars
import logging
import uuid

HEADER = "x-request-id"
MAX_LENGTH = 128
current: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")


def new_id() -> str:
    return uuid.uuid4().hex


def outgoing_metadata() -> tuple[tuple[str, str], ...]:
    rid = current.get()
    return ((HEADER, rid),) if rid else ()


class LogFilter(logging.Filter):
    """Adds ``request_id`` to every record (empty outside a call)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "request_id", ""):
            record.request_id = current.get()
        return True
