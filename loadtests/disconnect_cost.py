"""CPU per request of noticing a client's disconnect (``aigw.api.asgi.run_until_disconnect``).

Two ways, on uvloop, one request being: arm, await a work that suspends once (as an upstream
call does), disarm. ``watcher``: a task per request waiting on ``receive()`` for
``http.disconnect`` (what any ASGI server needs); ``signal``: the
:class:`~aigw.connections.Disconnect` the gateway's own protocol offers in the scope; ``none``:
the work alone. Process CPU time, best of 5 rounds.

    .venv/bin/python loadtests/disconnect_cost.py [--requests N]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import uvloop

from aigw.api.asgi import Message, run_until_disconnect
from aigw.connections import DISCONNECT_EXTENSION, Disconnect


async def _never() -> Message:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


async def _work(loop: asyncio.AbstractEventLoop) -> None:
    reply = loop.create_future()
    loop.call_soon(reply.set_result, None)
    await reply


def _scope(way: str) -> dict[str, Any]:
    if way == "watcher":
        return {"type": "http"}
    return {"type": "http", "extensions": {DISCONNECT_EXTENSION: {"signal": Disconnect()}}}


async def _measure(requests: int) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    best: dict[str, float] = {}
    for _ in range(5):
        for way in ("watcher", "signal", "none"):
            started = time.process_time()
            for _ in range(requests):
                if way == "none":
                    await _work(loop)
                else:
                    await run_until_disconnect(_scope(way), _never, _work(loop))
            micros = (time.process_time() - started) / requests * 1e6
            best[way] = min(best.get(way, micros), micros)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=50_000, help="per round and way")
    args = parser.parse_args()
    best = uvloop.run(_measure(args.requests))
    for way, micros in best.items():
        print(f"{way:8s} {micros:6.2f} CPU-us per request")
    print(f"the signal saves {best['watcher'] - best['signal']:.1f} CPU-us per request")


if __name__ == "__main__":
    main()
