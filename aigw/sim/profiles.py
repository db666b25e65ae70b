"""GPU profiles: the latency model's coefficients and the capacity defaults of one simulated GPU.

One engine step (one forward pass over the whole batch) takes::

    step_seconds = a + b * prefill_tokens + c * decode_seqs + d * decode_context_tokens

* ``a`` (``step_base_s``): fixed cost of a step, dominated by streaming the weights from HBM
  once per step (≈ weight bytes / memory bandwidth) plus kernel-launch overhead. It is why a
  batch of one is not much faster than a batch of eight.
* ``b`` (``prefill_token_s``): compute cost of one prompt token (≈ 2 · params FLOPs / achievable
  FLOP/s). Prefill is compute-bound, so it is linear in tokens.
* ``c`` (``decode_seq_s``): per-sequence cost of a decode step (sampling, the new token's
  matmul rows, bookkeeping).
* ``d`` (``context_token_s``): attention over the KV cache: every decode step reads each
  sequence's whole context (≈ KV bytes per token / memory bandwidth).

The numbers model a Llama-3-8B-class model in bf16, rounded from roofline estimates and public
vLLM benchmarks. Relative speed is what matters for routing benchmarks: h100 is the fastest,
a100 about 1.5-2x slower, l4 about 6-8x slower with the smallest KV cache.

======  ======  ========  =======  ========  ========  ======  =========  =====================
name    a (ms)  b (ms/t)  c (ms)   d (µs/t)  max seqs  blocks  KV tokens  decode step, 32 seqs
======  ======  ========  =======  ========  ========  ======  =========  =====================
h100    6.0     0.06      0.30     0.05      256       8192    131072     ≈ 17 ms (1k context)
a100    9.0     0.12      0.45     0.08      128       4096    65536      ≈ 26 ms
l4      45.0    0.35      1.20     0.50      64        1024    16384      ≈ 99 ms
======  ======  ========  =======  ========  ========  ======  =========  =====================

KV caches are deliberately smaller than a real 8B deployment (an H100 would hold ~28k blocks)
so that kv_cache_usage moves and preemption happens at benchmark-sized loads; override with
``--num-gpu-blocks``. ``max_num_batched_tokens`` is the per-step token budget that chunks long
prefills (vLLM V1's chunked prefill), so a long prompt cannot stall every decode for seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BLOCK_SIZE", "PROFILES", "GpuProfile", "get_profile"]

BLOCK_SIZE = 16
"""Tokens per KV-cache block (vLLM's default block size)."""

TYPICAL_CONTEXT = 350
"""Context tokens of a typical decoding sequence (a chat turn of ~160-200 prompt tokens plus
half its reply): the attention share of each sequence's cost in :meth:`GpuProfile.decode_step`."""


@dataclass(frozen=True, slots=True)
class GpuProfile:
    """Coefficients of the step-time model and the capacity defaults of one GPU kind."""

    name: str
    step_base_s: float
    prefill_token_s: float
    decode_seq_s: float
    context_token_s: float
    max_num_seqs: int
    num_gpu_blocks: int
    max_num_batched_tokens: int

    def step_seconds(self, prefill_tokens: int, decode_seqs: int, context_tokens: int) -> float:
        """Simulated duration of one step, before ``slowdown`` and ``time_scale``."""
        return (
            self.step_base_s
            + self.prefill_token_s * prefill_tokens
            + self.decode_seq_s * decode_seqs
            + self.context_token_s * context_tokens
        )

    def decode_step(
        self, context_tokens: float = TYPICAL_CONTEXT, time_scale: float = 1.0
    ) -> dict[str, float]:
        """The ``decode_step`` config line of a deployment on this GPU, as an operator would
        measure it, for sequences of ``context_tokens`` (their attention is part of each
        sequence's cost): milliseconds at ``time_scale`` (wall seconds per simulated one)."""
        per_seq = self.decode_seq_s + self.context_token_s * context_tokens
        return {
            "base_ms": round(self.step_base_s * time_scale * 1000.0, 6),
            "per_seq_ms": round(per_seq * time_scale * 1000.0, 6),
        }


PROFILES: dict[str, GpuProfile] = {
    "h100": GpuProfile("h100", 6.0e-3, 0.06e-3, 0.30e-3, 0.05e-6, 256, 8192, 8192),
    "a100": GpuProfile("a100", 9.0e-3, 0.12e-3, 0.45e-3, 0.08e-6, 128, 4096, 4096),
    "l4": GpuProfile("l4", 45.0e-3, 0.35e-3, 1.20e-3, 0.50e-6, 64, 1024, 2048),
}


def get_profile(name: str) -> GpuProfile:
    """The profile called ``name``; ValueError naming the known ones otherwise."""
    try:
        return PROFILES[name]
    except KeyError:
        known = ", ".join(sorted(PROFILES))
        raise ValueError(f"unknown GPU profile {name!r}; expected one of: {known}") from None
