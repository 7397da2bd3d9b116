"""The registry and the observation store are torch-free: importing them, and the work the
router and the controller do with them (aliases, metadata, appends), loads no torch, scipy
or pandas. Each check runs in a fresh interpreter, whose modules are its own."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.conftest import MODEL, TrainedRegistry

HEAVY = ("torch", "scipy", "pandas")
REPO = Path(__file__).resolve().parents[2]


def loaded_after(code: str) -> list[str]:
    """The heavy packages in sys.modules after running `code` in a fresh interpreter."""
    probe = f"{textwrap.dedent(code)}\nimport json, sys\n"
    probe += f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    loaded: list[str] = json.loads(done.stdout.strip().splitlines()[-1])
    return loaded


def test_the_probe_sees_a_heavy_import() -> None:
    assert loaded_after("import pandas") == ["pandas"]


def test_importing_the_registry_and_the_observation_store_loads_no_torch() -> None:
    assert loaded_after("import server.lifecycle.registry, server.lifecycle.observations") == []


def test_aliases_metadata_and_appends_need_no_torch(
    registry_copy: TrainedRegistry, tmp_path: Path
) -> None:
    code = f"""
        import numpy as np
        from canarycast.validation import Observation
        from server.lifecycle.observations import ObservationStore
        from server.lifecycle.registry import ModelRef, Registry

        registry = Registry({str(registry_copy.root)!r})
        assert {MODEL!r} in registry.models()
        assert len(registry.versions({MODEL!r})) == 2
        v2 = registry.resolve(ModelRef.parse({f"{MODEL}:{registry_copy.v2.version}"!r}))
        registry.set_alias({MODEL!r}, "canary", v2.version)
        assert registry.get_alias({MODEL!r}, "canary") == v2.version
        assert registry.resolve({f"{MODEL}@canary"!r}).version == v2.version

        store = ObservationStore({str(tmp_path / "obs.db")!r})
        ts = np.arange(3, dtype=np.int64) * 3_600_000_000_000
        assert store.append([Observation("s", ts, np.ones(3))]) == 3
        assert store.count() == 3
        store.close()
    """
    assert loaded_after(code) == []
