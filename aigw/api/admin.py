"""Operator endpoints: live routing signals per deployment, and draining.

Behind ``auth.admin_key`` (``Authorization: Bearer <key>``) when one is configured.
"""

from __future__ import annotations

import asyncio
import hmac
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from aigw.api.routes import error_response
from aigw.errors import AuthenticationError, NotFoundError
from aigw.fleet.deployment import Deployment

if TYPE_CHECKING:
    from aigw.api.state import AppState

__all__ = ["list_deployments", "set_draining"]


def _authorized(request: Request) -> AppState | Response:
    state: AppState = request.app.state.aigw
    key = state.config.auth.admin_key
    if key is not None:
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), key.get_secret_value().encode()):
            return error_response(
                AuthenticationError("A valid admin key is required.", code="invalid_admin_key")
            )
    return state


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def describe(deployment: Deployment, now: float) -> dict[str, Any]:
    state = deployment.state
    engine = state.engine
    config = deployment.config
    return {
        "id": deployment.id,
        "model": deployment.model,
        "kind": "cloud" if config.is_cloud else "gpu",
        "base_url": config.base_url,
        "healthy": state.ejected_until <= now,
        "ejected_for_s": _round(max(0.0, state.ejected_until - now), 2),
        "draining": state.draining,
        "in_flight": state.in_flight,
        "requests": state.requests,
        "failures": state.failures,
        "consecutive_failures": state.consecutive_failures,
        "last_error": state.last_error,
        "error_rate": _round(state.errors.value),
        "ttft_ewma_s": _round(state.ttft.value),
        "tpot_ewma_s": _round(state.tpot.value),
        "latency_peak_ewma_s": _round(state.latency.value),
        "output_tokens_ewma": _round(state.output_tokens.value, 1),
        "prefill_s_per_token": _round(state.prefill_per_token.value, 6),
        "prefix_blocks_remembered": len(state.prefixes),
        "engine": None
        if engine is None
        else {
            "waiting": engine.waiting,
            "running": engine.running,
            "kv_usage": engine.kv_usage,
            "prefix_hit_rate": _round(engine.prefix_hit_rate),
            "adapters": sorted(engine.adapters),
            "age_s": _round(now - engine.scraped_at, 3),
            "stale": state.engine_stale,
        },
        "last_scores": {k: _round(v) for k, v in state.last_scores.items()},
    }


async def list_deployments(request: Request) -> Response:
    state = _authorized(request)
    if isinstance(state, Response):
        return state
    now = asyncio.get_running_loop().time()
    deployments = state.gateway.router.deployments.values()
    body = {"object": "list", "data": [describe(d, now) for d in deployments]}
    return Response(orjson.dumps(body), media_type="application/json")


async def set_draining(request: Request) -> Response:
    """POST /admin/deployments/{id}/drain or /undrain: stop or resume new traffic to it."""
    state = _authorized(request)
    if isinstance(state, Response):
        return state
    deployment = state.gateway.router.deployments.get(request.path_params["deployment"])
    action = request.path_params["action"]
    if deployment is None or action not in ("drain", "undrain"):
        return error_response(NotFoundError("No such deployment.", param="deployment"))
    deployment.state.draining = action == "drain"
    now = asyncio.get_running_loop().time()
    return Response(orjson.dumps(describe(deployment, now)), media_type="application/json")
