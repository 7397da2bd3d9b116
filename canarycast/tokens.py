"""Bearer tokens of the control API, for the side that checks them and the sides that send them.

The router's `RolloutControl` guard (`router.rollout.control.AdminAuth`) checks them; a
router replica that follows the controller (`router.traffic.follow`), `canarycast rollout …`
and the retrain job send them. They live here, in the core, so that the request path and
the clients need nothing of the rollout to hold one.

A token comes from a file given by flag, else from an environment variable
(`CANARYCAST_ADMIN_TOKEN`, `CANARYCAST_VIEWER_TOKEN`). A `Token` read from a file follows the
file: rotating a mounted Secret takes effect within a second, without a restart. Tokens are
never logged.

Imports: the standard library, structlog and `canarycast.files`; nothing of server/ or router/.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import structlog

from canarycast.environment import CANARYCAST_ADMIN_TOKEN, CANARYCAST_VIEWER_TOKEN
from canarycast.files import stamp

__all__ = [
    "Token",
    "TokenLike",
    "as_token",
    "load_admin_token",
    "load_viewer_token",
]

log = structlog.get_logger("canarycast.tokens")


def load_admin_token(
    token_file: str | Path | None,
    *,
    variable: str = CANARYCAST_ADMIN_TOKEN,
    what: str = "admin token",
) -> str | None:
    """The token in `token_file` (stripped; an empty or unreadable file is a ValueError),
    else the value of the environment variable `variable`, else None."""
    if token_file is not None:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as exc:
            raise ValueError(f"{what} file {token_file}: {exc.strerror}") from exc
        if not token:
            raise ValueError(f"{what} file {token_file} is empty")
        return token
    return os.environ.get(variable) or None


def load_viewer_token(token_file: str | Path | None) -> str | None:
    """The read-only token, from `token_file` or $CANARYCAST_VIEWER_TOKEN."""
    return load_admin_token(token_file, variable=CANARYCAST_VIEWER_TOKEN, what="viewer token")


class Token:
    """A bearer token: a fixed value, or the content of a file that is re-read when the
    file changes (checked at most every `check_every` seconds), so that a rotated
    Kubernetes Secret takes effect without a restart. A changed file that is empty or
    unreadable keeps the last good token (logged once, without the value)."""

    def __init__(
        self,
        value: str,
        path: Path | None = None,
        *,
        what: str = "admin token",
        check_every: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._value = value
        self.path = path
        self.what = what
        self._check_every = check_every
        self._clock = clock
        self._next_check = clock() + check_every
        self._stamp = stamp(path) if path is not None else None

    def current(self) -> str:
        if self.path is not None and self._clock() >= self._next_check:
            self._next_check = self._clock() + self._check_every
            now = stamp(self.path)
            if now != self._stamp:
                self._stamp = now
                try:
                    value = load_admin_token(self.path, what=self.what)
                except ValueError as exc:
                    log.warning("token_reload_failed", token=self.what, error=str(exc))
                else:
                    if value is not None and value != self._value:
                        self._value = value
                        log.info("token_reloaded", token=self.what, path=str(self.path))
        return self._value


#: What a caller may hand over as a token: a fixed value, a `Token` that follows its file,
#: or None (none configured).
TokenLike = str | Token | None


def as_token(t: TokenLike) -> Token | None:
    """`t` as a `Token`; None for None or an empty string."""
    if t is None or isinstance(t, Token):
        return t
    return Token(t) if t else None
