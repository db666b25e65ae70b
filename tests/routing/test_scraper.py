from __future__ import annotations

import random

import httpx
import pytest
import respx

from aigw.configfile import parse_config
from aigw.routing.router import Router
from aigw.routing.scraper import MetricsScraper, parse_engine_metrics

VLLM_V1 = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="llama"} 12.0
vllm:num_requests_running{engine="1",model_name="llama"} 3.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="llama"} 4.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="llama"} 0.62
# TYPE vllm:prefix_cache_queries counter
vllm:prefix_cache_queries_total{engine="0",model_name="llama"} 1000.0
# TYPE vllm:prefix_cache_hits counter
vllm:prefix_cache_hits_total{engine="0",model_name="llama"} 250.0
# TYPE vllm:lora_requests_info gauge
vllm:lora_requests_info{max_lora="4",running_lora_adapters="sql,chat",waiting_lora_adapters=""} 1.7e9
vllm:lora_requests_info{max_lora="4",running_lora_adapters="old",waiting_lora_adapters=""} 1.6e9
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{le="0.1",model_name="llama"} 5.0
vllm:time_to_first_token_seconds_count{model_name="llama"} 9.0
"""

VLLM_V0 = """\
vllm:num_requests_running{model_name="m"} 2.0
vllm:num_requests_waiting{model_name="m"} 0.0
vllm:gpu_cache_usage_perc{model_name="m"} 0.25
"""

SGLANG = """\
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{model_name="m"} 7.0
# TYPE sglang:num_queue_reqs gauge
sglang:num_queue_reqs{model_name="m"} 2.0
# TYPE sglang:token_usage gauge
sglang:token_usage{model_name="m"} 0.4
"""

TGI = """\
# TYPE tgi_queue_size gauge
tgi_queue_size 5
# TYPE tgi_batch_current_size gauge
tgi_batch_current_size 8
"""


def test_vllm_v1_is_summed_over_engines() -> None:
    snapshot = parse_engine_metrics(VLLM_V1, now=5.0, in_flight=3)
    assert (snapshot.running, snapshot.waiting) == (15.0, 4.0)
    assert snapshot.kv_usage == pytest.approx(0.62)
    assert snapshot.prefix_hit_rate == pytest.approx(0.25)
    assert snapshot.adapters == {"sql", "chat"}  # the newest lora_requests_info sample
    assert (snapshot.scraped_at, snapshot.in_flight_at_scrape) == (5.0, 3)


@pytest.mark.parametrize(
    ("page", "running", "waiting", "kv"),
    [(VLLM_V0, 2.0, 0.0, 0.25), (SGLANG, 7.0, 2.0, 0.4), (TGI, 8.0, 5.0, None)],
    ids=["vllm-v0", "sglang", "tgi"],
)
def test_other_engines(page: str, running: float, waiting: float, kv: float | None) -> None:
    snapshot = parse_engine_metrics(page, now=0.0)
    assert (snapshot.running, snapshot.waiting, snapshot.kv_usage) == (running, waiting, kv)
    assert snapshot.prefix_hit_rate is None


def make_router() -> Router:
    config = parse_config(
        {
            "models": [
                {
                    "name": "m",
                    "deployments": [
                        {
                            "id": "gpu",
                            "base_url": "http://engine.test/v1",
                            "model": "m",
                            "metrics_url": "http://engine.test/metrics",
                        },
                        {"id": "cloud", "base_url": "http://cloud.test/v1", "model": "m"},
                    ],
                }
            ]
        }
    )
    return Router(config, lambda: 0.0, random.Random(0))


@respx.mock
async def test_scrape_once_stores_a_snapshot_and_survives_failures() -> None:
    router = make_router()
    gpu = router.deployments["gpu"]
    gpu.state.in_flight = 2
    route = respx.get("http://engine.test/metrics").mock(
        return_value=httpx.Response(200, text=VLLM_V1)
    )
    async with httpx.AsyncClient() as client:
        scraper = MetricsScraper(
            router.deployments.values(), client, 1.0, random.Random(0), lambda: 0.0
        )
        assert await scraper.scrape_once(gpu)
        assert gpu.state.engine is not None and gpu.state.engine.waiting == 4.0
        assert gpu.state.engine.in_flight_at_scrape == 2
        route.mock(return_value=httpx.Response(500))
        assert not await scraper.scrape_once(gpu)
        route.mock(side_effect=httpx.ConnectError("refused"))
        assert not await scraper.scrape_once(gpu)
        assert gpu.state.engine.waiting == 4.0  # the last good snapshot stays, and ages


async def test_only_deployments_with_metrics_url_are_scraped() -> None:
    router = make_router()
    async with httpx.AsyncClient() as client:
        scraper = MetricsScraper(
            router.deployments.values(), client, 1.0, random.Random(0), lambda: 0.0
        )
        assert [d.id for d in scraper._targets] == ["gpu"]


@respx.mock
async def test_engine_drain_rate_from_finished_counter() -> None:
    router = make_router()
    gpu = router.deployments["gpu"]
    clock = iter([10.0, 12.0, 13.0])
    pages = iter(
        f'vllm:num_requests_waiting{{model_name="m"}} 1\n'
        f'vllm:request_success_total{{finished_reason="stop",model_name="m"}} {stop}\n'
        f'vllm:request_success_total{{finished_reason="length",model_name="m"}} {length}\n'
        for stop, length in [(10, 0), (14, 6), (0, 1)]  # the third: a restarted engine
    )
    respx.get("http://engine.test/metrics").mock(
        side_effect=lambda _: httpx.Response(200, text=next(pages))
    )
    async with httpx.AsyncClient() as client:
        scraper = MetricsScraper(
            router.deployments.values(), client, 1.0, random.Random(0), lambda: next(clock)
        )
        for _ in range(3):
            await scraper.scrape_once(gpu)
    assert gpu.state.completion_rate.value == pytest.approx(5.0)  # 10 finished in 2 s
    assert gpu.state.completion_rate.count == 1  # the counter reset was not a sample


@respx.mock
async def test_batch_limit_is_learnt_from_a_batch_pinned_while_requests_wait() -> None:
    """(running, waiting) per scrape: a queue seen once (a request that arrived just before
    the scrape) or a batch that changes size (KV-bound) teaches nothing; the same batch
    size over two scrapes with a queue through both is the engine's limit."""
    router = make_router()
    gpu = router.deployments["gpu"]
    scrapes = [(5, 1), (9, 0), (12, 2), (14, 3), (16, 2), (16, 4), (10, 1), (10, 0)]
    pages = iter(
        f'vllm:num_requests_running{{model_name="m"}} {running}\n'
        f'vllm:num_requests_waiting{{model_name="m"}} {waiting}\n'
        for running, waiting in scrapes
    )
    respx.get("http://engine.test/metrics").mock(
        side_effect=lambda _: httpx.Response(200, text=next(pages))
    )
    learnt = []
    async with httpx.AsyncClient() as client:
        scraper = MetricsScraper(
            router.deployments.values(), client, 1.0, random.Random(0), lambda: 0.0
        )
        for _ in scrapes:
            await scraper.scrape_once(gpu)
            learnt.append(gpu.state.batch_limit)
    assert learnt == [None, None, None, None, None, 16.0, 16.0, 16.0]
