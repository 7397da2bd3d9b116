"""DynamicBatcher on its own, with a plain function as the model's forward pass."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
import pytest

from canarycast.errors import DeadlineExceeded, ResourceExhausted, Unavailable
from server.serving.batching import BatchStats, DynamicBatcher, RunFn

#: The make_batcher fixture: DynamicBatcher's arguments, the batcher started.
MakeBatcher = Callable[..., DynamicBatcher]


class Recorder:
    """A forward pass that records the batch sizes it saw: outputs = windows * 2 + model."""

    def __init__(self, delay: float = 0.0) -> None:
        self.sizes: list[int] = []
        self.models: list[object] = []
        self.delay = delay
        self.release = threading.Event()
        self.release.set()

    def __call__(self, model: object, windows: np.ndarray) -> np.ndarray:
        self.release.wait(5)
        time.sleep(self.delay)
        self.sizes.append(windows.shape[0])
        self.models.append(model)
        offset = float(model) if isinstance(model, int) else 0.0
        return (windows * 2 + offset)[:, :, None]


@pytest.fixture
async def make_batcher() -> AsyncIterator[MakeBatcher]:
    made: list[DynamicBatcher] = []

    def make(run: RunFn, **kwargs: Any) -> DynamicBatcher:
        b = DynamicBatcher(run, **kwargs)
        b.start()
        made.append(b)
        return b

    yield make
    for b in made:
        await b.stop()


async def test_concurrent_calls_share_a_forward_pass_and_get_their_own_rows(
    make_batcher: MakeBatcher,
) -> None:
    run = Recorder()
    run.release.clear()  # hold the first pass so the others queue up
    stats: list[BatchStats] = []
    batcher = make_batcher(run, max_batch_size=64, max_queue_delay=0.01, on_batch=stats.append)
    inputs = [np.full((1, 4), float(i)) for i in range(20)]
    tasks = [asyncio.create_task(batcher.submit(0, x)) for x in inputs]
    await asyncio.sleep(0.05)
    run.release.set()
    results = await asyncio.gather(*tasks)
    for x, r in zip(inputs, results, strict=True):
        np.testing.assert_array_equal(r.outputs[:, :, 0], x * 2)
    assert sum(run.sizes) == 20
    assert max(run.sizes) > 1, run.sizes
    assert max(r.batch_size for r in results) > 1
    assert sum(s.calls for s in stats) == 20


async def test_batch_never_exceeds_max_size_and_multi_series_calls_stay_whole(
    make_batcher: MakeBatcher,
) -> None:
    run = Recorder()
    run.release.clear()
    batcher = make_batcher(run, max_batch_size=8, max_queue_delay=0.01)
    tasks = [asyncio.create_task(batcher.submit(0, np.ones((3, 2)) * i)) for i in range(10)]
    await asyncio.sleep(0.05)
    run.release.set()
    results = await asyncio.gather(*tasks)
    assert all(size <= 8 for size in run.sizes), run.sizes
    assert sum(run.sizes) == 30
    for i, r in enumerate(results):
        assert r.outputs.shape == (3, 2, 1)
        np.testing.assert_array_equal(r.outputs[:, :, 0], np.ones((3, 2)) * i * 2)


async def test_a_call_larger_than_the_batch_runs_alone(make_batcher: MakeBatcher) -> None:
    run = Recorder()
    batcher = make_batcher(run, max_batch_size=4, max_queue_delay=0.0)
    result = await batcher.submit(0, np.ones((10, 3)))
    assert result.outputs.shape == (10, 3, 1)
    assert run.sizes == [10]


async def test_max_batch_size_one_turns_batching_off(make_batcher: MakeBatcher) -> None:
    run = Recorder()
    run.release.clear()
    batcher = make_batcher(run, max_batch_size=1, max_queue_delay=0.01)
    tasks = [asyncio.create_task(batcher.submit(0, np.ones((1, 2)))) for _ in range(6)]
    await asyncio.sleep(0.02)
    run.release.set()
    await asyncio.gather(*tasks)
    assert run.sizes == [1] * 6


async def test_calls_pinned_to_different_models_never_share_a_pass(
    make_batcher: MakeBatcher,
) -> None:
    run = Recorder()
    run.release.clear()
    batcher = make_batcher(run, max_batch_size=64, max_queue_delay=0.01)
    old = [asyncio.create_task(batcher.submit(1, np.ones((1, 2)))) for _ in range(3)]
    new = [asyncio.create_task(batcher.submit(100, np.ones((1, 2)))) for _ in range(3)]
    await asyncio.sleep(0.05)
    run.release.set()
    for r in await asyncio.gather(*old):
        np.testing.assert_array_equal(r.outputs[:, :, 0], np.full((1, 2), 3.0))
    for r in await asyncio.gather(*new):
        np.testing.assert_array_equal(r.outputs[:, :, 0], np.full((1, 2), 102.0))


async def test_expired_call_is_not_computed(make_batcher: MakeBatcher) -> None:
    run = Recorder()
    run.release.clear()
    stats: list[BatchStats] = []
    batcher = make_batcher(run, max_batch_size=1, max_queue_delay=0.0, on_batch=stats.append)
    blocker = asyncio.create_task(batcher.submit(0, np.full((1, 2), 7.0)))
    await asyncio.sleep(0.02)  # the blocker is in the forward pass now
    late = asyncio.create_task(batcher.submit(0, np.full((1, 2), 9.0), time.monotonic() + 0.01))
    await asyncio.sleep(0.05)  # its deadline passes while it waits
    run.release.set()
    await blocker
    with pytest.raises(DeadlineExceeded):
        await late
    assert run.sizes == [1]  # only the blocker was computed
    assert sum(s.expired for s in stats) == 1


async def test_cancelled_call_is_skipped(make_batcher: MakeBatcher) -> None:
    run = Recorder()
    run.release.clear()
    batcher = make_batcher(run, max_batch_size=1, max_queue_delay=0.0)
    blocker = asyncio.create_task(batcher.submit(0, np.ones((1, 2))))
    await asyncio.sleep(0.02)
    gone = asyncio.create_task(batcher.submit(0, np.ones((1, 2))))
    await asyncio.sleep(0.01)
    gone.cancel()
    run.release.set()
    await blocker
    await asyncio.sleep(0.05)
    assert run.sizes == [1]
    assert batcher.queue_depth == 0


async def test_full_queue_is_refused_at_once(make_batcher: MakeBatcher) -> None:
    run = Recorder()
    run.release.clear()
    batcher = make_batcher(run, max_batch_size=1, max_queue_delay=0.0, max_queue_size=4)
    first = asyncio.create_task(batcher.submit(0, np.ones((1, 2))))
    await asyncio.sleep(0.02)  # taken into the forward pass, no longer queued
    queued = [asyncio.create_task(batcher.submit(0, np.ones((2, 2)))) for _ in range(2)]
    await asyncio.sleep(0.01)
    assert batcher.queue_depth == 4
    with pytest.raises(ResourceExhausted, match="queue is full"):
        await batcher.submit(0, np.ones((1, 2)))
    run.release.set()
    await asyncio.gather(first, *queued)
    assert batcher.queue_depth == 0


async def test_forward_failure_reaches_every_call_in_the_batch(make_batcher: MakeBatcher) -> None:
    def broken(model: object, windows: np.ndarray) -> np.ndarray:
        raise RuntimeError("forward exploded")

    batcher = make_batcher(broken, max_batch_size=8, max_queue_delay=0.01)
    results = await asyncio.gather(
        *(batcher.submit(0, np.ones((1, 2))) for _ in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, RuntimeError) for r in results)
    # and the batcher still works afterwards
    assert batcher.queue_depth == 0


async def test_stop_finishes_queued_calls_then_refuses_new_ones() -> None:
    run = Recorder(delay=0.01)
    batcher = DynamicBatcher(run, max_batch_size=2, max_queue_delay=0.0)
    batcher.start()
    tasks = [asyncio.create_task(batcher.submit(0, np.ones((1, 2)) * i)) for i in range(6)]
    await asyncio.sleep(0)
    await batcher.stop()
    results = await asyncio.gather(*tasks)
    assert len(results) == 6 and sum(run.sizes) == 6
    with pytest.raises(Unavailable):
        await batcher.submit(0, np.ones((1, 2)))


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        DynamicBatcher(Recorder(), max_batch_size=0)
    with pytest.raises(ValueError, match="max_queue_delay"):
        DynamicBatcher(Recorder(), max_queue_delay=-1)
    with pytest.raises(ValueError, match="max_queue_size"):
        DynamicBatcher(Recorder(), max_queue_size=0)
