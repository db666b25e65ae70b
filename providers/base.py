"""The small interface every upstream adapter implements.

A provider is built once per deployment at startup (so URLs, auth headers and anything else
fixed is computed once, not per request) and is pure translation: it never does I/O. The
gateway's transport sends what :meth:`Provider.build_request` returns and hands the reply back
to :meth:`Provider.parse_response`, :meth:`Provider.stream_translator` or
:meth:`Provider.parse_error`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from aigw.errors import UpstreamStatusError
from aigw.types import Endpoint, UpstreamRequest, Usage

__all__ = ["Provider", "StreamTranslator"]


class StreamTranslator(Protocol):
    """Turns an upstream's streamed body into OpenAI chat/completion SSE bytes, incrementally.

    ``feed`` receives raw upstream bytes exactly as they arrive (events may be split across
    chunks or several may share one) and returns the bytes to send to the client now, possibly
    ``b""``. ``finish`` is called once when the upstream body ended cleanly and returns the
    trailing bytes (OpenAI's ``data: [DONE]``, when the upstream does not send it itself).
    A translator raises :class:`~aigw.errors.UpstreamStatusError` when the upstream reports an
    error inside the stream.

    ``usage`` is the token usage the upstream reported in the stream: None until seen, final
    at the latest after ``finish``. A stream that broke early may hold a partial count (an
    Anthropic stream knows its prompt tokens from its first event) or none at all (an
    OpenAI-compatible upstream reports usage only in its last event).

    One translator per response: instances hold the state of their stream.
    """

    def feed(self, chunk: bytes) -> bytes: ...

    def finish(self) -> bytes: ...

    @property
    def usage(self) -> Usage | None: ...


class Provider(Protocol):
    """Adapter for one deployment's upstream API. Pure: no I/O, no awaiting."""

    def supports(self, endpoint: Endpoint) -> bool:
        """Whether this upstream API can serve ``endpoint`` at all."""
        ...

    def build_request(self, endpoint: Endpoint, body: Mapping[str, Any]) -> UpstreamRequest:
        """Build the upstream request from the client's (already validated) JSON body.

        ``body`` is the client's request; the provider must not mutate it (a retry on another
        deployment reuses it). ``body["model"]`` is the gateway's public model name; the
        provider substitutes its deployment's upstream model id.
        """
        ...

    def parse_response(
        self, endpoint: Endpoint, status: int, body: bytes
    ) -> tuple[bytes, Usage | None]:
        """Turn a successful (2xx) non-streamed upstream body into OpenAI's JSON bytes.

        Returns those bytes and the usage the reply reports (``prompt_tokens`` and
        ``completion_tokens``; embeddings have 0 completion tokens), None when it has none.
        """
        ...

    def stream_translator(self, endpoint: Endpoint, request: Mapping[str, Any]) -> StreamTranslator:
        """A fresh translator for one streamed response to ``request`` (the client's body)."""
        ...

    def parse_error(self, status: int, body: bytes) -> UpstreamStatusError:
        """Turn an upstream error reply (status >= 400) into the error the client sees."""
        ...
