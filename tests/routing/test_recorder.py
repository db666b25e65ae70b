"""SignalRecorder: what the gateway learns of a deployment from its attempts."""

from __future__ import annotations

import pytest

from aigw.fleet.attempt import Attempt
from aigw.fleet.deployment import Deployment
from aigw.fleet.signals import RatioEwma
from aigw.routing.recorder import SignalRecorder
from aigw.types import Endpoint, RouteContext
from tests.routing.test_history import make_deployment


def first_byte(
    recorder: SignalRecorder, deployment: Deployment, prompt_tokens: int, ttft: float
) -> None:
    ctx = RouteContext(endpoint=Endpoint.CHAT, model="m", body={}, prompt_tokens=prompt_tokens)
    a = Attempt(deployment, ctx, 1, 100.0)
    recorder.on_dispatch(a)
    a.first_byte_at = 100.0 + ttft
    recorder.on_first_byte(a)
    recorder.on_finish(a)


def test_prefill_per_token_is_not_inflated_by_short_prompts() -> None:
    """An engine whose first token costs one 20 ms step plus 0.1 ms per prompt token: the
    learnt rate is the slope, whatever mix of short and long prompts it saw. An average of
    per-request ratios would learn ~5 ms/token from the 4-token prompts alone."""
    recorder = SignalRecorder()
    d = make_deployment()
    d.state.tpot.add(0.02)
    for tokens in [4, 2000, 4, 1000, 4, 4, 3000, 4] * 5:
        first_byte(recorder, d, tokens, 0.02 + tokens * 0.0001)
    assert d.state.prefill_per_token.get(1.0) == pytest.approx(0.0001, rel=0.02)


def test_prefill_is_not_learnt_from_a_queued_engine() -> None:
    recorder = SignalRecorder()
    d = make_deployment()
    ctx = RouteContext(endpoint=Endpoint.CHAT, model="m", body={}, prompt_tokens=100)
    a = Attempt(d, ctx, 1, 0.0, engine_queued=True)
    recorder.on_dispatch(a)
    a.first_byte_at = 5.0
    recorder.on_first_byte(a)
    assert d.state.prefill_per_token.value is None
    assert d.state.ttft.value == 5.0  # the TTFT itself is still observed


def test_ratio_ewma_is_the_ratio_of_the_averages() -> None:
    r = RatioEwma(alpha=0.5)
    assert r.get(7.0) == 7.0 and r.count == 0
    r.add(1.0, 10.0)
    assert r.value == pytest.approx(0.1)
    r.add(3.0, 10.0)  # numerator EWMA 2, denominator 10
    assert r.value == pytest.approx(0.2) and r.count == 2
    r.add(0.0, 0.0)  # 1 / 5
    assert r.value == pytest.approx(0.2)


def stream_attempt(deployment: Deployment, prompt_tokens: int, stream: bool = True) -> Attempt:
    ctx = RouteContext(
        endpoint=Endpoint.CHAT, model="m", body={"stream": stream}, prompt_tokens=prompt_tokens
    )
    return Attempt(deployment, ctx, 1, 100.0)


def test_prefill_backlog_counts_streams_until_their_first_token() -> None:
    recorder = SignalRecorder()
    d = make_deployment()
    first, second, failed = (stream_attempt(d, n) for n in (5000, 300, 700))
    unary = stream_attempt(d, 900, stream=False)  # its first byte is its whole reply
    for a in (first, second, failed, unary):
        recorder.on_dispatch(a)
    assert d.state.prefill_backlog == 6000
    assert (first.prefill_ahead, second.prefill_ahead, failed.prefill_ahead) == (0, 5000, 5300)
    assert unary.prefill_ahead is None
    first.first_byte_at = 101.0
    recorder.on_first_byte(first)
    assert d.state.prefill_backlog == 1000
    recorder.on_finish(failed)  # ended without a first token
    recorder.on_finish(unary)
    assert d.state.prefill_backlog == 300
    second.first_byte_at = 101.0
    recorder.on_first_byte(second)
    recorder.on_finish(second)
    recorder.on_finish(first)
    assert d.state.prefill_backlog == 0 and d.state.in_flight == 0


def test_the_prefill_ahead_is_part_of_what_a_first_token_waited_for() -> None:
    """Two 1,000-token prompts sent together to an engine prefilling at 0.1 ms a token: the
    second's first token comes after 0.2 s, which is 2,000 tokens of prefill, not 1,000."""
    recorder = SignalRecorder()
    d = make_deployment()
    a, b = stream_attempt(d, 1000), stream_attempt(d, 1000)
    recorder.on_dispatch(a)
    recorder.on_dispatch(b)
    a.first_byte_at = 100.1
    recorder.on_first_byte(a)
    b.first_byte_at = 100.2
    recorder.on_first_byte(b)
    assert d.state.prefill_per_token.get(1.0) == pytest.approx(0.0001)


def test_a_prefix_already_sent_there_is_not_counted_as_prefill() -> None:
    """The second turn of a conversation re-sends the first turn's prompt (4 of its 5 prefix
    blocks), which the engine has cached: only the last fifth is prefill, in the backlog and
    in the learnt cost per token (an engine prefilling at 0.1 ms a token)."""
    recorder = SignalRecorder()
    d = make_deployment()
    d.state.tpot.add(0.02)

    def turn(blocks: tuple[int, ...], tokens: int) -> Attempt:
        ctx = RouteContext(
            endpoint=Endpoint.CHAT,
            model="m",
            body={"stream": True},
            prompt_tokens=tokens,
            prefix_blocks=blocks,
        )
        return Attempt(d, ctx, 1, 100.0)

    first = turn((1, 2, 3, 4), 400)
    recorder.on_dispatch(first)
    assert d.state.prefill_backlog == 400  # nothing of it sent there before
    first.first_byte_at = 100.0 + 0.02 + 400 * 0.0001
    recorder.on_first_byte(first)
    recorder.on_finish(first)
    second = turn((1, 2, 3, 4, 5), 500)
    recorder.on_dispatch(second)
    assert d.state.prefill_backlog == 100 and second.prefill_tokens == 100
    second.first_byte_at = 100.0 + 0.02 + 100 * 0.0001
    recorder.on_first_byte(second)
    recorder.on_finish(second)
    assert d.state.prefill_backlog == 0
    assert d.state.prefill_per_token.get(1.0) == pytest.approx(0.0001)
