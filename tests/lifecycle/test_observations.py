"""The observation store: durable before the answer, last write wins, queryable; and the
router appending every accepted Observe point to it (a real process, killed with SIGKILL)."""

from __future__ import annotations

import asyncio
import socket
import threading
from pathlib import Path

import grpc
import numpy as np
import pytest

from canarycast.client import ForecastClient
from canarycast.processes import start_component
from canarycast.v1 import forecast_pb2 as pb
from canarycast.v1 import forecast_pb2_grpc as pb_grpc
from canarycast.validation import Observation
from server.lifecycle.data import load_dataset
from server.lifecycle.observations import ObservationStore, StoreError, observations_hash

HOUR = 3_600_000_000_000


def obs(series_id: str, start: int, values: list[float]) -> Observation:
    ts = np.arange(start, start + len(values), dtype=np.int64) * HOUR
    return Observation(series_id, ts, np.asarray(values, dtype=np.float64))


def test_append_query_and_last_write_wins(tmp_path: Path) -> None:
    store = ObservationStore(tmp_path / "obs.db")
    try:
        assert store.append([obs("a", 0, [1.0, 2.0, 3.0]), obs("b", 10, [5.0])]) == 4
        assert store.append([obs("a", 2, [30.0, 4.0])]) == 2  # ts 2 again, then ts 3
        ts, values = store.query("a")
        assert values.tolist() == [1.0, 2.0, 30.0, 4.0]
        assert (ts.astype(np.int64) // HOUR).tolist() == [0, 1, 2, 3]
        ts, values = store.query("a", start=np.datetime64(1 * HOUR, "ns"), end="1970-01-01T03")
        assert values.tolist() == [2.0, 30.0]  # start inclusive, end exclusive
        assert [(s.series_id, s.points) for s in store.series()] == [("a", 4), ("b", 1)]
        assert store.count() == 5
        frame = store.frame()
        assert list(frame.columns) == ["unique_id", "ds", "y"]
        assert frame["unique_id"].tolist() == ["a"] * 4 + ["b"]
        assert store.frame(["nope"]).empty
        first_hash = observations_hash(frame)
        store.append([obs("b", 10, [5.0])])  # the same value again: same content
        assert observations_hash(store.frame()) == first_hash
        store.append([obs("b", 10, [6.0])])
        assert observations_hash(store.frame()) != first_hash
    finally:
        store.close()


async def test_concurrent_appends_are_grouped_into_few_commits(tmp_path: Path) -> None:
    store = ObservationStore(tmp_path / "obs.db")
    try:
        calls = [store.append_async([obs(f"s{i}", 0, [float(i)] * 24)]) for i in range(64)]
        assert sum(await asyncio.gather(*calls)) == 64 * 24
        assert store.count() == 64 * 24
        assert 1 <= store.commits < 64  # group commit: calls queued meanwhile share one
    finally:
        store.close()


def test_a_folder_of_replica_stores_reads_as_one_with_the_latest_write_winning(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "observations"
    with ObservationStore(folder / "router-0.db") as first:
        first.append([obs("a", 0, [1.0, 2.0]), obs("b", 0, [7.0])])
    with ObservationStore(folder / "router-1.db") as second:
        second.append([obs("a", 1, [20.0, 3.0])])  # later: wins at ts 1
    with ObservationStore(folder, readonly=True) as merged:
        ts, values = merged.query("a")
        assert values.tolist() == [1.0, 20.0, 3.0]
        assert (ts.astype(np.int64) // HOUR).tolist() == [0, 1, 2]
        assert [(s.series_id, s.points) for s in merged.series()] == [("a", 3), ("b", 1)]
    (folder / "router-2.db").write_bytes(b"not a database" * 100)
    with pytest.raises(StoreError, match=r"router-2\.db"):
        ObservationStore(folder, readonly=True)
    with pytest.raises(StoreError, match="no \\*\\.db"):
        ObservationStore(tmp_path, readonly=True)


def test_a_file_that_is_not_a_store_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "obs.db"
    bad.write_bytes(b"not a database" * 100)
    with pytest.raises(StoreError, match=r"obs\.db"):
        ObservationStore(bad)
    with pytest.raises(StoreError, match="does not exist"):
        ObservationStore(tmp_path / "missing.db", readonly=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_every_accepted_point_survives_a_sigkill_right_after_the_answer(tmp_path: Path) -> None:
    """A real router; concurrent Observe calls of a real series; SIGKILL the moment the
    last answer arrives; every point that was answered is in the store."""
    path = tmp_path / "observations.db"
    router = start_component(
        "router",
        [
            "route",
            "--port",
            "0",
            "--stable",
            f"127.0.0.1:{free_port()}",
            "--observations",
            str(path),
        ],
    )
    series = load_dataset("seattle-temps").series[0]
    accepted: dict[tuple[str, int], float] = {}
    lock = threading.Lock()
    try:
        with ForecastClient(router.target, timeout=30) as client:

            def send(worker: int) -> None:
                for k in range(10):
                    start = (worker * 10 + k) * 24
                    ts, values = (
                        series.timestamps[start : start + 24],
                        series.values[start : start + 24],
                    )
                    sid = f"seattle-temps#{worker}"
                    assert client.observe(sid, ts, values) == 24
                    with lock:
                        for t, v in zip(ts.astype(np.int64).tolist(), values.tolist(), strict=True):
                            accepted[(sid, t)] = v

            threads = [threading.Thread(target=send, args=(w,)) for w in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            # Bad input: refused, naming the field, and nothing of it is stored.
            with pytest.raises(grpc.RpcError) as err:
                client.observe("bad", series.timestamps[:2], [1.0, float("nan")])
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "observations[0].values[1]" in (err.value.details() or "")
            # The last batch, then SIGKILL with no pause at all.
            ts, values = series.timestamps[5000:5024], series.values[5000:5024]
            assert client.observe("last", ts, values) == 24
        router.process.kill()
        for t, v in zip(ts.astype(np.int64).tolist(), values.tolist(), strict=True):
            accepted[("last", t)] = v
        router.process.wait(10)
    finally:
        router.stop(5)
    store = ObservationStore(path, readonly=True)
    try:
        frame = store.frame()
        stored = {
            (sid, int(t)): y
            for sid, t, y in zip(
                frame["unique_id"], frame["ds"].to_numpy().astype(np.int64), frame["y"], strict=True
            )
        }
        assert len(accepted) == 8 * 10 * 24 + 24
        assert stored == accepted
        assert "bad" not in {s.series_id for s in store.series()}
    finally:
        store.close()


def test_observe_through_a_stub_reports_the_store_error(tmp_path: Path) -> None:
    """A store that cannot be written: the call fails UNAVAILABLE, never a silent accept."""
    from router.app import RouterServer, RouterSettings

    async def main() -> None:
        db = tmp_path / "obs.db"
        server = RouterServer(RouterSettings(stable=[f"127.0.0.1:{free_port()}"], observations=db))
        port = await server.start()
        try:
            assert server.router.observations is not None
            # the private write connection, to make the store fail its next write
            server.router.observations._write_db.execute("PRAGMA query_only=1")  # type: ignore[union-attr]
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = pb_grpc.ForecasterStub(channel)
                request = pb.ObserveRequest(
                    observations=[pb.SeriesObservation(series_id="x", values=[1.0])]
                )
                request.observations[0].timestamps.add().FromNanoseconds(HOUR)
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.Observe(request, timeout=10)
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE
                assert "observations not stored" in (err.value.details() or "")
        finally:
            await server.stop(0)

    asyncio.run(main())
