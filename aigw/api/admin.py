"""Operator endpoints: live routing signals per deployment, and draining.

Behind ``auth.admin_key`` (``Authorization: Bearer <key>``); disabled (403) without one.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from aigw.api.routes import error_response
from aigw.errors import GatewayError, NotFoundError
from aigw.fleet.deployment import Deployment

if TYPE_CHECKING:
    from aigw.api.state import AppState

__all__ = ["list_deployments", "set_draining"]


def _authorized(request: Request) -> AppState | Response:
    """The app state, or the error response: 403 when no admin key is configured (the admin
    API is then disabled, never open) or a client key is used, 401 for a missing/wrong key."""
    state: AppState = request.app.state.aigw
    raw = request.headers.get("authorization")
    try:
        state.gateway.auth.check_admin(raw.encode("latin-1") if raw is not None else None)
    except GatewayError as exc:
        return error_response(exc)
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
        "drain_rate_rps": _round(state.completion_rate.value, 3),  # engine finishes per second
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
