"""Neutral types that every room shares: what a request is, where it goes, what it cost.

This module imports nothing from the gateway's rooms, so ``routing/``, ``policies/``,
``providers/``, ``state/`` and the API can all depend on it without depending on each other.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

__all__ = [
    "ANONYMOUS",
    "Endpoint",
    "Principal",
    "RequestMeta",
    "RouteContext",
    "UpstreamRequest",
    "Usage",
]


class Endpoint(StrEnum):
    """The OpenAI API operations the gateway proxies; values are paths below ``/v1/``."""

    CHAT = "chat/completions"
    COMPLETIONS = "completions"
    EMBEDDINGS = "embeddings"


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    """One HTTP POST to an upstream: where, with which headers, which body bytes."""

    url: str
    headers: Mapping[str, str]
    body: bytes


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens one request consumed, as the upstream reported them (or as estimated)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: an API key's name and its allowances (``ANONYMOUS`` on an open gateway).

    ``models`` is None when every model is allowed. ``rpm``/``tpm``/``max_parallel`` are None
    when unlimited. The key itself is never kept here.
    """

    name: str
    priority: int = 0
    models: frozenset[str] | None = None
    rpm: int | None = None
    tpm: int | None = None
    max_parallel: int | None = None

    def may_use(self, model: str) -> bool:
        return self.models is None or model in self.models


ANONYMOUS = Principal(name="anonymous")


class RequestMeta:
    """The parts of the HTTP request (not its body) that routing may use."""

    __slots__ = ("client_ip", "hash_key", "region", "request_id", "tags")

    def __init__(
        self,
        hash_key: str | None = None,
        region: str | None = None,
        tags: frozenset[str] = frozenset(),
        client_ip: str | None = None,
        request_id: str | None = None,
    ) -> None:
        self.hash_key = hash_key
        self.region = region
        self.tags = tags
        self.client_ip = client_ip
        self.request_id = request_id

    @classmethod
    def from_scope(cls, scope: Mapping[str, Any]) -> RequestMeta:
        hash_key = region = None
        tags: frozenset[str] = frozenset()
        for name, value in scope["headers"]:
            if not name.startswith(b"x-aigw-"):
                continue
            if name == b"x-aigw-hash-key":
                hash_key = value.decode("latin-1")
            elif name == b"x-aigw-region":
                region = value.decode("latin-1").strip()
            elif name == b"x-aigw-tags":
                tags = frozenset(t.strip() for t in value.decode("latin-1").split(",") if t.strip())
        client = scope.get("client")
        return cls(
            hash_key, region, tags, client[0] if client else None, scope.get("aigw.request_id")
        )


@dataclass(frozen=True, slots=True)
class RouteContext:
    """What a policy may know about the request being routed."""

    endpoint: Endpoint
    model: str
    body: Mapping[str, Any]
    now: float = 0.0  # event-loop time of the decision
    prompt_tokens: int = 0  # estimated with tiktoken (or 4 chars/token without encodings)
    max_tokens: int | None = None  # requested output budget, if any
    prefix_blocks: tuple[int, ...] = ()  # chained prompt-prefix block hashes (aigw.fleet.prefix)
    affinity_key: int | None = None  # hash of the conversation's opening blocks
    hash_key: str | None = None  # x-aigw-hash-key header, else the body's `user`, else client IP
    region: str | None = None  # x-aigw-region header
    tags: frozenset[str] = frozenset()  # x-aigw-tags header, comma-separated
    adapter: str | None = None  # LoRA adapter the model needs
    request_id: str | None = None  # the x-request-id, forwarded upstream for tracing
