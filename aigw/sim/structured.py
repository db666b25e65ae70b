"""Structured output: JSON values that satisfy a JSON Schema, as guided decoding would let a
model emit them (``response_format`` json_object / json_schema, a forced tool's arguments).

A schema is compiled once into a tree of sampling functions (:class:`SchemaSampler`); a
:class:`SamplerCache` keeps the samplers of the distinct schemas an app has seen (LRU), so a
request with a known schema pays one ``orjson.dumps`` of its schema for the cache key and then
only the walk that builds its value. Values are nonsense (the app's pseudo-words, numbers from
the allowed range) but valid.

What is honoured: ``type`` (also as a list), ``const``, ``enum``; objects (``properties``,
``required``, ``additionalProperties`` as a schema for maps, ``minProperties``/
``maxProperties``); arrays (``items``, ``prefixItems`` or the older list form of ``items``,
``minItems``/``maxItems``, ``uniqueItems`` as best it can); strings (``minLength``/
``maxLength``, ``pattern`` via :mod:`aigw.sim.patterns`, the common ``format`` values);
numbers and integers (``minimum``/``maximum``, both forms of ``exclusiveMinimum``/
``exclusiveMaximum``, ``multipleOf``); booleans and null; ``anyOf``/``oneOf`` (one branch;
``oneOf`` branches are assumed disjoint), ``allOf`` (merged), ``$ref`` to any JSON pointer in
the document (``#/$defs/...`` as pydantic emits it, ``#/definitions/...``, ``#``), recursive
schemas included. Optional properties appear about half of the time. Ignored: ``not``,
``if``/``then``/``else``, ``patternProperties``, ``contains``, ``dependent*``, OpenAPI's
``nullable`` (never null: valid whether or not a reader honours it); a pattern with
lookarounds gives plain text.

Recursion: below :data:`SHALLOW` levels of nesting a value takes the smallest shape the schema
allows (required properties only, ``minItems`` items, a branch without ``$ref`` when there is
one), so a recursive schema ends; a schema that cannot end by :data:`DEEPEST` levels raises
:class:`SchemaError`, as does a ``false`` schema or a ``$ref`` that does not resolve.
"""

from __future__ import annotations

import json
import math
import random
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import unquote

import orjson

from aigw.sim.patterns import PatternError, compile_pattern

__all__ = ["DEEPEST", "SHALLOW", "SamplerCache", "SchemaError", "SchemaSampler"]

SHALLOW = 4
DEEPEST = 32
_CACHE_SIZE = 256
_SPAN = 100  # integers drawn within this span of a one-sided bound (or around 0)

Node = Callable[[random.Random, int], Any]  # (rng, depth) -> value
# keywords beside a $ref that do not constrain the value
_ANNOTATIONS = frozenset(
    "$defs definitions $schema $id $comment title description default examples deprecated "
    "readOnly writeOnly".split()
)


class SchemaError(ValueError):
    """A schema no value can be sampled from."""


class SchemaSampler:
    """Draws values valid against one schema; built once per distinct schema."""

    __slots__ = ("_node",)

    def __init__(self, schema: Any, words: Sequence[str], *, object_root: bool = False) -> None:
        """``object_root``: a schema without a type at the top describes an object (a tool's
        ``parameters``: ``{}`` means no arguments). Raises SchemaError."""
        if object_root and isinstance(schema, dict) and "type" not in schema:
            schema = {**schema, "type": "object"}
        try:
            self._node = _Compiler(schema, tuple(words)).node(schema)
        except SchemaError:
            raise
        except (TypeError, ValueError, AttributeError, KeyError, RecursionError) as exc:
            raise SchemaError(f"unusable schema: {exc!r}") from exc

    def sample(self, rng: random.Random) -> Any:
        """A value; SchemaError when the schema's recursion cannot end (or a keyword has a
        value of the wrong type, found only where sampling reaches it)."""
        try:
            return self._node(rng, 0)
        except SchemaError:
            raise
        except (TypeError, ValueError, AttributeError, KeyError, RecursionError) as exc:
            raise SchemaError(f"unusable schema: {exc!r}") from exc

    def text(self, rng: random.Random) -> str:
        """A value as compact JSON text."""
        value = self.sample(rng)
        try:
            return orjson.dumps(value).decode()
        except orjson.JSONEncodeError:  # an integer beyond 64 bits
            return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class SamplerCache:
    """Samplers by schema (LRU of ``size``), for one app's word list."""

    __slots__ = ("_samplers", "_size", "_words")

    def __init__(self, words: Sequence[str], size: int = _CACHE_SIZE) -> None:
        self._words = tuple(words)
        self._size = size
        self._samplers: OrderedDict[bytes, SchemaSampler] = OrderedDict()

    def get(self, schema: Any, *, object_root: bool = False) -> SchemaSampler:
        """The sampler of ``schema``; SchemaError when it cannot be compiled."""
        try:
            key = orjson.dumps(schema, option=orjson.OPT_SORT_KEYS) + b"o" * object_root
        except orjson.JSONEncodeError as exc:
            raise SchemaError(f"the schema is not JSON: {exc}") from exc
        sampler = self._samplers.get(key)
        if sampler is None:
            sampler = SchemaSampler(schema, self._words, object_root=object_root)
            self._samplers[key] = sampler
            if len(self._samplers) > self._size:
                self._samplers.popitem(last=False)
        else:
            self._samplers.move_to_end(key)
        return sampler


def _has_ref(schema: Any) -> bool:
    if isinstance(schema, dict):
        return "$ref" in schema or any(_has_ref(v) for v in schema.values())
    if isinstance(schema, list):
        return any(_has_ref(v) for v in schema)
    return False


def _pointer(root: Any, ref: str) -> Any:
    if not ref.startswith("#"):
        raise SchemaError(f"only local $ref are supported, got {ref!r}")
    target = root
    for token in unquote(ref[1:]).split("/")[1:]:
        token = token.replace("~1", "/").replace("~0", "~")
        if isinstance(target, dict) and token in target:
            target = target[token]
        elif isinstance(target, list) and token.isdigit() and int(token) < len(target):
            target = target[int(token)]
        else:
            raise SchemaError(f"$ref {ref!r} does not resolve")
    return target


class _Compiler:
    """Turns one document's schemas into nodes; ``$ref`` targets are compiled once, lazily."""

    def __init__(self, root: Any, words: tuple[str, ...]) -> None:
        self.root = root
        self.words = words or ("word",)
        self.refs: dict[str, Node] = {}

    # -- dispatch ------------------------------------------------------------------------

    def node(self, schema: Any) -> Node:
        if schema is True or schema == {}:
            return self._anything
        if schema is False:
            raise SchemaError("a 'false' schema admits no value")
        if not isinstance(schema, dict):
            raise SchemaError(f"a schema must be an object or a boolean, got {schema!r}")
        if "$ref" in schema:
            return self._ref(schema)
        if "allOf" in schema:
            return self.node(self._merge_all(schema))
        for key in ("anyOf", "oneOf"):
            if isinstance(schema.get(key), list) and schema[key]:
                siblings = {k: v for k, v in schema.items() if k not in ("anyOf", "oneOf")}
                return self._branches(schema[key], siblings)
        if "const" in schema:
            const = schema["const"]
            return lambda rng, depth: const
        if isinstance(schema.get("enum"), list) and schema["enum"]:
            values = schema["enum"]
            return lambda rng, depth: rng.choice(values)
        kind = schema.get("type")
        if isinstance(kind, list):
            kinds = [k for k in kind if isinstance(k, str)]
            if not kinds:
                raise SchemaError("'type' lists no type")
            return self._branches([{**schema, "type": k} for k in kinds], {})
        return self._typed(_infer_type(schema) if kind is None else kind, schema)

    def _typed(self, kind: Any, schema: dict[str, Any]) -> Node:
        builders: dict[str, Callable[[dict[str, Any]], Node]] = {
            "object": self._object,
            "array": self._array,
            "string": self._string,
            "integer": _integer,
            "number": _number,
            "boolean": lambda s: lambda rng, depth: rng.random() < 0.5,
            "null": lambda s: lambda rng, depth: None,
        }
        builder = builders.get(kind) if isinstance(kind, str) else None
        if builder is None:
            raise SchemaError(f"unknown type {kind!r}")
        return builder(schema)

    def _anything(self, rng: random.Random, depth: int) -> Any:
        return rng.choice(self.words).strip()

    # -- composition ---------------------------------------------------------------------

    def _ref(self, schema: dict[str, Any]) -> Node:
        ref = schema["$ref"]
        if not isinstance(ref, str):
            raise SchemaError("'$ref' must be a string")
        siblings = {k: v for k, v in schema.items() if k not in _ANNOTATIONS and k != "$ref"}
        if siblings:  # 2019-09 and later: $ref is one constraint among its siblings
            return self.node({"allOf": [{"$ref": ref}, siblings]})
        target = self.refs.get(ref)
        if target is not None:
            return target
        resolved = _pointer(self.root, ref)
        compiled: list[Node] = []

        def follow(rng: random.Random, depth: int) -> Any:
            if not compiled:
                compiled.append(self.node(resolved))
            return compiled[0](rng, depth)

        self.refs[ref] = follow
        return follow

    def _deref(self, schema: Any) -> Any:
        seen = 0
        while isinstance(schema, dict) and set(schema) <= {"$ref", "description", "title"}:
            if "$ref" not in schema or seen > DEEPEST:
                break
            schema = _pointer(self.root, schema["$ref"])
            seen += 1
        return schema

    def _merge_all(self, schema: dict[str, Any]) -> dict[str, Any]:
        """``allOf`` as one schema: properties merged, required united, later keys win."""
        merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
        parts = [self._deref(part) for part in schema["allOf"]]
        for part in [*parts, merged.copy()]:
            if not isinstance(part, dict):
                continue
            if "allOf" in part:
                part = self._merge_all(part)
            properties = {**merged.get("properties", {}), **part.get("properties", {})}
            required = [*merged.get("required", []), *part.get("required", [])]
            merged.update(part)
            if properties:
                merged["properties"] = properties
            if required:
                merged["required"] = list(dict.fromkeys(required))
        return merged

    def _branches(self, options: list[Any], siblings: dict[str, Any]) -> Node:
        keep = {k: v for k, v in siblings.items() if k not in _ANNOTATIONS}
        schemas = [{**keep, **o} if isinstance(o, dict) and keep else o for o in options]
        nodes = [self.node(s) for s in schemas]
        ending = [n for n, s in zip(nodes, schemas, strict=True) if not _has_ref(s)] or nodes

        def pick(rng: random.Random, depth: int) -> Any:
            return rng.choice(ending if depth >= SHALLOW else nodes)(rng, depth)

        return pick

    # -- objects and arrays --------------------------------------------------------------

    def _object(self, schema: dict[str, Any]) -> Node:
        properties = schema.get("properties") or {}
        extra_schema = schema.get("additionalProperties")
        extra = self.node(extra_schema) if isinstance(extra_schema, dict) else None
        required = [r for r in schema.get("required", []) if isinstance(r, str)]
        fields = {name: self.node(sub) for name, sub in properties.items()}
        for name in required:
            if name not in fields:
                fields[name] = extra or self._anything
        optional = [name for name in fields if name not in required]
        least = schema.get("minProperties", 0)
        most = schema.get("maxProperties", math.inf)
        # a map (dict[str, X]) gets a few entries of its own; an object with properties
        # gets extra entries only to reach minProperties
        wanted = (1, 3) if extra is not None and not properties else (0, 0)
        words = self.words

        def build(rng: random.Random, depth: int) -> dict[str, Any]:
            _check(depth)
            shallow = depth < SHALLOW
            count = len(required)
            chosen = set(required)
            for name in optional:
                if count < least or (shallow and count < most and rng.random() < 0.5):
                    chosen.add(name)
                    count += 1
            value = {name: node(rng, depth + 1) for name, node in fields.items() if name in chosen}
            if extra is not None:
                goal = max(least, rng.randint(*wanted) if shallow else 0)
                goal = min(goal, most)
                tries = 0
                while len(value) < goal and tries < goal * 4 + 4:
                    tries += 1
                    key = rng.choice(words).strip()
                    if key not in value:
                        value[key] = extra(rng, depth + 1)
            return value

        return build

    def _array(self, schema: dict[str, Any]) -> Node:
        items = schema.get("items")
        prefix_schemas = schema.get("prefixItems")
        if isinstance(items, list):  # draft 4-7 tuple form
            prefix_schemas, items = items, schema.get("additionalItems")
        prefix = [self.node(s) for s in prefix_schemas or []]
        rest = None if items is False else self._anything if items is None else self.node(items)
        least = schema.get("minItems", 0)
        most = schema.get("maxItems", math.inf)
        unique = schema.get("uniqueItems") is True
        if rest is None:
            most = min(most, len(prefix))

        def build(rng: random.Random, depth: int) -> list[Any]:
            _check(depth)
            if depth < SHALLOW:
                count = rng.randint(least, max(least, min(most, max(least + 2, 3))))
            else:
                count = least
            count = min(count, most) if most != math.inf else count
            values: list[Any] = []
            seen: set[bytes] = set()
            tries = 0
            while len(values) < count and tries < count * 5 + 5:
                tries += 1
                node = prefix[len(values)] if len(values) < len(prefix) else rest
                if node is None:
                    break
                value = node(rng, depth + 1)
                if unique:
                    key = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
                    if key in seen:
                        continue
                    seen.add(key)
                values.append(value)
            return values

        return build

    # -- strings -------------------------------------------------------------------------

    def _string(self, schema: dict[str, Any]) -> Node:
        least = int(schema.get("minLength", 0))
        most = schema.get("maxLength")
        pattern = schema.get("pattern")
        if isinstance(pattern, str):
            try:
                draw = compile_pattern(pattern)
                return lambda rng, depth: draw(rng)
            except PatternError:
                pass  # plain text below: a best effort
        fmt = _FORMATS.get(schema.get("format", ""))
        words = self.words

        def build(rng: random.Random, depth: int) -> str:
            if fmt is not None:
                return fmt(rng, words)
            text = "".join(rng.choices(words, k=rng.randint(1, 4))).strip()
            while len(text) < least:
                text += rng.choice(words)
            if most is not None and len(text) > most:
                text = text[: int(most)].rstrip() if least < most else text[: int(most)]
            if len(text) < least:  # rstrip went below the minimum
                text = text.ljust(least, "a")
            return text

        return build


def _check(depth: int) -> None:
    if depth > DEEPEST:
        raise SchemaError(f"the schema nests deeper than {DEEPEST} levels without an end")


def _infer_type(schema: dict[str, Any]) -> str:
    if any(k in schema for k in ("properties", "required", "additionalProperties")):
        return "object"
    if any(k in schema for k in ("items", "prefixItems", "minItems", "maxItems")):
        return "array"
    if any(k in schema for k in ("minimum", "maximum", "exclusiveMinimum", "multipleOf")):
        return "number"
    return "string"


def _bounds(schema: dict[str, Any], integer: bool) -> tuple[float, float]:
    """The closed range allowed by the numeric bounds (integers: rounded inwards)."""
    low, high = schema.get("minimum"), schema.get("maximum")
    ex_low, ex_high = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    if ex_low is True:  # draft 4: a flag on minimum
        ex_low, low = low, None
    if ex_high is True:
        ex_high, high = high, None
    lows = [v for v in (_number_or_none(low),) if v is not None]
    highs = [v for v in (_number_or_none(high),) if v is not None]
    if (after := _number_or_none(ex_low)) is not None:
        lows.append(after + 1 if integer else math.nextafter(after, math.inf))
    if (before := _number_or_none(ex_high)) is not None:
        highs.append(before - 1 if integer else math.nextafter(before, -math.inf))
    lo = max(lows) if lows else min(highs, default=_SPAN) - _SPAN
    hi = min(highs) if highs else lo + _SPAN
    if integer:
        lo, hi = math.ceil(lo), math.floor(hi)
    if lo > hi:
        raise SchemaError("the numeric bounds admit no value")
    return lo, hi


def _number_or_none(value: Any) -> float | None:
    """``value`` when it is a JSON number (ints stay ints), else None."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value
    return None


def _multiple(schema: dict[str, Any]) -> float | None:
    step = _number_or_none(schema.get("multipleOf"))
    return step if step is not None and step > 0 else None


def _integer(schema: dict[str, Any]) -> Node:
    lo, hi = _bounds(schema, integer=True)
    step = _multiple(schema)
    if step is not None:
        return _multiples(lo, hi, step, integer=True)
    low, high = int(lo), int(hi)
    return lambda rng, depth: rng.randint(low, high)


def _number(schema: dict[str, Any]) -> Node:
    lo, hi = _bounds(schema, integer=False)
    step = _multiple(schema)
    if step is not None:
        return _multiples(lo, hi, step, integer=False)

    def build(rng: random.Random, depth: int) -> float:
        value = round(rng.uniform(lo, hi), 2)
        return value if lo <= value <= hi else (lo + hi) / 2

    return build


def _multiples(lo: float, hi: float, step: float, *, integer: bool) -> Node:
    first, last = math.ceil(lo / step), math.floor(hi / step)
    if first > last:
        raise SchemaError("no multiple of 'multipleOf' lies within the bounds")
    decimals = max(0, -math.floor(math.log10(step))) + 2 if step < 1 else 0
    whole = float(step).is_integer()

    def build(rng: random.Random, depth: int) -> float | int:
        value = rng.randint(first, last) * step
        if whole or integer:
            return round(value)
        return round(value, decimals)

    return build


def _date(rng: random.Random) -> str:
    return f"20{rng.randint(10, 30)}-{rng.randint(1, 12):02}-{rng.randint(1, 28):02}"


def _time(rng: random.Random) -> str:
    return f"{rng.randint(0, 23):02}:{rng.randint(0, 59):02}:{rng.randint(0, 59):02}Z"


def _uuid(rng: random.Random) -> str:
    h = f"{rng.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:]}"


def _word(rng: random.Random, words: Sequence[str]) -> str:
    return rng.choice(words).strip().lower() or "x"


_FORMATS: dict[str, Callable[[random.Random, Sequence[str]], str]] = {
    "date-time": lambda rng, w: f"{_date(rng)}T{_time(rng)}",
    "date": lambda rng, w: _date(rng),
    "time": lambda rng, w: _time(rng),
    "duration": lambda rng, w: f"P{rng.randint(1, 30)}D",
    "email": lambda rng, w: f"{_word(rng, w)}@example.com",
    "idn-email": lambda rng, w: f"{_word(rng, w)}@example.com",
    "hostname": lambda rng, w: f"{_word(rng, w)}.example.com",
    "idn-hostname": lambda rng, w: f"{_word(rng, w)}.example.com",
    "ipv4": lambda rng, w: f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
    "ipv6": lambda rng, w: f"2001:db8::{rng.randint(1, 0xFFFF):x}",
    "uri": lambda rng, w: f"https://example.com/{_word(rng, w)}",
    "url": lambda rng, w: f"https://example.com/{_word(rng, w)}",
    "iri": lambda rng, w: f"https://example.com/{_word(rng, w)}",
    "uri-reference": lambda rng, w: f"/{_word(rng, w)}",
    "iri-reference": lambda rng, w: f"/{_word(rng, w)}",
    "uuid": lambda rng, w: _uuid(rng),
}
