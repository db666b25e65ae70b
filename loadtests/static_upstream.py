"""The cheapest OpenAI-compatible upstream we can write: canned replies, no simulation.

Used by proxy_cpu.py so that the measured CPU is the gateway's, not the backend's. Serves
POST /v1/chat/completions (JSON, or SSE with --chunks chunks when "stream": true).

For the soak (soak.py), two options that are off by default: ``--error-every N`` answers
every Nth request with a 500 and OpenAI's error JSON (message :data:`INJECTED`), and
``--chunk-delay S`` sends the chunks of a stream one by one, S seconds apart, so that
streams stay in flight (a client that leaves mid-way is seen: the stream stops and counts as
cut). ``GET /stats`` answers what it served: requests, injected errors, streams, cut streams.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from typing import Any

import orjson
import uvicorn

REPLY = orjson.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "bench",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "pong"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 8, "completion_tokens": 1, "total_tokens": 9},
    }
)
INJECTED = "injected upstream error (static_upstream --error-every)"
ERROR = orjson.dumps(
    {"error": {"message": INJECTED, "type": "server_error", "param": None, "code": None}}
)


def sse_events(chunks: int) -> list[bytes]:
    """The stream's events, ``data: [DONE]`` last."""
    events = []
    for i in range(chunks):
        delta = {"role": "assistant", "content": ""} if i == 0 else {"content": f" t{i}"}
        chunk = {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": "bench",
            "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
        }
        events.append(b"data: " + orjson.dumps(chunk) + b"\n\n")
    return [*events, b"data: [DONE]\n\n"]


def sse(chunks: int) -> bytes:
    return b"".join(sse_events(chunks))


def create_app(chunks: int, error_every: int = 0, chunk_delay: float = 0.0) -> Any:
    """``error_every``: every Nth request gets a 500 (0: never); ``chunk_delay``: seconds
    between the chunks of a stream (0: the whole stream in one write, as before)."""
    events = sse_events(chunks)
    stream_body = b"".join(events)
    json_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(REPLY)).encode()),
    ]
    error_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(ERROR)).encode()),
    ]
    sse_headers = [(b"content-type", b"text/event-stream")]
    stats = {"requests": 0, "errors": 0, "streams": 0, "streams_cut": 0}

    async def paced(receive: Any, send: Any) -> None:
        """The events one by one, ``chunk_delay`` apart, until done or the client leaves."""
        gone = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        watcher = asyncio.create_task(watch())
        try:
            for i, event in enumerate(events):
                if i:
                    await asyncio.sleep(chunk_delay)
                if gone.is_set():
                    stats["streams_cut"] += 1
                    return
                await send({"type": "http.response.body", "body": event, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["method"] == "GET" and scope["path"] == "/stats":
            body = orjson.dumps(stats)
            await send({"type": "http.response.start", "status": 200, "headers": json_headers[:1]})
            await send({"type": "http.response.body", "body": body})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        stats["requests"] += 1
        if error_every and stats["requests"] % error_every == 0:
            stats["errors"] += 1
            await send({"type": "http.response.start", "status": 500, "headers": error_headers})
            await send({"type": "http.response.body", "body": ERROR})
        elif b'"stream":true' in body.replace(b" ", b""):
            stats["streams"] += 1
            await send({"type": "http.response.start", "status": 200, "headers": sse_headers})
            if chunk_delay > 0:
                await paced(receive, send)
            else:
                await send({"type": "http.response.body", "body": stream_body})
        else:
            await send({"type": "http.response.start", "status": 200, "headers": json_headers})
            await send({"type": "http.response.body", "body": REPLY})

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--chunks", type=int, default=8)
    parser.add_argument(
        "--error-every", type=int, default=0, metavar="N", help="every Nth request: a 500"
    )
    parser.add_argument(
        "--chunk-delay",
        type=float,
        default=0.0,
        metavar="S",
        help="seconds between a stream's chunks (0: the whole stream in one write)",
    )
    args = parser.parse_args()
    uvicorn.run(
        create_app(args.chunks, args.error_every, args.chunk_delay),
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
