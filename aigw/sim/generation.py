"""One chat or completion request, from parsed parameters to the last byte on the wire.

Each choice becomes one engine sequence (vLLM fans ``n > 1`` out the same way). Output lengths:
with ``ignore_eos`` a choice produces exactly ``max_tokens``; otherwise a natural length drawn
uniformly from ``NATURAL_LENGTH`` by the app's RNG, capped by ``max_tokens`` (finish reason
"length" when the cap cut it, "stop" otherwise). Without ``max_tokens`` the cap is what is
left of ``max_model_len``, as in vLLM. A forced tool call is three tokens: the call header
(id and function name) and the arguments ``{}`` in two pieces.

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
from dataclasses import dataclass
from typing import Any

from aigw.sim import wire
from aigw.sim.asgi import Receive, Send, send_json, wait_disconnect
from aigw.sim.engine import Engine, EngineRequest, SeqState, Signal
from aigw.sim.params import BadRequest, GenerationParams
from aigw.sim.text import Prompt, Vocabulary

__all__ = ["NATURAL_LENGTH", "Generator", "Outcome"]

log = logging.getLogger("aigw.sim")

NATURAL_LENGTH = (8, 40)
_TOOL_ARGUMENT_PIECES = ("{", "}")
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
]


class Outcome(enum.Enum):
    COMPLETED = "completed"
    ABORTED = "aborted"  # the client went away first
    FAILED = "failed"  # the server gave up (dropped the stream, engine shut down)


@dataclass(frozen=True, slots=True)
class _ChoicePlan:
    index: int
    prompt: Prompt
    max_new: int
    reason: str  # engine finish reason at max_new: "stop" or "length"
    pieces: list[str]  # text per token; for a tool call, the argument pieces after the header


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


def _context_error(max_model_len: int, prompt: int, completion: int) -> BadRequest:
    return BadRequest(
        f"This model's maximum context length is {max_model_len} tokens. However, you "
        f"requested {prompt + completion} tokens ({prompt} in the messages, {completion} in "
        "the completion). Please reduce the length of the messages or completion.",
        "messages",
    )


class Generator:
    """Runs generation requests against one engine; built once per app."""

    def __init__(
        self, engine: Engine, rng: random.Random, vocab: Vocabulary, max_model_len: int
    ) -> None:
        self._engine = engine
        self._rng = rng
        self._vocab = vocab
        self._max_model_len = max_model_len

    def _plan(self, params: GenerationParams) -> list[_ChoicePlan]:
        """One plan per choice; BadRequest when a prompt does not fit the context or cache."""
        limit = self._max_model_len
        plans: list[_ChoicePlan] = []
        for p_index, prompt in enumerate(params.prompts):
            requested = params.max_tokens or 0
            if prompt.tokens + requested > limit or prompt.tokens >= limit:
                raise _context_error(limit, prompt.tokens, requested)
            cap = params.max_tokens or limit - prompt.tokens
            for j in range(params.n):
                if params.tool is not None:
                    natural = 1 + len(_TOOL_ARGUMENT_PIECES)
                elif params.ignore_eos:
                    natural = cap
                else:
                    natural = self._rng.randint(*NATURAL_LENGTH)
                max_new = min(cap, natural)
                if not self._engine.fits(prompt.tokens + max_new):
                    raise BadRequest(
                        f"The request needs {prompt.tokens + max_new} tokens of KV cache but "
                        "the simulated GPU cannot hold that many.",
                        "max_tokens",
                    )
                if params.tool is not None:
                    pieces = list(_TOOL_ARGUMENT_PIECES)
                else:
                    pieces = self._vocab.words(self._rng, max_new)
                reason = "length" if natural > cap or params.ignore_eos else "stop"
                plans.append(_ChoicePlan(p_index * params.n + j, prompt, max_new, reason, pieces))
        return plans

    async def run(
        self, params: GenerationParams, receive: Receive, send: Send, die_after: int | None
    ) -> Outcome:
        """Answer one request; ``die_after`` (streams only) drops the connection after that
        many tokens. Raises BadRequest before anything was sent."""
        plans = self._plan(params)
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
        return "tool_calls" if params.tool is not None and reason == "stop" else reason

    async def _respond(
        self,
        params: GenerationParams,
        plans: list[_ChoicePlan],
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
        choices: list[wire.Choice] = []
        for plan, req in zip(plans, requests, strict=True):
            reason = self._finish_reason(params, req)
            if params.tool is None:
                choices.append(wire.Choice(plan.index, "".join(plan.pieces), reason))
            else:
                arguments = "".join(plan.pieces[: req.generated - 1])
                call = wire.ToolCall(tool_id, params.tool, arguments)
                choices.append(wire.Choice(plan.index, "", reason, call))
        use = _usage(params, requests)
        build = wire.chat_response if params.chat else wire.completion_response
        await send_json(send, 200, build(response_id, created, params.model, choices, use))
        return Outcome.COMPLETED

    def _token_chunk(
        self,
        params: GenerationParams,
        head: dict[str, Any],
        plan: _ChoicePlan,
        k: int,
        finish: str | None,
        tool_id: str,
    ) -> bytes:
        if not params.chat:
            return wire.sse(wire.completion_chunk(head, plan.index, plan.pieces[k], finish))
        if params.tool is None:
            delta: dict[str, Any] = {"content": plan.pieces[k]}
        elif k == 0:
            function = {"name": params.tool, "arguments": ""}
            delta = {
                "tool_calls": [
                    {"index": 0, "id": tool_id, "type": "function", "function": function}
                ]
            }
        else:
            delta = {"tool_calls": [{"index": 0, "function": {"arguments": plan.pieces[k - 1]}}]}
        return wire.sse(wire.chat_chunk(head, plan.index, delta, finish))

    async def _stream(
        self,
        params: GenerationParams,
        plans: list[_ChoicePlan],
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
        budget = die_after
        while True:
            parts: list[bytes] = []
            for i, (plan, req) in enumerate(zip(plans, requests, strict=True)):
                while sent[i] < req.generated and budget != 0:
                    k = sent[i]
                    sent[i] = k + 1
                    last = req.state is SeqState.FINISHED and k + 1 == req.generated
                    finish = self._finish_reason(params, req) if last else None
                    parts.append(self._token_chunk(params, head, plan, k, finish, tool_id))
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
    return wire.usage(prompt_tokens, sum(req.generated for req in requests))
