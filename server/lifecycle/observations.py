"""The observation store: every accepted `Observe` point, durable before the answer.

A local SQLite file in WAL mode with ``synchronous=FULL``: a transaction is on disk
(fsynced) when its COMMIT returns, so a process killed right after answering loses
nothing it acknowledged. One table, keyed by ``(series_id, ts)``::

    observations(series_id TEXT, ts INTEGER ns since the epoch, value REAL,
                 received_at REAL unix seconds, PRIMARY KEY (series_id, ts)) WITHOUT ROWID

Deduplication: **last write wins**. A point observed again for the same series and
timestamp replaces the stored value (clients re-send corrected actuals; the newest
report is the one to train on), and ``received_at`` says when.

Writes go through one writer thread (:class:`ObservationStore` ``append`` / ``append_async``):
calls that arrive while a commit is running are written together in the next
transaction (group commit), so concurrent Observe calls share one fsync and the event
loop only awaits a future. Readers (``query``, ``frame``, ``series``) use their own
connection and never block the writer (WAL).

Opened read-only on a folder, the store reads every ``*.db`` in it (one per router
replica, as the Helm chart lays them out) as one, the latest ``received_at`` winning.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import queue
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from canarycast.validation import Observation

if TYPE_CHECKING:  # pandas is imported where a frame is built: the router's Observe path,
    import pandas as pd  # which only appends, starts without it

__all__ = ["ObservationStore", "SeriesSummary", "StoreError", "observations_hash"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS observations (
    series_id TEXT NOT NULL,
    ts INTEGER NOT NULL,
    value REAL NOT NULL,
    received_at REAL NOT NULL,
    PRIMARY KEY (series_id, ts)
) WITHOUT ROWID;
"""
UPSERT = (
    "INSERT INTO observations (series_id, ts, value, received_at) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (series_id, ts) DO UPDATE SET value = excluded.value, "
    "received_at = excluded.received_at"
)
#: Most queued appends folded into one transaction.
MAX_GROUP = 256


class StoreError(OSError):
    """The observation store cannot be opened, written or read; names the file."""


@dataclass(frozen=True)
class SeriesSummary:
    series_id: str
    points: int
    first: np.datetime64
    last: np.datetime64


Rows = list[tuple[str, int, float, float]]


def _rows(observations: Sequence[Observation], received_at: float) -> Rows:
    rows: Rows = []
    for o in observations:
        ts = np.asarray(o.timestamps, dtype=np.int64)
        values = np.asarray(o.values, dtype=np.float64)
        rows.extend(
            (o.series_id, int(t), float(v), received_at)
            for t, v in zip(ts.tolist(), values.tolist(), strict=True)
        )
    return rows


def observations_hash(frame: pd.DataFrame) -> str:
    """sha256 of a long-format frame (unique_id, ds, y) sorted by id then time: the
    content key of the observations a model was trained on (same rule as a dataset's)."""
    digest = hashlib.sha256()
    for sid, group in frame.groupby("unique_id", sort=True):
        ds = group["ds"].to_numpy(dtype="datetime64[ns]").view(np.int64)
        digest.update(str(sid).encode("utf-8") + b"\0")
        digest.update(np.int64(len(group)).astype("<i8").tobytes())
        digest.update(ds.astype("<i8").tobytes())
        digest.update(group["y"].to_numpy(dtype=np.float64).astype("<f8").tobytes())
    return digest.hexdigest()


class ObservationStore:
    """Append-only (last write wins per point), durable, queryable by series and time."""

    def __init__(self, path: str | Path, *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self._queue: queue.Queue[tuple[Rows, concurrent.futures.Future[int]] | None] = queue.Queue()
        self._writer: threading.Thread | None = None
        self._write_db: sqlite3.Connection | None = None
        self._read_lock = threading.Lock()
        self._start_lock = threading.Lock()
        self.commits = 0  # transactions written (one per group of appends)
        try:
            if readonly and self.path.is_dir():
                self._read_db = _merge_folder(self.path)
            elif readonly:
                if not self.path.is_file():
                    raise StoreError(f"observation store {self.path} does not exist")
                self._read_db = sqlite3.connect(
                    f"file:{self.path}?mode=ro", uri=True, check_same_thread=False
                )
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._write_db = self._connect()
                self._write_db.executescript(SCHEMA)
                self._read_db = sqlite3.connect(self.path, check_same_thread=False)
            self._read_db.execute("SELECT count(*) FROM observations").fetchone()
        except (sqlite3.DatabaseError, OSError) as exc:
            raise StoreError(f"observation store {self.path} is not usable: {exc}") from exc

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        return db

    # -- writing --

    def append(self, observations: Sequence[Observation]) -> int:
        """Write the points and return once they are committed (fsynced); blocks."""
        return self._submit(observations).result()

    async def append_async(self, observations: Sequence[Observation]) -> int:
        """The same, awaited: the commit runs on the writer thread, grouped with others."""
        return await asyncio.wrap_future(self._submit(observations))

    def _submit(self, observations: Sequence[Observation]) -> concurrent.futures.Future[int]:
        if self._write_db is None:
            raise StoreError(f"observation store {self.path} is open read-only")
        future: concurrent.futures.Future[int] = concurrent.futures.Future()
        self._queue.put((_rows(observations, time.time()), future))
        if self._writer is None:
            with self._start_lock:
                if self._writer is None:
                    self._writer = threading.Thread(
                        target=self._write_loop, name="observation-store", daemon=True
                    )
                    self._writer.start()
        return future

    def _write_loop(self) -> None:
        db = self._write_db
        assert db is not None
        while True:
            item = self._queue.get()
            if item is None:
                return
            group = [item]
            while len(group) < MAX_GROUP:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._queue.put(None)  # stop after this group
                    break
                group.append(more)
            try:
                db.execute("BEGIN IMMEDIATE")
                for rows, _ in group:
                    db.executemany(UPSERT, rows)
                db.execute("COMMIT")
            except sqlite3.DatabaseError as exc:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                error = StoreError(f"cannot write observations to {self.path}: {exc}")
                for _, future in group:
                    future.set_exception(error)
                continue
            self.commits += 1
            for rows, future in group:
                future.set_result(len(rows))

    def close(self) -> None:
        """Finish queued writes, then close both connections."""
        if self._writer is not None:
            self._queue.put(None)
            self._writer.join()
            self._writer = None
        if self._write_db is not None:
            self._write_db.close()
            self._write_db = None
        self._read_db.close()

    def __enter__(self) -> ObservationStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading --

    def _select(self, sql: str, args: Sequence[object]) -> list[Any]:
        with self._read_lock:
            try:
                return self._read_db.execute(sql, tuple(args)).fetchall()
            except sqlite3.DatabaseError as exc:
                raise StoreError(f"cannot read observations from {self.path}: {exc}") from exc

    def series(self) -> list[SeriesSummary]:
        """Every series with its point count and time range, sorted by id."""
        rows = self._select(
            "SELECT series_id, count(*), min(ts), max(ts) FROM observations "
            "GROUP BY series_id ORDER BY series_id",
            (),
        )
        return [
            SeriesSummary(
                str(sid), int(n), np.datetime64(int(lo), "ns"), np.datetime64(int(hi), "ns")
            )
            for sid, n, lo, hi in rows
        ]

    def count(self) -> int:
        return int(self._select("SELECT count(*) FROM observations", ())[0][0])

    def frame(
        self,
        series_ids: Sequence[str] | None = None,
        start: np.datetime64 | str | None = None,
        end: np.datetime64 | str | None = None,
    ) -> pd.DataFrame:
        """Long format (unique_id, ds, y), sorted by id then time; ``start`` inclusive,
        ``end`` exclusive; only ``series_ids`` if given."""
        import pandas as pd

        where: list[str] = []
        args: list[object] = []
        if series_ids is not None:
            if not series_ids:
                return _empty_frame()
            where.append(f"series_id IN ({', '.join('?' * len(series_ids))})")
            args.extend(series_ids)
        if start is not None:
            where.append("ts >= ?")
            args.append(_ns(start))
        if end is not None:
            where.append("ts < ?")
            args.append(_ns(end))
        sql = "SELECT series_id, ts, value FROM observations"
        if where:
            sql += " WHERE " + " AND ".join(where)
        rows = self._select(sql + " ORDER BY series_id, ts", args)
        if not rows:
            return _empty_frame()
        ids, ts, values = zip(*rows, strict=True)
        return pd.DataFrame(
            {
                "unique_id": pd.Series(ids, dtype=object),
                "ds": pd.to_datetime(np.asarray(ts, dtype=np.int64), unit="ns"),
                "y": np.asarray(values, dtype=np.float64),
            }
        )

    def query(
        self,
        series_id: str,
        start: np.datetime64 | str | None = None,
        end: np.datetime64 | str | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(timestamps datetime64[ns], values float64) of one series in [start, end)."""
        frame = self.frame([series_id], start, end)
        return frame["ds"].to_numpy(dtype="datetime64[ns]"), frame["y"].to_numpy(np.float64)


MERGE = (
    "INSERT INTO main.observations SELECT series_id, ts, value, received_at "
    "FROM src.observations WHERE true ON CONFLICT (series_id, ts) DO UPDATE SET "
    "value = excluded.value, received_at = excluded.received_at "
    "WHERE excluded.received_at > observations.received_at"
)


def _merge_folder(folder: Path) -> sqlite3.Connection:
    """Every ``*.db`` store in ``folder`` (one per router replica) read into one in-memory
    view, last write (by ``received_at``) winning across files as within one."""
    files = sorted(folder.glob("*.db"))
    if not files:
        raise StoreError(f"observation store folder {folder} holds no *.db file")
    db = sqlite3.connect("file::memory:", uri=True, check_same_thread=False, isolation_level=None)
    db.executescript(SCHEMA)
    for f in files:
        try:
            db.execute("ATTACH DATABASE ? AS src", (f"file:{f}?mode=ro",))
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"observation store {f} is not usable: {exc}") from exc
        try:
            db.execute(MERGE)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"observation store {f} is not usable: {exc}") from exc
        finally:
            db.execute("DETACH DATABASE src")
    return db


def _ns(value: np.datetime64 | str) -> int:
    import pandas as pd

    return int(pd.Timestamp(value).as_unit("ns").value)


def _empty_frame() -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame(
        {
            "unique_id": pd.Series([], dtype=object),
            "ds": pd.Series([], dtype="datetime64[ns]"),
            "y": pd.Series([], dtype=np.float64),
        }
    )
