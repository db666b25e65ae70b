"""The fleet's decode throughput: where one more sequence adds the most output tokens/s.

An engine running ``b`` sequences with step time ``step(b) = base + per_seq x b`` (its
``decode_step`` in the deployment config: :class:`~aigw.config.DecodeStepConfig`) emits
``b / step(b)`` tokens per second. One more sequence adds
``d/db (b / step(b)) = base / step(b)²``: a lot on an engine whose step is mostly its fixed
cost (a small batch, or a slow GPU whose weight pass dominates), little on one already
running a large batch. Sending each request where that gain is largest is what keeps a
heterogeneous fleet's output highest once it is overloaded; the TTFT ranking alone keeps
the slow engines' batches small, because their prefill is slow (issue 11: on the benchmark
fleet at 110% load, auto held ~21 requests per l4 where the throughput-optimal split holds
~37, and trailed least-latency's output by ~1%).

An engine whose batch is full (the load estimate puts this request in its queue) gains
nothing now. Unless every candidate has a ``decode_step`` and fresh engine metrics, the
scorer has no opinion: every candidate scores 1.

Why configured rather than learnt: fitting the line to each engine's inter-token latency
against its running count between scrapes was tried (issue 11) and gave lines far off the
simulator's true ones (an h100's per-sequence cost 10x too small, an a100's base 12x too
large): at a steady load the batch moves by a few sequences while the prefill of arriving
prompts moves the step time by more.
"""

from __future__ import annotations

from collections.abc import Sequence

from aigw.fleet.deployment import Deployment
from aigw.policies.load import LoadEstimator
from aigw.types import RouteContext

__all__ = ["ThroughputScorer"]


class ThroughputScorer:
    """Largest marginal decode throughput, ``base / step(b + 1)²`` with ``b`` the running
    batch now (scrape plus the gateway's dispatches since); 0 when the request would queue.
    Signals: ``config.decode_step`` and the load estimate."""

    __slots__ = ("_loads",)
    name = "throughput"

    def __init__(self, loads: LoadEstimator) -> None:
        self._loads = loads

    def __call__(self, candidates: Sequence[Deployment], ctx: RouteContext) -> list[float]:
        scores = self.scores(candidates)
        return [1.0] * len(candidates) if scores is None else scores

    def scores(self, candidates: Sequence[Deployment]) -> list[float] | None:
        """The scores, or None when the scorer has no opinion (see the module doc)."""
        if len(candidates) < 2:  # nothing to choose between
            return None
        loads = self._loads.loads(candidates)
        costs: list[float | None] = []  # step² / base, the inverse gain; None: it would queue
        for deployment, load in zip(candidates, loads, strict=True):
            line = deployment.config.decode_step
            if line is None or not load.fresh:
                return None
            batch = load.running + load.waiting + 1.0
            if batch > load.capacity:
                costs.append(None)
            else:
                step = line.base_ms + line.per_seq_ms * batch
                costs.append(step * step / line.base_ms)
        present = [c for c in costs if c is not None]
        if not present:
            return None
        best = min(present)
        return [0.0 if c is None else best / c for c in costs]
