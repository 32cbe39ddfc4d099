"""The two reference servers the stack is measured against, as their own processes.

- ``--kind echo``: a grpc.aio unary server that returns the request bytes
  unparsed, at the Gateway's Recommend path: the floor of a Python gRPC server
  on this machine (no protobuf, no interceptor, no work).
- ``--kind tfrs``: the seed's serving loop: one bundle's user tower and a
  ``tfrs.layers.factorized_top_k.BruteForce`` indexed with the bundle's item
  embeddings, called once per Recommend request on the event loop (as the seed
  did, no batching), behind the same Gateway.Recommend method.

Both answer the standard health check, so the same helpers start them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

RECOMMEND = "/recsys.v1.Gateway/Recommend"


def echo_handler() -> grpc.GenericRpcHandler:
    async def echo(request: bytes, context) -> bytes:
        return request

    handler = grpc.unary_unary_rpc_method_handler(echo)  # no (de)serializers: bytes in, bytes out
    return grpc.method_handlers_generic_handler("recsys.v1.Gateway", {"Recommend": handler})


def tfrs_handler(model_base: Path) -> grpc.GenericRpcHandler:
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    import numpy as np
    import tensorflow as tf
    import tensorflow_recommenders as tfrs

    from recsys.v1 import gateway_pb2
    from serving import bundle

    version_dir = bundle.version_dirs(model_base)[max(bundle.version_dirs(model_base))]
    manifest = bundle.read_manifest(version_dir)
    items = bundle.load_items(version_dir, manifest)
    signature = tf.saved_model.load(str(version_dir / bundle.USER_TOWER)).signatures["serving_default"]

    class UserTower(tf.keras.Model):
        def call(self, user_ids):
            return signature(user_id=user_ids)["embedding"]

    index = tfrs.layers.factorized_top_k.BruteForce(UserTower(), k=10)
    index.index(tf.constant(items.embeddings), tf.constant(items.ids))
    titles = dict(zip(items.ids.tolist(), items.titles.tolist()))
    index(tf.constant(["1"]))  # trace once before serving

    async def recommend(request, context):
        k = request.k or 10
        scores, ids = index(tf.constant([request.user_id]), k=k)
        ids = [i.decode() for i in np.asarray(ids[0])]
        return gateway_pb2.RecommendResponse(
            items=[gateway_pb2.ScoredItem(item_id=i, title=titles[i], score=float(s)) for i, s in zip(ids, scores[0].numpy())],
            model_version=str(manifest.version),
        )

    handler = grpc.unary_unary_rpc_method_handler(
        recommend,
        request_deserializer=gateway_pb2.RecommendRequest.FromString,
        response_serializer=gateway_pb2.RecommendResponse.SerializeToString,
    )
    return grpc.method_handlers_generic_handler("recsys.v1.Gateway", {"Recommend": handler})


async def serve(args: argparse.Namespace) -> None:
    handler = echo_handler() if args.kind == "echo" else tfrs_handler(Path(args.model_base))
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([handler])
    status = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(status, server)
    server.add_insecure_port(f"{args.host}:{args.port}")
    await server.start()
    await status.set("", health_pb2.HealthCheckResponse.SERVING)
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.servers", description=__doc__)
    parser.add_argument("--kind", choices=("echo", "tfrs"), required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model-base", help="bundle folder (tfrs only)")
    # Services take these; accepted and ignored so the same helpers can start us.
    parser.add_argument("--log-format", default="text")
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
