"""A deployment's load *now*: the last engine scrape, corrected by the gateway's own traffic.

An engine is scraped every second or so; between scrapes the gateway keeps dispatching. A
policy that trusts the scrape alone sends a whole burst to whichever engine looked idle at
the last scrape (herding). The cure: ``state.in_flight - engine.in_flight_at_scrape`` is
what this gateway sent (positive) or saw finish (negative) since the scrape, and is added to
the scraped load. The estimate also splits that load into running and waiting with an
estimate of the engine's batch capacity.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from aigw.fleet.deployment import Deployment
from aigw.policies.tuning import Tuning

__all__ = ["Load", "LoadEstimator", "estimate_load"]


class Load(NamedTuple):
    """Estimated requests running and waiting on one deployment now.

    A NamedTuple rather than a dataclass: one is built per candidate per decision, and a
    tuple is the cheapest immutable record Python has.
    """

    running: float
    waiting: float
    capacity: float  # requests the engine can run at once (estimated; > 0)
    kv: float | None  # KV-cache fill in [0, 1], None when unknown
    fresh: bool  # False: no usable engine snapshot, the numbers are gateway-local


_new = tuple.__new__  # Load(...) costs twice as much: NamedTuple.__new__ parses arguments


def estimate_load(deployment: Deployment, tuning: Tuning) -> Load:
    """The load of ``deployment`` from its engine snapshot, or gateway-local when stale.

    Capacity: the KV fill tells how many sequences of the current mix fit (running /
    kv_usage), capped by the engine's batch limit (``max_num_seqs`` configured, else the
    largest batch it was seen running with a queue:
    :func:`aigw.routing.scraper.learn_batch_limit`); without a KV reading, an engine with a
    waiting queue is full (it runs what it runs now), else the batch limit,
    ``max_concurrency`` or ``tuning.assumed_batch``. A queue with KV room to spare is not a
    full engine: its requests wait for the step's token budget (chunked prefill of the
    prompts ahead, which the TTFT prediction counts as prefill backlog), not for sequences
    to finish; taking it for one predicted waits of seconds on an engine admitting them
    within a few steps, and moved conversations off their cache. Stale or absent metrics:
    running = the gateway's in-flight count, waiting = 0.
    """
    state = deployment.state
    in_flight = state.in_flight
    engine = state.engine
    config = deployment.config
    batch = config.max_num_seqs or state.batch_limit
    if engine is None or state.engine_stale:
        capacity = max(in_flight + 1.0, batch or config.max_concurrency or tuning.assumed_batch)
        return _new(Load, (float(in_flight), 0.0, capacity, None, False))
    running = engine.running
    waiting = engine.waiting
    kv = engine.kv_usage
    total = running + waiting + (in_flight - engine.in_flight_at_scrape)
    if total < 0.0:
        total = 0.0
    if kv is not None and kv > 0.01 and running > 0.0:
        capacity = running / kv  # kv <= 1; a full cache with a queue: what it runs now
        if waiting <= 0.0 and capacity < running + 1.0:
            capacity = running + 1.0
        if batch is not None and batch < capacity:
            capacity = batch if batch > running else running
    elif waiting > 0.0:
        capacity = running if running > 1.0 else 1.0
    elif batch is not None:
        capacity = batch if batch > running else running
    else:
        capacity = max(running + 1.0, config.max_concurrency or tuning.assumed_batch)
    now_running = total if total < capacity else capacity
    if kv is not None and running > 0.0:
        kv = min(1.0, kv * now_running / running)
    return _new(Load, (now_running, total - now_running, capacity, kv, True))


class LoadEstimator:
    """Estimates loads once per decision for every scorer of one policy.

    Several scorers (queue, running batch, KV, affinity) read the same estimates; the policy
    brackets each decision with :meth:`begin`/:meth:`end` and the first scorer's call is
    remembered for the others. Outside a bracket nothing is remembered, so a scorer used on
    its own always sees current state.
    """

    __slots__ = ("_active", "_candidates", "_loads", "tuning")

    def __init__(self, tuning: Tuning) -> None:
        self.tuning = tuning
        self._active = False
        self._candidates: Sequence[Deployment] | None = None
        self._loads: list[Load] = []

    def begin(self) -> None:
        self._active = True
        self._candidates = None

    def end(self) -> None:
        self._active = False
        self._candidates = None
        self._loads = []

    def narrow(self, candidates: Sequence[Deployment], keep: Sequence[int]) -> None:
        """Within a decision, the policy kept ``candidates`` (``keep``: their indices in the
        list the loads were estimated for): remember their loads under the new list, so the
        scorers that see it reuse them instead of estimating again."""
        if self._active and self._candidates is not None:
            loads = self._loads
            self._candidates = candidates
            self._loads = [loads[i] for i in keep]

    def loads(self, candidates: Sequence[Deployment]) -> list[Load]:
        if self._active and candidates is self._candidates:
            return self._loads
        tuning = self.tuning
        loads = [estimate_load(d, tuning) for d in candidates]
        if self._active:
            self._candidates = candidates
            self._loads = loads
        return loads
