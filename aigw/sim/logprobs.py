"""Log probabilities of generated tokens, in OpenAI's two shapes (chat and completions).

The sampled token is always the most likely one: its log probability is drawn from
``-Exp(8)`` (mostly between -0.3 and 0); each alternative, a different word of the app's
vocabulary, is less likely than the one before it. Computed only for requests that ask, one
token at a time as it is sent, so a stream pays per token only what its chunk carries.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

__all__ = ["Logprobs"]


class Logprobs:
    """Draws log probabilities; ``words`` are the alternatives' texts."""

    __slots__ = ("_words",)

    def __init__(self, words: Sequence[str]) -> None:
        self._words = tuple(words)

    def _ranked(self, rng: random.Random, token: str, top: int) -> list[tuple[str, float]]:
        """``token`` and its alternatives, most likely first; at least ``token`` itself."""
        logprob = -rng.expovariate(8.0)
        ranked = [(token, logprob)]
        taken = {token}
        while len(ranked) < max(top, 1):
            word = rng.choice(self._words)
            if word in taken:
                continue
            taken.add(word)
            logprob -= rng.expovariate(1.0)
            ranked.append((word, logprob))
        return ranked

    def chat_token(self, rng: random.Random, token: str, top: int) -> dict[str, Any]:
        """One ``ChatCompletionTokenLogprob``, with ``top`` entries in ``top_logprobs``."""
        ranked = self._ranked(rng, token, top)
        entries = [_entry(text, logprob) for text, logprob in ranked[:top]]
        return {**_entry(*ranked[0]), "top_logprobs": entries}

    def chat(self, rng: random.Random, tokens: Sequence[str], top: int) -> dict[str, Any]:
        """A chat choice's ``logprobs`` for ``tokens``."""
        return {"content": [self.chat_token(rng, t, top) for t in tokens], "refusal": None}

    def completion(
        self, rng: random.Random, tokens: Sequence[str], top: int, offset: int
    ) -> dict[str, Any]:
        """A completion choice's ``logprobs`` for ``tokens``, the first at character
        ``offset`` of the generated text; ``top_logprobs`` maps at least the sampled token."""
        token_logprobs: list[float] = []
        tops: list[dict[str, float]] = []
        offsets: list[int] = []
        for token in tokens:
            ranked = self._ranked(rng, token, top)
            token_logprobs.append(ranked[0][1])
            tops.append(dict(ranked))
            offsets.append(offset)
            offset += len(token)
        return {
            "tokens": list(tokens),
            "token_logprobs": token_logprobs,
            "top_logprobs": tops,
            "text_offset": offsets,
        }


def _entry(text: str, logprob: float) -> dict[str, Any]:
    return {"token": text, "logprob": logprob, "bytes": list(text.encode())}
