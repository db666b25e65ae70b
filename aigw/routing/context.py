"""Build a request's RouteContext: what policies may know, computed once per request.

Costs on the hot path, measured on this machine: prefix hashing ~7 us per 1,000 prompt
characters; exact token counting (tiktoken) ~90 us per 1,000 characters, so it runs only when
a context-window check could fail: byte-level BPE never yields more tokens than UTF-8 bytes,
so a prompt whose byte length plus max_tokens fits the smallest window fits without counting.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aigw.fleet.prefix import prefix_blocks
from aigw.tokens import TokenCounter
from aigw.types import Endpoint, RequestMeta, RouteContext

__all__ = ["ContextBuilder"]

_CHARS_PER_TOKEN = 4
_OPENING_BLOCKS_MAX = 8  # the affinity key covers at most this many leading blocks


class ContextBuilder:
    def __init__(self, counter: TokenCounter, block_chars: int) -> None:
        self._counter = counter
        self._block_chars = block_chars

    async def count_prompt(self, endpoint: Endpoint, body: Mapping[str, Any]) -> int:
        """The prompt's tokens as the upstream will bill them (chat template overhead included),
        for TPM; long prompts are counted in a thread."""
        if endpoint is Endpoint.CHAT:
            return await self._counter.count_chat_async(body.get("messages") or [])
        key = "input" if endpoint is Endpoint.EMBEDDINGS else "prompt"
        return await self._counter.count_prompt_async(body.get(key))

    async def build(
        self,
        endpoint: Endpoint,
        body: Mapping[str, Any],
        meta: RequestMeta,
        now: float,
        smallest_window: int | None,
        adapter: str | None,
        bound_deployment: str | None = None,
    ) -> RouteContext:
        text, opening_chars = _prompt(body)
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        if not isinstance(max_tokens, int):
            max_tokens = None
        size = len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
        if smallest_window is not None and size + (max_tokens or 0) > smallest_window:
            prompt_tokens = await self._counter.count_async(text)
        else:
            prompt_tokens = (len(text) + _CHARS_PER_TOKEN - 1) // _CHARS_PER_TOKEN
        blocks = (
            prefix_blocks(text, self._block_chars) if endpoint is not Endpoint.EMBEDDINGS else ()
        )
        opening = min(len(blocks), _OPENING_BLOCKS_MAX, max(1, opening_chars // self._block_chars))
        user = body.get("user")
        return RouteContext(
            endpoint=endpoint,
            model=body["model"],
            body=body,
            now=now,
            prompt_tokens=prompt_tokens,
            max_tokens=max_tokens,
            prefix_blocks=blocks,
            affinity_key=blocks[opening - 1] if blocks else None,
            hash_key=meta.hash_key or (user if isinstance(user, str) else None) or meta.client_ip,
            region=meta.region,
            tags=meta.tags,
            adapter=adapter,
            request_id=meta.request_id,
            bound_deployment=bound_deployment,
        )


def _prompt(body: Mapping[str, Any]) -> tuple[str, int]:
    """The prompt as one string, and how many leading characters open the conversation
    (system prompt(s) and the first user message): the stable part across its turns."""
    messages = body.get("messages")
    if isinstance(messages, list):
        parts: list[str] = []
        opening = 0
        for message in messages:
            if not isinstance(message, dict):
                continue
            role = message.get("role")
            content = message.get("content")
            if isinstance(content, list):
                content = "".join(
                    p["text"]
                    for p in content
                    if isinstance(p, dict) and isinstance(p.get("text"), str)
                )
            parts.append(f"{role}\x1f{content if isinstance(content, str) else ''}\x1e")
            if not opening and role == "user":
                opening = sum(len(p) for p in parts)
        text = "".join(parts)
        return text, opening or len(text)
    prompt = body.get("prompt")
    if isinstance(prompt, list):
        prompt = "\n".join(p for p in prompt if isinstance(p, str))
    text = prompt if isinstance(prompt, str) else ""
    return text, len(text)
