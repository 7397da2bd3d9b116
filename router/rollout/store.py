"""Durable rollout state: a local SQLite file (the embedded default).

Every transition of the controller is written in one transaction before the
controller acts on the next tick, so a killed and restarted controller finds
the rollout where it was: same phase, step and weight. A file that is not a
readable rollout database (an emptied one included) is refused with a clear error,
never treated as empty.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS rollouts (
    rollout_id TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    stable_version TEXT NOT NULL,
    candidate_version TEXT NOT NULL,
    phase TEXT NOT NULL,
    step INTEGER NOT NULL,
    weight REAL NOT NULL,
    step_started_at REAL NOT NULL,
    started_at REAL NOT NULL,
    ended_at REAL,
    outcome_reason TEXT NOT NULL DEFAULT '',
    awaiting_confirmation INTEGER NOT NULL DEFAULT 0,
    judgement TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    rollout_id TEXT NOT NULL REFERENCES rollouts(rollout_id),
    at REAL NOT NULL,
    action TEXT NOT NULL,
    reason TEXT NOT NULL,
    actor TEXT NOT NULL,
    weight REAL NOT NULL,
    evidence TEXT NOT NULL DEFAULT '{}'
);
"""


class StateError(RuntimeError):
    """The state file cannot be used (corrupt, not a rollout database, unwritable)."""


@dataclass
class RolloutRecord:
    rollout_id: str
    model: str
    stable_version: str
    candidate_version: str
    phase: str
    step: int  # 0-based index into the policy's steps; -1 before the first
    weight: float
    step_started_at: float  # wall-clock seconds
    started_at: float
    ended_at: float | None = None
    outcome_reason: str = ""
    awaiting_confirmation: bool = False
    judgement: str = "{}"  # the last judgement, JSON


@dataclass(frozen=True)
class DecisionRow:
    rollout_id: str
    at: float
    action: str
    reason: str
    actor: str
    weight: float
    evidence: dict[str, Any]


def _create(path: Path) -> None:
    """Make a new state database under a temporary name, then move it into place:
    a crash leaves either no file or a whole one, never an empty one."""
    tmp = path.with_name(f".{path.name}.new")
    for leftover in (tmp, tmp.with_name(tmp.name + "-wal"), tmp.with_name(tmp.name + "-shm")):
        leftover.unlink(missing_ok=True)
    db = sqlite3.connect(tmp, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(SCHEMA)
    finally:
        db.close()  # the last connection checkpoints the WAL into the file
    os.replace(tmp, path)


class RolloutStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not self.path.exists():
                _create(self.path)
            elif self.path.stat().st_size == 0:
                # _create never leaves an empty file behind, so this one was emptied.
                raise StateError(
                    f"rollout state file {self.path} is not usable: it is empty (0 bytes), "
                    "so it was truncated; remove it to start with no rollout history"
                )
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)
            self._db.execute("SELECT count(*) FROM rollouts").fetchone()
        except sqlite3.DatabaseError as exc:
            raise StateError(f"rollout state file {self.path} is not usable: {exc}") from exc

    def close(self) -> None:
        self._db.close()

    def save(self, record: RolloutRecord, decision: DecisionRow | None = None) -> None:
        """Write the rollout (and the decision that changed it) in one transaction."""
        row = asdict(record)
        row["awaiting_confirmation"] = int(record.awaiting_confirmation)
        columns = ", ".join(row)
        marks = ", ".join(f":{k}" for k in row)
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute(
                    f"INSERT OR REPLACE INTO rollouts ({columns}) VALUES ({marks})", row
                )
                if decision is not None:
                    self._db.execute(
                        "INSERT INTO decisions (rollout_id, at, action, reason, actor, weight, "
                        "evidence) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (
                            decision.rollout_id,
                            decision.at,
                            decision.action,
                            decision.reason,
                            decision.actor,
                            decision.weight,
                            json.dumps(decision.evidence, default=str),
                        ),
                    )
                self._db.execute("COMMIT")
            except sqlite3.DatabaseError as exc:
                self._db.execute("ROLLBACK")
                raise StateError(f"cannot write rollout state to {self.path}: {exc}") from exc

    def latest(self) -> RolloutRecord | None:
        rows = self.rollouts(limit=1)
        return rows[0] if rows else None

    def rollouts(self, limit: int = 50) -> list[RolloutRecord]:
        names = [f.name for f in fields(RolloutRecord)]
        with self._lock:
            try:
                cursor = self._db.execute(
                    f"SELECT {', '.join(names)} FROM rollouts ORDER BY started_at DESC LIMIT ?",
                    (limit,),
                )
                rows = cursor.fetchall()
            except sqlite3.DatabaseError as exc:
                raise StateError(f"cannot read rollout state from {self.path}: {exc}") from exc
        records = []
        for row in rows:
            values = dict(zip(names, row, strict=True))
            values["awaiting_confirmation"] = bool(values["awaiting_confirmation"])
            records.append(RolloutRecord(**values))
        return records

    def decisions(self, rollout_id: str) -> list[DecisionRow]:
        with self._lock:
            rows = self._db.execute(
                "SELECT rollout_id, at, action, reason, actor, weight, evidence FROM decisions "
                "WHERE rollout_id = ? ORDER BY id",
                (rollout_id,),
            ).fetchall()
        return [DecisionRow(r[0], r[1], r[2], r[3], r[4], r[5], json.loads(r[6])) for r in rows]
