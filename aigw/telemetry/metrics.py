"""Prometheus metrics (``GET /metrics``): what the gateway did, and the state it routes on.

:class:`GatewayMetrics` owns one ``CollectorRegistry`` per app (no process-global registry: two
gateways in one process, as in the tests and the demo, keep their own numbers). It is both an
:class:`~aigw.fleet.attempt.AttemptObserver` (upstream attempts, time to first token, time per
output token, tokens, queue wait, routing decisions) and a
:class:`~aigw.telemetry.records.RequestObserver` (requests by status, request duration,
rate-limit rejections, continuation failovers). Gauges (queue depth, deployment health and
load, the engine signals of the last scrape, Redis, the event loop's task count) are read when
Prometheus scrapes, by :class:`_StateCollector`, so the hot path never updates them.

Label sets are bounded by the config: ``model`` is a configured public model name (requests
that named none are counted under ``model=""``), ``deployment`` a configured id (``""`` when no
deployment was reached), ``key`` an API key's *name* (``anonymous`` on an open gateway),
``status`` an HTTP status, ``outcome``/``limit`` small fixed sets. No prompt text and no string
a client chose is ever a label.

Hot path: each labelled child is looked up once and cached in a dict keyed by its label
values, so an update is a dict hit plus prometheus_client's own ``inc``/``observe``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from aigw.errors import GatewayError
from aigw.fleet.attempt import Attempt
from aigw.fleet.deployment import Deployment
from aigw.telemetry.records import RequestRecord

__all__ = ["SYNC_S", "GatewayMetrics"]

_DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_TPOT_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0)
_QUEUE_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class _Children:
    """A labelled metric's children, cached by label values (``labels()`` costs ~1 µs)."""

    __slots__ = ("_cache", "_metric")

    def __init__(self, metric: Any) -> None:
        self._metric = metric
        self._cache: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        if not values:
            return self._metric  # an unlabelled metric is its own child
        child = self._cache.get(values)
        if child is None:
            child = self._cache[values] = self._metric.labels(*values)
        return child


class GatewayMetrics:
    """The gateway's Prometheus metrics; ``render()`` gives the exposition text."""

    def __init__(
        self,
        deployments: Sequence[Deployment],
        policies: Mapping[str, str],
        queue_depth: Callable[[str], int],
        clock: Callable[[], float],
        redis: Any | None = None,
        tasks: Callable[[], int] | None = None,
    ) -> None:
        """``policies``: model name -> policy name; ``queue_depth``: a model's queue length;
        ``redis``: the shared state's Redis health (``down``, ``errors``), None without one;
        ``tasks``: how many asyncio tasks the serving loop holds (read at scrape time), None:
        no ``aigw_asyncio_tasks`` gauge."""
        self.registry = CollectorRegistry(auto_describe=True)
        self._policies = dict(policies)
        r = self.registry
        self._requests = _Children(
            Counter(
                "aigw_requests",
                "Client requests by public model, serving deployment and HTTP status.",
                ["model", "deployment", "status"],
                registry=r,
            )
        )
        self._duration = _Children(
            Histogram(
                "aigw_request_duration_seconds",
                "Client request duration, arrival to the end of the response.",
                ["model"],
                buckets=_DURATION_BUCKETS,
                registry=r,
            )
        )
        self._ttft = _Children(
            Histogram(
                "aigw_time_to_first_token_seconds",
                "Time from sending a request to a deployment to its first output (streams).",
                ["model", "deployment"],
                buckets=_TTFT_BUCKETS,
                registry=r,
            )
        )
        self._tpot = _Children(
            Histogram(
                "aigw_time_per_output_token_seconds",
                "Time per output token after the first, per streamed request.",
                ["model", "deployment"],
                buckets=_TPOT_BUCKETS,
                registry=r,
            )
        )
        self._input_tokens = _Children(
            Counter(
                "aigw_input_tokens",
                "Prompt tokens, as the deployments reported them.",
                ["model", "deployment"],
                registry=r,
            )
        )
        self._output_tokens = _Children(
            Counter(
                "aigw_output_tokens",
                "Completion tokens, as the deployments reported them.",
                ["model", "deployment"],
                registry=r,
            )
        )
        self._queue_wait = _Children(
            Histogram(
                "aigw_queue_wait_seconds",
                "Time an attempt waited in the admission queue for a deployment slot.",
                ["model"],
                buckets=_QUEUE_BUCKETS,
                registry=r,
            )
        )
        self._rejections = _Children(
            Counter(
                "aigw_ratelimit_rejections",
                "Requests refused with 429, by API key name and the limit that refused them.",
                ["key", "limit"],
                registry=r,
            )
        )
        self._attempts = _Children(
            Counter(
                "aigw_upstream_attempts",
                "Tries on a deployment: success, error (retryable: failover follows), "
                "rejected (the upstream refused the request itself), abandoned (client gone).",
                ["deployment", "outcome"],
                registry=r,
            )
        )
        self._resumes = _Children(
            Counter(
                "aigw_stream_resumes",
                "Streams of stream_resume models broken mid-way, by serving model and outcome: "
                "resumed (a continuation went on on another deployment), failed (none could "
                "open one), not_resumable (a tool call or finish reason relayed, or the "
                "model's max_stream_resumes reached).",
                ["model", "outcome"],
                registry=r,
            )
        )
        self._decisions = _Children(
            Counter(
                "aigw_routing_decisions",
                "Deployments chosen by each model's routing policy.",
                ["model", "policy", "deployment"],
                registry=r,
            )
        )
        self._state = _StateCollector(deployments, queue_depth, clock, redis, tasks)
        r.register(self._state)
        self._exposed = _exposed(r, self._state)
        # Under several workers, the process counters go through prometheus_client's shared
        # files too (synced every SYNC_S and at each scrape), so that every worker's count is
        # in the sum whichever worker answers.
        self._synced: dict[str, tuple[_Children, dict[tuple[str, ...], float]]] = {}
        if self._exposed is not r:
            self._state.counters_elsewhere = True
            for name, documentation, labels, _ in self._state.process_counters():
                counter = Counter(name, documentation, labels, registry=r)
                self._synced[name] = (_Children(counter), {})

    @property
    def shared(self) -> bool:
        """Whether these metrics are summed over several worker processes (then call
        :meth:`sync` every :data:`SYNC_S`)."""
        return bool(self._synced)

    def sync(self) -> None:
        """Add what the process counters gained since the last sync to the shared ones."""
        for name, _, _, values in self._state.process_counters():
            children, last = self._synced[name]
            for label_values, value in values.items():
                gained = value - last.get(label_values, 0)
                if gained > 0:
                    children(*label_values).inc(gained)
                    last[label_values] = value

    def set_fleet(self, deployments: Sequence[Deployment], policies: Mapping[str, str]) -> None:
        """After a config reload: the gauges read these deployments, labels use these
        policies. Counters keep their values (a removed deployment's series stay, frozen)."""
        self._policies = dict(policies)
        self._state.set_fleet(deployments)

    def watch_retries(self, exhausted: Callable[[], Mapping[str, int]]) -> None:
        """Read the retries the retry budget refused, per model, at scrape time, from the
        gateway serving now (a reload calls this with the new one; the old one's counts are
        kept, so the counter never goes back)."""
        state = self._state
        if state.retries_exhausted is not None:
            for model, count in state.retries_exhausted().items():
                state.retries_before[model] = state.retries_before.get(model, 0) + count
        state.retries_exhausted = exhausted

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        if self._synced:
            self.sync()
        return generate_latest(self._exposed)

    # --- RequestObserver -------------------------------------------------------------------

    def on_request(self, record: RequestRecord) -> None:
        model = record.model or ""
        attempt = record.attempt
        deployment = attempt.deployment.id if attempt is not None else ""
        self._requests(model, deployment, str(record.status)).inc()
        self._duration(model).observe(record.duration_s)
        if record.status == 429:
            self._rejections(record.key or "anonymous", record.limit or "other").inc()
        if record.resumes:
            # The serving model (a fallback's, when one served): its stream_resume applied.
            served = attempt.deployment.model if attempt is not None else model
            for outcome in record.resumes:
                self._resumes(served, outcome).inc()

    # --- AttemptObserver -------------------------------------------------------------------

    def on_dispatch(self, attempt: Attempt) -> None:
        model = attempt.ctx.model
        deployment = attempt.deployment
        policy = self._policies.get(deployment.model, "")
        self._decisions(deployment.model, policy, deployment.id).inc()
        self._queue_wait(model).observe(attempt.queued_s)

    def on_first_byte(self, attempt: Attempt) -> None:
        if attempt.first_byte_at is not None:  # set for streams only
            seconds = attempt.first_byte_at - attempt.started_at
            self._ttft(attempt.ctx.model, attempt.deployment.id).observe(seconds)

    def on_success(self, attempt: Attempt) -> None:
        deployment = attempt.deployment.id
        self._attempts(deployment, "success").inc()
        usage = attempt.usage
        if usage is None:
            return
        model = attempt.ctx.model
        self._input_tokens(model, deployment).inc(usage.prompt_tokens)
        self._output_tokens(model, deployment).inc(usage.completion_tokens)
        first, last = attempt.first_byte_at, attempt.last_byte_at
        if first is not None and last is not None:  # a stream
            if usage.completion_tokens > 1:
                per_token = (last - first) / (usage.completion_tokens - 1)
                self._tpot(model, deployment).observe(per_token)

    def on_failure(self, attempt: Attempt, error: GatewayError) -> None:
        outcome = "error" if error.retryable else "rejected"
        self._attempts(attempt.deployment.id, outcome).inc()

    def on_finish(self, attempt: Attempt) -> None:
        if attempt.abandoned:
            self._attempts(attempt.deployment.id, "abandoned").inc()


def _exposed(registry: CollectorRegistry, state: Collector) -> CollectorRegistry:
    """What ``/metrics`` shows: ``registry``, or under ``aigw serve --workers N``
    (prometheus_client's multiprocess mode, :mod:`aigw.workers`) every worker's counters and
    histograms summed, with this worker's scrape-time readings (``state``)."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        return registry
    from prometheus_client.multiprocess import MultiProcessCollector

    exposed = CollectorRegistry()
    MultiProcessCollector(exposed, directory)  # type: ignore[no-untyped-call]
    exposed.register(state)
    return exposed


_CounterReading = tuple[str, str, list[str], dict[tuple[str, ...], float]]
SYNC_S = 5.0  # under several workers: how stale another worker's process counters may be


class _StateCollector(Collector):
    """Gauges read at scrape time from the deployments, the admission queue, Redis and the
    event loop's task count."""

    def __init__(
        self,
        deployments: Sequence[Deployment],
        queue_depth: Callable[[str], int],
        clock: Callable[[], float],
        redis: Any | None,
        tasks: Callable[[], int] | None = None,
    ) -> None:
        self._deployments: tuple[Deployment, ...] = ()
        self._models: list[str] = []
        self.set_fleet(deployments)
        self._queue_depth = queue_depth
        self._clock = clock
        self._redis = redis
        self._tasks = tasks
        self._capacity: dict[str, float] = {}  # last capacity estimate per deployment
        self.retries_exhausted: Callable[[], Mapping[str, int]] | None = None
        self.retries_before: dict[str, int] = {}  # refused by gateways a reload replaced
        # True under several workers: GatewayMetrics keeps the process counters in shared
        # Counters (synced from process_counters) instead.
        self.counters_elsewhere = False

    def process_counters(self) -> Iterator[_CounterReading]:
        """Counters this process keeps elsewhere (the health monitor, the retry budget, the
        Redis wrapper), read now: (name, help, label names, {label values: count})."""
        refused: dict[tuple[str, ...], float] = {}
        if self.retries_exhausted is not None:
            counts = dict(self.retries_before)
            for model, count in self.retries_exhausted().items():
                counts[model] = counts.get(model, 0) + count
            refused = {(model,): count for model, count in sorted(counts.items())}
        yield (
            "aigw_retry_budget_exhausted",
            "Retries not made because the model's retry budget was spent (the request "
            "failed with its last error instead).",
            ["model"],
            refused,
        )
        yield (
            "aigw_deployment_ejections",
            "Times outlier detection ejected the deployment.",
            ["deployment"],
            {(d.id,): d.state.ejected_total for d in self._deployments},
        )
        if self._redis is not None:
            yield (
                "aigw_redis_errors",
                "Redis calls that failed (requests and recovery probes).",
                [],
                {(): self._redis.errors},
            )

    def set_fleet(self, deployments: Sequence[Deployment]) -> None:
        self._deployments = tuple(deployments)
        self._models = sorted({d.model for d in deployments})

    def describe(self) -> Iterable[Metric]:
        return []  # unchecked: the families are built per scrape

    def collect(self) -> Iterator[Metric]:
        yield from self._queues()
        yield from self._saturation()
        yield from self._fleet()
        yield from self._engines()
        if not self.counters_elsewhere:
            for name, documentation, labels, values in self.process_counters():
                family = CounterMetricFamily(name, documentation, labels=labels)
                for label_values, value in values.items():
                    family.add_metric(list(label_values), value)
                yield family
        if self._redis is not None:
            up = GaugeMetricFamily("aigw_redis_up", "Whether the shared Redis is reachable.")
            up.add_metric([], 0.0 if self._redis.down else 1.0)
            yield up
        if self._tasks is not None:
            # A leak check (loadtests/soak.py): back to its idle count once the load stops.
            tasks = GaugeMetricFamily(
                "aigw_asyncio_tasks", "Tasks alive in the gateway's event loop, at scrape time."
            )
            tasks.add_metric([], self._tasks())
            yield tasks

    def _queues(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "aigw_queue_depth", "Requests waiting for a deployment slot.", labels=["model"]
        )
        for model in self._models:
            depth.add_metric([model], self._queue_depth(model))
        yield depth

    def _saturation(self) -> Iterator[Metric]:
        """Demand against capacity per model: the autoscaling signal (README: Autoscaling)."""
        ratio = GaugeMetricFamily(
            "aigw_model_saturation_ratio",
            "Requests in the system for the model (engine batches and queues, the gateway's "
            "queue) over the sequences its GPU deployments can hold; above 1: overloaded.",
            labels=["model"],
        )
        capacity_family = GaugeMetricFamily(
            "aigw_deployment_capacity_estimate",
            "Concurrent sequences the deployment can hold: its max_concurrency, else running "
            "sequences over KV-cache fill at the last busy scrape, at most the engine's batch "
            "limit (max_num_seqs, configured or learnt).",
            labels=["deployment"],
        )
        demand: dict[str, float] = dict.fromkeys(self._models, 0.0)
        capacity: dict[str, float] = dict.fromkeys(self._models, 0.0)
        for d in self._deployments:
            estimate = self._estimate(d)
            if estimate is None:
                continue  # a cloud API, or an engine never seen busy: no capacity to count
            load, cap = estimate
            capacity_family.add_metric([d.id], cap)
            demand[d.model] += load
            capacity[d.model] += cap
        for model in self._models:
            if capacity[model] > 0:
                queued = self._queue_depth(model)
                ratio.add_metric([model], (demand[model] + queued) / capacity[model])
        yield from (ratio, capacity_family)

    def _estimate(self, d: Deployment) -> tuple[float, float] | None:
        """(requests on the deployment, sequences it can hold), or None when unknown."""
        state = d.state
        engine = None if state.engine_stale else state.engine
        limit = d.config.max_concurrency
        if engine is None:
            if limit is None:
                return None
            return float(state.in_flight), float(limit)
        since_scrape = max(0, state.in_flight - engine.in_flight_at_scrape)
        load = engine.running + engine.waiting + since_scrape
        if limit is not None:
            return load, float(limit)
        if engine.running >= 1 and engine.kv_usage is not None and engine.kv_usage > 0.05:
            self._capacity[d.id] = engine.running / engine.kv_usage
        cap = self._capacity.get(d.id)
        batch = d.config.max_num_seqs or state.batch_limit  # the KV room is capped by it
        if batch is not None:
            cap = float(batch) if cap is None else min(cap, float(batch))
        return (load, cap) if cap is not None else None

    def _fleet(self) -> Iterator[Metric]:
        now = self._clock()
        healthy = GaugeMetricFamily(
            "aigw_deployment_healthy",
            "1 while the deployment is not ejected by outlier detection.",
            labels=["deployment"],
        )
        draining = GaugeMetricFamily(
            "aigw_deployment_draining", "1 while the deployment is drained.", labels=["deployment"]
        )
        in_flight = GaugeMetricFamily(
            "aigw_deployment_in_flight",
            "Requests this gateway has in flight to the deployment.",
            labels=["deployment"],
        )
        probe_up = GaugeMetricFamily(
            "aigw_deployment_probe_up",
            "The active health probe's verdict, 1 up or 0 down (probed deployments only).",
            labels=["deployment"],
        )
        demotion = GaugeMetricFamily(
            "aigw_deployment_demotion",
            "Share multiplier from predictive demotion (1: as good as its peers).",
            labels=["deployment"],
        )
        for d in self._deployments:
            state = d.state
            healthy.add_metric([d.id], 1.0 if state.ejected_until <= now else 0.0)
            draining.add_metric([d.id], 1.0 if state.draining else 0.0)
            in_flight.add_metric([d.id], state.in_flight)
            if state.probe_up is not None:
                probe_up.add_metric([d.id], 1.0 if state.probe_up else 0.0)
            demotion.add_metric([d.id], state.demotion)
        yield from (healthy, draining, in_flight, probe_up, demotion)

    def _engines(self) -> Iterator[Metric]:
        now = self._clock()
        labels = ["deployment"]
        waiting = GaugeMetricFamily(
            "aigw_engine_waiting_requests", "Engine queue at the last scrape.", labels=labels
        )
        running = GaugeMetricFamily(
            "aigw_engine_running_requests", "Engine batch at the last scrape.", labels=labels
        )
        kv = GaugeMetricFamily(
            "aigw_engine_kv_cache_usage_ratio",
            "Engine KV-cache fill (0-1) at the last scrape.",
            labels=labels,
        )
        age = GaugeMetricFamily(
            "aigw_engine_metrics_age_seconds",
            "Seconds since the engine's metrics were last scraped.",
            labels=labels,
        )
        stale = GaugeMetricFamily(
            "aigw_engine_metrics_stale",
            "1 while routing ignores the engine's metrics as too old (or never scraped).",
            labels=labels,
        )
        for d in self._deployments:
            if d.config.metrics_url is None:
                continue  # a cloud deployment: no engine to scrape
            engine = d.state.engine
            stale.add_metric([d.id], 1.0 if d.state.engine_stale else 0.0)
            if engine is None:
                continue
            waiting.add_metric([d.id], engine.waiting)
            running.add_metric([d.id], engine.running)
            if engine.kv_usage is not None:
                kv.add_metric([d.id], engine.kv_usage)
            age.add_metric([d.id], max(0.0, now - engine.scraped_at))
        yield from (waiting, running, kv, age, stale)
