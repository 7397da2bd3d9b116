"""Hypothesis profiles and a count of the fuzz cases run, printed at the end.

`CANARYCAST_FUZZ_PROFILE=soak` (what `make soak` sets) runs many more examples than
the default profile `ci`, which keeps the suite's share of `make test` small.
"""

from __future__ import annotations

import os
from collections import Counter

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile(
    "soak",
    max_examples=2000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.load_profile(os.environ.get("CANARYCAST_FUZZ_PROFILE", "ci"))

#: Fuzz cases sent, by target (server, router, controller) and kind of input; the root
#: conftest prints them at the end of the run (collected from every xdist worker).
FUZZ_CASES: Counter[str] = Counter()
