"""A client that goes away cancels its request's work: through the gateway's own protocol
(a Disconnect offered in the ASGI scope, no watcher task) and through any other ASGI server
(a task waiting on ``receive()`` for ``http.disconnect``)."""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any

import pytest

from aigw.api.asgi import Message, Scope, run_until_disconnect
from aigw.connections import DISCONNECT_EXTENSION, ConnectionGuard, ConnectionLimits, Disconnect
from tests.fakes.asgi import lifespan, request_body
from tests.servers import serve_in_thread


def offered(signal: Disconnect) -> Scope:
    return {"type": "http", "extensions": {DISCONNECT_EXTENSION: {"signal": signal}}}


async def never_receive() -> Message:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


class Work:
    """A request's work that waits until cancelled, saying when it started and how it ended."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled = False

    async def run(self) -> None:
        self.started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise


async def test_lost_connection_cancels_the_armed_work() -> None:
    signal = Disconnect()
    work = Work()
    request = asyncio.create_task(run_until_disconnect(offered(signal), never_receive, work.run()))
    await work.started.wait()
    signal.connection_lost()
    assert await request is True
    assert work.cancelled
    assert signal.cut
    assert request.cancelling() == 0  # the cut is not left pending on the request's task


async def test_no_task_waits_for_the_disconnect_under_the_gateway_protocol() -> None:
    work = Work()
    before = len(asyncio.all_tasks())
    request = asyncio.create_task(
        run_until_disconnect(offered(Disconnect()), never_receive, work.run())
    )
    await work.started.wait()
    assert len(asyncio.all_tasks()) == before + 1  # the request's own task only
    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request


async def test_connection_lost_before_arming_never_starts_the_work() -> None:
    signal = Disconnect()
    signal.connection_lost()  # gone while its body was being checked
    work = Work()
    assert await run_until_disconnect(offered(signal), never_receive, work.run()) is True
    assert not work.started.is_set()
    assert not signal.cut


async def test_other_cancellations_propagate() -> None:
    signal = Disconnect()
    work = Work()
    request = asyncio.create_task(run_until_disconnect(offered(signal), never_receive, work.run()))
    await work.started.wait()
    request.cancel()  # e.g. a shutdown's drain deadline, not the client
    with pytest.raises(asyncio.CancelledError):
        await request
    assert work.cancelled
    assert not signal.cut


async def test_a_loss_after_the_work_is_done_cancels_nothing() -> None:
    signal = Disconnect()

    async def quick() -> None:
        await asyncio.sleep(0)

    assert await run_until_disconnect(offered(signal), never_receive, quick()) is False
    signal.connection_lost()  # the client hangs up once it has its answer
    assert not signal.cut
    await asyncio.sleep(0)  # still running: the accounting after the reply is not cut short


async def test_without_the_extension_a_watcher_waits_for_http_disconnect() -> None:
    gone = asyncio.Event()

    async def receive() -> Message:
        await gone.wait()
        return {"type": "http.disconnect"}

    work = Work()
    request = asyncio.create_task(run_until_disconnect({"type": "http"}, receive, work.run()))
    await work.started.wait()
    gone.set()
    assert await request is True
    assert work.cancelled


@pytest.mark.parametrize("body_bytes", [0, 200_000], ids=["no body", "body over 64 KiB"])
def test_guarded_protocol_cuts_the_request_when_the_client_closes(body_bytes: int) -> None:
    """Over a real socket: the scope carries the Disconnect, and closing the connection
    before the response cancels the app's work through it. Also after a body large enough
    for uvicorn to have stopped reading (it resumes only in receive(), which the app no
    longer calls): a closed connection must still be seen."""
    seen: dict[str, Any] = {}
    armed = threading.Event()
    cancelled = threading.Event()

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        seen["body"] = len(await request_body(receive))
        seen["signal"] = scope["extensions"][DISCONNECT_EXTENSION]["signal"]
        armed.set()  # run_until_disconnect arms it before its first await

        async def wait_forever() -> None:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.set()
                raise

        seen["cut"] = await run_until_disconnect(scope, receive, wait_forever())

    protocol = ConnectionGuard(ConnectionLimits()).protocol_class()
    head = f"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: {body_bytes}\r\n\r\n".encode()
    with serve_in_thread(app, http=protocol) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(head + b"x" * body_bytes)
            assert armed.wait(10)
        assert cancelled.wait(10)  # closed with no response yet
    assert seen["body"] == body_bytes
    assert isinstance(seen["signal"], Disconnect)
    assert seen["signal"].cut
    assert seen["cut"] is True
