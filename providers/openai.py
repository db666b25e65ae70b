"""OpenAI-compatible upstreams: vLLM, SGLang, TGI, Ollama, OpenAI itself.

The client's body is forwarded untouched except for ``model`` (replaced by the deployment's
upstream id), so every field the gateway does not know (tools, response_format, logprobs,
guided decoding, ...) reaches the engine as sent. Replies are relayed byte for byte.
"""

from __future__ import annotations

from typing import Any

import orjson

from aigw.config import DeploymentConfig
from aigw.errors import UpstreamStatusError
from aigw.types import Endpoint, UpstreamRequest

__all__ = ["OpenAIProvider", "PassthroughStream", "parse_openai_error"]


class PassthroughStream:
    """The upstream already speaks OpenAI SSE (including ``data: [DONE]``): relay as is."""

    __slots__ = ()

    def feed(self, chunk: bytes) -> bytes:
        return chunk

    def finish(self) -> bytes:
        return b""


_PASSTHROUGH = PassthroughStream()


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

    def build_request(self, endpoint: Endpoint, body: dict[str, Any]) -> UpstreamRequest:
        upstream_body = {**body, "model": self._model}
        return UpstreamRequest(self._urls[endpoint], self._headers, orjson.dumps(upstream_body))

    def parse_response(self, endpoint: Endpoint, status: int, body: bytes) -> bytes:
        return body

    def stream_translator(self, endpoint: Endpoint, request: dict[str, Any]) -> PassthroughStream:
        return _PASSTHROUGH

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
