"""Model-server backends of a router: replicas per variant, health-watched.

Each replica keeps one gRPC channel and a `grpc.health.v1` Watch stream on the
`canarycast.v1.Forecaster` service; only replicas whose last word was SERVING
take calls. A dead replica ends its stream (NOT_SERVING at once); a stalled
one (SIGSTOP, a hung host) stops answering HTTP/2 keepalive pings and its
connection is closed after `keepalive` seconds. Calls carry raw bytes: the
router forwards what the client sent and returns what the server answered.

An address `dns:///HOST:PORT` stands for every address HOST resolves to (a
Kubernetes headless Service: one per ready pod), re-resolved every few seconds,
so calls are balanced per call over the pods instead of riding one connection
to whichever pod kube-proxy picked. A failed or empty resolution keeps the last
replicas (their health watch says whether they still serve).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import socket
from collections.abc import Awaitable, Callable, Sequence

import grpc
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc

from canarycast.grpc_server import FORECASTER

log = structlog.get_logger("canarycast.router.backends")

SERVICE = FORECASTER
Metadata = Sequence[tuple[str, str]]
DNS_SCHEME = "dns:///"
#: host, port -> the addresses ("IP:PORT", IPv6 in brackets) it stands for now
Resolver = Callable[[str, int], Awaitable[list[str]]]


def parse_dns_target(address: str) -> tuple[str, int] | None:
    """`dns:///HOST:PORT` -> (HOST, PORT); any other address -> None."""
    if not address.startswith(DNS_SCHEME):
        return None
    host, sep, port = address[len(DNS_SCHEME) :].rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{address!r}: a DNS backend is written dns:///HOST:PORT")
    return host.strip("[]"), int(port)


def host_port(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ipaddress.ip_address(ip).version == 6 else f"{ip}:{port}"


async def resolve(host: str, port: int) -> list[str]:
    """Every TCP address `host` resolves to, sorted, without duplicates."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({host_port(str(info[4][0]), port) for info in infos})


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
        authority: str | None = None,
    ) -> None:
        """`credentials`: TLS (mTLS with a client certificate) to the server; None: plaintext.
        `authority`: the name the server is called by (and its certificate names) when
        `address` is one of the IPs that name resolved to."""
        self.variant = variant
        self.address = address
        self.serving = False
        #: Set once the first health answer (or failure to get one) is in.
        self.checked = asyncio.Event()
        self._on_health = on_health
        options: list[tuple[str, int | str]] = list(channel_options(keepalive))
        if authority is not None:
            options.append(("grpc.default_authority", authority))
            if credentials is not None:  # the certificate names the host, not host:port
                host = authority.rpartition(":")[0] or authority
                options.append(("grpc.ssl_target_name_override", host))
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

    async def close(self, grace: float | None = None) -> None:
        """Stop watching and close the channel; calls in flight get `grace` seconds."""
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task
        await self.channel.close(grace)

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
                    self.checked.set()
                    backoff = 0.1
            except grpc.aio.AioRpcError:
                pass
            self._set(False)
            self.checked.set()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)


class BackendPool:
    """The replicas of one variant, picked round-robin among those SERVING.

    `replicas` are the fixed addresses; `dns_targets` (HOST, PORT) are re-resolved
    every `refresh` seconds, with `make_replica(address, authority)` building a
    replica for each new address and `on_removed` told of each one that went away.
    """

    def __init__(
        self,
        variant: str,
        replicas: Sequence[Replica],
        *,
        dns_targets: Sequence[tuple[str, int]] = (),
        make_replica: Callable[[str, str], Replica] | None = None,
        on_removed: Callable[[Replica], None] | None = None,
        resolver: Resolver = resolve,
        refresh: float = 5.0,
        drain: float = 5.0,
    ) -> None:
        if dns_targets and make_replica is None:
            raise ValueError("DNS targets need make_replica")
        self.variant = variant
        self.replicas = list(replicas)
        self._next = itertools.count()
        self._dns_targets = list(dns_targets)
        self._make_replica = make_replica
        self._on_removed = on_removed
        self._resolver = resolver
        self._refresh = refresh
        self._drain = drain
        self._resolved: dict[tuple[str, int], list[Replica]] = {t: [] for t in self._dns_targets}
        self._discovery: asyncio.Task[None] | None = None
        self._started = False
        self._failing: set[tuple[str, int]] = set()
        self._closing: set[asyncio.Task[None]] = set()

    def pick(self) -> Replica | None:
        replicas = self.replicas
        n = len(replicas)
        start = next(self._next)
        for i in range(n):
            replica = replicas[(start + i) % n]
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

    async def discover(self) -> list[Replica]:
        """Resolve the DNS targets once; start replicas for new addresses and retire
        those gone (their calls in flight get `drain` seconds). Returns the new ones."""
        added: list[Replica] = []
        for target in self._dns_targets:
            host, port = target
            try:
                addresses = await self._resolver(host, port)
                error = "" if addresses else "no addresses"
            except OSError as exc:
                addresses, error = [], str(exc)
            if error:  # said once, not every refresh (an idle canary has no pods for hours)
                if target not in self._failing:
                    self._failing.add(target)
                    log.warning(
                        "backend_resolve_failed",
                        variant=self.variant,
                        host=host,
                        error=error,
                        keeping=[r.address for r in self._resolved[target]],
                    )
                continue
            if target in self._failing:
                self._failing.discard(target)
                log.info("backend_resolve_recovered", variant=self.variant, host=host)
            current = {r.address: r for r in self._resolved[target]}
            if set(current) == set(addresses):
                continue
            assert self._make_replica is not None
            kept = [current[a] for a in addresses if a in current]
            new = [self._make_replica(a, f"{host}:{port}") for a in addresses if a not in current]
            gone = [r for a, r in current.items() if a not in addresses]
            self._resolved[target] = kept + new
            self.replicas = [r for r in self.replicas if r not in gone] + new
            log.info(
                "backends_resolved",
                variant=self.variant,
                host=host,
                addresses=addresses,
                added=[r.address for r in new],
                removed=[r.address for r in gone],
            )
            if self._started:
                for replica in new:
                    replica.start()
            added += new
            for replica in gone:
                if self._on_removed is not None:
                    self._on_removed(replica)
                task = asyncio.get_running_loop().create_task(replica.close(self._drain))
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
        return added

    def start(self) -> None:
        self._started = True
        for replica in self.replicas:
            replica.start()
        if self._dns_targets:
            self._discovery = asyncio.get_running_loop().create_task(
                self._rediscover(), name=f"discovery-{self.variant}"
            )

    async def _rediscover(self) -> None:
        while True:
            await asyncio.sleep(self._refresh)
            try:
                await self.discover()
            except Exception:  # keep discovering; the replicas we have keep serving
                log.exception("backend_discovery_failed", variant=self.variant)

    async def close(self) -> None:
        if self._discovery is not None:
            self._discovery.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._discovery
        await asyncio.gather(*(r.close() for r in self.replicas), *self._closing)
