"""Live signals of a deployment: gateway-local EWMAs and the last scraped engine metrics.

Everything here is plain arithmetic on the event-loop thread; policies read these objects
and never do I/O. Times are event-loop seconds (``loop.time()``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["EngineSnapshot", "Ewma", "PeakEwma", "RatioEwma"]


class Ewma:
    """Exponentially weighted moving average of samples; ``value`` is None until the first."""

    __slots__ = ("alpha", "count", "value")

    def __init__(self, alpha: float = 0.2) -> None:
        self.alpha = alpha
        self.value: float | None = None
        self.count = 0

    def add(self, sample: float) -> None:
        self.count += 1
        value = self.value
        self.value = sample if value is None else value + self.alpha * (sample - value)

    def get(self, default: float) -> float:
        return default if self.value is None else self.value


class RatioEwma:
    """A rate learnt as EWMA(numerator) / EWMA(denominator), e.g. prefill seconds per prompt
    token. Unlike an EWMA of per-sample ratios it is not dominated by small denominators: a
    2-token prompt whose first token took one engine step says little about the cost of a
    token, and an average of ratios would weigh it like a 2,000-token prompt."""

    __slots__ = ("_denominator", "_numerator", "value")

    def __init__(self, alpha: float = 0.2) -> None:
        self._numerator = Ewma(alpha)
        self._denominator = Ewma(alpha)
        self.value: float | None = None

    @property
    def count(self) -> int:
        return self._numerator.count

    def add(self, numerator: float, denominator: float) -> None:
        self._numerator.add(numerator)
        self._denominator.add(denominator)
        below = self._denominator.value
        above = self._numerator.value
        assert above is not None and below is not None
        self.value = above / below if below > 0.0 else None

    def get(self, default: float) -> float:
        return default if self.value is None else self.value


class PeakEwma:
    """Finagle/Linkerd's peak-EWMA: jumps up to any sample above it at once, and decays
    towards lower samples with time constant ``tau`` seconds. Pessimistic by design: a
    latency spike is noticed on the first slow response, recovery takes a few ``tau``.
    """

    __slots__ = ("last", "tau", "value")

    def __init__(self, tau: float = 10.0) -> None:
        self.tau = tau
        self.value: float | None = None
        self.last = 0.0

    def add(self, sample: float, now: float) -> None:
        value = self.value
        if value is None or sample > value:
            self.value = sample
        else:
            weight = math.exp(-max(0.0, now - self.last) / self.tau)
            self.value = value * weight + sample * (1.0 - weight)
        self.last = now

    def get(self, default: float) -> float:
        return default if self.value is None else self.value


@dataclass(frozen=True, slots=True)
class EngineSnapshot:
    """One scrape of an inference engine's Prometheus metrics, normalised across engines.

    ``waiting``/``running`` are request counts; ``kv_usage`` is the KV-cache fill in [0, 1];
    ``prefix_hit_rate`` is hits/queries over the engine's lifetime (None when not exported);
    ``adapters`` are the LoRA adapters the engine reports as loaded; ``finished_total`` is
    its lifetime count of finished requests, from which the scraper derives a drain rate.
    ``in_flight_at_scrape`` is the gateway's own in-flight count to that deployment when the
    scrape was taken, so the load can be adjusted by what the gateway sent since.
    """

    scraped_at: float
    waiting: float
    running: float
    kv_usage: float | None = None
    prefix_hit_rate: float | None = None
    adapters: frozenset[str] = frozenset()
    in_flight_at_scrape: int = 0
    finished_total: float | None = None  # requests the engine ever finished (any reason)
