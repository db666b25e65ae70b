"""Passive health: outlier detection from the outcomes of real requests, and the share of
traffic a deployment should get (slow start after a recovery, predictive demotion).

Availability (in rotation or not) and share (how much of its fair traffic) are separate:
:meth:`OutlierDetector.is_available` says whether the router may offer a deployment at all
(not ejected, not marked down by its active probe); :func:`share` is a multiplier in
(0, 1] that the router applies by thinning candidates (:meth:`aigw.routing.router.Router.select`),
so the policies stay pure and unaware of health.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence

from aigw.config import DemotionConfig, HealthConfig
from aigw.errors import GatewayError, UpstreamStatusError
from aigw.fleet.attempt import Attempt
from aigw.fleet.deployment import Deployment, DeploymentState

__all__ = ["SLOW_START_FLOOR", "OutlierDetector", "demote", "share"]

SLOW_START_FLOOR = 0.1  # a recovered deployment's share right after it is back
# Per demotion evaluation (health.sync_interval_s, 2 s), a deployment's latency baseline
# rises by this fraction of its gap to the current EWMA: a time constant of ~100 evaluations
# (~3 min), slow beside a degradation that demotion should catch, quick beside a deploy.
BASELINE_RELAX = 0.01


class OutlierDetector:
    """Passive health: eject after N consecutive failures, with exponential back-off.

    Like Envoy's consecutive-5xx outlier detection: an ejected deployment receives no traffic
    until ``ejected_until``; the first request after that is a probe, and one more failure
    ejects it again for twice as long (capped). One success resets the streak.

    At most ``max_ejection_percent`` of a model's deployments (``peers``, by model name) are
    out of rotation at once (ejected or probed down; at least one may always be): past that a
    failing deployment stays in rotation, unless none of its peers in rotation is answering
    (every one has a failure streak of its own), when the whole model is down and ejecting
    it too only moves the model to panic mode sooner. ``on_eject(deployment_id, seconds)`` is
    told of every ejection (the health monitor shares them through Redis).
    """

    def __init__(
        self,
        config: HealthConfig,
        clock: Callable[[], float],
        peers: Mapping[str, Sequence[DeploymentState]] | None = None,
    ) -> None:
        self._threshold = config.consecutive_failures
        self._base = config.base_ejection_seconds
        self._max = config.max_ejection_seconds
        self._max_percent = config.max_ejection_percent
        self._clock = clock
        self._peers = peers or {}
        self.on_eject: Callable[[str, float], None] | None = None

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
        deployment = attempt.deployment
        state = deployment.state
        if not error.retryable:
            self.record_success(state)
            return
        upstream = error if isinstance(error, UpstreamStatusError) else None
        now = self._clock()
        if upstream is None or upstream.status != 429:
            peers = self._peers.get(deployment.model, ())
            if self.record_failure(state, error.message, now, peers) and self.on_eject:
                self.on_eject(deployment.id, state.ejected_until - now)
        if upstream is not None and upstream.retry_after_s:
            self.record_retry_after(state, upstream.retry_after_s, now)

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

    def record_failure(
        self,
        state: DeploymentState,
        reason: str,
        now: float,
        peers: Sequence[DeploymentState] = (),
    ) -> bool:
        """Count a failure; True when it ejected the deployment (``peers``: its model's
        deployments, itself included, for the ejection cap; none: no cap)."""
        state.failures += 1
        state.errors.add(1.0)
        state.consecutive_failures += 1
        state.last_error = reason
        if state.consecutive_failures < self._threshold and not state.ejections:
            return False
        if not self._may_eject(state, peers, now):
            return False
        # The exponent is capped: past 2**30 the back-off is max_ejection_seconds anyway,
        # and 2.0**1024 would overflow a float (a long-dead deployment in panic mode).
        backoff = self._base * 2.0 ** min(state.ejections, 30)
        state.ejected_until = now + min(self._max, backoff)
        state.slow_start_from = state.ejected_until  # it ramps up from when it is back
        state.ejections += 1
        state.ejected_total += 1
        return True

    def _may_eject(
        self, state: DeploymentState, peers: Sequence[DeploymentState], now: float
    ) -> bool:
        if not peers:
            return True
        others = [p for p in peers if p is not state]
        out = sum(1 for p in others if not self.is_available(p, now))
        allowed = max(1, int(len(peers) * self._max_percent / 100.0))
        if out + 1 <= allowed:
            return True
        # Past the cap: eject only if no peer in rotation is answering (the model is down).
        return not any(self.is_available(p, now) and not p.consecutive_failures for p in others)

    @staticmethod
    def is_available(state: DeploymentState, now: float) -> bool:
        """In rotation: not ejected (nor holding for a Retry-After) and not probed down."""
        return state.ejected_until <= now and state.probe_up is not False

    def apply_shared(self, deployment: Deployment, seconds: float, now: float) -> bool:
        """Another instance ejected ``deployment`` for ``seconds`` more: so does this one
        (never shortening its own ejection), within the same ``max_ejection_percent`` cap as
        its own ejections (two instances that each ejected a different deployment must not
        take a whole model out of rotation between them); it ramps up from when that ends.
        True when applied."""
        state = deployment.state
        until = now + seconds
        if until <= state.ejected_until:
            return True
        if state.ejected_until <= now and not self._may_eject(
            state, self._peers.get(deployment.model, ()), now
        ):
            return False
        state.ejected_until = until
        state.slow_start_from = until
        return True


def share(state: DeploymentState, now: float, slow_start_s: float) -> float:
    """The fraction of its fair share of traffic the deployment should get, in (0, 1]:
    its predictive demotion, times its slow-start ramp (from :data:`SLOW_START_FLOOR` to 1,
    linearly over ``slow_start_s`` from ``slow_start_from``)."""
    weight = state.demotion
    start = state.slow_start_from
    if start <= now < start + slow_start_s:
        weight *= SLOW_START_FLOOR + (1.0 - SLOW_START_FLOOR) * (now - start) / slow_start_s
    return weight


def demote(deployments: Sequence[Deployment], config: DemotionConfig) -> None:
    """Set ``state.demotion`` of each of one model's ``deployments`` from how its signals
    compare with its peers' (same kind: gpu or cloud, at least ``min_samples`` each).

    Latency is judged against each deployment's own past, so a fleet of mixed hardware (an
    L4 beside an H100) is not demoted for being what it is: its *slowdown* ``s`` is its
    time-to-first-byte EWMA over its baseline (the lowest that EWMA has been, relaxing
    upwards by :data:`BASELINE_RELAX` of the gap per evaluation, so a lasting change becomes
    the new normal in a few minutes). ``r = s / median(peers' s)``: a fleet-wide slowdown
    (more load, longer prompts) moves every ``s`` alike and demotes nobody; past
    ``latency_ratio`` the share is ``latency_ratio / r`` (twice as far past it: half the
    share). Errors: an error-rate EWMA ``e`` more than ``error_margin`` above the peers'
    median ``m`` multiplies the share by ``1 - (e - m)``. Floored at ``min_share``; 1.0
    without enough peers or samples.
    """
    for d in deployments:
        d.state.demotion = 1.0
    if not config.enabled:
        return
    for cloud in (False, True):
        group = [
            d
            for d in deployments
            if d.config.is_cloud is cloud and d.state.ttft.count >= config.min_samples
        ]
        if len(group) >= 2:
            for d in group:
                peers = [p.state for p in group if p is not d]
                d.state.demotion = _demotion(d.state, peers, config)
        for d in group:
            _update_baseline(d.state)


def _update_baseline(state: DeploymentState) -> None:
    ttft = state.ttft.get(0.0)
    baseline = state.ttft_baseline
    if baseline is None or ttft <= baseline:
        state.ttft_baseline = ttft
    else:
        state.ttft_baseline = baseline + BASELINE_RELAX * (ttft - baseline)


def _slowdown(state: DeploymentState) -> float:
    baseline = state.ttft_baseline
    return state.ttft.get(0.0) / baseline if baseline else 1.0


def _demotion(
    state: DeploymentState, peers: Sequence[DeploymentState], config: DemotionConfig
) -> float:
    weight = 1.0
    median_slowdown = statistics.median(_slowdown(p) for p in peers)
    slowdown = _slowdown(state)
    if slowdown > config.latency_ratio * median_slowdown:
        weight *= config.latency_ratio * median_slowdown / slowdown
    excess = state.errors.get(0.0) - statistics.median(p.errors.get(0.0) for p in peers)
    if excess > config.error_margin:
        weight *= 1.0 - excess
    return max(config.min_share, weight)
