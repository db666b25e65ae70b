"""A paced OpenAI-compatible upstream: a stream of ``max_tokens`` chunks, one every ``tick_s``.

Streams of known length make shutdown tests exact: which finish within a drain, which do not.
Non-streamed requests get a one-word reply at once. ``served`` counts requests per path.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import orjson

from tests.fakes.asgi import lifespan, request_body

__all__ = ["PacedUpstream"]


def _chunk(content: str | None, finish: str | None = None) -> bytes:
    delta = {} if content is None else {"content": content}
    data = {
        "id": "chatcmpl-paced",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "paced",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + orjson.dumps(data) + b"\n\n"


class PacedUpstream:
    """An ASGI app; serve it with :func:`tests.servers.serve_in_thread`."""

    def __init__(self, tick_s: float = 0.1) -> None:
        self.tick_s = tick_s
        self.served: Counter[str] = Counter()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        body = orjson.loads(await request_body(receive) or b"{}")
        self.served[scope["path"]] += 1
        if not body.get("stream"):
            reply = {
                "id": "chatcmpl-paced",
                "object": "chat.completion",
                "created": 0,
                "model": "paced",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "ok"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }
            raw = orjson.dumps(reply)
            headers = [(b"content-type", b"application/json")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": raw})
            return
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        gone = asyncio.ensure_future(receive())  # http.disconnect: the gateway let go
        try:
            for i in range(int(body.get("max_tokens", 1))):
                chunk = _chunk(f"t{i} ")
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await asyncio.wait([gone], timeout=self.tick_s)
                if gone.done():
                    return
        finally:
            gone.cancel()
        tail = _chunk(None, "stop") + b"data: [DONE]\n\n"
        await send({"type": "http.response.body", "body": tail, "more_body": False})
