"""Secrets never leave: canary provider, header, admin and client keys, against an upstream that
echoes every header it receives, through every endpoint and error path. No response body,
response header or log line may contain a canary, nor a deployment's internal address."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import openai
import orjson
import pytest

from tests.fakes.asgi import lifespan, request_body
from tests.servers import ThreadedServer, free_port, serve_in_thread

PROVIDER_KEY = "sk-canary-provider-7f3a9c51"
HEADER_TOKEN = "tok-canary-header-55d1e0aa"
ADMIN_KEY = "adm-canary-admin-2b8e41ff"
CLIENT_KEY = "sk-canary-client-9c0d12ee"
CANARIES = (PROVIDER_KEY, HEADER_TOKEN, ADMIN_KEY, CLIENT_KEY)
HELLO: list[Any] = [{"role": "user", "content": "hi"}]


def echo_upstream() -> Any:
    """An OpenAI-compatible upstream that quotes the request's headers back, in a reply, an error
    or a stream, as the upstream model name (the gateway's deployment config) selects."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["method"] != "POST":  # the gateway's metrics scrape
            await _reply(send, 404, b"")
            return
        body = await request_body(receive)
        request = orjson.loads(body)
        echo = "; ".join(f"{k.decode()}: {v.decode()}" for k, v in scope["headers"])
        mode = request["model"]
        if mode == "error-400":
            await _reply(send, 400, {"error": {"message": f"bad request, you sent {echo}"}})
        elif mode == "error-500":
            await _reply(send, 500, f"<html>crash dumping headers {echo}</html>".encode())
        elif mode == "auth":
            await _reply(send, 401, {"error": {"message": f"invalid key in {echo}"}})
        elif request.get("stream"):
            await _stream(send, echo, fail=mode == "stream-error")
        else:
            await _reply(send, 200, _completion(echo))

    return app


def _completion(content: str) -> dict[str, Any]:
    return {
        "id": "c",
        "object": "chat.completion",
        "created": 1,
        "model": "echo",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


async def _reply(send: Any, status: int, body: dict[str, Any] | bytes) -> None:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": data})


async def _stream(send: Any, echo: str, *, fail: bool) -> None:
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "echo"}
    events = [
        {**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": echo}}]},
        {"error": {"message": f"engine died holding {echo}"}}
        if fail
        else {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    ]
    headers = [(b"content-type", b"text/event-stream")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    for event in events:
        data = b"data: " + orjson.dumps(event) + b"\n\n"
        await send({"type": "http.response.body", "body": data, "more_body": True})
    await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})


def _deployment(upstream: ThreadedServer, id: str, upstream_model: str) -> dict[str, Any]:
    return {
        "id": id,
        "provider": "openai",
        "base_url": f"{upstream.url}/v1",
        "model": upstream_model,
        "api_key": PROVIDER_KEY,
        "headers": {"x-upstream-token": HEADER_TOKEN},
        "metrics_url": f"{upstream.url}/metrics",
    }


@pytest.fixture
def gateway(
    servers: ExitStack, start_gateway: Callable[..., ThreadedServer]
) -> Iterator[ThreadedServer]:
    upstream = servers.enter_context(serve_in_thread(echo_upstream()))
    dead = f"http://127.0.0.1:{free_port()}/v1"
    models = {
        "ok": [_deployment(upstream, "echo-ok", "ok")],
        "stream-error": [_deployment(upstream, "echo-stream-error", "stream-error")],
        "error-400": [_deployment(upstream, "echo-400", "error-400")],
        "error-500": [
            _deployment(upstream, "echo-500-a", "error-500"),
            _deployment(upstream, "echo-500-b", "error-500"),
        ],
        "auth": [_deployment(upstream, "echo-auth", "auth")],
        "dead": [{**_deployment(upstream, "dead", "ok"), "base_url": dead}],
    }
    yield start_gateway(
        {
            "models": [{"name": name, "deployments": deps} for name, deps in models.items()],
            "auth": {
                "keys": [{"name": "canary-team", "key": CLIENT_KEY}],
                "admin_key": ADMIN_KEY,
            },
        }
    )


class Seen:
    """Everything the gateway said: response statuses, headers and bodies."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def response(self, response: httpx.Response) -> None:
        response.read()
        self.texts.append(f"{response.status_code} {dict(response.headers)} {response.text}")


def test_no_canary_leaves_the_gateway(
    gateway: ThreadedServer,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    seen = Seen()
    http = httpx.Client(base_url=gateway.url, event_hooks={"response": [seen.response]})
    client = openai.OpenAI(
        base_url=f"{gateway.url}/v1", api_key=CLIENT_KEY, max_retries=0, http_client=http
    )
    with http, client:
        reply = client.chat.completions.create(model="ok", messages=HELLO)
        seen.texts.append(reply.model_dump_json())
        assert "[redacted]" in (reply.choices[0].message.content or "")  # it did echo
        for chunk in client.chat.completions.create(model="ok", messages=HELLO, stream=True):
            seen.texts.append(chunk.model_dump_json())
        with pytest.raises(openai.APIError) as raised:  # an error event in the stream
            for chunk in client.chat.completions.create(
                model="stream-error", messages=HELLO, stream=True
            ):
                seen.texts.append(chunk.model_dump_json())
        seen.texts.append(str(raised.value))
        assert "[redacted]" in str(raised.value)
        errors = []
        for model in ("error-400", "error-500", "auth", "dead"):
            with pytest.raises(openai.APIError) as raised:
                client.chat.completions.create(model=model, messages=HELLO)
            errors.append(str(raised.value))
        seen.texts.append(client.models.list().model_dump_json())
        seen.texts.append(client.models.retrieve("ok").model_dump_json())
        admin = {"authorization": f"Bearer {ADMIN_KEY}"}
        http.get("/admin/deployments", headers=admin)
        http.post("/admin/deployments/echo-ok/drain", headers=admin, json={})
        http.post("/admin/deployments/echo-ok/undrain", headers=admin, json={})
        http.get("/admin/deployments", headers={"authorization": f"Bearer {CLIENT_KEY}"})
        http.get("/admin/deployments", headers={"authorization": f"Bearer {ADMIN_KEY}x"})
        http.post("/v1/chat/completions", headers={"authorization": f"Bearer {CLIENT_KEY}x"})
        http.post("/v1/chat/completions", content=b"{not json", headers=_bearer())
        http.post("/v1/chat/completions", json={"model": "ok"}, headers=_bearer())
        http.get("/v1/nowhere", headers=_bearer())
        http.get("/healthz")
        http.get("/readyz")
    out, err = capfd.readouterr()
    everything = "\n".join([*seen.texts, *errors, caplog.text, out, err])
    assert len(seen.texts) > 20
    for canary in CANARIES:
        assert canary not in everything
    # Error messages name deployments by id, never by address, also when they quote the
    # upstream (streamed model output, and error events inside a stream, are relayed as sent).
    assert "127.0.0.1" not in "\n".join(errors)
    assert "host: [upstream]" in errors[0]


def _bearer() -> dict[str, str]:
    return {"authorization": f"Bearer {CLIENT_KEY}"}
