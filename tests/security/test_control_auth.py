"""The control API refuses the unauthenticated (UNAUTHENTICATED) and the authenticated but
not allowed (PERMISSION_DENIED), method by method, on a real router port."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider

from canarycast.v1 import rollout_pb2 as rpb
from canarycast.v1 import rollout_pb2_grpc as rpb_grpc
from router.app import ControllerSettings, RouterServer, RouterSettings
from router.rollout.control import READ_METHODS, AdminAuth, Token, TokenLike, load_viewer_token
from tests.conftest import MODEL, TrainedRegistry

ADMIN = "admin-7f3a9c"
VIEWER = "viewer-1b8e44"

#: Every RolloutControl method with a request that, once let in, does nothing lasting.
READS: dict[str, Any] = {
    "GetStatus": rpb.GetStatusRequest(),
    "WatchStatus": rpb.GetStatusRequest(),
    "ListHistory": rpb.ListHistoryRequest(limit=5),
}
WRITES: dict[str, Any] = {
    "StartRollout": rpb.StartRolloutRequest(candidate="another-model:abc", actor="t"),
    "Promote": rpb.PromoteRequest(actor="t"),
    "Rollback": rpb.RollbackRequest(reason="test", actor="t"),
    "Pause": rpb.PauseRequest(actor="t"),
    "Resume": rpb.ResumeRequest(actor="t"),
    "SetWeight": rpb.SetWeightRequest(weight=5.0, actor="t"),  # out of range if let in
}
AUTH_CODES = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


def test_every_method_is_classified() -> None:
    service = rpb.DESCRIPTOR.services_by_name["RolloutControl"]
    assert set(READS) | set(WRITES) == {m.name for m in service.methods}
    assert {m.rpartition("/")[2] for m in READ_METHODS} == set(READS)


async def open_router(root: Any, admin: TokenLike, viewer: TokenLike) -> RouterServer:
    router = RouterServer(
        RouterSettings(
            stable=["127.0.0.1:1"],
            port=0,
            controller=ControllerSettings(
                registry=root,
                model=MODEL,
                state=root / "rollouts.db",
                admin_token=admin,
                viewer_token=viewer,
            ),
        ),
        tracer_provider=TracerProvider(),
    )
    await router.start()
    return router


@pytest.fixture
async def control(registry_copy: TrainedRegistry) -> AsyncIterator[rpb_grpc.RolloutControlStub]:
    router = await open_router(registry_copy.root, ADMIN, VIEWER)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{router.port}") as channel:
        yield rpb_grpc.RolloutControlStub(channel)
    await router.stop(grace=1)


async def call(
    stub: rpb_grpc.RolloutControlStub, method: str, request: Any, authorization: str | None
) -> grpc.StatusCode:
    """The status code of one call (a stream is read to its first message)."""
    metadata = (("authorization", authorization),) if authorization is not None else ()
    try:
        if method == "WatchStatus":
            stream = stub.WatchStatus(request, metadata=metadata, timeout=5)
            async for _ in stream:
                stream.cancel()
                break
        else:
            await getattr(stub, method)(request, metadata=metadata, timeout=5)
    except grpc.aio.AioRpcError as exc:
        if exc.code() in AUTH_CODES:
            assert ADMIN not in (exc.details() or "") and VIEWER not in (exc.details() or "")
        return exc.code()
    return grpc.StatusCode.OK


@pytest.mark.parametrize("method", [*READS, *WRITES])
async def test_unauthenticated_calls_are_refused(
    control: rpb_grpc.RolloutControlStub, method: str
) -> None:
    request = {**READS, **WRITES}[method]
    for authorization in (
        None,
        "",
        "Bearer",
        "Bearer wrong-token",
        f"Basic {ADMIN}",  # the right secret in the wrong scheme
        f"Bearer {ADMIN}x",
        f"Bearer {ADMIN[:-1]}",
    ):
        code = await call(control, method, request, authorization)
        assert code == grpc.StatusCode.UNAUTHENTICATED, (method, authorization)


@pytest.mark.parametrize("method", ["GetStatus", "WatchStatus", "StartRollout"])
async def test_a_refused_call_is_refused_before_its_bytes_are_read(
    registry_copy: TrainedRegistry, method: str
) -> None:
    """Garbage from a caller without the right token gets the auth code, not a decode error
    (the request is never decoded for someone who may not call)."""
    router = await open_router(registry_copy.root, ADMIN, VIEWER)
    path = f"/canarycast.v1.RolloutControl/{method}"
    garbage = b"\xff\xff\xff\xff\x0f"
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{router.port}") as channel:
            for authorization, expected in (
                (None, grpc.StatusCode.UNAUTHENTICATED),
                (f"Bearer {VIEWER}", grpc.StatusCode.PERMISSION_DENIED),
                (f"Bearer {ADMIN}", grpc.StatusCode.INVALID_ARGUMENT),
            ):
                if method == "StartRollout" or authorization != f"Bearer {VIEWER}":
                    metadata = (("authorization", authorization),) if authorization else ()
                    if method == "WatchStatus":
                        rpc: Any = channel.unary_stream(path)
                        with pytest.raises(grpc.aio.AioRpcError) as info:
                            async for _ in rpc(garbage, metadata=metadata, timeout=5):
                                pass
                    else:
                        rpc = channel.unary_unary(path)
                        with pytest.raises(grpc.aio.AioRpcError) as info:
                            await rpc(garbage, metadata=metadata, timeout=5)
                    assert info.value.code() == expected, (method, authorization, info.value)
    finally:
        await router.stop(grace=1)


async def test_the_viewer_reads_and_may_not_steer(control: rpb_grpc.RolloutControlStub) -> None:
    for method, request in READS.items():
        assert await call(control, method, request, f"Bearer {VIEWER}") == grpc.StatusCode.OK
    for method, request in WRITES.items():
        code = await call(control, method, request, f"Bearer {VIEWER}")
        assert code == grpc.StatusCode.PERMISSION_DENIED, method
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await control.Pause(rpb.PauseRequest(), metadata=(("authorization", f"Bearer {VIEWER}"),))
    assert "Pause needs the admin token" in (err.value.details() or "")


async def test_the_admin_may_call_everything(control: rpb_grpc.RolloutControlStub) -> None:
    for method, request in {**READS, **WRITES}.items():
        code = await call(control, method, request, f"bearer  {ADMIN} ")
        # let in: what is left is the controller's own answer (no rollout is running,
        # the candidate is another model's, 5.0 is no weight)
        assert code not in AUTH_CODES, method
    status = await control.GetStatus(
        rpb.GetStatusRequest(), metadata=(("authorization", f"Bearer {ADMIN}"),)
    )
    assert status.phase == rpb.IDLE  # nothing was changed by the refused or failed calls


async def test_without_tokens_everything_is_refused(registry_copy: TrainedRegistry) -> None:
    router = await open_router(registry_copy.root, None, None)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{router.port}") as channel:
            stub = rpb_grpc.RolloutControlStub(channel)
            for method, request in {**READS, **WRITES}.items():
                for authorization in (None, "Bearer ", "Bearer anything"):
                    code = await call(stub, method, request, authorization)
                    assert code == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.GetStatus(rpb.GetStatusRequest())
            assert "disabled" in (err.value.details() or "")
    finally:
        await router.stop(grace=1)


async def test_a_viewer_only_router_can_be_watched_but_not_steered(
    registry_copy: TrainedRegistry,
) -> None:
    router = await open_router(registry_copy.root, None, VIEWER)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{router.port}") as channel:
            stub = rpb_grpc.RolloutControlStub(channel)
            viewer = f"Bearer {VIEWER}"
            assert await call(stub, "GetStatus", READS["GetStatus"], viewer) == grpc.StatusCode.OK
            code = await call(stub, "Pause", WRITES["Pause"], viewer)
            assert code == grpc.StatusCode.PERMISSION_DENIED
            code = await call(stub, "Pause", WRITES["Pause"], f"Bearer {ADMIN}")
            assert code == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await router.stop(grace=1)


def test_token_configuration_is_checked(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="must differ"):
        AdminAuth("same", "same")
    empty = tmp_path / "viewer"
    empty.write_text("\n")
    with pytest.raises(ValueError, match=r"viewer token file .*viewer is empty"):
        load_viewer_token(empty)
    with pytest.raises(ValueError, match=r"viewer token file .*No such file"):
        load_viewer_token(tmp_path / "missing")
    (tmp_path / "ok").write_text(" v-token \n")
    monkeypatch.setenv("CANARYCAST_VIEWER_TOKEN", "from-env")
    assert load_viewer_token(tmp_path / "ok") == "v-token"  # the file wins
    assert load_viewer_token(None) == "from-env"
    monkeypatch.delenv("CANARYCAST_VIEWER_TOKEN")
    assert load_viewer_token(None) is None


def rotate(path: Any, token: str) -> None:
    """Replace the file by rename, as the kubelet updates a mounted Secret."""
    new = path.with_name(path.name + ".new")
    new.write_text(token + "\n")
    new.replace(path)


def test_a_token_file_is_followed_and_a_bad_rotation_keeps_the_last_token(
    tmp_path: Any,
) -> None:
    now = [0.0]
    path = tmp_path / "admin"
    path.write_text("first\n")
    token = Token("first", path, check_every=1.0, clock=lambda: now[0])
    rotate(path, "second")
    assert token.current() == "first"  # not checked again within the second
    now[0] = 1.0
    assert token.current() == "second"
    for broken in ("\n", None):  # emptied, then deleted: keep the last good token
        if broken is None:
            path.unlink()
        else:
            rotate(path, broken)
        now[0] += 1.0
        assert token.current() == "second"
    rotate(path, "third")
    now[0] += 1.0
    assert token.current() == "third"


async def test_a_rotated_admin_token_takes_effect_without_a_restart(
    registry_copy: TrainedRegistry, tmp_path: Any
) -> None:
    admin_file, viewer_file = tmp_path / "admin", tmp_path / "viewer"
    admin_file.write_text(ADMIN)
    viewer_file.write_text(VIEWER)
    router = await open_router(
        registry_copy.root,
        Token(ADMIN, admin_file, check_every=0.0),
        Token(VIEWER, viewer_file, what="viewer token", check_every=0.0),
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{router.port}") as channel:
            stub = rpb_grpc.RolloutControlStub(channel)
            pause = WRITES["Pause"]
            assert await call(stub, "GetStatus", READS["GetStatus"], f"Bearer {ADMIN}") == (
                grpc.StatusCode.OK
            )
            rotate(admin_file, "admin-rotated-55d1")
            assert await call(stub, "Pause", pause, f"Bearer {ADMIN}") == (
                grpc.StatusCode.UNAUTHENTICATED
            )
            code = await call(stub, "GetStatus", READS["GetStatus"], "Bearer admin-rotated-55d1")
            assert code == grpc.StatusCode.OK
            # a rotation that makes the two equal leaves that token read-only
            rotate(viewer_file, "admin-rotated-55d1")
            code = await call(stub, "Pause", pause, "Bearer admin-rotated-55d1")
            assert code == grpc.StatusCode.PERMISSION_DENIED
    finally:
        await router.stop(grace=1)


def test_a_follower_presents_the_token_as_it_is_now(tmp_path: Any) -> None:
    from router.traffic.follow import WeightFollower

    path = tmp_path / "viewer"
    path.write_text(VIEWER)
    follower = WeightFollower(
        "127.0.0.1:1", Token(VIEWER, path, what="viewer token", check_every=0.0), print
    )
    assert follower._metadata() == (("authorization", f"Bearer {VIEWER}"),)
    rotate(path, "viewer-rotated")
    assert follower._metadata() == (("authorization", "Bearer viewer-rotated"),)
    assert WeightFollower("127.0.0.1:1", None, print)._metadata() == ()
