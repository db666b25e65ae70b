"""Client connections over real sockets: head size, head/body deadlines, the connection cap,
and a client that stops reading a stream (aigw/connections.py)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import openai
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from aigw.app import create_app
from aigw.configfile import parse_config
from aigw.connections import ConnectionGuard, ConnectionLimits
from tests.conftest import deployment
from tests.fakes.asgi import lifespan, request_body
from tests.servers import ThreadedServer, serve_in_thread

FAST_SWEEP = 0.05


def limits(**overrides: Any) -> ConnectionLimits:
    return ConnectionLimits(**{"sweep_interval_s": FAST_SWEEP, **overrides})


@contextmanager
def gateway(
    connection_limits: ConnectionLimits, config: dict[str, Any] | None = None
) -> Iterator[ThreadedServer]:
    nowhere = {"models": [{"name": "m", "deployments": [deployment("http://127.0.0.1:9", "x")]}]}
    parsed = parse_config(config or nowhere, source="<test>")
    protocol = ConnectionGuard(connection_limits).protocol_class()
    with serve_in_thread(create_app(parsed, seed=0), http=protocol) as server:
        yield server


def connect(server: ThreadedServer, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:  # must be set before connect to bound the TCP window
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", server.port))
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (blocks on the close)."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def read_response(sock: socket.socket) -> bytes:
    """One whole response with a content-length (the connection stays open)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def status_and_error(response: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = response.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, orjson.loads(body)["error"]


def get(path: str, *headers: str) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "host: 127.0.0.1", *headers, "", ""]
    return "\r\n".join(lines).encode()


# -- head size -----------------------------------------------------------------------------


def test_a_head_over_the_limit_in_one_write_gets_431() -> None:
    with gateway(limits(max_header_bytes=16 * 1024)) as server, connect(server) as sock:
        sock.sendall(get("/healthz", "x-big: " + "a" * 20_000))
        status, error = status_and_error(read_until_closed(sock))
    assert status == 431
    assert error["code"] == "request_header_too_large"
    assert "16384" in error["message"]


def test_an_unfinished_head_is_cut_once_it_passes_the_limit() -> None:
    """A header line that never ends is refused as it grows, not buffered to its end."""
    with gateway(limits(max_header_bytes=16 * 1024)) as server, connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nx-big: ")
        # 256 KiB of one header line, never finished: the client is still sending long after
        # the refusal, which it must read as a 431, not a reset (the server lingers, reading).
        for _ in range(64):
            sock.sendall(b"a" * 4096)
        status, error = status_and_error(read_until_closed(sock))
    assert status == 431
    assert error["code"] == "request_header_too_large"


def test_a_client_still_sending_after_the_431_is_not_reset() -> None:
    """The refusal is read first; what the client sends after it is read and discarded by a
    lingering server (a closed socket would answer it with a reset), then the server's FIN
    ends the exchange cleanly."""
    with gateway(limits(max_header_bytes=16 * 1024)) as server, connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nx-big: " + b"a" * 20_000)
        response = read_response(sock)  # the 431 has come: the server has refused
        assert status_and_error(response)[0] == 431
        for _ in range(16):  # 64 KiB more of the same head, after the refusal
            sock.sendall(b"a" * 4096)
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(65536) == b""  # a clean end, not ConnectionResetError


def test_a_head_under_the_limit_is_served_and_the_connection_kept() -> None:
    with gateway(limits(max_header_bytes=16 * 1024)) as server, connect(server) as sock:
        for _ in range(2):  # keep-alive: the second head is measured on its own
            sock.sendall(get("/healthz", "x-big: " + "a" * 12_000))
            assert read_response(sock).startswith(b"HTTP/1.1 200")


# -- deadlines ------------------------------------------------------------------------------


def test_a_connection_that_sends_nothing_gets_408() -> None:
    with gateway(limits(header_timeout_s=0.3)) as server, connect(server) as sock:
        started = time.monotonic()
        status, error = status_and_error(read_until_closed(sock))
    assert status == 408
    assert error["code"] == "request_timeout"
    assert 0.25 < time.monotonic() - started < 5


def test_a_slow_head_gets_408() -> None:
    with gateway(limits(header_timeout_s=0.3)) as server, connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
        assert status_and_error(read_until_closed(sock))[0] == 408


def test_a_slow_head_on_a_kept_alive_connection_gets_408() -> None:
    with gateway(limits(header_timeout_s=0.3)) as server, connect(server) as sock:
        sock.sendall(get("/healthz"))
        assert read_response(sock).startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        assert status_and_error(read_until_closed(sock))[0] == 408


def test_a_slow_body_is_dropped(caplog: pytest.LogCaptureFixture) -> None:
    with gateway(limits(body_timeout_s=0.3)) as server, connect(server) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
            b"content-type: application/json\r\ncontent-length: 1000\r\n\r\n{"
        )
        started = time.monotonic()
        assert read_until_closed(sock) == b""
    assert time.monotonic() - started < 5
    assert "slow request body" in caplog.text
    assert "Traceback" not in caplog.text


def test_a_request_slower_than_the_head_deadline_is_not_cut() -> None:
    """The head deadline covers the head only, not the time the response takes."""
    app = Starlette(routes=[Route("/slow", _slow)])
    protocol = ConnectionGuard(limits(header_timeout_s=0.2)).protocol_class()
    with serve_in_thread(app, http=protocol) as server, connect(server) as sock:
        sock.sendall(get("/slow"))
        assert read_response(sock).startswith(b"HTTP/1.1 200")


async def _slow(request: Request) -> Response:
    await asyncio.sleep(0.6)  # the behaviour under test is "slower than the deadline"
    return Response("done")


# -- the connection cap ----------------------------------------------------------------------


def test_connections_beyond_the_cap_get_503() -> None:
    with gateway(limits(max_connections=2)) as server, ExitStack() as held:
        for _ in range(2):
            sock = held.enter_context(connect(server))
            sock.sendall(get("/healthz"))  # answered: the server has admitted it
            assert read_response(sock).startswith(b"HTTP/1.1 200")
        with connect(server) as third:
            status, error = status_and_error(read_until_closed(third))
        assert status == 503
        assert error["code"] == "too_many_connections"
        held.close()  # the two leave; a new connection is served again
        with connect(server) as sock:
            sock.sendall(get("/healthz", "connection: close"))
            assert read_until_closed(sock).startswith(b"HTTP/1.1 200")


# -- a client that stops reading ------------------------------------------------------------


def endless_upstream(aborted: threading.Event) -> Any:
    """An OpenAI-compatible upstream (raw ASGI) whose streams end only when the gateway hangs
    up, which sets ``aborted``; non-streamed requests get a short reply."""
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "sim-llama"}
    delta = {**chunk, "choices": [{"index": 0, "delta": {"content": "x" * 16_000}}]}
    event = b"data: " + orjson.dumps(delta) + b"\n\n"
    reply = orjson.dumps(
        {
            "id": "c",
            "object": "chat.completion",
            "created": 1,
            "model": "sim-llama",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "ok"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
    )

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        body = await request_body(receive)
        stream = orjson.loads(body).get("stream")
        content_type = b"text/event-stream" if stream else b"application/json"
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", content_type)],
            }
        )
        if not stream:
            await send({"type": "http.response.body", "body": reply})
            return
        gone = asyncio.ensure_future(receive())  # http.disconnect once the gateway hangs up
        while not gone.done():
            await send({"type": "http.response.body", "body": event, "more_body": True})
            await asyncio.sleep(0)
        aborted.set()

    return app


def test_a_client_that_stops_reading_a_stream_is_dropped_and_its_slot_released(
    servers: ExitStack,
) -> None:
    aborted = threading.Event()
    upstream = servers.enter_context(serve_in_thread(endless_upstream(aborted)))
    config = {
        "models": [
            {
                "name": "m",
                "deployments": [deployment(upstream.url, "only", max_concurrency=1)],
                "queue": {"timeout_s": 2},
            }
        ]
    }
    server = servers.enter_context(gateway(limits(send_timeout_s=0.5), config))
    body = orjson.dumps(
        {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    )
    stalled = servers.enter_context(connect(server, rcvbuf=4096))
    stalled.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    # The client never reads: the gateway's buffers fill, then it gives up on the client.
    assert aborted.wait(15), "the upstream stream was never cancelled"
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    with client:
        reply = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}]
        )
    assert reply.choices[0].message.content == "ok"  # the only slot is free again
