"""Operator endpoints: live routing signals per deployment, draining, config reload.

Behind ``auth.admin_key`` (``Authorization: Bearer <key>``); disabled (403) without one.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
from starlette.requests import Request
from starlette.responses import Response

from aigw.api.routes import admin_state, error_response
from aigw.api.state import AppState
from aigw.errors import (
    ConfigError,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    UnsupportedMediaTypeError,
)
from aigw.fleet.deployment import Deployment

__all__ = ["list_deployments", "redact_url", "reload_config", "set_draining"]

_REDACTED = "redacted"


def redact_url(url: str | None) -> str | None:
    """``url`` without secrets: userinfo and fragment dropped, any query shown as ``redacted``.

    Config rejects userinfo already; this is the defensive second line, since admin output is
    read by people and tools that should never see a key.
    """
    if url is None:
        return None
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:  # IPv6 literal
            host = f"[{host}]"
        netloc = host if parts.port is None else f"{host}:{parts.port}"
    except ValueError:  # unparseable: show nothing of it rather than risk a secret
        return _REDACTED
    # The whole query goes: a token may sit in a name as well as in a value.
    query = _REDACTED if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


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
        "base_url": redact_url(config.base_url),
        "metrics_url": redact_url(config.metrics_url),
        # Names only: api_key and header values are secrets and never leave the config.
        "header_names": sorted(config.headers),
        "has_api_key": config.api_key is not None,
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
        # the engine's batch limit: configured max_num_seqs, else learnt (None: not known)
        "batch_limit": deployment.config.max_num_seqs or state.batch_limit,
        "prefix_blocks_remembered": len(state.prefixes),
        "prefill_backlog_tokens": state.prefill_backlog,  # streams sent, no first token yet
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
    state = admin_state(request)
    if isinstance(state, Response):
        return state
    now = asyncio.get_running_loop().time()
    deployments = state.gateway.router.deployments.values()
    body = {"object": "list", "data": [describe(d, now) for d in deployments]}
    return Response(orjson.dumps(body), media_type="application/json")


def _is_json(content_type: str | None) -> bool:
    if content_type is None:
        return False
    return content_type.split(";", 1)[0].strip().lower() == "application/json"


def _not_json(request: Request) -> Response | None:
    # A cross-origin form or fetch may send text/plain without a CORS preflight; requiring
    # JSON makes the browser ask first, which this API never grants.
    if _is_json(request.headers.get("content-type")):
        return None
    return error_response(
        UnsupportedMediaTypeError(
            "Admin POST requests must send Content-Type: application/json.",
            code="unsupported_media_type",
        )
    )


async def set_draining(request: Request) -> Response:
    """POST /admin/deployments/{id}/drain or /undrain: stop or resume new traffic to it."""
    state = admin_state(request)
    if isinstance(state, Response):
        return state
    refused = _not_json(request)
    if refused is not None:
        return refused
    refused = _one_of_workers(state, "drain or undrain")
    if refused is not None:
        return refused
    deployment = state.gateway.router.deployments.get(request.path_params["deployment"])
    action = request.path_params["action"]
    if deployment is None or action not in ("drain", "undrain"):
        return error_response(NotFoundError("No such deployment.", param="deployment"))
    deployment.state.draining = action == "drain"
    now = asyncio.get_running_loop().time()
    return Response(orjson.dumps(describe(deployment, now)), media_type="application/json")


def _one_of_workers(state: AppState, action: str, instead: str = "") -> Response | None:
    """409 when this process is one of several workers: a change made here would reach only
    the worker that happened to answer."""
    supervisor = state.lifecycle.supervisor
    if supervisor is None:
        return None
    return error_response(
        ConflictError(
            f"This gateway runs several worker processes (supervisor pid {supervisor}): a "
            f"{action} through the admin API would reach only the worker that answered.{instead}",
            code="several_workers",
        )
    )


async def reload_config(request: Request) -> Response:
    """POST /admin/reload: re-read the config file and swap it in (see :mod:`aigw.reload`).

    200 with what changed; 400 ``invalid_config`` with every problem when the file is bad or
    changes what cannot change live (nothing is changed then), or ``no_config_file`` when the
    gateway was not started from a file."""
    state = admin_state(request)
    if isinstance(state, Response):
        return state
    refused = _not_json(request)
    if refused is not None:
        return refused
    refused = _one_of_workers(
        state,
        "reload",
        " Send SIGHUP to the supervisor instead: every worker reloads and logs the outcome.",
    )
    if refused is not None:
        return refused
    if state.reload is None:
        return error_response(
            InvalidRequestError(
                "This gateway was not started from a config file: nothing to reload.",
                code="no_config_file",
            )
        )
    try:
        report = await state.reload()
    except ConfigError as exc:
        error = InvalidRequestError(
            "The config was not reloaded: " + "; ".join(exc.problems), code="invalid_config"
        )
        body = {**error.to_dict(), "problems": exc.problems}
        return Response(orjson.dumps(body), status_code=400, media_type="application/json")
    return Response(orjson.dumps(report.to_dict()), media_type="application/json")
