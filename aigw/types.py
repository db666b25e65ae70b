"""Neutral types that every room shares: what a request is, where it goes, what it cost.

This module imports nothing from the gateway's rooms (only the error tree), so ``routing/``, ``policies/``,
``providers/``, ``state/`` and the API can all depend on it without depending on each other.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from aigw.errors import InvalidRequestError

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
    """The parts of the HTTP request (not its body) that the pipeline may use.

    ``authorization`` is the raw ``Authorization`` header (checked by the auth stage, never
    logged). ``priority`` (``x-aigw-priority``) may only lower the key's priority;
    ``queue_timeout`` (``x-aigw-queue-timeout``, seconds) shortens the model's queue wait.
    ``invalid``: the error a malformed ``x-aigw-*`` header earned, raised by the caller only
    after the key was checked (an unauthenticated client learns nothing but 401).
    ``headers``: the raw ASGI header list, kept by reference (no copy, nothing parsed) for
    :meth:`header`: only a model with sticky sessions reads a header of its configuration,
    so every other request pays one attribute store instead of a check per header.
    """

    __slots__ = (
        "authorization",
        "client_ip",
        "hash_key",
        "headers",
        "invalid",
        "priority",
        "queue_timeout",
        "region",
        "request_id",
        "tags",
    )

    def __init__(
        self,
        hash_key: str | None = None,
        region: str | None = None,
        tags: frozenset[str] = frozenset(),
        client_ip: str | None = None,
        request_id: str | None = None,
        authorization: bytes | None = None,
        priority: int | None = None,
        queue_timeout: float | None = None,
    ) -> None:
        self.hash_key = hash_key
        self.region = region
        self.tags = tags
        self.client_ip = client_ip
        self.request_id = request_id
        self.authorization = authorization
        self.priority = priority
        self.queue_timeout = queue_timeout
        self.invalid: InvalidRequestError | None = None
        self.headers: Sequence[tuple[bytes, bytes]] = ()

    def header(self, name: bytes) -> bytes | None:
        """The first value of header ``name`` (lowercase, as ASGI gives names), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None

    @classmethod
    def from_scope(cls, scope: Mapping[str, Any]) -> RequestMeta:
        """Read the headers; a malformed ``x-aigw-*`` header is kept in ``invalid``."""
        hash_key = region = authorization = None
        priority: int | None = None
        queue_timeout: float | None = None
        invalid: InvalidRequestError | None = None
        tags: frozenset[str] = frozenset()
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value
                continue
            if not name.startswith(b"x-aigw-"):
                continue
            if name == b"x-aigw-hash-key":
                hash_key = value.decode("latin-1")
            elif name == b"x-aigw-region":
                region = value.decode("latin-1").strip()
            elif name == b"x-aigw-tags":
                tags = frozenset(t.strip() for t in value.decode("latin-1").split(",") if t.strip())
            elif name == b"x-aigw-priority":
                try:
                    priority = _priority(value)
                except InvalidRequestError as exc:
                    invalid = exc
            elif name == b"x-aigw-queue-timeout":
                try:
                    queue_timeout = _queue_timeout(value)
                except InvalidRequestError as exc:
                    invalid = exc
        client = scope.get("client")
        meta = cls(
            hash_key,
            region,
            tags,
            client[0] if client else None,
            scope.get("aigw.request_id"),
            authorization,
            priority,
            queue_timeout,
        )
        meta.invalid = invalid
        meta.headers = scope["headers"]
        return meta


_PRIORITY_RANGE = 1000  # the same bounds as auth.keys[].priority
_QUEUE_TIMEOUT_MAX = 3600.0


def _priority(raw: bytes) -> int:
    text = raw.strip()
    digits = text[1:] if text.startswith(b"-") else text
    if digits.isdigit() and len(text) <= 6:
        value = int(text)
        if -_PRIORITY_RANGE <= value <= _PRIORITY_RANGE:
            return value
    raise InvalidRequestError(
        f"x-aigw-priority must be an integer from -{_PRIORITY_RANGE} to {_PRIORITY_RANGE} "
        f"(got {raw[:40].decode('latin-1')!r}).",
        param="x-aigw-priority",
        code="invalid_header",
    )


def _queue_timeout(raw: bytes) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        value = math.nan
    if not (0 <= value <= _QUEUE_TIMEOUT_MAX):  # also rejects nan and inf
        raise InvalidRequestError(
            f"x-aigw-queue-timeout must be a number of seconds from 0 to {_QUEUE_TIMEOUT_MAX:g} "
            f"(got {raw[:40].decode('latin-1')!r}).",
            param="x-aigw-queue-timeout",
            code="invalid_header",
        )
    return value


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
    bound_deployment: str | None = None  # the sticky session's deployment, when it has one
