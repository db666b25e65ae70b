"""The transcript a stream_resume model's stream keeps, and the continuation's rewriting
(:mod:`aigw.resume`)."""

from __future__ import annotations

from typing import Any

import orjson

from aigw.resume import Continuation, Transcript, prefix
from aigw.types import Usage


class Echo:
    """A translator that passes bytes through, with a fixed usage."""

    usage: Usage | None = None

    def feed(self, chunk: bytes) -> bytes:
        return chunk

    def finish(self) -> bytes:
        return b""


def event(delta: dict[str, Any], finish: str | None = None, n: int = 1) -> bytes:
    body = {
        "id": f"id-{n}",
        "created": n,
        "model": f"m-{n}",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + orjson.dumps(body) + b"\n\n"


def test_the_text_sent_is_kept_escapes_and_all() -> None:
    t = Transcript(Echo(), chat=True)
    t.feed(event({"role": "assistant", "content": ""}))
    t.feed(event({"content": 'say "hi"\n'}) + event({"content": "é😀\\"}))
    t.feed(event({"content": None}))
    assert t.text == 'say "hi"\né😀\\'
    assert t.pieces == 2
    assert (t.id, t.created, t.model) == ("id-1", 1, "m-1")
    assert t.can_resume


def test_a_finish_reason_or_a_tool_call_ends_resumability() -> None:
    done = Transcript(Echo(), chat=True)
    done.feed(event({"content": "a"}) + event({"content": "b"}, "stop"))
    assert done.text == "ab" and not done.can_resume
    tool = Transcript(Echo(), chat=True)
    tool.feed(event({"content": "a"}))
    tool.feed(event({"tool_calls": [{"index": 0, "function": {"arguments": "{"}}]}))
    assert not tool.can_resume


def test_completions_text_is_kept() -> None:
    t = Transcript(Echo(), chat=False)
    chunk = {"id": "c", "created": 1, "model": "m", "choices": [{"index": 0, "text": "Once"}]}
    t.feed(b"data: " + orjson.dumps(chunk) + b"\n\n")
    t.feed(
        b"data: " + orjson.dumps({**chunk, "choices": [{"index": 0, "text": " upon"}]}) + b"\n\n"
    )
    assert t.text == "Once upon"


def test_a_continuation_reads_as_the_rest_of_the_first_stream() -> None:
    first = Transcript(Echo(), chat=True)
    first.feed(event({"role": "assistant", "content": ""}) + event({"content": "Hel"}))
    inner = Echo()
    inner.usage = Usage(12, 3)
    c = Continuation(inner, first, prior_tokens=first.pieces, chat=True)
    usage = {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}
    out = c.feed(
        event({"role": "assistant", "content": ""}, n=2)
        + event({"content": "lo"}, n=2)
        + b"data: "
        + orjson.dumps({"id": "id-2", "created": 2, "model": "m-2", "choices": [], "usage": usage})
        + b"\n\ndata: [DONE]\n\n"
    )
    events = [orjson.loads(x[6:]) for x in out.split(b"\n\n") if x and x != b"data: [DONE]"]
    assert [e["choices"] for e in events] == [
        [{"index": 0, "delta": {"content": "lo"}, "finish_reason": None}],
        [],
    ]
    assert {(e["id"], e["created"], e["model"]) for e in events} == {("id-1", 1, "m-1")}
    assert events[-1]["usage"] == {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15}
    assert out.endswith(b"data: [DONE]\n\n")
    assert c.usage == Usage(11, 4)


def test_whitespace_left_out_of_the_prefix_is_not_sent_twice() -> None:
    first = Transcript(Echo(), chat=True)
    first.feed(event({"content": "Hello"}) + event({"content": " \n"}))
    assert prefix(first.text) == "Hello"
    c = Continuation(Echo(), first, prior_tokens=2, chat=True)
    out = c.feed(event({"content": " "}, n=2))  # all of it already sent: dropped
    assert out == b""
    out = c.feed(event({"content": "\nworld"}, n=2) + event({"content": " again"}, n=2))
    texts = [orjson.loads(x[6:])["choices"][0]["delta"]["content"] for x in out.split(b"\n\n") if x]
    assert texts == ["world", " again"]  # trimmed once, at the opening only


def test_a_continuation_opening_with_other_whitespace_keeps_it() -> None:
    first = Transcript(Echo(), chat=True)
    first.feed(event({"content": "Hello "}))
    c = Continuation(Echo(), first, prior_tokens=1, chat=True)
    out = c.feed(event({"content": "\tworld"}, n=2))
    assert orjson.loads(out[6:])["choices"][0]["delta"]["content"] == "\tworld"
