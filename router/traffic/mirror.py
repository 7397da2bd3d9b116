"""Copies of calls sent off the request path (shadow and dual-run), bounded and coalesced.

`offer` never waits: when the queue is full the copy is dropped and counted.
A fixed number of workers send the copies, each call with its own deadline, so a
slow, failing or dead mirror target costs the request path nothing.

Copies that wait are sent together: a worker that takes a copy also takes every other
waiting copy with the same batch key (the same variant and call options) whose series
it does not already hold, up to `max_batch` series, and hands them to `send` as one
batch, which the router forwards as one multi-series call. Under load the copies queue
while the workers wait on the mirror target, so they leave in batches and the target
forecasts them in one forward pass instead of one call each; a copy that finds an idle
worker goes alone, as before. Nothing waits to fill a batch.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, Protocol, TypeVar

import structlog

log = structlog.get_logger("canarycast.router.mirror")


class MirrorJob(Protocol):
    """A copy to send. Jobs with equal (not None) batch keys may share a call when their
    series ids are disjoint; `size` is the number of series the job carries."""

    @property
    def variant(self) -> str: ...

    def batch_key(self) -> Hashable | None: ...

    def series_ids(self) -> frozenset[str]: ...

    @property
    def size(self) -> int: ...


J = TypeVar("J", bound=MirrorJob)


class MirrorQueue(Generic[J]):
    def __init__(
        self,
        send: Callable[[list[J]], Awaitable[None]],
        *,
        max_size: int = 1024,
        workers: int = 8,
        max_batch: int = 64,
        on_drop: Callable[[str], None] | None = None,
    ) -> None:
        if max_size < 1 or workers < 1 or max_batch < 1:
            raise ValueError("max_size, workers and max_batch must be >= 1")
        self._send = send
        self._max_size = max_size
        self._workers = workers
        self._max_batch = max_batch
        self._on_drop = on_drop
        self._waiting: collections.deque[J] = collections.deque()
        self._ready = asyncio.Event()
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def depth(self) -> int:
        return len(self._waiting)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._work(), name=f"mirror-{i}") for i in range(self._workers)
        ]

    def offer(self, job: J) -> bool:
        """Queue a copy; False (and counted) when the queue is full."""
        if len(self._waiting) >= self._max_size:
            if self._on_drop is not None:
                self._on_drop(job.variant)
            return False
        self._waiting.append(job)
        self._idle.clear()
        self._ready.set()
        return True

    def take(self) -> list[J]:
        """The next batch (`take_batch` of the waiting copies); empty when none waits."""
        return take_batch(self._waiting, self._max_batch)

    async def drain(self, grace: float) -> None:
        """Give waiting and in-flight copies up to `grace` seconds, then stop the workers."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await self._idle.wait()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _work(self) -> None:
        while True:
            batch = self.take()
            if not batch:
                self._ready.clear()
                if self._in_flight == 0:
                    self._idle.set()
                await self._ready.wait()
                continue
            self._in_flight += 1
            try:
                await self._send(batch)
            except Exception:  # a copy must never take a worker down
                log.exception("mirror_failed", variant=batch[0].variant, copies=len(batch))
            finally:
                self._in_flight -= 1
                if self._in_flight == 0 and not self._waiting:
                    self._idle.set()


def take_batch(waiting: collections.deque[J], max_batch: int) -> list[J]:
    """Take the next batch from `waiting`: its oldest job and the later ones that may join
    it (the same key, no series already in the batch, at most `max_batch` series in all),
    oldest first. Empty when nothing waits; the jobs left keep their order."""
    if not waiting:
        return []
    first = waiting.popleft()
    batch = [first]
    key = first.batch_key()
    if key is None or not waiting or first.size >= max_batch:
        return batch
    held = set(first.series_ids())
    size = first.size
    kept: collections.deque[J] = collections.deque()
    while waiting and size < max_batch:
        job = waiting.popleft()
        ids = job.series_ids()
        if job.batch_key() == key and size + job.size <= max_batch and held.isdisjoint(ids):
            batch.append(job)
            held.update(ids)
            size += job.size
        else:
            kept.append(job)
    kept.extend(waiting)
    waiting.clear()
    waiting.extend(kept)
    return batch
