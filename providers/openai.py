"""OpenAI-compatible upstreams: vLLM, SGLang, TGI, Ollama, OpenAI itself.

The client's body is forwarded untouched except for ``model`` (replaced by the deployment's
upstream id) and, on a streamed chat/completions or completions request whose client did not
ask for usage, ``stream_options.include_usage`` (so the gateway learns what the stream cost;
:class:`~aigw.providers.openai_stream.OpenAIStream` removes the extra usage event again). Every
field the gateway does not know (tools, response_format, logprobs, guided decoding, ...)
reaches the engine as sent. Replies are relayed byte for byte, once they parse as a JSON
object.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from aigw.config import DeploymentConfig
from aigw.errors import UpstreamStatusError
from aigw.providers.openai_stream import OpenAIStream, usage_in_reply
from aigw.types import Endpoint, UpstreamRequest, Usage

__all__ = ["OpenAIProvider", "OpenAIStream", "injects_usage", "parse_openai_error"]

_STREAMED = frozenset({Endpoint.CHAT, Endpoint.COMPLETIONS})


def injects_usage(endpoint: Endpoint, body: Mapping[str, Any]) -> bool:
    """Whether the gateway adds ``include_usage`` to this request: a streamed chat/completions
    or completions request whose client did not set ``stream_options.include_usage``."""
    if endpoint not in _STREAMED or not body.get("stream"):
        return False
    options = body.get("stream_options")
    return not (isinstance(options, dict) and options.get("include_usage"))


def _with_usage(options: object) -> dict[str, Any]:
    merged: dict[str, Any] = {**options} if isinstance(options, dict) else {}
    merged["include_usage"] = True
    # vLLM's continuous_usage_stats only acts together with include_usage: the client's
    # request had it inert, so keep it inert rather than put usage into every chunk.
    if merged.get("continuous_usage_stats"):
        merged["continuous_usage_stats"] = False
    return merged


class OpenAIProvider:
    def __init__(self, config: DeploymentConfig) -> None:
        self._model = config.model
        self._urls = {endpoint: f"{config.base_url}/{endpoint.value}" for endpoint in Endpoint}
        headers = {"content-type": "application/json", **config.headers}
        if config.api_key is not None and config.api_key.get_secret_value():
            headers["authorization"] = f"Bearer {config.api_key.get_secret_value()}"
        self._headers = headers

    def supports(self, endpoint: Endpoint) -> bool:
        return True

    def build_request(self, endpoint: Endpoint, body: Mapping[str, Any]) -> UpstreamRequest:
        upstream_body = {**body, "model": self._model}
        if injects_usage(endpoint, body):
            upstream_body["stream_options"] = _with_usage(body.get("stream_options"))
        return UpstreamRequest(self._urls[endpoint], self._headers, orjson.dumps(upstream_body))

    def parse_response(
        self, endpoint: Endpoint, status: int, body: bytes
    ) -> tuple[bytes, Usage | None]:
        # Relayed as received; parsed once, to read `usage` (~2 µs for 1 KB with orjson) and to
        # refuse a body that is not a JSON object (upstream_bad_reply: retryable 502).
        return body, usage_in_reply(body)

    def stream_translator(self, endpoint: Endpoint, request: Mapping[str, Any]) -> OpenAIStream:
        return OpenAIStream(strip_usage_chunk=injects_usage(endpoint, request))

    def parse_error(self, status: int, body: bytes) -> UpstreamStatusError:
        return parse_openai_error(status, body)


def parse_openai_error(status: int, body: bytes) -> UpstreamStatusError:
    """OpenAI's ``{"error": {...}}`` (also vLLM's flat ``{"message", "type", "code"}``)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    error = data.get("error", data) if isinstance(data, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return UpstreamStatusError(
            status,
            error["message"],
            type=error.get("type") if isinstance(error.get("type"), str) else None,
            param=error.get("param") if isinstance(error.get("param"), str) else None,
            code=str(error["code"]) if error.get("code") is not None else None,
        )
    text = body.decode("utf-8", "replace").strip()[:500]
    return UpstreamStatusError(status, f"upstream returned HTTP {status}: {text or 'empty body'}")
