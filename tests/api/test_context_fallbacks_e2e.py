"""``context_fallbacks`` over real sockets with the OpenAI SDK: a prompt too long for the
model's window is served by its context fallback; one that fits stays; one too long for both
is the 400 it always was."""

from __future__ import annotations

from collections.abc import Callable

import openai
import pytest

from tests.conftest import deployment
from tests.servers import ThreadedServer

Start = Callable[..., ThreadedServer]


def test_a_long_prompt_is_served_by_the_context_fallback(
    start_backend: Start, start_gateway: Start
) -> None:
    backend = start_backend()
    small = deployment(backend.url, "small-1", context_window=512)
    large = deployment(backend.url, "large-1", context_window=4096)
    gateway = start_gateway(
        {
            "models": [
                {"name": "small", "deployments": [small], "context_fallbacks": ["large"]},
                {"name": "large", "deployments": [large]},
            ]
        }
    )
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0)
    with client:
        long = [{"role": "user", "content": "story " * 1000}]  # ~1,000 tokens
        raw = client.chat.completions.with_raw_response.create(
            model="small", messages=long, max_tokens=16
        )
        assert raw.headers["x-aigw-deployment"] == "large-1"
        assert raw.parse().choices[0].message.content
        short = [{"role": "user", "content": "hi"}]
        raw = client.chat.completions.with_raw_response.create(
            model="small", messages=short, max_tokens=16
        )
        assert raw.headers["x-aigw-deployment"] == "small-1"
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(
                model="small",
                messages=[{"role": "user", "content": "story " * 5000}],
                max_tokens=16,
            )
        assert info.value.code == "no_deployment_context_window"
