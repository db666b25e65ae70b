"""The multiplexed connection of the hot path's script calls, against a real redis-server.

Run under uvloop as the gateway runs (its transports are no ``asyncio.Transport`` subclass),
plus the asyncio loop of the other state tests.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable

import pytest
import uvloop
from redis.asyncio import Redis

from aigw.state.base import StateUnavailableError
from aigw.state.multiplex import encode_command
from aigw.state.scripts import Script, connect
from tests.state.conftest import RedisServer, state_config

ECHO = "return {KEYS[1], ARGV[1], tonumber(ARGV[2]) + 1}"


def under_uvloop(test: Callable[[], Awaitable[None]]) -> None:
    uvloop.run(test())


def test_encode_command_is_resp() -> None:
    assert encode_command(("EVALSHA", "ab", 1, "k", 2.5, b"\x00")) == (
        b"*6\r\n$7\r\nEVALSHA\r\n$2\r\nab\r\n$1\r\n1\r\n$1\r\nk\r\n$3\r\n2.5\r\n$1\r\n\x00\r\n"
    )


def test_concurrent_calls_each_get_their_own_reply(redis_server: RedisServer) -> None:
    config = state_config(redis_server.url)

    async def test() -> None:
        client = connect(config)
        assert client.scripts is not None  # the multiplexed path, not redis-py's
        try:
            echo = Script(client, ECHO, config.timeout_s)
            replies = await asyncio.gather(*(echo([f"k{i}"], [f"v{i}", i]) for i in range(500)))
            assert replies == [[f"k{i}", f"v{i}", i + 1] for i in range(500)]
        finally:
            await client.aclose()

    under_uvloop(test)


async def test_an_error_reply_fails_that_call_only(redis_server: RedisServer) -> None:
    config = state_config(redis_server.url)
    client = connect(config)
    try:
        bad = Script(client, "return redis.error_reply('nope')", config.timeout_s)
        echo = Script(client, ECHO, config.timeout_s)
        results = await asyncio.gather(
            echo(["a"], ["b", 1]), bad([], []), echo(["c"], ["d", 2]), return_exceptions=True
        )
        assert results[0] == ["a", "b", 2] and results[2] == ["c", "d", 3]
        assert isinstance(results[1], StateUnavailableError) and "nope" in str(results[1])
    finally:
        await client.aclose()


async def test_scripts_flushed_from_redis_are_loaded_again(redis_server: RedisServer) -> None:
    config = state_config(redis_server.url)
    client = connect(config)
    try:
        echo = Script(client, ECHO, config.timeout_s)
        await echo.load()
        await client.script_flush()
        assert await echo(["k"], ["v", 1]) == ["k", "v", 2]
    finally:
        await client.aclose()


async def test_password_and_database_from_the_url(own_redis: RedisServer) -> None:
    admin = Redis.from_url(own_redis.url)
    await admin.config_set("requirepass", "s3cret")
    await admin.aclose()
    url = f"redis://:s3cret@127.0.0.1:{own_redis.port}/3"
    config = state_config(url)
    client = connect(config)
    try:
        setter = Script(client, "return redis.call('SET', KEYS[1], ARGV[1])", config.timeout_s)
        assert await setter(["where"], ["db3"]) == "OK"
        check = Redis.from_url(url, decode_responses=True)
        assert await check.get("where") == "db3"
        await check.aclose()
    finally:
        await client.aclose()


async def test_a_wrong_password_is_unavailable_not_a_hang(own_redis: RedisServer) -> None:
    admin = Redis.from_url(own_redis.url)
    await admin.config_set("requirepass", "right")
    await admin.aclose()
    config = state_config(f"redis://:wrong@127.0.0.1:{own_redis.port}/0")
    client = connect(config)
    try:
        echo = Script(client, ECHO, config.timeout_s)
        with pytest.raises(StateUnavailableError):
            await echo(["k"], ["v", 1])
    finally:
        await client.aclose()


def test_a_stopped_redis_times_out_then_the_next_call_reconnects(own_redis: RedisServer) -> None:
    config = state_config(own_redis.url, timeout_s=0.3)

    async def test() -> None:
        client = connect(config)
        try:
            echo = Script(client, ECHO, config.timeout_s)
            assert await echo(["k"], ["v", 1]) == ["k", "v", 2]
            own_redis.signal(signal.SIGSTOP)
            started = time.monotonic()
            results = await asyncio.gather(
                *(echo(["k"], ["v", i]) for i in range(20)), return_exceptions=True
            )
            assert all(isinstance(r, StateUnavailableError) for r in results), results
            assert time.monotonic() - started < 0.3 + 0.5
            own_redis.signal(signal.SIGCONT)
            assert await echo(["k"], ["v", 5]) == ["k", "v", 6]
        finally:
            own_redis.signal(signal.SIGCONT)
            await client.aclose()

    under_uvloop(test)


def test_a_restarted_redis_is_used_again(own_redis: RedisServer) -> None:
    config = state_config(own_redis.url)

    async def test() -> None:
        client = connect(config)
        try:
            echo = Script(client, ECHO, config.timeout_s)
            assert await echo(["k"], ["v", 1]) == ["k", "v", 2]
            own_redis.kill()
            with pytest.raises(StateUnavailableError):
                await echo(["k"], ["v", 1])
            own_redis.start()  # same port, empty: the script is loaded again too
            assert await echo(["k"], ["v", 2]) == ["k", "v", 3]
        finally:
            await client.aclose()

    under_uvloop(test)
