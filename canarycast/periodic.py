"""A background task that runs one step every `interval` seconds on the event loop,
outlives any exception a step raises (logged), and stops when asked."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

log = structlog.get_logger("canarycast.periodic")


class Periodic:
    def __init__(self, name: str, interval: float, step: Callable[[], Awaitable[Any]]) -> None:
        self.name = name
        self.interval = interval
        self._step = step
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self._step()
            except Exception:  # one failed step must not end the task
                log.exception("periodic_step_failed", task=self.name)
