"""Cost of one routing decision per preset: ``python -m aigw.policies.bench``.

Builds one model with 16 deployments in a realistic state (12 GPU engines with fresh scrapes,
warm EWMAs and thousands of remembered prefix blocks, 4 priced cloud APIs), then times
``policy.pick`` for a chat request with a 40-block prompt prefix, an affinity key and a hash
key. Prints microseconds per decision (best of several rounds) for every preset.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Sequence

import aiohttp

from aigw.config import GatewayConfig, ModelConfig
from aigw.fleet.deployment import Deployment, DeploymentState
from aigw.fleet.prefix import PrefixLRU
from aigw.fleet.signals import EngineSnapshot
from aigw.policies import POLICIES, Policy, make_policy
from aigw.providers import make_provider
from aigw.types import Endpoint, RouteContext

__all__ = ["build_fleet", "main", "time_policy"]

GPUS = 12
CLOUDS = 4
NOW = 1000.0


def build_fleet(rng: random.Random) -> tuple[ModelConfig, list[Deployment], RouteContext]:
    """The benchmark's model, its deployments with live-looking state, and a request."""
    specs: list[dict[str, object]] = [
        {
            "id": f"gpu-{i}",
            "base_url": f"http://10.0.0.{i}:8000/v1",
            "metrics_url": f"http://10.0.0.{i}:8000/metrics",
            "model": "llama",
            "max_concurrency": 256,
            "context_window": 32768,
            "weight": 1 + i % 3,
            # h100-like and l4-like decode step lines: auto's throughput scorer runs in full
            "decode_step": {"base_ms": 6.0, "per_seq_ms": 0.32}
            if i % 2
            else {"base_ms": 45.0, "per_seq_ms": 1.4},
        }
        for i in range(GPUS)
    ]
    specs += [
        {
            "id": f"cloud-{i}",
            "base_url": f"https://api{i}.example.com/v1",
            "model": "llama",
            "cost": {"input_per_mtok": 0.2 + i * 0.1, "output_per_mtok": 0.6 + i * 0.2},
        }
        for i in range(CLOUDS)
    ]
    raw = {"models": [{"name": "m", "slo_ttft_ms": 800, "deployments": specs}]}
    model = GatewayConfig.model_validate(raw).models[0]
    blocks = tuple(rng.getrandbits(64) for _ in range(40))
    deployments = []
    for dep in model.deployments:
        state = DeploymentState(prefixes=PrefixLRU(16384))
        for _ in range(200):  # other conversations' prefixes
            state.prefixes.add([rng.getrandbits(64) for _ in range(10)])
        state.prefixes.add(blocks[: rng.randrange(len(blocks))])
        for _ in range(20):
            state.observe_first_byte(rng.uniform(0.05, 0.6), NOW - rng.uniform(0, 5))
            state.tpot.add(rng.uniform(0.01, 0.04))
            state.output_tokens.add(rng.uniform(100, 400))
            state.prefill_per_token.add(rng.uniform(0.1, 0.3), 1000)
            state.errors.add(1.0 if rng.random() < 0.02 else 0.0)
        state.in_flight = rng.randrange(0, 30)
        if dep.metrics_url:
            state.engine = EngineSnapshot(
                scraped_at=NOW - 0.5,
                waiting=float(rng.choice([0, 0, 0, 2, 5])),
                running=float(rng.randrange(4, 40)),
                kv_usage=rng.uniform(0.2, 0.95),
                in_flight_at_scrape=max(0, state.in_flight - rng.randrange(0, 4)),
            )
            state.engine_stale = False
        deployments.append(
            Deployment(
                id=dep.id,
                model=model.name,
                config=dep,
                provider=make_provider(dep),
                timeout=aiohttp.ClientTimeout(total=dep.timeouts.total),
                state=state,
            )
        )
    ctx = RouteContext(
        endpoint=Endpoint.CHAT,
        model="m",
        body={},
        now=NOW,
        prompt_tokens=2500,
        max_tokens=512,
        prefix_blocks=blocks,
        affinity_key=blocks[3],
        hash_key="user-42",
    )
    return model, deployments, ctx


def time_policy(
    policy: Policy, candidates: Sequence[Deployment], ctx: RouteContext, picks: int, rounds: int
) -> float:
    """Best-of-``rounds`` microseconds per ``policy.pick``."""
    best = float("inf")
    pick = policy.pick
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(picks):
            pick(candidates, ctx)
        best = min(best, (time.perf_counter() - start) / picks)
    return best * 1e6


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--picks", type=int, default=5000, help="decisions per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    rng = random.Random(7)
    model, deployments, ctx = build_fleet(rng)
    print(f"{len(deployments)} deployments ({GPUS} GPU, {CLOUDS} cloud), us per decision:")
    for name in POLICIES:
        policy = make_policy(name, model, random.Random(1))
        policy.pick(deployments, ctx)  # warm caches (hash rings, rendezvous ids)
        micros = time_policy(policy, deployments, ctx, args.picks, args.rounds)
        print(f"  {name:<18} {micros:7.1f}")


if __name__ == "__main__":
    main()
