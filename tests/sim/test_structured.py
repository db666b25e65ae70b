"""Values drawn from JSON Schemas validate against them (checked with jsonschema_rs)."""

from __future__ import annotations

import enum
import random
from typing import Annotated, Any, Literal

import jsonschema_rs
import openai
import orjson
import pytest
from pydantic import BaseModel, Field

from aigw.sim.structured import DEEPEST, SamplerCache, SchemaError, SchemaSampler
from aigw.sim.text import Vocabulary

WORDS = Vocabulary(7).spaced
DRAWS = 150


def assert_valid(schema: Any, *, draws: int = DRAWS, object_root: bool = False) -> list[Any]:
    sampler = SchemaSampler(schema, WORDS, object_root=object_root)
    validator = jsonschema_rs.validator_for(schema)
    rng = random.Random(3)
    values = []
    for _ in range(draws):
        value = sampler.sample(rng)
        errors = [e.message for e in validator.iter_errors(value)]
        assert not errors, f"{value!r}: {errors}"
        values.append(value)
        text = sampler.text(rng)
        assert validator.is_valid(orjson.loads(text)), text
    return values


class Color(enum.StrEnum):
    RED = "red"
    GREEN = "green"


class Address(BaseModel):
    street: str
    zip_code: Annotated[str, Field(pattern=r"^\d{5}(-\d{4})?$")]


class TreeNode(BaseModel):
    label: str
    children: list[TreeNode] = []
    parent: TreeNode | None = None


class Person(BaseModel):
    name: Annotated[str, Field(min_length=3, max_length=10)]
    age: Annotated[int, Field(ge=0, lt=130)]
    score: Annotated[float, Field(gt=0, le=1, multiple_of=0.05)]
    color: Color
    kind: Literal["a", "b"]
    home: Address | None = None
    addresses: Annotated[list[Address], Field(min_length=1, max_length=3)]
    tags: Annotated[list[str], Field(max_length=2)] = []
    counts: dict[str, int]
    tree: TreeNode
    pair: tuple[int, str]
    unique: Annotated[set[Literal["x", "y", "z"]], Field(min_length=2)]
    ok: bool
    either: int | str | None


def test_a_pydantic_model_with_refs_enums_bounds_and_recursion() -> None:
    values = assert_valid(Person.model_json_schema())
    for value in values:
        Person.model_validate(value)  # what the OpenAI SDK's parse() does with the content
    assert any("home" in v for v in values) and any("home" not in v for v in values)
    assert {v["color"] for v in values} == {"red", "green"}
    assert any(v["tree"].get("children") for v in values)  # recursion is taken, and ends


def test_strict_schemas_as_the_openai_sdk_sends_them() -> None:
    schema = openai.pydantic_function_tool(Person)["function"]["parameters"]
    for value in assert_valid(schema):
        Person.model_validate(value)


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "integer", "minimum": 5, "exclusiveMaximum": 7},
        {"type": "integer", "exclusiveMinimum": -3, "maximum": -2},
        {"type": "integer", "multipleOf": 7, "minimum": 10, "maximum": 30},
        {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 0.001},
        {"type": "number", "multipleOf": 0.01, "minimum": 1.5, "maximum": 1.6},
        {"type": "number", "minimum": 1e12},
        {"type": "number", "maximum": -1e3},
        {"type": "string", "minLength": 40},
        {"type": "string", "maxLength": 0},
        {"type": "string", "minLength": 2, "maxLength": 3},
        {"type": "string", "pattern": "^[A-Z]{3}-[0-9a-f]{2,4}$"},
        {"type": "string", "pattern": r"(?i)^(yes|no)\b"},
        {"type": "string", "pattern": r"^(\w+)@\1\.com$"},
        {"type": "string", "format": "email"},
        {"type": "string", "format": "date-time"},
        {"type": "string", "format": "date"},
        {"type": "string", "format": "uuid"},
        {"type": "string", "format": "uri"},
        {"type": "string", "format": "ipv4"},
        {"type": ["string", "null"], "enum": ["a", None]},
        {"type": "array", "items": {"type": "boolean"}, "uniqueItems": True, "maxItems": 2},
        {"type": "array", "prefixItems": [{"const": 1}, {"type": "null"}], "items": False},
        {
            "$schema": "http://json-schema.org/draft-07/schema#",
            "type": "array",
            "items": [{"type": "integer"}],
            "additionalItems": False,
        },
        {"type": "array", "minItems": 4},
        {"type": "object", "additionalProperties": {"type": "number"}, "minProperties": 2},
        {"type": "object", "properties": {"a": {}}, "minProperties": 1, "maxProperties": 1},
        {"type": "object", "required": ["x"]},
        {
            "allOf": [
                {"properties": {"a": {"type": "integer"}}, "required": ["a"]},
                {"required": ["b"]},
            ]
        },
        {"oneOf": [{"type": "integer"}, {"type": "string", "maxLength": 1}]},
        {"anyOf": [{"type": "string"}, {"type": "integer"}], "default": 3},
        {"type": "string", "nullable": True},  # OpenAPI's: never null, valid either way
        {"$ref": "#/definitions/x", "definitions": {"x": {"type": "integer", "maximum": 0}}},
        {"const": {"deep": [1, 2]}},
        {
            "anyOf": [{"$ref": "#/$defs/a"}, {"type": "integer"}],
            "$defs": {"a": {"type": "string", "minLength": 2}},
        },
        True,
        {},
    ],
)
def test_keywords(schema: Any) -> None:
    assert_valid(schema, draws=60)


def test_draft4_boolean_exclusive_bounds() -> None:
    schema = {"type": "integer", "minimum": 1, "exclusiveMinimum": True, "maximum": 2}
    assert_valid({"$schema": "http://json-schema.org/draft-04/schema#", **schema}, draws=20)
    sampler = SchemaSampler(schema, WORDS)
    assert {sampler.sample(random.Random(i)) for i in range(20)} == {2}


def test_object_root_makes_an_empty_schema_an_object() -> None:
    assert SchemaSampler({}, WORDS, object_root=True).text(random.Random(0)) == "{}"
    assert isinstance(SchemaSampler({}, WORDS).sample(random.Random(0)), str)


def test_a_recursive_schema_that_must_nest_forever_is_refused() -> None:
    forever = {
        "$defs": {"n": {"type": "object", "properties": {"n": {"$ref": "#/$defs/n"}}}},
        "$ref": "#/$defs/n",
        "required": ["n"],
    }
    endless = {
        "$ref": "#/$defs/n",
        "$defs": {"n": {"type": "array", "items": {"$ref": "#/$defs/n"}, "minItems": 1}},
    }
    with pytest.raises(SchemaError, match=str(DEEPEST)):
        SchemaSampler(endless, WORDS).sample(random.Random(0))
    assert_valid(forever, draws=20)  # the required "n" is only on the root: it ends


@pytest.mark.parametrize(
    "schema",
    [
        False,
        {"$ref": "#/$defs/missing"},
        {"$ref": "https://example.com/schema.json"},
        {"type": "integer", "minimum": 3, "maximum": 2},
        {"type": "integer", "multipleOf": 10, "minimum": 1, "maximum": 9},
        {"type": "spaceship"},
        {"$ref": "#/$defs/a", "$defs": {"a": {"$ref": "#/$defs/a"}}},
        [1, 2],
    ],
)
def test_unusable_schemas_raise_schema_error(schema: Any) -> None:
    with pytest.raises(SchemaError):
        SchemaSampler(schema, WORDS).sample(random.Random(0))


def test_the_cache_compiles_each_distinct_schema_once() -> None:
    cache = SamplerCache(WORDS, size=2)
    first = cache.get({"type": "object", "properties": {"a": {"type": "integer"}}})
    assert cache.get({"properties": {"a": {"type": "integer"}}, "type": "object"}) is first
    assert cache.get({}, object_root=True) is not cache.get({})
    cache.get({"type": "string"})  # evicts the least recently used
    assert cache.get({"type": "object", "properties": {"a": {"type": "integer"}}}) is not first
