"""The routing policy interface: pure, synchronous, no I/O."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from aigw.providers.base import Endpoint
from aigw.routing.deployment import Deployment

__all__ = ["Policy", "RouteRequest"]


@dataclass(frozen=True, slots=True)
class RouteRequest:
    """What a policy may know about the request being routed."""

    endpoint: Endpoint
    model: str
    body: dict[str, Any]


class Policy(Protocol):
    def pick(self, candidates: Sequence[Deployment], request: RouteRequest) -> Deployment:
        """Choose one of ``candidates`` (never empty; all passed the router's filters)."""
        ...
