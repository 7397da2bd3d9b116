"""Tests for the directory model registry."""

from __future__ import annotations

import json
import multiprocessing as mp
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from server.lifecycle.registry import (
    CorruptAliasError,
    CorruptVersionError,
    InvalidReferenceError,
    ModelNotFoundError,
    ModelRef,
    ModelVersion,
    Registry,
    RegistryError,
    content_digest,
)

CONFIG: dict[str, Any] = {"lookback": 8, "hidden": 4, "quantiles": [0.1, 0.5, 0.9]}
META: dict[str, Any] = {
    "dataset": "seattle-temps",
    "dataset_hash": "ab" * 32,
    "parameters": {"epochs": 2},
    "scores": {"mae": 1.5},
    "code_version": "test",
}


def make_state(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    state = {f"lstm.{k}": v for k, v in torch.nn.LSTM(1, 4).state_dict().items()}
    state.update({f"head.{k}": v for k, v in torch.nn.Linear(4, 3).state_dict().items()})
    return state


@pytest.fixture
def reg(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "registry")


@pytest.fixture
def two(reg: Registry) -> tuple[ModelVersion, ModelVersion]:
    a = reg.register("temps", make_state(0), CONFIG, {**META, "created_at": "2024-01-01T00:00:00Z"})
    b = reg.register("temps", make_state(1), CONFIG, {**META, "created_at": "2024-01-02T00:00:00Z"})
    return a, b


# ---- register / get / load --------------------------------------------------


def test_root_created_lazily(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "r")
    assert reg.models() == []
    assert not (tmp_path / "r").exists()
    reg.register("m", make_state(), CONFIG, META)
    assert reg.models() == ["m"]


def test_round_trip(reg: Registry) -> None:
    state = make_state()
    mv = reg.register("temps", state, CONFIG, META)
    assert len(mv.version) == 12 and mv.digest.startswith(mv.version)
    assert mv.digest == content_digest(state, CONFIG)
    assert mv.path == reg.root / "temps" / "versions" / mv.version
    got = reg.get("temps", mv.version)
    assert got == mv
    assert got.config == CONFIG
    for key, value in META.items():
        assert got.metadata[key] == value
    assert got.metadata["name"] == "temps"
    assert got.metadata["version"] == mv.version
    assert got.metadata["digest"] == mv.digest
    assert got.metadata["created_at"].endswith("Z")
    loaded_mv, loaded = reg.load("temps", mv.version)
    assert loaded_mv == mv
    assert loaded.keys() == state.keys()
    for key in state:
        assert torch.equal(loaded[key], state[key])
        assert loaded[key].dtype == state[key].dtype


def test_created_at_kept_when_given(reg: Registry) -> None:
    mv = reg.register("m", make_state(), CONFIG, {"created_at": "2020-05-01T12:00:00+00:00"})
    assert reg.get("m", mv.version).metadata["created_at"] == "2020-05-01T12:00:00+00:00"


def test_same_content_same_version_first_metadata_kept(reg: Registry) -> None:
    a = reg.register("m", make_state(0), CONFIG, {"run": 1})
    b = reg.register("m", make_state(0), dict(CONFIG), {"run": 2})
    assert a.version == b.version
    assert b.metadata["run"] == 1
    assert reg.get("m", a.version).metadata["run"] == 1
    assert len(reg.versions("m")) == 1


def test_different_content_different_version(reg: Registry) -> None:
    a = reg.register("m", make_state(0), CONFIG, META)
    b = reg.register("m", make_state(1), CONFIG, META)
    c = reg.register("m", make_state(0), {**CONFIG, "hidden": 5}, META)
    state = make_state(0)
    state["head.bias"] = state["head.bias"].double()
    d = reg.register("m", state, CONFIG, META)
    assert len({a.version, b.version, c.version, d.version}) == 4


def test_digest_deterministic() -> None:
    d1 = content_digest(make_state(3), CONFIG)
    d2 = content_digest(make_state(3), dict(reversed(list(CONFIG.items()))))
    shuffled = dict(reversed(list(make_state(3).items())))
    assert d1 == d2 == content_digest(shuffled, CONFIG)
    # A non-contiguous view hashes like its contiguous copy.
    t = torch.arange(6.0).reshape(2, 3)
    assert content_digest({"w": t.t()}, {}) == content_digest({"w": t.t().contiguous()}, {})
    # Shape and dtype count, not just bytes.
    assert content_digest({"w": t}, {}) != content_digest({"w": t.reshape(3, 2)}, {})
    assert content_digest({"w": t}, {}) != content_digest({"w": t.view(torch.int32)}, {})
    assert len(d1) == 64


def test_register_rejects_bad_input(reg: Registry) -> None:
    with pytest.raises(InvalidReferenceError, match="Bad"):
        reg.register("Bad", make_state(), CONFIG, META)
    with pytest.raises(RegistryError, match="JSON"):
        reg.register("m", make_state(), {"x": object()}, META)
    with pytest.raises(RegistryError, match="Tensor"):
        reg.register("m", {"w": [1.0]}, CONFIG, META)  # type: ignore[dict-item]  # not a tensor, on purpose


def test_versions_sorted_and_models(reg: Registry, two: tuple[ModelVersion, ModelVersion]) -> None:
    a, b = two
    c = reg.register("temps", make_state(2), CONFIG, {"created_at": "2023-12-31T00:00:00+00:00"})
    assert [v.version for v in reg.versions("temps")] == [c.version, a.version, b.version]
    reg.register("other.model_1", make_state(), CONFIG, META)
    assert reg.models() == ["other.model_1", "temps"]
    with pytest.raises(ModelNotFoundError, match="temps"):
        reg.versions("nope")


def test_version_prefix(reg: Registry, two: tuple[ModelVersion, ModelVersion]) -> None:
    a, _ = two
    assert reg.get("temps", a.version[:6]).version == a.version
    assert reg.get("temps", a.digest).version == a.version
    with pytest.raises(InvalidReferenceError, match="version"):
        reg.get("temps", a.version[:5])
    with pytest.raises(InvalidReferenceError):
        reg.get("temps", a.version.upper())
    with pytest.raises(ModelNotFoundError, match=a.version):
        reg.get("temps", "ffffff" if not a.version.startswith("ffffff") else "000000")
    with pytest.raises(ModelNotFoundError, match="models: temps"):
        reg.get("nope", a.version)


def test_ambiguous_prefix(reg: Registry, two: tuple[ModelVersion, ModelVersion]) -> None:
    a, _ = two
    # Fake a second version sharing a 6-char prefix (a copy under another id).
    twin = a.version[:6] + ("000000" if a.version[6:] != "000000" else "111111")
    (reg.root / "temps" / "versions" / twin).mkdir()
    with pytest.raises(InvalidReferenceError, match="ambiguous"):
        reg.get("temps", a.version[:6])
    assert reg.get("temps", a.version).version == a.version


# ---- aliases ----------------------------------------------------------------


def test_aliases(reg: Registry, two: tuple[ModelVersion, ModelVersion]) -> None:
    a, b = two
    assert reg.aliases("temps") == {}
    assert reg.get_alias("temps", "stable") is None
    reg.set_alias("temps", "stable", a.version)
    reg.set_alias("temps", "canary", b.version[:7])
    assert reg.get_alias("temps", "stable") == a.version
    assert reg.aliases("temps") == {"canary": b.version, "stable": a.version}
    assert reg.resolve("temps@canary") == b
    assert reg.resolve(ModelRef("temps", "stable", None)) == a
    assert reg.resolve(f"temps:{b.version[:8]}") == b
    reg.set_alias("temps", "stable", b.version)  # move
    assert reg.resolve("temps@stable") == b
    reg.delete_alias("temps", "canary")
    assert reg.aliases("temps") == {"stable": b.version}
    with pytest.raises(ModelNotFoundError, match="stable="):
        reg.delete_alias("temps", "canary")
    with pytest.raises(ModelNotFoundError, match=f"stable={b.version}"):
        reg.resolve("temps@canary")
    data = json.loads((reg.root / "temps" / "aliases.json").read_text())
    assert data == {"stable": b.version}


def test_alias_refused(reg: Registry, two: tuple[ModelVersion, ModelVersion]) -> None:
    a, _ = two
    missing = "000000000000" if a.version != "000000000000" else "111111111111"
    with pytest.raises(ModelNotFoundError, match="versions:"):
        reg.set_alias("temps", "stable", missing)
    with pytest.raises(InvalidReferenceError, match="alias"):
        reg.set_alias("temps", "Stable", a.version)
    with pytest.raises(ModelNotFoundError, match="nope"):
        reg.set_alias("nope", "stable", a.version)
    assert reg.aliases("temps") == {}


def test_alias_to_deleted_version(reg: Registry, two: tuple[ModelVersion, ModelVersion]) -> None:
    a, _ = two
    reg.set_alias("temps", "stable", a.version)
    shutil.rmtree(a.path)
    with pytest.raises(ModelNotFoundError, match="temps@stable"):
        reg.resolve("temps@stable")


@pytest.mark.parametrize(
    "content", [b"", b"{", b'{"stable": "abc', b"[]", b'{"stable": 3}', b"\xff"]
)
def test_corrupt_aliases(
    reg: Registry, two: tuple[ModelVersion, ModelVersion], content: bytes
) -> None:
    a, _ = two
    reg.set_alias("temps", "stable", a.version)
    (reg.root / "temps" / "aliases.json").write_bytes(content)
    with pytest.raises(CorruptAliasError, match=r"aliases\.json"):
        reg.get_alias("temps", "stable")
    with pytest.raises(CorruptAliasError):
        reg.resolve("temps@stable")
    with pytest.raises(CorruptAliasError):
        reg.aliases("temps")
    with pytest.raises(CorruptAliasError):
        reg.set_alias("temps", "canary", a.version)
    assert (reg.root / "temps" / "aliases.json").read_bytes() == content


# ---- references -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ref"),
    [
        ("temps@stable", ModelRef("temps", "stable", None)),
        ("a.b_c-1@canary-2", ModelRef("a.b_c-1", "canary-2", None)),
        ("temps:abcdef", ModelRef("temps", None, "abcdef")),
        (" temps:0123456789ab ", ModelRef("temps", None, "0123456789ab")),
    ],
)
def test_ref_parse(text: str, ref: ModelRef) -> None:
    assert ModelRef.parse(text) == ref
    assert str(ModelRef.parse(text)) == text.strip()


@pytest.mark.parametrize(
    "text",
    [
        "temps",
        "",
        "@stable",
        "temps@",
        "temps:",
        "Temps@stable",
        "temps@Stable",
        "temps@1abc",
        "temps@" + "a" * 33,
        "x" * 65 + "@stable",
        "temps:abcde",
        "temps:ABCDEF",
        "temps:xyzxyz",
        "temps@stable:abcdef",
        "temps@a@b",
        "temps:abcdef:abcdef",
        "../etc@stable",
    ],
)
def test_ref_parse_bad(text: str) -> None:
    with pytest.raises(InvalidReferenceError):
        ModelRef.parse(text)


def test_ref_needs_one_of() -> None:
    with pytest.raises(InvalidReferenceError):
        ModelRef("temps", None, None)
    with pytest.raises(InvalidReferenceError):
        ModelRef("temps", "stable", "abcdef")


# ---- corruption -------------------------------------------------------------


def test_flipped_byte(reg: Registry) -> None:
    mv = reg.register("m", make_state(), CONFIG, META)
    weights = mv.path / "weights.pt"
    data = bytearray(weights.read_bytes())
    # Flip a byte inside the tensor data: find the bias of the head by its raw bytes.
    raw = make_state()["head.bias"].numpy().tobytes()
    at = bytes(data).index(raw)
    data[at] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CorruptVersionError, match=mv.version):
        reg.load("m", mv.version)


def test_flipped_byte_anywhere(reg: Registry) -> None:
    mv = reg.register("m", make_state(), CONFIG, META)
    weights = mv.path / "weights.pt"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(CorruptVersionError, match=f"'m' version {mv.version}"):
        reg.load("m", mv.version)


def test_truncated_weights(reg: Registry) -> None:
    mv = reg.register("m", make_state(), CONFIG, META)
    weights = mv.path / "weights.pt"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CorruptVersionError, match=mv.version):
        reg.load("m", mv.version)
    weights.write_bytes(b"")
    with pytest.raises(CorruptVersionError, match=r"weights\.pt"):
        reg.load("m", mv.version)
    weights.unlink()
    with pytest.raises(CorruptVersionError, match="missing"):
        reg.load("m", mv.version)


def test_missing_config(reg: Registry) -> None:
    mv = reg.register("m", make_state(), CONFIG, META)
    (mv.path / "config.json").unlink()
    with pytest.raises(CorruptVersionError, match=r"config\.json"):
        reg.load("m", mv.version)
    with pytest.raises(CorruptVersionError, match=mv.version):
        reg.get("m", mv.version)


def test_edited_config(reg: Registry) -> None:
    mv = reg.register("m", make_state(), CONFIG, META)
    (mv.path / "config.json").write_text(json.dumps({**CONFIG, "hidden": 8}))
    reg.get("m", mv.version)  # get does not hash
    with pytest.raises(CorruptVersionError, match="hash mismatch"):
        reg.load("m", mv.version)


def test_bad_metadata(reg: Registry) -> None:
    mv = reg.register("m", make_state(), CONFIG, META)
    (mv.path / "metadata.json").write_text('{"digest": ')
    with pytest.raises(CorruptVersionError, match=r"metadata\.json"):
        reg.get("m", mv.version)
    (mv.path / "metadata.json").write_text(json.dumps({**META, "digest": "0" * 64}))
    with pytest.raises(CorruptVersionError, match="does not describe"):
        reg.get("m", mv.version)


def test_reregister_repairs_corrupt_version(reg: Registry) -> None:
    state = make_state()
    mv = reg.register("m", state, CONFIG, META)
    (mv.path / "weights.pt").write_bytes(b"garbage")
    again = reg.register("m", state, CONFIG, META)
    assert again.version == mv.version
    _, loaded = reg.load("m", mv.version)
    assert torch.equal(loaded["head.weight"], state["head.weight"])
    assert [v.version for v in reg.versions("m")] == [mv.version]


def test_temp_dirs_ignored(reg: Registry, two: tuple[ModelVersion, ModelVersion]) -> None:
    a, b = two
    (reg.root / ".tmp-half").mkdir()
    (reg.root / "temps" / "versions" / f".tmp-{a.version}-x").mkdir()
    (reg.root / "temps" / "versions" / ".tmp-half" / "weights.pt").parent.mkdir()
    (reg.root / "temps" / ".aliases.json.xyz").write_text("{")
    assert reg.models() == ["temps"]
    assert [v.version for v in reg.versions("temps")] == [a.version, b.version]
    assert reg.aliases("temps") == {}
    assert reg.get("temps", a.version[:6]).version == a.version


# ---- concurrency ------------------------------------------------------------


def test_reader_never_sees_partial_alias(
    reg: Registry, two: tuple[ModelVersion, ModelVersion]
) -> None:
    a, b = two
    reg.set_alias("temps", "stable", a.version)
    stop = threading.Event()
    seen: set[str] = set()
    errors: list[BaseException] = []
    reads = 0

    def reader() -> None:
        nonlocal reads
        reader_reg = Registry(reg.root)
        while not stop.is_set():
            try:
                seen.add(reader_reg.resolve("temps@stable").version)
                reads += 1
            except BaseException as exc:
                errors.append(exc)
                return

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(200):
            reg.set_alias("temps", "stable", (b if i % 2 == 0 else a).version)
    finally:
        stop.set()
        thread.join()
    assert errors == []
    assert reads > 0
    assert seen <= {a.version, b.version}
    assert reg.get_alias("temps", "stable") == a.version


def test_concurrent_alias_writers_lose_nothing(
    reg: Registry, two: tuple[ModelVersion, ModelVersion]
) -> None:
    a, b = two

    def writer(i: int) -> None:
        for j in range(10):
            Registry(reg.root).set_alias("temps", f"w{i}-{j}", (a if j % 2 else b).version)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(reg.aliases("temps")) == 40


def _register_in_child(root: str, start: Any, out: Any) -> None:
    start.wait(30)
    try:
        out.put(Registry(root).register("temps", make_state(7), CONFIG, META).version)
    except BaseException as exc:
        out.put(f"error: {exc!r}")


def test_two_processes_register_same_content(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    start = ctx.Event()
    out = ctx.Queue()
    root = str(tmp_path / "registry")
    procs = [ctx.Process(target=_register_in_child, args=(root, start, out)) for _ in range(2)]
    for p in procs:
        p.start()
    start.set()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    expected = content_digest(make_state(7), CONFIG)[:12]
    assert results == [expected, expected]
    reg = Registry(root)
    assert [v.version for v in reg.versions("temps")] == [expected]
    reg.load("temps", expected)
    leftovers = [p.name for p in (reg.root / "temps" / "versions").iterdir()]
    assert leftovers == [expected]


def test_rename_race_lost(reg: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    """The version appears between the existence check and the rename: both agree."""
    state = make_state()
    first = reg.register("m", state, CONFIG, {"run": 1})
    original = Registry._existing
    calls = 0

    def stale_existing(self: Registry, name: str, version: str) -> ModelVersion | None:
        nonlocal calls
        calls += 1
        return None if calls == 1 else original(self, name, version)

    monkeypatch.setattr(Registry, "_existing", stale_existing)
    second = reg.register("m", state, CONFIG, {"run": 2})
    assert calls == 2
    assert second.version == first.version
    assert second.metadata["run"] == 1
    assert [p.name for p in (reg.root / "m" / "versions").iterdir()] == [first.version]
