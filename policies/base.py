"""The routing policy interfaces: filters, scorers, pickers, and the request context.

All pure and synchronous: no I/O, no awaiting. The gateway builds a :class:`RouteContext`
before routing (tokens counted, prefix hashed); policies read it and the deployments' live
state (``deployment.state``: in-flight, EWMAs, last engine snapshot) and nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from aigw.fleet.deployment import Deployment
from aigw.types import RouteContext

__all__ = ["Filter", "Picker", "Policy", "RouteContext", "Scorer"]


class Filter(Protocol):
    """Keep the candidates that can serve the request. ``reason`` explains an empty result.

    ``client_fault``: an empty result is the request's doing (400, e.g. a prompt too long for
    every context window) rather than the fleet's state (503, e.g. every deployment draining).
    """

    name: str
    client_fault: bool

    def __call__(self, candidates: Sequence[Deployment], ctx: RouteContext) -> list[Deployment]: ...

    def reason(self, ctx: RouteContext) -> str: ...


class Scorer(Protocol):
    """One score in [0, 1] per candidate (higher is better), normalised across candidates."""

    name: str

    def __call__(self, candidates: Sequence[Deployment], ctx: RouteContext) -> list[float]: ...


class Picker(Protocol):
    def __call__(
        self, candidates: Sequence[Deployment], scores: Sequence[float], ctx: RouteContext
    ) -> Deployment: ...


class Policy(Protocol):
    def pick(self, candidates: Sequence[Deployment], request: RouteContext) -> Deployment:
        """Choose one of ``candidates`` (never empty; all passed the router's filters)."""
        ...
