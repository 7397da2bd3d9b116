"""The image and the chart agree with the real command line.

The Dockerfile cannot be built here (no container engine), so what can be checked is
checked: its entrypoint is the `canarycast` script the package installs, and every
command and flag a rendered container passes is accepted by the real argparse parser.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from cli.main import build_parser
from tests.conftest import MODEL, TrainedRegistry
from tests.helm.conftest import COMBINATIONS, ROOT, Render

DOCKERFILE = ROOT / "Dockerfile"


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in lines
        if line and not line.startswith("#")
    ]


def test_the_dockerfile_runs_canarycast_as_a_non_root_user_from_a_slim_base() -> None:
    instructions = dockerfile_instructions()
    froms = [arg for op, arg in instructions if op == "FROM"]
    assert len(froms) >= 2  # multi-stage
    args = dict(arg.split("=", 1) for op, arg in instructions if op == "ARG" and "=" in arg)
    assert "slim" in args["PYTHON_IMAGE"]
    [entrypoint] = [json.loads(arg) for op, arg in instructions if op == "ENTRYPOINT"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert entrypoint == ["canarycast"] and entrypoint[0] in scripts
    users = [arg for op, arg in instructions if op == "USER"]
    assert users and users[-1].split(":")[0] == "10001"
    labels = " ".join(arg for op, arg in instructions if op == "LABEL")
    for key in ("title", "description", "version", "revision", "created", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels
    # the final stages copy the virtual environment; no compiler is installed in them
    runtime = DOCKERFILE.read_text().split("AS runtime", 1)[1]
    assert "apt-get" not in runtime and "gcc" not in runtime and "build-essential" not in runtime
    # the registry the chart's `registry.imagePath` defaults to is the one the image bakes
    assert "/opt/canarycast/registry" in runtime
    # .dockerignore keeps caches, virtualenvs and tests out of the build context
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert ignore[ignore.index("*")] == "*" and "!canarycast/" in ignore


def containers(manifests: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for m in manifests:
        pods = {
            "Deployment": lambda m: m["spec"]["template"]["spec"],
            "CronJob": lambda m: m["spec"]["jobTemplate"]["spec"]["template"]["spec"],
        }
        if m["kind"] in pods:
            pod = pods[m["kind"]](m)
            for c in pod.get("initContainers", []) + pod["containers"]:
                found.append((f"{m['metadata']['name']}/{c['name']}", c))
    return found


@pytest.mark.parametrize("combination", sorted(COMBINATIONS))
def test_every_rendered_command_is_accepted_by_the_real_cli(
    render: Render, combination: str, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = build_parser()
    checked = 0
    for where, c in containers(render(COMBINATIONS[combination])):
        if "command" in c:  # a shell step (seeding the registry): its syntax is checked
            assert c["command"][:2] == ["sh", "-c"], where
            result = subprocess.run(["sh", "-n", "-c", c["command"][2]], capture_output=True)
            assert result.returncode == 0, f"{where}: {result.stderr!r}"
            continue
        assert c["image"].startswith("canarycast:"), where
        try:
            args = parser.parse_args(c["args"])
        except SystemExit as exc:
            raise AssertionError(f"{where}: {capsys.readouterr().err}") from exc
        checked += 1
        if args.command in ("serve", "route", "retrain"):
            # every path the chart passes is one it mounts (or the registry in the image)
            mounts = [v["mountPath"] for v in c.get("volumeMounts", [])]
            if COMBINATIONS[combination].get("registry", {}).get("source") == "image":
                mounts.append("/opt/canarycast/registry")
            for value in vars(args).values():
                if isinstance(value, Path) and value.is_absolute():
                    assert any(str(value).startswith(m) for m in mounts), f"{where}: {value}"
    assert checked >= 3


@pytest.mark.slow
def test_models_show_waits_for_an_alias_like_the_init_container(
    registry_copy: TrainedRegistry,
) -> None:
    """`canarycast models show NAME@canary --wait` returns once the alias appears."""
    registry = registry_copy.registry
    assert "canary" not in registry.aliases(MODEL)
    cmd = [
        sys.executable,
        "-m",
        "cli.main",
        "models",
        "--registry",
        str(registry_copy.root),
        "show",
        f"{MODEL}@canary",
    ]
    missing = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and "canary" in missing.stderr

    waiter = subprocess.Popen(
        [*cmd, "--wait", "60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert waiter.stderr is not None
    first = waiter.stderr.readline()  # it says once that it waits ...
    assert f"waiting for {MODEL}@canary" in first, first
    registry.set_alias(MODEL, "canary", registry_copy.v2.version)  # ... until the alias exists
    out, err = waiter.communicate(timeout=60)
    assert waiter.returncode == 0, err
    assert json.loads(out)["version"] == registry_copy.v2.version
    assert "waiting for" not in err  # said once, not every second
