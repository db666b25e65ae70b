from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from aigw.tokens import INLINE_CHARS, load_counter

SHARED = os.environ.get("TIKTOKEN_CACHE_DIR")
needs_encodings = pytest.mark.skipif(
    not SHARED or not Path(SHARED).is_dir(),
    reason="TIKTOKEN_CACHE_DIR with offline encodings not set",
)


@needs_encodings
def test_exact_count_from_configured_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TIKTOKEN_CACHE_DIR")
    counter = load_counter("cl100k_base", encodings_dir=SHARED)
    assert counter.exact
    assert counter.count("hello world") == 2
    assert "TIKTOKEN_CACHE_DIR" not in os.environ  # restored


@needs_encodings
def test_plain_named_encoding_file_is_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert SHARED is not None
    shutil.copyfile(
        Path(SHARED) / "9b5ad71b2ce5302211f9c61530b329a4922fc6a4", tmp_path / "cl100k_base.tiktoken"
    )
    monkeypatch.delenv("TIKTOKEN_CACHE_DIR")
    assert load_counter("cl100k_base", encodings_dir=str(tmp_path)).exact


def test_missing_encoding_falls_back_to_estimate_without_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr("tempfile.gettempdir", lambda: str(tmp_path))
    counter = load_counter("o200k_base", encodings_dir=str(tmp_path / "absent"))
    assert not counter.exact
    assert counter.count("x" * 40) == 10


@needs_encodings
async def test_long_prompts_are_counted_off_loop_with_same_result() -> None:
    counter = load_counter("cl100k_base")
    text = "The quick brown fox jumps over the lazy dog. " * (INLINE_CHARS // 20)
    assert await counter.count_async(text) == counter.count(text)
