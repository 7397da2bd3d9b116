"""Start canarycast components as real child processes and know when they are ready.

Each component logs structlog JSON lines on stderr; the line whose `event` is
`serving` carries the bound ports. Used by the demo and the end-to-end tests.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from canarycast.environment import CANARYCAST_ADMIN_TOKEN


class ProcessFailed(RuntimeError):
    """A component exited or did not become ready; carries its last log lines."""


@dataclass
class Component:
    name: str
    process: subprocess.Popen[str]
    ready: dict[str, Any] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)
    _ready_event: threading.Event = field(default_factory=threading.Event)

    @property
    def port(self) -> int:
        return int(self.ready["port"])

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def metrics_port(self) -> int | None:
        value = self.ready.get("metrics_port")
        return int(value) if value is not None else None

    @property
    def workers(self) -> list[dict[str, Any]]:
        """What each worker of `--workers N` reported (index, pid, port, metrics_port, ...);
        empty for a single process."""
        return list(self.ready.get("workers") or [])

    @property
    def worker_targets(self) -> list[str]:
        """Each worker's own port (one replica each for a router); a single process: its
        port."""
        return [f"127.0.0.1:{w['port']}" for w in self.workers] or [self.target]

    def tail(self, n: int = 20) -> str:
        return "\n".join(self.lines[-n:])

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, wait for a graceful exit; SIGKILL if it does not come. Returns the code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return int(self.process.returncode)


def start_component(
    name: str,
    args: Sequence[str],
    *,
    timeout: float = 120.0,
    env: dict[str, str] | None = None,
    stdout: Any = subprocess.DEVNULL,
) -> Component:
    """Run `canarycast ARGS` as a child process; return once it logs `serving`.

    `stdout`: where its standard output goes (a file to keep it; discarded by default)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "cli.main", *args],
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    component = Component(name, process)

    def read() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            component.lines.append(line.rstrip())
            if not component._ready_event.is_set():
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if isinstance(event, dict) and event.get("event") == "serving":
                    component.ready = event
                    component._ready_event.set()
        component._ready_event.set()  # stream closed: the process ended

    threading.Thread(target=read, name=f"{name}-stderr", daemon=True).start()
    component._ready_event.wait(timeout)
    if not component.ready:
        component.stop(5)
        raise ProcessFailed(
            f"{name} did not start (exit code {process.poll()}):\n{component.tail()}"
        )
    return component


def start_model_servers(
    registry: str | os.PathLike[str],
    model: str,
    *,
    aliases: Sequence[str] = ("stable", "canary"),
    extra: Sequence[str] = (),
    workers: int = 1,
) -> list[Component]:
    """One `canarycast serve` process per alias of `model`, each on a free port, with
    `workers` worker processes (1 by default: the demo and the tests that stall a server
    with SIGSTOP mean one process).

    If one fails to start, those already started are stopped before the error rises.
    """
    started: list[Component] = []
    try:
        for alias in aliases:
            started.append(
                start_component(
                    f"{alias} server",
                    [
                        "serve",
                        "--registry",
                        str(registry),
                        "--model",
                        f"{model}@{alias}",
                        "--port",
                        "0",
                        "--workers",
                        str(workers),
                        *extra,
                    ],
                )
            )
    except ProcessFailed:
        for component in started:
            component.stop(5)
        raise
    return started


def start_controller_router(
    servers: Sequence[Component],
    registry: str | os.PathLike[str],
    model: str,
    *,
    state: str | os.PathLike[str],
    policy: str | os.PathLike[str],
    token: str,
    extra: Sequence[str] = (),
) -> Component:
    """`canarycast route` in front of a stable and a canary server, with the embedded
    controller (registry, model, state file, policy) and the admin token."""
    stable, canary = servers
    return start_component(
        "router",
        [
            "route",
            "--port",
            "0",
            "--stable",
            stable.target,
            "--canary",
            canary.target,
            "--registry",
            str(registry),
            "--model",
            model,
            "--state",
            str(state),
            "--policy",
            str(policy),
            *extra,
        ],
        env={CANARYCAST_ADMIN_TOKEN: token},
    )
