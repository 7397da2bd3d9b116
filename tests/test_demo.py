"""`make demo`'s code path, shortened (two-step rollouts): real processes, real data."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path


def test_the_demo_promotes_one_candidate_and_rolls_back_the_other(tmp_path: Path) -> None:
    def demo() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cli.main", "demo", "--quick", "--workdir", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=400,
        )

    out = demo()
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "trained in" in out.stdout
    record = json.loads((tmp_path / "report" / "rollouts.json").read_text())
    act1, act2 = record["acts"]
    assert (act1["outcome"], act2["outcome"]) == ("promoted", "rolled_back")
    assert act1["candidate"] == record["models"]["v2"]["version"]
    assert act1["served_after"] == act1["candidate"] == act2["served_after"]
    assert record["failed_calls"] == 0
    assert set(record["exit_codes"].values()) == {0} and len(record["exit_codes"]) == 3
    # the better candidate really is better offline, the worse one really worse
    scores = {k: v["scores"]["mase"] for k, v in record["models"].items()}
    assert scores["v2"] < scores["v1"] and scores["v2"] < scores["v3"]
    # the data behind the plots: weight steps, both error curves, the judge's interval
    tl = act1["timeline"]
    assert {0.5, 1.0} <= set(tl["weight"]) and tl["weight"][-1] == 0.0
    assert len(tl["t"]) > 5 and tl["t"] == sorted(tl["t"])
    for curve in ("stable_error", "canary_error", "ratio", "lower", "upper"):
        assert sum(math.isfinite(v) for v in tl[curve]) > 3, curve
    final = [
        (r, lo, hi)
        for r, lo, hi in zip(tl["ratio"], tl["lower"], tl["upper"], strict=True)
        if math.isfinite(hi)
    ][-1]
    assert final[1] <= final[0] <= final[2] < 1.05
    assert [d["action"] for d in act1["decisions"]][-1] == "promote"
    assert [d["action"] for d in act2["decisions"]][-1] == "rollback"
    assert "ratio" in act2["reason"] and "> 1.05" in act2["reason"]
    for png in ("act1.png", "act2.png"):
        data = (tmp_path / "report" / png).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 20_000
    # a second run in a row works and reuses the trained models
    again = demo()
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert again.stdout.count("reused (same data, recipe and code)") == 3
