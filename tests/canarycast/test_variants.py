"""canarycast.variants: the enum stands in for the bare strings wherever they travel."""

from __future__ import annotations

import json

from canarycast import headers
from canarycast.variants import VARIANTS, Variant
from router.rollout import analysis
from router.traffic import routing


def test_variants_are_their_strings() -> None:
    assert [str(v) for v in VARIANTS] == ["stable", "canary"]
    assert Variant.STABLE == "stable" and hash(Variant.CANARY) == hash("canary")
    counts: dict[str, int] = dict.fromkeys(VARIANTS, 0)
    assert {"stable": 1}[Variant.STABLE] == 1 and counts["canary"] == 0
    assert json.dumps({Variant.CANARY: Variant.STABLE}) == '{"canary": "stable"}'
    assert f"{Variant.CANARY}" == "canary"


def test_every_module_names_the_same_two_variants_in_the_same_order() -> None:
    assert analysis.VARIANTS == VARIANTS == headers.VARIANTS
    assert (routing.STABLE, routing.CANARY) == VARIANTS
