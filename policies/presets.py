"""Named policy presets, the config's ``policy:`` value, and its validation.

A model's ``policy`` is a preset name, or a mapping that adjusts one::

    policy: gpu-aware
    policy: {name: gpu-aware, weights: {prefix: 3}, picker: p2c}
    policy: {name: auto, weights: {cost: 0.2}, kv_threshold: 0.85}

``weights`` are merged over the preset's (a weight of 0 removes a scorer, a new name adds
one from :data:`~aigw.policies.scorers.SCORERS`); every other key is a parameter: ``picker``
(``argmax`` or ``p2c``, scored presets) or a :class:`~aigw.policies.tuning.Tuning` number.
Every preset also gets the router's model-aware filters (:mod:`aigw.policies.filters`).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aigw.config import ModelConfig
from aigw.policies.auto import AutoPolicy, Spillover
from aigw.policies.base import Policy
from aigw.policies.kit import ScorerKit
from aigw.policies.pickers import PICKERS, SCORE_PICKERS
from aigw.policies.policy import PickerPolicy, ScoredPolicy
from aigw.policies.scorers import SCORERS
from aigw.policies.tuning import PARAM_CHECKS, Tuning, param_problem

__all__ = ["PRESETS", "PolicySettings", "Preset", "make_policy", "parse_policy", "policy_problems"]

_AUTO_PARAMS = frozenset(PARAM_CHECKS) - {"virtual_nodes"} | {"picker"}
_SCORED_PARAMS = _AUTO_PARAMS - {"affinity_bias", "rendezvous_bias"}  # auto's ranking reads them


@dataclass(frozen=True, slots=True)
class PolicySettings:
    """A validated ``policy`` value: the preset, merged weights, picker and tuning."""

    preset: Preset
    weights: tuple[tuple[str, float], ...]  # scorer name -> weight > 0, preset's order first
    picker: str
    tuning: Tuning


Builder = Callable[[PolicySettings, ModelConfig, random.Random], Policy]


@dataclass(frozen=True, slots=True)
class Preset:
    """One named policy: default scorer weights, default picker, accepted params, builder."""

    name: str
    summary: str
    picker: str
    build: Builder
    weights: Mapping[str, float] = field(default_factory=dict)  # empty: scores unused
    params: frozenset[str] = frozenset()


def _picker_only(settings: PolicySettings, model: ModelConfig, rng: random.Random) -> Policy:
    return PickerPolicy(settings.preset.name, PICKERS[settings.picker](rng, settings.tuning))


def _scored(settings: PolicySettings, model: ModelConfig, rng: random.Random) -> Policy:
    kit = ScorerKit.build(settings.tuning)
    scorers = [(SCORERS[name](kit), weight) for name, weight in settings.weights]
    picker = PICKERS[settings.picker](rng, settings.tuning)
    return ScoredPolicy(settings.preset.name, scorers, picker, kit.loads)


def _auto(settings: PolicySettings, model: ModelConfig, rng: random.Random) -> Policy:
    kit = ScorerKit.build(settings.tuning)
    weights = dict(settings.weights)
    ttft = weights.pop("ttft", 0.0)
    throughput = weights.pop("throughput", 0.0)
    extra = [(SCORERS[name](kit), weight) for name, weight in weights.items()]
    picker = PICKERS[settings.picker](rng, settings.tuning)
    return AutoPolicy(kit, Spillover.from_model(model), ttft, throughput, extra, picker)


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("round-robin", "each deployment in turn", "round-robin", _picker_only),
        Preset("weighted", "smooth weighted round-robin on weight", "weighted", _picker_only),
        Preset("random", "uniformly random", "random", _picker_only),
        Preset(
            "hash",
            "consistent hash of x-aigw-hash-key / user / client IP, bounded load",
            "hash",
            _picker_only,
            params=frozenset({"load_factor", "virtual_nodes"}),
        ),
        Preset(
            "least-connections",
            "fewest requests in flight",
            "argmax",
            _scored,
            {"in-flight": 1.0},
            _SCORED_PARAMS,
        ),
        Preset(
            "least-latency",
            "peak-EWMA latency x (in-flight + 1), power of two choices",
            "p2c",
            _scored,
            {"latency": 1.0},
            _SCORED_PARAMS,
        ),
        Preset(
            "cost",
            "cheapest for this request; equal prices by fewest in flight",
            "argmax",
            _scored,
            # in-flight only separates prices within 0.1%: its score is at most 1.
            {"cost": 1.0, "in-flight": 0.001},
            _SCORED_PARAMS,
        ),
        Preset(
            "gpu-aware",
            "engine metrics: waiting queue, running batch, KV cache, prefix affinity",
            "argmax",
            _scored,
            {"queue": 2.0, "running": 1.0, "kv-cache": 1.0, "prefix": 1.0},
            _SCORED_PARAMS,
        ),
        Preset(
            "auto",
            "lowest predicted TTFT (prefix affinity credited) and most decode throughput "
            "gained, cloud spillover past the SLO",
            "argmax",
            _auto,
            {"ttft": 1.0, "throughput": 1.0},
            _AUTO_PARAMS,
        ),
    )
}


def _name_of(spec: object) -> object:
    return spec.get("name") if isinstance(spec, dict) else spec


def parse_policy(spec: object) -> tuple[PolicySettings | None, list[str]]:
    """Validate a ``policy`` value; the settings are None exactly when problems exist."""
    if not isinstance(spec, str | dict):
        return None, [f"expected a preset name or a mapping with a name (got {spec!r})"]
    name = _name_of(spec)
    preset = PRESETS.get(name) if isinstance(name, str) else None
    if preset is None:
        where = "" if isinstance(spec, str) else "name: "
        return None, [f"{where}unknown policy {name!r} (expected one of {', '.join(PRESETS)})"]
    if isinstance(spec, str):
        return _settings(preset, {}, {}), []
    problems: list[str] = []
    weights = _weights(preset, spec.get("weights", {}), problems)
    params: dict[str, Any] = {}
    for key, value in spec.items():
        if key in ("name", "weights"):
            continue
        if key not in preset.params:
            accepted = ", ".join(sorted(preset.params)) or "none"
            problems.append(
                f"{key}: unknown parameter for policy {preset.name!r} (accepted: {accepted})"
            )
        elif key == "picker":
            if value not in SCORE_PICKERS:
                problems.append(
                    f"picker: expected one of {', '.join(SCORE_PICKERS)} (got {value!r})"
                )
            params[key] = value
        elif (problem := param_problem(key, value)) is not None:
            problems.append(f"{key}: {problem}")
        else:
            params[key] = value
    if problems:
        return None, problems
    return _settings(preset, weights, params), []


def _weights(preset: Preset, raw: object, problems: list[str]) -> dict[str, float]:
    if not isinstance(raw, dict):
        problems.append(f"weights: expected a mapping of scorer name to weight (got {raw!r})")
        return {}
    if raw and not preset.weights:
        problems.append(f"weights: policy {preset.name!r} uses no scorers, so takes no weights")
        return {}
    weights: dict[str, float] = {}
    for scorer, weight in raw.items():
        if scorer not in SCORERS:
            problems.append(
                f"weights.{scorer}: unknown scorer (expected one of {', '.join(SCORERS)})"
            )
        elif isinstance(weight, bool) or not isinstance(weight, int | float) or weight < 0:
            problems.append(f"weights.{scorer}: expected a non-negative number (got {weight!r})")
        else:
            weights[scorer] = float(weight)
    merged = {**preset.weights, **weights}
    if raw and not any(w > 0 for w in merged.values()):
        problems.append("weights: at least one scorer needs a positive weight")
    return weights


def _settings(preset: Preset, weights: dict[str, float], params: dict[str, Any]) -> PolicySettings:
    merged = {**preset.weights, **weights}
    return PolicySettings(
        preset=preset,
        weights=tuple((k, w) for k, w in merged.items() if w > 0),
        picker=params.pop("picker", preset.picker),
        tuning=Tuning.from_params(params),
    )


def policy_problems(spec: object) -> list[str]:
    """Human-readable problems with a ``policy`` config value (empty when valid): unknown
    preset, unknown scorer in ``weights``, negative weight, unknown or invalid parameter."""
    return parse_policy(spec)[1]


def make_policy(spec: str | dict[str, Any], model: ModelConfig, rng: random.Random) -> Policy:
    """Build ``model``'s policy from its ``policy`` value; raises ValueError listing every
    problem (config validation should have reported them already)."""
    settings, problems = parse_policy(spec)
    if settings is None:
        raise ValueError(f"model {model.name!r}: policy: " + "; ".join(problems))
    return settings.preset.build(settings, model, rng)
