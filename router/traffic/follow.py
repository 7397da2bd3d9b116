"""Router replicas without a controller follow the one that has it.

Only the router that embeds the controller decides weights; every other replica
watches its `RolloutControl.WatchStatus` stream and applies the canary weight it
announces. If the stream breaks, the replica keeps the last weight it applied (it
does not flip traffic because the controller is briefly away) and reconnects with
backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import grpc
import structlog

from canarycast.tokens import Token, TokenLike
from canarycast.v1 import rollout_pb2 as rpb
from canarycast.v1 import rollout_pb2_grpc as rpb_grpc

log = structlog.get_logger("canarycast.router.follow")


class WeightFollower:
    def __init__(
        self,
        controller: str,
        token: TokenLike,
        apply: Callable[[float], None],
        *,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.controller = controller
        self._token = token
        self._apply = apply
        self._credentials = credentials
        self.applied: float | None = None
        self.connected = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="follow")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        """The token as it is now: a rotated token file is read again on reconnect."""
        token = self._token.current() if isinstance(self._token, Token) else self._token
        return (("authorization", f"Bearer {token}"),) if token else ()

    def _channel(self) -> grpc.aio.Channel:
        if self._credentials is not None:
            return grpc.aio.secure_channel(self.controller, self._credentials)
        return grpc.aio.insecure_channel(self.controller)

    async def _run(self) -> None:
        backoff = 0.2
        while True:
            try:
                async with self._channel() as channel:
                    stub = rpb_grpc.RolloutControlStub(channel)
                    async for status in stub.WatchStatus(
                        rpb.GetStatusRequest(), metadata=self._metadata()
                    ):
                        self.connected = True
                        backoff = 0.2
                        if status.canary_weight != self.applied:
                            self._apply(status.canary_weight)
                            self.applied = status.canary_weight
                            log.info(
                                "followed_weight",
                                controller=self.controller,
                                weight=status.canary_weight,
                                rollout_id=status.rollout_id,
                            )
            except grpc.aio.AioRpcError as exc:
                if exc.code() in (
                    grpc.StatusCode.UNAUTHENTICATED,
                    grpc.StatusCode.PERMISSION_DENIED,
                ):
                    log.error("follow_refused", controller=self.controller, error=exc.details())
                else:
                    log.warning("follow_lost", controller=self.controller, code=exc.code().name)
            self.connected = False
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)
