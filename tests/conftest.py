"""Shared fixtures: a registry holding small real models trained on real data.

Training is real (seattle-temps from the vega_datasets wheel) but tiny, so the
suite stays fast; the default recipe is exercised in tests/server/test_training.py.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

# One OpenMP thread per test process (and the processes the tests start), set before torch
# is imported: `make test` runs two pytest workers on two cores, and two torch threads in
# each spin-wait against each other. test_training.py and test_judge_replay.py on 2 cores:
# 218 s wall and 376 s of user CPU with torch's default, 132 s and 136 s with one thread.
# Servers set their own count (cores // workers) and are not affected.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from server.lifecycle.data import load_dataset
from server.lifecycle.model import ModelConfig
from server.lifecycle.pipeline import config_for, train_and_register
from server.lifecycle.registry import ModelVersion, Registry
from server.lifecycle.training import TrainParams

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

MODEL = "temps"


def tiny_config(**overrides: object) -> ModelConfig:
    base: dict[str, object] = {"lookback": 48, "horizon": 12, "hidden": 8, "layers": 1}
    return config_for(load_dataset("seattle-temps"), **{**base, **overrides})


@dataclass(frozen=True)
class TrainedRegistry:
    root: Path
    v1: ModelVersion
    v2: ModelVersion

    @property
    def registry(self) -> Registry:
        return Registry(self.root)


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> TrainedRegistry:
    """Registry with two versions of `temps` (different seeds); alias stable -> v1."""
    return train_two_versions(tmp_path_factory.mktemp("registry"))


def train_two_versions(root: Path) -> TrainedRegistry:
    """Two tiny versions of `temps` (seeds 0 and 1) in a registry at `root`; stable -> v1."""
    registry = Registry(root)
    dataset = load_dataset("seattle-temps")
    versions = [
        train_and_register(
            dataset,
            tiny_config(),
            TrainParams(epochs=1, max_windows_per_epoch=512, seed=seed),
            registry,
            MODEL,
            progress=False,
        )
        for seed in (0, 1)
    ]
    registry.set_alias(MODEL, "stable", versions[0].version)
    return TrainedRegistry(root, versions[0], versions[1])


@pytest.fixture
def registry_copy(trained: TrainedRegistry, tmp_path: Path) -> TrainedRegistry:
    """A private copy of the trained registry, for tests that move aliases or corrupt files."""
    import shutil

    root = tmp_path / "registry"
    shutil.copytree(trained.root, root)
    copy = Registry(root)
    return TrainedRegistry(
        root, copy.get(MODEL, trained.v1.version), copy.get(MODEL, trained.v2.version)
    )


# -- fuzz-case counts (tests/reliability), printed once at the end, also under xdist --------

_FUZZ_FROM_WORKERS: Counter[str] = Counter()


def _local_fuzz_cases() -> Counter[str]:
    module = sys.modules.get("tests.reliability.conftest")
    return Counter(getattr(module, "FUZZ_CASES", {})) if module is not None else Counter()


#: Test files that take a minute or more, started first on the xdist workers (with
#: `--dist loadfile`, xdist orders files by their number of tests, which put the one-test
#: demo last and left one worker idle for its last 1.5 minutes).
LONG_FILES = (
    "tests/test_demo.py",
    "tests/server/test_training.py",
    "tests/test_rollout_e2e.py",
    "tests/router/test_judge_replay.py",
    "tests/reliability/test_graceful.py",
)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """`--dist loadfile` with the long files first (longest processing time first)."""
    if config.getoption("dist", None) != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class LongFilesFirst(LoadFileScheduling):
        def _assign_work_unit(self, node: object) -> None:
            for scope in reversed(LONG_FILES):
                if scope in self.workqueue:
                    self.workqueue.move_to_end(scope, last=False)
            super()._assign_work_unit(node)

    return LongFilesFirst(config, log)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """An xdist worker hands its counts to the controller."""
    output = getattr(session.config, "workeroutput", None)
    if output is not None:
        output["fuzz_cases"] = dict(_local_fuzz_cases())


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: object, error: object) -> None:
    _FUZZ_FROM_WORKERS.update(getattr(node, "workeroutput", {}).get("fuzz_cases", {}))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    cases = _local_fuzz_cases() + _FUZZ_FROM_WORKERS
    if cases:
        terminalreporter.section("fuzz cases sent (tests/reliability)")
        for key, n in sorted(cases.items()):
            terminalreporter.write_line(f"{key:40s} {n:7d}")
        terminalreporter.write_line(f"{'total':40s} {sum(cases.values()):7d}")


async def ended(
    exporter: InMemorySpanExporter, keep: Callable[[ReadableSpan], bool], n: int = 1
) -> list[ReadableSpan]:
    """The finished spans `keep` selects, once there are at least `n` (or after 5 s): an
    interceptor ends a call's span just after the answer is sent, so the caller can hold
    the answer a moment before the span is recorded."""
    for _ in range(500):
        found = [s for s in exporter.get_finished_spans() if keep(s)]
        if len(found) >= n:
            return found
        await asyncio.sleep(0.01)
    return found
