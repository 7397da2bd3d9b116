"""The DVC pipeline: stages as plain commands, and `dvc repro` in a throwaway git+dvc repo;
the version id the pipeline writes is the one the registry assigned."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from server.lifecycle.registry import Registry, content_digest

ROOT = Path(__file__).resolve().parents[2]
TINY = {
    "data": {"base": "seattle-temps", "observations": None},
    "model": {"lookback": 48, "horizon": 12, "hidden": 8, "layers": 1},
    "train": {"epochs": 1, "max_windows_per_epoch": 512, "seed": 0},
    "registry": {"root": "registry", "name": "temps"},
    "evaluate": {"tolerance": 0.0},
}


def env() -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300, env=env())
    assert out.returncode == 0, f"{cmd}: {out.stdout}\n{out.stderr}"
    return out


def workspace(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(ROOT / "dvc.yaml", work / "dvc.yaml")
    (work / "params.yaml").write_text(yaml.safe_dump(TINY))
    for dep in (
        "server/lifecycle/data.py",
        "server/lifecycle/retrain.py",
        "server/lifecycle/model.py",
        "server/lifecycle/training.py",
    ):
        (work / dep).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / dep, work / dep)
    return work


def check_outputs(work: Path) -> str:
    trained = json.loads((work / "pipeline-out/train.json").read_text())
    metrics = json.loads((work / "pipeline-out/metrics.json").read_text())
    state = torch.load(work / "pipeline-out/model/weights.pt", weights_only=True)
    config = json.loads((work / "pipeline-out/model/config.json").read_text())
    version = content_digest(state, config)[:12]
    registered = Registry(work / "registry").get("temps", version)
    assert trained["version"] == metrics["version"] == registered.version == version
    assert metrics["digest_matches_registry"] is True
    assert registered.metadata["dataset_hash"] == trained["data_hash"]
    return version


@pytest.mark.slow
def test_the_stages_run_as_plain_commands(tmp_path: Path) -> None:
    work = workspace(tmp_path)
    # the console script, as dvc.yaml's stages run it (`python -m` would put the workspace,
    # which holds copies of the stages' dependencies under server/, first on sys.path)
    cli = [str(Path(sys.executable).with_name("canarycast")), "pipeline"]
    for stage in ("prepare", "train", "evaluate"):
        run([*cli, stage, "--no-progress"] if stage == "train" else [*cli, stage], work)
    check_outputs(work)


@pytest.mark.slow
def test_dvc_repro_builds_the_registered_model(tmp_path: Path) -> None:
    dvc = Path(sys.executable).parent / "dvc"
    git = shutil.which("git")
    if not dvc.exists() or git is None:
        pytest.skip("dvc (the dev extra) or git is not installed")
    work = workspace(tmp_path)
    run([git, "init", "-q"], work)
    run([str(dvc), "init", "-q"], work)
    run([str(dvc), "config", "core.analytics", "false"], work)
    out = run([str(dvc), "repro"], work)
    assert "Running stage 'evaluate'" in out.stdout
    version = check_outputs(work)
    again = run([str(dvc), "repro"], work)
    assert "didn't change" in again.stdout or "up to date" in again.stdout.lower()
    assert check_outputs(work) == version
