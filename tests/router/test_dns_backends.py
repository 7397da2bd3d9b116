"""Backends named `dns:///HOST:PORT`: every address HOST resolves to is a replica.

Real model servers and a real router on loopback. The first test resolves
`localhost` with the system resolver; the others stand a scripted resolver in for
the cluster DNS of a headless Service, whose answer changes as pods come and go.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from canarycast.v1 import forecast_pb2_grpc as pb_grpc
from router.app import RouterServer, RouterSettings
from router.traffic.backends import parse_dns_target, resolve
from server.serving.app import ModelServer, ServerSettings
from tests.conftest import MODEL, TrainedRegistry
from tests.reliability.common import wait_until
from tests.router.test_router import request


async def model_server(trained: TrainedRegistry) -> ModelServer:
    server = ModelServer(ServerSettings(registry=trained.root, model=f"{MODEL}@stable", port=0))
    await server.open()
    await server.load()
    return server


def served(server: ModelServer) -> float:
    value = server.metrics.registry.get_sample_value("canarycast_server_forecasts_total")
    return value or 0.0


def gauge_addresses(router: RouterServer) -> set[str]:
    return {
        sample.labels["address"]
        for metric in router.metrics.backend_serving.collect()
        for sample in metric.samples
    }


class Dns:
    """The answers a headless Service's name gives, changed by the test."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = list(addresses)
        self.fail = False
        self.asked: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append(f"{host}:{port}")
        if self.fail:
            raise OSError(f"[Errno -2] Name or service not known: {host}")
        return list(self.addresses)


@pytest.fixture
async def servers(registry_copy: TrainedRegistry) -> AsyncIterator[list[ModelServer]]:
    started = [await model_server(registry_copy) for _ in range(2)]
    yield started
    for server in started:
        await server.stop(grace=1)


async def calls(router: RouterServer, n: int) -> list[grpc.StatusCode]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{router.port}") as channel:
        stub = pb_grpc.ForecasterStub(channel)
        codes = []
        for _ in range(n):
            try:
                await stub.Forecast(request(), timeout=10)
                codes.append(grpc.StatusCode.OK)
            except grpc.aio.AioRpcError as exc:
                codes.append(exc.code())
        return codes


def test_a_dns_target_is_parsed_or_refused_by_name() -> None:
    assert parse_dns_target("dns:///stable.ns.svc:50051") == ("stable.ns.svc", 50051)
    assert parse_dns_target("dns:///[::1]:50051") == ("::1", 50051)
    assert parse_dns_target("10.0.0.1:50051") is None
    for bad in ("dns:///stable", "dns:///:50051", "dns:///stable:0", "dns:///stable:http"):
        with pytest.raises(ValueError, match="dns:///HOST:PORT"):
            parse_dns_target(bad)


async def test_the_system_resolver_turns_localhost_into_its_loopback_addresses(
    servers: list[ModelServer],
) -> None:
    port = servers[0].port
    assert f"127.0.0.1:{port}" in await resolve("localhost", port)
    router = RouterServer(RouterSettings(stable=[f"dns:///localhost:{port}"], port=0))
    await router.start()
    try:
        async with asyncio.timeout(20):
            await router.wait_for_backends()
        assert set(await calls(router, 5)) == {grpc.StatusCode.OK}
        assert f"127.0.0.1:{port} SERVING" in router.router.describe_backends()
    finally:
        await router.stop(grace=1)


async def test_calls_are_balanced_over_every_address_and_follow_the_answer_as_it_changes(
    servers: list[ModelServer],
) -> None:
    a, b = (f"127.0.0.1:{s.port}" for s in servers)
    dns = Dns(a, b)
    router = RouterServer(
        RouterSettings(stable=["dns:///stable-headless:50051"], port=0, dns_refresh=0.1),
        resolver=dns,
    )
    await router.start()
    try:
        async with asyncio.timeout(20):
            await router.wait_for_backends()
        assert dns.asked[0] == "stable-headless:50051"
        assert set(await calls(router, 20)) == {grpc.StatusCode.OK}
        per_server = [served(s) for s in servers]
        assert per_server == [10.0, 10.0], per_server  # per call, not per connection
        assert gauge_addresses(router) == {a, b}

        # A pod goes away while calls run: the rest keep being answered, none fail.
        pool = router.router.pools["stable"]
        load = asyncio.create_task(calls(router, 60))
        await asyncio.sleep(0.05)
        dns.addresses = [b]
        await wait_until(lambda: [r.address for r in pool.replicas] == [b], 20, "the refresh")
        codes = await load
        assert set(codes) == {grpc.StatusCode.OK}, codes
        before = [served(s) for s in servers]
        assert set(await calls(router, 10)) == {grpc.StatusCode.OK}
        after = [served(s) for s in servers]
        assert after[0] == before[0] and after[1] == before[1] + 10
        assert gauge_addresses(router) == {b}  # no stale gauge left to fire an alert

        # The DNS fails, then answers nothing: the replicas we have keep serving.
        dns.fail = True
        await asyncio.sleep(0.3)
        assert set(await calls(router, 3)) == {grpc.StatusCode.OK}
        dns.fail, dns.addresses = False, []
        await asyncio.sleep(0.3)
        assert set(await calls(router, 3)) == {grpc.StatusCode.OK}

        # A pod comes back: it takes calls again.
        dns.addresses = [a, b]
        await wait_until(lambda: len(pool.replicas) == 2, 20, "the next refresh adds it")
        async with asyncio.timeout(20):
            await router.wait_for_backends()
        back_before = served(servers[0])
        await calls(router, 10)
        assert served(servers[0]) == back_before + 5
    finally:
        await router.stop(grace=1)


def test_a_bad_dns_backend_or_refresh_is_refused_naming_it() -> None:
    with pytest.raises(ValueError, match="dns:///HOST:PORT"):
        RouterServer(RouterSettings(stable=["dns:///stable"], port=0))
    with pytest.raises(ValueError, match="--dns-refresh"):
        RouterServer(RouterSettings(stable=["dns:///stable:1"], port=0, dns_refresh=0))


async def test_pods_dialled_by_ip_are_checked_against_the_services_name_over_tls(
    registry_copy: TrainedRegistry, tmp_path: Path
) -> None:
    """A pod's certificate names the headless Service, not the pod's IP: the router dials
    the IP and checks the certificate against the name it resolved."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from canarycast.tls import ClientTLS, ServerTLS
    from tests.router.test_tls import _cert, _write_key

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("test CA", ca_key, None, ca_key, ca=True)
    (tmp_path / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for name in ("stable-pods.forecasts.svc", "someone-else.svc"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _cert(name, key, ca, ca_key, server=True, names=[x509.DNSName(name)])
        (tmp_path / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(tmp_path / f"{name}.key", key)

    async def router_to(cert_name: str) -> tuple[ModelServer, RouterServer]:
        server = ModelServer(
            ServerSettings(
                registry=registry_copy.root,
                model=f"{MODEL}@stable",
                port=0,
                tls=ServerTLS(tmp_path / f"{cert_name}.pem", tmp_path / f"{cert_name}.key"),
            )
        )
        await server.start()
        router = RouterServer(
            RouterSettings(
                stable=["dns:///stable-pods.forecasts.svc:50051"],
                port=0,
                backend_tls=ClientTLS(tmp_path / "ca.pem"),
            ),
            resolver=Dns(f"127.0.0.1:{server.port}"),
        )
        await router.start()
        return server, router

    server, router = await router_to("stable-pods.forecasts.svc")
    try:
        async with asyncio.timeout(20):
            await router.wait_for_backends()
        assert set(await calls(router, 3)) == {grpc.StatusCode.OK}
    finally:
        await router.stop(grace=1)
        await server.stop(grace=1)

    server, router = await router_to("someone-else.svc")  # the wrong name: never trusted
    try:
        await asyncio.sleep(1.0)  # several health-watch attempts
        assert not router.router.pools["stable"].serving
        assert set(await calls(router, 2)) == {grpc.StatusCode.UNAVAILABLE}
    finally:
        await router.stop(grace=1)
        await server.stop(grace=1)
