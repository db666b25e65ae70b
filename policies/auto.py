"""``auto``: the lowest predicted time to first token, with spillover to cloud deployments.

Per decision: predict every candidate's TTFT (:mod:`aigw.policies.predict`; prefix affinity
is credited there with the prefill time it saves), keep the eligible ones (spillover, below),
score them by predicted TTFT relative to the best plus any extra weighted scorers, and pick
(argmax by default). A GPU candidate expected to hold a share ``overlap`` of the prompt's
prefix ranks as if its prediction were ``x (1 - affinity_bias x overlap)`` (default 0.8) when
this gateway sent it that prefix, ``x (1 - rendezvous_bias x overlap)`` (default 0.5) for the
opening of a new conversation credited to its rendezvous choice: a cache hit also saves the
fleet the prefill compute and keeps the conversation's cache warm, which the request's own
TTFT does not count. Loads include the gateway's own dispatches since the last scrape, so a
burst between scrapes spreads over the fleet instead of herding onto the engine that looked
idle, and a request never waits in one engine's queue while another has a free slot unless
the prefix it would reuse there saves more than the wait.

The preset adds a ``throughput`` column at the same weight (:mod:`aigw.policies.throughput`):
the output tokens/s one more sequence adds to each engine, from its configured decode step
line, divided by ``1 - affinity_bias x`` the observed overlap as the TTFT column's
prediction is multiplied by it (a hit saves the fleet the prefill). TTFT alone keeps a slow
GPU's batch small (its prefill is slow), which at overload leaves output on the table; with both, such an engine takes work while its fixed step cost
makes one more sequence worth more there than on a fast engine already running a large
batch. Without a ``decode_step`` on every candidate the scorer has no opinion and the
ranking is the TTFT's. ``weights: {throughput: 0}`` turns it off.

Spillover: when a model has GPU candidates (``not config.is_cloud``), cloud candidates are
eligible only while *every* GPU candidate's predicted TTFT exceeds the model's
``slo_ttft_ms`` (with ``spillover.enabled``, and only clouds whose price for this request is
at most ``spillover.max_cost_per_mtok`` when set). When a GPU prediction drops back under the
SLO, traffic returns to the GPUs. Without GPU candidates, clouds are always eligible.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from aigw.config import ModelConfig
from aigw.fleet.deployment import Deployment
from aigw.policies.base import Picker, Scorer
from aigw.policies.kit import ScorerKit, relative
from aigw.policies.policy import record_scores, row_maker, weighted_totals
from aigw.policies.predict import TtftPredictor
from aigw.policies.scorers import request_price
from aigw.policies.throughput import ThroughputScorer
from aigw.policies.tuning import Tuning
from aigw.types import RouteContext

__all__ = ["AutoPolicy", "Spillover"]


@dataclass(frozen=True, slots=True)
class Spillover:
    """When cloud candidates may be used beside GPU ones (from the model's config)."""

    slo_s: float | None = None  # None: no SLO, clouds only when no GPU candidate is left
    enabled: bool = True
    max_cost_per_mtok: float | None = None

    @classmethod
    def from_model(cls, model: ModelConfig) -> Spillover:
        slo = model.slo_ttft_ms
        return cls(
            slo_s=slo / 1000.0 if slo is not None else None,
            enabled=model.spillover.enabled,
            max_cost_per_mtok=model.spillover.max_cost_per_mtok,
        )

    def eligible(
        self,
        candidates: Sequence[Deployment],
        clouds: Sequence[bool],
        predictions: Sequence[float],
        ctx: RouteContext,
        tuning: Tuning,
    ) -> list[int] | None:
        """Indices of the eligible candidates, or None when all of them are.

        ``clouds[i]`` is ``candidates[i].config.is_cloud``; ``predictions[i]`` its TTFT (s).
        """
        gpu = [i for i, cloud in enumerate(clouds) if not cloud]
        if not gpu or len(gpu) == len(candidates):
            return None
        slo = self.slo_s
        if not self.enabled or slo is None or min(predictions[i] for i in gpu) <= slo:
            return gpu
        ceiling = self.max_cost_per_mtok
        return [
            i
            for i, (d, cloud) in enumerate(zip(candidates, clouds, strict=True))
            if not cloud or ceiling is None or _per_mtok(d, ctx, tuning) <= ceiling
        ]


def _per_mtok(deployment: Deployment, ctx: RouteContext, tuning: Tuning) -> float:
    """The request's blended price in USD per million tokens on ``deployment``."""
    usd, tokens = request_price(deployment, ctx, tuning)
    return usd * 1e6 / tokens if tokens > 0 else deployment.config.cost.input_per_mtok


class AutoPolicy:
    """Predicted TTFT (weight ``ttft``) and marginal decode throughput (weight
    ``throughput``), plus optional extra scorers, after spillover.

    ``last_scores`` of each eligible candidate: its scores, ``total`` and
    ``predicted_ttft_s``; of a cloud candidate held back by spillover:
    ``{"predicted_ttft_s": ..., "eligible": 0.0}``.
    """

    __slots__ = (
        "_kit",
        "_make_row",
        "_picker",
        "_predictor",
        "_scorers",
        "_spillover",
        "_throughput",
        "_ttft",
        "_weights",
        "name",
    )

    def __init__(
        self,
        kit: ScorerKit,
        spillover: Spillover,
        ttft_weight: float,
        throughput_weight: float,
        extra: Sequence[tuple[Scorer, float]],
        picker: Picker,
    ) -> None:
        own = [w for w in (ttft_weight, throughput_weight) if w > 0]
        weights = own + [w for _, w in extra]
        if not weights or any(w <= 0 for w in weights):
            raise ValueError("auto needs at least one positive weight, and none negative")
        total = sum(weights)
        self.name = "auto"
        self._kit = kit
        self._ttft = ttft_weight > 0
        self._spillover = spillover
        self._predictor = TtftPredictor(kit)
        self._throughput = ThroughputScorer(kit.loads) if throughput_weight > 0 else None
        self._scorers = tuple(s for s, _ in extra)
        names = (
            (("ttft",) if ttft_weight > 0 else ())
            + (("throughput",) if throughput_weight > 0 else ())
            + tuple(s.name for s, _ in extra)
        )
        self._make_row = row_maker((*names, "total", "predicted_ttft_s"))
        self._weights = tuple(w / total for w in weights)
        self._picker = picker

    def pick(self, candidates: Sequence[Deployment], request: RouteContext) -> Deployment:
        kit = self._kit
        kit.loads.begin()
        try:
            clouds = [d.config.is_cloud for d in candidates]
            predictions, observed, overlaps = self._predictor.predict_with_overlaps(
                candidates, request, clouds
            )
            keep = self._spillover.eligible(candidates, clouds, predictions, request, kit.tuning)
            chosen: Sequence[Deployment] = candidates
            if keep is not None:
                kept = set(keep)
                for i, d in enumerate(candidates):
                    if i not in kept:
                        d.state.last_scores = {"predicted_ttft_s": predictions[i], "eligible": 0.0}
                chosen = [candidates[i] for i in keep]
                kit.loads.narrow(chosen, keep)
                predictions = [predictions[i] for i in keep]
                observed = [observed[i] for i in keep]
                overlaps = [overlaps[i] for i in keep]
            columns = (
                [relative(self._ranked(predictions, observed, overlaps), 1e-3)]
                if self._ttft
                else []
            )
            if self._throughput is not None:
                columns.append(self._gains(chosen, observed))
            columns.extend(scorer(chosen, request) for scorer in self._scorers)
        finally:
            kit.loads.end()
        totals = weighted_totals(columns, self._weights)
        record_scores(chosen, self._make_row, (*columns, totals, predictions))
        return self._picker(chosen, totals, request)

    def _gains(self, chosen: Sequence[Deployment], observed: list[float]) -> list[float]:
        """The throughput column: each candidate's marginal decode gain, divided by ``1 -
        affinity_bias`` x its observed overlap (as the TTFT column's prediction is multiplied
        by it), then scaled to a best of 1. A conversation's next turn on the engine holding
        its history saves the fleet the prefill that would slow another engine's whole batch;
        without the discount this column pulled turns off their cache (issue 11: W2's hit
        rate fell from 80.6% to 71.2%). The rendezvous credit of a new conversation is not
        counted here: with it, W1's unique prompts leaned to their hashed engines and TTFT
        p99 rose at 110% load."""
        assert self._throughput is not None
        gains = self._throughput.scores(chosen)
        if gains is None:
            return [1.0] * len(chosen)
        if any(observed):
            bias = self._kit.tuning.affinity_bias
            gains = [g / (1.0 - bias * seen) for g, seen in zip(gains, observed, strict=True)]
            top = max(gains)
            if top > 0.0:
                gains = [g / top for g in gains]
        return gains

    def _ranked(
        self, predictions: list[float], observed: list[float], overlaps: list[float]
    ) -> list[float]:
        """Predicted TTFTs as ranked: discounted by ``affinity_bias`` x the observed overlap
        and ``rendezvous_bias`` x the rendezvous credit beyond it."""
        if not any(overlaps):
            return predictions
        tuning = self._kit.tuning
        bias, credit_bias = tuning.affinity_bias, tuning.rendezvous_bias
        return [
            p * (1.0 - bias * seen - credit_bias * (claim - seen))
            for p, seen, claim in zip(predictions, observed, overlaps, strict=True)
        ]
