"""What request handlers may use: one object built in the app's lifespan, on ``app.state``."""

from __future__ import annotations

from dataclasses import dataclass, field

from aigw.config import GatewayConfig
from aigw.gateway import Gateway
from aigw.routing.history import FleetHistory
from aigw.serving import Lifecycle
from aigw.telemetry.metrics import GatewayMetrics
from aigw.telemetry.records import RequestObservers
from aigw.telemetry.tracing import Tracing

__all__ = ["AppState"]


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
