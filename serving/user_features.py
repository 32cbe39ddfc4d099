"""Limits on the features a request may carry for a user the model has not seen.

Checked by the gateway (so callers get INVALID_ARGUMENT naming the field) and
again by the query service (its own callers).
"""

from __future__ import annotations

from recsys.v1 import common_pb2

MAX_ID_BYTES = 256
MAX_FEATURE_BYTES = 64
MAX_AGE = 150
MAX_WATCHED = 1000


def feature_problem(f: common_pb2.UserFeatures) -> str | None:
    """What is wrong with one UserFeatures message, or None."""
    if not 0 <= f.age <= MAX_AGE:
        return f"age must be 0 (not given) or 1..{MAX_AGE}; got {f.age}"
    for name in ("gender", "occupation", "zip_code"):
        if len(getattr(f, name).encode()) > MAX_FEATURE_BYTES:
            return f"{name} is longer than {MAX_FEATURE_BYTES} bytes"
    if len(f.watched_item_ids) > MAX_WATCHED:
        return f"watched_item_ids has {len(f.watched_item_ids)} ids; at most {MAX_WATCHED}"
    if any(not i or len(i.encode()) > MAX_ID_BYTES for i in f.watched_item_ids):
        return f"every watched item id must be 1..{MAX_ID_BYTES} bytes"
    return None
