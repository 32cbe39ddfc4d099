"""Limits on the features a request may carry for a user the model has not seen.

Checked by the gateway (so callers get INVALID_ARGUMENT naming the field) and
again by the query service (its own callers).
"""

from __future__ import annotations

from recsys.v1 import common_pb2
from serving.errors import Violation

MAX_ID_BYTES = 256
MAX_FEATURE_BYTES = 64
MAX_AGE = 150
MAX_WATCHED = 1000


def feature_violations(f: common_pb2.UserFeatures, field: str = "user_features") -> list[Violation]:
    """Every bad field of one UserFeatures message (at ``field`` in the request); [] when it is valid."""
    found = []
    if not 0 <= f.age <= MAX_AGE:
        found.append(Violation(f"{field}.age", f"age must be 0 (not given) or 1..{MAX_AGE}; got {f.age}"))
    for name in ("gender", "occupation", "zip_code"):
        if len(getattr(f, name).encode()) > MAX_FEATURE_BYTES:
            found.append(Violation(f"{field}.{name}", f"{name} is longer than {MAX_FEATURE_BYTES} bytes"))
    if len(f.watched_item_ids) > MAX_WATCHED:
        found.append(Violation(
            f"{field}.watched_item_ids",
            f"watched_item_ids has {len(f.watched_item_ids)} ids; at most {MAX_WATCHED}",
        ))
    else:
        for i, item_id in enumerate(f.watched_item_ids):
            if not item_id or len(item_id.encode()) > MAX_ID_BYTES:
                found.append(Violation(
                    f"{field}.watched_item_ids[{i}]", f"every watched item id must be 1..{MAX_ID_BYTES} bytes"
                ))
    return found
