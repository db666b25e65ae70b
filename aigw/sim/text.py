"""Prompts, token counts, prefix-block hashes, generated words and embedding vectors.

Token model (no tokenizer, O(len) and cheap): a prompt is turned into bytes, and **one token is
4 bytes** of it, rounded up. For text that is UTF-8 (≈ 4 characters per token in English,
fewer for CJK, much like BPE tokenizers); for token-id prompts each id is packed into 4 bytes,
so the count is exact. Chat prompts are ``<|role|>\\ncontent\\n`` per message (a stand-in for
the chat template), followed by the JSON of ``tools`` when present.

Prefix-cache keys: the prompt bytes are cut into blocks of ``BLOCK_SIZE`` tokens (64 bytes);
block *i*'s key hashes the whole prefix up to and including block *i* (chained, like vLLM's
block hashes), so two prompts share a key exactly when they share that prefix. Only full
blocks get keys. Keys use Python's ``hash`` (SipHash, randomised per process), which is fine:
the cache lives and dies with the process.

Generated text is one pseudo-word per token from a vocabulary built from the app's seed.
"""

from __future__ import annotations

import base64
import hashlib
import random
import struct
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from aigw.sim.profiles import BLOCK_SIZE

__all__ = [
    "BYTES_PER_TOKEN",
    "EMBEDDING_DIM",
    "Prompt",
    "Vocabulary",
    "chat_prompt",
    "embedding",
    "embedding_base64",
    "text_prompt",
    "token_prompt",
]

BYTES_PER_TOKEN = 4
EMBEDDING_DIM = 64
_BLOCK_BYTES = BLOCK_SIZE * BYTES_PER_TOKEN
_SYLLABLES = (
    "ka",
    "lo",
    "mi",
    "ne",
    "ru",
    "ta",
    "vo",
    "shi",
    "an",
    "el",
    "or",
    "ix",
    "um",
    "pra",
    "ten",
    "dor",
    "bel",
    "cas",
    "fin",
    "gal",
    "hem",
    "jul",
    "mar",
    "nis",
    "pol",
    "qua",
)


@dataclass(frozen=True, slots=True)
class Prompt:
    """A prompt as the engine sees it: its length in tokens and its full blocks' keys."""

    tokens: int
    block_hashes: tuple[int, ...]


def _prompt(data: bytes) -> Prompt:
    tokens = max(1, -(-len(data) // BYTES_PER_TOKEN))  # a real tokenizer adds BOS: never 0
    hashes: list[int] = []
    key = 0
    for start in range(0, len(data) - _BLOCK_BYTES + 1, _BLOCK_BYTES):
        key = hash((key, data[start : start + _BLOCK_BYTES]))
        hashes.append(key)
    return Prompt(tokens, tuple(hashes))


def text_prompt(text: str) -> Prompt:
    """A completion prompt given as text."""
    return _prompt(text.encode("utf-8", "surrogatepass"))


def token_prompt(token_ids: Sequence[int]) -> Prompt:
    """A prompt given as token ids; OverflowError/TypeError when an id is not a uint32."""
    return _prompt(array("I", token_ids).tobytes())


def _content_text(content: Any) -> str:
    """Text of a message ``content``: a string, a list of parts (text parts kept), or None."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts: list[str] = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif isinstance(part, str):
                texts.append(part)
        return "".join(texts)
    raise TypeError("message content must be a string, a list of parts or null")


def chat_prompt(messages: Sequence[Any], tools: Any = None) -> Prompt:
    """The prompt of a chat request; TypeError when a message is malformed."""
    pieces: list[str] = []
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise TypeError("each message must be an object with a string 'role'")
        pieces.append(f"<|{message['role']}|>\n{_content_text(message.get('content'))}\n")
    data = "".join(pieces).encode("utf-8", "surrogatepass")
    if tools:
        data += orjson.dumps(tools)
    return _prompt(data)


class Vocabulary:
    """Deterministic pseudo-words; ``words(rng, n)`` is one text piece per token, the first
    without a leading space so that ``"".join`` reads naturally."""

    __slots__ = ("_spaced",)

    def __init__(self, seed: int, size: int = 1024) -> None:
        rng = random.Random(seed)
        words: set[str] = set()
        while len(words) < size:
            words.add("".join(rng.choices(_SYLLABLES, k=rng.randint(1, 3))))
        self._spaced = tuple(" " + w for w in sorted(words))

    @property
    def spaced(self) -> tuple[str, ...]:
        """Every word, each with its leading space."""
        return self._spaced

    def words(self, rng: random.Random, count: int) -> list[str]:
        pieces = rng.choices(self._spaced, k=count)
        if pieces:
            pieces[0] = pieces[0][1:]
        return pieces


def embedding(data: bytes, dimensions: int = EMBEDDING_DIM) -> list[float]:
    """A deterministic unit vector of ``dimensions`` floats derived from ``data``'s hash.

    Its first ``EMBEDDING_DIM`` bytes of hash are BLAKE2b's, more come from SHAKE-256, so a
    shorter vector is the normalised head of a longer one, as OpenAI's ``dimensions``
    shortens its embeddings."""
    digest = hashlib.blake2b(data, digest_size=EMBEDDING_DIM).digest()
    if dimensions > EMBEDDING_DIM:
        digest += hashlib.shake_256(data).digest(dimensions - EMBEDDING_DIM)
    raw = [b - 127.5 for b in digest[:dimensions]]
    norm = sum(x * x for x in raw) ** 0.5
    return [x / norm for x in raw]


def embedding_base64(vector: Sequence[float]) -> str:
    """``vector`` as little-endian float32 bytes in base64 (``encoding_format: "base64"``)."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
