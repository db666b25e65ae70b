from __future__ import annotations

import asyncio
import logging
import os
import shutil
import threading
from pathlib import Path

import httpx
import pytest

from aigw.config import TokensConfig
from aigw.tokens import (
    IMAGE_TOKENS,
    INLINE_CHARS,
    REPLY_PRIMING_TOKENS,
    TokenCounter,
    load_counter,
    load_counter_async,
)

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


# --- chat, prompt and embeddings accounting -------------------------------------------------


class WordEncoding:
    """One token per whitespace-separated word; records the threads it ran on."""

    def __init__(self) -> None:
        self.threads: set[int] = set()

    def encode_ordinary(self, text: str) -> list[int]:
        self.threads.add(threading.get_ident())
        return [0] * len(text.split())


# OpenAI cookbook "How to count tokens with tiktoken": the API bills these 129 prompt tokens
# (gpt-3.5-turbo-0613, gpt-4-0613, cl100k_base).
COOKBOOK_MESSAGES = [
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that translates corporate "
        "jargon into plain English.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "New synergies will help drive top-line growth.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Things working well together will increase revenue.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more bandwidth to touch base on opportunities "
        "for increased leverage.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the client "
        "deliverable.",
    },
]


@needs_encodings
async def test_chat_count_matches_what_openai_bills() -> None:
    counter = load_counter("cl100k_base")
    assert counter.count_chat(COOKBOOK_MESSAGES) == 129
    assert await counter.count_chat_async(COOKBOOK_MESSAGES) == 129


def test_chat_template_overhead_per_message_name_and_reply() -> None:
    counter = TokenCounter(WordEncoding(), "words")
    assert counter.count_chat([]) == REPLY_PRIMING_TOKENS
    one = [{"role": "user", "content": "hello big world"}]
    assert counter.count_chat(one) == 3 + 1 + 3 + 3  # message, role, content, reply priming
    named = [{"role": "user", "name": "bob", "content": "hello big world"}]
    assert counter.count_chat(named) == counter.count_chat(one) + 1 + 1  # name, its token


def test_chat_list_content_counts_text_and_a_fixed_cost_per_image() -> None:
    counter = TokenCounter(WordEncoding(), "words")
    content = [
        {"type": "text", "text": "what is this"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
        "not a part",
    ]
    messages = [{"role": "user", "content": content}]
    assert counter.count_chat(messages) == 3 + 1 + 3 + 2 * IMAGE_TOKENS + 3


def test_chat_tool_calls_and_tool_results_are_counted() -> None:
    counter = TokenCounter(WordEncoding(), "words")
    messages = [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                },
                "junk",
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny and warm"},
    ]
    # assistant: 3 + role 1 + name 1 + arguments 2; tool: 3 + role 1 + id 1 + content 3
    assert counter.count_chat(messages) == 7 + 8 + 3


def test_ill_typed_messages_are_skipped() -> None:
    counter = TokenCounter(WordEncoding(), "words")
    assert counter.count_chat(None) == 0
    assert counter.count_chat("hello") == 0
    assert counter.count_chat([None, 3, {"role": "user", "content": 7}]) == 3 + 1 + 3


def test_estimates_without_an_encoding() -> None:
    counter = TokenCounter(None, "cl100k_base")
    assert not counter.exact
    assert counter.count_chat([{"role": "user", "content": "x" * 40}]) == 3 + 1 + 10 + 3
    assert counter.count_prompt(["x" * 8, "y"]) == 2 + 1


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("one two three", 3),
        (["one two", "three"], 3),
        ([101, 102, 103, 104], 4),  # token ids
        ([[1, 2, 3], [4, 5]], 5),  # batches of token ids
        ([], 0),
        ("", 0),
        (None, 0),
        ({"text": "no"}, 0),
    ],
)
async def test_prompt_and_embedding_input_shapes(prompt: object, expected: int) -> None:
    counter = TokenCounter(WordEncoding(), "words")
    assert counter.count_prompt(prompt) == expected
    assert await counter.count_prompt_async(prompt) == expected


async def test_long_chat_and_prompts_are_counted_in_a_thread() -> None:
    encoding = WordEncoding()
    counter = TokenCounter(encoding, "words")
    loop_thread = threading.get_ident()
    short = [{"role": "user", "content": "word " * 100}]
    assert await counter.count_chat_async(short) == counter.count_chat(short)
    assert encoding.threads == {loop_thread}
    long = [{"role": "user", "content": "word " * 500}, {"role": "user", "content": "word " * 500}]
    assert sum(len(m["content"]) for m in long) > INLINE_CHARS
    encoding.threads.clear()
    assert await counter.count_chat_async(long) == 3 + 1 + 500 + 3 + 1 + 500 + 3
    assert encoding.threads and loop_thread not in encoding.threads
    encoding.threads.clear()
    assert await counter.count_prompt_async(["word " * 1000]) == 1000
    assert encoding.threads and loop_thread not in encoding.threads


# --- fetching an encoding in the background -------------------------------------------------


@pytest.fixture
def no_local_encodings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No encoding file anywhere; tiktoken's cache directory is an empty ``tmp_path/cache``."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    monkeypatch.setattr("tempfile.gettempdir", lambda: str(tmp_path / "tmp"))
    return cache


class FakeFetch:
    """A FetchEncoding that returns ``data``, raises ``error``, or hangs; records calls."""

    def __init__(self, data: bytes = b"", error: Exception | None = None, hang: bool = False):
        self.data, self.error, self.hang = data, error, hang
        self.calls: list[str] = []
        self.cancelled = False

    async def __call__(self, name: str) -> bytes:
        self.calls.append(name)
        if self.hang:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled = True
                raise
        if self.error is not None:
            raise self.error
        return self.data


def cached(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []


def cl100k_bytes() -> bytes:
    assert SHARED is not None
    return (Path(SHARED) / "9b5ad71b2ce5302211f9c61530b329a4922fc6a4").read_bytes()


@needs_encodings
async def test_a_successful_fetch_switches_the_same_counter_to_exact_counts(
    no_local_encodings: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fetch = FakeFetch(cl100k_bytes())
    caplog.set_level(logging.INFO, logger="aigw.tokens")
    counter = await load_counter_async(TokensConfig(), fetch=fetch)
    assert not counter.exact  # requests never wait for the fetch
    assert counter.count("hello world") == 3  # an estimate meanwhile
    assert counter.fetch_task is not None
    assert await counter.fetch_task
    assert counter.exact and counter.count("hello world") == 2
    assert fetch.calls == ["cl100k_base"]
    assert "token counts are exact now: tiktoken encoding cl100k_base fetched" in caplog.text
    # kept in tiktoken's cache, so the next start loads it without fetching
    assert load_counter("cl100k_base").exact
    assert cached(no_local_encodings) == ["9b5ad71b2ce5302211f9c61530b329a4922fc6a4"]
    await counter.aclose()


@pytest.mark.parametrize(
    ("fetch", "logged"),
    [
        (FakeFetch(error=httpx.ConnectError("no route to host")), "failed (ConnectError"),
        (FakeFetch(b"not an encoding"), "sha256 differs from the published cl100k_base"),
        (FakeFetch(hang=True), "timed out after 0.05 s"),
    ],
)
async def test_a_failed_fetch_leaves_counts_estimated_and_says_so(
    no_local_encodings: Path, caplog: pytest.LogCaptureFixture, fetch: FakeFetch, logged: str
) -> None:
    counter = await load_counter_async(TokensConfig(), fetch=fetch, fetch_timeout_s=0.05)
    assert counter.fetch_task is not None
    assert await counter.fetch_task is False
    assert not counter.exact and counter.count("x" * 40) == 10
    assert logged in caplog.text and "token counts stay estimated" in caplog.text
    assert cached(no_local_encodings) == []  # nothing bad was cached
    await counter.aclose()


async def test_offline_never_fetches(
    no_local_encodings: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fetch = FakeFetch(error=AssertionError("must not be called"))
    caplog.set_level(logging.INFO, logger="aigw.tokens")
    counter = await load_counter_async(TokensConfig(offline=True), fetch=fetch)
    assert counter.fetch_task is None and fetch.calls == []
    assert not counter.exact
    assert "tokens.offline is true" in caplog.text
    await counter.aclose()


@needs_encodings
async def test_a_local_file_means_no_fetch() -> None:
    fetch = FakeFetch(error=AssertionError("must not be called"))
    counter = await load_counter_async(TokensConfig(encodings_dir=SHARED), fetch=fetch)
    assert counter.load_task is not None
    await counter.load_task
    assert counter.exact and counter.fetch_task is None and fetch.calls == []


@needs_encodings
async def test_start_up_does_not_wait_for_the_local_file_but_counts_do() -> None:
    """The file is parsed in a thread while the gateway starts; a count asked meanwhile
    waits for it and is exact (2 tokens, where the estimate would say 3)."""
    counter = await load_counter_async(TokensConfig(encodings_dir=SHARED))
    assert counter.load_task is not None and not counter.load_task.done()
    assert not counter.exact  # start-up went on without it
    assert await counter.count_async("hello world") == 2
    assert await counter.count_chat_async([{"role": "user", "content": "hello world"}]) == 9
    assert await counter.count_prompt_async("hello world") == 2
    assert counter.exact
    await counter.aclose()


@needs_encodings
async def test_a_request_that_goes_away_does_not_cancel_the_load() -> None:
    counter = await load_counter_async(TokensConfig(encodings_dir=SHARED))
    waiting = asyncio.create_task(counter.count_async("hello world"))
    await asyncio.sleep(0)
    waiting.cancel()
    assert counter.load_task is not None
    await counter.load_task
    assert counter.exact and not counter.load_task.cancelled()
    await counter.aclose()


async def test_aclose_cancels_a_pending_fetch(no_local_encodings: Path) -> None:
    fetch = FakeFetch(hang=True)
    counter = await load_counter_async(TokensConfig(), fetch=fetch)
    task = counter.start_fetch()
    assert task is counter.fetch_task  # started once
    await asyncio.sleep(0)
    await counter.aclose()
    assert task.cancelled() and fetch.cancelled
    assert counter.fetch_task is None and not counter.exact


async def test_an_encoding_without_a_known_checksum_is_not_fetched(
    no_local_encodings: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fetch = FakeFetch(b"anything")
    counter = TokenCounter(None, "custom_base")
    assert await counter.fetch(fetch) is False
    assert fetch.calls == [] and "no published checksum known" in caplog.text


def test_a_corrupt_local_file_is_ignored_not_deleted(
    tmp_path: Path, no_local_encodings: Path, caplog: pytest.LogCaptureFixture
) -> None:
    corrupt = tmp_path / "cl100k_base.tiktoken"
    corrupt.write_bytes(b"garbage")
    counter = load_counter("cl100k_base", encodings_dir=str(tmp_path))
    assert not counter.exact
    assert corrupt.read_bytes() == b"garbage"
    assert "is unusable: sha256 differs" in caplog.text


async def test_a_corrupt_local_file_at_start_up_leaves_estimates_and_fetches(
    tmp_path: Path, no_local_encodings: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "cl100k_base.tiktoken").write_bytes(b"garbage")
    fetch = FakeFetch(hang=True)
    counter = await load_counter_async(TokensConfig(encodings_dir=str(tmp_path)), fetch=fetch)
    assert await counter.count_async("x" * 40) == 10  # waited for the load: an estimate
    assert "is unusable: sha256 differs" in caplog.text
    assert counter.fetch_task is not None  # no usable file: fetched as when there is none
    await counter.aclose()
    assert fetch.cancelled


@needs_encodings
async def test_a_lazy_counter_loads_the_file_on_its_first_count_and_that_count_is_exact() -> None:
    """Not eager (no TPM quota): nothing is parsed at start-up; the first count starts the
    load, waits for it, and is exact; later counts do not wait."""
    counter = await load_counter_async(TokensConfig(encodings_dir=SHARED), eager=False)
    await asyncio.sleep(0.01)
    assert counter.load_task is None and not counter.exact  # not loaded on its own
    first, second = await asyncio.gather(
        counter.count_async("hello world"),
        counter.count_chat_async([{"role": "user", "content": "hello world"}]),
    )
    assert (first, second) == (2, 9) and counter.exact
    assert counter.load_task is None  # done: later counts skip the wait
    await counter.aclose()


@needs_encodings
async def test_start_loading_loads_a_lazy_counter_before_any_count() -> None:
    counter = await load_counter_async(TokensConfig(encodings_dir=SHARED), eager=False)
    counter.start_loading()
    task = counter.load_task
    assert task is not None
    counter.start_loading()  # once
    assert counter.load_task is task
    await task
    assert counter.exact
    await counter.aclose()


@needs_encodings
async def test_a_lazy_counter_without_a_file_still_fetches_at_once(
    no_local_encodings: Path,
) -> None:
    """Only the parse of a local file waits for a count: a download would leave the first
    prompts that may not fit a window routed on estimates, so it starts at start-up."""
    fetch = FakeFetch(cl100k_bytes())
    counter = await load_counter_async(TokensConfig(), eager=False, fetch=fetch)
    assert counter.fetch_task is not None
    assert await counter.fetch_task
    assert await counter.count_async("hello world") == 2
    assert fetch.calls == ["cl100k_base"]
    await counter.aclose()


@needs_encodings
async def test_a_local_file_gone_before_the_first_count_is_treated_as_missing(
    tmp_path: Path, no_local_encodings: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Lazy: the file found at start-up is read on the first count, maybe days later; a tmp
    cleaner may have removed it. That count gets an estimate (no error) and the fetch starts."""
    assert SHARED is not None
    kept = tmp_path / "cl100k_base.tiktoken"
    shutil.copy(Path(SHARED) / "9b5ad71b2ce5302211f9c61530b329a4922fc6a4", kept)
    fetch = FakeFetch(cl100k_bytes())
    config = TokensConfig(encodings_dir=str(tmp_path))
    counter = await load_counter_async(config, eager=False, fetch=fetch)
    kept.unlink()
    assert await counter.count_async("hello world") == 3  # an estimate, not a 500
    assert "is unusable" in caplog.text
    assert counter.fetch_task is not None and await counter.fetch_task
    assert await counter.count_async("hello world") == 2
    await counter.aclose()


async def test_aclose_of_a_lazy_counter_starts_nothing(no_local_encodings: Path) -> None:
    fetch = FakeFetch(error=AssertionError("must not be called"))
    counter = await load_counter_async(TokensConfig(), eager=False, fetch=fetch)
    await counter.aclose()
    counter.start_loading()
    assert counter.fetch_task is None and fetch.calls == []


@needs_encodings
def test_the_loaded_encoding_drops_tiktokens_python_copy_of_the_ranks_and_stays_exact() -> None:
    counter = load_counter("cl100k_base", encodings_dir=SHARED)
    encoding = counter._encoding
    assert encoding is not None and getattr(encoding, "_mergeable_ranks", None) == {}
    # the counts tiktoken gives with its ranks kept
    assert counter.count("Ünïcödé façade — naïve ☃") == 14
    assert counter.count("The quick brown fox jumps over the lazy dog. " * 10) == 101
