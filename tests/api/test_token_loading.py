"""When the gateway loads its tiktoken encoding (~40 MB): at start-up when a key or model has
a TPM quota (every request counts), otherwise on the first count — a prompt that may not fit
a context window, or a TPM quota added by a reload."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from aigw.app import create_app
from aigw.configfile import load_config, parse_config
from aigw.limits import counts_prompt_tokens
from aigw.tokens import TokenCounter
from tests.api.test_reload import ADMIN_KEY, reload, write
from tests.conftest import deployment
from tests.e2e.procs import wait_until
from tests.servers import ThreadedServer, serve_in_thread

KEY = "sk-team-tokens-0123456789"
LOADED = "token counts are exact: tiktoken encoding"

pytestmark = pytest.mark.skipif(
    not Path(os.environ.get("TIKTOKEN_CACHE_DIR", "/nonexistent")).is_dir(),
    reason="TIKTOKEN_CACHE_DIR with offline encodings not set",
)


def config(backend: ThreadedServer, tpm: int | None = None, window: int | None = None) -> Any:
    key: dict[str, Any] = {"name": "team", "key": KEY}
    if tpm is not None:
        key["tpm"] = tpm
    extra = {"context_window": window} if window is not None else {}
    return {
        "server": {"drain_seconds": 1, "shutdown_delay_s": 0},
        "auth": {"admin_key": ADMIN_KEY, "keys": [key]},
        "models": [
            {
                "name": "m",
                "policy": "round-robin",
                "deployments": [deployment(backend.url, "a", **extra)],
            }
        ],
    }


def counter_of(app: Any) -> TokenCounter:
    counter: TokenCounter = app.state.aigw.gateway._contexts._counter  # no public view
    return counter


def chat(gateway: ThreadedServer, content: str) -> httpx.Response:
    body = {"model": "m", "messages": [{"role": "user", "content": content}], "max_tokens": 3}
    headers = {"authorization": f"Bearer {KEY}"}
    return httpx.post(f"{gateway.url}/v1/chat/completions", json=body, headers=headers, timeout=10)


def test_counts_prompt_tokens_when_a_key_or_a_model_has_tpm() -> None:
    def parsed(key_tpm: int | None, model_tpm: int | None, deployment_tpm: int | None) -> Any:
        key = {"name": "k", "key": KEY, **({"tpm": key_tpm} if key_tpm else {})}
        dep = deployment(
            "http://127.0.0.1:9", "a", **({"tpm": deployment_tpm} if deployment_tpm else {})
        )
        model = {"name": "m", "deployments": [dep], **({"tpm": model_tpm} if model_tpm else {})}
        return parse_config({"auth": {"keys": [key]}, "models": [model]}, source="<test>")

    assert counts_prompt_tokens(parsed(1000, None, None))
    assert counts_prompt_tokens(parsed(None, 1000, None))
    assert not counts_prompt_tokens(parsed(None, None, 1000))  # charged routing's estimate
    assert not counts_prompt_tokens(parsed(None, None, None))


def test_a_tpm_quota_loads_the_encoding_at_start_up(
    start_backend: Callable[..., ThreadedServer],
    start_gateway: Callable[..., ThreadedServer],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="aigw.tokens")
    start_gateway(config(start_backend(), tpm=1_000_000))
    wait_until(lambda: LOADED in caplog.text, 10, "the encoding loaded without a request")


def test_without_tpm_the_encoding_loads_on_the_first_prompt_that_may_not_fit(
    start_backend: Callable[..., ThreadedServer],
    servers: ExitStack,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="aigw.tokens")
    parsed = parse_config(config(start_backend(), window=4096), source="<test>")
    app = create_app(parsed, seed=0)
    gateway = servers.enter_context(serve_in_thread(app))
    assert chat(gateway, "hello").status_code == 200  # short: fits without counting
    counter = counter_of(app)
    assert counter.load_task is None and not counter.exact  # nothing loaded, nor loading
    # 5,000 ASCII bytes may exceed 4,096 tokens: counted exactly (~1,000 tokens) and served.
    reply = chat(gateway, "hello " * 833)
    assert reply.status_code == 200, reply.text
    assert LOADED in caplog.text and counter.exact  # the request waited for the load
    # one that is truly too long is refused on the exact count
    too_long = chat(gateway, "hello " * 5000)
    assert too_long.status_code == 400, too_long.text


def test_a_reload_that_adds_tpm_loads_the_encoding(
    start_backend: Callable[..., ThreadedServer],
    servers: ExitStack,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="aigw.tokens")
    backend = start_backend()
    path = tmp_path / "aigw.yaml"
    write(path, config(backend))
    app = create_app(load_config(path), seed=0, load=lambda: load_config(path))
    gateway = servers.enter_context(serve_in_thread(app))
    assert chat(gateway, "hello").status_code == 200
    assert counter_of(app).load_task is None and not counter_of(app).exact
    write(path, config(backend, tpm=1_000_000))
    assert reload(gateway).status_code == 200
    wait_until(lambda: LOADED in caplog.text, 10, "the encoding loaded after the reload")
