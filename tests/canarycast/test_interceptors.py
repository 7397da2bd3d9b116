"""canarycast.interceptors: the one place domain errors become status codes, for servicers
and for the guards inside the shared interceptor (authentication), unary and streaming."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from prometheus_client import CollectorRegistry

from canarycast.errors import PermissionDenied, Unauthenticated
from canarycast.grpc_server import add_port, make_server
from canarycast.interceptors import RpcMetrics
from router.rollout.control import AdminAuth

CONTROL = "canarycast.v1.RolloutControl"
ADMIN, VIEWER = "admin-token-1", "viewer-token-2"


async def get_status(request: bytes, context: Any) -> bytes:
    return b"status"


async def watch_status(request: bytes, context: Any) -> AsyncIterator[bytes]:
    yield b"first"
    raise PermissionDenied("the stream's own refusal, after one message")


async def pause(request: bytes, context: Any) -> bytes:
    raise Unauthenticated("raised by the servicer")


class World:
    def __init__(self) -> None:
        self.spans = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.registry = CollectorRegistry()
        self.server = make_server(
            provider.get_tracer("test"),
            RpcMetrics(self.registry, "test"),
            1 << 20,
            guards=[AdminAuth(ADMIN, VIEWER)],
        )
        # raw bytes in and out: no (de)serializers, so nothing here decodes a request
        self.server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    CONTROL,
                    {
                        "GetStatus": grpc.unary_unary_rpc_method_handler(get_status),
                        "WatchStatus": grpc.unary_stream_rpc_method_handler(watch_status),
                        "Pause": grpc.unary_unary_rpc_method_handler(pause),
                    },
                ),
            )
        )
        self.port = add_port(self.server, "127.0.0.1:0", None)

    def calls(self, method: str, code: str) -> float:
        value = self.registry.get_sample_value("test_calls_total", {"method": method, "code": code})
        return value or 0.0


@pytest.fixture
async def world() -> AsyncIterator[tuple[World, grpc.aio.Channel]]:
    w = World()
    await w.server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{w.port}") as channel:
        yield w, channel
    await w.server.stop(grace=None)


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def test_a_guards_refusal_of_a_unary_call_is_mapped_traced_and_counted(
    world: tuple[World, grpc.aio.Channel],
) -> None:
    w, channel = world
    rpc = channel.unary_unary(f"/{CONTROL}/GetStatus")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await rpc(b"", metadata=bearer("wrong"), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert err.value.details() == "invalid token"
    assert w.calls("GetStatus", "UNAUTHENTICATED") == 1
    (span,) = w.spans.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None
    assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.UNAUTHENTICATED.value[0]
    assert await rpc(b"", metadata=bearer(VIEWER), timeout=5) == b"status"
    assert w.calls("GetStatus", "OK") == 1


async def test_a_viewer_steering_gets_permission_denied_with_the_reason(
    world: tuple[World, grpc.aio.Channel],
) -> None:
    w, channel = world
    rpc = channel.unary_unary(f"/{CONTROL}/Pause")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await rpc(b"", metadata=bearer(VIEWER), timeout=5)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "Pause needs the admin token" in (err.value.details() or "")
    assert VIEWER not in (err.value.details() or "")
    assert w.calls("Pause", "PERMISSION_DENIED") == 1
    # let in, the servicer's own domain error is mapped the same way
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await rpc(b"", metadata=bearer(ADMIN), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert err.value.details() == "raised by the servicer"


async def test_streams_get_the_status_of_a_domain_error_before_or_between_messages(
    world: tuple[World, grpc.aio.Channel],
) -> None:
    _, channel = world
    rpc = channel.unary_stream(f"/{CONTROL}/WatchStatus")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in rpc(b"\xff\xff", timeout=5):  # garbage, and no token: never decoded
            pytest.fail("a refused stream sent a message")
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "missing authorization metadata" in (err.value.details() or "")
    received = []
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for message in rpc(b"", metadata=bearer(VIEWER), timeout=5):
            received.append(message)
    assert received == [b"first"]
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert err.value.details() == "the stream's own refusal, after one message"
