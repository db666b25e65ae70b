"""A simulated vLLM V1 engine: iteration-level continuous batching over a paged KV cache.

The model, one step at a time (one step = one forward pass of the whole batch):

1. **Running sequences first**, oldest first. A sequence still in prefill gets a chunk of its
   remaining prompt from the step's token budget (``max_num_batched_tokens``: chunked prefill,
   so a long prompt is spread over several steps instead of stalling every decode). A decoding
   sequence costs one token of budget and may need one more KV block; when none is free the
   newest running sequence is **preempted** (its blocks are freed, it goes back to the front of
   the queue and its prompt plus the tokens it already produced are recomputed later, as vLLM
   V1's recompute preemption does) until the block fits or the sequence preempted itself.
2. **Then admission**, first come first served, while ``running < max_num_seqs``, budget is
   left, no preemption happened in this step, and the head's KV blocks fit (the head blocks the
   queue when they do not, as in vLLM). Admission looks the prompt up in the prefix cache
   (:mod:`aigw.sim.kvcache`): cached full blocks are shared and their tokens skip prefill.
3. The step lasts ``profile.step_seconds(prefill tokens, decode sequences, decode context
   tokens) x slowdown x time_scale`` (see :mod:`aigw.sim.profiles`), awaited with
   ``asyncio.sleep``.
4. **Outputs**: a sequence whose prefill completed in this step emits its first token; every
   decoding sequence emits one token. A sequence that reached its target length finishes and
   frees its blocks at once. Handlers learn about tokens through a :class:`Signal` (a future
   they await), never by polling.

The loop sleeps on an ``asyncio.Event`` while there is nothing to do: no periodic wake-ups.
Per step the work is O(running + admitted); aborts remove a sequence from the queue or the batch
and free its blocks immediately, even in the middle of a step (its output is then dropped).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aigw.sim.kvcache import KvCache
from aigw.sim.metrics import EngineMetrics
from aigw.sim.profiles import BLOCK_SIZE, GpuProfile
from aigw.sim.text import Prompt

__all__ = ["Engine", "EngineConfig", "EngineRequest", "SeqState", "Signal"]

log = logging.getLogger("aigw.sim.engine")


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Capacities and timing of one engine, resolved from a profile and its overrides."""

    profile: GpuProfile
    max_num_seqs: int
    num_gpu_blocks: int
    max_num_batched_tokens: int
    time_scale: float = 1.0


class SeqState(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"
    ABORTED = "aborted"


class Signal:
    """Wakes the one handler waiting on a group of sequences (the ``n`` choices of a request).

    The engine calls :meth:`notify` on every token when ``per_token`` (streaming) and always on
    finish or abort. A notify with nobody waiting is dropped, which is safe because a handler
    checks its sequences before it waits and the engine cannot run in between.
    """

    __slots__ = ("_waiter", "per_token")

    def __init__(self, per_token: bool) -> None:
        self.per_token = per_token
        self._waiter: asyncio.Future[None] | None = None

    def notify(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiter = waiter
        try:
            await waiter
        finally:
            self._waiter = None


class EngineRequest:
    """One sequence inside the engine. Mutable on purpose: the step loop owns and updates it;
    handlers only read ``generated``, ``state``, ``finish_reason`` and ``cached_tokens`` (the
    prompt tokens its first admission found in the prefix cache)."""

    __slots__ = (
        "arrival",
        "block_hashes",
        "cached_tokens",
        "context",
        "finish_reason",
        "first_token_at",
        "generated",
        "hashed",
        "last_token_at",
        "length_reason",
        "max_new_tokens",
        "plain",
        "prefill_left",
        "prompt_tokens",
        "registered",
        "request_id",
        "scheduled_at",
        "signal",
        "state",
    )

    def __init__(
        self,
        request_id: int,
        prompt: Prompt,
        max_new_tokens: int,
        length_reason: str,
        signal: Signal,
        arrival: float,
    ) -> None:
        self.request_id = request_id
        self.prompt_tokens = prompt.tokens
        self.block_hashes = prompt.block_hashes
        self.max_new_tokens = max_new_tokens
        self.length_reason = length_reason  # finish reason when max_new_tokens is reached
        self.signal = signal
        self.arrival = arrival
        self.state = SeqState.WAITING
        self.finish_reason: str | None = None
        self.generated = 0
        self.cached_tokens = 0
        self.context = 0  # tokens to (re)compute when last admitted
        self.prefill_left = 0
        self.hashed: list[int] = []  # shared prefix blocks held
        self.plain = 0  # private blocks held
        self.registered = 0  # prompt blocks already published to the prefix cache
        self.scheduled_at: float | None = None
        self.first_token_at: float | None = None
        self.last_token_at = 0.0

    @property
    def done(self) -> bool:
        return self.state is SeqState.FINISHED or self.state is SeqState.ABORTED


@dataclass(slots=True)
class _Plan:
    prefills: list[tuple[EngineRequest, int]]
    decodes: list[EngineRequest]
    seconds: float


def _blocks(tokens: int) -> int:
    return -(-tokens // BLOCK_SIZE)


class Engine:
    """Continuous-batching engine; :meth:`run` is its step loop (one asyncio task per app)."""

    def __init__(
        self,
        config: EngineConfig,
        metrics: EngineMetrics,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.slowdown = 1.0
        self.kv = KvCache(config.num_gpu_blocks)
        self.running: dict[int, EngineRequest] = {}  # insertion order = admission order
        self.waiting: OrderedDict[int, EngineRequest] = OrderedDict()
        self.steps = 0
        self._clock = clock
        self._sleep = sleep
        self._next_id = 0
        self._wake = asyncio.Event()

    def fits(self, total_tokens: int) -> bool:
        """Whether one sequence of ``total_tokens`` (prompt + output) fits the KV cache alone."""
        return _blocks(total_tokens) <= self.config.num_gpu_blocks

    def submit(
        self, prompt: Prompt, max_new_tokens: int, length_reason: str, signal: Signal
    ) -> EngineRequest:
        """Queue a sequence that will produce exactly ``max_new_tokens`` (≥ 1) tokens and then
        finish with ``length_reason`` ("stop" or "length"). ValueError if it can never fit."""
        if max_new_tokens < 1 or not self.fits(prompt.tokens + max_new_tokens):
            raise ValueError("sequence does not fit the KV cache")
        self._next_id += 1
        req = EngineRequest(
            self._next_id, prompt, max_new_tokens, length_reason, signal, self._clock()
        )
        self.waiting[req.request_id] = req
        self._wake.set()
        return req

    def abort(self, req: EngineRequest) -> bool:
        """Remove ``req`` from the queue or the batch now and free its blocks; False if it had
        already finished."""
        if req.state is SeqState.WAITING:
            del self.waiting[req.request_id]
        elif req.state is SeqState.RUNNING:
            del self.running[req.request_id]
            self._release(req)
        else:
            return False
        req.state = SeqState.ABORTED
        req.finish_reason = "abort"
        self.metrics.success["abort"] += 1
        req.signal.notify()
        return True

    def abort_all(self) -> None:
        for req in [*self.waiting.values(), *self.running.values()]:
            self.abort(req)

    async def run(self) -> None:
        """Step until cancelled; idle waits on an event set by :meth:`submit`."""
        while True:
            try:
                plan = self._schedule()
                if plan is None:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                await self._sleep(plan.seconds * self.slowdown * self.config.time_scale)
                self._apply(plan)
            except Exception:
                # A bug here would otherwise hang every handler: fail them all and go on.
                log.exception("simulated engine step failed; aborting all requests")
                self.abort_all()

    # -- scheduling ---------------------------------------------------------------------

    def _schedule(self) -> _Plan | None:
        budget = self.config.max_num_batched_tokens
        prefills: list[tuple[EngineRequest, int]] = []
        decodes: list[EngineRequest] = []
        prefill_tokens = context_tokens = 0
        preemptions_before = self.metrics.preemptions
        for req in list(self.running.values()):
            if req.state is not SeqState.RUNNING or budget == 0:
                continue  # preempted earlier in this loop, or no budget left
            if req.prefill_left:
                chunk = min(req.prefill_left, budget)
                budget -= chunk
                prefill_tokens += chunk
                prefills.append((req, chunk))
            elif self._grow(req):
                budget -= 1
                context_tokens += req.prompt_tokens + req.generated
                decodes.append(req)
        # As in vLLM, a step that had to preempt admits nobody: the cache is already short.
        # (Unless nothing else runs, so that the loop can never stall with work queued.)
        hold = self.metrics.preemptions != preemptions_before and bool(prefills or decodes)
        limit = self.config.max_num_seqs
        while self.waiting and budget and not hold and len(self.running) < limit:
            head = next(iter(self.waiting.values()))
            chunk = self._admit(head, budget)
            if chunk == 0:
                break  # head-of-line blocking: FCFS never skips a request that does not fit
            budget -= chunk
            prefill_tokens += chunk
            prefills.append((head, chunk))
        if not prefills and not decodes:
            return None
        seconds = self.config.profile.step_seconds(prefill_tokens, len(decodes), context_tokens)
        return _Plan(prefills, decodes, seconds)

    def _grow(self, req: EngineRequest) -> bool:
        """Make room for ``req``'s next token, preempting newest-first; False if ``req`` itself
        was preempted."""
        missing = _blocks(req.prompt_tokens + req.generated) - len(req.hashed) - req.plain
        if missing <= 0:
            return True
        while not self.kv.allocate(missing):
            victim = next(reversed(self.running.values()))
            self._preempt(victim)
            if victim is req:
                return False
        req.plain += missing
        return True

    def _preempt(self, req: EngineRequest) -> None:
        del self.running[req.request_id]
        self._release(req)
        req.state = SeqState.WAITING
        self.waiting[req.request_id] = req
        self.waiting.move_to_end(req.request_id, last=False)
        self.metrics.preemptions += 1

    def _admit(self, req: EngineRequest, budget: int) -> int:
        """Admit the queue head if its blocks fit; the prefill chunk scheduled (0: not admitted)."""
        context = req.prompt_tokens + req.generated
        # Like vLLM, at least the last token is recomputed so that there are logits to sample.
        limit = min(len(req.block_hashes), (context - 1) // BLOCK_SIZE)
        matched, idle = self.kv.match(req.block_hashes, limit)
        fresh = _blocks(context) - matched
        if fresh > self.kv.free - idle:
            return 0
        del self.waiting[req.request_id]
        shared = req.block_hashes[:matched]
        self.kv.acquire(shared)
        self.kv.allocate(fresh)
        req.hashed = list(shared)
        req.plain = fresh
        req.registered = matched
        hit_tokens = matched * BLOCK_SIZE
        self.metrics.prefix_queries += context
        self.metrics.prefix_hits += hit_tokens
        req.context = context
        req.prefill_left = context - hit_tokens
        req.state = SeqState.RUNNING
        self.running[req.request_id] = req
        if req.scheduled_at is None:
            req.cached_tokens = hit_tokens
            req.scheduled_at = self._clock()
            self.metrics.queue_time.observe(req.scheduled_at - req.arrival)
        return min(req.prefill_left, budget)

    # -- outputs -------------------------------------------------------------------------

    def _apply(self, plan: _Plan) -> None:
        self.steps += 1
        now = self._clock()
        emitted = 0
        for req, chunk in plan.prefills:
            if req.state is not SeqState.RUNNING:
                continue  # aborted while the step ran
            req.prefill_left -= chunk
            self._register(req)
            if req.prefill_left == 0:
                self._emit(req, now)
                emitted += 1
        for req in plan.decodes:
            if req.state is SeqState.RUNNING:
                self._emit(req, now)
                emitted += 1
        self.metrics.generation_tokens += emitted

    def _register(self, req: EngineRequest) -> None:
        """Publish the prompt blocks whose prefill is now complete to the prefix cache."""
        full = min(len(req.block_hashes), (req.context - req.prefill_left) // BLOCK_SIZE)
        for index in range(req.registered, full):
            block_hash = req.block_hashes[index]
            if self.kv.register(block_hash):
                req.hashed.append(block_hash)
                req.plain -= 1
        req.registered = max(req.registered, full)

    def _emit(self, req: EngineRequest, now: float) -> None:
        req.generated += 1
        metrics = self.metrics
        if req.first_token_at is None:
            req.first_token_at = now
            metrics.ttft.observe(now - req.arrival)
            metrics.prompt_tokens += req.prompt_tokens
        else:
            metrics.itl.observe(now - req.last_token_at)
        req.last_token_at = now
        if req.generated >= req.max_new_tokens:
            self._finish(req, now)
        elif req.signal.per_token:
            req.signal.notify()

    def _finish(self, req: EngineRequest, now: float) -> None:
        del self.running[req.request_id]
        self._release(req)
        req.state = SeqState.FINISHED
        req.finish_reason = req.length_reason
        self.metrics.success[req.length_reason] += 1
        self.metrics.e2e.observe(now - req.arrival)
        req.signal.notify()

    def _release(self, req: EngineRequest) -> None:
        self.kv.release(req.hashed, req.plain)
        req.hashed = []
        req.plain = 0
        req.registered = 0
