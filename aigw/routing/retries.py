"""Retries across deployments: whether a request may retry, how long it waits first, and the
upstream's ``Retry-After``.

**Retry budget** (Envoy's retry budget, Finagle's ``RetryBudget``): a failover is a second
request to the fleet, so a fleet that fails half its requests would take 1.5x its traffic,
then more as the retries fail too: a retry storm. :class:`RetryBudget` lets one model's
retries be at most ``ratio`` of its requests over the last ``window_s`` seconds; under that,
a retry is still allowed while fewer than ``min_concurrent`` of the model's requests are
retrying right now (and the window holds fewer than ``ratio * requests + min_concurrent``
retries), so that a quiet gateway, whose few requests earn no retry by the ratio, still fails
over. A refused retry ends the request with the error it already has.

The budget is per gateway process, on purpose: each instance bounds its own retries to a
fraction of its own traffic, so the fleet's retries are bounded by the same fraction of the
fleet's traffic, with no shared-state round trip on the failure path (which is exactly when
Redis may be slow too). A shared budget would only differ when instances see very different
failure rates, and then the local one is the more accurate.

**Cost.** Counting a request and checking a retry are O(1): the window is :data:`BUCKETS`
buckets of ``window_s / BUCKETS`` seconds in a ring, with running sums (the same scheme as
:mod:`aigw.state.windows`, with coarser buckets: a count lives between ``window_s`` and
``window_s * (1 + 1/BUCKETS)`` seconds).

**Backoff**: the first retry goes at once (to another deployment, so waiting would only add
latency); later ones wait ``uniform(0, min(max_s, base_s * 2 ** (retry - 2)))`` seconds
("full jitter", AWS Architecture Blog, 2015), so that requests failing together do not come
back together.
"""

from __future__ import annotations

import email.utils
import math
import random
from collections.abc import Callable, Iterable, Mapping

from aigw.config import RetryConfig
from aigw.errors import GatewayError, RateLimitError, ServiceUnavailableError

__all__ = [
    "BUCKETS",
    "Failover",
    "RetryBudget",
    "RetryPolicy",
    "exhausted_error",
    "parse_retry_after",
]

BUCKETS = 10

# Larger upstream Retry-After values are clipped (a bogus "Retry-After: 86400" must not take a
# deployment out of rotation for a day); outlier detection's max_ejection_seconds clips further.
_MAX_RETRY_AFTER_S = 3600.0


class RetryBudget:
    """One model's retries in this process: at most ``ratio`` of its requests over the last
    ``window_s`` seconds; beyond that, a retry is allowed while fewer than ``min_concurrent``
    of the model's requests are retrying, up to ``min_concurrent`` retries more in the
    window. So a window never holds more than ``ratio * requests + min_concurrent`` retries,
    and a quiet gateway (too few requests for the ratio to allow one) still fails over.

    Call :meth:`record_request` once per client request and :meth:`try_retry` before each
    of its retries (an allowed retry is counted); a request that was allowed a retry calls
    :meth:`retry_done` once when it stops retrying. ``exhausted`` counts refused retries
    (read by ``/metrics``).
    """

    __slots__ = (
        "_clock",
        "_head",
        "_min",
        "_ratio",
        "_request_total",
        "_requests",
        "_retries",
        "_retry_total",
        "_width",
        "active",
        "exhausted",
    )

    def __init__(
        self, ratio: float, min_concurrent: int, window_s: float, clock: Callable[[], float]
    ) -> None:
        self._ratio = ratio
        self._min = min_concurrent
        self._width = window_s / BUCKETS
        self._clock = clock
        self._head = int(clock() // self._width)
        self._requests = [0] * BUCKETS
        self._retries = [0] * BUCKETS
        self._request_total = 0
        self._retry_total = 0
        self.active = 0  # requests of the model retrying now
        self.exhausted = 0  # retries refused, ever

    def record_request(self) -> None:
        """A client request of this model arrived: it adds ``ratio`` retries to the budget."""
        slot = self._advance()
        self._requests[slot] += 1
        self._request_total += 1

    def try_retry(self, retrying: bool) -> bool:
        """Whether a request may retry now; when it may, the retry is counted.

        ``retrying``: the request already retried (it holds one of the ``active`` places,
        taken on its first allowed retry; it must call :meth:`retry_done` once, at its end).
        """
        slot = self._advance()
        ratio_allows = self._ratio * self._request_total
        if self._retry_total + 1 > ratio_allows:
            # Over the ratio: only within the floor, which also bounds the window's retries
            # (else short retries, never many at once, would pass the floor without end).
            others = self.active - 1 if retrying else self.active
            if others >= self._min or self._retry_total + 1 > ratio_allows + self._min:
                self.exhausted += 1
                return False
        self._retries[slot] += 1
        self._retry_total += 1
        if not retrying:
            self.active += 1
        return True

    def retry_done(self) -> None:
        """A request that retried has finished retrying (succeeded, failed, or left)."""
        self.active -= 1

    @property
    def counts(self) -> tuple[int, int]:
        """(requests, retries) in the window now."""
        self._advance()
        return self._request_total, self._retry_total

    def _advance(self) -> int:
        """Move the ring to the current bucket (old buckets leave the sums); its slot."""
        bucket = int(self._clock() // self._width)
        head = self._head
        if bucket > head:  # a clock that stepped back keeps the later bucket
            if bucket - head >= BUCKETS:
                self._requests = [0] * BUCKETS
                self._retries = [0] * BUCKETS
                self._request_total = self._retry_total = 0
            else:
                requests, retries = self._requests, self._retries
                for k in range(head + 1, bucket + 1):
                    slot = k % BUCKETS
                    self._request_total -= requests[slot]
                    self._retry_total -= retries[slot]
                    requests[slot] = retries[slot] = 0
            self._head = head = bucket
        return head % BUCKETS


class RetryPolicy:
    """The retry settings of a gateway, built once: a budget per model, the backoff, and the
    request deadline. ``rng`` draws the jitter (injected, so tests are deterministic)."""

    __slots__ = (
        "_base",
        "_clock",
        "_config",
        "_max",
        "_rng",
        "budgets",
        "deadline_s",
        "max_attempts",
    )

    def __init__(
        self,
        config: RetryConfig,
        models: Iterable[str],
        clock: Callable[[], float],
        rng: random.Random,
    ) -> None:
        self.max_attempts = config.max_attempts
        self.deadline_s = config.deadline_s
        self._config = config
        self._base = config.backoff_base_s
        self._max = config.backoff_max_s
        self._clock = clock
        self._rng = rng
        self.budgets: dict[str, RetryBudget] = {}
        for name in models:
            self.budget(name)

    def budget(self, model: str) -> RetryBudget:
        """The retry budget of ``model`` (made on first use for a model added later)."""
        budget = self.budgets.get(model)
        if budget is None:
            c = self._config
            budget = RetryBudget(
                c.budget_ratio, c.budget_min_concurrent, c.budget_window_s, self._clock
            )
            self.budgets[model] = budget
        return budget

    def exhausted(self) -> dict[str, int]:
        """Retries refused per model since startup (``aigw_retry_budget_exhausted_total``)."""
        return {model: budget.exhausted for model, budget in self.budgets.items()}

    def backoff_s(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1 = the first retry: no wait)."""
        if retry <= 1 or self._base <= 0:
            return 0.0
        return self._rng.uniform(0.0, min(self._max, self._base * 2.0 ** min(retry - 2, 30)))


class Failover:
    """One request's way through the deployments: its attempts so far, their failures, and
    whether it holds one of its budget's retrying places (:meth:`close` gives it back)."""

    __slots__ = ("_budget", "_policy", "attempts", "failures", "retrying")

    def __init__(self, policy: RetryPolicy, model: str, count_request: bool = True) -> None:
        """``count_request``: False for a request already counted (a stream's continuation
        failover, :mod:`aigw.resume`, whose tries are all retries)."""
        self._policy = policy
        self._budget = policy.budget(model)
        if count_request:
            self._budget.record_request()
        self.attempts = 0  # tries sent to a deployment
        self.failures: list[tuple[str, GatewayError]] = []  # (deployment id, its error)
        self.retrying = False

    def retry_delay(self, now: float, deadline: float | None) -> float | None:
        """Before a retry: seconds to wait first, or None when it must not happen (the
        budget is spent, or the wait would reach the ``deadline``, a loop time)."""
        if not self._budget.try_retry(self.retrying):
            return None
        self.retrying = True
        delay = self._policy.backoff_s(self.attempts)
        if deadline is not None and now + delay >= deadline:
            return None
        return delay

    def close(self) -> None:
        if self.retrying:
            self.retrying = False
            self._budget.retry_done()


def exhausted_error(
    model: str, failures: list[tuple[str, GatewayError]], wait_s: float
) -> GatewayError:
    """The error for a request of ``model`` that no deployment served, after ``failures``.

    ``wait_s``: seconds until the soonest deployment of the model (or a fallback) is
    available again, 0 when one is now. The 503s made here say when to come back in
    ``Retry-After``. One failure is returned as it is (the upstream's own error), unless
    every deployment is out of rotation now (ejected, or waiting out a Retry-After) and the
    error does not say when to come back: then it is a 503 ``no_healthy_deployment`` naming
    it, with a ``Retry-After``, so that clients back off rather than retry at once.
    """
    retry_after = {"Retry-After": str(max(1, math.ceil(wait_s)))}
    if not failures:
        return ServiceUnavailableError(
            f"No deployment of model `{model}` can take the request now.",
            code="no_capacity",
            headers=retry_after,
        )
    if len(failures) == 1:
        deployment, error = failures[0]
        if wait_s <= 0 or error.status < 500 or "Retry-After" in error.headers:
            return error  # the upstream's own answer, which says when to come back if needed
        return ServiceUnavailableError(
            f"No deployment of model `{model}` is healthy now; the last one tried, "
            f"{deployment}, failed: {error.message}",
            code="no_healthy_deployment",
            headers=retry_after,
        )
    if all(isinstance(exc, RateLimitError) for _, exc in failures):
        soonest = min(int(exc.headers.get("Retry-After", "60")) for _, exc in failures)
        return RateLimitError(
            f"Every deployment of model `{model}` has used its configured quota for now.",
            code="upstream_quota_exhausted",
            headers={"Retry-After": str(soonest)},
        )
    detail = "; ".join(f"{dep}: {exc.message}" for dep, exc in failures)
    return ServiceUnavailableError(
        f"All {len(failures)} deployments tried for model `{model}` failed: {detail}",
        code="all_deployments_failed",
        headers=retry_after,
    )


def parse_retry_after(headers: Mapping[str, str], now_epoch: float) -> float | None:
    """Seconds an upstream asked us to wait, from ``retry-after-ms`` (OpenAI, Azure) or
    ``Retry-After`` (seconds or an HTTP date); None when absent or unreadable. ``headers``
    must look names up case-insensitively (aiohttp's ``CIMultiDictProxy`` does)."""
    raw = headers.get("retry-after-ms")
    if raw is not None:
        try:
            return _clip(float(raw) / 1000.0)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        return _clip(float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return _clip(when.timestamp() - now_epoch)


def _clip(seconds: float) -> float | None:
    if math.isnan(seconds):
        return None
    return min(max(0.0, seconds), _MAX_RETRY_AFTER_S)
