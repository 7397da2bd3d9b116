"""Bad input, fuzzed: arbitrary and adversarial messages and raw bytes sent to a live
model server, router and controller, each a real `canarycast` process on loopback.

Every call must end OK or with a documented status code, the router must answer
exactly what the server answers for the same request, no process may die or log an
internal error, and each process's memory must stay bounded. How many cases ran is
printed at the end of the session (see `conftest.py`); `make soak` runs the same
properties with many more examples.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from canarycast.processes import Component
from canarycast.v1 import forecast_pb2 as pb
from canarycast.v1 import rollout_pb2 as rpb
from tests.conftest import TrainedRegistry
from tests.reliability.common import (
    MODEL,
    TOKEN,
    alive,
    copy_registry,
    forecast_request,
    rss_bytes,
    start_router,
    start_server,
    stop_all,
)
from tests.reliability.conftest import FUZZ_CASES

pytestmark = pytest.mark.slow

FORECASTER = "/canarycast.v1.Forecaster"
CONTROL = "/canarycast.v1.RolloutControl"

#: What a client may get back for bad input, per method (README "Reliability").
FORECAST_CODES = {"OK", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"}
OBSERVE_CODES = {"OK", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"}
CONTROL_CODES = {"OK", "INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION", "UNAUTHENTICATED"}

#: RSS a process may gain over a whole fuzz module (the analyzer keeps up to its bound of
#: pending actuals; anything beyond this is a leak).
RSS_GROWTH_LIMIT = 96 * 1024 * 1024


class FuzzWorld:
    """The three processes and a channel to the server and the router (a plain class: its
    repr stays short in hypothesis' reports)."""

    def __init__(
        self,
        registry: TrainedRegistry,
        components: list[Component],
        channels: list[grpc.Channel],
    ) -> None:
        self.registry = registry
        self.stable, self.canary, self.router = components
        self.server_channel, self.router_channel = channels
        self.rss_before = {c.name: rss_bytes(c.process.pid) for c in components}

    def __repr__(self) -> str:
        return "FuzzWorld(server, router)"

    @property
    def components(self) -> list[Component]:
        return [self.stable, self.canary, self.router]

    def call(self, target: str, method: str, raw: bytes, token: str | None = TOKEN) -> str:
        """Send raw bytes; the status code's name (the answer is not decoded here)."""
        channel = self.server_channel if target == "server" else self.router_channel
        metadata = (("authorization", f"Bearer {token}"),) if token is not None else ()
        try:
            channel.unary_unary(method)(raw, timeout=20, metadata=metadata)
        except grpc.RpcError as exc:
            return exc.code().name
        return "OK"


@pytest.fixture(scope="module")
def world(
    trained: TrainedRegistry, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FuzzWorld]:
    workdir = tmp_path_factory.mktemp("fuzz")
    registry = copy_registry(trained.root, workdir / "registry")
    registry.set_alias(MODEL, "canary", trained.v2.version)
    components: list[Component] = []
    channels: list[grpc.Channel] = []
    try:
        components.append(start_server(workdir / "registry", "stable"))
        components.append(start_server(workdir / "registry", "canary"))
        components.append(
            start_router(
                [components[0].target],
                [components[1].target],
                registry=workdir / "registry",
                state=workdir / "rollouts.db",
                policy=None,
                workdir=workdir,
            )
        )
        channels = [grpc.insecure_channel(c.target) for c in components[0::2]]
        for channel in channels:  # both answer a real forecast before the fuzzing starts
            stub = channel.unary_unary(f"{FORECASTER}/Forecast")
            for _ in range(100):
                try:
                    stub(forecast_request(0).SerializeToString(), timeout=5)
                    break
                except grpc.RpcError:
                    import time

                    time.sleep(0.1)
        yield FuzzWorld(
            TrainedRegistry(workdir / "registry", trained.v1, trained.v2), components, channels
        )
    finally:
        for channel in channels:
            channel.close()
        stop_all(components)


# -- strategies --

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)
any_float = st.floats(allow_nan=True, allow_infinity=True)
int64 = st.integers(-(2**63), 2**63 - 1)
int32 = st.integers(-(2**31), 2**31 - 1)
series_ids = st.one_of(
    st.sampled_from(["s", "seattle", "a" * 256, "a" * 257, "", "é" * 130]),
    st.text(max_size=40),
)


@st.composite
def timestamps(draw: st.DrawFn) -> tuple[int, int]:
    return draw(st.one_of(st.tuples(int64, int32), st.tuples(st.integers(0, 2**33), st.just(0))))


@st.composite
def series_inputs(draw: st.DrawFn) -> pb.SeriesInput:
    history = draw(
        st.one_of(
            st.lists(finite, min_size=48, max_size=60),  # valid more often than not
            st.lists(any_float, max_size=80),
        )
    )
    item = pb.SeriesInput(series_id=draw(series_ids), history=history)
    if draw(st.booleans()):
        seconds, nanos = draw(timestamps())
        item.start.seconds, item.start.nanos = seconds, nanos
    if draw(st.booleans()):
        seconds, nanos = draw(
            st.one_of(st.tuples(int64, int32), st.tuples(st.integers(-5, 7200), st.just(0)))
        )
        item.step.seconds, item.step.nanos = seconds, nanos
    return item


@st.composite
def forecast_requests(draw: st.DrawFn) -> pb.ForecastRequest:
    return pb.ForecastRequest(
        series=draw(st.lists(series_inputs(), max_size=4)),
        horizon=draw(st.one_of(st.integers(0, 30), st.integers(0, 2**32 - 1))),
        quantiles=draw(
            st.lists(st.one_of(st.sampled_from([0.1, 0.5, 0.9]), any_float), max_size=4)
        ),
    )


@st.composite
def observe_requests(draw: st.DrawFn) -> pb.ObserveRequest:
    request = pb.ObserveRequest()
    for _ in range(draw(st.integers(0, 4))):
        o = request.observations.add(series_id=draw(series_ids))
        n = draw(st.integers(0, 6))
        o.values.extend(draw(st.lists(st.one_of(finite, any_float), min_size=n, max_size=n + 1)))
        base = draw(st.integers(0, 2**33))
        for k in range(n):
            t = o.timestamps.add()
            if draw(st.integers(0, 9)) == 0:
                t.seconds, t.nanos = draw(timestamps())
            else:
                t.seconds = base + 3600 * k
    return request


def mutated(raw: bytes, data: st.DataObject) -> bytes:
    """A valid message's bytes, truncated, with bytes flipped, or with garbage appended."""
    how = data.draw(st.sampled_from(["truncate", "flip", "append", "splice"]))
    if not raw or how == "append":
        return raw + data.draw(st.binary(min_size=1, max_size=32))
    at = data.draw(st.integers(0, len(raw) - 1))
    if how == "truncate":
        return raw[:at]
    if how == "flip":
        return raw[:at] + bytes([raw[at] ^ data.draw(st.integers(1, 255))]) + raw[at + 1 :]
    return raw[:at] + data.draw(st.binary(max_size=16)) + raw[at:]


# -- the properties --


@given(request=forecast_requests())
def test_forecast_gets_ok_or_invalid_argument_and_the_router_agrees(
    world: FuzzWorld, request: pb.ForecastRequest
) -> None:
    raw = request.SerializeToString()
    server = world.call("server", f"{FORECASTER}/Forecast", raw)
    routed = world.call("router", f"{FORECASTER}/Forecast", raw)
    FUZZ_CASES["Forecast messages (server+router)"] += 1
    assert server in FORECAST_CODES, (server, request)
    assert routed == server, (routed, server, request)


@given(request=observe_requests())
def test_observe_gets_ok_or_invalid_argument_and_the_router_agrees(
    world: FuzzWorld, request: pb.ObserveRequest
) -> None:
    raw = request.SerializeToString()
    server = world.call("server", f"{FORECASTER}/Observe", raw)
    routed = world.call("router", f"{FORECASTER}/Observe", raw)
    FUZZ_CASES["Observe messages (server+router)"] += 1
    assert server in OBSERVE_CODES, (server, request)
    assert routed == server, (routed, server, request)


VALID = {
    "Forecast": forecast_request(3, 2).SerializeToString(),
    "Observe": pb.ObserveRequest(
        observations=[
            pb.SeriesObservation(series_id="x", values=[1.0], timestamps=[{"seconds": 9}])
        ]
    ).SerializeToString(),
    "GetModel": b"",
}


@given(
    method=st.sampled_from(["Forecast", "Observe", "GetModel"]),
    target=st.sampled_from(["server", "router"]),
    data=st.data(),
)
def test_random_and_mutated_bytes_get_ok_or_invalid_argument(
    world: FuzzWorld, method: str, target: str, data: st.DataObject
) -> None:
    raw = data.draw(
        st.one_of(st.binary(max_size=512), st.just(VALID[method]).map(lambda v: mutated(v, data)))
    )
    code = world.call(target, f"{FORECASTER}/{method}", raw)
    FUZZ_CASES[f"raw bytes to Forecaster ({target})"] += 1
    allowed = {"GetModel": {"OK", "INVALID_ARGUMENT"}, "Forecast": FORECAST_CODES}
    assert code in allowed.get(method, OBSERVE_CODES), (code, method, raw)


def control_actions(versions: list[str]) -> st.SearchStrategy[tuple[str, bytes]]:
    candidates = st.one_of(
        st.sampled_from(
            [f"{MODEL}:{v}" for v in versions]
            + [f"{MODEL}@canary", f"{MODEL}:", "other:0123456789ab", f"{MODEL}:{'0' * 12}", ""]
        ),
        st.text(max_size=30),
    )
    actors = st.text(max_size=20)
    return st.one_of(
        st.builds(
            lambda c, a: ("StartRollout", rpb.StartRolloutRequest(candidate=c, actor=a)),
            candidates,
            actors,
        ),
        st.builds(lambda a: ("Promote", rpb.PromoteRequest(full=False, actor=a)), actors),
        st.builds(
            lambda r, a: ("Rollback", rpb.RollbackRequest(reason=r, actor=a)),
            st.text(max_size=40),
            actors,
        ),
        st.builds(lambda a: ("Pause", rpb.PauseRequest(actor=a)), actors),
        st.builds(lambda a: ("Resume", rpb.ResumeRequest(actor=a)), actors),
        st.builds(
            lambda w, a: ("SetWeight", rpb.SetWeightRequest(weight=w, actor=a)), any_float, actors
        ),
        st.builds(
            lambda n: ("ListHistory", rpb.ListHistoryRequest(limit=n)), st.integers(0, 2**32 - 1)
        ),
        st.just(("GetStatus", rpb.GetStatusRequest())),
    ).map(lambda pair: (pair[0], pair[1].SerializeToString()))


@given(data=st.data())
def test_control_api_answers_documented_codes_and_refuses_bad_tokens(
    world: FuzzWorld, data: st.DataObject
) -> None:
    versions = [world.registry.v1.version, world.registry.v2.version]
    actions = data.draw(st.lists(control_actions(versions), min_size=1, max_size=4))
    for method, raw in actions:
        token = data.draw(st.sampled_from([TOKEN, TOKEN, TOKEN, None, "wrong", TOKEN[:-1]]))
        damaged = data.draw(st.integers(0, 5)) == 0
        if damaged:
            raw = mutated(raw, data)
        code = world.call("router", f"{CONTROL}/{method}", raw, token)
        FUZZ_CASES["RolloutControl calls (router)"] += 1
        assert code in CONTROL_CODES, (code, method, raw)
        if token != TOKEN:
            # Refused before its bytes are read, damaged or not.
            assert code == "UNAUTHENTICATED", (code, method, token, damaged)
    # The stable alias only ever names a real version, never garbage from a request.
    assert world.registry.registry.get_alias(MODEL, "stable") in versions


def test_what_the_fuzzing_found_is_refused_naming_the_field(world: FuzzWorld) -> None:
    """Each of these once ended INTERNAL or UNKNOWN (an exception inside the process)."""
    late = forecast_request(1)
    late.series[0].start.seconds = 9_223_372_036 - 3600  # an hour before int64 ns ends
    bad_nanos = forecast_request(1)
    bad_nanos.series[0].start.nanos = -1
    far = pb.ObserveRequest()
    far.observations.add(series_id="x", values=[1.0]).timestamps.add(seconds=2**62)
    cases = [
        ("Forecast", bad_nanos.SerializeToString(), "series[0].start.nanos"),
        ("Forecast", late.SerializeToString(), "series[0].start"),
        ("Observe", far.SerializeToString(), "observations[0].timestamps[0]"),
        ("Forecast", b"\xff\xff\xff", "request: not a canarycast.v1.ForecastRequest"),
        ("GetModel", b"\xff\xff\xff", "request: not a canarycast.v1.GetModelRequest"),
    ]
    for method, raw, field in cases:
        for channel in (world.server_channel, world.router_channel):
            with pytest.raises(grpc.RpcError) as caught:
                channel.unary_unary(f"{FORECASTER}/{method}")(raw, timeout=10)
            error = caught.value
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, field, error)
            assert error.details().startswith(field), (field, error.details())


def test_watch_status_refuses_undecodable_bytes(world: FuzzWorld) -> None:
    stream = world.router_channel.unary_stream(f"{CONTROL}/WatchStatus")
    with pytest.raises(grpc.RpcError) as caught:
        next(
            iter(
                stream(
                    b"\xff\xff\xff", timeout=10, metadata=(("authorization", f"Bearer {TOKEN}"),)
                )
            )
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "canarycast.v1.GetStatusRequest" in caught.value.details()
    FUZZ_CASES["raw bytes to WatchStatus (router)"] += 1


def test_after_the_fuzzing_every_process_is_alive_serving_and_bounded(world: FuzzWorld) -> None:
    """Runs last in this module: the processes survived everything above."""
    for component in world.components:
        assert alive(component), f"{component.name} died:\n{component.tail()}"
        failed = [line for line in component.lines if '"call_failed"' in line]
        assert failed == [], f"{component.name} logged internal errors:\n" + "\n".join(failed[:5])
    raw = forecast_request(5).SerializeToString()
    assert world.call("server", f"{FORECASTER}/Forecast", raw) == "OK"
    assert world.call("router", f"{FORECASTER}/Forecast", raw) == "OK"
    growth = {c.name: rss_bytes(c.process.pid) - world.rss_before[c.name] for c in world.components}
    print("RSS growth over the fuzzing (MiB):", {k: round(v / 2**20, 1) for k, v in growth.items()})
    if os.environ.get("CANARYCAST_FUZZ_REPORT"):
        Path(os.environ["CANARYCAST_FUZZ_REPORT"]).write_text(
            __import__("json").dumps(
                {
                    "cases": dict(FUZZ_CASES),
                    "rss_before_mib": {k: v / 2**20 for k, v in world.rss_before.items()},
                    "rss_growth_mib": {k: v / 2**20 for k, v in growth.items()},
                },
                indent=2,
            )
        )
    for name, grew in growth.items():
        assert grew < RSS_GROWTH_LIMIT, f"{name} grew by {grew / 2**20:.0f} MiB"
