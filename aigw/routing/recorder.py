"""The gateway-local signals of each deployment, recorded from attempts' outcomes.

Policies read what this writes (``deployment.state``): in-flight count, dispatch counters,
remembered prompt prefixes, latency, time-to-first-token and time-per-output-token EWMAs, the
output length per request and the prefill time per prompt token.
"""

from __future__ import annotations

from aigw.errors import GatewayError
from aigw.fleet.attempt import Attempt

__all__ = ["SignalRecorder"]


class SignalRecorder:
    """An :class:`~aigw.fleet.attempt.AttemptObserver` that keeps ``DeploymentState`` current."""

    __slots__ = ()

    def on_dispatch(self, attempt: Attempt) -> None:
        state = attempt.deployment.state
        state.in_flight += 1
        state.requests += 1
        state.dispatched += 1
        ctx = attempt.ctx
        blocks = ctx.prefix_blocks
        tokens = ctx.prompt_tokens
        if blocks:
            # A cached prefix is not prefilled again: the backlog and the learnt prefill cost
            # per token count the uncached tokens only, as the TTFT prediction does. Counting
            # whole prompts made the engine holding a conversation look busier (and cheaper
            # per token) the more cache hits it took, and pushed the next turns elsewhere.
            tokens -= tokens * state.prefixes.matched(blocks) // len(blocks)
            state.prefixes.add(blocks)
        attempt.prefill_tokens = tokens
        if ctx.body.get("stream"):  # only a stream's first token tells when prefill ended
            attempt.prefill_ahead = state.prefill_backlog
            state.prefill_backlog += tokens

    def on_first_byte(self, attempt: Attempt) -> None:
        assert attempt.first_byte_at is not None
        state = attempt.deployment.state
        seconds = attempt.first_byte_at - attempt.started_at
        state.observe_first_byte(seconds, attempt.first_byte_at)
        prompt_tokens = attempt.prefill_tokens
        ahead = attempt.prefill_ahead
        if ahead is not None:
            state.prefill_backlog -= prompt_tokens
        if not attempt.engine_queued and prompt_tokens + (ahead or 0) > 0:
            # The first token costs one engine step (about one TPOT) beyond the prefill: taken
            # out, so that short prompts do not make every token look expensive; and the
            # engine prefilled what was sent before it first.
            step = state.tpot.value or 0.0
            prefill = seconds - step if seconds > step else 0.0
            state.prefill_per_token.add(prefill, prompt_tokens + (ahead or 0))

    def on_success(self, attempt: Attempt) -> None:
        state = attempt.deployment.state
        usage = attempt.usage
        if attempt.first_byte_at is None:  # a non-streamed reply: latency is the whole reply
            if attempt.last_byte_at is not None:
                state.latency.add(attempt.last_byte_at - attempt.started_at, attempt.last_byte_at)
            if usage is not None and usage.completion_tokens:
                state.output_tokens.add(usage.completion_tokens)
            return
        # A stream: one SSE event per token for OpenAI-style streams, minus the role chunk
        # and [DONE], unless the upstream reported the real count.
        tokens = usage.completion_tokens if usage else max(1, attempt.relayed_events - 2)
        state.output_tokens.add(tokens)
        last = attempt.last_byte_at
        if tokens > 1 and last is not None:
            state.tpot.add((last - attempt.first_byte_at) / (tokens - 1))

    def on_failure(self, attempt: Attempt, error: GatewayError) -> None:
        pass  # error rates and ejection belong to the outlier detector

    def on_finish(self, attempt: Attempt) -> None:
        state = attempt.deployment.state
        state.in_flight -= 1
        if attempt.prefill_ahead is not None and attempt.first_byte_at is None:
            state.prefill_backlog -= attempt.prefill_tokens  # failed before its first token
