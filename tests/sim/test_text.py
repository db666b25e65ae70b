"""Token counting, prefix-block keys, vocabulary and embeddings."""

from __future__ import annotations

import base64
import random
import struct

from aigw.sim.text import (
    EMBEDDING_DIM,
    Vocabulary,
    chat_prompt,
    embedding,
    embedding_base64,
    text_prompt,
    token_prompt,
)


def test_a_token_is_four_bytes_and_never_zero() -> None:
    assert text_prompt("").tokens == 1
    assert text_prompt("abcd").tokens == 1
    assert text_prompt("abcde").tokens == 2
    assert token_prompt(list(range(37))).tokens == 37


def test_block_keys_chain_over_the_whole_prefix() -> None:
    shared = list(range(32))
    a = token_prompt([*shared, *range(100, 132)])
    b = token_prompt([*shared, *range(200, 232)])
    assert len(a.block_hashes) == 4
    assert a.block_hashes[:2] == b.block_hashes[:2]
    assert a.block_hashes[2] != b.block_hashes[2]
    # Same block content after a different prefix: a different key.
    c = token_prompt([*range(50, 66), *shared[16:]])
    assert c.block_hashes[1] != a.block_hashes[1]
    assert len(token_prompt(list(range(31))).block_hashes) == 1  # only full blocks


def test_chat_prompt_counts_roles_contents_parts_and_tools() -> None:
    plain = chat_prompt([{"role": "user", "content": "hello"}])
    parts = chat_prompt([{"role": "user", "content": [{"type": "text", "text": "hello"}]}])
    assert plain == parts
    with_tools = chat_prompt([{"role": "user", "content": "hello"}], [{"type": "function"}])
    assert with_tools.tokens > plain.tokens


def test_vocabulary_is_deterministic_per_seed() -> None:
    words = Vocabulary(1).words(random.Random(5), 6)
    assert words == Vocabulary(1).words(random.Random(5), 6)
    assert words != Vocabulary(2).words(random.Random(5), 6)
    assert not words[0].startswith(" ") and all(w.startswith(" ") for w in words[1:])


def test_embeddings_are_deterministic_unit_vectors_and_base64_is_float32_le() -> None:
    vector = embedding(b"hello")
    assert len(vector) == EMBEDDING_DIM
    assert abs(sum(x * x for x in vector) - 1.0) < 1e-9
    assert vector == embedding(b"hello") and vector != embedding(b"hello!")
    decoded = struct.unpack(f"<{EMBEDDING_DIM}f", base64.b64decode(embedding_base64(vector)))
    assert all(abs(x - y) < 1e-6 for x, y in zip(decoded, vector, strict=True))
