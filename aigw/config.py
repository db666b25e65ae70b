"""The gateway's YAML configuration, validated by pydantic.

``load_config(path)`` reads the file, replaces ``${ENV}`` (and ``${ENV:-default}``) in every
string, validates, and raises :class:`~aigw.errors.ConfigError` listing *every* problem as
``FILE: field.path: what was expected (got ...)`` so that an operator fixes them in one pass.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from aigw.errors import ConfigError

__all__ = [
    "AuthConfig",
    "DeploymentConfig",
    "GatewayConfig",
    "HealthConfig",
    "ModelConfig",
    "ServerConfig",
    "StateConfig",
    "TimeoutsConfig",
    "TokensConfig",
    "load_config",
    "parse_config",
]

PROVIDER_NAMES = ("openai", "anthropic")
_ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

PositiveFloat = Annotated[float, Field(gt=0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    max_body_bytes: int = Field(8 * 1024 * 1024, gt=0)
    # Seconds a shutdown waits for in-flight requests before cutting them.
    drain_seconds: float = Field(15.0, ge=0)


class StateConfig(_Strict):
    backend: Literal["memory", "redis"] = "memory"
    url: str | None = None
    on_redis_down: Literal["local", "reject"] = "local"

    @model_validator(mode="after")
    def _url_for_redis(self) -> StateConfig:
        if self.backend == "redis" and not self.url:
            raise ValueError(
                "url is required when backend is redis (e.g. redis://127.0.0.1:6379/0)"
            )
        return self


class TimeoutsConfig(_Strict):
    """Per-deployment timeouts in seconds."""

    connect: PositiveFloat = 5.0
    first_byte: PositiveFloat = 60.0  # request sent -> first response byte (covers prefill)
    idle: PositiveFloat = 30.0  # longest gap between two stream chunks
    total: PositiveFloat = 600.0  # whole upstream exchange


class CostConfig(_Strict):
    """Price of a deployment in USD per million tokens (0 for self-hosted by default)."""

    input_per_mtok: float = Field(0.0, ge=0)
    output_per_mtok: float = Field(0.0, ge=0)


class DeploymentConfig(_Strict):
    id: str = Field(min_length=1)
    provider: str = "openai"
    base_url: str
    model: str = Field(min_length=1)
    api_key: SecretStr | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    metrics_url: str | None = None
    max_concurrency: int | None = Field(None, gt=0)
    weight: float = Field(1.0, gt=0)
    timeouts: TimeoutsConfig = Field(default_factory=TimeoutsConfig)
    # gpu: a self-hosted engine (scored from its metrics); cloud: a provider API (scored from
    # gateway-observed latency). Default: gpu when metrics_url is set, else cloud.
    kind: Literal["gpu", "cloud"] | None = None
    context_window: int | None = Field(None, gt=0)  # prompt + max_tokens must fit
    region: str | None = None
    tags: list[str] = Field(default_factory=list)
    lora_adapters: list[str] = Field(default_factory=list)  # adapters it can load on demand
    cost: CostConfig = Field(default_factory=lambda: CostConfig())

    @property
    def is_cloud(self) -> bool:
        return self.kind == "cloud" if self.kind is not None else self.metrics_url is None

    @field_validator("provider")
    @classmethod
    def _known_provider(cls, value: str) -> str:
        if value not in PROVIDER_NAMES:
            raise ValueError(f"expected one of {', '.join(PROVIDER_NAMES)} (got {value!r})")
        return value

    @field_validator("base_url", "metrics_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"expected an http:// or https:// URL (got {value!r})")
        return value.rstrip("/") if value else value


class SpilloverConfig(_Strict):
    """When the GPU pool's predicted TTFT passes slo_ttft_ms, `auto` may use cloud deployments."""

    enabled: bool = True
    max_cost_per_mtok: float | None = Field(None, ge=0)  # skip cloud deployments pricier than this


class ModelConfig(_Strict):
    name: str = Field(min_length=1)
    fallbacks: list[str] = Field(default_factory=list)
    deployments: list[DeploymentConfig] = Field(min_length=1)
    # Predicted time to first token above which `auto` spills over to cloud deployments.
    slo_ttft_ms: float | None = Field(None, gt=0)
    spillover: SpilloverConfig = Field(default_factory=lambda: SpilloverConfig())
    adapter: str | None = None  # LoRA adapter this model's requests need on the engine

    policy: str | dict[str, Any] = "auto"

    @field_validator("policy")
    @classmethod
    def _known_policy(cls, value: str | dict[str, Any]) -> str | dict[str, Any]:
        from aigw.policies import policy_problems  # late: policies import this module

        problems = policy_problems(value)
        if problems:
            raise ValueError("; ".join(problems))
        return value


class AuthConfig(_Strict):
    keys: list[dict[str, Any]] = Field(default_factory=list)
    admin_key: SecretStr | None = None  # an empty value (e.g. ${AIGW_ADMIN_KEY:-}) means none

    @field_validator("admin_key")
    @classmethod
    def _empty_is_none(cls, value: SecretStr | None) -> SecretStr | None:
        return value if value is not None and value.get_secret_value() else None


class TokensConfig(_Strict):
    # Directory of tiktoken encoding files (air-gapped installs); falls back to
    # TIKTOKEN_CACHE_DIR, then to a length-based estimate.
    encodings_dir: str | None = None
    encoding: str = "cl100k_base"


class RoutingConfig(_Strict):
    """Engine-metric scraping and prefix affinity."""

    scrape_interval: PositiveFloat = 1.0  # seconds between scrapes of each metrics_url (jittered)
    stale_after_intervals: PositiveFloat = 3.0  # older metrics are ignored by scorers
    prefix_block_chars: int = Field(256, gt=0)  # prompt prefix hashed in blocks of this size
    prefix_blocks_per_deployment: int = Field(16384, gt=0)  # LRU bound of remembered blocks


class HealthConfig(_Strict):
    """Passive outlier detection: eject a deployment after consecutive failures."""

    consecutive_failures: int = Field(3, gt=0)
    base_ejection_seconds: PositiveFloat = 5.0
    max_ejection_seconds: PositiveFloat = 120.0


class RetryConfig(_Strict):
    # Deployments tried per request (first try included) before moving to fallbacks.
    max_attempts: int = Field(3, gt=0)


class GatewayConfig(_Strict):
    server: ServerConfig = Field(default_factory=ServerConfig)
    state: StateConfig = Field(default_factory=StateConfig)
    models: list[ModelConfig] = Field(min_length=1)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    tokens: TokensConfig = Field(default_factory=TokensConfig)
    health: HealthConfig = Field(default_factory=HealthConfig)
    retry: RetryConfig = Field(default_factory=RetryConfig)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)

    @model_validator(mode="after")
    def _cross_references(self) -> GatewayConfig:
        problems: list[str] = []
        names = [m.name for m in self.models]
        seen: set[str] = set()
        for i, name in enumerate(names):
            if name in seen:
                problems.append(f"models[{i}].name: duplicate model name {name!r}")
            seen.add(name)
        ids: set[str] = set()
        for i, model in enumerate(self.models):
            for j, dep in enumerate(model.deployments):
                if dep.id in ids:
                    problems.append(
                        f"models[{i}].deployments[{j}].id: deployment ids must be unique "
                        f"across models (got {dep.id!r} twice)"
                    )
                ids.add(dep.id)
            for k, fallback in enumerate(model.fallbacks):
                if fallback not in seen:
                    problems.append(
                        f"models[{i}].fallbacks[{k}]: expected the name of a configured model "
                        f"(got {fallback!r})"
                    )
                elif fallback == model.name:
                    problems.append(
                        f"models[{i}].fallbacks[{k}]: a model cannot fall back to itself"
                    )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def model(self, name: str) -> ModelConfig | None:
        for model in self.models:
            if model.name == name:
                return model
        return None


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
    try:
        return GatewayConfig.model_validate(interpolated)
    except ValidationError as exc:
        raise ConfigError(_format_validation(exc, source)) from exc


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
            message = f"{message} (got {_short(error['input'])})"
        if loc:
            # Cross-reference problems carry their own paths, joined with "; ".
            if error["type"] == "value_error" and not error["loc"]:
                problems.extend(f"{source}: {p}" for p in message.split("; "))
                continue
            problems.append(f"{source}: {loc}: {message}")
        else:
            problems.extend(f"{source}: {p}" for p in message.split("; "))
    return problems


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
