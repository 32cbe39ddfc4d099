"""Channels to the query and index tiers, with client-side balancing, health and retries.

Each target may resolve to many replicas (``dns:///index:50053`` in compose or
behind a Kubernetes headless Service, or a static ``ipv4:10.0.0.1:50053,10.0.0.2:50053``
list); ``round_robin`` spreads calls over them, client-side health checking takes
a replica that reports NOT_SERVING (loading, draining) out of rotation, and the
retry policy retries UNAVAILABLE on another replica. All of it is gRPC's own
machinery, configured by the service config below. ``Tier`` follows whether a
target has a ready replica, for the gateway's start-up gate and for inner
calls that wait for a tier that is (re)starting.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from serving import tls
from serving.server import channel_options

log = logging.getLogger(__name__)

# A wait for a tier ends this long before the caller's deadline, so that our
# DEADLINE_EXCEEDED naming the tier reaches the caller before its own timer fires.
REPLY_MARGIN_S = 0.05


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


class Tier:
    """One gRPC target of the gateway (the query tier, or one index shard) and whether it can answer now.

    ``watch()`` follows the channel's connectivity state, which with client-side
    health checking is READY exactly while some replica is connected and reports
    SERVING. An inner call to a tier that is not ready waits for it (it may be
    starting, restarting or reconnecting), but only while the tier has been
    without a ready replica for less than ``restart_wait_s``; after that the tier
    counts as gone and calls fail at once with UNAVAILABLE naming it, so that a
    dead tier does not hold every request until its deadline.
    """

    def __init__(self, name: str, target: str, channel: grpc.aio.Channel, service: str, restart_wait_s: float):
        self.name = name  # as in error messages: "query service", "index shard 1"
        self.target = target
        self.channel = channel
        self.service = service  # the health service name its replicas report, e.g. "recsys.internal.v1.QueryService"
        self.restart_wait_s = restart_wait_s
        self._ready = asyncio.Event()
        # Counted from start-up: a tier never seen ready gets the same grace as a restarting one.
        self._down_since: float | None = time.monotonic()

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def down_for(self) -> float:
        return 0.0 if self._down_since is None else time.monotonic() - self._down_since

    async def watch(self) -> None:
        """Follows the channel's state until cancelled (one task per tier, for the gateway's lifetime)."""
        while True:
            # try_to_connect: an IDLE channel (no calls for a while) reconnects, so its state means something.
            state = self.channel.get_state(try_to_connect=True)
            self._observe(state)
            await self.channel.wait_for_state_change(state)

    def _observe(self, state: grpc.ChannelConnectivity) -> None:
        if state == grpc.ChannelConnectivity.READY:
            if not self._ready.is_set():
                log.info("tier ready", extra={"tier": self.name, "target": self.target,
                                              "after_s": round(self.down_for(), 3)})
            self._ready.set()
            self._down_since = None
        else:
            if self._ready.is_set():
                log.warning("tier has no ready replica", extra={"tier": self.name, "target": self.target,
                                                                "state": state.name})
            self._ready.clear()
            if self._down_since is None:
                self._down_since = time.monotonic()

    async def wait_ready(self, timeout: float) -> None:
        """Returns once the tier is ready; raises TierNotReady if not within ``timeout`` or its restart window."""
        if self._ready.is_set():
            return
        window_left = self.restart_wait_s - self.down_for()
        if window_left <= 0:
            raise TierNotReady(self, deadline_expired=False)
        usable = timeout - REPLY_MARGIN_S
        try:
            await asyncio.wait_for(self._ready.wait(), max(0.0, min(usable, window_left)))
        except TimeoutError:
            raise TierNotReady(self, deadline_expired=usable <= window_left) from None

    async def first_serving(self, poll_s: float = 0.2) -> None:
        """Returns once a replica has answered a health check with SERVING (the gateway's start-up gate)."""
        stub = health_pb2_grpc.HealthStub(self.channel)
        request = health_pb2.HealthCheckRequest(service=self.service)
        while True:
            try:
                # wait_for_ready: the check waits for a connection instead of failing while the tier starts.
                response = await stub.Check(request, timeout=2.0, wait_for_ready=True)
                if response.status == health_pb2.HealthCheckResponse.SERVING:
                    log.info("tier answered SERVING", extra={"tier": self.name, "target": self.target})
                    return
            except grpc.aio.AioRpcError:
                pass  # not up yet; the gateway stays NOT_SERVING
            await asyncio.sleep(poll_s)


class TierNotReady(Exception):
    """A tier had no ready replica within the caller's deadline, or for longer than its restart window."""

    def __init__(self, tier: Tier, deadline_expired: bool):
        self.deadline_expired = deadline_expired
        if deadline_expired:
            message = (f"{tier.name} was not ready within the request's deadline: no replica of {tier.target} "
                       f"reported SERVING (starting or reconnecting); retry with a longer deadline")
        else:
            message = (f"{tier.name}: no replica of {tier.target} has reported SERVING for {tier.down_for():.1f} s "
                       f"(down, or still loading its model)")
        super().__init__(message)
