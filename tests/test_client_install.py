"""A client install: `pip install canarycast` without the `server` extra (issue 16 part 3).

The wheel is built from a copy of the tree, its base requirements are read from its metadata,
and it is installed with them alone into a fresh virtual environment (no system site
packages, no pip of its own: the suite's pip installs into it with `--python`). From there
`canarycast health`, `canarycast forecast`, `canarycast rollout status` and the typed
clients call a real model server and a real router with its controller, which run from the
suite's own environment; `canarycast route` with its controller runs from the fresh venv
itself; and every command that needs the `server` extra says so (exit 2), naming the
missing module. The client commands run in the suite's environment, where torch is
installed, load none of the heavy packages.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from canarycast.processes import Component, start_component
from tests.conftest import MODEL, TrainedRegistry

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
#: What only serving and training need: none of it may come with the base install.
HEAVY = ("torch", "pandas", "scipy", "matplotlib", "pyarrow")
TOKEN = "client-install-admin-token"
HISTORY = ",".join(str(50 + i % 7) for i in range(48))  # one lookback of the tiny models


@dataclass(frozen=True)
class ClientVenv:
    wheel: Path
    root: Path
    install_seconds: float

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    @property
    def canarycast(self) -> Path:
        return self.root / "bin" / "canarycast"


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without anything that would let a process see this source tree."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.pop("CANARYCAST_ADMIN_TOKEN", None)
    env.pop("CANARYCAST_VIEWER_TOKEN", None)
    return {**env, **extra}


def run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=cwd, env=clean_env(**env), capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> ClientVenv:
    work = tmp_path_factory.mktemp("client-install")
    src = work / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for package in ("canarycast", "server", "router", "cli"):
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    # The suite's setuptools builds it (no isolated build environment to download; the dev
    # and server extras bring setuptools, grpcio-tools and torch require it).
    built = run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(work / "dist"),
            str(src),
        ],
        cwd=work,
    )
    assert built.returncode == 0, built.stderr
    [wheel] = (work / "dist").glob("canarycast-*.whl")
    venv = work / "venv"
    made = run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=work)
    assert made.returncode == 0, made.stderr
    begin = time.monotonic()
    # The base requirements resolve through pip's configured index, as a user's would.
    installed = run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(venv / "bin" / "python"),
            "install",
            "--quiet",
            str(wheel),
        ],
        cwd=work,
    )
    assert installed.returncode == 0, installed.stderr
    return ClientVenv(wheel, venv, time.monotonic() - begin)


def base_requirements(wheel: Path) -> list[str]:
    """Names of the wheel's Requires-Dist lines that no extra marks."""
    with zipfile.ZipFile(wheel) as z:
        [metadata] = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        lines = z.read(metadata).decode().splitlines()
    requires = [
        line.split(":", 1)[1].strip() for line in lines if line.startswith("Requires-Dist:")
    ]
    base = [r for r in requires if "extra ==" not in r]
    assert base and len(base) < len(requires)
    return [re.split(r"[\s<>=!~;\[(]", r, maxsplit=1)[0].lower().replace("_", "-") for r in base]


def extra_requirements(wheel: Path, extra: str) -> list[str]:
    with zipfile.ZipFile(wheel) as z:
        [metadata] = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        lines = z.read(metadata).decode().splitlines()
    marker = f'extra == "{extra}"'
    return [
        line.split(":", 1)[1].split(";", 1)[0].strip()
        for line in lines
        if line.startswith("Requires-Dist:") and marker in line
    ]


def test_the_wheel_requires_no_torch_and_its_server_extra_pins_it(client_venv: ClientVenv) -> None:
    base = base_requirements(client_venv.wheel)
    assert not set(base) & set(HEAVY), base
    assert {"grpcio", "protobuf", "numpy"} <= set(base)
    server = extra_requirements(client_venv.wheel, "server")
    assert "torch==2.13.0" in server  # exactly: a looser pin pulls a CUDA build
    names = {re.split(r"[<>=!~]", r, maxsplit=1)[0].lower() for r in server}
    assert set(HEAVY) <= names
    # the wheel carries the stubs' .pyi files for editors and type checkers
    with zipfile.ZipFile(client_venv.wheel) as z:
        assert "canarycast/v1/forecast_pb2.pyi" in z.namelist()


def test_the_fresh_venv_holds_canarycast_and_none_of_the_heavy_packages(
    client_venv: ClientVenv,
) -> None:
    probe = (
        "import importlib.util, json, sys, canarycast;"
        f"print(json.dumps({{'heavy': [m for m in {HEAVY!r} if importlib.util.find_spec(m)],"
        "'file': canarycast.__file__, 'prefix': sys.prefix}))"
    )
    done = run([str(client_venv.python), "-c", probe], cwd=client_venv.root)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["heavy"] == []
    assert Path(found["file"]).is_relative_to(client_venv.root)  # not this source tree
    assert Path(found["prefix"]) == client_venv.root
    # measured here: about 8 s; minutes would mean the base pulls far more than a client needs
    assert client_venv.install_seconds < 240, client_venv.install_seconds


@dataclass(frozen=True)
class Served:
    server: Component
    router: Component
    version: str  # what the stable alias names
    registry: Path


@pytest.fixture(scope="module")
def served(trained: TrainedRegistry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A model server (stable) and a router with its controller in front of it, both run
    from the suite's environment (with the `server` extra), over a private registry copy."""
    work = tmp_path_factory.mktemp("client-install-served")
    registry = work / "registry"
    shutil.copytree(trained.root, registry)
    server = start_component(
        "server",
        [
            "serve",
            "--registry",
            str(registry),
            "--model",
            f"{MODEL}@stable",
            "--port",
            "0",
            "--workers",
            "1",
        ],
    )
    try:
        router = start_component(
            "router",
            [
                "route",
                "--port",
                "0",
                "--stable",
                server.target,
                "--canary",
                server.target,
                "--registry",
                str(registry),
                "--model",
                MODEL,
                "--state",
                str(work / "state.json"),
            ],
            env={"CANARYCAST_ADMIN_TOKEN": TOKEN},
        )
        try:
            yield Served(server, router, trained.v1.version, registry)
        finally:
            router.stop()
    finally:
        server.stop()


CLIENT_SCRIPT = """
import json, sys
from canarycast.client import ForecastClient, SeriesData
from canarycast.rollout_client import RolloutClient, phase_name

server, router, token, history = sys.argv[1:5]
with ForecastClient(router) as client:
    [f] = client.forecast([SeriesData("typed", [float(v) for v in history.split(",")])], 4)
    info = client.model_info()
with RolloutClient(router, token) as rollout:
    phase = phase_name(rollout.status().phase)
heavy = [m for m in {heavy!r} if m in sys.modules]
print(json.dumps({{"point": f.point.tolist(), "version": f.model.version,
                  "lookback": info.lookback, "phase": phase, "heavy": heavy}}))
"""


def test_a_bare_client_install_calls_a_real_server_and_router(
    client_venv: ClientVenv, served: Served
) -> None:
    server, router = served.server, served.router
    cli, cwd = str(client_venv.canarycast), client_venv.root
    health = run([cli, "health", "--target", server.target], cwd)
    assert health.returncode == 0, health.stderr
    assert "SERVING" in health.stdout
    health = run([cli, "health", "--target", router.target, "--service", ""], cwd)
    assert health.returncode == 0, health.stderr

    for target in (server.target, router.target):
        out = run(
            [cli, "forecast", "--target", target, "--values", HISTORY, "--horizon", "3", "--json"],
            cwd,
        )
        assert out.returncode == 0, out.stderr
        answer = json.loads(out.stdout)
        assert answer["model"]["name"] == MODEL
        assert answer["model"]["version"] == served.version
        assert len(answer["point"]) == 3 and all(isinstance(v, float) for v in answer["point"])
    bad = run(
        [cli, "forecast", "--target", server.target, "--values", "1,2", "--horizon", "3"], cwd
    )
    assert bad.returncode == 1 and "INVALID_ARGUMENT" in bad.stderr  # the server's answer

    status = run([cli, "rollout", "--router", router.target, "status", "--json"], cwd)
    assert status.returncode == 1 and "UNAUTHENTICATED" in status.stderr  # no token given
    status = run(
        [cli, "rollout", "--router", router.target, "status", "--json"],
        cwd,
        CANARYCAST_ADMIN_TOKEN=TOKEN,
    )
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["phase"] == "idle"

    script = CLIENT_SCRIPT.format(heavy=HEAVY)
    typed = run(
        [str(client_venv.python), "-c", script, server.target, router.target, TOKEN, HISTORY], cwd
    )
    assert typed.returncode == 0, typed.stderr
    answer = json.loads(typed.stdout)
    assert len(answer["point"]) == 4 and answer["version"] == served.version
    assert answer["lookback"] == 48 and answer["phase"] == "idle" and answer["heavy"] == []


LAZY_SCRIPT = """
import json, sys
from cli.main import main

server, router = sys.argv[1:3]
codes = []
for argv in (["forecast", "--help"], ["health", "--help"], ["rollout", "--help"],
             ["rollout", "status", "--help"]):
    try:
        main(argv)
    except SystemExit as exc:
        codes.append(exc.code)
codes.append(main(["health", "--target", server]))
codes.append(main(["forecast", "--target", router, "--values", {history!r}, "--horizon", "2"]))
codes.append(main(["rollout", "--router", router, "status"]))
heavy = [m for m in {heavy!r} if m in sys.modules]
rollout = sorted(m for m in sys.modules if m.startswith(("router.", "server.")))
print(json.dumps({{"codes": codes, "heavy": heavy, "rollout": rollout}}))
"""


def test_the_client_commands_load_no_heavy_package_where_it_is_installed(
    served: Served,
) -> None:
    import importlib.util

    assert all(importlib.util.find_spec(m) for m in HEAVY)  # the suite has the server extra
    server, router = served.server, served.router
    script = LAZY_SCRIPT.format(history=HISTORY, heavy=HEAVY)
    done = run(
        [sys.executable, "-c", script, server.target, router.target],
        ROOT,
        CANARYCAST_ADMIN_TOKEN=TOKEN,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    # nor the controller, the control API or the lifecycle (the tokens: canarycast.tokens),
    # but the plain recipe dataclasses whose defaults the parser shows
    assert result == {
        "codes": [0, 0, 0, 0, 0, 0, 0],
        "heavy": [],
        "rollout": ["server.lifecycle", "server.lifecycle.recipe"],
    }


#: A command line of every command that needs the `server` extra.
SERVER_COMMANDS = {
    "train": ["train", "--dataset", "seattle-temps", "--name", MODEL],
    "serve": ["serve", "--model", f"{MODEL}@stable"],
    "drift": ["drift", "--model", MODEL, "--observations", "obs.db"],
    "retrain": ["retrain", "--model", MODEL, "--observations", "obs.db"],
    "pipeline": ["pipeline", "prepare"],
    "demo": ["demo"],
    "forecast": ["forecast", "--dataset", "seattle-temps"],
}


def test_a_bare_client_install_says_which_commands_need_the_server_extra(
    client_venv: ClientVenv,
) -> None:
    cli, cwd = str(client_venv.canarycast), client_venv.root
    for command, args in SERVER_COMMANDS.items():
        out = run([cli, *args], cwd)
        assert out.returncode == 2, (command, out.stderr)
        assert out.stderr.startswith(
            f"canarycast {command}: needs the server extra: pip install 'canarycast[server]' "
            "(no module named '"
        ), (command, out.stderr)
        assert "Traceback" not in out.stderr


def test_a_bare_install_runs_a_router_with_its_controller(
    client_venv: ClientVenv, served: Served, tmp_path: Path
) -> None:
    """`canarycast route` with the embedded controller needs no server extra: run from the
    fresh venv in front of the real server, it answers Forecast and the control API."""
    cli, cwd = str(client_venv.canarycast), client_venv.root
    registry = tmp_path / "registry"
    shutil.copytree(served.registry, registry)
    process = subprocess.Popen(
        [
            cli,
            "route",
            "--port",
            "0",
            "--stable",
            served.server.target,
            "--registry",
            str(registry),
            "--model",
            MODEL,
            "--state",
            str(tmp_path / "state.db"),
            "--observations",
            str(tmp_path / "observations.db"),
        ],
        cwd=cwd,
        env=clean_env(CANARYCAST_ADMIN_TOKEN=TOKEN),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    try:
        assert process.stderr is not None
        ready: dict[str, object] = {}
        for line in process.stderr:
            lines.append(line)
            if line.startswith("{") and json.loads(line).get("event") == "serving":
                ready = json.loads(line)
                break
        assert ready, "".join(lines)
        # keep reading its log, so that a full pipe never blocks it
        drain = threading.Thread(target=lambda: lines.extend(process.stderr or ()), daemon=True)
        drain.start()
        target = f"127.0.0.1:{ready['port']}"
        for _ in range(100):  # the router learns its backend's health asynchronously
            out = run(
                [cli, "forecast", "--target", target, "--values", HISTORY, "--horizon", "3"], cwd
            )
            if out.returncode == 0:
                break
        assert out.returncode == 0, out.stderr
        status = run(
            [cli, "rollout", "--router", target, "status", "--json"],
            cwd,
            CANARYCAST_ADMIN_TOKEN=TOKEN,
        )
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["phase"] == "idle"
    finally:
        process.terminate()
        assert process.wait(60) == 0, "".join(lines[-20:])
