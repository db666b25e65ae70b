"""The autoscaling signal: aigw_model_saturation_ratio from engine snapshots and the queue."""

from __future__ import annotations

import random
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from aigw.configfile import parse_config
from aigw.fleet.signals import EngineSnapshot
from aigw.policies import MODEL_AWARE_FILTERS
from aigw.routing.router import Router
from aigw.telemetry.metrics import GatewayMetrics

NOW = 100.0


def _dep(id: str, **extra: Any) -> dict[str, Any]:
    return {"id": id, "base_url": f"http://127.0.0.1:9/{id}/v1", "model": "x", **extra}


def _metrics(queue: int) -> tuple[GatewayMetrics, Router]:
    config = parse_config(
        {
            "models": [
                {
                    "name": "m",
                    "deployments": [
                        _dep("gpu-1", metrics_url="http://127.0.0.1:9/1/metrics"),
                        _dep("gpu-2", metrics_url="http://127.0.0.1:9/2/metrics"),
                        _dep("capped", max_concurrency=4),
                        _dep("cloud"),
                    ],
                }
            ]
        }
    )
    router = Router(config, lambda: NOW, random.Random(0), MODEL_AWARE_FILTERS)
    metrics = GatewayMetrics(
        list(router.deployments.values()), {"m": "auto"}, lambda model: queue, lambda: NOW
    )
    return metrics, router


def _busy(router: Router, id: str, running: float, waiting: float, kv: float) -> None:
    state = router.deployments[id].state
    state.engine = EngineSnapshot(scraped_at=NOW, waiting=waiting, running=running, kv_usage=kv)
    state.engine_stale = False


def _gauges(metrics: GatewayMetrics) -> dict[tuple[str, str], float]:
    found = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            if sample.name in ("aigw_model_saturation_ratio", "aigw_deployment_capacity_estimate"):
                label = sample.labels.get("model") or sample.labels["deployment"]
                found[(sample.name, label)] = sample.value
    return found


def test_saturation_is_demand_over_estimated_capacity() -> None:
    metrics, router = _metrics(queue=6)
    _busy(router, "gpu-1", running=20, waiting=10, kv=0.5)  # holds ~40 sequences
    _busy(router, "gpu-2", running=8, waiting=0, kv=0.4)  # holds ~20
    router.deployments["capped"].state.in_flight = 2  # max_concurrency 4
    found = _gauges(metrics)
    assert found[("aigw_deployment_capacity_estimate", "gpu-1")] == 40
    assert found[("aigw_deployment_capacity_estimate", "gpu-2")] == 20
    assert found[("aigw_deployment_capacity_estimate", "capped")] == 4
    assert ("aigw_deployment_capacity_estimate", "cloud") not in found  # a cloud API scales itself
    # (30 + 8 + 2 in the deployments, 6 queued) / (40 + 20 + 4)
    assert found[("aigw_model_saturation_ratio", "m")] == (30 + 8 + 2 + 6) / 64


def test_the_batch_limit_caps_the_kv_estimate() -> None:
    """16 running at 40% KV fill looks like 40 slots, but an engine limited to 16 sequences
    (learnt from its metrics, or configured as max_num_seqs) holds 16."""
    metrics, router = _metrics(queue=0)
    _busy(router, "gpu-1", running=16, waiting=0, kv=0.4)
    _busy(router, "gpu-2", running=16, waiting=0, kv=0.4)
    router.deployments["gpu-2"].state.batch_limit = 16.0
    found = _gauges(metrics)
    assert found[("aigw_deployment_capacity_estimate", "gpu-1")] == 40
    assert found[("aigw_deployment_capacity_estimate", "gpu-2")] == 16


def test_an_idle_engine_keeps_its_last_capacity_and_stale_ones_drop_out() -> None:
    metrics, router = _metrics(queue=0)
    _busy(router, "gpu-1", running=10, waiting=0, kv=0.25)
    _gauges(metrics)
    _busy(router, "gpu-1", running=0, waiting=0, kv=0.0)  # idle: no new estimate
    router.deployments["gpu-2"].state.engine_stale = True  # never seen busy, and stale
    found = _gauges(metrics)
    assert found[("aigw_deployment_capacity_estimate", "gpu-1")] == 40
    assert ("aigw_deployment_capacity_estimate", "gpu-2") not in found
    assert found[("aigw_model_saturation_ratio", "m")] == 0 / (40 + 4)


def test_the_autoscaling_examples_query_metrics_the_gateway_exports() -> None:
    import re
    from pathlib import Path

    import yaml

    metrics, _ = _metrics(queue=0)
    exported = {f.name for f in text_string_to_metric_families(metrics.render().decode())}
    examples = sorted((Path(__file__).parents[2] / "configs" / "autoscaling").glob("*.yaml"))
    assert examples
    for path in examples:
        text = path.read_text()
        assert yaml.safe_load(text)["kind"]
        used = set(re.findall(r"\baigw_[a-z_]+", text))
        assert used and used <= exported, (path.name, used - exported)
