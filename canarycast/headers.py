"""gRPC metadata keys canarycast reads and writes."""

from __future__ import annotations

from collections.abc import Iterable

from canarycast.errors import InvalidArgument

#: Sent by a client to a router to force a variant (smoke-testing a canary before it
#: takes traffic, as Istio's header match); sent by a router to a model server to
#: label the call (answer and spans) with the variant it was routed as.
VARIANT_HEADER = "x-canarycast-variant"
VARIANTS = ("stable", "canary")


def metadata_value(metadata: Iterable[tuple[str, str | bytes]] | None, key: str) -> str | None:
    for k, v in metadata or ():
        if k == key:
            return v.decode() if isinstance(v, bytes) else v
    return None


def requested_variant(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The variant named by `x-canarycast-variant`, or None; anything else is refused."""
    value = metadata_value(metadata, VARIANT_HEADER)
    if value is None:
        return None
    if value not in VARIANTS:
        raise InvalidArgument(
            f"metadata {VARIANT_HEADER}", f"must be one of {', '.join(VARIANTS)}, got {value!r}"
        )
    return value
