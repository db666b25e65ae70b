"""One chat or completion request, from parsed parameters to the last byte on the wire.

Each choice becomes one engine sequence (vLLM fans ``n > 1`` out the same way); what each says
and when it ends is planned first (:mod:`aigw.sim.choices`: free text, structured output, a
forced tool call, ``stop`` strings). ``logprobs`` (chat: ``logprobs``/``top_logprobs``;
completions: ``logprobs``) are drawn per token as it is sent (:mod:`aigw.sim.logprobs`).
``usage`` counts the tokens sent; ``prompt_tokens_details.cached_tokens`` the prompt tokens
the prefix cache held when each prompt's first choice was admitted.

A continuation, as the gateway's ``stream_resume`` sends it (a last assistant message with
``continue_final_message: true`` and ``add_generation_prompt: false``), needs nothing special:
the partial answer is part of the prompt and the output is new tokens, as many as
``max_tokens`` allows; the two vLLM fields are accepted and otherwise ignored.

A watcher task reads the receive channel for ``http.disconnect`` while the engine works; on
disconnect every sequence is aborted at once (queue or batch), which frees its KV blocks.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import time
from typing import Any

from aigw.sim import wire
from aigw.sim.asgi import Receive, Send, send_json, wait_disconnect
from aigw.sim.choices import NATURAL_LENGTH, ChoicePlan, Planner
from aigw.sim.engine import Engine, EngineRequest, SeqState, Signal
from aigw.sim.logprobs import Logprobs
from aigw.sim.params import GenerationParams
from aigw.sim.text import Vocabulary

__all__ = ["NATURAL_LENGTH", "Generator", "Outcome"]

log = logging.getLogger("aigw.sim")
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
]


class Outcome(enum.Enum):
    COMPLETED = "completed"
    ABORTED = "aborted"  # the client went away first
    FAILED = "failed"  # the server gave up (dropped the stream, engine shut down)


class _Disconnect:
    """Set by the watcher when the client disconnects; aborts the sequences at once."""

    __slots__ = ("engine", "gone", "requests", "signal")

    def __init__(self, engine: Engine, requests: list[EngineRequest], signal: Signal) -> None:
        self.engine = engine
        self.requests = requests
        self.signal = signal
        self.gone = False

    async def watch(self, receive: Receive) -> None:
        await wait_disconnect(receive)
        self.gone = True
        for req in self.requests:
            self.engine.abort(req)
        self.signal.notify()


class Generator:
    """Runs generation requests against one engine; built once per app."""

    def __init__(
        self, engine: Engine, rng: random.Random, vocab: Vocabulary, max_model_len: int
    ) -> None:
        self._engine = engine
        self._rng = rng
        self._planner = Planner(rng, vocab, max_model_len, engine.fits)
        self._logprobs = Logprobs(vocab.spaced)

    async def run(
        self, params: GenerationParams, receive: Receive, send: Send, die_after: int | None
    ) -> Outcome:
        """Answer one request; ``die_after`` (streams only) drops the connection after that
        many tokens. Raises BadRequest before anything was sent."""
        plans = self._planner.plan(params)
        signal = Signal(per_token=params.stream)
        requests = [
            self._engine.submit(plan.prompt, plan.max_new, plan.reason, signal) for plan in plans
        ]
        disconnect = _Disconnect(self._engine, requests, signal)
        watcher = asyncio.create_task(disconnect.watch(receive))
        try:
            if params.stream:
                return await self._stream(params, plans, requests, disconnect, send, die_after)
            return await self._respond(params, plans, requests, disconnect, send)
        finally:
            watcher.cancel()
            for req in requests:
                self._engine.abort(req)  # no-op unless we leave early (e.g. cancelled)

    def _ids(self, params: GenerationParams) -> tuple[str, int, str]:
        prefix = "chatcmpl" if params.chat else "cmpl"
        tool_id = f"chatcmpl-tool-{self._rng.getrandbits(128):032x}"
        return f"{prefix}-{self._rng.getrandbits(128):032x}", int(time.time()), tool_id

    def _finish_reason(self, params: GenerationParams, req: EngineRequest) -> str:
        reason = req.finish_reason or "stop"
        forced = params.output.tool is not None
        return "tool_calls" if forced and reason == "stop" else reason

    async def _respond(
        self,
        params: GenerationParams,
        plans: list[ChoicePlan],
        requests: list[EngineRequest],
        disconnect: _Disconnect,
        send: Send,
    ) -> Outcome:
        while not all(req.done for req in requests):
            await disconnect.signal.wait()
        if disconnect.gone:
            return Outcome.ABORTED
        if any(req.state is SeqState.ABORTED for req in requests):
            await send_json(send, 500, wire.error_body(500, "request aborted by the engine"))
            return Outcome.FAILED
        response_id, created, tool_id = self._ids(params)
        tool = params.output.tool
        choices: list[wire.Choice] = []
        for plan, req in zip(plans, requests, strict=True):
            reason = self._finish_reason(params, req)
            if tool is None:
                tokens = plan.pieces[: req.generated]
                logprobs = self._logprobs_of(params, tokens, 0)
                text = "".join(tokens)
                choices.append(
                    wire.Choice(plan.index, text, reason, None, plan.stop_reason, logprobs)
                )
            else:
                tokens = plan.pieces[: req.generated - 1]
                call = wire.ToolCall(tool_id, tool.name, "".join(tokens))
                logprobs = self._logprobs_of(params, tokens, 0)
                choices.append(wire.Choice(plan.index, "", reason, call, None, logprobs))
        use = _usage(params, requests)
        build = wire.chat_response if params.chat else wire.completion_response
        await send_json(send, 200, build(response_id, created, params.model, choices, use))
        return Outcome.COMPLETED

    def _logprobs_of(
        self, params: GenerationParams, tokens: list[str], offset: int
    ) -> dict[str, Any] | None:
        """The ``logprobs`` object of ``tokens`` (None when the request did not ask)."""
        top = params.output.logprobs
        if top is None:
            return None
        if params.chat:
            return self._logprobs.chat(self._rng, tokens, top)
        return self._logprobs.completion(self._rng, tokens, top, offset)

    def _token_chunk(
        self,
        params: GenerationParams,
        head: dict[str, Any],
        plan: ChoicePlan,
        k: int,
        finish: str | None,
        tool_id: str,
        offset: int,
    ) -> bytes:
        """The chunk of token ``k`` of ``plan``; ``offset``: where a completion's token starts
        in the choice's text."""
        tool = params.output.tool
        if not params.chat:
            piece = plan.pieces[k]
            logprobs = self._logprobs_of(params, [piece], offset)
            stop_reason = plan.stop_reason if finish else None
            chunk = wire.completion_chunk(head, plan.index, piece, finish, logprobs, stop_reason)
            return wire.sse(chunk)
        if tool is None:
            delta: dict[str, Any] = {"content": plan.pieces[k]}
            logprobs = self._logprobs_of(params, [plan.pieces[k]], 0)
        elif k == 0:
            function = {"name": tool.name, "arguments": ""}
            delta = {
                "tool_calls": [
                    {"index": 0, "id": tool_id, "type": "function", "function": function}
                ]
            }
            logprobs = None
        else:
            delta = {"tool_calls": [{"index": 0, "function": {"arguments": plan.pieces[k - 1]}}]}
            logprobs = self._logprobs_of(params, [plan.pieces[k - 1]], 0)
        return wire.sse(wire.chat_chunk(head, plan.index, delta, finish, logprobs))

    async def _stream(
        self,
        params: GenerationParams,
        plans: list[ChoicePlan],
        requests: list[EngineRequest],
        disconnect: _Disconnect,
        send: Send,
        die_after: int | None,
    ) -> Outcome:
        response_id, created, tool_id = self._ids(params)
        head: dict[str, Any] = {
            "id": response_id,
            "object": "chat.completion.chunk" if params.chat else "text_completion",
            "created": created,
            "model": params.model,
        }
        if params.include_usage:
            head["usage"] = None
        await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
        # vLLM opens every choice with a role-only delta, sent with the first engine output
        # (after queueing and prefill), not when the request arrives: a gateway timing the
        # first byte must see the real time to first token.
        opening = (
            [
                wire.sse(wire.chat_chunk(head, p.index, {"role": "assistant", "content": ""}, None))
                for p in plans
            ]
            if params.chat
            else []
        )
        sent = [0] * len(requests)
        offsets = [0] * len(requests)  # characters sent per choice (completion logprobs)
        budget = die_after
        while True:
            parts: list[bytes] = []
            for i, (plan, req) in enumerate(zip(plans, requests, strict=True)):
                while sent[i] < req.generated and budget != 0:
                    k = sent[i]
                    sent[i] = k + 1
                    last = req.state is SeqState.FINISHED and k + 1 == req.generated
                    finish = self._finish_reason(params, req) if last else None
                    chunk = self._token_chunk(params, head, plan, k, finish, tool_id, offsets[i])
                    parts.append(chunk)
                    if not params.chat:
                        offsets[i] += len(plan.pieces[k])
                    if budget is not None:
                        budget -= 1
            if disconnect.gone:
                return Outcome.ABORTED
            if parts and opening:
                parts = opening + parts
                opening = []
            if parts:
                await send(
                    {"type": "http.response.body", "body": b"".join(parts), "more_body": True}
                )
            if budget == 0:
                # Simulated crash: return without finishing the response; uvicorn closes the
                # connection (logging "ASGI callable returned without completing response"),
                # so the client sees a truncated chunked body and no [DONE].
                log.info("fault injected: dropping the stream after %d tokens", die_after)
                return Outcome.FAILED
            if all(req.done for req in requests):
                break
            await disconnect.signal.wait()
        if any(req.state is SeqState.ABORTED for req in requests):
            return Outcome.FAILED  # the engine gave up (shutdown): drop the stream
        tail = (
            [wire.sse({**head, "choices": [], "usage": _usage(params, requests)})]
            if (params.include_usage)
            else []
        )
        tail = opening + tail  # no token at all was generated: still open the choices
        tail.append(wire.DONE)
        await send({"type": "http.response.body", "body": b"".join(tail), "more_body": False})
        return Outcome.COMPLETED


def _usage(params: GenerationParams, requests: list[EngineRequest]) -> dict[str, Any]:
    prompt_tokens = sum(p.tokens for p in params.prompts)
    cached = sum(requests[i * params.n].cached_tokens for i in range(len(params.prompts)))
    return wire.usage(prompt_tokens, sum(req.generated for req in requests), cached)
