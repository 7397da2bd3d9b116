"""Copies of calls sent off the request path (shadow and dual-run), bounded.

`offer` never waits: when the queue is full the copy is dropped and counted.
A fixed number of workers send the copies, each with its own deadline, so a
slow, failing or dead mirror target costs the request path nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

log = structlog.get_logger("canarycast.router.mirror")


@dataclass(frozen=True)
class MirrorJob:
    variant: str
    run: Callable[[], Awaitable[None]]


class MirrorQueue:
    def __init__(
        self,
        *,
        max_size: int = 1024,
        workers: int = 8,
        on_drop: Callable[[str], None] | None = None,
    ) -> None:
        self._queue: asyncio.Queue[MirrorJob] = asyncio.Queue(maxsize=max_size)
        self._workers = workers
        self._on_drop = on_drop
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._work(), name=f"mirror-{i}") for i in range(self._workers)
        ]

    def offer(self, job: MirrorJob) -> bool:
        """Queue a copy; False (and counted) when the queue is full."""
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            if self._on_drop is not None:
                self._on_drop(job.variant)
            return False
        return True

    async def drain(self, grace: float) -> None:
        """Give queued copies up to `grace` seconds, then stop the workers."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await self._queue.join()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _work(self) -> None:
        while True:
            job = await self._queue.get()
            try:
                await job.run()
            except Exception:  # a copy must never take a worker down
                log.exception("mirror_failed", variant=job.variant)
            finally:
                self._queue.task_done()
