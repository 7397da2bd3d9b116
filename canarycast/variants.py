"""The two variants a rollout compares; each is also the registry alias of what it serves.

A `StrEnum`: members compare and hash equal to their strings, so spans, metadata headers,
metric labels and registry aliases that carry the bare strings need no conversion.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["VARIANTS", "Variant"]


class Variant(StrEnum):
    STABLE = "stable"  #: the version that answers by default; the alias promotion moves
    CANARY = "canary"  #: the candidate under rollout; takes the rollout's weight of calls


#: Both, in the order of the analyzer's variant index (0 stable, 1 canary).
VARIANTS: tuple[Variant, Variant] = (Variant.STABLE, Variant.CANARY)
