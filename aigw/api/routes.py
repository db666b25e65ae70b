"""Small endpoints: model list, liveness, readiness, and OpenAI-shaped errors for the rest."""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from aigw.errors import GatewayError, MethodNotAllowedError, NotFoundError
from aigw.types import Principal

if TYPE_CHECKING:
    from aigw.api.state import AppState

__all__ = [
    "admin_state",
    "error_response",
    "healthz",
    "http_exception",
    "list_models",
    "metrics",
    "readyz",
    "retrieve_model",
]


def _json(data: object, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def error_response(error: GatewayError) -> Response:
    response = _json(error.to_dict(), error.status)
    response.headers.update(error.headers)
    return response


def _state(request: Request) -> AppState:
    state: AppState = request.app.state.aigw
    return state


def _model_card(name: str, created: int) -> dict[str, object]:
    return {"id": name, "object": "model", "created": created, "owned_by": "aigw"}


def _principal(request: Request, state: AppState) -> Principal:
    raw = request.headers.get("authorization")
    return state.gateway.auth.authenticate(raw.encode("latin-1") if raw is not None else None)


async def list_models(request: Request) -> Response:
    """The models this key may use (every model on an open gateway)."""
    state = _state(request)
    try:
        principal = _principal(request, state)
    except GatewayError as exc:
        return error_response(exc)
    names = state.gateway.auth.visible_models(principal, (m.name for m in state.config.models))
    return _json({"object": "list", "data": [_model_card(n, state.started_at) for n in names]})


async def retrieve_model(request: Request) -> Response:
    state = _state(request)
    try:
        principal = _principal(request, state)
    except GatewayError as exc:
        return error_response(exc)
    name = request.path_params["model"]
    if state.config.model(name) is not None and not principal.may_use(name):
        try:  # the same answer as the proxy endpoints give this key for this model
            state.gateway.auth.authorize_model(principal, name)
        except GatewayError as exc:
            return error_response(exc)
    if state.config.model(name) is None:
        return error_response(
            NotFoundError(
                f"The model `{name}` does not exist.", param="model", code="model_not_found"
            )
        )
    return _json(_model_card(name, state.started_at))


async def healthz(request: Request) -> Response:
    """Liveness: the process answers."""
    return _json({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Readiness: config loaded and every model has a deployment that can take traffic
    (not ejected, not draining). 503 ``draining`` once the process is shutting down, so
    that load balancers stop sending before the listener closes."""
    state = _state(request)
    if state.lifecycle.draining:
        return _json({"status": "draining"}, 503)
    ready = state.gateway.router.ready_models()
    unready = sorted(name for name, ok in ready.items() if not ok)
    if unready:
        return _json({"status": "unready", "models_without_healthy_deployment": unready}, 503)
    return _json({"status": "ready", "models": sorted(ready)})


def admin_state(request: Request) -> AppState | Response:
    """The app state, or the error response: 403 when no admin key is configured (the admin
    API is then disabled, never open) or a client key is used, 401 for a missing/wrong key."""
    state: AppState = request.app.state.aigw
    raw = request.headers.get("authorization")
    try:
        state.gateway.auth.check_admin(raw.encode("latin-1") if raw is not None else None)
    except GatewayError as exc:
        return error_response(exc)
    return state


async def metrics(request: Request) -> Response:
    """Prometheus text; behind the admin key when ``metrics.require_admin_key``."""
    state = _state(request)
    if state.config.metrics.require_admin_key:
        checked = admin_state(request)
        if isinstance(checked, Response):
            return checked
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)


async def http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return error_response(
            NotFoundError(f"Unknown route: {request.method} {request.url.path}", code="unknown_url")
        )
    if exc.status_code == 405:
        # RFC 9110: a 405 names the methods the path has. Starlette's set is unordered.
        allow = (exc.headers or {}).get("Allow", "")
        methods = ", ".join(sorted(m.strip() for m in allow.split(",") if m.strip()))
        return error_response(
            MethodNotAllowedError(
                f"Method {request.method} is not allowed on {request.url.path}.",
                code="method_not_allowed",
                headers={"Allow": methods},
            )
        )
    error = GatewayError(exc.detail, headers=dict(exc.headers or {}))
    error.status = exc.status_code
    return error_response(error)
