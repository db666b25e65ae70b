"""Routing policies, chosen per model by the config's ``policy`` value.

A policy is data: the router's model-aware filters (:data:`MODEL_AWARE_FILTERS`), then
weighted scorers, then a picker. :data:`POLICIES` is the name -> preset table;
:func:`make_policy` builds one per model and :func:`policy_problems` validates a config value.
"""

from __future__ import annotations

from aigw.policies.base import Filter, Picker, Policy, Scorer
from aigw.policies.filters import FILTERS, MODEL_AWARE_FILTERS
from aigw.policies.pickers import PICKERS
from aigw.policies.presets import PRESETS, Preset, make_policy, policy_problems
from aigw.policies.scorers import SCORERS

__all__ = [
    "FILTERS",
    "MODEL_AWARE_FILTERS",
    "PICKERS",
    "POLICIES",
    "SCORERS",
    "Filter",
    "Picker",
    "Policy",
    "Preset",
    "Scorer",
    "make_policy",
    "policy_problems",
]

# name -> preset (its builder is the factory); the names are what ``policy:`` accepts.
POLICIES: dict[str, Preset] = PRESETS
