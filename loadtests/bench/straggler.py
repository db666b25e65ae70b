"""How fast traffic moves off a backend that slows down mid-run (the straggler scenario).

Dispatches are attributed by the ``x-aigw-deployment`` header of every request sent after
the warm-up and counted in 1 s bins aligned on the moment of the slowdown.

*Fair share* is the straggler's share of the fleet's measured capacity before the slowdown
(an h100 holds ~29% of a 2xh100/2xa100/2xl4 fleet; an equal 1/N split is not fair to a
heterogeneous fleet). After a xF slowdown its capacity share falls to ``ideal_after`` (~12%
for x3), below half its fair share, so a policy that tracks capacity crosses the threshold.
Traffic has *moved off* at the first second T after the slowdown from which the straggler's
share is below half its fair share both over [T, T+2) and over everything from T to the end
of the arrivals: single seconds (~20 dispatches each) are too noisy to decide on alone.
``None`` means it never happened within the run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from .runner import RunData

__all__ = ["StragglerReport", "analyse_straggler"]


@dataclass(frozen=True, slots=True)
class StragglerReport:
    policy: str
    seed: int  # the seed the run's schedule was drawn with
    backend: str
    factor: float
    fair_share: float  # the straggler's share of the measured capacity, before the slowdown
    ideal_after: float  # its capacity share once slowed
    share_before: float | None  # of dispatches, from the end of the warm-up to the slowdown
    share_0_2s: float | None  # the first 2 s after the slowdown
    share_2_5s: float | None
    share_last_5s: float | None  # the last 5 s of arrivals
    seconds_to_move: float | None  # until its share < fair_share / 2 (see the module doc)
    per_second: tuple[tuple[float, float | None, int], ...]  # (bin start - slowdown, share, n)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _share(dispatches: list[tuple[float, bool]], start: float, end: float) -> float | None:
    inside = [slow for t, slow in dispatches if start <= t < end]
    return sum(inside) / len(inside) if inside else None


def _below(share: float | None, threshold: float) -> bool:
    return share is not None and share < threshold


def _moved_off(
    dispatches: list[tuple[float, bool]], t_slow: float, end: float, threshold: float
) -> float | None:
    for k in range(int(end - t_slow) - 1):
        start = t_slow + k
        if _below(_share(dispatches, start, start + 2), threshold) and _below(
            _share(dispatches, start, end), threshold
        ):
            return float(k)
    return None


def analyse_straggler(run: RunData, capacity: Mapping[str, float]) -> StragglerReport:
    """``capacity``: output tokens per second per backend id, measured before the run."""
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
    own = capacity[straggler.backend]
    total = sum(capacity.values())
    fair = own / total
    slowed = own / straggler.factor
    return StragglerReport(
        policy=spec.policy,
        seed=spec.seed,
        backend=straggler.backend,
        factor=straggler.factor,
        fair_share=fair,
        ideal_after=slowed / (total - own + slowed),
        share_before=_share(dispatches, spec.warmup, t_slow),
        share_0_2s=_share(dispatches, t_slow, t_slow + 2),
        share_2_5s=_share(dispatches, t_slow + 2, t_slow + 5),
        share_last_5s=_share(dispatches, end - 5, end),
        seconds_to_move=_moved_off(dispatches, t_slow, end, fair / 2),
        per_second=tuple(bins),
    )
