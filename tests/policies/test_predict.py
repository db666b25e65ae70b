from __future__ import annotations

import pytest

from aigw.fleet.deployment import Deployment
from aigw.policies.kit import ScorerKit
from aigw.policies.load import estimate_load
from aigw.policies.predict import TtftPredictor, TtftScorer, predict_ttft
from aigw.policies.tuning import Tuning
from tests.policies.conftest import cloud, fleet, gpu, gpus, request, scrape

T = Tuning()
PROMPT = 1000  # x 0.2 ms/token = 0.2 s prefill by default
IDLE = 0.03 + 0.2  # one step (tpot) + prefill
SERVICE = 256 * 0.03  # output tokens x tpot: one request's decode time


def predict(d: Deployment, overlap: float = 0.0, prompt: int = PROMPT) -> float:
    return predict_ttft(d, estimate_load(d, T), overlap, prompt, T, d.config.is_cloud)


def test_idle_engine_is_one_step_plus_prefill() -> None:
    _, [d] = gpus(1)
    scrape(d)
    assert predict(d) == pytest.approx(IDLE)
    assert predict(d, prompt=4000) == pytest.approx(0.03 + 0.8)


def test_running_batch_slows_the_prefill_a_little() -> None:
    _, [d] = gpus(1)
    scrape(d, running=64, kv=0.5)
    assert predict(d) == pytest.approx(IDLE * (1 + 64 / 512))


def test_queue_wait_from_the_waiting_count_and_drain_rate() -> None:
    _, [d] = gpus(1)
    scrape(d, running=8, waiting=4)  # a queue and no KV reading: a full batch
    # 4 ahead + this one beyond a batch of 8 that frees 8 slots per SERVICE seconds
    expected = 5 * SERVICE / 8 + IDLE * (1 + 8 / 512)
    assert predict(d) == pytest.approx(expected)


def test_a_saturated_engine_drains_at_its_measured_completion_rate() -> None:
    _, [d] = gpus(1)
    d.state.completion_rate.add(2.0)  # requests/s finished between the last scrapes
    scrape(d, running=8, waiting=4)
    assert predict(d) == pytest.approx(5 / 2.0 + IDLE * (1 + 8 / 512))
    _, [hung] = gpus(1)
    hung.state.completion_rate.add(0.0)  # finished nothing: a finite but very long wait
    scrape(hung, running=8, waiting=4)
    assert predict(hung) == pytest.approx(5 / 0.01 + IDLE * (1 + 8 / 512))
    # no queue at the scrape: the rate measured then is arrival, not capacity -> the model
    scrape(d, running=8, kv=0.8)
    d.state.in_flight = 4  # 12 now, capacity 10
    assert predict(d) > 2 * SERVICE / 10


def test_live_ewmas_replace_the_cold_defaults() -> None:
    _, [d] = gpus(1)
    d.state.in_flight = 5  # everything on the engine is the gateway's own
    scrape(d, running=4, waiting=1)
    d.state.tpot.add(0.01)
    d.state.output_tokens.add(100)
    d.state.prefill_per_token.add(0.1, 1000)  # 0.1 s of prefill for 1,000 tokens
    expected = 2 * (100 * 0.01) / 4 + (0.01 + 0.1) * (1 + 4 / 512)
    assert predict(d) == pytest.approx(expected)


def test_requests_the_gateway_did_not_send_count_at_the_default_length() -> None:
    _, [d] = gpus(1)
    d.state.output_tokens.add(2)  # the gateway's own requests are tiny...
    d.state.in_flight = 1
    scrape(d, running=2, waiting=8)  # ...but 9 of the 10 on the engine are someone else's
    service = (2 * 1 + 256 * 9) / 10 * 0.03
    assert predict(d) == pytest.approx(9 * service / 2 + IDLE * (1 + 2 / 512))


def test_gateway_dispatches_since_the_scrape_create_a_queue() -> None:
    _, [d] = gpus(1)
    scrape(d, running=8, kv=0.8)  # room for 8 / 0.8 = 10
    assert predict(d) == pytest.approx(IDLE * (1 + 8 / 512))
    d.state.in_flight += 3  # 11 now: 10 running, 1 waiting
    assert predict(d) > 2 * SERVICE / 10


def test_kv_pressure_penalty_near_a_full_cache() -> None:
    _, [d] = gpus(1)
    scrape(d, running=10, kv=0.95)  # capacity 11: no queue yet, but the cache is nearly full
    assert predict(d) == pytest.approx(0.25 + IDLE * (1 + 10 / 512))
    scrape(d, running=10, kv=0.85)
    assert predict(d) == pytest.approx(IDLE * (1 + 10 / 512))


def test_prefix_overlap_saves_prefill() -> None:
    _, [d] = gpus(1)
    scrape(d)
    assert predict(d, overlap=0.5) == pytest.approx(0.03 + 0.1)
    assert predict(d, overlap=1.0) == pytest.approx(0.03)


def test_stale_metrics_use_ttft_ewma_and_in_flight() -> None:
    _, [d] = gpus(1)
    scrape(d, waiting=50, running=8)  # an old scrape that would predict a long queue
    d.state.engine_stale = True
    d.state.in_flight = 8
    assert predict(d) == pytest.approx(0.2 * (1 + 8 / 32))  # cold: the prefill estimate
    d.state.ttft.add(0.4)
    assert predict(d) == pytest.approx(0.4 * (1 + 8 / 32))
    assert predict(d, overlap=0.5) == pytest.approx((0.4 - 0.1) * (1 + 8 / 32))


def test_cloud_uses_observed_ttft_and_no_queue() -> None:
    _, [c] = fleet(cloud("c"))
    c.state.in_flight = 100
    assert predict(c) == pytest.approx(0.8)  # cold default
    c.state.ttft.add(0.3)
    assert predict(c) == pytest.approx(0.3)


def test_error_rate_multiplies_by_expected_tries() -> None:
    _, deps = fleet(cloud("c"), gpu("g"))
    for d in deps:
        d.state.errors.add(0.5)
    scrape(deps[1])
    assert predict(deps[0]) == pytest.approx(0.8 * 2)
    assert predict(deps[1]) == pytest.approx(IDLE * 2)


def test_predictor_and_scorer_over_candidates() -> None:
    _, deps = fleet(gpu("idle"), gpu("queued"), cloud("api"))
    scrape(deps[0])
    scrape(deps[1], running=8, waiting=8)
    kit = ScorerKit.build(T)
    predictions = TtftPredictor(kit).predict(deps, request(prompt_tokens=PROMPT))
    assert predictions[0] == pytest.approx(IDLE)
    assert predictions[1] > 5 and predictions[2] == pytest.approx(0.8)
    scores = TtftScorer(kit)(deps, request(prompt_tokens=PROMPT))
    assert scores[0] == 1.0 and scores[2] == pytest.approx((IDLE + 1e-3) / 0.801)
