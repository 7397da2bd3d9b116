"""A directory model registry: content-addressed versions and atomically moved aliases.

Layout::

    ROOT/NAME/versions/VERSION/weights.pt     torch state_dict (torch.save)
    ROOT/NAME/versions/VERSION/config.json    model config, as given
    ROOT/NAME/versions/VERSION/metadata.json  lineage + name, version, digest, created_at
    ROOT/NAME/aliases.json                    {"alias": "version", ...}, replaced as a whole
    ROOT/NAME/.aliases.lock                   fcntl lock held by alias writers

VERSION is the first 12 hex chars of `content_digest` (sha256 over config and
weights). A version is written into a `.tmp-*` directory and renamed into place,
so readers see it whole or not at all; aliases.json is replaced with os.replace,
so readers take no lock. Names starting with "." are never listed. `load`
recomputes the digest and refuses a tampered or half-written version.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

if TYPE_CHECKING:  # torch is imported where weights are read or written: listing versions,
    import torch  # moving aliases and the CLI around them start without it

log = structlog.get_logger("canarycast.registry")

MODEL_NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
ALIAS_RE = re.compile(r"[a-z][a-z0-9-]{0,31}")
VERSION_RE = re.compile(r"[0-9a-f]{12}")
VERSION_PREFIX_RE = re.compile(r"[0-9a-f]{6,64}")
VERSION_LEN = 12
MIN_PREFIX = 6

WEIGHTS = "weights.pt"
CONFIG = "config.json"
METADATA = "metadata.json"
ALIASES = "aliases.json"
ALIASES_LOCK = ".aliases.lock"


class RegistryError(Exception):
    """Base of every registry error; the message names model, version or path."""


class ModelNotFoundError(RegistryError):
    """Unknown model, version or alias; the message lists what exists."""


class CorruptVersionError(RegistryError):
    """A version whose files are missing, unreadable, malformed or do not match its hash."""


class CorruptAliasError(RegistryError):
    """An aliases.json that is not a valid JSON object of alias -> version."""


class InvalidReferenceError(RegistryError):
    """A malformed model name, alias, version or `NAME@ALIAS` / `NAME:VERSION` reference."""


@dataclass(frozen=True)
class ModelVersion:
    """One registered version (metadata only; `Registry.load` returns the weights)."""

    name: str
    version: str
    digest: str
    config: dict[str, Any] = field(compare=False)
    metadata: dict[str, Any] = field(compare=False)
    path: Path = field(compare=False)


def _canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def content_digest(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> str:
    """sha256 over canonical config JSON and each tensor (sorted key, dtype, shape, raw bytes)."""
    import torch

    h = hashlib.sha256()
    cfg = _canonical_json(dict(config))
    h.update(b"canarycast-model-v1\0config\0%d\0" % len(cfg))
    h.update(cfg)
    for key in sorted(state_dict):
        tensor = state_dict[key]
        if not isinstance(key, str) or not isinstance(tensor, torch.Tensor):
            raise TypeError(f"state_dict entry {key!r} must map a str to a torch.Tensor")
        t = tensor.detach().cpu().contiguous()
        raw = t.reshape(-1).view(torch.uint8).numpy()
        header = _canonical_json(
            {"key": key, "dtype": str(t.dtype), "shape": list(t.shape), "nbytes": raw.nbytes}
        )
        h.update(b"\0tensor\0%d\0" % len(header))
        h.update(header)
        h.update(raw.data)
    return h.hexdigest()


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not MODEL_NAME_RE.fullmatch(name):
        raise InvalidReferenceError(
            f"invalid model name {name!r}: expected [a-z0-9][a-z0-9._-]{{0,63}}"
        )
    return name


def _check_alias(name: str, alias: str) -> str:
    if not isinstance(alias, str) or not ALIAS_RE.fullmatch(alias):
        raise InvalidReferenceError(
            f"invalid alias {alias!r} for model {name!r}: expected [a-z][a-z0-9-]{{0,31}}"
        )
    return alias


def _check_version(name: str, version: str) -> str:
    if not isinstance(version, str) or not VERSION_PREFIX_RE.fullmatch(version):
        raise InvalidReferenceError(
            f"invalid version {version!r} for model {name!r}: expected {MIN_PREFIX} to 64 "
            "lowercase hex characters"
        )
    return version


@dataclass(frozen=True)
class ModelRef:
    """A parsed reference: `NAME@ALIAS` or `NAME:VERSION` (exactly one of alias, version)."""

    name: str
    alias: str | None
    version: str | None

    def __post_init__(self) -> None:
        _check_name(self.name)
        if (self.alias is None) == (self.version is None):
            raise InvalidReferenceError(
                f"reference to model {self.name!r} needs exactly one of alias or version"
            )
        if self.alias is not None:
            _check_alias(self.name, self.alias)
        if self.version is not None:
            _check_version(self.name, self.version)

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        """Parse `NAME@ALIAS` or `NAME:VERSION`; InvalidReferenceError otherwise."""
        if not isinstance(text, str):
            raise InvalidReferenceError(f"model reference must be a string, got {text!r}")
        s = text.strip()
        has_at, has_colon = "@" in s, ":" in s
        if has_at == has_colon or s.count("@") > 1 or s.count(":") > 1:
            raise InvalidReferenceError(
                f"invalid model reference {text!r}: expected NAME@ALIAS or NAME:VERSION"
            )
        if has_at:
            name, alias = s.split("@")
            return cls(name, alias, None)
        name, version = s.split(":")
        return cls(name, None, version)

    def __str__(self) -> str:
        return (
            f"{self.name}@{self.alias}" if self.alias is not None else f"{self.name}:{self.version}"
        )


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _created_key(mv: ModelVersion) -> tuple[float, str, str]:
    raw = str(mv.metadata.get("created_at", ""))
    try:
        ts = datetime.fromisoformat(raw)
        if ts.tzinfo is None:
            ts = ts.replace(tzinfo=UTC)
        return (ts.timestamp(), raw, mv.version)
    except ValueError:
        return (float("inf"), raw, mv.version)


class Registry:
    """Models under one root directory (created on first write)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    # ---- paths and listings -------------------------------------------------

    def _model_dir(self, name: str) -> Path:
        return self.root / _check_name(name)

    def _versions_dir(self, name: str) -> Path:
        return self._model_dir(name) / "versions"

    def models(self) -> list[str]:
        """Registered model names, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(
            p.name
            for p in self.root.iterdir()
            if p.is_dir() and MODEL_NAME_RE.fullmatch(p.name) and (p / "versions").is_dir()
        )

    def _require_model(self, name: str) -> Path:
        model_dir = self._model_dir(name)
        if not (model_dir / "versions").is_dir():
            known = ", ".join(self.models()) or "none"
            raise ModelNotFoundError(
                f"unknown model {name!r} in registry {self.root} (models: {known})"
            )
        return model_dir

    def _version_ids(self, name: str) -> list[str]:
        vdir = self._require_model(name) / "versions"
        return sorted(p.name for p in vdir.iterdir() if VERSION_RE.fullmatch(p.name) and p.is_dir())

    def _resolve_version(self, name: str, version: str) -> str:
        """Full 12-char version id for a version or unique prefix (or full digest)."""
        _check_version(name, version)
        ids = self._version_ids(name)
        if len(version) >= VERSION_LEN:
            matches = [v for v in ids if v == version[:VERSION_LEN]]
        else:
            matches = [v for v in ids if v.startswith(version)]
        if not matches:
            known = ", ".join(ids) or "none"
            raise ModelNotFoundError(
                f"unknown version {version!r} of model {name!r} in {self.root / name} "
                f"(versions: {known})"
            )
        if len(matches) > 1:
            raise InvalidReferenceError(
                f"ambiguous version prefix {version!r} of model {name!r}: "
                f"matches {', '.join(matches)}"
            )
        return matches[0]

    def versions(self, name: str) -> list[ModelVersion]:
        """All versions of a model, sorted by created_at then version."""
        return sorted((self.get(name, v) for v in self._version_ids(name)), key=_created_key)

    # ---- versions -----------------------------------------------------------

    def get(self, name: str, version: str) -> ModelVersion:
        """Metadata of one version (no weights, no hash check); accepts a unique prefix."""
        version = self._resolve_version(name, version)
        path = self._versions_dir(name) / version
        config = self._read_json(name, version, path / CONFIG)
        metadata = self._read_json(name, version, path / METADATA)
        digest = metadata.get("digest")
        if (
            not isinstance(digest, str)
            or not re.fullmatch(r"[0-9a-f]{64}", digest)
            or digest[:VERSION_LEN] != version
            or metadata.get("version") != version
            or metadata.get("name") != name
        ):
            raise CorruptVersionError(
                f"model {name!r} version {version}: {path / METADATA} does not describe this "
                f"version (name={metadata.get('name')!r}, version={metadata.get('version')!r}, "
                f"digest={digest!r})"
            )
        return ModelVersion(name, version, digest, config, metadata, path)

    @staticmethod
    def _read_json(name: str, version: str, path: Path) -> dict[str, Any]:
        try:
            value = json.loads(path.read_bytes())
        except FileNotFoundError as exc:
            raise CorruptVersionError(f"model {name!r} version {version}: missing {path}") from exc
        except (OSError, ValueError) as exc:
            raise CorruptVersionError(
                f"model {name!r} version {version}: unreadable or invalid JSON in {path}: {exc}"
            ) from exc
        if not isinstance(value, dict):
            raise CorruptVersionError(
                f"model {name!r} version {version}: {path} is not a JSON object"
            )
        return value

    def load(self, name: str, version: str) -> tuple[ModelVersion, dict[str, torch.Tensor]]:
        """Version and its weights, after checking the content hash."""
        import torch

        mv = self.get(name, version)
        weights = mv.path / WEIGHTS
        where = f"model {name!r} version {mv.version}"
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        except FileNotFoundError as exc:
            raise CorruptVersionError(f"{where}: missing {weights}") from exc
        except Exception as exc:  # torch raises many kinds for a truncated/garbled file
            raise CorruptVersionError(f"{where}: unreadable weights {weights}: {exc}") from exc
        if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
        ):
            raise CorruptVersionError(f"{where}: {weights} is not a dict of str -> Tensor")
        actual = content_digest(state, mv.config)
        if actual != mv.digest:
            raise CorruptVersionError(
                f"{where}: content hash mismatch in {mv.path} (expected {mv.digest}, "
                f"got {actual}); the version was tampered with or is incomplete"
            )
        return mv, state

    def register(
        self,
        name: str,
        state_dict: Mapping[str, torch.Tensor],
        config: Mapping[str, Any],
        metadata: Mapping[str, Any],
    ) -> ModelVersion:
        """Store a version atomically; the same content returns the existing version."""
        import torch

        _check_name(name)
        try:
            cfg = json.loads(_canonical_json(dict(config)))
            meta = json.loads(_canonical_json(dict(metadata)))
        except (TypeError, ValueError) as exc:
            raise RegistryError(f"model {name!r}: config and metadata must be JSON: {exc}") from exc
        tensors = {}
        for key, value in state_dict.items():
            if not isinstance(key, str) or not isinstance(value, torch.Tensor):
                raise RegistryError(
                    f"model {name!r}: state_dict entry {key!r} must map a str to a Tensor"
                )
            tensors[key] = value.detach().cpu().contiguous()
        digest = content_digest(tensors, cfg)
        version = digest[:VERSION_LEN]

        existing = self._existing(name, version)
        if existing is not None:
            return existing

        meta.setdefault("created_at", datetime.now(UTC).isoformat().replace("+00:00", "Z"))
        meta.update(name=name, version=version, digest=digest)
        versions_dir = self._versions_dir(name)
        versions_dir.mkdir(parents=True, exist_ok=True)
        target = versions_dir / version
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=versions_dir))
        try:
            torch.save(tensors, tmp / WEIGHTS)
            with open(tmp / WEIGHTS, "rb+") as f:
                os.fsync(f.fileno())
            _write_synced(tmp / CONFIG, json.dumps(cfg, indent=2, sort_keys=True).encode())
            _write_synced(tmp / METADATA, json.dumps(meta, indent=2, sort_keys=True).encode())
            tmp.chmod(0o755)
            _fsync_dir(tmp)
            for _ in range(3):
                try:
                    os.rename(tmp, target)
                except OSError as exc:
                    if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                        raise
                    existing = self._existing(name, version)  # lost the race
                    if existing is not None:
                        return existing
                    continue
                _fsync_dir(versions_dir)
                return ModelVersion(name, version, digest, cfg, meta, target)
            raise RegistryError(f"model {name!r} version {version}: could not move into {target}")
        except OSError as exc:
            raise RegistryError(
                f"model {name!r} version {version}: cannot write {tmp}: {exc}"
            ) from exc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _existing(self, name: str, version: str) -> ModelVersion | None:
        """The stored version if present and sound; a corrupt one is moved aside."""
        path = self._versions_dir(name) / version
        if not path.exists():
            return None
        try:
            return self.load(name, version)[0]
        except CorruptVersionError as exc:
            aside = path.with_name(f".corrupt-{version}-{uuid.uuid4().hex[:8]}")
            with contextlib.suppress(FileNotFoundError):
                os.rename(path, aside)
                log.warning(
                    "corrupt_version_moved_aside",
                    model=name,
                    version=version,
                    path=str(aside),
                    error=str(exc),
                )
            return None

    # ---- aliases ------------------------------------------------------------

    def _read_aliases(self, name: str) -> dict[str, str]:
        path = self._require_model(name) / ALIASES
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise CorruptAliasError(f"model {name!r}: cannot read {path}: {exc}") from exc
        try:
            value = json.loads(raw)
        except ValueError as exc:
            raise CorruptAliasError(f"model {name!r}: invalid JSON in {path}: {exc}") from exc
        if not isinstance(value, dict) or not all(
            isinstance(k, str)
            and ALIAS_RE.fullmatch(k)
            and isinstance(v, str)
            and VERSION_RE.fullmatch(v)
            for k, v in value.items()
        ):
            raise CorruptAliasError(
                f"model {name!r}: {path} is not a JSON object of alias -> 12-hex version"
            )
        return value

    @contextlib.contextmanager
    def _aliases_locked(self, name: str) -> Iterator[dict[str, str]]:
        """Read-modify-write aliases.json under an exclusive fcntl lock."""
        model_dir = self._require_model(name)
        with open(model_dir / ALIASES_LOCK, "a+b") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                aliases = self._read_aliases(name)
                before = dict(aliases)
                yield aliases
                if aliases != before:
                    self._write_aliases(name, model_dir, aliases)
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    @staticmethod
    def _write_aliases(name: str, model_dir: Path, aliases: dict[str, str]) -> None:
        data = json.dumps(dict(sorted(aliases.items())), indent=2).encode()
        fd, tmp_name = tempfile.mkstemp(prefix=f".{ALIASES}.", dir=model_dir)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp_name, 0o644)
            os.replace(tmp_name, model_dir / ALIASES)
            _fsync_dir(model_dir)
        except OSError as exc:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)
            raise RegistryError(
                f"model {name!r}: cannot write {model_dir / ALIASES}: {exc}"
            ) from exc

    def set_alias(self, name: str, alias: str, version: str) -> None:
        """Point `alias` at an existing version (prefix accepted), atomically."""
        _check_alias(name, alias)
        full = self.get(name, version).version
        with self._aliases_locked(name) as aliases:
            aliases[alias] = full

    def get_alias(self, name: str, alias: str) -> str | None:
        """The version an alias points at, or None if unset."""
        _check_alias(name, alias)
        return self._read_aliases(name).get(alias)

    def aliases(self, name: str) -> dict[str, str]:
        """All aliases of a model: alias -> version."""
        return dict(sorted(self._read_aliases(name).items()))

    def delete_alias(self, name: str, alias: str) -> None:
        """Remove an alias; ModelNotFoundError if it is not set."""
        _check_alias(name, alias)
        with self._aliases_locked(name) as aliases:
            if alias not in aliases:
                raise ModelNotFoundError(self._unknown_alias(name, alias, aliases))
            del aliases[alias]

    def _unknown_alias(self, name: str, alias: str, aliases: Mapping[str, str]) -> str:
        known = ", ".join(f"{a}={v}" for a, v in sorted(aliases.items())) or "none"
        return f"unknown alias {alias!r} of model {name!r} in {self.root / name} (aliases: {known})"

    def resolve(self, ref: ModelRef | str) -> ModelVersion:
        """The version an alias or version (prefix) reference points at."""
        if isinstance(ref, str):
            ref = ModelRef.parse(ref)
        if ref.alias is not None:
            aliases = self._read_aliases(ref.name)
            target = aliases.get(ref.alias)
            if target is None:
                raise ModelNotFoundError(self._unknown_alias(ref.name, ref.alias, aliases))
            try:
                return self.get(ref.name, target)
            except ModelNotFoundError as exc:
                raise ModelNotFoundError(f"alias {ref} points at a missing version: {exc}") from exc
        assert ref.version is not None
        return self.get(ref.name, ref.version)
