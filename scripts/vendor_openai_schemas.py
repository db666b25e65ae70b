"""Regenerate aigw/api/openai_schemas.json from OpenAI's published OpenAPI specification.

The gateway's OpenAPI document (:mod:`aigw.api.openapi`) takes its request and response
schemas from OpenAI's spec. The runtime must not read ``../shared``, so the schemas it needs are
vendored as package data: the component schemas reachable from :data:`ROOTS`, with these
changes (each one keeps the document true to what the gateway does):

- ``nullable: true`` (OpenAPI 3.0 spelling, still used in parts of the spec) becomes a 3.1
  union with ``null``: the document is OpenAPI 3.1, where ``nullable`` means nothing;
- specification extensions (``x-*``) and ``example`` annotations are dropped (size);
- a ``discriminator`` without ``mapping`` gets one, from the single value each alternative's
  discriminating property allows: without it OpenAPI says the value is the schema's *name*
  (``ChatCompletionMessageToolCall``), while the wire says ``function``;
- the request schemas lose ``additionalProperties: false``: the gateway forwards fields it does
  not know (engine extras such as vLLM's ``ignore_eos``) to the upstream untouched;
- ``Embedding.embedding`` may also be a string: with ``encoding_format: "base64"`` OpenAI (and
  every OpenAI-compatible engine) answers base64, a gap of the spec itself;
- replies are relayed as the upstream sent them, so the reply schemas allow what vLLM (and the
  simulated backend, which copies it) sends where OpenAI's spec is stricter: a chat message
  without ``refusal``, and ``usage.prompt_tokens_details`` / ``completion_tokens_details``
  as null;
- ``CreateCompletionStreamResponse`` is added: OpenAI's spec describes completion stream chunks
  by ``CreateCompletionResponse``, whose ``finish_reason`` and ``usage`` may not be null, though
  every chunk but the last sends null (a gap its README names).

Usage: ``python scripts/vendor_openai_schemas.py [SPEC] [OUT]``, by default
``../shared/openai-openapi/openapi.yaml`` and ``aigw/api/openai_schemas.json``. The test
``tests/api/test_openapi.py`` checks that the vendored file is what this script makes.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SPEC = REPO.parent / "shared" / "openai-openapi" / "openapi.yaml"
DEFAULT_OUT = REPO / "aigw" / "api" / "openai_schemas.json"

ROOTS = (
    "CreateChatCompletionRequest",
    "CreateChatCompletionResponse",
    "CreateChatCompletionStreamResponse",
    "CreateCompletionRequest",
    "CreateCompletionResponse",
    "CreateEmbeddingRequest",
    "CreateEmbeddingResponse",
    "ListModelsResponse",
    "Model",
    "ErrorResponse",
)
REQUESTS = ("CreateChatCompletionRequest", "CreateCompletionRequest", "CreateEmbeddingRequest")
_REF_PREFIX = "#/components/schemas/"

# Keywords whose value is a schema, a list of schemas, or a name -> schema mapping.
_SCHEMA = ("items", "additionalProperties", "not", "contains", "propertyNames", "if", "then",
           "else", "unevaluatedItems", "unevaluatedProperties", "additionalItems")  # fmt: skip
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "dependentSchemas")
_DROPPED = ("example", "nullable")


def load_spec(path: Path) -> dict[str, Any]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with path.open("rb") as f:
        spec: dict[str, Any] = yaml.load(f, Loader=loader)
    return spec


def clean(schema: Any) -> Any:
    """``schema`` in OpenAPI 3.1 form, without extensions or examples (recursively)."""
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key.startswith("x-") or key in _DROPPED:
            continue
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {name: clean(sub) for name, sub in value.items()}
        elif key in _SCHEMA_LISTS and isinstance(value, list):
            out[key] = [clean(sub) for sub in value]
        elif key in _SCHEMA:
            out[key] = clean(value)
        else:
            out[key] = value
    return _with_null(out) if schema.get("nullable") is True else out


def _with_null(schema: dict[str, Any]) -> dict[str, Any]:
    """What ``nullable: true`` meant in OpenAPI 3.0, said in 3.1: null is allowed too."""
    kind = schema.get("type")
    if (
        isinstance(kind, str)
        and "$ref" not in schema
        and not any(k in schema for k in _SCHEMA_LISTS)
    ):
        schema["type"] = [kind, "null"]
        if "enum" in schema and None not in schema["enum"]:
            schema["enum"] = [*schema["enum"], None]
        return schema
    annotations = {k: schema.pop(k) for k in ("description", "default", "title") if k in schema}
    return {"anyOf": [schema, {"type": "null"}], **annotations}


def _refs(value: Any, found: set[str]) -> None:
    if isinstance(value, dict):
        for key, sub in value.items():
            if key == "$ref" and isinstance(sub, str):
                if not sub.startswith(_REF_PREFIX):
                    raise ValueError(f"unexpected $ref {sub!r}")
                found.add(sub.removeprefix(_REF_PREFIX))
            else:
                _refs(sub, found)
    elif isinstance(value, list):
        for sub in value:
            _refs(sub, found)


def closure(schemas: dict[str, Any], roots: tuple[str, ...]) -> list[str]:
    """The names of ``roots`` and of every schema they reach through ``$ref``, sorted."""
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        found: set[str] = set()
        _refs(schemas[name], found)
        todo.extend(found - seen)
    return sorted(seen)


def vendor(spec: dict[str, Any]) -> dict[str, Any]:
    """The trimmed component schemas, plus where they came from."""
    schemas = spec["components"]["schemas"]
    out = {name: clean(schemas[name]) for name in closure(schemas, ROOTS)}
    for name in REQUESTS:
        out[name].pop("additionalProperties", None)
    _map_discriminators(out, out)
    _engine_leeway(out)
    out["CreateCompletionStreamResponse"] = _completion_chunk(out["CreateCompletionResponse"])
    embedding = out["Embedding"]["properties"]["embedding"]
    out["Embedding"]["properties"]["embedding"] = {
        "description": embedding.pop("description", ""),
        "anyOf": [
            embedding,
            {
                "type": "string",
                "description": 'With `encoding_format: "base64"`: the vector as base64 of '
                "little-endian float32 values.",
            },
        ],
    }
    return {
        "source": "openai/openai-openapi, API version " + str(spec["info"]["version"]),
        "generated_by": "scripts/vendor_openai_schemas.py",
        "schemas": out,
    }


def _map_discriminators(value: Any, schemas: dict[str, Any]) -> None:
    """Give every mapping-less discriminator under ``value`` its explicit mapping (in place)."""
    if isinstance(value, list):
        for sub in value:
            _map_discriminators(sub, schemas)
        return
    if not isinstance(value, dict):
        return
    discriminator = value.get("discriminator")
    if isinstance(discriminator, dict) and "mapping" not in discriminator:
        name = discriminator["propertyName"]
        mapping: dict[str, str] = {}
        for alternative in value.get("oneOf") or value.get("anyOf") or []:
            ref = alternative["$ref"]
            allowed = schemas[ref.removeprefix(_REF_PREFIX)]["properties"][name]
            values = [allowed["const"]] if "const" in allowed else allowed["enum"]
            if len(values) != 1:
                raise ValueError(f"{ref}: {name} allows {values!r}, not one value")
            mapping[values[0]] = ref
        discriminator["mapping"] = mapping
    for sub in value.values():
        _map_discriminators(sub, schemas)


def _engine_leeway(schemas: dict[str, Any]) -> None:
    """Where vLLM's replies differ from OpenAI's spec (see the module docstring)."""
    message = schemas["ChatCompletionResponseMessage"]
    message["required"] = [name for name in message["required"] if name != "refusal"]
    usage = schemas["CompletionUsage"]["properties"]
    for name in ("prompt_tokens_details", "completion_tokens_details"):
        usage[name] = _with_null(usage[name])


def _completion_chunk(reply: dict[str, Any]) -> dict[str, Any]:
    chunk = copy.deepcopy(reply)
    chunk["description"] = (
        "One chunk of a streamed completion (null `finish_reason` and `usage` until the end)."
    )
    properties = chunk["properties"]
    properties["usage"] = _with_null(properties["usage"])
    choice = properties["choices"]["items"]["properties"]
    choice["finish_reason"] = _with_null(choice["finish_reason"])
    return chunk


def render(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    spec_path = Path(argv[0]) if argv else DEFAULT_SPEC
    out_path = Path(argv[1]) if len(argv) > 1 else DEFAULT_OUT
    out_path.write_text(render(vendor(load_spec(spec_path))), encoding="utf-8")
    print(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
