"""One try of a request on one deployment, and the observers that learn how it went.

The gateway announces every attempt's life through :class:`AttemptObserver`: exactly one
``on_dispatch``, at most one ``on_first_byte``, at most one of ``on_success`` /
``on_failure``, and exactly one ``on_finish`` last, on every path (success, failure, client
gone, cancellation). Signal recording, outlier detection (and later metrics, traces, session
binding) listen here; none of them is written to inline by the gateway.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from aigw.errors import GatewayError
from aigw.fleet.deployment import Deployment
from aigw.types import RouteContext, Usage

__all__ = ["Attempt", "AttemptObserver", "Observers"]


@dataclass(slots=True)
class Attempt:
    """A request sent (or about to be sent) to ``deployment``; times are event-loop seconds.

    ``engine_queued``: whether the engine already had a queue when this was sent (then the
    time to first byte measures queueing, not prefill). ``relayed_events``: SSE events sent to
    the client so far (streams).
    """

    deployment: Deployment
    ctx: RouteContext
    number: int  # 1 for the first try of the request
    started_at: float
    queued_s: float = 0.0  # time spent waiting in the admission queue before this attempt
    engine_queued: bool = False
    # Streams only: prompt tokens of this gateway's earlier streams to the deployment still
    # waiting for their first token when this one was sent (the prefill ahead of it), or
    # None when this attempt is not counted in the backlog (a non-streamed request).
    prefill_ahead: int | None = None
    # The prompt tokens the engine is expected to prefill: those beyond the leading share of
    # the prompt's prefix this gateway already sent to the deployment (its cache holds it).
    prefill_tokens: int = 0
    first_byte_at: float | None = None
    last_byte_at: float | None = None
    relayed_events: int = 0
    usage: Usage | None = None
    abandoned: bool = False  # the client went away before the attempt ended
    trace: Any = None  # the tracer's handle on this attempt's span, when tracing


class AttemptObserver(Protocol):
    def on_dispatch(self, attempt: Attempt) -> None: ...

    def on_first_byte(self, attempt: Attempt) -> None: ...

    def on_success(self, attempt: Attempt) -> None:
        """The deployment answered in full (``attempt.usage`` set when it reported usage)."""
        ...

    def on_failure(self, attempt: Attempt, error: GatewayError) -> None:
        """The attempt ended with ``error``: the deployment's fault when ``error.retryable``,
        else the request's (e.g. its context was too long), and the deployment is fine."""
        ...

    def on_finish(self, attempt: Attempt) -> None:
        """Last event of every attempt, whatever happened."""
        ...


class Observers:
    """Fan an attempt's events out to every observer, in order. Observers must not raise."""

    __slots__ = ("_all",)

    def __init__(self, observers: Sequence[AttemptObserver]) -> None:
        self._all = tuple(observers)

    def on_dispatch(self, attempt: Attempt) -> None:
        for observer in self._all:
            observer.on_dispatch(attempt)

    def on_first_byte(self, attempt: Attempt) -> None:
        for observer in self._all:
            observer.on_first_byte(attempt)

    def on_success(self, attempt: Attempt) -> None:
        for observer in self._all:
            observer.on_success(attempt)

    def on_failure(self, attempt: Attempt, error: GatewayError) -> None:
        for observer in self._all:
            observer.on_failure(attempt, error)

    def on_finish(self, attempt: Attempt) -> None:
        for observer in self._all:
            observer.on_finish(attempt)
