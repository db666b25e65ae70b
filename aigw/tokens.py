"""Prompt token counting with tiktoken, offline-safe, for routing and TPM reservations.

Loading. tiktoken downloads encodings on first use, with no timeout; an air-gapped gateway
must never let it try. :func:`load_counter` therefore looks for the encoding file first — in
``tokens.encodings_dir``, then ``$TIKTOKEN_CACHE_DIR``, then tiktoken's default cache — under
tiktoken's cache name (sha1 of its download URL) or as ``<name>.tiktoken``, checks its sha256
when the encoding is a known one, and only then hands it to tiktoken. When none is found the
counter estimates one token per 4 characters (``TokenCounter.exact`` is False).

Start-up. :func:`load_counter_async` (the app's lifespan) does not wait for the file to be
parsed (~150 ms for cl100k_base here): the gateway accepts connections meanwhile, and a
request that needs a count in that window waits for the parse, never gets an estimate.
The parsed encoding holds ~40 MB, so a local file is parsed at start-up only when the config
charges tokens (a key or model ``tpm``: every request then counts); otherwise on the first
count (a prompt that may not fit a context window, or a ``tpm`` added by a reload), which
waits for the parse once. A file that cannot be read by then is treated as missing.

Fetching. When there is no usable file, :func:`load_counter_async` starts one background fetch
at start-up, whatever the config (a prompt that may not fit a window must not be routed on an
estimate for the length of a download), unless ``tokens.offline`` is true: the file is
downloaded (asynchronously, the whole fetch bounded by ``FETCH_TIMEOUT_S``), checked against
its published sha256, written to tiktoken's cache so the next start finds it, and parsed in a
worker thread (tiktoken's loader blocks). On success the same counter switches to
exact counts; on failure it stays an estimate. Both outcomes are logged on ``aigw.tokens``.
Requests never wait for the fetch.

Counting is CPU work on the event loop: texts up to ``INLINE_CHARS`` characters in all are
counted inline (~0.2 ms at most; measured ~45 us per 1,000 characters of English here);
longer ones in a worker thread (tiktoken's Rust core releases the GIL), so a 100k-character
prompt does not stall every other request. Chat prompts follow OpenAI's documented accounting
(:func:`TokenCounter.count_chat`).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import httpx

from aigw.config import TokensConfig

__all__ = [
    "FETCH_TIMEOUT_S",
    "IMAGE_TOKENS",
    "INLINE_CHARS",
    "FetchEncoding",
    "TokenCounter",
    "download_encoding",
    "load_counter",
    "load_counter_async",
]

log = logging.getLogger("aigw.tokens")

INLINE_CHARS = 4_096  # ~0.2 ms of tiktoken on this machine; longer goes to a thread
FETCH_TIMEOUT_S = 20.0  # the whole background fetch: download, check, parse
# OpenAI's documented chat accounting (openai-cookbook, "How to count tokens with tiktoken"):
# every message costs 3 tokens of template, a `name` 1 more, the reply's priming 3.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING_TOKENS = 3
# An image part's cost depends on its size, which the gateway does not decode; 85 tokens is
# OpenAI's documented cost of a low-detail image (the base cost of every image), a lower bound.
IMAGE_TOKENS = 85
_CHARS_PER_TOKEN = 4
_DOWNLOAD_URL = "https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"
# sha256 of each encoding file tiktoken publishes at _DOWNLOAD_URL (from tiktoken_ext).
_SHA256 = {
    "cl100k_base": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    "o200k_base": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    "p50k_base": "94b5ca7dff4d00767bc256fdd1b27e5b17361d7b8a5f968547f9f23eb70d2069",
    "r50k_base": "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930",
}

FetchEncoding = Callable[[str], Awaitable[bytes]]
"""Downloads the ``.tiktoken`` file of the named encoding and returns its bytes."""


class _Encoding(Protocol):
    def encode_ordinary(self, text: str) -> list[int]: ...


class TokenCounter:
    """Counts tokens with an encoding, or estimates them when none is loaded (yet).

    ``fetch_task`` is the background fetch started by :meth:`start_fetch`, owned by whoever
    started it (the app's lifespan) and cancelled by :meth:`aclose`.
    """

    def __init__(self, encoding: _Encoding | None, name: str) -> None:
        self._encoding = encoding
        self.name = name
        self.fetch_task: asyncio.Task[bool] | None = None
        self.load_task: asyncio.Task[None] | None = None  # the local file, being parsed
        self._deferred: Callable[[], None] | None = None  # starts the load on first need
        self._unready = False  # a count must first call _ready(): one check on the hot path

    def defer(self, start: Callable[[], None]) -> None:
        """Let the first count (or :meth:`start_loading`) call ``start``, which starts the
        parse of the local encoding file (:meth:`begin_load`)."""
        self._deferred = start
        self._unready = True

    def start_loading(self) -> None:
        """Start the deferred load now, once; nothing when none is deferred."""
        start, self._deferred = self._deferred, None
        if start is not None:
            start()

    def begin_load(
        self,
        found: Path,
        config: TokensConfig,
        fetch: FetchEncoding | None = None,
        fetch_timeout_s: float = FETCH_TIMEOUT_S,
    ) -> None:
        """Start :meth:`load_local` as ``load_task``; counts wait for it."""
        self.load_task = asyncio.create_task(
            self.load_local(found, config, fetch, fetch_timeout_s), name=f"aigw-load-{self.name}"
        )
        self._unready = True

    async def _ready(self) -> None:
        """Before a count: start a deferred load, and wait while the local file is being
        parsed (~150 ms, once per process)."""
        self.start_loading()
        task = self.load_task
        if task is not None:
            if not task.done():
                await asyncio.shield(task)  # a request that goes away does not cancel it
            self.load_task = None
        self._unready = self._deferred is not None  # loaded: later counts skip this call

    async def load_local(
        self,
        found: Path,
        config: TokensConfig,
        fetch: FetchEncoding | None = None,
        fetch_timeout_s: float = FETCH_TIMEOUT_S,
    ) -> None:
        """Parse the encoding file ``found`` in a thread and switch to exact counts; an
        unusable file is logged and treated as none (:meth:`without_file`)."""
        try:
            encoding = await asyncio.to_thread(_load_file, found, self.name)
        except (ValueError, OSError) as exc:  # OSError: gone since start-up (a tmp cleaner)
            log.warning("tiktoken encoding file %s is unusable: %s", found, exc)
            self.without_file(config, fetch, fetch_timeout_s)
            return
        self._encoding = encoding
        log.info("token counts are exact: tiktoken encoding %s from %s", self.name, found)

    def without_file(
        self, config: TokensConfig, fetch: FetchEncoding | None, fetch_timeout_s: float
    ) -> None:
        """No usable local file: say so, and start the background fetch unless offline."""
        log.warning(
            "tiktoken encoding %s not found (set tokens.encodings_dir or TIKTOKEN_CACHE_DIR); "
            "token counts are estimated at 1 token per %d characters",
            self.name,
            _CHARS_PER_TOKEN,
        )
        if config.offline:
            log.info("tokens.offline is true: %s is not fetched; counts stay estimated", self.name)
            return
        log.info("fetching tiktoken encoding %s in the background", self.name)
        self.start_fetch(fetch, fetch_timeout_s)

    @property
    def exact(self) -> bool:
        """True once counts come from the encoding, False while they are estimates."""
        return self._encoding is not None

    def count(self, text: str) -> int:
        encoding = self._encoding  # read once: a fetch may install one meanwhile
        if encoding is None:
            return (len(text) + _CHARS_PER_TOKEN - 1) // _CHARS_PER_TOKEN
        return len(encoding.encode_ordinary(text))

    async def count_async(self, text: str) -> int:
        """Like ``count``, but long texts are counted off the event loop."""
        if self._unready:
            await self._ready()
        if len(text) <= INLINE_CHARS or self._encoding is None:
            return self.count(text)
        return await asyncio.to_thread(self.count, text)

    def count_chat(self, messages: object) -> int:
        """Prompt tokens of a chat request's ``messages``, template overhead included.

        OpenAI's accounting: 3 tokens per message, 1 more per ``name``, 3 priming the reply,
        plus the tokens of every string field of a message (role, content, name, tool_call_id)
        and of its tool calls' function names and arguments. Text parts of list content are
        counted; each image part costs :data:`IMAGE_TOKENS`; other parts (audio, files) are
        not counted. Entries that are not objects are skipped (validation rejects them).
        """
        texts, fixed = _chat_parts(messages)
        return fixed + self._count_texts(texts)

    async def count_chat_async(self, messages: object) -> int:
        """Like ``count_chat``; when the texts exceed ``INLINE_CHARS``, counted in a thread."""
        if self._unready:
            await self._ready()
        texts, fixed = _chat_parts(messages)
        return fixed + await self._count_texts_async(texts)

    def count_prompt(self, prompt: object) -> int:
        """Tokens of a completions ``prompt`` or an embeddings ``input``: a string, a list of
        strings, a list of token ids, or a list of token-id lists (ids count one each)."""
        texts, fixed = _prompt_parts(prompt)
        return fixed + self._count_texts(texts)

    async def count_prompt_async(self, prompt: object) -> int:
        """Like ``count_prompt``; when the texts exceed ``INLINE_CHARS``, counted in a thread."""
        if self._unready:
            await self._ready()
        texts, fixed = _prompt_parts(prompt)
        return fixed + await self._count_texts_async(texts)

    def _count_texts(self, texts: list[str]) -> int:
        encoding = self._encoding
        if encoding is None:
            return sum((len(t) + _CHARS_PER_TOKEN - 1) // _CHARS_PER_TOKEN for t in texts)
        encode = encoding.encode_ordinary
        return sum(len(encode(t)) for t in texts)

    async def _count_texts_async(self, texts: list[str]) -> int:
        if self._encoding is None or sum(map(len, texts)) <= INLINE_CHARS:
            return self._count_texts(texts)
        return await asyncio.to_thread(self._count_texts, texts)

    def start_fetch(
        self, fetch: FetchEncoding | None = None, timeout_s: float = FETCH_TIMEOUT_S
    ) -> asyncio.Task[bool]:
        """Start :meth:`fetch` as ``fetch_task`` (once: a second call returns the same task)."""
        if self.fetch_task is None:
            self.fetch_task = asyncio.create_task(
                self.fetch(fetch, timeout_s), name=f"aigw-fetch-{self.name}"
            )
        return self.fetch_task

    async def fetch(
        self, fetch: FetchEncoding | None = None, timeout_s: float = FETCH_TIMEOUT_S
    ) -> bool:
        """Fetch the encoding (with ``fetch``, default :func:`download_encoding`) and switch to
        exact counts. Returns whether counts are exact. Never raises but on cancellation: a
        failure or a timeout is logged and leaves the counter estimating."""
        if self._encoding is not None:
            return True
        if self.name not in _SHA256:
            log.warning(
                "cannot fetch tiktoken encoding %s (no published checksum known); token counts "
                "stay estimated: put its file in tokens.encodings_dir",
                self.name,
            )
            return False
        try:
            async with asyncio.timeout(timeout_s):
                data = await (fetch or download_encoding)(self.name)
                encoding = await asyncio.to_thread(_install_encoding, self.name, data)
        except TimeoutError:
            log.warning(
                "fetching tiktoken encoding %s timed out after %g s; token counts stay "
                "estimated (1 token per %d characters)",
                self.name,
                timeout_s,
                _CHARS_PER_TOKEN,
            )
            return False
        except Exception as exc:  # a background task: log and go on
            log.warning(
                "fetching tiktoken encoding %s failed (%s: %s); token counts stay estimated "
                "(1 token per %d characters)",
                self.name,
                type(exc).__name__,
                exc,
                _CHARS_PER_TOKEN,
            )
            return False
        self._encoding = encoding
        log.info("token counts are exact now: tiktoken encoding %s fetched", self.name)
        return True

    async def aclose(self) -> None:
        """Cancel the local load and the background fetch, if running, and wait for them."""
        self._deferred = None
        load, self.load_task = self.load_task, None
        if load is not None and not load.done():
            load.cancel()
            await asyncio.wait([load])
        task, self.fetch_task = self.fetch_task, None
        if task is not None and not task.done():
            task.cancel()
            # wait() neither raises the task's cancellation nor swallows one aimed at us.
            await asyncio.wait([task])


async def download_encoding(name: str) -> bytes:
    """The default :data:`FetchEncoding`: tiktoken's public file, over HTTPS (proxies from the
    environment apply). Raises :class:`httpx.HTTPError` when it cannot be had."""
    timeout = httpx.Timeout(10.0)
    async with httpx.AsyncClient(timeout=timeout, follow_redirects=True) as client:
        response = await client.get(_DOWNLOAD_URL.format(name=name))
        response.raise_for_status()
        return response.content


async def load_counter_async(
    config: TokensConfig,
    *,
    eager: bool = True,
    fetch: FetchEncoding | None = None,
    fetch_timeout_s: float = FETCH_TIMEOUT_S,
) -> TokenCounter:
    """The app's counter, returned at once. A local encoding file is parsed in a thread as
    ``counter.load_task`` (cl100k_base: ~150 ms and ~40 MB, which start-up need not wait
    for); counting calls made meanwhile wait for it, so every count is exact. When there is
    no usable file and ``config.offline`` is false, the background fetch starts as
    ``counter.fetch_task`` (it also caches the file, so the next start finds it). Not
    ``eager``: the local file is parsed on the first count (or ``counter.start_loading()``)
    instead of now. The caller owns the counter and ends with ``await counter.aclose()``.
    """
    counter = TokenCounter(None, config.encoding)
    found = _find_encoding_file(config.encoding, config.encodings_dir)
    if found is not None:
        counter.defer(functools.partial(counter.begin_load, found, config, fetch, fetch_timeout_s))
        if eager:
            counter.start_loading()
    else:  # fetched now whatever the config: requests never wait for a download
        counter.without_file(config, fetch, fetch_timeout_s)
    return counter


def load_counter(name: str = "cl100k_base", encodings_dir: str | None = None) -> TokenCounter:
    """A counter for encoding ``name`` from a local file, never touching the network."""
    found = _find_encoding_file(name, encodings_dir)
    if found is not None:
        try:
            encoding = _load_file(found, name)
        except ValueError as exc:
            log.warning("tiktoken encoding file %s is unusable: %s", found, exc)
        else:
            log.info("token counts are exact: tiktoken encoding %s from %s", name, found)
            return TokenCounter(encoding, name)
    log.warning(
        "tiktoken encoding %s not found (set tokens.encodings_dir or TIKTOKEN_CACHE_DIR); "
        "token counts are estimated at 1 token per %d characters",
        name,
        _CHARS_PER_TOKEN,
    )
    return TokenCounter(None, name)


def _chat_parts(messages: object) -> tuple[list[str], int]:
    """The texts of a ``messages`` list to encode, and the tokens counted without encoding."""
    if not isinstance(messages, list):
        return [], 0
    texts: list[str] = []
    fixed = REPLY_PRIMING_TOKENS
    for message in messages:
        if not isinstance(message, dict):
            continue
        fixed += TOKENS_PER_MESSAGE
        for key, value in message.items():
            if isinstance(value, str):
                texts.append(value)
                if key == "name":
                    fixed += TOKENS_PER_NAME
            elif key == "content" and isinstance(value, list):
                fixed += _content_parts(value, texts)
            elif key == "tool_calls" and isinstance(value, list):
                _tool_calls(value, texts)
    return texts, fixed


def _content_parts(parts: list[Any], texts: list[str]) -> int:
    fixed = 0
    for part in parts:
        if not isinstance(part, dict):
            continue
        text = part.get("text")
        if isinstance(text, str):
            texts.append(text)
        elif part.get("type") == "image_url":
            fixed += IMAGE_TOKENS
    return fixed


def _tool_calls(calls: list[Any], texts: list[str]) -> None:
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            for field in ("name", "arguments"):
                value = function.get(field)
                if isinstance(value, str):
                    texts.append(value)


def _prompt_parts(prompt: object) -> tuple[list[str], int]:
    if isinstance(prompt, str):
        return [prompt], 0
    if not isinstance(prompt, list):
        return [], 0
    texts: list[str] = []
    ids = 0
    for item in prompt:
        if isinstance(item, str):
            texts.append(item)
        elif isinstance(item, int):
            ids += 1
        elif isinstance(item, list):
            ids += len(item)
    return texts, ids


def _cache_key(name: str) -> str:
    return hashlib.sha1(_DOWNLOAD_URL.format(name=name).encode()).hexdigest()


def _default_cache_dir() -> str:
    """Where tiktoken itself caches downloads (``TIKTOKEN_CACHE_DIR`` or a temp folder)."""
    return os.environ.get("TIKTOKEN_CACHE_DIR") or os.path.join(
        tempfile.gettempdir(), "data-gym-cache"
    )


def _find_encoding_file(name: str, encodings_dir: str | None) -> Path | None:
    directories = [
        encodings_dir,
        os.environ.get("TIKTOKEN_CACHE_DIR"),
        os.path.join(tempfile.gettempdir(), "data-gym-cache"),
    ]
    for directory in directories:
        if not directory:
            continue
        for candidate in (Path(directory) / _cache_key(name), Path(directory) / f"{name}.tiktoken"):
            if candidate.is_file():
                return candidate
    return None


def _check(name: str, data: bytes) -> None:
    """Raises ValueError when ``data`` is not the published file of a known encoding; tiktoken
    would otherwise delete the file and download it again, without a timeout."""
    expected = _SHA256.get(name)
    if expected is not None and hashlib.sha256(data).hexdigest() != expected:
        raise ValueError(f"sha256 differs from the published {name} file")


def _install_encoding(name: str, data: bytes) -> _Encoding:
    """Check fetched ``data``, keep it in tiktoken's cache for the next start, and load it.
    Blocking (file I/O, parsing): runs in a worker thread."""
    _check(name, data)
    directory = Path(_default_cache_dir())
    try:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / _cache_key(name)
        partial = directory / f"{path.name}.{uuid.uuid4().hex}.tmp"
        partial.write_bytes(data)
        partial.replace(path)  # atomic: a concurrent start never reads half a file
    except OSError as exc:
        log.warning("cannot cache tiktoken encoding %s in %s: %s", name, directory, exc)
        path = Path(tempfile.mkdtemp(prefix="aigw-tiktoken-")) / _cache_key(name)
        path.write_bytes(data)
    return _load_file(path, name)


def _load_file(found: Path, name: str) -> _Encoding:
    """tiktoken's encoding ``name`` from the file ``found``. Raises ValueError when the file
    is not the published one (known encodings) or tiktoken rejects it."""
    _check(name, found.read_bytes())
    import tiktoken

    cache_dir = _as_tiktoken_cache(found, name)
    previous = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = cache_dir
    try:
        encoding = tiktoken.get_encoding(name)
    finally:
        if previous is None:
            os.environ.pop("TIKTOKEN_CACHE_DIR", None)
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = previous
    # tiktoken keeps the Python dict of the encoding's merge ranks (100k bytes keys, ~9 MB)
    # beside its Rust core's own tables, only to pickle the Encoding; the gateway never does.
    if isinstance(getattr(encoding, "_mergeable_ranks", None), dict):
        encoding._mergeable_ranks = {}
    return encoding


def _as_tiktoken_cache(found: Path, name: str) -> str:
    """A directory where tiktoken finds ``found`` under its cache name."""
    if found.name == _cache_key(name):
        return str(found.parent)
    directory = Path(tempfile.mkdtemp(prefix="aigw-tiktoken-"))
    shutil.copyfile(found, directory / _cache_key(name))
    return str(directory)
