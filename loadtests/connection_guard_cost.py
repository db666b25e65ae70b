"""CPU per request of aigw's guarded HTTP protocol against uvicorn's httptools protocol.

    .venv/bin/python loadtests/connection_guard_cost.py

Feeds the same 10-header POST to both protocols over a fake transport, with a trivial ASGI app,
interleaving A and B seven times (this machine's speed drifts), and prints the median and the
minimum of each. The difference is what the head-size accounting and deadline stamps cost.
"""

from __future__ import annotations

import asyncio
import time

import uvicorn
import uvloop
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from aigw.connections import ConnectionGuard, ConnectionLimits

REQ = (
    b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:8080\r\naccept: application/json\r\n"
    b"accept-encoding: gzip, deflate\r\nconnection: keep-alive\r\nuser-agent: OpenAI/Python 1.50.0\r\n"
    b"x-stainless-lang: python\r\nauthorization: Bearer sk-xxxxxxxxxxxxxxxx\r\ncontent-type: application/json\r\n"
    b"content-length: 90\r\n\r\n" + b"x" * 90
)


async def app(scope, receive, send):
    await receive()
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    )
    await send({"type": "http.response.body", "body": b"ok"})


class T:
    def __init__(self):
        self.n = 0

    def write(self, d):
        self.n += 1

    def get_extra_info(self, k, d=None):
        return ("127.0.0.1", 1) if k in ("peername", "sockname") else d

    def is_closing(self):
        return False

    def close(self):
        pass

    def pause_reading(self):
        pass

    def resume_reading(self):
        pass

    def set_protocol(self, p):
        pass


async def run(cls, n):
    config = uvicorn.Config(app, log_level="warning", access_log=False)
    config.load()
    proto = cls(config=config, server_state=ServerState(), app_state={})
    t = T()
    proto.connection_made(t)
    for _ in range(200):
        proto.data_received(REQ)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
    c0 = time.process_time()
    for _ in range(n):
        proto.data_received(REQ)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
    return (time.process_time() - c0) / n * 1e6


async def main():
    guarded = ConnectionGuard(ConnectionLimits()).protocol_class()
    res = {"plain": [], "guarded": []}
    for _ in range(7):
        res["plain"].append(await run(HttpToolsProtocol, 20000))
        res["guarded"].append(await run(guarded, 20000))
    for k, v in res.items():
        v.sort()
        print(f"{k}: median {v[len(v) // 2]:.2f} CPU-us per request, min {v[0]:.2f}")


if __name__ == "__main__":
    uvloop.run(main())
