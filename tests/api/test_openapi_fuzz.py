"""schemathesis against a live gateway, from the OpenAPI document the gateway itself serves.

A gateway with client keys, an admin key and one simulated backend runs on a real socket;
every operation of ``GET /openapi.json`` gets a bounded number of generated requests, valid
(positive) and invalid (negative) ones, and every response must pass schemathesis' checks:
no 5xx, a documented status, content type and headers, a body that fits the documented
schema. Each request has a timeout, so a hang fails the test instead of stalling it.

Generation is derandomised (the same requests every run). To explore locally, raise the number
of examples per operation and mode and pick a seed: ``AIGW_FUZZ_EXAMPLES=300 AIGW_FUZZ_SEED=7``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import hypothesis
import pytest
import schemathesis
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from aigw.api.openapi import build_document
from tests.conftest import deployment
from tests.servers import ThreadedServer

pytestmark = pytest.mark.e2e

MODEL = "llama-3-8b"
OTHER_MODEL = "llama-3-70b"
CLIENT_KEY = "sk-fuzz-client"
NARROW_KEY = "sk-fuzz-narrow"  # may use OTHER_MODEL only: 403 model_not_allowed for MODEL
ADMIN_KEY = "sk-fuzz-admin"
EXAMPLES = int(os.environ.get("AIGW_FUZZ_EXAMPLES", "60"))
SEED = os.environ.get("AIGW_FUZZ_SEED")
REQUEST_TIMEOUT_S = 10.0  # a hang fails (requests' Timeout) rather than stalling the suite

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture
def gateway(
    start_backend: Callable[..., ThreadedServer], start_gateway: Callable[..., ThreadedServer]
) -> ThreadedServer:
    backend = start_backend(seed=1)
    return start_gateway(
        {
            "auth": {
                "keys": [
                    # Quotas far from reach: the x-ratelimit-* headers and token counting run
                    # on every request without turning it into a 429.
                    {"name": "fuzz", "key": CLIENT_KEY, "rpm": 10**6, "tpm": 10**9},
                    {"name": "narrow", "key": NARROW_KEY, "models": [OTHER_MODEL]},
                ],
                "admin_key": ADMIN_KEY,
            },
            "models": [
                {"name": MODEL, "deployments": [deployment(backend.url, "gpu-a")]},
                {"name": OTHER_MODEL, "deployments": [deployment(backend.url, "gpu-b")]},
            ],
        }
    )


def _authorization(key: str | None) -> dict[str, str]:
    return {} if key is None else {"Authorization": f"Bearer {key}"}


# Mostly the key each operation needs, sometimes another: 401 and 403 get their share.
_CLIENT_KEYS = st.sampled_from([CLIENT_KEY] * 6 + [NARROW_KEY, ADMIN_KEY, "sk-wrong", None])
_ADMIN_KEYS = st.sampled_from([ADMIN_KEY] * 6 + [CLIENT_KEY, "sk-wrong", None])
# Mostly a model the gateway serves (else nearly every request would stop at 404).
_MODELS = st.sampled_from([MODEL] * 3 + [None])


def _steer(case: Any, model: str | None) -> None:
    """Point a generated request at the served model, where it names one."""
    if model is None:
        return
    if isinstance(case.body, dict) and "model" in case.body:
        case.body["model"] = model
    if case.path_parameters and "model" in case.path_parameters:
        case.path_parameters["model"] = model


def _fuzz(operation: Any, mode: GenerationMode) -> None:
    keys = _ADMIN_KEYS if operation.path.startswith("/admin") else _CLIENT_KEYS

    @hypothesis.settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=SEED is None,
        database=None,
        suppress_health_check=list(hypothesis.HealthCheck),
        phases=[hypothesis.Phase.generate, hypothesis.Phase.shrink],
        print_blob=False,
    )
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode), key=keys, model=_MODELS)
    def run(case: Any, key: str | None, model: str | None) -> None:
        _steer(case, model)
        # No shared session: a connection per request. (The test servers' sockets lack
        # TCP_NODELAY, so on a kept-alive connection each response waits ~40 ms for a delayed
        # ACK; a new connection is still in quick-ACK mode.)
        case.call_and_validate(
            headers=_authorization(key),
            checks=CHECKS,
            timeout=REQUEST_TIMEOUT_S,
        )

    if SEED is not None:
        run = hypothesis.seed(int(SEED))(run)
    run()


def _negatable(operation: dict[str, Any]) -> bool:
    """Whether negative generation has anything to break: a body, a path parameter or a
    required security scheme (a string header cannot be made invalid: every header is a
    string; an optional scheme, listed with ``{}``, cannot be left out wrongly)."""
    params = operation.get("parameters", [])
    in_path = any(p.get("in") == "path" for p in params)
    security = operation.get("security") or []
    required = bool(security) and {} not in security
    return bool(operation.get("requestBody") or required or in_path)


# Every operation of the document, read here (collection time) from the same builder that the
# gateway serves from; test_openapi.py checks that it names exactly the app's routes.
CASES = [
    pytest.param(method, path, mode, id=f"{method.upper()} {path} {mode.value}")
    for path, item in build_document()["paths"].items()
    for method, operation in item.items()
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode is GenerationMode.POSITIVE or _negatable(operation)
]


@pytest.mark.parametrize(("method", "path", "mode"), CASES)
def test_fuzz(gateway: ThreadedServer, method: str, path: str, mode: GenerationMode) -> None:
    schema = schemathesis.openapi.from_url(
        f"{gateway.url}/openapi.json", config=schemathesis.Config(), timeout=REQUEST_TIMEOUT_S
    )
    _fuzz(schema[path][method], mode)
