"""The routing policy interfaces: filters, scorers, pickers, and the request context.

All pure and synchronous: no I/O, no awaiting. The gateway builds a :class:`RouteContext`
before routing (tokens counted, prefix hashed); policies read it and the deployments' live
state (``deployment.state``: in-flight, EWMAs, last engine snapshot) and nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from aigw.providers.base import Endpoint
from aigw.routing.deployment import Deployment

__all__ = ["Filter", "Picker", "Policy", "RouteContext", "Scorer"]


@dataclass(frozen=True, slots=True)
class RouteContext:
    """What a policy may know about the request being routed."""

    endpoint: Endpoint
    model: str
    body: Mapping[str, Any]
    now: float = 0.0  # event-loop time of the decision
    prompt_tokens: int = 0  # estimated with tiktoken (or 4 chars/token without encodings)
    max_tokens: int | None = None  # requested output budget, if any
    prefix_blocks: tuple[int, ...] = ()  # chained prompt-prefix block hashes (aigw.routing.prefix)
    affinity_key: int | None = None  # hash of the conversation's opening blocks
    hash_key: str | None = None  # x-aigw-hash-key header, else the body's `user`, else client IP
    region: str | None = None  # x-aigw-region header
    tags: frozenset[str] = frozenset()  # x-aigw-tags header, comma-separated
    adapter: str | None = None  # LoRA adapter the model needs
    request_id: str | None = None  # the x-request-id, forwarded upstream for tracing


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
