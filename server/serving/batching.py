"""Dynamic batching: concurrent calls merged into one forward pass.

Like Triton's dynamic batcher, a batch closes when it holds `max_batch_size`
series or when `max_queue_delay` has passed since its first call arrived,
whichever comes first; with a delay of 0 it takes whatever is already
waiting. The forward pass runs on one worker thread, so while it runs the
next calls queue up and form the next, larger batch. Calls whose deadline
passed while queued, or whose caller went away, are dropped before the
forward pass. The queue is bounded (in series): beyond it, `submit` raises
`ResourceExhausted` at once instead of letting latency grow without limit.

Nothing here knows about gRPC or protobuf.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from canarycast.errors import DeadlineExceeded, ResourceExhausted, Unavailable

#: (model, windows (n, lookback)) -> outputs (n, horizon, quantiles)
RunFn = Callable[[Hashable, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class BatchResult:
    outputs: np.ndarray  # (n, horizon, quantiles) for the call's own windows
    batch_size: int  # series in the forward pass that computed them
    calls_in_batch: int
    queued_seconds: float


@dataclass(frozen=True)
class BatchStats:
    """What one forward pass did, for metrics."""

    batch_size: int
    calls: int
    expired: int  # dropped: deadline passed while queued
    cancelled: int  # dropped: the caller went away while queued
    compute_seconds: float


@dataclass
class _Pending:
    model: Hashable
    windows: np.ndarray
    deadline: float | None  # time.monotonic() seconds
    enqueued: float
    future: asyncio.Future[BatchResult] = field(repr=False)

    @property
    def size(self) -> int:
        return int(self.windows.shape[0])


class DynamicBatcher:
    """Merges concurrent `submit` calls into batched calls of `run`."""

    def __init__(
        self,
        run: RunFn,
        *,
        max_batch_size: int = 256,
        max_queue_delay: float = 0.002,
        max_queue_size: int = 8192,
        on_batch: Callable[[BatchStats], None] | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        if max_queue_delay < 0:
            raise ValueError("max_queue_delay must be >= 0")
        if max_queue_size < 1:
            raise ValueError("max_queue_size must be at least 1")
        self._run = run
        self.max_batch_size = max_batch_size
        self.max_queue_delay = max_queue_delay
        self.max_queue_size = max_queue_size
        self._on_batch = on_batch
        self._queue: asyncio.Queue[_Pending | None] = asyncio.Queue()  # None: stop
        self._carry: _Pending | None = None
        self._depth = 0  # series queued, not yet taken into a batch
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="forward")
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._stopping = False  # the stop marker was taken from the queue

    @property
    def queue_depth(self) -> int:
        """Series waiting for a forward pass."""
        return self._depth

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="batcher")

    async def submit(
        self, model: Hashable, windows: np.ndarray, deadline: float | None = None
    ) -> BatchResult:
        """Queue `windows` (n, lookback) for `model`; wait for their outputs.

        `deadline` is a `time.monotonic()` instant; a call still queued then is
        not computed and raises `DeadlineExceeded`.
        """
        if self._closing or self._task is None:
            raise Unavailable("server is shutting down" if self._closing else "batcher not started")
        n = int(windows.shape[0])
        if self._depth + n > self.max_queue_size:
            raise ResourceExhausted(
                f"forecast queue is full ({self._depth} series waiting, limit "
                f"{self.max_queue_size}); retry later or add replicas"
            )
        future: asyncio.Future[BatchResult] = asyncio.get_running_loop().create_future()
        self._depth += n
        self._queue.put_nowait(_Pending(model, windows, deadline, time.monotonic(), future))
        return await future

    async def stop(self) -> None:
        """Refuse new calls, finish the queued ones, release the worker thread."""
        if self._closing:
            return
        self._closing = True
        if self._task is not None:
            self._queue.put_nowait(None)  # after everything already queued
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=True)

    async def _next(self, wait: float | None) -> _Pending | None:
        """The next queued call; None when `wait` seconds pass first or on stop."""
        if self._carry is not None:
            carried, self._carry = self._carry, None
            return carried
        if self._stopping:
            return None
        item: _Pending | None
        try:
            if wait is None:
                item = await self._queue.get()
            elif wait <= 0:
                item = self._queue.get_nowait()
            else:
                async with asyncio.timeout(wait):
                    item = await self._queue.get()
        except (asyncio.QueueEmpty, TimeoutError):
            return None
        if item is None:
            self._stopping = True
        return item

    async def _collect(self) -> list[_Pending]:
        first = await self._next(None)
        if first is None:
            return []
        batch, size = [first], first.size
        close_at = time.monotonic() + self.max_queue_delay
        while size < self.max_batch_size:
            item = await self._next(close_at - time.monotonic())
            if item is None:
                break
            if size + item.size > self.max_batch_size:
                self._carry = item  # starts the next batch
                break
            batch.append(item)
            size += item.size
        for item in batch:
            self._depth -= item.size
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            if not batch and self._stopping:
                return
            now = time.monotonic()
            live: list[_Pending] = []
            expired = cancelled = 0
            for item in batch:
                if item.future.done():  # caller cancelled (gRPC cancels on deadline too)
                    cancelled += 1
                    continue
                if item.deadline is not None and item.deadline <= now:
                    expired += 1
                    item.future.set_exception(
                        DeadlineExceeded("deadline passed while queued; not computed")
                    )
                    continue
                live.append(item)
            # Calls pinned to different model objects (a hot reload in between) run apart.
            groups: dict[int, list[_Pending]] = {}
            for item in live:
                groups.setdefault(id(item.model), []).append(item)
            for items in groups.values():
                await self._compute(loop, items, expired, cancelled)
                expired = cancelled = 0
            if (expired or cancelled) and self._on_batch is not None:
                self._on_batch(BatchStats(0, 0, expired, cancelled, 0.0))

    async def _compute(
        self, loop: asyncio.AbstractEventLoop, items: list[_Pending], expired: int, cancelled: int
    ) -> None:
        windows = (
            items[0].windows
            if len(items) == 1
            else np.concatenate([item.windows for item in items])
        )
        started = time.monotonic()
        try:
            outputs = await loop.run_in_executor(self._executor, self._run, items[0].model, windows)
        except Exception as exc:  # the forward pass failed: every call in it learns why
            for item in items:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        finished = time.monotonic()
        size = int(windows.shape[0])
        offset = 0
        for item in items:
            part = outputs[offset : offset + item.size]
            offset += item.size
            if not item.future.done():
                item.future.set_result(BatchResult(part, size, len(items), started - item.enqueued))
        if self._on_batch is not None:
            self._on_batch(BatchStats(size, len(items), expired, cancelled, finished - started))
