"""Settings of one simulated backend, and the ``aigw fake-backend`` command-line flags.

Durations of the simulated GPU (engine steps) are multiplied by ``time_scale``; the fault
knobs ``slow_start`` and ``scrape_delay`` are wall-clock seconds and are *not* scaled, because
tests state them as real waits.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields, replace
from typing import Any

from aigw.sim.profiles import PROFILES, get_profile

__all__ = ["BackendSettings", "Faults", "add_arguments", "faults_with", "settings_from_args"]


@dataclass(frozen=True, slots=True)
class Faults:
    """Fault-injection knobs; every rate is a probability drawn per request from the app's RNG.

    * ``error_rate``: answer HTTP ``error_status`` with an OpenAI-shaped error body.
    * ``hang_rate``: accept the request and never answer until the client disconnects.
    * ``die_mid_stream_rate``: for streamed requests, drop the connection abruptly (no final
      chunk, no ``[DONE]``) after ``die_after_tokens`` tokens.
    * ``slow_start``: seconds after startup during which ``/health`` and the API answer 503.
    * ``slowdown``: multiplies every step time (a straggler GPU).
    """

    error_rate: float = 0.0
    error_status: int = 500
    hang_rate: float = 0.0
    die_mid_stream_rate: float = 0.0
    die_after_tokens: int = 3
    slow_start: float = 0.0
    slowdown: float = 1.0

    def __post_init__(self) -> None:
        for name in ("error_rate", "hang_rate", "die_mid_stream_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"faults.{name} must be within [0, 1], got {value}")
        if not 400 <= self.error_status <= 599:
            status = self.error_status
            raise ValueError(f"faults.error_status must be an HTTP error status, got {status}")
        if self.die_after_tokens < 0:
            raise ValueError("faults.die_after_tokens must be >= 0")
        if self.slow_start < 0:
            raise ValueError("faults.slow_start must be >= 0")
        if self.slowdown <= 0:
            raise ValueError("faults.slowdown must be > 0")


@dataclass(frozen=True, slots=True)
class BackendSettings:
    """Everything one simulated vLLM instance needs; ``None`` capacities take the profile's."""

    model: str = "fake-llama"
    profile: str = "h100"
    max_num_seqs: int | None = None
    num_gpu_blocks: int | None = None
    max_model_len: int = 8192
    time_scale: float = 1.0
    seed: int = 0
    api_key: str | None = None
    scrape_delay: float = 0.0
    faults: Faults = field(default_factory=Faults)

    def __post_init__(self) -> None:
        get_profile(self.profile)  # raises ValueError naming the known profiles
        if self.max_num_seqs is not None and self.max_num_seqs < 1:
            raise ValueError("max_num_seqs must be >= 1")
        if self.num_gpu_blocks is not None and self.num_gpu_blocks < 1:
            raise ValueError("num_gpu_blocks must be >= 1")
        if self.max_model_len < 1:
            raise ValueError("max_model_len must be >= 1")
        if self.time_scale < 0:
            raise ValueError("time_scale must be >= 0")
        if self.scrape_delay < 0:
            raise ValueError("scrape_delay must be >= 0")


def faults_with(faults: Faults, changes: dict[str, Any]) -> Faults:
    """``faults`` with ``changes`` applied; ValueError on unknown fields or ill-typed values."""
    known = [f.name for f in fields(Faults)]
    clean: dict[str, Any] = {}
    for name, value in changes.items():
        if name not in known:
            raise ValueError(f"unknown fault {name!r}; expected one of: {', '.join(known)}")
        want_int = name in ("error_status", "die_after_tokens")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"fault {name!r} must be a number")
        if want_int and not isinstance(value, int):
            raise ValueError(f"fault {name!r} must be an integer")
        clean[name] = value if want_int else float(value)
    return replace(faults, **clean)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the fake-backend flags (everything but ``--host``/``--port``) to ``parser``."""
    d = BackendSettings()
    f = Faults()
    g = parser.add_argument_group("simulated backend")
    g.add_argument("--model", default=d.model, help="served model name (default: %(default)s)")
    g.add_argument("--profile", choices=sorted(PROFILES), default=d.profile, help="GPU profile")
    g.add_argument("--max-num-seqs", type=int, default=None, help="batch cap (default: profile's)")
    g.add_argument("--num-gpu-blocks", type=int, default=None, help="KV blocks of 16 tokens")
    g.add_argument("--max-model-len", type=int, default=d.max_model_len, help="context length")
    g.add_argument("--time-scale", type=float, default=d.time_scale, help="multiplies step times")
    g.add_argument("--seed", type=int, default=d.seed, help="seed of the app's RNG")
    g.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1")
    g.add_argument("--scrape-delay", type=float, default=d.scrape_delay, help="/metrics delay (s)")
    h = parser.add_argument_group("fault injection")
    h.add_argument("--error-rate", type=float, default=f.error_rate)
    h.add_argument("--error-status", type=int, default=f.error_status)
    h.add_argument("--hang-rate", type=float, default=f.hang_rate)
    h.add_argument("--die-mid-stream-rate", type=float, default=f.die_mid_stream_rate)
    h.add_argument("--die-after-tokens", type=int, default=f.die_after_tokens)
    h.add_argument("--slow-start", type=float, default=f.slow_start, help="seconds of 503")
    h.add_argument("--slowdown", type=float, default=f.slowdown, help="multiplies step times")


def settings_from_args(ns: argparse.Namespace) -> BackendSettings:
    """The settings named by parsed flags; ValueError when a value is out of range."""
    faults = Faults(
        error_rate=ns.error_rate,
        error_status=ns.error_status,
        hang_rate=ns.hang_rate,
        die_mid_stream_rate=ns.die_mid_stream_rate,
        die_after_tokens=ns.die_after_tokens,
        slow_start=ns.slow_start,
        slowdown=ns.slowdown,
    )
    return BackendSettings(
        model=ns.model,
        profile=ns.profile,
        max_num_seqs=ns.max_num_seqs,
        num_gpu_blocks=ns.num_gpu_blocks,
        max_model_len=ns.max_model_len,
        time_scale=ns.time_scale,
        seed=ns.seed,
        api_key=ns.api_key,
        scrape_delay=ns.scrape_delay,
        faults=faults,
    )
