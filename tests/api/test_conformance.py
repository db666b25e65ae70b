"""What the gateway returns conforms to OpenAI's published OpenAPI specification.

A gateway on real sockets in front of the simulator (and of a fake Anthropic Messages API for
the translation); every body it returns, every stream chunk included, is validated against the
spec's schemas (``../shared/openai-openapi/openapi.yaml``, OpenAPI 3.1: JSON Schema 2020-12
with ``$ref`` into ``#/components/schemas``), resolved and checked by ``jsonschema_rs``.

Where the spec itself is wrong, the schema is corrected here and only there; each correction
is listed in :data:`SPEC_FIXES` with its reason, and nothing else is loosened:

1. Parts of the spec still use OpenAPI 3.0's ``nullable: true``, which JSON Schema does not
   know; read as OpenAPI means it: "null is allowed too" (``{"anyOf": [schema, null]}``).
   Affects e.g. a stream chunk's ``usage`` and a choice's ``finish_reason`` and ``logprobs``.
2. Completion stream chunks have no schema of their own: the spec points at
   ``CreateCompletionResponse``, whose ``finish_reason`` and ``usage`` are not nullable, though
   every chunk but the last of a choice has ``finish_reason: null`` and, with
   ``include_usage``, every chunk but the usage chunk has ``usage: null`` (OpenAI's own API
   sends both). Chunks are checked against that schema with those two fields nullable.
3. ``Embedding.embedding`` is only an array of floats, though ``encoding_format: "base64"``
   (the OpenAI SDK's default) returns a base64 string. Base64 replies are checked against
   ``Embedding`` with a string allowed there; float replies against the spec as it is.

Not a gap but worth knowing: the spec allows any extra property (no
``additionalProperties: false``), so vLLM's extras (``stop_reason``, ``reasoning_content``,
``prompt_logprobs``) pass, and ``format`` is an annotation (2020-12's default), so
``format: unixtime`` or ``float`` are not checked.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated, Any, Literal

import httpx
import jsonschema_rs
import openai
import pytest
import yaml
from pydantic import BaseModel, Field

from aigw.app import create_app
from aigw.configfile import parse_config
from aigw.serving import gateway_protocol
from aigw.sim.server import BackendSettings, Faults
from aigw.sim.server import create_app as create_backend
from tests.conftest import FAST, UPSTREAM_MODEL, deployment
from tests.fakes.anthropic import create_fake_anthropic
from tests.servers import ThreadedServer, serve_in_thread

SPEC_PATH = Path(__file__).resolve().parents[2].parent / "shared/openai-openapi/openapi.yaml"
SPEC_FIXES = {
    "nullable": "OpenAPI 3.0's nullable: true read as anyOf [schema, null]",
    "completion chunk": "CreateCompletionResponse with nullable finish_reason and usage",
    "embedding base64": "Embedding.embedding may be a string with encoding_format base64",
}
MODEL = "llama"
CLAUDE = "claude"
MESSAGES: list[Any] = [{"role": "user", "content": "Hello there, how are you?"}]
TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                "required": ["city"],
            },
        },
    }
]
SCHEMA_FORMAT: dict[str, Any] = {
    "type": "json_schema",
    "json_schema": {
        "name": "answer",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {"mood": {"enum": ["good", "bad"]}, "score": {"type": "number"}},
            "required": ["mood", "score"],
            "additionalProperties": False,
        },
    },
}


# -- the spec ------------------------------------------------------------------------------


def _nullable(node: Any) -> Any:
    """Fix 1: ``nullable: true`` as JSON Schema says it."""
    if isinstance(node, list):
        return [_nullable(item) for item in node]
    if not isinstance(node, dict):
        return node
    fixed = {key: _nullable(value) for key, value in node.items() if key != "nullable"}
    if node.get("nullable") is True:
        return {"anyOf": [fixed, {"type": "null"}]}
    return fixed


def _or_null(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


class Spec:
    """Validators for the spec's component schemas (and the derived ones of the fixes)."""

    def __init__(self, path: Path) -> None:
        with path.open() as stream:
            document = yaml.load(stream, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        # YAML turns some example dates into date objects: JSON text is what a schema is
        schemas = _nullable(json.loads(json.dumps(document["components"]["schemas"], default=str)))
        chunk = copy.deepcopy(schemas["CreateCompletionResponse"])  # fix 2
        choice = chunk["properties"]["choices"]["items"]["properties"]
        choice["finish_reason"] = _or_null(choice["finish_reason"])
        chunk["properties"]["usage"] = _or_null(chunk["properties"]["usage"])
        schemas["_CompletionChunk"] = chunk
        embedding = copy.deepcopy(schemas["Embedding"])  # fix 3
        embedding["properties"]["embedding"] = {
            "anyOf": [embedding["properties"]["embedding"], {"type": "string"}]
        }
        base64 = copy.deepcopy(schemas["CreateEmbeddingResponse"])
        base64["properties"]["data"]["items"] = {"$ref": "#/components/schemas/_EmbeddingBase64"}
        schemas["_EmbeddingBase64"] = embedding
        schemas["_CreateEmbeddingResponseBase64"] = base64
        self._schemas = schemas
        self._validators: dict[str, Any] = {}

    def check(self, name: str, instance: Any) -> None:
        """Assert that ``instance`` is valid against ``components.schemas[name]``."""
        validator = self._validators.get(name)
        if validator is None:
            root = {
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "components": {"schemas": self._schemas},
                "$ref": f"#/components/schemas/{name}",
            }
            validator = self._validators[name] = jsonschema_rs.Draft202012Validator(root)
        errors = [f"{list(e.instance_path)}: {e.message}" for e in validator.iter_errors(instance)]
        assert not errors, f"{name}: {errors}\n{json.dumps(instance)[:2000]}"


@pytest.fixture(scope="module")
def spec() -> Spec:
    if not SPEC_PATH.is_file():
        pytest.fail(f"OpenAI's spec is missing: {SPEC_PATH} (../shared of every checkout)")
    return Spec(SPEC_PATH)


# -- servers -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gateway() -> Iterator[ThreadedServer]:
    """One gateway for the module (every test only reads): the simulator behind ``llama``,
    the fake Anthropic API behind ``claude``."""
    settings = BackendSettings(model=UPSTREAM_MODEL, time_scale=FAST, seed=3, faults=Faults())
    with ExitStack() as stack:
        backend = stack.enter_context(serve_in_thread(create_backend(settings)))
        anthropic = stack.enter_context(serve_in_thread(create_fake_anthropic(api_key="sk-ant")))
        claude = {
            "id": "claude-api",
            "provider": "anthropic",
            "base_url": anthropic.url,
            "model": "claude-sonnet-4-5",
            "api_key": "sk-ant",
        }
        models = [
            {"name": MODEL, "deployments": [deployment(backend.url, "gpu")]},
            {"name": CLAUDE, "deployments": [claude]},
        ]
        config = parse_config({"models": models}, source="<test>")
        app = create_app(config, seed=0)
        yield stack.enter_context(serve_in_thread(app, http=gateway_protocol(config.server)))


@pytest.fixture
def http(gateway: ThreadedServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"{gateway.url}/v1", timeout=10) as client:
        yield client


def post(http: httpx.Client, path: str, body: dict[str, Any], status: int = 200) -> Any:
    reply = http.post(path, json=body)
    assert reply.status_code == status, reply.text
    return reply.json()


def stream(http: httpx.Client, path: str, body: dict[str, Any]) -> list[Any]:
    """Every event of a stream as JSON, after checking that it ends with [DONE]."""
    with http.stream("POST", path, json={**body, "stream": True}) as reply:
        assert reply.status_code == 200
        data = [line[6:] for line in reply.iter_lines() if line.startswith("data: ")]
    assert data and data[-1] == "[DONE]"
    return [json.loads(item) for item in data[:-1]]


# -- OpenAI-compatible upstream (the simulator) --------------------------------------------


CHAT_BODIES: list[dict[str, Any]] = [
    {"n": 2, "max_tokens": 8},
    {"tools": TOOLS, "tool_choice": "required"},
    {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
    {"tools": TOOLS, "tool_choice": "auto", "max_tokens": 4},
    {"response_format": {"type": "json_object"}},
    {"response_format": SCHEMA_FORMAT, "n": 2},
    {"logprobs": True, "top_logprobs": 3, "max_tokens": 5},
    {"logprobs": True, "max_tokens": 2, "stop": ["ka", "lo"]},
    {"max_tokens": 1, "ignore_eos": True},
]


@pytest.mark.parametrize("extra", CHAT_BODIES)
def test_chat_completion(spec: Spec, http: httpx.Client, extra: dict[str, Any]) -> None:
    reply = post(http, "/chat/completions", {"model": MODEL, "messages": MESSAGES, **extra})
    spec.check("CreateChatCompletionResponse", reply)
    assert len(reply["choices"]) == extra.get("n", 1)


@pytest.mark.parametrize("extra", CHAT_BODIES)
@pytest.mark.parametrize("usage", [True, False])
def test_chat_stream_chunks(
    spec: Spec, http: httpx.Client, extra: dict[str, Any], usage: bool
) -> None:
    body = {"model": MODEL, "messages": MESSAGES, **extra}
    if usage:
        body["stream_options"] = {"include_usage": True}
    chunks = stream(http, "/chat/completions", body)
    for chunk in chunks:
        spec.check("CreateChatCompletionStreamResponse", chunk)
    if usage:
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["prompt_tokens_details"]
    else:
        assert all(chunk["choices"] for chunk in chunks)


@pytest.mark.parametrize(
    "extra",
    [
        {"prompt": "Once upon", "max_tokens": 6, "n": 2},
        {"prompt": ["One", "Two"], "max_tokens": 3, "logprobs": 2},
        {"prompt": "Once", "stop": "ka", "max_tokens": 30},
    ],
)
def test_completions_and_their_chunks(
    spec: Spec, http: httpx.Client, extra: dict[str, Any]
) -> None:
    spec.check("CreateCompletionResponse", post(http, "/completions", {"model": MODEL, **extra}))
    body = {"model": MODEL, "stream_options": {"include_usage": True}, **extra}
    chunks = stream(http, "/completions", body)
    for chunk in chunks:
        spec.check("_CompletionChunk", chunk)  # fix 2
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0
    for chunk in stream(http, "/completions", {"model": MODEL, **extra}):
        spec.check("_CompletionChunk", chunk)


def test_embeddings(spec: Spec, http: httpx.Client) -> None:
    body: dict[str, Any] = {"model": MODEL, "input": ["a", "b"], "encoding_format": "float"}
    spec.check("CreateEmbeddingResponse", post(http, "/embeddings", body))
    spec.check("CreateEmbeddingResponse", post(http, "/embeddings", {**body, "dimensions": 256}))
    base64 = post(http, "/embeddings", {**body, "encoding_format": "base64"})
    spec.check("_CreateEmbeddingResponseBase64", base64)  # fix 3


def test_models(spec: Spec, http: httpx.Client) -> None:
    listed = http.get("/models")
    assert listed.status_code == 200
    spec.check("ListModelsResponse", listed.json())
    assert {card["id"] for card in listed.json()["data"]} == {MODEL, CLAUDE}
    retrieved = http.get(f"/models/{MODEL}")
    assert retrieved.status_code == 200
    spec.check("Model", retrieved.json())


def test_error_bodies(spec: Spec, http: httpx.Client, gateway: ThreadedServer) -> None:
    replies = [
        http.post("/chat/completions", json={"model": "nope", "messages": MESSAGES}),  # 404
        http.post("/chat/completions", content=b"{not json"),  # the gateway's 400
        http.post("/chat/completions", json={"model": MODEL}),  # no messages
        http.get("/models/nope"),
        http.post(  # the simulator's 400, relayed
            "/chat/completions",
            json={"model": MODEL, "messages": MESSAGES, "response_format": {"type": "yaml"}},
        ),
        http.post(  # the simulator's context-length 400
            "/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 10**6}
        ),
        http.post("/embeddings", json={"model": MODEL, "input": "a", "dimensions": 0}),
        http.post("/completions", json={"model": CLAUDE, "prompt": "x"}),  # not offered
    ]
    for reply in replies:
        assert 400 <= reply.status_code < 500, reply.text
        spec.check("ErrorResponse", reply.json())


# -- Anthropic upstream, translated ----------------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"max_tokens": 2},
        {"tools": TOOLS, "tool_choice": "required"},
        {"messages": [{"role": "system", "content": "Be brief."}, *MESSAGES], "stop": ["x"]},
    ],
)
def test_anthropic_translation(spec: Spec, http: httpx.Client, extra: dict[str, Any]) -> None:
    body = {"model": CLAUDE, "messages": MESSAGES, **extra}
    spec.check("CreateChatCompletionResponse", post(http, "/chat/completions", body))
    chunks = stream(http, "/chat/completions", {**body, "stream_options": {"include_usage": True}})
    for chunk in chunks:
        spec.check("CreateChatCompletionStreamResponse", chunk)
    assert chunks[-1]["usage"]["total_tokens"] > 0
    for chunk in stream(http, "/chat/completions", body):
        spec.check("CreateChatCompletionStreamResponse", chunk)


# -- structured output with the real SDK -----------------------------------------------------


class Weather(BaseModel):
    city: str
    celsius: float
    days: list[int]
    sunny: bool | None
    forecast: list[Forecast]


class Forecast(BaseModel):
    day: Literal["mon", "tue", "wed"]
    rain_mm: Annotated[float, Field(ge=0, le=50)]
    note: Forecast | None = None


def test_sdk_parse_returns_the_pydantic_model(gateway: ThreadedServer) -> None:
    """``parse()`` sends the model as a strict json_schema and validates the content with it;
    the same with ``stream()``, and for a forced tool whose parameters are a model."""
    with openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0) as sdk:
        for _ in range(3):
            completion = sdk.chat.completions.parse(
                model=MODEL, messages=MESSAGES, response_format=Weather
            )
            assert isinstance(completion.choices[0].message.parsed, Weather)
        beta = sdk.beta.chat.completions.parse(
            model=MODEL, messages=MESSAGES, response_format=Weather
        )
        assert isinstance(beta.choices[0].message.parsed, Weather)
        with sdk.chat.completions.stream(
            model=MODEL, messages=MESSAGES, response_format=Weather
        ) as events:
            final = events.get_final_completion()
        assert isinstance(final.choices[0].message.parsed, Weather)
        tool = openai.pydantic_function_tool(Weather)
        called = sdk.chat.completions.parse(
            model=MODEL, messages=MESSAGES, tools=[tool], tool_choice="required"
        )
        calls = called.choices[0].message.tool_calls or []
        assert isinstance(calls[0].function.parsed_arguments, Weather)
