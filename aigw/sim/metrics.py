"""vLLM V1's Prometheus metrics for one simulated engine, rendered from a per-app registry.

The engine updates plain counters and :class:`Histogram` objects (a bisect and two additions per
observation, no locks: everything runs on the app's event loop); a :class:`VllmCollector`
registered in the app's own ``CollectorRegistry`` turns them into metric families at scrape
time. Building families at scrape time (rather than using ``prometheus_client.Counter``) keeps
the per-token cost low and emits exactly vLLM's series: vLLM disables the ``*_created`` samples
process-wide, which a per-app registry cannot, and custom families simply never emit them.

Exposed names (label ``model_name="<model>"`` and ``engine="0"``, as vLLM V1 does)::

    vllm:num_requests_running              gauge
    vllm:num_requests_waiting              gauge
    vllm:kv_cache_usage_perc               gauge 0..1
    vllm:gpu_cache_usage_perc              gauge 0..1 (V0 name, same value)
    vllm:num_preemptions_total             counter
    vllm:prompt_tokens_total               counter
    vllm:generation_tokens_total           counter
    vllm:request_success_total             counter {finished_reason=stop|length|abort}
    vllm:prefix_cache_queries_total        counter (tokens)
    vllm:prefix_cache_hits_total           counter (tokens)
    vllm:time_to_first_token_seconds       histogram
    vllm:inter_token_latency_seconds       histogram (per output token after the first)
    vllm:time_per_output_token_seconds     histogram (deprecated alias, same observations)
    vllm:e2e_request_latency_seconds       histogram
    vllm:request_queue_time_seconds        histogram (arrival → first scheduled)
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

__all__ = ["FINISH_REASONS", "EngineMetrics", "Histogram", "VllmCollector", "render"]

FINISH_REASONS = ("stop", "length", "abort")

# Bucket bounds as vLLM V1 declares them (vllm/v1/metrics/loggers.py).
_TTFT_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
    640.0,
    2560.0,
)
_ITL_BUCKETS = (
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)
_REQUEST_BUCKETS = (
    0.3,
    0.5,
    0.8,
    1.0,
    1.5,
    2.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    50.0,
    60.0,
    120.0,
    240.0,
    480.0,
    960.0,
    1920.0,
    7680.0,
)


class Histogram:
    """A Prometheus histogram without locks or labels: ``observe`` is O(log buckets)."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # last slot is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, float]]:
        """``(le, cumulative count)`` pairs ending with ``+Inf``, as HistogramMetricFamily wants."""
        out: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            running += n
            out.append((repr(float(bound)), running))
        out.append(("+Inf", running + self.counts[-1]))
        return out


class EngineMetrics:
    """Monotonic totals and latency histograms the engine updates as it runs."""

    __slots__ = (
        "e2e",
        "generation_tokens",
        "itl",
        "preemptions",
        "prefix_hits",
        "prefix_queries",
        "prompt_tokens",
        "queue_time",
        "success",
        "ttft",
    )

    def __init__(self) -> None:
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.preemptions = 0
        self.prefix_queries = 0
        self.prefix_hits = 0
        self.success = dict.fromkeys(FINISH_REASONS, 0)
        self.ttft = Histogram(_TTFT_BUCKETS)
        self.itl = Histogram(_ITL_BUCKETS)
        self.e2e = Histogram(_REQUEST_BUCKETS)
        self.queue_time = Histogram(_REQUEST_BUCKETS)


class VllmCollector(Collector):
    """Renders :class:`EngineMetrics` plus live gauges under vLLM's names at scrape time.

    ``gauges`` returns ``(running, waiting, kv_usage)`` when called.
    """

    def __init__(
        self,
        model: str,
        metrics: EngineMetrics,
        gauges: Callable[[], tuple[int, int, float]],
    ) -> None:
        self._labels = ["model_name", "engine"]
        self._values = [model, "0"]
        self._metrics = metrics
        self._gauges = gauges

    def _gauge(self, name: str, doc: str, value: float) -> Metric:
        family = GaugeMetricFamily(name, doc, labels=self._labels)
        family.add_metric(self._values, value)
        return family

    def _counter(self, name: str, doc: str, value: float) -> Metric:
        family = CounterMetricFamily(name, doc, labels=self._labels)
        family.add_metric(self._values, value)
        return family

    def _histogram(self, name: str, doc: str, hist: Histogram) -> Metric:
        family = HistogramMetricFamily(name, doc, labels=self._labels)
        family.add_metric(self._values, hist.cumulative(), hist.total)
        return family

    def collect(self) -> Iterator[Metric]:
        m = self._metrics
        running, waiting, usage = self._gauges()
        gauges = (
            (
                "vllm:num_requests_running",
                "Number of requests in model execution batches.",
                running,
            ),
            ("vllm:num_requests_waiting", "Number of requests waiting to be processed.", waiting),
            ("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", usage),
            ("vllm:gpu_cache_usage_perc", "GPU KV-cache usage (V0 name).", usage),
        )
        for name, doc, value in gauges:
            yield self._gauge(name, doc, value)
        counters = (
            (
                "vllm:num_preemptions",
                "Cumulative number of preemption from the engine.",
                m.preemptions,
            ),
            ("vllm:prompt_tokens", "Number of prefill tokens processed.", m.prompt_tokens),
            (
                "vllm:generation_tokens",
                "Number of generation tokens processed.",
                m.generation_tokens,
            ),
            ("vllm:prefix_cache_queries", "Prefix cache queries, in tokens.", m.prefix_queries),
            ("vllm:prefix_cache_hits", "Prefix cache hits, in tokens.", m.prefix_hits),
        )
        for name, doc, value in counters:
            yield self._counter(name, doc, value)
        success = CounterMetricFamily(
            "vllm:request_success",
            "Count of successfully processed requests.",
            labels=[*self._labels, "finished_reason"],
        )
        for reason, count in m.success.items():
            success.add_metric([*self._values, reason], count)
        yield success
        histograms = (
            ("vllm:time_to_first_token_seconds", "Time to first token in seconds.", m.ttft),
            ("vllm:inter_token_latency_seconds", "Inter-token latency in seconds.", m.itl),
            ("vllm:time_per_output_token_seconds", "Time per output token (deprecated).", m.itl),
            ("vllm:e2e_request_latency_seconds", "End-to-end request latency.", m.e2e),
            ("vllm:request_queue_time_seconds", "Time spent waiting in the queue.", m.queue_time),
        )
        for name, doc, hist in histograms:
            yield self._histogram(name, doc, hist)


def render(registry: CollectorRegistry) -> bytes:
    """Prometheus text exposition of ``registry``."""
    return generate_latest(registry)
