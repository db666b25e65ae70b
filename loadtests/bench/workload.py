"""Seeded request schedules: arrival processes, ShareGPT-like lengths and three workloads.

Everything here is deterministic given the seed, and nothing depends on how the system under
test behaves (an open loop): a schedule is a list of :class:`PlannedRequest` with arrival times
in *simulated* seconds and ready-to-send JSON bodies.

Lengths (tokens as the simulator counts them: 4 bytes of the chat template each) are clipped
log-normals whose location is solved so that the *clipped* mean is the target, e.g. prompts
mean 160 (sigma 1.1, 4..4096) and outputs mean 340 (sigma 0.9, 4..1024) for ShareGPT-like
traffic: a median well below the mean and a heavy right tail. Every request asks for exactly
its output length (``max_tokens`` with vLLM's ``ignore_eos``).

Workloads:

* **W1** - independent requests, no shared prefixes (each prompt opens with a unique tag).
* **W2** - prefix-heavy chat: 4 system prompts of 300-1000 tokens (Zipf popularity) shared
  by every user; conversations of 2-12 turns (mean ~6) that re-send their whole history each
  turn (the previous reply is stood in for by filler of its length: the engine's prefix cache
  only ever holds prompt blocks, so the reply's text does not matter). A conversation's next
  turn is ready 1 + Exp(3) s after its previous one; each arrival continues the conversation
  that has been ready longest, or opens a new one. :func:`prefix_profile` says how much of
  the prompt tokens are shared system prompt and how many an ideal affinity router could
  serve from cache.
* **W3** - mixed: 80% short chat turns (prompt mean 80) and 20% long-document requests
  (prompt mean 2500, up to 6000 tokens, output mean 200): head-of-line blocking by prefill.

Arrivals: Poisson (exponential gaps) or Gamma gaps with a coefficient of variation (CV 3 is
bursty: shape 1/9, so most gaps are tiny and a few are very long).
"""

from __future__ import annotations

import bisect
import heapq
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import orjson

__all__ = [
    "ARRIVALS",
    "WORKLOADS",
    "LengthDist",
    "PlannedRequest",
    "Priming",
    "Schedule",
    "arrival_times",
    "build_schedule",
    "prefix_profile",
]

ARRIVALS = ("poisson", "gamma")
WORKLOADS = ("W1", "W2", "W3")
BYTES_PER_TOKEN = 4  # the simulator's token model (aigw.sim.text)
_ROLE_OVERHEAD = {"user": 10, "system": 12, "assistant": 15}  # "<|role|>\n" + "\n" in bytes


@dataclass(frozen=True, slots=True)
class PlannedRequest:
    at: float  # simulated seconds after the start of the arrivals
    body: bytes  # the JSON body, ready to send
    prompt_tokens: int
    output_tokens: int
    session: int  # conversation id in W2, -1 otherwise


@dataclass(frozen=True, slots=True)
class Schedule:
    workload: str
    arrival: str
    rate: float  # requests per simulated second
    requests: tuple[PlannedRequest, ...]

    @property
    def mean_output(self) -> float:
        return sum(r.output_tokens for r in self.requests) / max(1, len(self.requests))

    @property
    def mean_prompt(self) -> float:
        return sum(r.prompt_tokens for r in self.requests) / max(1, len(self.requests))


# -- lengths ----------------------------------------------------------------------------------


def _phi(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def _clipped_mean(mu: float, sigma: float, lo: float, hi: float) -> float:
    """E[min(max(X, lo), hi)] for X ~ LogNormal(mu, sigma)."""
    a = (math.log(lo) - mu) / sigma
    b = (math.log(hi) - mu) / sigma
    middle = math.exp(mu + sigma * sigma / 2) * (_phi(b - sigma) - _phi(a - sigma))
    return lo * _phi(a) + middle + hi * (1.0 - _phi(b))


@dataclass(frozen=True, slots=True)
class LengthDist:
    """A log-normal clipped to [lo, hi] whose clipped mean is ``mean``."""

    mean: float
    sigma: float
    lo: int
    hi: int

    def location(self) -> float:
        low, high = math.log(self.lo) - 10, math.log(self.hi) + 10
        for _ in range(100):  # the clipped mean grows with mu: bisection
            mid = (low + high) / 2
            if _clipped_mean(mid, self.sigma, self.lo, self.hi) < self.mean:
                low = mid
            else:
                high = mid
        return (low + high) / 2

    def sampler(self, rng: random.Random) -> Callable[[], int]:
        mu = self.location()
        sigma, lo, hi = self.sigma, self.lo, self.hi
        return lambda: min(hi, max(lo, round(rng.lognormvariate(mu, sigma))))


SHAREGPT_PROMPT = LengthDist(160, 1.1, 4, 4096)
SHAREGPT_OUTPUT = LengthDist(340, 0.9, 4, 1024)


# -- arrivals ---------------------------------------------------------------------------------


def arrival_times(
    kind: str, rate: float, start: float, end: float, rng: random.Random, cv: float = 3.0
) -> Iterator[float]:
    """Arrival times in [start, end) at ``rate`` per second: Poisson, or Gamma gaps of CV ``cv``."""
    if kind == "poisson":

        def gap() -> float:
            return rng.expovariate(rate)

    elif kind == "gamma":
        shape = 1.0 / (cv * cv)

        def gap() -> float:
            return rng.gammavariate(shape, 1.0 / (rate * shape))

    else:
        raise ValueError(f"unknown arrival process {kind!r}; expected one of {ARRIVALS}")
    t = start + gap()
    while t < end:
        yield t
        t += gap()


# -- text -------------------------------------------------------------------------------------


class _Text:
    """Filler text cut from one seeded random string; ``unique`` heads defeat prefix sharing."""

    def __init__(self, rng: random.Random, size: int = 1 << 16) -> None:
        words = [
            "".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 9)))
            for _ in range(4096)
        ]
        text = " ".join(rng.choices(words, k=size // 5))
        self._base = (text * (size // max(1, len(text)) + 2))[: size * 2]
        self._rng = rng

    def filler(self, chars: int) -> str:
        chars = max(0, chars)
        start = self._rng.randrange(len(self._base) // 2)
        out = self._base[start : start + chars]
        while len(out) < chars:
            out += self._base[: chars - len(out)]
        return out

    def message(self, tag: str, tokens: int, role: str = "user") -> str:
        """Content such that the chat-template bytes of the message are ``tokens`` tokens."""
        chars = tokens * BYTES_PER_TOKEN - _ROLE_OVERHEAD[role] - len(tag)
        return tag + self.filler(chars)


def _body(messages: list[dict[str, str]], output_tokens: int, model: str) -> bytes:
    return orjson.dumps(
        {
            "model": model,
            "messages": messages,
            "max_tokens": output_tokens,
            "ignore_eos": True,
            "stream": True,
        }
    )


def _prompt_tokens(messages: list[dict[str, str]]) -> int:
    data = sum(len(m["content"]) + _ROLE_OVERHEAD[m["role"]] for m in messages)
    return -(-data // BYTES_PER_TOKEN)


# -- workloads --------------------------------------------------------------------------------


def _w1(times: list[float], salt: str, rng: random.Random, model: str) -> list[PlannedRequest]:
    text = _Text(rng)
    prompt, output = SHAREGPT_PROMPT.sampler(rng), SHAREGPT_OUTPUT.sampler(rng)
    out = []
    for i, at in enumerate(times):
        messages = [{"role": "user", "content": text.message(f"[{salt}:{i}] ", prompt())}]
        n = output()
        out.append(PlannedRequest(at, _body(messages, n, model), _prompt_tokens(messages), n, -1))
    return out


def _w3(times: list[float], salt: str, rng: random.Random, model: str) -> list[PlannedRequest]:
    text = _Text(rng)
    short_p, short_o = LengthDist(80, 1.0, 4, 1024).sampler(rng), SHAREGPT_OUTPUT.sampler(rng)
    long_p, long_o = (
        LengthDist(2500, 0.5, 800, 6000).sampler(rng),
        LengthDist(200, 0.8, 4, 1024).sampler(rng),
    )
    out = []
    for i, at in enumerate(times):
        is_long = rng.random() < 0.2
        p, n = (long_p(), long_o()) if is_long else (short_p(), short_o())
        messages = [{"role": "user", "content": text.message(f"[{salt}:{i}] ", p)}]
        out.append(PlannedRequest(at, _body(messages, n, model), _prompt_tokens(messages), n, -1))
    return out


# A conversation ends before its history passes this many tokens, so that the longest turn
# (history + a user message of at most 1024 + an output of at most 1024) fits max_model_len
# 8192 and an l4's 16384-token KV cache.
_W2_MAX_HISTORY = 6000


@dataclass(slots=True)
class _Conversation:
    ident: int
    messages: list[dict[str, str]]
    turns_left: int


def _w2(times: list[float], salt: str, rng: random.Random, model: str) -> list[PlannedRequest]:
    text = _Text(rng)
    system_lengths = [rng.randint(300, 1000) for _ in range(4)]
    systems = [
        text.message(f"[{salt}:system {k}] ", n, "system") for k, n in enumerate(system_lengths)
    ]
    weights = [1.0 / (k + 1) for k in range(len(systems))]  # Zipf popularity
    cumulative = [sum(weights[: k + 1]) for k in range(len(weights))]
    user = LengthDist(160, 1.1, 4, 1024).sampler(rng)
    output = SHAREGPT_OUTPUT.sampler(rng)
    ready: list[tuple[float, int, _Conversation]] = []  # (ready at, id, conversation)
    out: list[PlannedRequest] = []
    next_id = 0
    for at in times:
        if ready and ready[0][0] <= at:
            _, _, conv = heapq.heappop(ready)
        else:
            k = bisect.bisect_left(cumulative, rng.random() * cumulative[-1])
            turns = min(12, 2 + int(rng.expovariate(1 / 4.0)))  # 2 to 12, mean about 6
            conv = _Conversation(next_id, [{"role": "system", "content": systems[k]}], turns)
            next_id += 1
        tag = f"[{salt}:c{conv.ident}:t{len(conv.messages) // 2}] "
        conv.messages.append({"role": "user", "content": text.message(tag, user())})
        n = output()
        messages = list(conv.messages)
        out.append(
            PlannedRequest(at, _body(messages, n, model), _prompt_tokens(messages), n, conv.ident)
        )
        conv.turns_left -= 1
        if conv.turns_left > 0 and _prompt_tokens(messages) + n <= _W2_MAX_HISTORY:
            conv.messages.append({"role": "assistant", "content": text.message("", n, "assistant")})
            # Compressed time: the next turn comes 1 + Exp(3) s after this one, whether or not
            # the reply has finished streaming, so that conversations reach several turns
            # within a run of ~20 s. The engine caches prompt blocks only, so what the next
            # turn can reuse (this turn's prompt) is the same either way.
            heapq.heappush(ready, (at + 1.0 + rng.expovariate(1 / 3.0), conv.ident, conv))
    return out


_BUILDERS = {"W1": _w1, "W2": _w2, "W3": _w3}


def prefix_profile(schedule: Schedule, since: float = 0.0) -> tuple[float, float]:
    """For requests arriving at or after ``since``: the share of prompt tokens that are a
    shared system prompt, and the share an ideal router (every conversation on one backend,
    unbounded cache) could serve from cache (the longer of the system prompt and the
    conversation's previous prompt). Both 0 for workloads without conversations."""
    total = system = reusable = 0
    previous: dict[int, int] = {}
    for plan in sorted(schedule.requests, key=lambda r: r.at):
        if plan.session < 0:
            continue
        messages = orjson.loads(plan.body)["messages"]
        shared = _prompt_tokens(messages[:1]) if messages[0]["role"] == "system" else 0
        if plan.at >= since:
            total += plan.prompt_tokens
            system += shared
            reusable += max(shared, previous.get(plan.session, 0))
        previous[plan.session] = plan.prompt_tokens
    return (system / total, reusable / total) if total else (0.0, 0.0)


@dataclass(frozen=True, slots=True)
class Priming:
    """Start a run near its steady state instead of from an idle fleet.

    The workload's arrivals are also drawn for ``history`` seconds *before* time 0; a request
    that arrived ``age`` seconds before 0 would still be decoding at 0 if its output exceeds
    ``age / tpot`` tokens, so it is sent in the first ``spread`` seconds asking for just the
    remaining tokens. The fleet then starts with about as many sequences in flight, with about
    the right mix of remaining lengths, as steady state would have (exactly so when the real
    time per output token is ``tpot``); the warm-up that follows absorbs the difference.
    Without it the output rate needs the longest request's lifetime (~30 s) to ramp up.
    """

    history: float = 32.0
    tpot: float = 0.03
    spread: float = 1.0


def _primed(
    history: list[PlannedRequest], priming: Priming, rng: random.Random
) -> list[PlannedRequest]:
    out = []
    for plan in history:
        remaining = plan.output_tokens - int(-plan.at / priming.tpot)
        if remaining < 1:
            continue
        body = orjson.loads(plan.body)
        body["max_tokens"] = remaining
        at = rng.uniform(0.0, priming.spread)
        out.append(
            PlannedRequest(at, orjson.dumps(body), plan.prompt_tokens, remaining, plan.session)
        )
    return out


def build_schedule(
    workload: str,
    arrival: str,
    rate: float,
    duration: float,
    seed: int,
    model: str,
    salt: str,
    priming: Priming | None = None,
) -> Schedule:
    """The requests arriving in [0, duration) simulated seconds at ``rate`` per second, plus
    the priming requests (sent in the first ``priming.spread`` seconds) when asked.

    ``salt`` goes into every prompt's first bytes so that separate runs never share cached
    prefixes (the fleet's KV caches outlive a run). Sorted by arrival time.
    """
    if workload not in _BUILDERS:
        raise ValueError(f"unknown workload {workload!r}; expected one of {WORKLOADS}")
    rng = random.Random(f"{seed}:{workload}:{arrival}")
    start = -priming.history if priming is not None else 0.0
    times = list(arrival_times(arrival, rate, start, duration, rng))
    requests = _BUILDERS[workload](times, salt, rng, model)
    if priming is not None:
        history = [r for r in requests if r.at < 0]
        requests = [r for r in requests if r.at >= 0] + _primed(history, priming, rng)
        requests.sort(key=lambda r: r.at)
    return Schedule(workload, arrival, rate, tuple(requests))
