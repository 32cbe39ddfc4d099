"""recsys.internal.v1.ModelAdmin, which the query and index servers both serve: model status and reload."""

from __future__ import annotations

import grpc

from recsys.internal.v1 import admin_pb2, admin_pb2_grpc
from recsys.v1 import common_pb2
from serving.lifecycle import ModelManager, State

ADMIN_SERVICE = "recsys.internal.v1.ModelAdmin"

_STATE = {
    State.LOADING: common_pb2.MODEL_VERSION_STATE_LOADING,
    State.AVAILABLE: common_pb2.MODEL_VERSION_STATE_AVAILABLE,
    State.FAILED: common_pb2.MODEL_VERSION_STATE_FAILED,
    State.UNLOADED: common_pb2.MODEL_VERSION_STATE_UNLOADED,
}


def service_status(manager: ModelManager, service: str, shard_index: int = 0, num_shards: int = 1):
    loaded = manager.versions
    default = loaded[0] if loaded else None
    return common_pb2.ServiceModelStatus(
        service=service,
        versions=[
            common_pb2.ModelVersionStatus(
                version=str(s.version),
                state=_STATE[s.state],
                error=s.error,
                size=s.size,
                is_default=s.version == default,
            )
            for s in manager.status()
        ],
        shard_index=shard_index,
        num_shards=num_shards,
    )


class ModelAdminMixin(admin_pb2_grpc.ModelAdminServicer):
    """GetModelStatus and ReloadModels for a servicer holding ``self.manager``; the
    server registers the servicer as ModelAdmin too (``add_ModelAdminServicer_to_server``).

    The servicer sets ``service_name``, ``manager`` and ``allow_reload`` (the
    reload RPC can be switched off by flag, so only operators can trigger it).
    """

    service_name: str
    manager: ModelManager
    allow_reload: bool = True
    shard_index: int = 0
    num_shards: int = 1

    def _status(self):
        return service_status(self.manager, self.service_name, self.shard_index, self.num_shards)

    async def GetModelStatus(self, request, context):
        return admin_pb2.GetModelStatusResponse(services=[self._status()])

    async def ReloadModels(self, request, context):
        if not self.allow_reload:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                "ReloadModels is disabled on this server; start it with --allow-reload to enable it",
            )
        await self.manager.refresh_async()
        return admin_pb2.ReloadModelsResponse(status=self._status())
