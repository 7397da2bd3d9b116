"""Model-server backends of a router: replicas per variant, health-watched.

Each replica keeps one gRPC channel and a `grpc.health.v1` Watch stream on the
`canarycast.v1.Forecaster` service; only replicas whose last word was SERVING
take calls. A dead replica ends its stream (NOT_SERVING at once); a stalled
one (SIGSTOP, a hung host) stops answering HTTP/2 keepalive pings and its
connection is closed after `keepalive` seconds. Calls carry raw bytes: the
router forwards what the client sent and returns what the server answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable, Sequence

import grpc
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc

from canarycast.grpc_server import FORECASTER

log = structlog.get_logger("canarycast.router.backends")

SERVICE = FORECASTER
Metadata = Sequence[tuple[str, str]]


def channel_options(keepalive: float) -> list[tuple[str, int]]:
    ms = int(keepalive * 1000)
    return [
        ("grpc.keepalive_time_ms", ms),
        ("grpc.keepalive_timeout_ms", ms),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ]


class Replica:
    """One model-server address."""

    def __init__(
        self,
        variant: str,
        address: str,
        *,
        keepalive: float = 2.0,
        on_health: Callable[[Replica], None] | None = None,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        """`credentials`: TLS (mTLS with a client certificate) to the server; None: plaintext."""
        self.variant = variant
        self.address = address
        self.serving = False
        self._on_health = on_health
        options = channel_options(keepalive)
        self.channel = (
            grpc.aio.secure_channel(address, credentials, options=options)
            if credentials is not None
            else grpc.aio.insecure_channel(address, options=options)
        )
        self._forecast = self.channel.unary_unary(f"/{SERVICE}/Forecast")
        self._get_model = self.channel.unary_unary(f"/{SERVICE}/GetModel")
        self._watch_task: asyncio.Task[None] | None = None

    async def forecast(self, request: bytes, remaining: float | None, metadata: Metadata) -> bytes:
        """Forward raw bytes; `remaining` is the caller's deadline in seconds."""
        response: bytes = await self._forecast(request, timeout=remaining, metadata=metadata)
        return response

    async def get_model(self, request: bytes, remaining: float | None, metadata: Metadata) -> bytes:
        response: bytes = await self._get_model(request, timeout=remaining, metadata=metadata)
        return response

    def start(self) -> None:
        self._watch_task = asyncio.get_running_loop().create_task(
            self._watch(), name=f"health-{self.address}"
        )

    async def close(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task
        await self.channel.close()

    def mark_down(self) -> None:
        """A call found it unreachable: stop sending until its health says SERVING again."""
        self._set(False)

    def _set(self, serving: bool) -> None:
        if serving != self.serving:
            self.serving = serving
            log.info("backend_health", variant=self.variant, address=self.address, serving=serving)
            if self._on_health is not None:
                self._on_health(self)

    async def _watch(self) -> None:
        stub = health_pb2_grpc.HealthStub(self.channel)
        backoff = 0.1
        while True:
            try:
                async for response in stub.Watch(health_pb2.HealthCheckRequest(service=SERVICE)):
                    self._set(response.status == health_pb2.HealthCheckResponse.SERVING)
                    backoff = 0.1
            except grpc.aio.AioRpcError:
                pass
            self._set(False)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)


class BackendPool:
    """The replicas of one variant, picked round-robin among those SERVING."""

    def __init__(self, variant: str, replicas: Sequence[Replica]) -> None:
        self.variant = variant
        self.replicas = list(replicas)
        self._next = itertools.count()

    def pick(self) -> Replica | None:
        n = len(self.replicas)
        start = next(self._next)
        for i in range(n):
            replica = self.replicas[(start + i) % n]
            if replica.serving:
                return replica
        return None

    @property
    def serving(self) -> bool:
        return any(r.serving for r in self.replicas)

    def describe(self) -> str:
        states = ", ".join(
            f"{r.address} {'SERVING' if r.serving else 'NOT_SERVING'}" for r in self.replicas
        )
        return f"{self.variant}: {states or 'no replicas'}"

    def start(self) -> None:
        for replica in self.replicas:
            replica.start()

    async def close(self) -> None:
        await asyncio.gather(*(r.close() for r in self.replicas))
