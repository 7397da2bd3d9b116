"""Noticing that a file was replaced (a rotated Kubernetes Secret, a renewed certificate)."""

from __future__ import annotations

from pathlib import Path

Stamp = tuple[int, int, int] | None


def stamp(path: str | Path) -> Stamp:
    """What identifies the file's contents now: inode, size and modification time (a
    replaced or rewritten file gives another stamp); None when it cannot be seen."""
    try:
        s = Path(path).stat()
    except OSError:
        return None
    return (s.st_ino, s.st_size, s.st_mtime_ns)
