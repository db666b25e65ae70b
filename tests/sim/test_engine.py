"""The simulated engine, stepped by hand: each step's planned duration is recorded and the test
decides when the step ends, so batching, KV admission, preemption and the prefix cache are
checked deterministically without wall-clock waits."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from aigw.sim.engine import Engine, EngineConfig, EngineRequest, SeqState, Signal
from aigw.sim.metrics import EngineMetrics
from aigw.sim.profiles import BLOCK_SIZE, PROFILES, GpuProfile
from aigw.sim.text import Prompt

H100 = PROFILES["h100"]


class ManualSteps:
    """An engine ``sleep`` that parks every step until the test releases it."""

    def __init__(self) -> None:
        self.durations: list[float] = []
        self._arrived = asyncio.Event()
        self._release: asyncio.Future[None] | None = None

    async def sleep(self, seconds: float) -> None:
        self.durations.append(seconds)
        self._release = asyncio.get_running_loop().create_future()
        self._arrived.set()
        await self._release

    async def planned(self) -> float:
        """Wait until the engine has planned a step; its duration."""
        await asyncio.wait_for(self._arrived.wait(), 2)
        self._arrived.clear()
        return self.durations[-1]

    async def step(self) -> float:
        """Finish the current step and wait for the next one to be planned."""
        assert self._release is not None
        self._release.set_result(None)
        return await self.planned()

    async def finish(self) -> None:
        """Finish the current step; the engine may go idle afterwards."""
        assert self._release is not None
        self._release.set_result(None)
        # From release to its next await the engine runs without suspending, so a few loop
        # turns are enough for it to apply the step and plan the next one (or go idle).
        for _ in range(5):
            await asyncio.sleep(0)

    async def advance(self) -> bool:
        """Finish the current step; True if the engine planned another one."""
        await self.finish()
        if self._arrived.is_set():
            self._arrived.clear()
            return True
        return False


class Harness:
    def __init__(self, config: EngineConfig) -> None:
        self.steps = ManualSteps()
        self.metrics = EngineMetrics()
        self.engine = Engine(config, self.metrics, sleep=self.steps.sleep)

    def submit(
        self, tokens: int, max_new: int, hashes: tuple[int, ...] = (), per_token: bool = False
    ) -> EngineRequest:
        return self.engine.submit(Prompt(tokens, hashes), max_new, "length", Signal(per_token))


Factory = Callable[..., Harness]


@pytest.fixture
async def make() -> AsyncIterator[Factory]:
    """A factory of harnesses whose engine loops are cancelled at teardown."""
    tasks: list[asyncio.Task[None]] = []

    def factory(
        max_num_seqs: int = 8, num_gpu_blocks: int = 64, budget: int = 512, time_scale: float = 1.0
    ) -> Harness:
        config = EngineConfig(H100, max_num_seqs, num_gpu_blocks, budget, time_scale)
        harness = Harness(config)
        tasks.append(asyncio.get_running_loop().create_task(harness.engine.run()))
        return harness

    yield factory
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def test_step_time_model_is_linear_in_its_four_terms() -> None:
    p = GpuProfile("x", 1.0, 2.0, 3.0, 4.0, 1, 1, 1)
    assert p.step_seconds(0, 0, 0) == 1.0
    assert p.step_seconds(10, 2, 100) == 1.0 + 20.0 + 6.0 + 400.0
    h100, a100, l4 = PROFILES["h100"], PROFILES["a100"], PROFILES["l4"]
    batch32 = [p.step_seconds(0, 32, 32 * 1024) for p in (h100, a100, l4)]
    assert 0.015 <= batch32[0] <= 0.025
    assert batch32[0] < batch32[1] < batch32[2]
    assert h100.num_gpu_blocks > a100.num_gpu_blocks > l4.num_gpu_blocks


async def test_steps_cost_prefill_then_decode_times_slowdown_and_scale(make: Factory) -> None:
    h = make(time_scale=0.5)
    h.engine.slowdown = 2.0
    h.submit(tokens=100, max_new=3)
    h.submit(tokens=60, max_new=3)
    prefill = await h.steps.planned()
    assert prefill == pytest.approx(H100.step_seconds(160, 0, 0) * 2.0 * 0.5)
    decode = await h.steps.step()
    # After the first token each sequence decodes with its prompt plus one token of context.
    assert decode == pytest.approx(H100.step_seconds(0, 2, 101 + 61) * 2.0 * 0.5)


async def test_batch_is_capped_at_max_num_seqs_and_refills_fcfs(make: Factory) -> None:
    h = make(max_num_seqs=2)
    reqs = [h.submit(tokens=10, max_new=2) for _ in range(4)]
    await h.steps.planned()
    assert [r.state for r in reqs] == [SeqState.RUNNING] * 2 + [SeqState.WAITING] * 2
    assert len(h.engine.running) == 2 and len(h.engine.waiting) == 2
    await h.steps.step()  # first tokens
    await h.steps.step()  # second tokens: the first two finish; the others are admitted
    assert [r.state for r in reqs] == [SeqState.FINISHED] * 2 + [SeqState.RUNNING] * 2
    assert h.metrics.success["length"] == 2


async def test_long_prompt_prefill_is_chunked_by_the_token_budget(make: Factory) -> None:
    h = make(budget=64, num_gpu_blocks=64)
    req = h.submit(tokens=150, max_new=1)
    assert await h.steps.planned() == pytest.approx(H100.step_seconds(64, 0, 0))
    assert await h.steps.step() == pytest.approx(H100.step_seconds(64, 0, 0))
    assert await h.steps.step() == pytest.approx(H100.step_seconds(22, 0, 0))
    assert req.generated == 0
    await h.steps.finish()
    assert req.state is SeqState.FINISHED and req.generated == 1


async def test_admission_waits_until_kv_blocks_fit(make: Factory) -> None:
    h = make(num_gpu_blocks=4)
    first = h.submit(tokens=40, max_new=2)  # 3 blocks
    second = h.submit(tokens=40, max_new=2)  # 3 more do not fit
    await h.steps.planned()
    assert first.state is SeqState.RUNNING and second.state is SeqState.WAITING
    assert h.engine.kv.used == 3
    await h.steps.step()
    await h.steps.step()  # first finished, its blocks are free: second admitted
    assert [first.state, second.state] == [SeqState.FINISHED, SeqState.RUNNING]
    assert h.metrics.preemptions == 0


async def test_decode_growth_preempts_the_newest_and_both_still_finish(make: Factory) -> None:
    h = make(num_gpu_blocks=4)
    old = h.submit(tokens=16, max_new=40)  # grows to 4 blocks
    new = h.submit(tokens=16, max_new=40)
    await h.steps.planned()
    new_was_preempted = False
    while await h.steps.advance():
        assert old.state is not SeqState.WAITING  # the older sequence keeps its blocks
        new_was_preempted |= new.state is SeqState.WAITING
        assert h.engine.kv.used <= 4
    assert new_was_preempted and h.metrics.preemptions >= 1
    assert old.done and new.done
    assert old.generated == new.generated == 40
    assert h.engine.kv.used == 0


async def test_prefix_cache_hits_skip_prefill_of_shared_full_blocks(make: Factory) -> None:
    h = make()
    hashes = (11, 12, 13, 14)  # a 64-token prompt: four full blocks
    h.submit(tokens=64, max_new=1, hashes=hashes)
    assert await h.steps.planned() == pytest.approx(H100.step_seconds(64, 0, 0))
    await h.steps.finish()
    assert h.engine.kv.used == 0  # freed, but the blocks stay cached
    h.submit(tokens=64, max_new=1, hashes=hashes)
    # At most (64 - 1) // 16 = 3 blocks can hit: the last token is always recomputed.
    assert await h.steps.planned() == pytest.approx(H100.step_seconds(16, 0, 0))
    assert h.metrics.prefix_queries == 128
    assert h.metrics.prefix_hits == 3 * BLOCK_SIZE
    await h.steps.finish()
    h.submit(tokens=64, max_new=1, hashes=(21, 22, 23, 24))  # another prefix: no hit
    assert await h.steps.planned() == pytest.approx(H100.step_seconds(64, 0, 0))
    assert h.metrics.prefix_hits == 3 * BLOCK_SIZE


async def test_concurrent_same_prefix_shares_blocks(make: Factory) -> None:
    h = make()
    h.submit(tokens=64, max_new=5, hashes=(1, 2, 3, 4))
    await h.steps.planned()
    await h.steps.step()  # the first prompt's blocks are now published
    h.submit(tokens=64, max_new=5, hashes=(1, 2, 3, 4))
    await h.steps.step()
    # Four blocks for the first (plus one for decode growth) and one private block for the
    # second: its three cached blocks are shared, not copied.
    assert h.engine.kv.used == 4 + 1 + 1


async def test_abort_frees_blocks_at_once_from_batch_and_queue(make: Factory) -> None:
    h = make(max_num_seqs=1)
    running = h.submit(tokens=100, max_new=50, per_token=True)
    queued = h.submit(tokens=100, max_new=50)
    await h.steps.planned()
    assert h.engine.kv.used == 7
    assert h.engine.abort(running)  # mid-step
    assert h.engine.kv.used == 0 and not h.engine.running
    assert h.engine.abort(queued)
    assert not h.engine.waiting
    assert running.finish_reason == queued.finish_reason == "abort"
    assert h.metrics.success["abort"] == 2
    await h.steps.finish()
    assert running.generated == 0  # the step's output for an aborted sequence is dropped
    assert not h.engine.abort(running)  # already gone


async def test_signal_wakes_streaming_waiter_per_token_and_others_at_finish(make: Factory) -> None:
    h = make()
    streamed = h.submit(tokens=10, max_new=3, per_token=True)
    whole = h.submit(tokens=10, max_new=3)
    waits = [asyncio.ensure_future(r.signal.wait()) for r in (streamed, whole)]
    await h.steps.planned()
    await h.steps.step()
    assert waits[0].done() and not waits[1].done()
    await h.steps.step()
    await h.steps.finish()
    assert waits[1].done() and whole.state is SeqState.FINISHED


async def test_idle_engine_waits_without_stepping(make: Factory) -> None:
    h = make()
    for _ in range(20):
        await asyncio.sleep(0)
    assert h.steps.durations == [] and h.engine.steps == 0
    h.submit(tokens=10, max_new=1)
    await h.steps.planned()
    assert len(h.steps.durations) == 1


def test_submit_rejects_a_sequence_that_can_never_fit() -> None:
    config = EngineConfig(H100, 4, 2, 512)
    engine = Engine(config, EngineMetrics())
    assert engine.fits(32) and not engine.fits(33)
    with pytest.raises(ValueError):
        engine.submit(Prompt(20, ()), 13, "length", Signal(False))
