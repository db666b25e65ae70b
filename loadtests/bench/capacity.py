"""The fleet's capacity: every backend saturated directly (no gateway), closed loop.

Capacity is a property of the fleet and the workload, not of a routing policy, so it is
measured without the gateway: each backend gets its own closed loop of as many concurrent
streams as its profile's batch cap (``max_num_seqs``), fed with the workload's requests, and
the output tokens received per simulated second are counted after a warm-up. A cold
backend spends its first seconds prefilling a whole batch, so the warm-up covers that
(:func:`fill_seconds`: about 2.5 s for an h100 at 240 sequences of W1). Requests per second = tokens per second /
the workload's mean output length. W2's conversations stay on one backend each (the best
case for its prefix cache), so W2's capacity is the one an ideal affinity router could reach.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .client import HttpTarget, Outcome, StreamClient
from .fleet import Backend, Fleet, control_client
from .procs import self_cpu_seconds
from .runner import CpuUsage, Timing
from .workload import PlannedRequest, Schedule

__all__ = [
    "Capacity",
    "CapacityFileError",
    "fill_seconds",
    "load_capacities",
    "measure_capacity",
    "saturating_concurrency",
]


def saturating_concurrency(
    schedule: Schedule, profiles: Iterable[str], kv_fraction: float = 0.9
) -> dict[str, int]:
    """Streams per GPU profile: its batch cap (``max_num_seqs``), or fewer when that many
    of the workload's sequences would overfill its KV cache (a running sequence holds its
    prompt and, on average, half its output): past that point extra streams mostly add
    preemption (recompute) and lower the throughput, understating what the backend can do."""
    from aigw.sim.profiles import BLOCK_SIZE, get_profile

    per_sequence = schedule.mean_prompt + schedule.mean_output / 2
    out = {}
    for name in set(profiles):
        profile = get_profile(name)
        fits = int(kv_fraction * profile.num_gpu_blocks * BLOCK_SIZE / per_sequence)
        out[name] = max(1, min(profile.max_num_seqs, fits))
    return out


def fill_seconds(schedule: Schedule, concurrency: dict[str, int]) -> float:
    """Simulated seconds the slowest cold backend needs to prefill its first full batch."""
    from aigw.sim.profiles import get_profile

    worst = 0.0
    for name, streams in concurrency.items():
        profile = get_profile(name)
        tokens = streams * schedule.mean_prompt
        steps = tokens / profile.max_num_batched_tokens
        worst = max(worst, tokens * profile.prefill_token_s + steps * profile.step_base_s)
    return worst


@dataclass(frozen=True, slots=True)
class Capacity:
    workload: str
    tokens_per_s: float  # output tokens per simulated second, whole fleet, saturated
    per_backend: dict[str, float]  # output tokens per simulated second
    mean_output: float  # of the workload's requests
    requests_per_s: float  # tokens_per_s / mean_output
    cpu: CpuUsage


class CapacityFileError(ValueError):
    """A ``--capacity-from`` report that cannot stand in for this sweep's measurement."""


def load_capacities(
    path: Path, workloads: Iterable[str], profiles: Sequence[str], time_scale: float
) -> dict[str, Capacity]:
    """The capacities measured by an earlier sweep (its ``routing.json``), for ``workloads``.

    Each sweep measures capacity anew and derives every run's arrival rate from it; the
    measurement itself varies by a few percent between invocations, so two invocations
    (two commits, two variants) run different schedules unless they share one measurement.
    The earlier sweep must have used the same fleet and time scale.
    """
    try:
        report = json.loads(path.read_text())
        config, stored = report["config"], report["capacities"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CapacityFileError(f"{path}: not a routing benchmark report ({exc})") from None
    if list(config.get("profiles", [])) != list(profiles):
        raise CapacityFileError(
            f"{path}: measured on the fleet {config.get('profiles')}, this sweep's is "
            f"{list(profiles)}"
        )
    if config.get("time_scale") != time_scale:
        raise CapacityFileError(
            f"{path}: measured at time scale {config.get('time_scale')}, this sweep's is "
            f"{time_scale}"
        )
    out = {}
    for workload in sorted(set(workloads)):
        entry = stored.get(workload)
        if entry is None:
            raise CapacityFileError(f"{path}: no capacity measured for {workload}")
        try:
            out[workload] = Capacity(
                workload=workload,
                tokens_per_s=float(entry["tokens_per_s"]),
                per_backend={str(k): float(v) for k, v in entry["per_backend"].items()},
                mean_output=float(entry["mean_output"]),
                requests_per_s=float(entry["requests_per_s"]),
                cpu=CpuUsage(**entry["cpu"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CapacityFileError(f"{path}: capacity of {workload}: {exc}") from None
    return out


async def measure_capacity(
    fleet: Fleet,
    schedule: Schedule,
    concurrency: dict[str, int],
    timing: Timing,
    warmup: float,
    window: float,
) -> Capacity:
    """Saturate every backend with ``concurrency[profile]`` streams of the workload's
    requests for ``warmup + window`` simulated seconds; count tokens in the window."""
    loop = asyncio.get_running_loop()
    scale = timing.time_scale
    plans = schedule.requests
    async with control_client() as control:
        await fleet.reset(control)
        queues: list[list[PlannedRequest]] = [[] for _ in fleet.backends]
        for i, plan in enumerate(plans):
            key = plan.session if plan.session >= 0 else i
            queues[key % len(queues)].append(plan)
        clients: list[StreamClient] = []
        stopping = False

        def closed_loop(b: int, backend: Backend) -> Callable[..., None]:
            """A callback that starts backend ``b``'s next request (also as on_done)."""
            position = 0
            host, port = backend.url.removeprefix("http://").split(":")

            def next_request(_: Outcome | None = None) -> None:
                nonlocal position
                if stopping:
                    return
                plan = queues[b][position % len(queues[b])]
                position += 1
                client.start(position, plan.body, 1e9, 1e9)

            client = StreamClient(HttpTarget(host, int(port)), next_request)
            clients.append(client)
            return next_request

        cpu0 = (fleet.cpu_seconds(), self_cpu_seconds(), loop.time())
        for b, backend in enumerate(fleet.backends):
            start_one = closed_loop(b, backend)
            for _ in range(concurrency[backend.profile]):
                start_one()
        await asyncio.sleep(warmup * scale)
        before = [c.tokens for c in clients]
        await asyncio.sleep(window * scale)
        after = [c.tokens for c in clients]
        stopping = True
        for client in clients:
            client.close()
        cpu1 = (fleet.cpu_seconds(), self_cpu_seconds(), loop.time())
        await fleet.wait_idle(control, limit_s=30.0)
    per_backend = {
        backend.id: (a - b) / window
        for backend, a, b in zip(fleet.backends, after, before, strict=True)
    }
    total = sum(per_backend.values())
    return Capacity(
        workload=schedule.workload,
        tokens_per_s=total,
        per_backend=per_backend,
        mean_output=schedule.mean_output,
        requests_per_s=total / schedule.mean_output,
        cpu=CpuUsage(cpu1[2] - cpu0[2], cpu1[0] - cpu0[0], 0.0, cpu1[1] - cpu0[1]),
    )
