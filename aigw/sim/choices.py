"""What each choice of a request will say, decided before the engine runs it.

A choice is a list of text pieces, one per token, and the reason it ends:

* **Free text**: pseudo-words of the app's vocabulary. Without ``ignore_eos`` the natural
  length is drawn uniformly from ``NATURAL_LENGTH``; with it the choice fills ``max_tokens``.
* **Structured** (``response_format`` json_object or json_schema, vLLM's ``guided_json``): a
  JSON value drawn from the schema (:mod:`aigw.sim.structured`), its compact text cut into
  pieces of ``BYTES_PER_TOKEN`` characters (the simulator's token model); the natural length
  is the value's. With ``ignore_eos`` spaces follow the value up to ``max_tokens`` (still
  valid JSON).
* **Forced tool call**: a header token (call id and function name) and then the arguments, a
  JSON object drawn from the tool's ``parameters`` schema, in pieces as above.

The cap is ``max_tokens``, or what is left of ``max_model_len`` without it (as in vLLM); a
choice cut by it ends with "length" (a structured value is then cut short, as a real engine's
would be), otherwise with "stop". ``stop`` strings end free or structured text before the
first occurrence of any of them: the piece holding it keeps only its text before the match and
is the last token (so usage counts what was sent), finish "stop", ``stop_reason`` the string.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from aigw.sim.params import BadRequest, GenerationParams
from aigw.sim.structured import SamplerCache, SchemaError, SchemaSampler
from aigw.sim.text import BYTES_PER_TOKEN, Prompt, Vocabulary

__all__ = ["NATURAL_LENGTH", "ChoicePlan", "Planner"]

NATURAL_LENGTH = (8, 40)


@dataclass(frozen=True, slots=True)
class ChoicePlan:
    """One choice: ``pieces`` is the text of each token to send (for a tool call, of each
    token after the header); the engine generates ``max_new`` tokens and then finishes with
    ``reason``."""

    index: int
    prompt: Prompt
    max_new: int
    reason: str
    pieces: list[str]
    stop_reason: str | None = None


def json_pieces(text: str) -> list[str]:
    return [text[i : i + BYTES_PER_TOKEN] for i in range(0, len(text), BYTES_PER_TOKEN)]


def cut_at_stop(pieces: list[str], stops: tuple[str, ...]) -> tuple[list[str], str | None]:
    """``pieces`` up to the first stop string (exclusive) and that string; unchanged, None
    when none occurs."""
    text = "".join(pieces)
    found: tuple[int, str] | None = None
    for stop in stops:
        at = text.find(stop)
        if at >= 0 and (found is None or at < found[0]):
            found = (at, stop)
    if found is None:
        return pieces, None
    at, stop = found
    start = 0
    for k, piece in enumerate(pieces):
        if start + len(piece) > at:
            return [*pieces[:k], piece[: at - start]], stop
        start += len(piece)
    raise AssertionError("a match lies inside the text")  # pragma: no cover


def _context_error(max_model_len: int, prompt: int, completion: int) -> BadRequest:
    return BadRequest(
        f"This model's maximum context length is {max_model_len} tokens. However, you "
        f"requested {prompt + completion} tokens ({prompt} in the messages, {completion} in "
        "the completion). Please reduce the length of the messages or completion.",
        "messages",
    )


class Planner:
    """Plans the choices of requests for one app: its RNG, vocabulary, context length, the
    engine's ``fits`` check, and a cache of schema samplers."""

    def __init__(
        self,
        rng: random.Random,
        vocab: Vocabulary,
        max_model_len: int,
        fits: Callable[[int], bool],
    ) -> None:
        self._rng = rng
        self._vocab = vocab
        self._max_model_len = max_model_len
        self._fits = fits
        self._samplers = SamplerCache(vocab.spaced)

    def _sampler(self, params: GenerationParams) -> SchemaSampler | None:
        output = params.output
        try:
            if output.tool is not None:
                return self._samplers.get(output.tool.parameters, object_root=True)
            if output.schema is not None:
                return self._samplers.get(output.schema, object_root=True)
        except SchemaError as exc:
            param = "tools" if output.tool is not None else "response_format"
            raise BadRequest(f"Cannot generate output for this schema: {exc}", param) from exc
        return None

    def plan(self, params: GenerationParams) -> list[ChoicePlan]:
        """One plan per choice; BadRequest when a prompt does not fit the context or cache, or
        a schema cannot be followed."""
        limit = self._max_model_len
        sampler = self._sampler(params)
        plans: list[ChoicePlan] = []
        for p_index, prompt in enumerate(params.prompts):
            requested = params.max_tokens or 0
            if prompt.tokens + requested > limit or prompt.tokens >= limit:
                raise _context_error(limit, prompt.tokens, requested)
            cap = params.max_tokens or limit - prompt.tokens
            for j in range(params.n):
                plan = self._choice(params, sampler, p_index * params.n + j, prompt, cap)
                if not self._fits(prompt.tokens + plan.max_new):
                    raise BadRequest(
                        f"The request needs {prompt.tokens + plan.max_new} tokens of KV cache "
                        "but the simulated GPU cannot hold that many.",
                        "max_tokens",
                    )
                plans.append(plan)
        return plans

    def _draw(self, sampler: SchemaSampler) -> list[str]:
        try:
            return json_pieces(sampler.text(self._rng))
        except SchemaError as exc:
            raise BadRequest(f"Cannot generate output for this schema: {exc}") from exc

    def _choice(
        self,
        params: GenerationParams,
        sampler: SchemaSampler | None,
        index: int,
        prompt: Prompt,
        cap: int,
    ) -> ChoicePlan:
        rng = self._rng
        if params.output.tool is not None:
            assert sampler is not None
            pieces = self._draw(sampler)
            natural = 1 + len(pieces)  # the header, then the arguments
            reason = "length" if natural > cap else "stop"
            return ChoicePlan(index, prompt, min(cap, natural), reason, pieces)
        if sampler is not None:
            pieces = self._draw(sampler)
            natural = len(pieces)
            if params.ignore_eos and natural < cap:
                pieces += [" "] * (cap - natural)
                natural = cap
        elif params.ignore_eos:
            natural = cap
            pieces = self._vocab.words(rng, cap)
        else:
            natural = rng.randint(*NATURAL_LENGTH)
            pieces = self._vocab.words(rng, min(cap, natural))
        reason = "length" if natural > cap or params.ignore_eos else "stop"
        pieces = pieces[:cap]
        stop_reason = None
        if params.output.stop:
            pieces, stop_reason = cut_at_stop(pieces, params.output.stop)
            if stop_reason is not None:
                reason = "stop"
        return ChoicePlan(index, prompt, len(pieces), reason, pieces, stop_reason)
