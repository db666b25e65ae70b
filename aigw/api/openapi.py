"""The gateway's own OpenAPI 3.1 document, served at ``GET /openapi.json``.

It describes the HTTP surface this gateway serves (the OpenAI-compatible proxy operations, the
model list, health, readiness and the admin API), with every status each operation can answer.
Request and response bodies of the OpenAI operations are OpenAI's own schemas, vendored in
``openai_schemas.json`` by ``scripts/vendor_openai_schemas.py`` (its docstring lists the few
changes it makes); the gateway's own bodies (health, admin) are described here.

The document is built once, when the app is created, and served as the same bytes to every
request. ``tests/api/test_openapi.py`` checks that it is a valid OpenAPI document and that it
names exactly the routes the app serves; ``tests/api/test_openapi_fuzz.py`` runs schemathesis
against a live gateway with it.
"""

from __future__ import annotations

import copy
import json
from importlib import metadata, resources
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from aigw.api.dashboard import DASHBOARD_DATA_PATH, DASHBOARD_PATH, DASHBOARD_SCHEMA
from aigw.api.validation import MAX_NESTING
from aigw.types import Endpoint

__all__ = ["OPENAPI_PATH", "build_document", "openapi_route"]

OPENAPI_PATH = "/openapi.json"
OPENAPI_VERSION = "3.1.0"

Json = dict[str, Any]


def _ref(kind: str, name: str) -> Json:
    return {"$ref": f"#/components/{kind}/{name}"}


def _schema(name: str) -> Json:
    return _ref("schemas", name)


def _json_content(schema: Json) -> Json:
    return {"application/json": {"schema": schema}}


def _nullable(kind: str) -> Json:
    return {"type": [kind, "null"]}


# --- headers --------------------------------------------------------------------------------

_HEADERS: dict[str, Json] = {
    "RequestId": {
        "description": "The request's id: the client's `x-request-id` when it is 1-128 "
        "printable ASCII characters, else one the gateway made. On every response.",
        "required": True,
        "schema": {"type": "string", "minLength": 1, "maxLength": 128},
    },
    "Deployment": {
        "description": "The id of the deployment that served the request.",
        "required": True,
        "schema": {"type": "string"},
    },
    "RetryAfter": {
        "description": "Seconds to wait before retrying. Set by the gateway on its own "
        "refusals; absent when the status is an upstream's own 429, relayed.",
        "schema": {"type": "integer", "minimum": 1},
    },
    "WwwAuthenticate": {
        "description": "Always `Bearer`: the scheme the gateway expects.",
        "required": True,
        "schema": {"type": "string"},
    },
    **{
        f"RateLimit{part.title()}{unit.title()}": {
            "description": f"OpenAI's `x-ratelimit-{part}-{unit}`: sent when the key or the "
            f"model has a {'requests' if unit == 'requests' else 'tokens'}-per-minute quota.",
            "schema": {"type": "string"} if part == "reset" else {"type": "integer"},
        }
        for unit in ("requests", "tokens")
        for part in ("limit", "remaining", "reset")
    },
}
_RATE_LIMIT_HEADERS = {
    f"x-ratelimit-{part}-{unit}": _ref("headers", f"RateLimit{part.title()}{unit.title()}")
    for unit in ("requests", "tokens")
    for part in ("limit", "remaining", "reset")
}
_REQUEST_ID = {"x-request-id": _ref("headers", "RequestId")}


# --- responses ------------------------------------------------------------------------------


def _error(description: str, **headers: Json) -> Json:
    return {
        "description": description,
        "headers": {**_REQUEST_ID, **headers},
        "content": _json_content(_schema("ErrorResponse")),
    }


_RESPONSES: dict[str, Json] = {
    "BadRequest": _error(
        "The request is malformed (`invalid_json`, `invalid_type`, `nesting_too_deep` past "
        f"{MAX_NESTING} levels, a missing required field), an `x-aigw-*` header is malformed "
        "(`invalid_header`), the model does not serve this operation (`unsupported_endpoint`), "
        "one request needs more tokens than its TPM quota allows (`request_too_large`), or the "
        "upstream rejected it (its own message).",
        **_RATE_LIMIT_HEADERS,
    ),
    "Unauthorized": _error(
        "Missing, malformed or unknown API key (`invalid_api_key`).",
        **{"www-authenticate": _ref("headers", "WwwAuthenticate")},
    ),
    "Forbidden": _error(
        "The key may not use this model (`model_not_allowed`); on `/admin`: the admin API is "
        "disabled (`admin_disabled`) or a client key was sent (`admin_only`)."
    ),
    "NotFound": _error("No such model (`model_not_found`), deployment, or route (`unknown_url`)."),
    "MethodNotAllowed": _error(
        "The path exists but not with this method (`method_not_allowed`); `Allow` lists the "
        "methods it has.",
        allow={
            "description": "The methods the path has.",
            "required": True,
            "schema": {"type": "string"},
        },
    ),
    "PayloadTooLarge": _error(
        "The body is larger than `server.max_body_bytes` (`request_too_large`)."
    ),
    "UnsupportedMediaType": _error(
        "An admin POST without `Content-Type: application/json` (`unsupported_media_type`)."
    ),
    "Conflict": _error(
        "This gateway runs several worker processes (`aigw serve --workers N`), and the change "
        "would reach only the worker that answered (`several_workers`)."
    ),
    "TooManyRequests": _error(
        "A quota or queue refused the request: `rate_limit_exceeded`, `queue_full`, "
        "`queue_timeout`, `max_parallel_exceeded`, `upstream_quota_exhausted`, or the "
        "upstream's own 429.",
        **{"retry-after": _ref("headers", "RetryAfter"), **_RATE_LIMIT_HEADERS},
    ),
    "InternalError": _error("The gateway hit an internal error (`internal_error`)."),
    "BadGateway": _error(
        "The upstream could not be reached or broke the protocol (`upstream_unreachable`, "
        "`upstream_error`, `upstream_reply_too_large`), or rejected the gateway's credentials "
        "(`upstream_auth_failed`)."
    ),
    "ServiceUnavailable": _error(
        "No deployment could take the request (`no_capacity`, `all_deployments_failed`), or "
        "shared state is down in `reject` mode (`state_unavailable`).",
        **{"retry-after": _ref("headers", "RetryAfter")},
    ),
    "GatewayTimeout": _error("The upstream timed out (`upstream_timeout`)."),
    "UpstreamError": _error(
        "Another status an upstream answered with, relayed with its error message (for "
        "example a 422 or 500 from the engine)."
    ),
}

_PROXY_ERRORS = ("400", "401", "403", "404", "413", "429", "500", "502", "503", "504")
_STATUS_RESPONSES = {
    "400": "BadRequest",
    "401": "Unauthorized",
    "403": "Forbidden",
    "404": "NotFound",
    "413": "PayloadTooLarge",
    "409": "Conflict",
    "415": "UnsupportedMediaType",
    "429": "TooManyRequests",
    "500": "InternalError",
    "502": "BadGateway",
    "503": "ServiceUnavailable",
    "504": "GatewayTimeout",
    "4XX": "UpstreamError",
    "5XX": "UpstreamError",
}


def _errors(*statuses: str) -> Json:
    return {status: _ref("responses", _STATUS_RESPONSES[status]) for status in statuses}


def _ok(description: str, content: Json, **headers: Json) -> Json:
    return {"description": description, "headers": {**_REQUEST_ID, **headers}, "content": content}


# --- request parameters ---------------------------------------------------------------------

_PARAMETERS: dict[str, Json] = {
    "RequestId": {
        "name": "x-request-id",
        "in": "header",
        "description": "Echoed in the response and forwarded upstream; replaced by a new id "
        "unless it is 1-128 printable ASCII characters.",
        "schema": {"type": "string"},
    },
    "Priority": {
        "name": "x-aigw-priority",
        "in": "header",
        "description": "Queue priority for this request; it can only lower the key's own.",
        "schema": {"type": "integer", "minimum": -1000, "maximum": 1000},
    },
    "QueueTimeout": {
        "name": "x-aigw-queue-timeout",
        "in": "header",
        "description": "Seconds this request may wait in the model's queue; at most the "
        "model's `queue.timeout_s` (400 `invalid_header` above it).",
        "schema": {"type": "number", "minimum": 0, "maximum": 3600},
    },
    "HashKey": {
        "name": "x-aigw-hash-key",
        "in": "header",
        "description": "Key for consistent-hash routing (default: the body's `user`, else "
        "the client address).",
        "schema": {"type": "string"},
    },
    "Region": {
        "name": "x-aigw-region",
        "in": "header",
        "description": "Prefer deployments in this region.",
        "schema": {"type": "string"},
    },
    "Tags": {
        "name": "x-aigw-tags",
        "in": "header",
        "description": "Comma-separated tags a deployment must carry.",
        "schema": {"type": "string"},
    },
}
_PROXY_PARAMETERS = [
    _ref("parameters", name)
    for name in ("RequestId", "Priority", "QueueTimeout", "HashKey", "Region", "Tags")
]


# --- operations -----------------------------------------------------------------------------

_CHECKED = (
    "The gateway checks `model` (a non-empty string it serves), `stream` (boolean), "
    "`max_tokens`, `max_completion_tokens` and `n` (integers >= 1), `stream_options` (an "
    "object, only with `stream: true`){extra}; every other field reaches the upstream as sent."
)
_PROXY: dict[Endpoint, tuple[str, str, str, str | None, str]] = {
    # endpoint: operationId, request schema, response schema, stream chunk schema, checks
    Endpoint.CHAT: (
        "createChatCompletion",
        "CreateChatCompletionRequest",
        "CreateChatCompletionResponse",
        "CreateChatCompletionStreamResponse",
        ", `messages` (a non-empty array of objects with a string `role`), `tools` (an array)",
    ),
    Endpoint.COMPLETIONS: (
        "createCompletion",
        "CreateCompletionRequest",
        "CreateCompletionResponse",
        "CreateCompletionStreamResponse",  # added by the vendoring script: a gap of the spec
        ", `prompt` (a string or an array)",
    ),
    Endpoint.EMBEDDINGS: (
        "createEmbedding",
        "CreateEmbeddingRequest",
        "CreateEmbeddingResponse",
        None,
        ", `input` (a non-empty string or array) and that `stream` is not true",
    ),
}


def _stream_event(chunk: str) -> Json:
    """One server-sent event, as schemathesis reads an OpenAPI 3.1 ``text/event-stream``
    schema: ``{"data": ..., "event": ...}``."""
    data = {
        "description": f"A `{chunk}` chunk as JSON; an `ErrorResponse` if the upstream broke "
        "after the stream began; `[DONE]` last.",
        "anyOf": [
            {"const": "[DONE]"},
            {
                "type": "string",
                "contentMediaType": "application/json",
                "contentSchema": {"anyOf": [_schema(chunk), _schema("ErrorResponse")]},
            },
        ],
    }
    return {
        "type": "object",
        "required": ["data"],
        "properties": {"data": data, "event": {"type": "string"}, "id": {"type": "string"}},
    }


def _proxy_operation(endpoint: Endpoint) -> Json:
    operation_id, request, reply, chunk, checks = _PROXY[endpoint]
    content = _json_content(_schema(reply))
    if chunk is not None:
        content["text/event-stream"] = {"schema": _stream_event(chunk)}
    return {
        "operationId": operation_id,
        "tags": ["OpenAI"],
        "summary": f"Proxy /v1/{endpoint.value} to a deployment of the model.",
        "description": _CHECKED.format(extra=checks),
        "security": [{"apiKey": []}],
        "parameters": _PROXY_PARAMETERS,
        "requestBody": {"required": True, "content": _json_content(_schema(request))},
        "responses": {
            "200": _ok(
                "The upstream's reply, relayed; a server-sent event stream with `stream: true`.",
                content,
                **{"x-aigw-deployment": _ref("headers", "Deployment"), **_RATE_LIMIT_HEADERS},
            ),
            **_errors(*_PROXY_ERRORS, "4XX", "5XX"),
        },
    }


def _get(operation_id: str, tag: str, summary: str, security: str | None, responses: Json) -> Json:
    return {
        "get": {
            "operationId": operation_id,
            "tags": [tag],
            "summary": summary,
            "security": [{security: []}] if security else [],
            "parameters": [_ref("parameters", "RequestId")],
            "responses": responses,
        }
    }


def _paths() -> Json:
    paths: Json = {f"/v1/{e.value}": {"post": _proxy_operation(e)} for e in Endpoint}
    paths["/v1/models"] = _get(
        "listModels",
        "OpenAI",
        "The models this key may use.",
        "apiKey",
        {
            "200": _ok("OK", _json_content(_schema("ListModelsResponse"))),
            **_errors("401", "500"),
        },
    )
    paths["/v1/models/{model}"] = _get(
        "retrieveModel",
        "OpenAI",
        "One model this gateway serves (the id may contain slashes).",
        "apiKey",
        {"200": _ok("OK", _json_content(_schema("Model"))), **_errors("401", "403", "404", "500")},
    )
    paths["/v1/models/{model}"]["get"]["parameters"].append(
        {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}
    )
    paths["/healthz"] = _get(
        "healthz",
        "Health",
        "Liveness: the process answers.",
        None,
        {"200": _ok("Alive.", _json_content(_schema("Health"))), **_errors("500")},
    )
    paths["/readyz"] = _get(
        "readyz",
        "Health",
        "Readiness: every model has a deployment that can take traffic (not ejected, not "
        "draining), and the gateway is not shutting down.",
        None,
        {
            "200": _ok("Ready.", _json_content(_schema("Ready"))),
            "503": _ok(
                "Some model has no deployment that can take traffic, or the gateway is "
                "shutting down.",
                _json_content({"oneOf": [_schema("Unready"), _schema("Draining")]}),
            ),
            **_errors("500"),
        },
    )
    paths["/metrics"] = _get(
        "metrics",
        "Health",
        "Prometheus metrics (text exposition format). Open unless "
        "`metrics.require_admin_key` is set; then it needs the admin key.",
        "adminKey",
        {
            "200": _ok(
                "Prometheus text exposition format.",
                {"text/plain": {"schema": {"type": "string"}}},
            ),
            **_errors("401", "403", "500"),
        },
    )
    paths["/metrics"]["get"]["security"] = [{}, {"adminKey": []}]  # the key is optional
    paths[OPENAPI_PATH] = _get(
        "openapi",
        "Health",
        "This document.",
        None,
        {"200": _ok("OpenAPI 3.1", {"application/json": {"schema": {"type": "object"}}})},
    )
    admin = _errors("401", "403", "500")
    paths["/admin/deployments"] = _get(
        "listDeployments",
        "Admin",
        "Every deployment with its live routing signals.",
        "adminKey",
        {"200": _ok("OK", _json_content(_schema("DeploymentList"))), **admin},
    )
    paths["/admin/deployments/{deployment}/{action}"] = {
        "post": {
            "operationId": "setDraining",
            "tags": ["Admin"],
            "summary": "Stop (`drain`) or resume (`undrain`) new traffic to a deployment.",
            "description": "Needs `Content-Type: application/json` (415 otherwise: a browser "
            "must then ask a CORS preflight first, which this API never grants); the body "
            "is ignored.",
            "security": [{"adminKey": []}],
            "parameters": [
                _ref("parameters", "RequestId"),
                {
                    "name": "deployment",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string"},
                },
                {
                    "name": "action",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "enum": ["drain", "undrain"]},
                },
            ],
            "requestBody": {"required": False, "content": _json_content({})},
            "responses": {
                "200": _ok(
                    "The deployment, after the change.", _json_content(_schema("Deployment"))
                ),
                **_errors("404", "409", "415"),
                **admin,
            },
        }
    }
    paths["/admin/reload"] = {
        "post": {
            "operationId": "reloadConfig",
            "tags": ["Admin"],
            "summary": "Re-read the config file and swap it in without dropping a request.",
            "description": "Validates first: a bad file, or one that changes `server`, `state` "
            "or `tokens` (which cannot change live), changes nothing and answers 400 "
            "`invalid_config` with a `problems` list. Needs `Content-Type: application/json`; "
            "the body is ignored.",
            "security": [{"adminKey": []}],
            "parameters": [_ref("parameters", "RequestId")],
            "requestBody": {"required": False, "content": _json_content({})},
            "responses": {
                "200": _ok("What changed.", _json_content(_schema("Reloaded"))),
                **_errors("400", "409", "415"),
                **admin,
            },
        }
    }
    paths[DASHBOARD_PATH] = _get(
        "dashboard",
        "Admin",
        "The operator dashboard: a static page (no data in it, so no key) that asks for the "
        "admin key and polls the dashboard JSON; 403 while the admin API is disabled.",
        None,
        {
            "200": _ok("The page.", {"text/html": {"schema": {"type": "string"}}}),
            **_errors("403", "500"),
        },
    )
    paths[DASHBOARD_DATA_PATH] = _get(
        "dashboardData",
        "Admin",
        "What the dashboard shows: models, deployments with their last minutes, quota use.",
        "adminKey",
        {"200": _ok("OK", _json_content(_schema("Dashboard"))), **admin},
    )
    return paths


# --- the gateway's own bodies ---------------------------------------------------------------


def _object(properties: Json, required: list[str] | None = None) -> Json:
    return {
        "type": "object",
        "required": list(properties) if required is None else required,
        "properties": properties,
    }


def _own_schemas() -> Json:
    number = _nullable("number")
    engine = _object(
        {
            "waiting": {"type": "number"},
            "running": {"type": "number"},
            "kv_usage": number,
            "prefix_hit_rate": number,
            "adapters": {"type": "array", "items": {"type": "string"}},
            "age_s": number,
            "stale": {"type": "boolean"},
        }
    )
    deployment = _object(
        {
            "id": {"type": "string"},
            "model": {"type": "string"},
            "kind": {"enum": ["cloud", "gpu"]},
            "base_url": _nullable("string"),
            "metrics_url": _nullable("string"),
            "header_names": {"type": "array", "items": {"type": "string"}},
            "has_api_key": {"type": "boolean"},
            "healthy": {"type": "boolean"},
            "ejected_for_s": number,
            "draining": {"type": "boolean"},
            **{k: {"type": "integer"} for k in ("in_flight", "requests", "failures")},
            "consecutive_failures": {"type": "integer"},
            "last_error": _nullable("string"),
            **{
                k: number
                for k in (
                    "error_rate",
                    "ttft_ewma_s",
                    "tpot_ewma_s",
                    "latency_peak_ewma_s",
                    "output_tokens_ewma",
                    "prefill_s_per_token",
                    "drain_rate_rps",
                )
            },
            "prefix_blocks_remembered": {"type": "integer"},
            "engine": {"anyOf": [engine, {"type": "null"}]},
            "last_scores": {"type": "object", "additionalProperties": number},
        }
    )
    return {
        "Health": _object({"status": {"const": "ok"}}),
        "Ready": _object(
            {"status": {"const": "ready"}, "models": {"type": "array", "items": {"type": "string"}}}
        ),
        "Reloaded": _object(
            {
                "status": {"const": "reloaded"},
                "models": {"type": "array", "items": {"type": "string"}},
                "deployments": _object(
                    {
                        name: {"type": "array", "items": {"type": "string"}}
                        for name in ("added", "removed", "kept", "replaced")
                    }
                ),
            }
        ),
        "Draining": _object({"status": {"const": "draining"}}),
        "Unready": _object(
            {
                "status": {"const": "unready"},
                "models_without_healthy_deployment": {"type": "array", "items": {"type": "string"}},
            }
        ),
        "Deployment": deployment,
        "Dashboard": DASHBOARD_SCHEMA,
        "DeploymentList": _object(
            {"object": {"const": "list"}, "data": {"type": "array", "items": _schema("Deployment")}}
        ),
    }


# --- the document ---------------------------------------------------------------------------


def _openai_schemas() -> Json:
    raw = resources.files("aigw.api").joinpath("openai_schemas.json").read_bytes()
    schemas: Json = json.loads(raw)["schemas"]
    return schemas


def _version() -> str:
    try:
        return metadata.version("aigw")
    except metadata.PackageNotFoundError:  # a checkout on sys.path, not installed
        return "0.0.0"


_DESCRIPTION = """\
An OpenAI-compatible gateway. Errors use OpenAI's shape,
`{"error": {"message", "type", "param", "code"}}`, and every response carries `x-request-id`.
Any other method on a path listed here is answered 405 with `Allow`; an unknown path, 404
`unknown_url` (never a redirect). An upstream's own error status and message are relayed, except
401/403/407, which become 502 `upstream_auth_failed`. With no `auth.keys` configured the
gateway is open and ignores `Authorization`. Malformed HTTP is answered by the server below the
application, outside this document."""


def build_document() -> Json:
    """The OpenAPI 3.1 document of the gateway's surface (a fresh dict on every call)."""
    document = {
        "openapi": OPENAPI_VERSION,
        "info": {"title": "aigw", "version": _version(), "description": _DESCRIPTION},
        "tags": [{"name": name} for name in ("OpenAI", "Health", "Admin")],
        "paths": _paths(),
        "components": {
            "schemas": {**_openai_schemas(), **_own_schemas()},
            "responses": _RESPONSES,
            "parameters": _PARAMETERS,
            "headers": _HEADERS,
            "securitySchemes": {
                "apiKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A client key from `auth.keys` (none needed on an open "
                    "gateway).",
                },
                "adminKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "`auth.admin_key`; without it the admin API answers 403.",
                },
            },
        },
    }
    return copy.deepcopy(document)  # its parts are shared module constants


def openapi_route() -> Route:
    """``GET /openapi.json``, open like ``/healthz``: the document, serialised once here."""
    # json, not orjson: OpenAI's schemas hold integers past 64 bits (seed's bounds).
    body = json.dumps(build_document(), separators=(",", ":"), ensure_ascii=False).encode()

    async def openapi(request: Request) -> Response:
        return Response(body, media_type="application/json")

    return Route(OPENAPI_PATH, openapi, methods=["GET"])
