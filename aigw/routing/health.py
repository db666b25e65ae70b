"""Passive health: outlier detection from the outcomes of real requests."""

from __future__ import annotations

from collections.abc import Callable

from aigw.config import HealthConfig
from aigw.errors import GatewayError, UpstreamStatusError
from aigw.fleet.attempt import Attempt
from aigw.fleet.deployment import DeploymentState

__all__ = ["OutlierDetector"]


class OutlierDetector:
    """Passive health: eject after N consecutive failures, with exponential back-off.

    Like Envoy's consecutive-5xx outlier detection: an ejected deployment receives no traffic
    until ``ejected_until``; the first request after that is a probe, and one more failure
    ejects it again for twice as long (capped). One success resets the streak.
    """

    def __init__(self, config: HealthConfig, clock: Callable[[], float]) -> None:
        self._threshold = config.consecutive_failures
        self._base = config.base_ejection_seconds
        self._max = config.max_ejection_seconds
        self._clock = clock

    # As an AttemptObserver: a full answer resets the streak; a retryable failure (the
    # deployment's fault) extends it, except a 429 (busy, not broken); a non-retryable error
    # is the request's fault, and the deployment answered, so it counts as healthy.

    def on_dispatch(self, attempt: Attempt) -> None:
        pass

    def on_first_byte(self, attempt: Attempt) -> None:
        pass

    def on_success(self, attempt: Attempt) -> None:
        self.record_success(attempt.deployment.state)

    def on_failure(self, attempt: Attempt, error: GatewayError) -> None:
        state = attempt.deployment.state
        if not error.retryable:
            self.record_success(state)
            return
        upstream = error if isinstance(error, UpstreamStatusError) else None
        if upstream is None or upstream.status != 429:
            self.record_failure(state, error.message, self._clock())
        if upstream is not None and upstream.retry_after_s:
            self.record_retry_after(state, upstream.retry_after_s, self._clock())

    def record_retry_after(self, state: DeploymentState, seconds: float, now: float) -> None:
        """The upstream asked for ``seconds`` of quiet (a 429/503's Retry-After, capped at
        ``max_ejection_seconds``): no request goes to it before then. It is out of rotation
        like an ejected deployment, without counting as an ejection."""
        until = now + min(seconds, self._max)
        state.retry_after_until = max(state.retry_after_until, until)
        state.ejected_until = max(state.ejected_until, until)

    def on_finish(self, attempt: Attempt) -> None:
        pass

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
            # The exponent is capped: past 2**30 the back-off is max_ejection_seconds anyway,
            # and 2.0**1024 would overflow a float (a long-dead deployment in panic mode).
            backoff = self._base * 2.0 ** min(state.ejections, 30)
            state.ejected_until = now + min(self._max, backoff)
            state.ejections += 1
            state.ejected_total += 1

    @staticmethod
    def is_available(state: DeploymentState, now: float) -> bool:
        return state.ejected_until <= now
