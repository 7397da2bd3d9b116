"""The layers' import contracts (pyproject.toml, [tool.importlinter]) hold, and would fail if
a layer were broken: a copy of the tree with one forbidden import per rule is refused.

`make check` runs the same `lint-imports`; running it here also enforces the contracts
where only `make test` runs.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
PACKAGES = ("canarycast", "server", "router", "cli")


def lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    assert LINT_IMPORTS.exists(), "import-linter is a dev dependency: pip install -e '.[dev]'"
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_contracts_hold() -> None:
    done = lint_imports(REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


#: (module, the line appended to it, the contract it breaks)
BREACHES = [
    ("canarycast/errors.py", "import router.rollout.judge", "the layers: cli on top"),
    ("canarycast/client.py", "import cli.main", "the layers: cli on top"),
    ("server/lifecycle/scoring.py", "import router.rollout.store", "the layers: cli on top"),
    ("router/traffic/routing.py", "import cli.commands.flags", "the layers: cli on top"),
    ("canarycast/validation.py", "import pandas", "imports no torch, scipy, pandas or matplotlib"),
    (
        "server/lifecycle/registry.py",
        "import server.lifecycle.model",
        "the registry and the observation store",
    ),
    ("router/rollout/controller.py", "import torch", "the router imports no torch"),
    (
        "router/rollout/controller.py",
        "import server.serving.loader",
        "the router reads the model lifecycle's registry and observation store",
    ),
    (
        "server/lifecycle/training.py",
        "import server.serving.batching",
        "serving imports the model lifecycle, never the reverse",
    ),
    (
        "router/traffic/proxy.py",
        "import router.rollout.judge",
        "the router's request path and its rollout import nothing of each other",
    ),
    (
        "router/rollout/analysis.py",
        "import router.traffic.routing",
        "the router's request path and its rollout import nothing of each other",
    ),
]


@pytest.mark.parametrize(("module", "line", "contract"), BREACHES)
def test_a_breach_of_a_layer_is_refused(
    tmp_path: Path, module: str, line: str, contract: str
) -> None:
    for package in PACKAGES:
        shutil.copytree(
            REPO / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / module
    target.write_text(target.read_text() + f"\n{line}  # the breach\n")
    done = lint_imports(tmp_path)
    assert done.returncode != 0, done.stdout
    broken = " ".join(done.stdout.partition("Broken contracts")[2].split())  # unwrapped
    assert contract in broken, done.stdout
