"""The operator dashboard: one static page, and the JSON it polls.

``GET /dashboard`` serves a page with no data in it (a browser navigation cannot send the
admin key), so it needs no key; it answers 403 like every admin endpoint when the admin API
is disabled. The page asks for the admin key, keeps it in ``sessionStorage`` and polls
``GET /admin/dashboard.json`` (admin key, ``Authorization: Bearer``) every two seconds.

The page is assembled once, when the routes are built, from ``static/dashboard.{html,css,js}``
(package data, no build step, nothing from a CDN): the CSS and JS go inline, and the
``Content-Security-Policy`` allows exactly those two by their sha256 hashes and nothing else
(no other script, no frames, fetches to this origin only).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
from importlib import resources
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from aigw.api.admin import describe
from aigw.api.routes import admin_state, error_response
from aigw.errors import GatewayError, PermissionDeniedError
from aigw.fleet.deployment import Deployment
from aigw.limits import QuotaUse
from aigw.routing.history import BUCKET_S, BUCKETS, Window

if TYPE_CHECKING:
    from aigw.api.state import AppState

__all__ = [
    "DASHBOARD_DATA_PATH",
    "DASHBOARD_PATH",
    "DASHBOARD_SCHEMA",
    "dashboard_routes",
    "snapshot",
]

DASHBOARD_PATH = "/dashboard"
DASHBOARD_DATA_PATH = "/admin/dashboard.json"


_NUMBER = {"type": ["number", "null"]}
_INT = {"type": "integer"}


def _columns(**kinds: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": list(kinds),
        "properties": {name: {"type": "array", "items": kind} for name, kind in kinds.items()},
    }


def _object(properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": list(properties), "properties": properties}


# The JSON schema of GET /admin/dashboard.json (the OpenAPI document names it ``Dashboard``);
# a deployment is ``Deployment`` of GET /admin/deployments plus the fields below.
DASHBOARD_SCHEMA: dict[str, Any] = _object(
    {
        "object": {"const": "dashboard"},
        "time": {"type": "number"},
        "uptime_s": _INT,
        "bucket_s": {"type": "number"},
        "window_s": {"type": "number"},
        "state_backend": {"enum": ["memory", "redis"]},
        "models": {
            "type": "array",
            "items": _object(
                {
                    "name": {"type": "string"},
                    "ready": {"type": "boolean"},
                    "queue_depth": _INT,
                    "deployments": {"type": "array", "items": {"type": "string"}},
                    "fallbacks": {"type": "array", "items": {"type": "string"}},
                }
            ),
        },
        "deployments": {
            "type": "array",
            "items": {
                "allOf": [
                    {"$ref": "#/components/schemas/Deployment"},
                    _object(
                        {
                            "max_concurrency": {"type": ["integer", "null"]},
                            "window": {
                                "anyOf": [
                                    _object(
                                        {
                                            **dict.fromkeys(
                                                ("requests", "ok", "errors", "rejected"), _INT
                                            ),
                                            "abandoned": _INT,
                                            **dict.fromkeys(
                                                (
                                                    "error_rate",
                                                    "ttft_p50_s",
                                                    "ttft_p99_s",
                                                    "latency_p50_s",
                                                    "latency_p99_s",
                                                ),
                                                _NUMBER,
                                            ),
                                        }
                                    ),
                                    {"type": "null"},
                                ]
                            },
                            "series": {
                                "anyOf": [
                                    _columns(
                                        start_s={"type": "number"},
                                        requests=_INT,
                                        ok=_INT,
                                        errors=_INT,
                                        ttft_p50_s=_NUMBER,
                                        in_flight_peak={"type": ["integer", "null"]},
                                        kv_usage=_NUMBER,
                                    ),
                                    {"type": "null"},
                                ]
                            },
                        }
                    ),
                ]
            },
        },
        "rate_limits": _object(
            {
                "quotas": {
                    "anyOf": [
                        {
                            "type": "array",
                            "items": _object(
                                {
                                    "kind": {"enum": ["key", "model", "deployment"]},
                                    "name": {"type": "string"},
                                    "unit": {"enum": ["requests", "tokens"]},
                                    **dict.fromkeys(("limit", "used", "remaining"), _INT),
                                    "headroom": {"type": "number", "minimum": 0, "maximum": 1},
                                    "reset_s": {"type": "number", "minimum": 0},
                                }
                            ),
                        },
                        {"type": "null"},
                    ]
                },
                "error": {"type": ["string", "null"]},
            }
        ),
    }
)


def _asset(name: str) -> str:
    return resources.files("aigw.api").joinpath("static", name).read_text(encoding="utf-8")


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def build_page() -> tuple[bytes, dict[str, str]]:
    """The page with its CSS and JS inline, and the response headers that pin them."""
    css, js = _asset("dashboard.css"), _asset("dashboard.js")
    html = _asset("dashboard.html").replace("/*STYLE*/", css).replace("/*SCRIPT*/", js)
    policy = (
        f"default-src 'none'; script-src {_csp_hash(js)}; style-src {_csp_hash(css)}; "
        "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )
    headers = {
        "content-security-policy": policy,
        "x-frame-options": "DENY",  # drain buttons: never inside someone else's frame
        "x-content-type-options": "nosniff",
        "referrer-policy": "no-referrer",
        "cache-control": "no-cache",
    }
    return html.encode(), headers


def _series(window: Window) -> dict[str, list[Any]]:
    """The window's buckets as columns (compact JSON, and what a chart wants)."""
    points = window.points
    return {
        "start_s": [p.start_s for p in points],
        "requests": [p.dispatched for p in points],
        "ok": [p.ok for p in points],
        "errors": [p.errors for p in points],
        "ttft_p50_s": [_round(p.ttft_p50_s) for p in points],
        "in_flight_peak": [p.in_flight_peak for p in points],
        "kv_usage": [_round(p.kv_usage) for p in points],
    }


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def _deployment(state: AppState, deployment: Deployment, now: float) -> dict[str, Any]:
    entry = describe(deployment, now)
    entry["max_concurrency"] = deployment.config.max_concurrency
    history = state.history
    if history is None:
        entry["window"] = entry["series"] = None
        return entry
    window = history.window(deployment)
    entry["window"] = {
        "requests": window.dispatched,
        "ok": window.ok,
        "errors": window.errors,
        "rejected": window.rejected,
        "abandoned": window.abandoned,
        "error_rate": _round(window.error_rate),
        "ttft_p50_s": _round(window.ttft_p50_s),
        "ttft_p99_s": _round(window.ttft_p99_s),
        "latency_p50_s": _round(window.latency_p50_s),
        "latency_p99_s": _round(window.latency_p99_s),
    }
    entry["series"] = _series(window)
    return entry


def _quota(use: QuotaUse) -> dict[str, Any]:
    used = use.limit - use.remaining
    return {
        "kind": use.kind,
        "name": use.name,
        "unit": use.unit,
        "limit": use.limit,
        "used": used,
        "remaining": use.remaining,
        "headroom": round(use.remaining / use.limit, 4),
        "reset_s": round(use.reset_s, 3),
    }


async def snapshot(state: AppState) -> dict[str, Any]:
    """Everything the page shows, as one JSON-ready mapping (the schema is in the README)."""
    gateway = state.gateway
    router = gateway.router
    now = asyncio.get_running_loop().time()
    ready = router.ready_models()
    models = [
        {
            "name": route.name,
            "ready": ready[route.name],
            "queue_depth": gateway.admission.depth(route.name),
            "deployments": [d.id for d in route.deployments],
            "fallbacks": list(route.fallbacks),
        }
        for route in router.models.values()
    ]
    try:
        quotas: list[dict[str, Any]] | None = [_quota(u) for u in await gateway.limits.usage()]
        limits_error = None
    except GatewayError as exc:  # shared state down with on_redis_down: reject
        quotas, limits_error = None, exc.message
    return {
        "object": "dashboard",
        "time": round(time.time(), 3),
        "uptime_s": max(0, int(time.time()) - state.started_at),
        "bucket_s": BUCKET_S,
        "window_s": BUCKET_S * BUCKETS,
        "state_backend": state.config.state.backend,
        "models": models,
        "deployments": [_deployment(state, d, now) for d in router.deployments.values()],
        "rate_limits": {"quotas": quotas, "error": limits_error},
    }


def dashboard_routes() -> list[Route]:
    """``GET /dashboard`` (the page, built here once) and ``GET /admin/dashboard.json``."""
    page, page_headers = build_page()

    async def dashboard_page(request: Request) -> Response:
        state: AppState = request.app.state.aigw
        if not state.gateway.auth.admin_enabled:
            return error_response(
                PermissionDeniedError(
                    "The admin API is disabled: set auth.admin_key to enable it.",
                    code="admin_disabled",
                )
            )
        return Response(page, media_type="text/html; charset=utf-8", headers=page_headers)

    async def dashboard_data(request: Request) -> Response:
        state = admin_state(request)
        if isinstance(state, Response):
            return state
        body = orjson.dumps(await snapshot(state))
        return Response(body, media_type="application/json", headers={"cache-control": "no-store"})

    return [
        Route(DASHBOARD_PATH, dashboard_page, methods=["GET"]),
        Route(DASHBOARD_DATA_PATH, dashboard_data, methods=["GET"]),
    ]
