"""The gateway's configuration schema, as pydantic models.

Reading a file (``${ENV}`` interpolation, error messages naming file and field, checks that
need other rooms' tables such as policy names) lives in :mod:`aigw.configfile`; this module
is the schema alone, so every room may import it.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

__all__ = [
    "AuthConfig",
    "DemotionConfig",
    "DeploymentConfig",
    "GatewayConfig",
    "HealthConfig",
    "KeyConfig",
    "ModelConfig",
    "ProbeConfig",
    "QueueConfig",
    "RetryConfig",
    "ServerConfig",
    "StateConfig",
    "StickyConfig",
    "TimeoutsConfig",
    "TokensConfig",
]

PROVIDER_NAMES = ("openai", "anthropic")

PositiveFloat = Annotated[float, Field(gt=0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    # Gateway processes on the port (aigw/workers.py); more than one needs state.backend: redis.
    workers: int = Field(1, ge=1, le=256)
    max_body_bytes: int = Field(8 * 1024 * 1024, gt=0)
    # A non-streamed upstream reply over this (counted after decompression) is a retryable 502.
    max_upstream_reply_bytes: int = Field(16 * 1024 * 1024, gt=0)
    # Seconds a shutdown waits for in-flight requests before cutting them (a stream still
    # running then ends with a `gateway_shutting_down` error event, an unanswered request
    # gets a 503).
    drain_seconds: float = Field(15.0, ge=0)
    # On SIGTERM/SIGINT, /readyz answers 503 at once but the listener stays open this long, so
    # that a load balancer (a Kubernetes endpoint update) stops sending first.
    shutdown_delay_s: float = Field(1.0, ge=0, le=300)
    # What one client connection may hold (aigw/connections.py): beyond max_connections a new
    # connection gets 503; a request head over max_header_bytes gets 431; a head must arrive
    # within header_timeout_s (408) and its body within body_timeout_s after it; a client that
    # accepts no response data for send_timeout_s is dropped (its upstream request cancelled).
    max_connections: int = Field(2048, gt=0)
    max_header_bytes: int = Field(64 * 1024, ge=1024)
    header_timeout_s: float = Field(10.0, gt=0)
    body_timeout_s: float = Field(30.0, gt=0)
    send_timeout_s: float = Field(30.0, gt=0)


class StateConfig(_Strict):
    """Where queues, limits and leases live: this process (memory) or a shared Redis."""

    backend: Literal["memory", "redis"] = "memory"
    url: str | None = None
    # local: fall back to per-process state (logged loudly) and return to Redis by itself;
    # reject: answer 503 while Redis is unreachable.
    on_redis_down: Literal["local", "reject"] = "local"
    timeout_s: float = Field(0.5, gt=0, le=10)  # socket timeout of every Redis call
    lease_ttl_s: float = Field(15.0, ge=1, le=600)  # a dead instance's slots return after this
    key_prefix: str = Field("aigw:", min_length=1, max_length=64)

    @field_validator("url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            # Only the scheme is echoed: the rest may hold a password.
            raise ValueError(
                "expected a redis://, rediss:// or unix:// URL "
                f"(got one starting {urlsplit(value).scheme or value[:8]!r})"
            )
        return value

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


class ProbeConfig(_Strict):
    """Active health probe of one deployment (:mod:`aigw.routing.probes`), HAProxy-like.

    ``GET {origin of base_url}{path}`` every ``interval_s`` (jittered); an answer other than
    2xx within ``timeout_s`` is a failure. ``fall`` consecutive failures mark the deployment
    down (out of rotation like an ejected one), ``rise`` consecutive successes mark it up
    again (then it ramps up over ``health.slow_start_s``). ``enabled: false`` turns the
    probe off (a GPU deployment is probed by default; a cloud one only when ``path`` is set).
    """

    enabled: bool = True
    path: str = "/health"
    interval_s: float = Field(2.0, ge=0.05, le=3600)
    timeout_s: float = Field(1.0, gt=0, le=60)
    rise: int = Field(2, ge=1, le=100)
    fall: int = Field(3, ge=1, le=100)

    @field_validator("path")
    @classmethod
    def _absolute_path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"expected a path starting with / such as /health (got {value!r})")
        return value


class DecodeStepConfig(_Strict):
    """A GPU engine's decode step time as a line in its running batch: ``base_ms +
    per_seq_ms x running sequences`` (measured once per GPU type, model and engine settings,
    e.g. the inter-token latency at two batch sizes). ``auto``'s ``throughput`` scorer reads
    it: one more sequence adds ``base / step²`` output tokens per second to an engine, so it
    can tell that a slow GPU with a small batch has more to give than a fast one with a large
    batch (:mod:`aigw.policies.throughput`)."""

    base_ms: PositiveFloat  # a step with an empty batch: one pass over the weights
    per_seq_ms: float = Field(ge=0)  # what each running sequence adds to a step


class DeploymentConfig(_Strict):
    id: str = Field(min_length=1)
    provider: str = "openai"
    base_url: str
    model: str = Field(min_length=1)
    api_key: SecretStr | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    metrics_url: str | None = None
    max_concurrency: int | None = Field(None, gt=0)  # beyond it, requests queue
    # The engine's batch limit (vLLM --max-num-seqs, SGLang --max-running-requests, TGI
    # --max-batch-size): routing predicts a queue beyond it. Unset: learnt from the engine's
    # metrics (the largest batch it ran while requests waited).
    max_num_seqs: int | None = Field(None, gt=0)
    rpm: int | None = Field(None, gt=0)  # the upstream's own quota: routing skips it when spent
    tpm: int | None = Field(None, gt=0)
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
    health: ProbeConfig | None = None  # active probe; default: on for gpu, off for cloud
    decode_step: DecodeStepConfig | None = None  # gpu only: step time against the batch

    @model_validator(mode="after")
    def _decode_step_on_gpu(self) -> DeploymentConfig:
        if self.decode_step is not None and self.is_cloud:
            raise ValueError(
                "decode_step is for a gpu deployment with metrics_url: the running batch it "
                "applies to comes from the engine's metrics"
            )
        return self

    @property
    def is_cloud(self) -> bool:
        return self.kind == "cloud" if self.kind is not None else self.metrics_url is None

    @property
    def probe(self) -> ProbeConfig | None:
        """The active probe this deployment gets, or None (passive health only): a GPU
        deployment is probed unless ``health.enabled`` is false; a cloud one only when its
        ``health`` names a ``path`` (probing a provider's API costs requests and quota)."""
        probe = self.health
        if probe is None:
            return None if self.is_cloud else ProbeConfig()
        if not probe.enabled or (self.is_cloud and "path" not in probe.model_fields_set):
            return None
        return probe

    @field_validator("provider")
    @classmethod
    def _known_provider(cls, value: str) -> str:
        if value not in PROVIDER_NAMES:
            raise ValueError(f"expected one of {', '.join(PROVIDER_NAMES)} (got {value!r})")
        return value

    @field_validator("base_url", "metrics_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        # Checked first, and the value never echoed: the message must not print a password.
        # Userinfo would also clash with api_key's Authorization header (every request 500s).
        if "@" in urlsplit(value).netloc:
            raise ValueError(
                "credentials in the URL are not allowed; put the key in api_key (or headers)"
            )
        if not value.startswith(("http://", "https://")):
            raise ValueError(
                f"expected an http:// or https:// URL (got one starting {value.split(':')[0]!r})"
            )
        return value.rstrip("/")


class SpilloverConfig(_Strict):
    """When the GPU pool's predicted TTFT passes slo_ttft_ms, `auto` may use cloud deployments."""

    enabled: bool = True
    max_cost_per_mtok: float | None = Field(None, ge=0)  # skip cloud deployments pricier than this


class QueueConfig(_Strict):
    """Requests wait here while every deployment of the model is at max_concurrency."""

    max_size: int = Field(1000, ge=0, le=1_000_000)  # 0: never queue, answer 429 at once
    timeout_s: float = Field(30.0, gt=0, le=3600)  # longest wait; the header may shorten it


_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9a-z-]+$")  # an RFC 9110 token, lowercased
_SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "x-api-key"})


class StickyConfig(_Strict):
    """Sticky conversation sessions: a session's requests go to the deployment that holds its
    KV cache while it is available (:mod:`aigw.routing.sticky`).

    ``key``: where the session id comes from, the request header ``header`` (``header``) or
    the body's ``user`` field (``user``). ``ttl_s``: a binding unused this long is forgotten.
    """

    key: Literal["header", "user"]
    header: str = "x-session-id"
    ttl_s: float = Field(1800.0, ge=1, le=30 * 86400)

    @field_validator("header")
    @classmethod
    def _header_name(cls, value: str) -> str:
        name = value.strip().lower()
        if not _HEADER_NAME.match(name):
            raise ValueError(f"expected an HTTP header name such as x-session-id (got {value!r})")
        if name in _SECRET_HEADERS:
            # The session id is stored (in Redis too): a credential must never become one.
            raise ValueError(f"{name} carries credentials and cannot be a session id")
        return name

    @model_validator(mode="after")
    def _header_needs_header_key(self) -> StickyConfig:
        if self.key == "user" and "header" in self.model_fields_set:
            raise ValueError(
                "header is only read with key: header (key: user takes the body's `user` field)"
            )
        return self


class ModelConfig(_Strict):
    name: str = Field(min_length=1)
    queue: QueueConfig = Field(default_factory=lambda: QueueConfig())
    rpm: int | None = Field(None, gt=0)  # every key's requests to this model together
    tpm: int | None = Field(None, gt=0)
    fallbacks: list[str] = Field(default_factory=list)
    deployments: list[DeploymentConfig] = Field(min_length=1)
    # Predicted time to first token above which `auto` spills over to cloud deployments.
    slo_ttft_ms: float | None = Field(None, gt=0)
    spillover: SpilloverConfig = Field(default_factory=lambda: SpilloverConfig())
    adapter: str | None = None  # LoRA adapter this model's requests need on the engine
    sticky: StickyConfig | None = None  # conversation -> deployment affinity; None: off
    # Models (in order) for a request too long for every deployment of this one: the first
    # whose deployments' context windows hold it serves it (README: Failover and streaming).
    context_fallbacks: list[str] = Field(default_factory=list)
    # Continuation failover: a stream whose upstream breaks mid-way goes on on another
    # deployment of this model, from the text already sent (aigw/resume.py); at most
    # `max_stream_resumes` times per request, and only while the retry budget allows.
    stream_resume: bool = False
    max_stream_resumes: int = Field(1, ge=1, le=10)

    # A preset name or {name, weights, picker, ...}; checked against the policy tables by
    # aigw.configfile (policies import this schema, so it cannot import them).
    policy: str | dict[str, Any] = "auto"

    @property
    def policy_name(self) -> str:
        return self.policy if isinstance(self.policy, str) else str(self.policy.get("name"))


class KeyConfig(_Strict):
    """One client API key. ``name`` is what logs, metrics and admin output show."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    key: SecretStr | None = None
    key_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")  # lowercase hex sha256
    models: list[str] | None = None  # allow-list; absent: every model
    rpm: int | None = Field(None, gt=0)
    tpm: int | None = Field(None, gt=0)
    max_parallel: int | None = Field(None, gt=0)  # concurrent requests, across instances
    priority: int = Field(0, ge=-1000, le=1000)  # higher is served first

    @model_validator(mode="after")
    def _one_secret(self) -> KeyConfig:
        has_key = self.key is not None and bool(self.key.get_secret_value())
        if has_key == (self.key_sha256 is not None):
            raise ValueError(
                "expected exactly one of key (the secret, e.g. ${TEAM_A_KEY}) or key_sha256 "
                "(its lowercase hex sha256)"
                + ("; key is empty (is its environment variable set?)" if self.key else "")
            )
        return self


class AuthConfig(_Strict):
    keys: list[KeyConfig] = Field(default_factory=list)  # empty: an open gateway (warned)
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
    # true: never fetch an encoding; without a local file, counts stay 4-chars-per-token
    # estimates. false: fetch it once in the background at startup when no file is found
    # (and cache it: the next start finds the file).
    offline: bool = False
    # Output tokens reserved against TPM for a request that sets no max_tokens.
    default_max_tokens: int = Field(256, ge=0)


class RoutingConfig(_Strict):
    """Engine-metric scraping and prefix affinity."""

    scrape_interval: PositiveFloat = 1.0  # seconds between scrapes of each metrics_url (jittered)
    stale_after_intervals: PositiveFloat = 3.0  # older metrics are ignored by scorers
    prefix_block_chars: int = Field(256, gt=0)  # prompt prefix hashed in blocks of this size
    prefix_blocks_per_deployment: int = Field(16384, gt=0)  # LRU bound of remembered blocks
    # Time constant of each deployment's peak-EWMA latency (least-latency, demotion): a spike
    # counts at once and is forgotten over a few of these. Shorter: quicker to trust a
    # recovered deployment, and more swayed by one slow reply.
    latency_tau_s: float = Field(10.0, gt=0, le=3600)


class DemotionConfig(_Strict):
    """Predictive demotion: down-weight a deployment that trends worse than its peers before
    it fails outright (:func:`aigw.routing.health.demote`).

    Peers: the model's other deployments of the same kind (gpu or cloud) with at least
    ``min_samples`` observations. Latency: its slowdown (time-to-first-byte EWMA over its own
    baseline, so mixed hardware is not demoted for being slower) over ``latency_ratio`` x the
    peers' median slowdown divides its share by how far past that it is. Errors: its error-rate
    EWMA ``error_margin`` above the peers' median takes that excess off its share. The share
    never goes below ``min_share`` (it keeps some traffic, so it can show it recovered).
    """

    enabled: bool = True
    latency_ratio: float = Field(2.0, gt=1)
    error_margin: float = Field(0.1, gt=0, le=1)
    min_samples: int = Field(5, ge=1)
    min_share: float = Field(0.1, gt=0, le=1)


class HealthConfig(_Strict):
    """Passive outlier detection (eject a deployment after consecutive failures), what a
    recovered one goes through, predictive demotion, and how often shared health is read.

    At most ``max_ejection_percent`` of a model's deployments are ejected at once (Envoy's
    max_ejection_percent; at least one may always be), unless none of the rest is answering
    either. A deployment back from an ejection or a probe-down ramps its share of traffic
    from 10% to 100% over ``slow_start_s``. ``sync_interval_s``: how often the health task
    re-evaluates demotion and (with ``state.backend: redis``) reads the ejections other
    instances shared. Active probes are per deployment (``deployments[].health``).
    """

    consecutive_failures: int = Field(3, gt=0)
    base_ejection_seconds: PositiveFloat = 5.0
    max_ejection_seconds: PositiveFloat = 120.0
    max_ejection_percent: float = Field(50.0, ge=0, le=100)
    slow_start_s: float = Field(30.0, ge=0, le=3600)
    sync_interval_s: float = Field(2.0, ge=0.05, le=60)
    demotion: DemotionConfig = Field(default_factory=lambda: DemotionConfig())


class RetryConfig(_Strict):
    """Failover between deployments (README: Failover and streaming; aigw/routing/retries.py).

    Retries of a model are at most ``budget_ratio`` of its requests over the last
    ``budget_window_s`` seconds, per gateway process, plus up to ``budget_min_concurrent``
    more while fewer than that many requests are retrying at once (so a quiet gateway still
    fails over). The first retry is immediate; later ones wait a
    random time up to ``backoff_base_s * 2**(n-2)`` (capped at ``backoff_max_s``).
    ``deadline_s`` bounds a request from its first routing decision to its reply (the first
    byte, for streams): queue waits, attempts and backoff included; past it the client gets
    504 ``request_deadline_exceeded``.
    """

    # Deployments tried per request (first try included) before moving to fallbacks.
    max_attempts: int = Field(3, gt=0, le=100)
    backoff_base_s: float = Field(0.025, ge=0, le=60)
    backoff_max_s: float = Field(1.0, ge=0, le=300)
    budget_ratio: float = Field(0.2, ge=0, le=10)
    budget_min_concurrent: int = Field(3, ge=0, le=100_000)
    budget_window_s: float = Field(10.0, gt=0, le=3600)
    deadline_s: float = Field(600.0, gt=0, le=86_400)

    @model_validator(mode="after")
    def _backoff_order(self) -> RetryConfig:
        if self.backoff_max_s < self.backoff_base_s:
            raise ValueError(
                f"backoff_max_s ({self.backoff_max_s:g}) must be at least backoff_base_s "
                f"({self.backoff_base_s:g})"
            )
        return self


class MetricsConfig(_Strict):
    """``GET /metrics``: open (Prometheus scrapes it as is), or behind ``auth.admin_key``."""

    require_admin_key: bool = False


class GatewayConfig(_Strict):
    server: ServerConfig = Field(default_factory=ServerConfig)
    state: StateConfig = Field(default_factory=StateConfig)
    models: list[ModelConfig] = Field(min_length=1)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    tokens: TokensConfig = Field(default_factory=TokensConfig)
    health: HealthConfig = Field(default_factory=HealthConfig)
    retry: RetryConfig = Field(default_factory=RetryConfig)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)

    @model_validator(mode="after")
    def _cross_references(self) -> GatewayConfig:
        problems: list[str] = []
        if self.metrics.require_admin_key and self.auth.admin_key is None:
            problems.append(
                "metrics.require_admin_key: needs auth.admin_key (else /metrics is never open)"
            )
        if self.server.workers > 1 and self.state.backend != "redis":
            problems.append(
                f"server.workers: {self.server.workers} workers need state.backend: redis "
                "(each worker would keep its own queues, rate limits and sessions)"
            )
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
            for field in ("fallbacks", "context_fallbacks"):
                for k, fallback in enumerate(getattr(model, field)):
                    if fallback not in seen:
                        problems.append(
                            f"models[{i}].{field}[{k}]: expected the name of a configured "
                            f"model (got {fallback!r})"
                        )
                    elif fallback == model.name:
                        problems.append(
                            f"models[{i}].{field}[{k}]: a model cannot fall back to itself"
                        )
        problems.extend(_key_problems(self.auth.keys, seen))
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def model(self, name: str) -> ModelConfig | None:
        for model in self.models:
            if model.name == name:
                return model
        return None


def _key_problems(keys: list[KeyConfig], models: set[str]) -> list[str]:
    problems: list[str] = []
    names: set[str] = set()
    for i, key in enumerate(keys):
        if key.name in names:
            problems.append(f"auth.keys[{i}].name: duplicate key name {key.name!r}")
        names.add(key.name)
        for k, model in enumerate(key.models or ()):
            if model not in models:
                problems.append(
                    f"auth.keys[{i}].models[{k}]: expected the name of a configured model "
                    f"(got {model!r})"
                )
    return problems
