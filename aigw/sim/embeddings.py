"""``/v1/embeddings``: deterministic unit vectors, costed like one prefill-only forward pass.

Embedding requests do not enter the generation engine (vLLM serves embeddings from a separate
pooling model); each one waits ``step_seconds(prompt tokens, 0, 0) x slowdown x time_scale``
and answers. Vectors are ``dimensions`` floats (default ``EMBEDDING_DIM``, 64) derived from a
hash of each input, so equal inputs always get equal vectors, and a shorter vector is the
normalised head of a longer one; ``encoding_format: "base64"`` (the OpenAI SDK's default) packs
them as little-endian float32.
"""

from __future__ import annotations

import time
from typing import Any

from aigw.sim.params import EmbeddingParams
from aigw.sim.profiles import GpuProfile
from aigw.sim.text import embedding, embedding_base64

__all__ = ["embedding_response", "embedding_seconds"]


def embedding_seconds(profile: GpuProfile, params: EmbeddingParams) -> float:
    """Simulated duration before ``slowdown`` and ``time_scale``."""
    return profile.step_seconds(sum(params.tokens), 0, 0)


def embedding_response(params: EmbeddingParams, response_id: str) -> dict[str, Any]:
    data: list[dict[str, Any]] = []
    for index, raw in enumerate(params.inputs):
        vector = embedding(raw, params.dimensions)
        encoded: Any = embedding_base64(vector) if params.base64 else vector
        data.append({"index": index, "object": "embedding", "embedding": encoded})
    total = sum(params.tokens)
    return {
        "id": response_id,
        "object": "list",
        "created": int(time.time()),
        "model": params.model,
        "data": data,
        "usage": {
            "prompt_tokens": total,
            "total_tokens": total,
            "completion_tokens": 0,
            "prompt_tokens_details": None,
        },
    }
