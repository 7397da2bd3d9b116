"""Where a Forecast call goes: a pure function of (policy, call), no I/O.

Split mode sends a fraction `canary_weight` of calls to the canary. With a
sticky key (the default), the key is hashed to a position u in [0, 1) and the
call goes to the canary when u < weight: a series keeps its variant while the
weight is unchanged, and raising the weight only moves series *into* the
canary (monotone). A call carrying several series is routed by the id of its
**first** series. Without a sticky key each call draws u at random.

Shadow mode is split mode at weight 0: stable answers every call.

Mirroring (dual-run): the variant that does not answer gets a copy of the call
off the request path, for a fraction `mirror_fraction` of sampled calls, so that
both models forecast the same series and are scored on the same actuals.

The analysis sample: a share `analysis_fraction` of series is analysed (their
calls get dual-run copies and forecast records); the rest are routed and counted
only. A series is in the sample when its position under a second hash (a blake2b
keyed apart from the routing one, so the sample does not lean to either variant)
is below the fraction: the same series are sampled on every router and at every
call, so each sampled series' pairs stay whole, and the analyzer's cost follows
the sample, not the traffic. A call is sampled by its first series, as it is
routed.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from enum import StrEnum

STABLE = "stable"
CANARY = "canary"


class Mode(StrEnum):
    SPLIT = "split"  #: a fraction `canary_weight` of calls is answered by the canary
    SHADOW = "shadow"  #: stable answers every call; the canary only gets copies


class Reason(StrEnum):
    """Why a call went where it went (recorded on the router's span)."""

    WEIGHT = "weight"  #: a random draw against the canary weight (no sticky key)
    STICKY = "sticky"  #: the sticky key's position against the canary weight
    HEADER = "header"  #: the caller forced the variant with x-canarycast-variant
    FAILOVER = "failover"  #: the chosen variant was unreachable or not serving
    SHADOW = "shadow"  #: shadow mode: stable answers every call
    ONLY_STABLE = "only-stable"  #: no canary backend is configured


class StickyKey(StrEnum):
    SERIES_ID = "series_id"  #: the id of the call's first series
    NONE = "none"  #: no stickiness: each call draws at random


@dataclass(frozen=True)
class RoutingPolicy:
    canary_weight: float = 0.0
    mode: Mode = Mode.SPLIT
    sticky_key: StickyKey = StickyKey.SERIES_ID
    mirror_fraction: float = 1.0
    has_canary: bool = True
    analysis_fraction: float = 1.0

    def __post_init__(self) -> None:
        for name in ("canary_weight", "mirror_fraction", "analysis_fraction"):
            value = getattr(self, name)
            valid = isinstance(value, int | float) and math.isfinite(value) and 0 <= value <= 1
            if not valid:
                raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
        object.__setattr__(self, "mode", Mode(self.mode))
        object.__setattr__(self, "sticky_key", StickyKey(self.sticky_key))

    @property
    def effective_weight(self) -> float:
        if self.mode is Mode.SHADOW or not self.has_canary:
            return 0.0
        return float(self.canary_weight)


@dataclass(frozen=True)
class Decision:
    variant: str
    reason: Reason
    mirror: str | None  # the variant that gets a copy off the request path, if any
    sampled: bool = True  # the call is in the analysis sample (copied and recorded)

    @property
    def other(self) -> str:
        return CANARY if self.variant == STABLE else STABLE


def key_position(key: str) -> float:
    """A stable position in [0, 1) for a routing key (blake2b, the same on every router)."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


_SAMPLE_PERSON = b"canarycast-samp"  # keys the sample's hash apart from the routing one


def sample_position(key: str) -> float:
    """A stable position in [0, 1) for the analysis sample, independent of `key_position`."""
    digest = hashlib.blake2b(key.encode(), digest_size=8, person=_SAMPLE_PERSON).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def in_sample(fraction: float, series_id: str | None) -> bool:
    """Whether a series is in the analysis sample of `fraction` (all of it at 1)."""
    if fraction >= 1.0:
        return True
    if fraction <= 0.0 or series_id is None:
        return False
    return sample_position(series_id) < fraction


def decide(
    policy: RoutingPolicy,
    key: str | None,
    forced: str | None,
    draw: float,
    mirror_draw: float,
) -> Decision:
    """Route one call. `draw`/`mirror_draw` are uniform in [0, 1) (the caller's RNG)."""
    if forced is not None:
        variant, reason = forced, Reason.HEADER
    elif not policy.has_canary:
        variant, reason = STABLE, Reason.ONLY_STABLE
    elif policy.mode is Mode.SHADOW:
        variant, reason = STABLE, Reason.SHADOW
    else:
        sticky = policy.sticky_key is StickyKey.SERIES_ID and key is not None
        u = key_position(key) if sticky and key is not None else draw
        variant = CANARY if u < policy.effective_weight else STABLE
        reason = Reason.STICKY if sticky else Reason.WEIGHT
    sampled = in_sample(policy.analysis_fraction, key)
    mirror = None
    if sampled and policy.has_canary and mirror_draw < policy.mirror_fraction:
        mirror = CANARY if variant == STABLE else STABLE
    return Decision(variant, reason, mirror, sampled)
