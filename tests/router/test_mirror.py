"""router.traffic.mirror: the bounded queue of copies and how waiting copies are joined
into one call (unit tests of the one class, with plain jobs), and the wire split that the
router joins requests with."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from dataclasses import dataclass

import pytest

from canarycast.errors import InvalidArgument
from canarycast.v1 import forecast_pb2 as pb
from router.traffic import wire
from router.traffic.mirror import MirrorQueue


@dataclass(frozen=True)
class Job:
    name: str
    ids: tuple[str, ...] = ("a",)
    key: Hashable | None = "k"
    variant: str = "canary"

    def batch_key(self) -> Hashable | None:
        return self.key

    def series_ids(self) -> frozenset[str]:
        return frozenset(self.ids)

    @property
    def size(self) -> int:
        return len(self.ids)


async def _nothing(batch: list[Job]) -> None:
    return None


def queue(max_batch: int = 4, max_size: int = 100) -> MirrorQueue[Job]:
    return MirrorQueue(_nothing, max_size=max_size, workers=1, max_batch=max_batch)


def names(batch: list[Job]) -> list[str]:
    return [j.name for j in batch]


async def test_waiting_copies_with_one_key_and_disjoint_series_leave_together() -> None:
    q = queue(max_batch=4)
    for job in (
        Job("1", ("a",)),
        Job("2", ("b",)),
        Job("other key", ("c",), key="x"),
        Job("same series", ("a",)),
        Job("3", ("d", "e")),
        Job("too many", ("f",)),
        Job("never joined", ("g",), key=None),
    ):
        assert q.offer(job)
    assert names(q.take()) == ["1", "2", "3"]  # 4 series: a, b, d, e
    assert q.depth == 4
    # what was left keeps its order; a series already in a batch waits for the next one
    assert names(q.take()) == ["other key"]
    assert names(q.take()) == ["same series", "too many"]
    assert names(q.take()) == ["never joined"]
    assert q.take() == [] and q.depth == 0


async def test_a_job_without_a_key_or_at_the_limit_goes_alone() -> None:
    q = queue(max_batch=2)
    q.offer(Job("alone", key=None))
    q.offer(Job("b", ("b",)))
    assert names(q.take()) == ["alone"]
    q.offer(Job("big", ("x", "y")))
    assert names(q.take()) == ["b"]  # big would make 3 series
    assert names(q.take()) == ["big"]


async def test_a_full_queue_drops_and_counts_and_never_waits() -> None:
    dropped: list[str] = []
    q: MirrorQueue[Job] = MirrorQueue(_nothing, max_size=2, on_drop=dropped.append)
    assert q.offer(Job("1")) and q.offer(Job("2"))
    assert not q.offer(Job("3", variant="stable"))
    assert dropped == ["stable"] and q.depth == 2


async def test_workers_send_batches_and_drain_waits_for_the_last() -> None:
    sent: list[list[str]] = []
    release = asyncio.Event()

    async def send(batch: list[Job]) -> None:
        await release.wait()
        sent.append(names(batch))
        if "boom" in names(batch):
            raise RuntimeError("a failing copy must not stop the worker")

    q: MirrorQueue[Job] = MirrorQueue(send, workers=1, max_batch=8)
    q.start()
    q.offer(Job("first", ("a",)))
    await asyncio.sleep(0.01)  # the worker holds "first" and waits on the target
    for i in range(5):
        q.offer(Job(f"w{i}", (f"s{i}",)))
    q.offer(Job("boom", key=None))
    q.offer(Job("after", ("z",)))
    release.set()
    await q.drain(grace=5)
    assert sent == [["first"], ["w0", "w1", "w2", "w3", "w4", "after"], ["boom"]]
    assert q.depth == 0


def test_bad_sizes_are_refused() -> None:
    for kw in ({"max_size": 0}, {"workers": 0}, {"max_batch": 0}):
        with pytest.raises(ValueError, match="must be >= 1"):
            MirrorQueue(_nothing, **kw)  # type: ignore[arg-type]  # one int, on purpose


def _request(*ids: str, horizon: int = 6) -> pb.ForecastRequest:
    req = pb.ForecastRequest(horizon=horizon, quantiles=[0.1, 0.9])
    for i, x in enumerate(ids):
        s = req.series.add(series_id=x, history=[float(i), 2.0, 3.0])
        s.start.FromSeconds(3600 * i)
    return req


def test_split_gives_back_the_request_and_joins_requests() -> None:
    one, two = _request("a", "b"), _request("c")
    series, ids, rest = wire.split_request(one.SerializeToString())
    assert ids == ["a", "b"] and len(series) == 2
    assert pb.ForecastRequest.FromString(rest + b"".join(series)) == one
    more, more_ids, more_rest = wire.split_request(two.SerializeToString())
    assert more_rest == rest and more_ids == ["c"]
    joined = pb.ForecastRequest.FromString(rest + b"".join(series + more))
    assert [s.series_id for s in joined.series] == ["a", "b", "c"]
    assert joined.horizon == 6 and list(joined.quantiles) == [0.1, 0.9]
    assert list(joined.series[2].history) == list(two.series[0].history)
    # other options are other bytes: such requests are never joined
    assert wire.split_request(_request("c", horizon=12).SerializeToString())[2] != rest


def test_split_refuses_bytes_that_are_not_a_request() -> None:
    with pytest.raises(InvalidArgument, match="ForecastRequest"):
        wire.split_request(b"\x0a\xff\xff")
