"""How fast traffic moves off a backend that slows down mid-run (the straggler scenario).

Dispatches are attributed by the ``x-aigw-deployment`` header of every request sent after
the warm-up and counted in 1 s bins aligned on the moment of the slowdown.

The reference is the straggler's own share *before* the slowdown under the same policy (its
fair share as that policy sees it: a capacity-aware policy gives an h100 about 30% of a
2xh100/2xa100/2xl4 fleet, round-robin gives every backend 1/6). Traffic has *moved off* when
the straggler's share of dispatches drops below half that reference and stays there: the
reaction time is the midpoint of the first 2 s window after the slowdown from which every
later 2 s window (sliding by 1 s) is below the threshold, so ±1 s. Single seconds are too
noisy at ~20 dispatches each to decide on their own. ``None`` means it did not happen
within the run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .runner import RunData

__all__ = ["StragglerReport", "analyse_straggler"]


@dataclass(frozen=True, slots=True)
class StragglerReport:
    policy: str
    backend: str
    factor: float
    share_before: float | None  # from the end of the warm-up to the slowdown
    share_first_5s: float | None  # the 5 s after the slowdown
    share_last_5s: float | None  # the last 5 s of arrivals
    threshold: float | None  # share_before / 2
    seconds_to_move: float | None
    per_second: tuple[tuple[float, float | None, int], ...]  # (bin start - slowdown, share, n)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _share(dispatches: list[tuple[float, bool]], start: float, end: float) -> float | None:
    inside = [slow for t, slow in dispatches if start <= t < end]
    return sum(inside) / len(inside) if inside else None


def _reaction(
    dispatches: list[tuple[float, bool]], t_slow: float, end: float, threshold: float
) -> float | None:
    starts = [t_slow + k for k in range(int(end - t_slow) - 1)]  # whole 2 s windows only
    below = []
    for start in starts:
        share = _share(dispatches, start, start + 2)
        below.append(share is not None and share < threshold)
    for i in range(len(below)):
        if all(below[i:]):
            return starts[i] + 1.0 - t_slow
    return None


def analyse_straggler(run: RunData) -> StragglerReport:
    spec = run.spec
    straggler = spec.straggler
    if straggler is None:
        raise ValueError("not a straggler run")
    t_slow = straggler.at
    end = spec.warmup + spec.window
    dispatches = [
        (r.sent, r.deployment == straggler.backend)
        for r in run.records
        if r.deployment is not None and spec.warmup <= r.at < end
    ]
    bins: list[tuple[float, float | None, int]] = []
    k = -int(t_slow - spec.warmup)
    while t_slow + k < end:
        start = t_slow + k
        inside = [slow for t, slow in dispatches if start <= t < start + 1]
        bins.append((float(k), sum(inside) / len(inside) if inside else None, len(inside)))
        k += 1
    before = _share(dispatches, spec.warmup, t_slow)
    threshold = before / 2 if before else None
    return StragglerReport(
        policy=spec.policy,
        backend=straggler.backend,
        factor=straggler.factor,
        share_before=before,
        share_first_5s=_share(dispatches, t_slow, t_slow + 5),
        share_last_5s=_share(dispatches, end - 5, end),
        threshold=threshold,
        seconds_to_move=None
        if threshold is None
        else _reaction(dispatches, t_slow, end, threshold),
        per_second=tuple(bins),
    )
