"""Passive health: outlier detection from the outcomes of real requests."""

from __future__ import annotations

from aigw.config import HealthConfig
from aigw.fleet.deployment import DeploymentState

__all__ = ["OutlierDetector"]


class OutlierDetector:
    """Passive health: eject after N consecutive failures, with exponential back-off.

    Like Envoy's consecutive-5xx outlier detection: an ejected deployment receives no traffic
    until ``ejected_until``; the first request after that is a probe, and one more failure
    ejects it again for twice as long (capped). One success resets the streak.
    """

    def __init__(self, config: HealthConfig) -> None:
        self._threshold = config.consecutive_failures
        self._base = config.base_ejection_seconds
        self._max = config.max_ejection_seconds

    def record_success(self, state: DeploymentState) -> None:
        state.errors.add(0.0)
        state.consecutive_failures = 0
        state.ejections = 0
        state.ejected_until = 0.0

    def record_failure(self, state: DeploymentState, reason: str, now: float) -> None:
        state.failures += 1
        state.errors.add(1.0)
        state.consecutive_failures += 1
        state.last_error = reason
        if state.consecutive_failures >= self._threshold or state.ejections:
            state.ejected_until = now + min(self._max, self._base * 2**state.ejections)
            state.ejections += 1

    @staticmethod
    def is_available(state: DeploymentState, now: float) -> bool:
        return state.ejected_until <= now
