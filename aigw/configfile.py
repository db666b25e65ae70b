"""Read a config file: YAML, ``${ENV}`` interpolation, schema validation, cross-room checks.

``load_config(path)`` reads the file, replaces ``${ENV}`` (and ``${ENV:-default}``) in every
string, validates it against :mod:`aigw.config`'s schema and the policy tables, and raises
:class:`~aigw.errors.ConfigError` listing *every* problem as
``FILE: field.path: what was expected (got ...)`` so that an operator fixes them in one pass.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from aigw.config import GatewayConfig
from aigw.errors import ConfigError
from aigw.policies import policy_problems

__all__ = ["load_config", "parse_config"]

_ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def load_config(path: str | Path) -> GatewayConfig:
    """Read, interpolate and validate a config file; raise ConfigError naming every problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read config file: {exc.strerror or exc}"]) from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{path}{where}: invalid YAML: {problem}"]) from exc
    return parse_config(raw, source=str(path))


def parse_config(raw: object, *, source: str = "<config>") -> GatewayConfig:
    """Validate an already-parsed YAML document (``${ENV}`` is interpolated here)."""
    if not isinstance(raw, dict):
        raise ConfigError([f"{source}: expected a mapping at the top level (got {_kind(raw)})"])
    problems: list[str] = []
    interpolated = _interpolate(raw, (), problems, source)
    if problems:
        raise ConfigError(problems)
    problems = _policy_problems(interpolated, source)
    try:
        config = GatewayConfig.model_validate(interpolated)
    except ValidationError as exc:
        raise ConfigError(_format_validation(exc, source) + problems) from exc
    if problems:
        raise ConfigError(problems)
    return config


def _policy_problems(raw: dict[str, Any], source: str) -> list[str]:
    """Each model's ``policy`` checked against the policy tables (the schema cannot)."""
    models = raw.get("models")
    if not isinstance(models, list):
        return []
    problems: list[str] = []
    for i, model in enumerate(models):
        if isinstance(model, dict) and isinstance(model.get("policy"), str | dict):
            problems.extend(
                f"{source}: models[{i}].policy: {p}" for p in policy_problems(model["policy"])
            )
    return problems


def _interpolate(
    value: object, path: tuple[str | int, ...], problems: list[str], source: str
) -> Any:
    if isinstance(value, str):

        def replace(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            found = os.environ.get(name)
            if found is not None:
                return found
            if default is not None:
                return default
            problems.append(
                f"{source}: {_dotted(path)}: environment variable {name} is not set "
                f"(set it, or write ${{{name}:-default}})"
            )
            return ""

        return _ENV_PATTERN.sub(replace, value)
    if isinstance(value, dict):
        return {k: _interpolate(v, (*path, str(k)), problems, source) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, (*path, i), problems, source) for i, v in enumerate(value)]
    return value


def _format_validation(exc: ValidationError, source: str) -> list[str]:
    problems: list[str] = []
    for error in exc.errors(include_url=False):
        loc = _dotted(error["loc"])
        message = error["msg"]
        if message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        if error["type"] == "extra_forbidden":
            message = "unknown field (check the spelling against the README's config reference)"
        elif error["type"] == "missing":
            message = "required field is missing"
        elif "input" in error and error["type"] not in ("value_error", "assertion_error"):
            shown = "a secret, not shown" if _secret_field(error["loc"]) else _short(error["input"])
            message = f"{message} (got {shown})"
        if loc:
            # Cross-reference problems carry their own paths, joined with "; ".
            if error["type"] == "value_error" and not error["loc"]:
                problems.extend(f"{source}: {p}" for p in message.split("; "))
                continue
            problems.append(f"{source}: {loc}: {message}")
        else:
            problems.extend(f"{source}: {p}" for p in message.split("; "))
    return problems


# Fields whose input may be a secret: a config error (printed, logged) never quotes them.
_SECRET_FIELDS = frozenset({"key", "api_key", "admin_key", "headers", "url"})


def _secret_field(loc: tuple[str | int, ...] | list[str | int]) -> bool:
    return any(part in _SECRET_FIELDS for part in loc)


def _dotted(path: tuple[str | int, ...] | list[str | int]) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _kind(value: object) -> str:
    return "nothing" if value is None else type(value).__name__
