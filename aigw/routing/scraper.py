"""Background scraping of inference engines' Prometheus metrics into EngineSnapshots.

One asyncio task per deployment with a ``metrics_url``, owned by the app's lifespan. Names
understood (summed over label sets, e.g. several model_name values):

| signal | vLLM V1 | vLLM V0 | SGLang | TGI |
| --- | --- | --- | --- | --- |
| waiting | vllm:num_requests_waiting | same | sglang:num_queue_reqs | tgi_queue_size |
| running | vllm:num_requests_running | same | sglang:num_running_reqs | tgi_batch_current_size |
| KV usage | vllm:kv_cache_usage_perc | vllm:gpu_cache_usage_perc | sglang:token_usage | — |
| prefix hits/queries | vllm:prefix_cache_hits_total / _queries_total | vllm:gpu_prefix_cache_* | — | — |
| finished requests | vllm:request_success_total (all finished_reason) | same | — | tgi_request_success |
| LoRA loaded | vllm:lora_requests_info (running/waiting_lora_adapters labels) | same | — | — |

The finished-requests counter gives the engine's drain rate (requests/s over the last scrape
interval, an EWMA in ``DeploymentState.completion_rate``): how fast its queue moves, whoever
sent the work.

Parsing uses prometheus_client's text parser. A vLLM /metrics page is mostly histogram
buckets we do not need, so lines are first narrowed to the names above with one
``str.startswith`` per line; that keeps a scrape's CPU on the event loop small.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Iterable

import httpx
from prometheus_client.parser import text_string_to_metric_families

from aigw.fleet.deployment import Deployment, DeploymentState
from aigw.fleet.signals import EngineSnapshot

__all__ = ["MetricsScraper", "parse_engine_metrics"]

log = logging.getLogger("aigw.scraper")

_WAITING = ("vllm:num_requests_waiting", "sglang:num_queue_reqs", "tgi_queue_size")
_RUNNING = ("vllm:num_requests_running", "sglang:num_running_reqs", "tgi_batch_current_size")
_KV = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc", "sglang:token_usage")
_HITS = ("vllm:prefix_cache_hits_total", "vllm:gpu_prefix_cache_hits_total")
_QUERIES = ("vllm:prefix_cache_queries_total", "vllm:gpu_prefix_cache_queries_total")
_FINISHED = ("vllm:request_success_total", "tgi_request_success")
_LORA = "vllm:lora_requests_info"
_WANTED = (*_WAITING, *_RUNNING, *_KV, *_HITS, *_QUERIES, *_FINISHED, _LORA)
# A line is wanted if it starts with a wanted name followed by a label set or a value.
_PREFIXES = tuple(f"{name}{end}" for name in _WANTED for end in ("{", " "))


def parse_engine_metrics(text: str, now: float, in_flight: int = 0) -> EngineSnapshot:
    """Normalise one Prometheus text page into an EngineSnapshot (unknown names ignored)."""
    wanted = "\n".join(line for line in text.splitlines() if line.startswith(_PREFIXES))
    sums: dict[str, float] = {}
    seen: set[str] = set()
    adapters: set[str] = set()
    latest_lora: tuple[float, set[str]] | None = None
    for family in text_string_to_metric_families(wanted + "\n"):
        for sample in family.samples:
            name = sample.name
            if name == _LORA:
                # vLLM exports one sample per change, valued by its timestamp: keep the newest.
                running = sample.labels.get("running_lora_adapters", "")
                waiting = sample.labels.get("waiting_lora_adapters", "")
                names = {a for a in f"{running},{waiting}".split(",") if a}
                if latest_lora is None or sample.value >= latest_lora[0]:
                    latest_lora = (sample.value, names)
                continue
            sums[name] = sums.get(name, 0.0) + float(sample.value)
            seen.add(name)
    if latest_lora is not None:
        adapters = latest_lora[1]
    hits, queries = _first(sums, _HITS), _first(sums, _QUERIES)
    kv = _first(sums, _KV)
    return EngineSnapshot(
        scraped_at=now,
        waiting=_first(sums, _WAITING) or 0.0,
        running=_first(sums, _RUNNING) or 0.0,
        kv_usage=min(1.0, kv) if kv is not None else None,
        prefix_hit_rate=hits / queries if hits is not None and queries else None,
        adapters=frozenset(adapters),
        in_flight_at_scrape=in_flight,
        finished_total=_first(sums, _FINISHED),
    )


def _first(sums: dict[str, float], names: Iterable[str]) -> float | None:
    for name in names:
        if name in sums:
            return sums[name]
    return None


class MetricsScraper:
    """Scrapes every deployment with a metrics_url every ``interval`` seconds (±20% jitter)."""

    def __init__(
        self,
        deployments: Iterable[Deployment],
        client: httpx.AsyncClient,
        interval: float,
        rng: random.Random,
        clock: Callable[[], float],
    ) -> None:
        self._targets = [d for d in deployments if d.config.metrics_url]
        self._clock = clock
        self._client = client
        self._interval = interval
        self._rng = rng
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._loop(d), name=f"scrape:{d.id}") for d in self._targets
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def scrape_once(self, deployment: Deployment) -> bool:
        """One scrape; True if it produced a fresh snapshot."""
        url = deployment.config.metrics_url
        assert url is not None
        try:
            response = await self._client.get(url, timeout=max(1.0, 2 * self._interval))
            response.raise_for_status()
            snapshot = parse_engine_metrics(
                response.text, self._clock(), in_flight=deployment.state.in_flight
            )
        except (httpx.HTTPError, ValueError) as exc:
            log.debug("scraping %s failed: %s", deployment.id, exc)
            return False
        state = deployment.state
        previous = state.engine
        if (
            previous is not None
            and previous.finished_total is not None
            and snapshot.finished_total is not None
            and snapshot.finished_total >= previous.finished_total  # not a restarted engine
            and snapshot.scraped_at > previous.scraped_at
        ):
            finished = snapshot.finished_total - previous.finished_total
            state.completion_rate.add(finished / (snapshot.scraped_at - previous.scraped_at))
        learn_batch_limit(state, previous, snapshot)
        state.engine = snapshot
        return True

    async def _loop(self, deployment: Deployment) -> None:
        # Spread the first scrapes so N targets are not fetched in lockstep.
        await asyncio.sleep(self._rng.uniform(0, self._interval))
        while True:
            try:
                await self.scrape_once(deployment)
            except Exception:  # a background loop logs and goes on
                log.exception("unexpected error scraping %s", deployment.id)
            await asyncio.sleep(self._interval * self._rng.uniform(0.8, 1.2))


def learn_batch_limit(
    state: DeploymentState, previous: EngineSnapshot | None, snapshot: EngineSnapshot
) -> None:
    """Learn the engine's batch limit: a batch pinned at the same size over two scrapes while
    requests waited through both is the limit. One scrape with a queue is not enough: a
    request that arrived just before it waits for the next step even with room to spare, and
    a KV-bound batch changes size as sequences grow and finish. The largest one so found is
    kept."""
    running = snapshot.running
    if (
        running >= 1.0
        and snapshot.waiting > 0.0
        and previous is not None
        and previous.waiting > 0.0
        and previous.running == running
    ):
        limit = state.batch_limit
        if limit is None or running > limit:
            state.batch_limit = running
