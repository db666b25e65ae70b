"""Pass/fail thresholds for a Locust run, read from environment variables.

Pure: no Locust import, so the tests can check it without gevent's monkey-patching. The
locustfile turns Locust's stats into :class:`EntryStats` when Locust quits and sets the process
exit code from :func:`breaches` (empty list: pass).

    AIGW_MAX_FAIL_RATIO        failures / requests over all entries; default 0.01
    AIGW_MAX_P99_MS            p99 over all entries, in ms; default 10000; "off" disables it
    AIGW_MAX_P99_MS_BY_ENTRY   per-entry p99 limits, "name=ms,name=ms", e.g.
                               "chat (stream) ttft=1500,embeddings=500"; an entry named here
                               that recorded nothing is a breach (a typo must not pass)
    AIGW_MIN_REQUESTS          fewest requests for a run to count; default 1

Locust's percentiles come from rounded buckets (two significant digits above 100 ms), so a limit
is met to within about 1%.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["EntryStats", "Thresholds", "breaches"]

DEFAULT_MAX_FAIL_RATIO = 0.01
DEFAULT_MAX_P99_MS = 10_000.0


@dataclass(frozen=True, slots=True)
class EntryStats:
    """One row of Locust's statistics (or the aggregate). ``requests`` includes failures."""

    name: str
    requests: int
    failures: int
    p99_ms: float

    @property
    def fail_ratio(self) -> float:
        return self.failures / self.requests if self.requests else 0.0


@dataclass(frozen=True, slots=True)
class Thresholds:
    max_fail_ratio: float = DEFAULT_MAX_FAIL_RATIO
    max_p99_ms: float | None = DEFAULT_MAX_P99_MS  # None: no aggregate latency limit
    max_p99_ms_by_entry: tuple[tuple[str, float], ...] = ()
    min_requests: int = 1

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Thresholds:
        """Raises :class:`ValueError` naming the variable when a value does not parse."""
        off = env.get("AIGW_MAX_P99_MS", "").strip().lower() == "off"
        p99 = None if off else _number(env, "AIGW_MAX_P99_MS", DEFAULT_MAX_P99_MS)
        return cls(
            max_fail_ratio=_number(env, "AIGW_MAX_FAIL_RATIO", DEFAULT_MAX_FAIL_RATIO),
            max_p99_ms=p99,
            max_p99_ms_by_entry=_per_entry(env.get("AIGW_MAX_P99_MS_BY_ENTRY", "")),
            min_requests=int(_number(env, "AIGW_MIN_REQUESTS", 1)),
        )


def breaches(thresholds: Thresholds, total: EntryStats, entries: Sequence[EntryStats]) -> list[str]:
    """One line per threshold the run broke; empty when it passed."""
    found: list[str] = []
    if total.requests < thresholds.min_requests:
        found.append(f"{total.requests} requests, fewer than {thresholds.min_requests}")
    if total.fail_ratio > thresholds.max_fail_ratio:
        found.append(
            f"failure ratio {total.fail_ratio:.4f} ({total.failures}/{total.requests}) "
            f"above {thresholds.max_fail_ratio:g}"
        )
    if thresholds.max_p99_ms is not None and total.p99_ms > thresholds.max_p99_ms:
        found.append(f"p99 {total.p99_ms:g} ms over all entries, above {thresholds.max_p99_ms:g}")
    by_name = {entry.name: entry for entry in entries}
    for name, limit in thresholds.max_p99_ms_by_entry:
        entry = by_name.get(name)
        if entry is None or entry.requests == 0:
            found.append(f"{name!r} has a p99 limit but recorded no requests")
        elif entry.p99_ms > limit:
            found.append(f"{name!r} p99 {entry.p99_ms:g} ms, above {limit:g}")
    return found


def _number(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    return _parse(name, raw) if raw else default


def _parse(what: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{what} must be a number (got {raw!r})") from None
    if not value >= 0:  # also rejects nan
        raise ValueError(f"{what} must be at least 0 (got {raw!r})")
    return value


def _per_entry(raw: str) -> tuple[tuple[str, float], ...]:
    limits: list[tuple[str, float]] = []
    for item in raw.split(","):
        if not item.strip():
            continue
        name, sep, value = item.rpartition("=")
        if not sep or not name.strip():
            raise ValueError(
                f"AIGW_MAX_P99_MS_BY_ENTRY items are name=ms, comma-separated (got {item!r})"
            )
        name = name.strip()
        limits.append((name, _parse(f"AIGW_MAX_P99_MS_BY_ENTRY[{name!r}]", value.strip())))
    return tuple(limits)
