"""Defaults from the data: season lengths from the frequency, lookback and horizon from them.

A user with weekly, half-hourly or business-day data should not have to guess flags.
:func:`natural_seasons` names the cycles a pandas frequency has (a day and a week for
sub-daily data, a week and a year for daily data, a year for weekly, monthly and quarterly
data); :func:`derive` keeps those the series are long enough to learn and a window can
hold, and derives from them the lookback (the longest season plus a horizon, so the
network reads every season it models) and the horizon (a day of sub-daily data, two weeks
of daily data, a quarter of weekly data, a year of monthly data, ...). Every choice comes
with the reason it was made, which the registry stores (``metadata["defaults"]``) and
``GetModel`` and ``canarycast models show`` report. Flags given by the user win; a
season that the given lookback cannot hold is left out, and the reason says so.

Only pandas' offset parsing is needed: no torch, so the command line stays fast.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from pandas.tseries.frequencies import to_offset

__all__ = [
    "MAX_SEASON",
    "Defaults",
    "Season",
    "default_horizon",
    "derive",
    "natural_seasons",
    "primary_season",
]

#: Longest season a window is built to hold: past it (a week of 15-minute data, a day of
#: minutes) the LSTM's window would grow beyond what trains in minutes on two cores.
MAX_SEASON = 400
#: Training windows per series that a season must leave, at least, to be kept.
MIN_TRAIN_WINDOWS = 16
_DAY = 86_400
_QUARTERS = (pd.offsets.QuarterBegin, pd.offsets.QuarterEnd, pd.offsets.BQuarterEnd)
_WEEK = 7 * _DAY


@dataclass(frozen=True)
class Season:
    """A cycle of the data: its length in steps and what it is (``"daily"``, ...)."""

    length: int
    name: str


@dataclass(frozen=True)
class Defaults:
    """Config fields chosen from the data (``season_length``, ``extra_seasons``,
    ``lookback``, ``horizon``), and per field the reason, for the registry's metadata."""

    fields: dict[str, Any]
    reasons: dict[str, str] = field(default_factory=dict)

    def metadata(self) -> dict[str, dict[str, Any]]:
        """``{field: {"value": ..., "why": ...}}``: what was chosen, and why."""
        return {
            k: {"value": list(v) if isinstance(v, tuple) else v, "why": self.reasons[k]}
            for k, v in self.fields.items()
        }


def _seconds(freq: str) -> float | None:
    """Length of one step in seconds for fixed-length frequencies, else None."""
    off = to_offset(freq)
    if isinstance(off, pd.offsets.Tick | pd.offsets.Day):
        return pd.Timedelta(off).total_seconds()
    if isinstance(off, pd.offsets.Week):
        return float(_WEEK * off.n)
    return None


def natural_seasons(freq: str) -> tuple[Season, ...]:
    """The cycles of data at ``freq``, shortest first, before any length is checked.

    Sub-daily data: the day and the week (24 and 168 hourly, 48 and 336 half-hourly, 96
    and 672 every 15 minutes); minute data and finer also the hour. Daily: 7 and 365.
    Business-daily: 5 (the working week). Weekly: 52. Monthly: 12. Quarterly: 4.
    Semi-monthly: 24. Multiples divide (2-hourly: 12 and 84). Yearly and others: none.
    """
    off = to_offset(freq)
    offsets = pd.offsets
    out: list[Season] = []
    n = max(1, int(off.n))
    if isinstance(off, offsets.Week):
        if 52 % n == 0:
            out.append(Season(52 // n, "yearly"))
        return tuple(out)
    seconds = _seconds(freq)
    if seconds is not None and seconds > 0:
        if seconds < _DAY:
            cycles = [(3600, "hourly")] if seconds <= 60 else []
            cycles += [(_DAY, "daily"), (_WEEK, "weekly")]
            for period, name in cycles:
                m = period / seconds
                if m >= 2 and float(m).is_integer():
                    out.append(Season(int(m), name))
        else:
            days = seconds / _DAY
            weekly, yearly = 7 / days, 365 / days
            if weekly >= 2 and float(weekly).is_integer():
                out.append(Season(int(weekly), "weekly"))
            if yearly >= 2 and float(yearly).is_integer():
                out.append(Season(int(yearly), "yearly"))
        return tuple(out)
    if isinstance(off, offsets.BusinessDay) and n == 1:
        return (Season(5, "weekly (working days)"),)
    if isinstance(off, offsets.SemiMonthBegin | offsets.SemiMonthEnd) and n == 1:
        return (Season(24, "yearly"),)
    if isinstance(off, offsets.MonthBegin | offsets.MonthEnd | offsets.BusinessMonthBegin):
        if 12 % n == 0 and 12 // n >= 2:
            out.append(Season(12 // n, "yearly"))
    elif isinstance(off, offsets.BusinessMonthEnd) and n == 1:
        out.append(Season(12, "yearly"))
    elif n == 1 and isinstance(
        off, offsets.QuarterBegin | offsets.QuarterEnd | offsets.BQuarterEnd
    ):
        out.append(Season(4, "yearly"))
    return tuple(out)


def primary_season(freq: str) -> int:
    """The shortest natural season a window can hold (the base of MASE and of the
    seasonal-naive forecast), 1 when there is none: 24 hourly, 48 half-hourly, 60 for
    minutes (a day of minutes is longer than :data:`MAX_SEASON`), 7 daily, 5
    business-daily, 52 weekly, 12 monthly, 4 quarterly, 1 yearly."""
    for s in natural_seasons(freq):
        if s.length <= MAX_SEASON:
            return s.length
    return 1


def default_horizon(freq: str) -> tuple[int, str]:
    """Steps ahead a model forecasts by default, and why."""
    off = to_offset(freq)
    seconds = _seconds(freq)
    offsets = pd.offsets
    if isinstance(off, offsets.Week):
        return max(1, 13 // max(1, off.n)), "a quarter of weekly data"
    if seconds is not None and seconds < _DAY:
        day = _DAY / seconds
        if day >= 1 and float(day).is_integer() and day <= 96:
            return int(day), "one day ahead"
        steps = max(1, min(96, int(3600 * 8 // seconds)))
        return steps, f"{steps} steps ahead (a day is more steps than a head should hold)"
    if seconds is not None:
        days = seconds / _DAY
        return max(1, round(14 / days)), "two weeks ahead"
    if isinstance(off, offsets.BusinessDay):
        return 10, "two working weeks ahead"
    if isinstance(off, offsets.MonthBegin | offsets.MonthEnd | offsets.BusinessMonthBegin):
        return max(1, 12 // max(1, off.n)), "a year ahead"
    if isinstance(off, offsets.BusinessMonthEnd | offsets.SemiMonthBegin | offsets.SemiMonthEnd):
        return 12, "a year of monthly steps, six months of semi-monthly ones"
    if isinstance(off, offsets.QuarterBegin | offsets.QuarterEnd | offsets.BQuarterEnd):
        return 8, "two years of quarters ahead"
    if isinstance(off, offsets.YearBegin | offsets.YearEnd | offsets.BYearEnd):
        return 6, "six years ahead"
    return 8, "no calendar cycle known for this frequency: 8 steps ahead"


def _train_length(n: int) -> int:
    """Points in the training part of a series of ``n`` (the 70 % of split_points)."""
    return n - 2 * math.floor(n * 0.15 + 1e-9)


def derive(freq: str, lengths: Sequence[int], given: Mapping[str, Any] | None = None) -> Defaults:
    """Season lengths, lookback and horizon for series of ``lengths`` points at ``freq``.

    ``given`` holds the fields the user set (flags); those are kept as given and the
    others derived around them. A season is kept when it is at most :data:`MAX_SEASON`,
    shorter than a given lookback, and the shortest series' training part holds a window
    of it plus :data:`MIN_TRAIN_WINDOWS` training windows. The lookback is the longest
    kept season plus the horizon (plus one step when there is no season), within what the
    shortest series allows; the horizon comes from :func:`default_horizon`, at most two
    thirds of the shortest test part.
    """
    given = dict(given or {})
    shortest = min(lengths) if lengths else 0
    train_len = _train_length(shortest)
    test_len = math.floor(shortest * 0.15 + 1e-9)
    reasons: dict[str, str] = {}
    fields: dict[str, Any] = {}

    if "horizon" in given:
        horizon = int(given["horizon"])
        reasons["horizon"] = "given"
    else:
        horizon, why = default_horizon(freq)
        cap = max(1, 2 * test_len // 3)
        if horizon > cap:
            reasons["horizon"] = (
                f"{why} would be {horizon}; the shortest series ({shortest} points) has a "
                f"test part of {test_len} points, and a horizon fits two thirds of it: {cap}"
            )
            horizon = cap
        else:
            reasons["horizon"] = why
    fields["horizon"] = horizon

    lookback_given = int(given["lookback"]) if "lookback" in given else None
    kept: list[Season] = []
    dropped: list[str] = []
    if "season_length" in given:
        m0 = int(given["season_length"])
        kept.append(Season(m0, "given"))
        extras = tuple(int(m) for m in given.get("extra_seasons", ()))
        kept += [Season(m, "given") for m in extras]
    else:
        for s in natural_seasons(freq):
            need = s.length + horizon + horizon + MIN_TRAIN_WINDOWS
            if s.length > MAX_SEASON:
                dropped.append(f"{s.length} ({s.name}) is longer than a window holds")
            elif kept and lookback_given is not None and s.length >= lookback_given:
                dropped.append(f"{s.length} ({s.name}) does not fit the given lookback")
            elif train_len < need:
                dropped.append(
                    f"{s.length} ({s.name}) needs training parts of {need} points, the "
                    f"shortest series has {train_len}"
                )
            else:
                kept.append(s)
    if "season_length" in given:
        reasons["season_length"] = "given"
        reasons["extra_seasons"] = "given" if "extra_seasons" in given else "none given"
    else:
        names = ", ".join(f"{s.length} ({s.name})" for s in kept) or "none"
        why = f"frequency {freq!r}: seasons kept: {names}"
        if dropped:
            why += "; left out: " + "; ".join(dropped)
        reasons["season_length"] = why + (
            "" if kept else "; 1 (no season: MASE scales by the one-step naive error)"
        )
        reasons["extra_seasons"] = (
            "the longer seasons kept, read as seasonal differences and naive forecasts"
            if len(kept) > 1
            else "no second season kept"
        )
    primary = kept[0].length if kept else 1
    extra = tuple(s.length for s in kept[1:])
    fields["season_length"] = primary
    fields["extra_seasons"] = extra

    if lookback_given is not None:
        fields["lookback"] = lookback_given
        reasons["lookback"] = "given"
    else:
        longest = max([primary, *extra])
        lookback = longest + max(horizon, primary) if longest > 1 else max(2 * horizon, 8)
        room = train_len - horizon - MIN_TRAIN_WINDOWS + 1
        why = (
            f"the longest season ({longest}) plus max(horizon, season) ({max(horizon, primary)})"
            if longest > 1
            else f"no season: twice the horizon, at least 8 ({lookback})"
        )
        if lookback > room and room > longest:
            why += f", cut to {room} so the shortest series keeps {MIN_TRAIN_WINDOWS} windows"
            lookback = room
        fields["lookback"] = lookback
        reasons["lookback"] = why
    if "encoder_steps" in given:
        fields["encoder_steps"] = int(given["encoder_steps"])
        reasons["encoder_steps"] = "given"
    else:
        steps = max(2 * primary, 2 * horizon, 8)
        if steps >= fields["lookback"]:
            fields["encoder_steps"] = 0
            reasons["encoder_steps"] = "the LSTM reads the whole window"
        else:
            fields["encoder_steps"] = steps
            reasons["encoder_steps"] = (
                f"the LSTM reads the last {steps} steps (two seasons or two horizons); the "
                "longer seasons reach it as differences and the head as naive forecasts"
            )
    return Defaults(fields, reasons)
