"""QueryService: validates EmbedUsers requests and answers them from the user tower."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Sequence

import grpc
import numpy as np

from query_service.model import UserTower
from recsys.internal.v1 import query_service_pb2, query_service_pb2_grpc
from serving import errors
from serving.admin import ModelAdminMixin
from serving.batching import MicroBatcher
from serving.lifecycle import ModelManager, VersionUnavailable, parse_version
from serving.errors import InvalidArgument, Violations
from serving.user_features import feature_violations

MAX_USER_ID_BYTES = 256


class QueryServicer(ModelAdminMixin, query_service_pb2_grpc.QueryServiceServicer):
    service_name = "recsys.internal.v1.QueryService"

    def __init__(self, manager: ModelManager[UserTower], *, max_batch: int, batch_wait_us: int, allow_reload: bool):
        self.manager = manager
        self.max_batch = max_batch
        self.allow_reload = allow_reload
        # TensorFlow runs on one worker thread, one call per gathered batch,
        # so the event loop keeps accepting requests while a batch runs.
        self._tf_thread = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="tf")
        self.batcher: MicroBatcher[tuple[UserTower, str], np.ndarray] = MicroBatcher(
            self._embed_batch, max_batch=max_batch, max_wait_us=batch_wait_us, stage="query_tf_call"
        )

    def _validate(self, user_ids: list[str], features: list) -> None:
        problems = Violations()
        if not user_ids:
            problems.add("user_ids", "user_ids is empty: send 1 or more user ids")
        if len(user_ids) > self.max_batch:
            problems.add(
                "user_ids", f"{len(user_ids)} user_ids in one call; at most {self.max_batch} are allowed: split the batch"
            )
        for i, uid in enumerate(user_ids):
            if not uid or len(uid.encode()) > MAX_USER_ID_BYTES:
                problems.add(
                    f"user_ids[{i}]",
                    f"every user id must be 1..{MAX_USER_ID_BYTES} bytes; got one of {len(uid.encode())} bytes",
                )
        if features and len(features) != len(user_ids):
            problems.add(
                "user_features",
                f"user_features has {len(features)} entries for {len(user_ids)} user_ids: send one per id, or none",
            )
        for i, f in enumerate(features):
            problems.extend(feature_violations(f, f"user_features[{i}]"))
        problems.raise_if_any()

    async def _embed_batch(self, items: list[tuple[UserTower, str]]) -> Sequence[np.ndarray]:
        """One SavedModel call per model version in the gathered batch, on the TF thread."""
        loop = asyncio.get_running_loop()
        rows_by_version: dict[int, list[int]] = {}
        for i, (tower, _) in enumerate(items):
            rows_by_version.setdefault(tower.version, []).append(i)
        out: list[np.ndarray] = [None] * len(items)  # type: ignore[list-item]
        for rows in rows_by_version.values():
            tower = items[rows[0]][0]
            vectors = await loop.run_in_executor(self._tf_thread, tower.embed, [items[i][1] for i in rows])
            for i, vec in zip(rows, vectors):
                out[i] = vec
        return out

    async def EmbedUsers(self, request, context):
        user_ids = list(request.user_ids)
        features = list(request.user_features)
        try:
            self._validate(user_ids, features)
        except InvalidArgument as exc:
            await errors.abort_invalid(context, exc)
        try:
            version, tower = self.manager.get(parse_version(request.model_version))
        except ValueError as exc:
            await errors.abort_invalid_field(context, "model_version", str(exc))
        except VersionUnavailable as exc:
            await errors.abort(context, errors.error_info(
                grpc.StatusCode.FAILED_PRECONDITION, str(exc), "MODEL_VERSION_NOT_LOADED",
                {"requested": exc.requested, "loaded": ",".join(map(str, exc.available))},
            ))
        vectors, known = tower.lookup(user_ids)
        from_features = np.zeros(len(user_ids), dtype=bool)
        if features and tower.embeds_features:
            from_features = ~known & np.array([f.ByteSize() > 0 for f in features])
        if from_features.any():
            # New users described by the request: one call of the features signature.
            rows = np.flatnonzero(from_features)
            loop = asyncio.get_running_loop()
            by_features, informative = await loop.run_in_executor(
                self._tf_thread, tower.embed_features, [features[i] for i in rows]
            )
            vectors[rows] = by_features
            from_features[rows[~informative]] = False  # nothing usable: the fallback path below
        embedded = known | from_features
        if not embedded.all() and not request.skip_unknown_users:
            # Users outside the precomputed table go through the SavedModel, batched
            # with other callers' unknown users.
            missing = np.flatnonzero(~embedded)
            vectors[missing] = await self.batcher.submit([(tower, user_ids[i]) for i in missing])
            embedded[:] = True
        users = tower.users
        return query_service_pb2.EmbedUsersResponse(
            embeddings=[
                query_service_pb2.UserEmbedding(
                    user_id=uid,
                    values=vec if has_vector else (),
                    known=bool(is_known),
                    seen_item_ids=users.seen_item_ids(uid) if request.include_seen and is_known else (),
                    from_features=bool(by_features),
                )
                for uid, vec, is_known, by_features, has_vector in zip(user_ids, vectors, known, from_features, embedded)
            ],
            model_version=str(version),
            dimension=tower.dim,
        )
