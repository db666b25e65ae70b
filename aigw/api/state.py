"""What request handlers may use: one object built in the app's lifespan, on ``app.state``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aigw.config import GatewayConfig
from aigw.gateway import Gateway
from aigw.routing.history import FleetHistory
from aigw.serving import Lifecycle
from aigw.telemetry.metrics import GatewayMetrics
from aigw.telemetry.records import RequestObservers

if TYPE_CHECKING:
    from aigw.telemetry.tracing import Tracing

__all__ = ["AppState", "ReloadReport"]


@dataclass(frozen=True, slots=True)
class ReloadReport:
    """What a config reload changed: public models after it, deployment ids by fate
    (``replaced``: same id, another upstream, so fresh state)."""

    models: tuple[str, ...]
    added: tuple[str, ...]
    removed: tuple[str, ...]
    kept: tuple[str, ...]
    replaced: tuple[str, ...]

    def summary(self) -> str:
        parts = [f"{len(self.models)} models"]
        for name in ("added", "removed", "kept", "replaced"):
            ids = getattr(self, name)
            if ids:
                parts.append(f"{name} {', '.join(ids)}")
        return "; ".join(parts)

    def to_dict(self) -> dict[str, object]:
        return {
            "status": "reloaded",
            "models": list(self.models),
            "deployments": {
                "added": list(self.added),
                "removed": list(self.removed),
                "kept": list(self.kept),
                "replaced": list(self.replaced),
            },
        }


@dataclass(frozen=True, slots=True)
class AppState:
    """Everything a request handler may use, built once in the lifespan."""

    config: GatewayConfig
    gateway: Gateway
    started_at: int
    requests: RequestObservers  # told of every proxied request once it is over
    metrics: GatewayMetrics
    history: FleetHistory | None = None  # recent per-deployment windows, for /dashboard
    tracing: Tracing | None = None  # None: tracing is off
    lifecycle: Lifecycle = field(default_factory=Lifecycle)  # draining; requests to cut
    # Re-read the config file and swap it in (raises ConfigError); None: no file to re-read.
    reload: Callable[[], Awaitable[ReloadReport]] | None = None
