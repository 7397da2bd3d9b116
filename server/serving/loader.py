"""Load, then serve: a verified model version in memory, and its hot reload.

`load_model` resolves a registry reference, verifies the content hash (the
registry refuses a tampered or half-written version), builds the network and
warms it up with one forward pass before anyone may use it.

`ModelWatcher` owns "the model being served". When the alias it follows moves,
it loads the new version on a worker thread and swaps one reference: calls
already queued keep the model object they were validated against, so no
in-flight call fails. If the new version does not load or verify, the old one
keeps serving and the failure is reported (`reload_error`, logs, metrics).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import numpy as np
import structlog

from canarycast.periodic import Periodic
from server.lifecycle.model import LoadedModel, load_version
from server.lifecycle.registry import ModelRef, Registry, RegistryError

log = structlog.get_logger("canarycast.loader")


def load_model(registry: Registry, ref: ModelRef | str) -> LoadedModel:
    """Resolve, verify, build and warm up.

    Raises `RegistryError` for a missing or corrupt version, ValueError for a bad config.
    """
    loaded = load_version(registry, ref)
    # Warm-up: the first forward pass allocates; do it before the model takes traffic.
    loaded.predict(np.linspace(0.0, 1.0, loaded.config.lookback, dtype=np.float64)[None, :])
    return loaded


def run_forward(model: object, windows: np.ndarray) -> np.ndarray:
    """The batcher's `run`: forward pass of the model the calls were pinned to."""
    assert isinstance(model, LoadedModel)
    return model.predict(windows)


ReloadListener = Callable[[LoadedModel | None, LoadedModel | None, str | None], None]


class ModelWatcher:
    """Holds the served model; follows an alias and hot-reloads when it moves.

    `current` is None until the first load succeeds. A reference by version
    (`NAME:VERSION`) is loaded once and never reloaded.
    """

    def __init__(
        self,
        registry: Registry,
        ref: ModelRef,
        *,
        poll_interval: float = 1.0,
        on_change: ReloadListener | None = None,
    ) -> None:
        self.registry = registry
        self.ref = ref
        self.poll_interval = poll_interval
        self._on_change = on_change
        self.current: LoadedModel | None = None
        self.reload_error: str | None = None
        self._watcher = Periodic("alias-watch", poll_interval, self.check_once)

    async def load_initial(self) -> LoadedModel:
        """First load; raises on failure (a server with no model cannot serve)."""
        model = await asyncio.to_thread(load_model, self.registry, self.ref)
        self._swap(model, None)
        return model

    def start_watching(self) -> None:
        if self.ref.alias is not None:
            self._watcher.start()

    async def stop(self) -> None:
        await self._watcher.stop()

    async def check_once(self) -> bool:
        """Reload if the alias moved; True when a new version now serves."""
        assert self.ref.alias is not None
        try:
            target = await asyncio.to_thread(self.registry.get_alias, self.ref.name, self.ref.alias)
        except RegistryError as exc:
            self._fail(None, f"cannot read alias {self.ref}: {exc}")
            return False
        current = self.current
        if target is None or (current is not None and current.version_id == target):
            if target is not None and self.reload_error is not None and current is not None:
                self._clear_error()  # alias moved back to what serves
            return False
        if self._failed_target == target:
            return False  # already tried this one; wait for the alias to move again
        try:
            model = await asyncio.to_thread(
                load_model, self.registry, ModelRef(self.ref.name, None, target)
            )
        except (RegistryError, ValueError, RuntimeError, OSError) as exc:
            self._failed_target = target
            self._fail(target, f"cannot load {self.ref.name}:{target}: {exc}")
            return False
        self._swap(model, None)
        return True

    _failed_target: str | None = None

    def _swap(self, model: LoadedModel, error: str | None) -> None:
        old, self.current = self.current, model
        self.reload_error = error
        self._failed_target = None
        log.info(
            "model_loaded",
            model=model.name,
            version=model.version_id,
            previous=old.version_id if old else None,
        )
        if self._on_change is not None:
            self._on_change(old, model, None)

    def _clear_error(self) -> None:
        self.reload_error = None
        self._failed_target = None

    def _fail(self, target: str | None, message: str) -> None:
        self.reload_error = message
        log.error(
            "model_reload_failed",
            ref=str(self.ref),
            target=target,
            error=message,
            serving=self.current.version_id if self.current else None,
        )
        if self._on_change is not None:
            self._on_change(self.current, None, message)
