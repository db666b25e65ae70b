"""Predicted time to first token (seconds) of a request on each candidate.

GPU deployment with fresh engine metrics (load from :func:`aigw.policies.load.estimate_load`,
i.e. running + waiting from the scrape plus the gateway's dispatches since it)::

    service   = tpot_ewma x mean output tokens of the requests ahead: the output_tokens
                EWMA for the gateway's own in-flight ones, output_tokens (256) for others
    excess    = running + waiting + 1 - capacity                 # our place beyond the batch
    drain     = completion_rate_ewma      if the scrape showed a queue and the rate is known
                (measured from the engine's finished-requests counter: saturated, so what
                it finishes is what it drains, whoever sent the work; floor 0.01/s)
              = capacity / service        otherwise
    queue     = excess / drain            if excess > 0
    kv        = kv_penalty_s x clamp((kv_usage - kv_threshold) / (1 - kv_threshold), 0, 1)
    prefill   = (tpot_ewma + (backlog + prompt_tokens x (1 - overlap)) x prefill_per_token)
                x (1 + running / chunk_tokens)                   # steps shared with decodes
                (backlog: prompt tokens of this gateway's streams sent there that have no
                first token yet: prefill the engine does before this one's)
    ttft      = (queue + kv + prefill) x retry

GPU deployment with stale or absent metrics (gateway-local signals only)::

    base      = ttft_ewma, or prompt_tokens x prefill_per_token when cold
    ttft      = max(base - saved_prefill, base / 10) x (1 + in_flight / capacity) x retry

Cloud deployment (elastic: no queue)::

    ttft      = ttft_ewma (cold_ttft_s until the first sample) x retry

The prefill term is one engine step (about ``tpot``: even a fully cached prompt needs one
forward pass) plus the uncached prefill, stretched by the running sequences' share of each
step's token budget; it grows with every request dispatched, so equal engines share a burst.
``retry = 1 / (1 - error_rate)`` (error rate capped at 0.9): the expected number of tries.
``overlap`` is the share of the prompt prefix this gateway already sent to the deployment
(:mod:`aigw.policies.affinity`), so a cache hit is worth the prefill time it saves; ``auto``
adds a ranking bias for it (``affinity_bias``) and for the conversation's rendezvous choice
(``rendezvous_bias``).
Cold defaults come from :class:`~aigw.policies.tuning.Tuning`.
"""

from __future__ import annotations

from collections.abc import Sequence

from aigw.fleet.deployment import Deployment
from aigw.policies.affinity import observed_overlaps, with_preference
from aigw.policies.kit import ScorerKit, relative
from aigw.policies.load import Load
from aigw.policies.tuning import Tuning
from aigw.types import RouteContext

__all__ = ["TtftPredictor", "TtftScorer", "predict_ttft"]

_MIN_RATE = 0.01  # requests/s: an engine that finished nothing still gets a finite wait


def predict_ttft(
    deployment: Deployment,
    load: Load,
    overlap: float,
    prompt_tokens: int,
    tuning: Tuning,
    cloud: bool,
) -> float:
    """Predicted TTFT in seconds of one request on one deployment (formula: module doc).

    ``cloud`` is ``deployment.config.is_cloud``, passed in because the caller needs it too
    and a pydantic property costs as much as the rest of this arithmetic.
    """
    state = deployment.state
    error_rate = state.errors.value
    retry = 1.0 / (1.0 - min(error_rate, 0.9)) if error_rate else 1.0
    if cloud:
        return state.ttft.get(tuning.cold_ttft_s) * retry
    per_token = state.prefill_per_token.get(tuning.prefill_s_per_token)
    prefill = prompt_tokens * per_token
    if not load.fresh:
        base = state.ttft.value
        if base is None:
            base = prefill
        local = max(base - prefill * overlap, base * 0.1)
        return local * (1.0 + load.running / load.capacity) * retry
    tpot = state.tpot.get(tuning.tpot_s)
    # Prompts this gateway sent before, still in prefill, are prefilled first (FCFS).
    ahead_s = state.prefill_backlog * per_token
    seconds = (tpot + ahead_s + prefill * (1.0 - overlap)) * (
        1.0 + load.running / tuning.chunk_tokens
    )
    ahead = load.running + load.waiting
    excess = ahead + 1.0 - load.capacity
    if excess > 0.0:  # then ahead > 0
        seconds += excess / _drain_rate(deployment, load, ahead, tpot, tuning)
    kv = load.kv
    if kv is not None and kv > tuning.kv_threshold:
        pressure = (kv - tuning.kv_threshold) / (1.0 - tuning.kv_threshold)
        seconds += tuning.kv_penalty_s * min(1.0, pressure)
    return seconds * retry


def _drain_rate(
    deployment: Deployment, load: Load, ahead: float, tpot: float, tuning: Tuning
) -> float:
    """Requests per second the engine's queue moves (> 0); see the module doc."""
    state = deployment.state
    measured = state.completion_rate.value
    engine = state.engine
    if measured is not None and engine is not None and engine.waiting > 0.0:
        # Saturated at the scrape: what it finished is what it drains, whoever sent the work.
        return max(measured, _MIN_RATE)
    # The gateway knows the typical length of its own requests only; the others (other
    # clients, other replicas) are assumed to be of the cold-default length.
    own = min(float(state.in_flight), ahead)
    tokens = state.output_tokens.get(tuning.output_tokens) * own
    tokens += tuning.output_tokens * (ahead - own)
    return load.capacity / (tokens / ahead * tpot)


class TtftPredictor:
    """Predicts TTFT for every candidate of one decision, sharing the policy's load
    estimates and affinity state (:class:`~aigw.policies.kit.ScorerKit`)."""

    __slots__ = ("_kit",)

    def __init__(self, kit: ScorerKit) -> None:
        self._kit = kit

    def predict(
        self,
        candidates: Sequence[Deployment],
        ctx: RouteContext,
        clouds: Sequence[bool] | None = None,
    ) -> list[float]:
        """Seconds per candidate; ``clouds`` (``is_cloud`` per candidate) if already known."""
        return self.predict_with_overlaps(candidates, ctx, clouds)[0]

    def predict_with_overlaps(
        self,
        candidates: Sequence[Deployment],
        ctx: RouteContext,
        clouds: Sequence[bool] | None = None,
    ) -> tuple[list[float], list[float], list[float]]:
        """Seconds per candidate; each one's observed overlap (the share of the prompt's
        prefix blocks this gateway sent it); and its claim to the prefix for ranking, the
        observed overlap or the rendezvous credit, whichever is larger (both 0 for clouds:
        their caches are not the gateway's to predict).

        The prediction credits only the *observed* overlap (what this gateway sent there):
        the rendezvous choice for a conversation's opening has nothing cached on the first
        turn, and crediting it the whole prefill would send every new prompt's share to a
        hashed deployment however slow. The claim adds the rendezvous preference, so that a
        conversation settles where its next turns (and other replicas) will look for it."""
        kit = self._kit
        tuning = kit.tuning
        if clouds is None:
            clouds = [d.config.is_cloud for d in candidates]
        loads = kit.loads.loads(candidates)
        # Only GPU deployments profit from affinity here (cloud predictions ignore overlap),
        # so the rendezvous preference ranks those alone.
        gpu = [i for i, cloud in enumerate(clouds) if not cloud]
        observed = observed_overlaps(candidates, ctx)
        tokens = ctx.prompt_tokens
        predictions = [
            predict_ttft(d, load, overlap, tokens, tuning, cloud)
            for d, load, overlap, cloud in zip(candidates, loads, observed, clouds, strict=True)
        ]
        overlaps = with_preference(observed, candidates, ctx, kit.loads, kit.rendezvous, gpu)
        if any(clouds):
            overlaps = [0.0 if cloud else o for o, cloud in zip(overlaps, clouds, strict=True)]
            observed = [0.0 if cloud else o for o, cloud in zip(observed, clouds, strict=True)]
        return predictions, observed, overlaps


class TtftScorer:
    """Lowest predicted time to first token; score = best prediction / this one (with a
    1 ms offset). Signals: everything :func:`predict_ttft` reads (engine snapshot, in-flight,
    TTFT/TPOT/prefill/output EWMAs, error rate, prefix overlap)."""

    __slots__ = ("_predictor",)
    name = "ttft"

    def __init__(self, kit: ScorerKit) -> None:
        self._predictor = TtftPredictor(kit)

    def __call__(self, candidates: Sequence[Deployment], ctx: RouteContext) -> list[float]:
        return relative(self._predictor.predict(candidates, ctx), 1e-3)
