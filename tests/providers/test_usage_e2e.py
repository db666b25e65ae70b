"""Usage through a running gateway, seen by the real OpenAI SDK: the gateway asks the upstream
for usage on every stream, and the client still gets only what it asked for."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest

from tests.conftest import deployment
from tests.servers import ThreadedServer

MODEL = "llama-3-8b"
HELLO: list[Any] = [{"role": "user", "content": "Hello there"}]

pytestmark = pytest.mark.e2e


@pytest.fixture
def client(
    start_backend: Callable[..., ThreadedServer], start_gateway: Callable[..., ThreadedServer]
) -> Iterator[openai.OpenAI]:
    backend = start_backend(seed=1)
    gateway = start_gateway(
        {"models": [{"name": MODEL, "deployments": [deployment(backend.url, "gpu-a")]}]}
    )
    with openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0) as sdk:
        yield sdk


def test_chat_stream_without_include_usage_has_no_usage_chunk(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=4, stream=True, extra_body={"ignore_eos": True}
    )
    chunks = list(stream)
    assert chunks, "the stream was empty"
    assert all(chunk.choices for chunk in chunks)  # no `choices: []` usage chunk
    assert all(chunk.usage is None for chunk in chunks)
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == ["length"]
    assert sum(1 for c in chunks if c.choices[0].delta.content) == 4


def test_chat_stream_with_include_usage_ends_with_it(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=HELLO,
        max_tokens=4,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    chunks = list(stream)
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == 4 and last.usage.prompt_tokens > 0
    assert all(chunk.choices and chunk.usage is None for chunk in chunks[:-1])


def test_completions_stream_without_include_usage(client: openai.OpenAI) -> None:
    stream = client.completions.create(
        model=MODEL, prompt="Once upon a time", max_tokens=3, stream=True
    )
    chunks = list(stream)
    assert chunks and all(chunk.choices and chunk.usage is None for chunk in chunks)


def test_non_streamed_reply_keeps_its_usage(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=3, extra_body={"ignore_eos": True}
    )
    assert completion.usage is not None and completion.usage.completion_tokens == 3
