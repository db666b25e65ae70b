"""What request handlers may use: one object built in the app's lifespan, on ``app.state``."""

from __future__ import annotations

from dataclasses import dataclass

from aigw.config import GatewayConfig
from aigw.gateway import Gateway

__all__ = ["AppState"]


@dataclass(frozen=True, slots=True)
class AppState:
    """Everything a request handler may use, built once in the lifespan."""

    config: GatewayConfig
    gateway: Gateway
    started_at: int
