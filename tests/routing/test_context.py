from __future__ import annotations

from typing import Any

import pytest

from aigw.routing.context import ContextBuilder
from aigw.tokens import TokenCounter
from aigw.types import Endpoint, RequestMeta


class CountingEncoding:
    def __init__(self) -> None:
        self.calls = 0

    def encode_ordinary(self, text: str) -> list[int]:
        self.calls += 1
        return list(range(len(text.split())))


def chat(*messages: tuple[str, str], **extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": r, "content": c} for r, c in messages], **extra}


SYSTEM = "You are a helpful assistant. " * 40  # ~1,100 characters: several blocks


async def build(body: dict[str, Any], window: int | None = None, **meta: Any) -> Any:
    encoding = CountingEncoding()
    builder = ContextBuilder(TokenCounter(encoding, "test"), block_chars=256)
    ctx = await builder.build(Endpoint.CHAT, body, RequestMeta(**meta), 1.0, window, None)
    return ctx, encoding


async def test_tokens_are_counted_only_near_a_context_window() -> None:
    body = chat(("user", "hello there friend"), max_tokens=10)
    ctx, encoding = await build(body, window=8192)
    assert encoding.calls == 0 and ctx.prompt_tokens > 0  # bytes + max_tokens fit: estimate
    ctx, encoding = await build(body, window=20)
    # The role is counted too, standing in for the chat template's per-message tokens.
    assert encoding.calls == 1 and ctx.prompt_tokens == 4 and ctx.max_tokens == 10


async def test_conversation_turns_share_prefix_blocks_and_affinity_key() -> None:
    first, _ = await build(chat(("system", SYSTEM), ("user", "What is BGP?")))
    later, _ = await build(
        chat(
            ("system", SYSTEM),
            ("user", "What is BGP?"),
            ("assistant", "A routing protocol. " * 30),
            ("user", "More?"),
        )
    )
    other, _ = await build(chat(("system", SYSTEM), ("user", "Tell me about OSPF instead")))
    assert len(first.prefix_blocks) >= 4
    assert later.prefix_blocks[: len(first.prefix_blocks)] == first.prefix_blocks
    assert later.affinity_key == first.affinity_key
    assert other.prefix_blocks[:4] == first.prefix_blocks[:4]  # the shared system prompt


async def test_hash_key_prefers_header_then_user_then_client_ip() -> None:
    body = chat(("user", "hi"), user="alice")
    ctx, _ = await build(body, hash_key="tenant-1", client_ip="10.0.0.1")
    assert ctx.hash_key == "tenant-1"
    ctx, _ = await build(body, client_ip="10.0.0.1")
    assert ctx.hash_key == "alice"
    ctx, _ = await build(chat(("user", "hi")), client_ip="10.0.0.1")
    assert ctx.hash_key == "10.0.0.1"


@pytest.mark.parametrize(
    ("headers", "region", "tags"),
    [
        (
            [(b"x-aigw-region", b"eu-west"), (b"x-aigw-tags", b"a100, fast")],
            "eu-west",
            {"a100", "fast"},
        ),
        ([(b"content-type", b"application/json")], None, set()),
    ],
)
def test_request_meta_from_scope(
    headers: list[tuple[bytes, bytes]], region: str | None, tags: set[str]
) -> None:
    meta = RequestMeta.from_scope({"headers": headers, "client": ("127.0.0.1", 5000)})
    assert meta.region == region and meta.tags == tags and meta.client_ip == "127.0.0.1"
