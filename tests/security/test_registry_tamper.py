"""The registry refuses a model whose content hash does not match, at start-up and on hot
reload, and never unpickles code from a weights file."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch
from opentelemetry.sdk.trace import TracerProvider

from canarycast.v1 import forecast_pb2 as pb
from canarycast.v1 import forecast_pb2_grpc as pb_grpc
from server.lifecycle.registry import CorruptVersionError, ModelVersion
from server.serving.app import ModelServer, ServerSettings
from server.serving.metrics import ServerMetrics
from tests.conftest import MODEL, TrainedRegistry


def tamper(version: ModelVersion) -> None:
    """Change one weight a little and save a perfectly loadable file in place."""
    path = version.path / "weights.pt"
    state = torch.load(path, map_location="cpu", weights_only=True)
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = state[name].clone()
    state[name].view(-1)[0] += 1e-3
    torch.save(state, path)


class Payload:
    """A pickle that would create `marker` when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (Path.touch, (str(self.marker),))


def server(trained: TrainedRegistry, **settings: Any) -> ModelServer:
    return ModelServer(
        ServerSettings(registry=trained.root, model=f"{MODEL}@stable", port=0, **settings),
        tracer_provider=TracerProvider(),
        metrics=ServerMetrics(),
    )


async def test_a_tampered_model_is_refused_at_start(registry_copy: TrainedRegistry) -> None:
    tamper(registry_copy.v1)  # the stable alias points at it
    with pytest.raises(CorruptVersionError, match="content hash mismatch") as err:
        registry_copy.registry.load(MODEL, registry_copy.v1.version)
    assert registry_copy.v1.version in str(err.value) and "tampered" in str(err.value)
    s = server(registry_copy)
    try:
        with pytest.raises(CorruptVersionError, match="content hash mismatch"):
            await s.start()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{s.port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as rpc:
                await pb_grpc.ForecasterStub(channel).GetModel(pb.GetModelRequest(), timeout=5)
            assert rpc.value.code() == grpc.StatusCode.UNAVAILABLE  # never served
    finally:
        await s.stop(grace=1)


async def test_a_tampered_version_is_not_hot_reloaded(registry_copy: TrainedRegistry) -> None:
    s = server(registry_copy, reload_interval=0.05)
    await s.start()
    try:
        tamper(registry_copy.v2)
        registry_copy.registry.set_alias(MODEL, "stable", registry_copy.v2.version)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{s.port}") as channel:
            stub = pb_grpc.ForecasterStub(channel)
            for _ in range(400):  # the watcher polls every 0.05 s
                info = await stub.GetModel(pb.GetModelRequest(), timeout=5)
                if info.reload_error:
                    break
                await asyncio.sleep(0.05)
            assert "content hash mismatch" in info.reload_error
            assert registry_copy.v2.version in info.reload_error
            assert info.model.version == registry_copy.v1.version  # the old one keeps serving
    finally:
        await s.stop(grace=1)


def test_weights_are_never_unpickled_as_code(
    registry_copy: TrainedRegistry, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    torch.save({"w": Payload(marker)}, registry_copy.v1.path / "weights.pt")
    with pytest.raises(CorruptVersionError, match="unreadable weights"):
        registry_copy.registry.load(MODEL, registry_copy.v1.version)
    assert not marker.exists()
