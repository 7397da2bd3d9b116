"""The committed stubs are exactly what grpcio-tools generates from protos/."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "generate_stubs", ROOT / "scripts/generate_stubs.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_stubs_match_a_fresh_generation(tmp_path: Path) -> None:
    written = _generator().generate(tmp_path)
    assert {p.name for p in written} >= {
        "forecast_pb2.py",
        "forecast_pb2.pyi",
        "forecast_pb2_grpc.py",
        "rollout_pb2.py",
        "rollout_pb2_grpc.py",
    }
    for fresh in written:
        committed = ROOT / fresh.relative_to(tmp_path)
        assert committed.exists(), f"{committed.relative_to(ROOT)} is not committed"
        assert committed.read_bytes() == fresh.read_bytes(), (
            f"{committed.relative_to(ROOT)} differs from protoc's output: run `make stubs`"
        )


def test_stubs_expose_the_forecaster_service() -> None:
    from canarycast.v1 import forecast_pb2

    service = forecast_pb2.DESCRIPTOR.services_by_name["Forecaster"]
    assert [m.name for m in service.methods] == ["Forecast", "Observe", "GetModel"]
