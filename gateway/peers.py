"""Channels to the query and index tiers, with client-side balancing, health and retries.

Each target may resolve to many replicas (``dns:///index:50053`` in compose or
behind a Kubernetes headless Service, or a static ``ipv4:10.0.0.1:50053,10.0.0.2:50053``
list); ``round_robin`` spreads calls over them, client-side health checking takes
a replica that reports NOT_SERVING (loading, draining) out of rotation, and the
retry policy retries UNAVAILABLE on another replica. All of it is gRPC's own
machinery, configured by the service config below.
"""

from __future__ import annotations

import json

import grpc

from serving import tls
from serving.server import channel_options


def service_config(service: str, max_attempts: int = 3) -> str:
    return json.dumps(
        {
            "loadBalancingConfig": [{"round_robin": {}}],
            "healthCheckConfig": {"serviceName": service},
            "methodConfig": [
                {
                    "name": [{"service": service}],
                    "retryPolicy": {
                        "maxAttempts": max_attempts,
                        "initialBackoff": "0.005s",
                        "maxBackoff": "0.1s",
                        "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE"],
                    },
                }
            ],
            # Bounds retries across all calls so a dead tier cannot cause a retry storm.
            "retryThrottling": {"maxTokens": 100, "tokenRatio": 0.1},
        }
    )


def open_channel(
    target: str, service: str, max_message_bytes: int, credentials: grpc.ChannelCredentials | None = None
) -> grpc.aio.Channel:
    return tls.open_channel(
        target,
        credentials,
        options=[
            *channel_options(max_message_bytes),
            ("grpc.service_config", service_config(service)),
            ("grpc.enable_retries", 1),
            # A dead replica is noticed in seconds, not minutes, on idle channels.
            ("grpc.keepalive_time_ms", 10_000),
            ("grpc.keepalive_timeout_ms", 5_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2_000),
        ],
    )
