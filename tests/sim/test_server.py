"""The simulated backend over real sockets, with httpx and the official OpenAI SDK."""

from __future__ import annotations

import base64
import json
import struct
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from aigw.sim.server import BackendSettings, Faults, create_app
from tests.servers import ThreadedServer, serve_in_thread

FAST = 0.01
CHAT: dict[str, Any] = {
    "model": "fake-llama",
    "messages": [{"role": "user", "content": "Say something."}],
}

Start = Callable[..., ThreadedServer]


@pytest.fixture
def start() -> Iterator[Start]:
    """Start a backend on a real socket; keywords go to BackendSettings, ``faults`` as a dict."""
    with ExitStack() as stack:

        def factory(**kwargs: Any) -> ThreadedServer:
            kwargs.setdefault("time_scale", FAST)
            kwargs["faults"] = Faults(**kwargs.get("faults", {}))
            app = create_app(BackendSettings(**kwargs))
            return stack.enter_context(serve_in_thread(app))

        yield factory


Sdk = Callable[..., openai.OpenAI]


@pytest.fixture
def sdk() -> Iterator[Sdk]:
    """OpenAI SDK clients for a server, closed at teardown."""
    with ExitStack() as stack:

        def factory(server: ThreadedServer, api_key: str = "unused") -> openai.OpenAI:
            client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=api_key, max_retries=0)
            return stack.enter_context(client)

        yield factory


def stats(server: ThreadedServer) -> dict[str, Any]:
    result: dict[str, Any] = httpx.get(f"{server.url}/sim/stats").json()
    return result


def wait_for_stats(server: ThreadedServer, **expected: int) -> dict[str, Any]:
    """Poll /sim/stats (the server runs in another thread) until it shows ``expected``."""
    deadline = time.monotonic() + 5
    while True:
        current = stats(server)
        if all(current[k] == v for k, v in expected.items()):
            return current
        assert time.monotonic() < deadline, f"stats never reached {expected}: {current}"
        time.sleep(0.01)


def sse_events(lines: Iterator[str]) -> Iterator[Any]:
    for line in lines:
        if line.startswith("data: "):
            data = line[len("data: ") :]
            yield data if data == "[DONE]" else json.loads(data)


def test_models_lists_the_served_model_in_vllm_shape(start: Start, sdk: Sdk) -> None:
    server = start(model="m1", max_model_len=4096)
    body = httpx.get(f"{server.url}/v1/models").json()
    card = body["data"][0]
    assert body["object"] == "list"
    assert (card["id"], card["owned_by"], card["max_model_len"]) == ("m1", "vllm", 4096)
    assert [m.id for m in sdk(server).models.list()] == ["m1"]


def test_chat_non_streamed_with_n_and_ignore_eos(start: Start, sdk: Sdk) -> None:
    server = start()
    response = sdk(server).chat.completions.create(
        model="any-name",
        messages=[{"role": "user", "content": [{"type": "text", "text": "Hi there"}]}],
        n=2,
        max_tokens=5,
        extra_body={"ignore_eos": True, "x_unknown": {"kept": [1, 2]}},
    )
    assert response.object == "chat.completion" and response.model == "any-name"
    assert [c.index for c in response.choices] == [0, 1]
    for choice in response.choices:
        assert choice.finish_reason == "length"
        assert len((choice.message.content or "").split()) == 5
    assert response.usage is not None
    assert response.usage.completion_tokens == 10
    assert response.usage.prompt_tokens > 0
    logged = httpx.get(f"{server.url}/sim/requests").json()
    assert logged[-1]["x_unknown"] == {"kept": [1, 2]} and logged[-1]["n"] == 2
    assert wait_for_stats(server, completed=1)["by_endpoint"]["/v1/chat/completions"] == 1


def test_chat_natural_length_stops_before_max_tokens(start: Start, sdk: Sdk) -> None:
    server = start()
    response = sdk(server).chat.completions.create(model="m", messages=CHAT["messages"])
    choice = response.choices[0]
    assert choice.finish_reason == "stop"
    assert response.usage is not None and 8 <= response.usage.completion_tokens <= 40
    assert len((choice.message.content or "").split()) == response.usage.completion_tokens


def test_chat_stream_chunk_by_chunk_with_usage(start: Start, sdk: Sdk) -> None:
    server = start()
    stream = sdk(server).chat.completions.create(
        model="fake-llama",
        messages=CHAT["messages"],
        stream=True,
        stream_options={"include_usage": True},
        max_tokens=6,
        extra_body={"ignore_eos": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    content = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content) == 6
    assert content[-1].choices[0].finish_reason == "length"
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == 6


def test_raw_stream_ends_with_done(start: Start) -> None:
    server = start()
    body = {**CHAT, "stream": True, "max_tokens": 3, "ignore_eos": True}
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = list(sse_events(response.iter_lines()))
    assert events[-1] == "[DONE]"
    assert sum(1 for e in events[:-1] if e["choices"][0]["delta"].get("content")) == 3


def test_completions_multiple_prompts_times_n_and_stream(start: Start, sdk: Sdk) -> None:
    server = start()
    client = sdk(server)
    response = client.completions.create(model="m", prompt=["one", "two"], n=2, max_tokens=4)
    assert response.object == "text_completion"
    assert sorted(c.index for c in response.choices) == [0, 1, 2, 3]
    assert response.usage is not None and response.usage.completion_tokens <= 16
    stream = client.completions.create(
        model="m", prompt=[1, 2, 3], max_tokens=4, stream=True, extra_body={"ignore_eos": True}
    )
    texts = [c.choices[0].text for c in stream]
    assert len(texts) == 4 and all(texts)


def test_embeddings_base64_by_default_and_float(start: Start, sdk: Sdk) -> None:
    server = start()
    client = sdk(server)
    default = client.embeddings.create(model="e", input=["alpha", "beta"])
    floats = client.embeddings.create(model="e", input="alpha", encoding_format="float")
    raw = httpx.post(
        f"{server.url}/v1/embeddings", json={"input": "alpha", "encoding_format": "base64"}
    ).json()["data"][0]["embedding"]
    vector = default.data[0].embedding
    assert len(vector) == 64 and abs(sum(x * x for x in vector) - 1) < 1e-5
    assert vector == pytest.approx(floats.data[0].embedding, abs=1e-6)
    assert default.data[1].embedding != vector
    assert list(struct.unpack("<64f", base64.b64decode(raw))) == pytest.approx(vector)
    assert httpx.get(f"{server.url}/sim/requests").json()[0]["encoding_format"] == "base64"
    tokens = client.embeddings.create(model="e", input=[[1, 2, 3]], encoding_format="float")
    assert tokens.usage.prompt_tokens == 3


def test_forced_tool_call_non_streamed_and_streamed(start: Start, sdk: Sdk) -> None:
    server = start()
    client = sdk(server)
    tools: Any = [
        {"type": "function", "function": {"name": "get_time", "parameters": {}}},
        {"type": "function", "function": {"name": "get_weather", "parameters": {}}},
    ]
    response = client.chat.completions.create(
        model="m", messages=CHAT["messages"], tools=tools, tool_choice="required"
    )
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    call: Any = choice.message.tool_calls[0]
    assert call.function.name == "get_time" and json.loads(call.function.arguments) == {}
    stream = client.chat.completions.create(
        model="m",
        messages=CHAT["messages"],
        tools=tools,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        stream=True,
    )
    chunks = [c for c in stream if c.choices]
    assert [c.choices[0].finish_reason for c in chunks][-1] == "tool_calls"
    calls: list[Any] = [c.choices[0].delta.tool_calls for c in chunks]
    calls = [c[0] for c in calls if c]
    assert calls[0].id and calls[0].function.name == "get_weather"
    assert not any(c.id for c in calls[1:])  # later deltas carry only argument pieces
    arguments = "".join(c.function.arguments or "" for c in calls)
    assert json.loads(arguments) == {}


def test_context_length_and_malformed_bodies_are_400(start: Start, sdk: Sdk) -> None:
    server = start(max_model_len=1024)
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(server).chat.completions.create(model="m", messages=CHAT["messages"], max_tokens=1020)
    assert "This model's maximum context length is 1024 tokens. However, you requested" in str(
        caught.value
    )
    bad = httpx.post(f"{server.url}/v1/chat/completions", content=b"{not json")
    assert bad.status_code == 400 and bad.json()["error"]["code"] == 400
    missing = httpx.post(f"{server.url}/v1/chat/completions", json={"model": "m"})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "messages"
    assert wait_for_stats(server, failed=3)["received"] == 3


def test_api_key_is_required_on_v1_only(start: Start, sdk: Sdk) -> None:
    server = start(api_key="sekrit")
    with pytest.raises(openai.AuthenticationError):
        sdk(server, api_key="wrong").models.list()
    assert sdk(server, api_key="sekrit").chat.completions.create(**CHAT).choices
    assert httpx.get(f"{server.url}/health").status_code == 200


def test_error_rate_one_answers_the_configured_status(start: Start, sdk: Sdk) -> None:
    server = start(faults={"error_rate": 1.0})
    with pytest.raises(openai.InternalServerError):
        sdk(server).chat.completions.create(**CHAT)
    other = httpx.post(f"{server.url}/sim/faults", json={"error_status": 503})
    assert other.json()["error_status"] == 503
    response = httpx.post(f"{server.url}/v1/completions", json={"prompt": "x"})
    assert response.status_code == 503 and "message" in response.json()["error"]
    assert wait_for_stats(server, failed=2)["completed"] == 0


def test_runtime_faults_and_reset(start: Start) -> None:
    server = start()
    assert httpx.post(f"{server.url}/sim/faults", json={"nope": 1}).status_code == 400
    assert httpx.post(f"{server.url}/sim/faults", json={"error_rate": 1}).status_code == 200
    assert httpx.post(f"{server.url}/v1/chat/completions", json=CHAT).status_code == 500
    httpx.post(f"{server.url}/sim/faults", json={"error_rate": 0})
    assert httpx.post(f"{server.url}/v1/chat/completions", json=CHAT).status_code == 200
    assert wait_for_stats(server, received=2, failed=1, completed=1)
    reset = httpx.post(f"{server.url}/sim/reset").json()
    assert (reset["received"], reset["prefix_cache_queries"]) == (0, 0)
    assert httpx.get(f"{server.url}/sim/requests").json() == []


def test_slow_start_answers_503_until_loaded(start: Start, sdk: Sdk) -> None:
    server = start(faults={"slow_start": 0.5})
    assert httpx.get(f"{server.url}/health").status_code == 503
    with pytest.raises(openai.InternalServerError) as caught:
        sdk(server).chat.completions.create(**CHAT)
    assert caught.value.status_code == 503
    deadline = time.monotonic() + 5
    while httpx.get(f"{server.url}/health").status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert sdk(server).chat.completions.create(**CHAT).choices


def test_die_mid_stream_breaks_the_stream_without_done(start: Start) -> None:
    server = start(faults={"die_mid_stream_rate": 1.0, "die_after_tokens": 2})
    body = {**CHAT, "stream": True, "max_tokens": 50, "ignore_eos": True}
    seen: list[Any] = []
    with pytest.raises(httpx.RemoteProtocolError):
        with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body) as response:
            seen.extend(sse_events(response.iter_lines()))
    assert "[DONE]" not in seen
    assert sum(1 for e in seen if e["choices"][0]["delta"].get("content")) == 2
    current = wait_for_stats(server, failed=1, running=0)
    assert current["kv_cache_usage"] == 0


def test_client_disconnect_mid_stream_aborts_and_frees_blocks(start: Start) -> None:
    server = start(time_scale=1.0)
    body = {**CHAT, "stream": True, "max_tokens": 2000, "ignore_eos": True}
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body) as response:
        for event in sse_events(response.iter_lines()):
            if event["choices"][0]["delta"].get("content"):
                break
    current = wait_for_stats(server, aborted=1, running=0)
    assert current["completed"] == 0 and current["kv_cache_usage"] == 0
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'vllm:request_success_total{engine="0",finished_reason="abort"' in metrics


def test_disconnect_while_queued_or_hung_counts_as_aborted(start: Start) -> None:
    server = start(time_scale=1.0, max_num_seqs=1)
    hog = {**CHAT, "stream": True, "max_tokens": 2000, "ignore_eos": True}
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=hog) as response:
        events = sse_events(response.iter_lines())  # kept: dropping it closes the stream
        while not next(events)["choices"][0]["delta"].get("content"):
            pass  # until the hog is decoding
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{server.url}/v1/chat/completions", json=CHAT, timeout=0.3)
        wait_for_stats(server, aborted=1, running=1, waiting=0)
    wait_for_stats(server, aborted=2, running=0)
    httpx.post(f"{server.url}/sim/faults", json={"hang_rate": 1})
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.url}/v1/embeddings", json={"input": "x"}, timeout=0.2)
    wait_for_stats(server, aborted=3, received=3)


def test_metrics_parse_with_vllm_names(start: Start, sdk: Sdk) -> None:
    server = start(model="metric-model")
    sdk(server).chat.completions.create(**CHAT)
    text = httpx.get(f"{server.url}/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {s.name: s for f in families.values() for s in f.samples}
    for name in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:gpu_cache_usage_perc",
        "vllm:num_preemptions_total",
        "vllm:prompt_tokens_total",
        "vllm:generation_tokens_total",
        "vllm:request_success_total",
        "vllm:prefix_cache_queries_total",
        "vllm:prefix_cache_hits_total",
        "vllm:time_to_first_token_seconds_count",
        "vllm:inter_token_latency_seconds_count",
        "vllm:time_per_output_token_seconds_count",
        "vllm:e2e_request_latency_seconds_count",
    ):
        assert name in samples, name
        assert samples[name].labels["model_name"] == "metric-model"
    assert "_created" not in text
    assert samples["vllm:time_to_first_token_seconds_count"].value == 1
    assert samples["vllm:generation_tokens_total"].value >= 8
    assert families["vllm:kv_cache_usage_perc"].type == "gauge"


def test_scrape_delay_returns_stale_metrics_late(start: Start) -> None:
    server = start(scrape_delay=0.3)
    began = time.monotonic()
    assert httpx.get(f"{server.url}/metrics").status_code == 200
    assert time.monotonic() - began >= 0.3
