"""The OpenAPI document: valid, served as built, and naming exactly the routes the app serves."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import jsonschema_rs
import pytest
import schemathesis
from starlette.routing import Route

from aigw.api.openapi import OPENAPI_PATH, build_document
from aigw.app import create_app
from aigw.configfile import parse_config
from tests.conftest import deployment
from tests.servers import ThreadedServer

REPO = Path(__file__).resolve().parents[2]
SPEC = REPO.parent / "shared" / "openai-openapi" / "openapi.yaml"
VENDORED = REPO / "aigw" / "api" / "openai_schemas.json"
HTTP_METHODS = ("get", "put", "post", "delete", "patch")

CONFIG: dict[str, Any] = {
    "auth": {"keys": [{"name": "client", "key": "sk-client"}], "admin_key": "sk-admin"},
    "models": [{"name": "m", "deployments": [deployment("http://127.0.0.1:9", "d")]}],
}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return build_document()


def _refs(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, sub in value.items():
            if key == "$ref" and isinstance(sub, str):
                yield sub
            else:
                yield from _refs(sub)
    elif isinstance(value, list):
        for sub in value:
            yield from _refs(sub)


def _resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def test_document_is_valid_openapi_31(document: dict[str, Any]) -> None:
    assert document["openapi"].startswith("3.1.")
    schemathesis.openapi.from_dict(document).validate()  # against the OpenAPI 3.1 meta-schema
    for name, schema in document["components"]["schemas"].items():
        assert jsonschema_rs.meta.is_valid(schema), name  # each one valid JSON Schema 2020-12


def test_every_ref_resolves(document: dict[str, Any]) -> None:
    refs = set(_refs(document))
    assert refs
    for ref in refs:
        _resolve(document, ref)


def _served(config: dict[str, Any]) -> set[tuple[str, str]]:
    """(method, OpenAPI path) for every route of the app (HEAD is implied by GET)."""
    app = create_app(parse_config(config, source="<test>"))
    served = set()
    for route in app.routes:
        assert isinstance(route, Route), route
        path = route.path.replace(":path}", "}")
        served.update((m.lower(), path) for m in route.methods or () if m != "HEAD")
    return served


def test_document_names_exactly_the_routes_the_app_serves(document: dict[str, Any]) -> None:
    documented = {
        (method, path)
        for path, item in document["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }
    assert documented == _served(CONFIG)


def test_every_operation_documents_500_401_and_the_request_id(document: dict[str, Any]) -> None:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            responses = operation["responses"]
            where = f"{method.upper()} {path}"
            assert "200" in responses, where
            assert "500" in responses or path == OPENAPI_PATH, where
            assert ("401" in responses) == bool(operation["security"]), where
            for status, response in responses.items():
                if "$ref" in response:
                    response = _resolve(document, response["$ref"])
                assert "x-request-id" in response["headers"], (where, status)


def test_errors_have_openai_shape(document: dict[str, Any]) -> None:
    error = document["components"]["schemas"]["Error"]
    assert set(error["required"]) == {"message", "type", "param", "code"}
    for name, response in document["components"]["responses"].items():
        schema = response["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/ErrorResponse"}, name


def test_served_document_is_the_built_one_open_and_json(
    start_gateway: Callable[..., ThreadedServer],
) -> None:
    gateway = start_gateway(CONFIG)
    reply = httpx.get(f"{gateway.url}{OPENAPI_PATH}")  # no key: open, like /healthz
    assert reply.status_code == 200
    assert reply.headers["content-type"] == "application/json"
    assert reply.headers["x-request-id"]
    assert reply.json() == json.loads(json.dumps(build_document()))


def test_other_methods_get_405_with_allow(
    start_gateway: Callable[..., ThreadedServer], document: dict[str, Any]
) -> None:
    """Regression: the 405 handler dropped Starlette's ``Allow`` header (RFC 9110 requires
    it); it now lists exactly the documented methods (and HEAD beside GET)."""
    gateway = start_gateway(CONFIG)
    # A connection per request: see test_openapi_fuzz.py on kept-alive connections here.
    with httpx.Client(
        base_url=gateway.url, limits=httpx.Limits(max_keepalive_connections=0)
    ) as client:
        for path, item in document["paths"].items():
            documented = {m.upper() for m in item if m in HTTP_METHODS}
            allowed = documented | ({"HEAD"} if "GET" in documented else set())
            url = path.replace("{model}", "m").replace("{deployment}", "d")
            url = url.replace("{action}", "drain")
            for method in sorted({m.upper() for m in HTTP_METHODS} - documented):
                reply = client.request(method, url)
                where = f"{method} {path}"
                assert reply.status_code == 405, where
                assert reply.json()["error"]["code"] == "method_not_allowed", where
                assert reply.headers["allow"] == ", ".join(sorted(allowed)), where
                assert reply.headers["x-request-id"], where


def _vendoring_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "vendor_openai_schemas", REPO / "scripts" / "vendor_openai_schemas.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not SPEC.exists(), reason=f"OpenAI's spec is not at {SPEC}")
def test_vendored_schemas_are_what_the_script_makes() -> None:
    script = _vendoring_script()
    expected = script.render(script.vendor(script.load_spec(SPEC)))
    assert VENDORED.read_text(encoding="utf-8") == expected, (
        "aigw/api/openai_schemas.json is stale: run scripts/vendor_openai_schemas.py"
    )
