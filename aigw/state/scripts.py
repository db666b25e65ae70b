"""The Redis client, its Lua scripts, and the one place Redis errors are translated.

Every call is bounded twice: the socket timeouts (``state.timeout_s``) and an overall
``asyncio.timeout`` of the same length, so a stopped Redis (connections open, nobody
answering) costs a caller ``timeout_s`` at most. redis-py's own retries are off: a retry
would multiply that bound, and the resilient wrapper has a better answer than trying again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from importlib import resources
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError

from aigw.config import StateConfig
from aigw.state.base import StateUnavailableError
from aigw.state.multiplex import Multiplexer, encode_command, multiplexer_for

__all__ = ["Script", "StateRedis", "connect", "lua_source", "ping"]

Arg = str | int | float


class StateRedis(Redis):
    """redis-py's client, with the :class:`~aigw.state.multiplex.Multiplexer` that carries
    the hot path's script calls (None over TLS: they go through redis-py then)."""

    scripts: Multiplexer | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        if self.scripts is not None:
            await self.scripts.aclose()
        await super().aclose(close_connection_pool)


def connect(config: StateConfig, *, max_connections: int = 128) -> StateRedis:
    """A client for ``config.url``; it connects on first use (so Redis may be down now).

    At most ``max_connections`` connections (one is the grant listener's); a call that finds
    none free waits for one, within its ``timeout_s`` like everything else.
    """
    if config.url is None:
        raise ValueError("state.url is required for the redis backend")
    pool = BlockingConnectionPool.from_url(
        config.url,
        max_connections=max_connections,
        timeout=config.timeout_s,
        socket_timeout=config.timeout_s,
        socket_connect_timeout=config.timeout_s,
        retry=Retry(NoBackoff(), 0),
        decode_responses=True,
    )
    client = StateRedis.from_pool(pool)  # closing the client closes the pool
    assert isinstance(client, StateRedis)
    client.scripts = multiplexer_for(
        pool.connection_class, pool.connection_kwargs, config.timeout_s
    )
    return client


def lua_source(name: str, *, prelude: str | None = None) -> str:
    """The text of ``lua/<name>.lua``, after ``lua/<prelude>.lua`` when one is given."""
    folder = resources.files("aigw.state") / "lua"
    text = (folder / f"{name}.lua").read_text(encoding="utf-8")
    if prelude is not None:
        text = (folder / f"{prelude}.lua").read_text(encoding="utf-8") + "\n" + text
    return text


class Script:
    """One Lua script: loaded with ``SCRIPT LOAD``, called with ``EVALSHA`` (reloaded after a
    ``NOSCRIPT``, e.g. when Redis restarted empty). Raises :class:`StateUnavailableError`."""

    def __init__(self, redis: Redis, source: str, timeout_s: float) -> None:
        self._redis = redis
        self._script = redis.register_script(source)
        self._load = encode_command(("SCRIPT", "LOAD", source))
        self._timeout_s = timeout_s
        self._calls = redis.scripts if isinstance(redis, StateRedis) else None

    async def load(self) -> None:
        try:
            if self._calls is not None:
                await self._calls.call(self._load)
                return
            async with asyncio.timeout(self._timeout_s):
                await self._redis.script_load(self._script.script)
        except (RedisError, OSError) as exc:  # OSError covers refused, reset, timed out
            raise _unavailable(exc) from exc

    async def __call__(self, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        calls = self._calls
        try:
            if calls is None:
                async with asyncio.timeout(self._timeout_s):
                    return await self._script(keys=keys, args=args)
            # The multiplexer bounds its own waits (one timer per connection, not per call).
            command = encode_command(("EVALSHA", self._script.sha, len(keys), *keys, *args))
            try:
                return await calls.call(command)
            except NoScriptError:  # Redis restarted empty (or flushed its scripts)
                await calls.call(self._load)
                return await calls.call(command)
        except (RedisError, OSError) as exc:  # ConnectionError and TimeoutError are OSErrors
            raise _unavailable(exc) from exc


async def ping(redis: Redis, timeout_s: float) -> None:
    """Raises :class:`StateUnavailableError` unless Redis answers within ``timeout_s``."""
    try:
        async with asyncio.timeout(timeout_s):
            await redis.ping()
    except (RedisError, OSError) as exc:
        raise _unavailable(exc) from exc


def _unavailable(exc: BaseException) -> StateUnavailableError:
    if isinstance(exc, TimeoutError):
        return StateUnavailableError("redis did not answer in time")
    return StateUnavailableError(f"redis: {exc}")
