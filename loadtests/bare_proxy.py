"""The reference of the proxy benchmark: the simplest pass-through proxy one could write on
aigw's stack (Starlette + uvicorn with uvloop and httptools + one shared aiohttp session), with
no validation, routing, limits or metrics. Its CPU per request is the floor every Python proxy
on this stack pays; issue 8's targets are ratios against it, measured in the same run.

    python loadtests/bare_proxy.py --port 8100 --upstream http://127.0.0.1:9000
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route


def create_app(upstream: str) -> Starlette:
    session: aiohttp.ClientSession | None = None

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        nonlocal session
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        yield
        await session.close()

    async def proxy(request: Request) -> Response:
        assert session is not None
        body = await request.body()
        headers = {"content-type": "application/json"}
        reply = await session.post(f"{upstream}{request.url.path}", data=body, headers=headers)
        media_type = reply.headers.get("content-type", "application/json")
        if media_type.startswith("text/event-stream"):

            async def chunks() -> AsyncIterator[bytes]:
                async with reply:
                    async for chunk in reply.content.iter_any():
                        yield chunk

            return StreamingResponse(chunks(), reply.status, media_type=media_type)
        async with reply:
            return Response(await reply.read(), reply.status, media_type=media_type)

    return Starlette(routes=[Route("/v1/{path:path}", proxy, methods=["POST"])], lifespan=lifespan)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="origin of the upstream, no /v1")
    args = parser.parse_args()
    app = create_app(args.upstream)
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
