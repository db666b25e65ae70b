"""The cheapest OpenAI-compatible upstream we can write: canned replies, no simulation.

Used by proxy_cpu.py so that the measured CPU is the gateway's, not the backend's. Serves
POST /v1/chat/completions (JSON, or SSE with --chunks chunks when "stream": true).
"""

from __future__ import annotations

import argparse
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


def sse(chunks: int) -> bytes:
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
    return b"".join(events) + b"data: [DONE]\n\n"


def create_app(chunks: int) -> Any:
    stream_body = sse(chunks)
    json_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(REPLY)).encode()),
    ]
    sse_headers = [(b"content-type", b"text/event-stream")]

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if b'"stream":true' in body.replace(b" ", b""):
            await send({"type": "http.response.start", "status": 200, "headers": sse_headers})
            await send({"type": "http.response.body", "body": stream_body})
        else:
            await send({"type": "http.response.start", "status": 200, "headers": json_headers})
            await send({"type": "http.response.body", "body": REPLY})

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--chunks", type=int, default=8)
    args = parser.parse_args()
    uvicorn.run(
        create_app(args.chunks),
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
