"""Routing policies, chosen per model by the config's ``policy`` name."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from aigw.policies.base import Policy, RouteContext
from aigw.policies.classic import RandomPolicy, RoundRobinPolicy

__all__ = ["POLICIES", "Policy", "RouteContext", "make_policy"]

# name -> factory(rng); every model gets its own policy instance.
POLICIES: dict[str, Callable[[random.Random], Policy]] = {
    "round-robin": RoundRobinPolicy,
    "random": RandomPolicy,
}


def make_policy(spec: str | dict[str, Any], rng: random.Random) -> Policy:
    """Build a policy from the config's ``policy`` value (a name, or ``{name: ...}``)."""
    name = spec if isinstance(spec, str) else str(spec.get("name"))
    return POLICIES[name](rng)
