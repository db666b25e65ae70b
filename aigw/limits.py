"""The rate-limit stage: RPM and TPM quotas per key, per model and per deployment.

Quotas are built once from the config; per request, :meth:`RateLimits.reserve` charges one
request and the estimated tokens (prompt tokens plus ``max_tokens``, or
``tokens.default_max_tokens`` when the request sets none) against every quota that applies,
all or nothing, through the shared :class:`~aigw.state.base.RateLimiter` (a bucketed sliding
window: at most N in any 60-second window). The :class:`Booking` it returns is settled exactly once:
``reconcile`` with the real usage after a reply, or ``refund`` when the request was rejected
downstream or abandoned before the upstream answered.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from aigw.config import GatewayConfig
from aigw.errors import InvalidRequestError, RateLimitError
from aigw.state.base import Charge, LimitDecision, Quota, QuotaStatus, RateLimiter, Stamp
from aigw.types import Principal, Usage

__all__ = [
    "Booking",
    "DeploymentQuotaSpent",
    "QuotaUse",
    "RateLimits",
    "counts_prompt_tokens",
    "format_reset",
]

_WINDOW_S = 60.0


@dataclass(frozen=True, slots=True)
class _Quotas:
    """The RPM and TPM quotas of one key, model or deployment (either may be None)."""

    label: str  # for messages: "key `team-a`", "model `llama-3-8b`"
    rpm: Quota | None
    tpm: Quota | None

    @property
    def any(self) -> bool:
        return self.rpm is not None or self.tpm is not None

    def charges(self, tokens: int) -> list[Charge]:
        out = []
        if self.rpm is not None:
            out.append(Charge(self.rpm, 1))
        if self.tpm is not None:
            out.append(Charge(self.tpm, tokens))
        return out


class _Plan:
    """What one (key, model) pair is charged, worked out once and reused per request."""

    __slots__ = ("counts_tokens", "key", "model", "one_request", "shown", "tpm")

    def __init__(self, key: _Quotas, model: _Quotas) -> None:
        self.key = key
        self.model = model
        # The charges of one request, the token amounts filled in per request.
        self.one_request = tuple(Charge(q, 1) for q in (key.rpm, model.rpm) if q is not None)
        self.tpm = tuple(q for q in (key.tpm, model.tpm) if q is not None)
        self.counts_tokens = bool(self.tpm)
        # The headers describe the key's own quotas (what its client can act on), else the
        # model's.
        self.shown = key if key.any else model

    def charges(self, tokens: int) -> list[Charge]:
        return [*self.one_request, *(Charge(q, tokens) for q in self.tpm)]


def _quotas(kind: str, name: str, rpm: int | None, tpm: int | None) -> _Quotas:
    return _Quotas(
        label=f"{kind} `{name}`",
        rpm=Quota(f"rl:{kind}:{name}:rpm", rpm, "requests", _WINDOW_S) if rpm else None,
        tpm=Quota(f"rl:{kind}:{name}:tpm", tpm, "tokens", _WINDOW_S) if tpm else None,
    )


_NONE = _Quotas("", None, None)


class Booking:
    """The charges one request made; settle it once with :meth:`reconcile` or :meth:`refund`."""

    __slots__ = ("_charges", "_limiter", "_settled", "_stamp", "headers")

    def __init__(
        self,
        limiter: RateLimiter,
        stamp: Stamp,
        charges: Sequence[Charge],
        headers: list[tuple[bytes, bytes]],
    ) -> None:
        self._limiter = limiter
        self._stamp = stamp  # when the limiter recorded the charges: what settling needs
        self._charges = charges
        self._settled = False
        self.headers = headers  # x-ratelimit-* for the response

    async def reconcile(self, usage: Usage | None) -> None:
        """Replace the estimated tokens by the real ``usage`` (kept as is when unknown)."""
        if self._settled:
            return
        self._settled = True
        if usage is None:
            return
        actual = usage.total_tokens
        tokens = [c for c in self._charges if c.quota.unit == "tokens" and c.amount != actual]
        if tokens:  # the key's and the model's TPM: one round trip for both
            await self._limiter.reconcile(self._stamp, tokens, actual)

    async def refund(self) -> None:
        """Undo every charge: the request cost nothing."""
        if self._settled:
            return
        self._settled = True
        await self._limiter.refund(self._stamp, self._charges)


def counts_prompt_tokens(config: GatewayConfig) -> bool:
    """Whether requests are charged exact prompt tokens: a key or a model has a TPM quota
    (a deployment's quota is charged the estimate routing already has)."""
    return any(k.tpm for k in config.auth.keys) or any(m.tpm for m in config.models)


class RateLimits:
    """Builds each request's charges from the quotas that apply, and reserves them."""

    def __init__(self, limiter: RateLimiter, config: GatewayConfig) -> None:
        self._limiter = limiter
        self._keys = {k.name: _quotas("key", k.name, k.rpm, k.tpm) for k in config.auth.keys}
        self._models = {m.name: _quotas("model", m.name, m.rpm, m.tpm) for m in config.models}
        self._deployments = {
            d.id: _quotas("deployment", d.id, d.rpm, d.tpm)
            for m in config.models
            for d in m.deployments
        }
        self._default_max_tokens = config.tokens.default_max_tokens
        self._plans: dict[tuple[str, str], _Plan | None] = {}

    def plan(self, principal: Principal, model: str) -> _Plan | None:
        """The quotas this key's requests to ``model`` are charged; None when none applies."""
        pair = (principal.name, model)
        try:
            return self._plans[pair]
        except KeyError:
            key = self._keys.get(principal.name, _NONE)
            quotas = self._models[model]
            plan = _Plan(key, quotas) if key.any or quotas.any else None
            self._plans[pair] = plan  # bounded: keys x models
            return plan

    def estimate(self, prompt_tokens: int, max_tokens: int | None) -> int:
        return prompt_tokens + (self._default_max_tokens if max_tokens is None else max_tokens)

    async def reserve(self, request_id: str, plan: _Plan, tokens: int) -> Booking:
        """Charge the request to its key's and model's quotas (``plan``), or raise 429
        (400 if it can never fit)."""
        charges = plan.charges(tokens)
        decision = await self._limiter.reserve(request_id, charges)
        headers = _headers(decision.statuses, plan.shown)
        if not decision.allowed:
            raise _refusal(decision, plan.key, plan.model, tokens, headers)
        return Booking(self._limiter, decision.stamp, charges, headers)

    async def reserve_deployment(
        self, request_id: str, deployment_id: str, tokens: int
    ) -> Booking | None:
        """Charge an upstream's own quota (None when it has none); raise
        :class:`DeploymentQuotaSpent` when it has no room now."""
        quotas = self._deployments.get(deployment_id, _NONE)
        if not quotas.any:
            return None
        charges = quotas.charges(tokens)
        decision = await self._limiter.reserve(f"{request_id}@{deployment_id}", charges)
        if not decision.allowed:
            raise DeploymentQuotaSpent(deployment_id, decision.retry_after_s)
        return Booking(self._limiter, decision.stamp, charges, [])

    def has_deployment_quota(self, deployment_id: str) -> bool:
        return self._deployments.get(deployment_id, _NONE).any

    async def usage(self) -> list[QuotaUse]:
        """Every configured quota (keys, models, deployments) as it stands now, for the
        dashboard. Charges nothing: one reservation of 0 units per quota, which the limiter
        checks without recording (memory: a dict walk; Redis: one round trip for all)."""
        owned = [
            (kind, name, quota)
            for kind, table in (("key", self._keys), ("model", self._models))
            for name, quotas in table.items()
            for quota in (quotas.rpm, quotas.tpm)
            if quota is not None
        ]
        owned += [
            ("deployment", name, quota)
            for name, quotas in self._deployments.items()
            for quota in (quotas.rpm, quotas.tpm)
            if quota is not None
        ]
        if not owned:
            return []
        decision = await self._limiter.reserve("usage", [Charge(q, 0) for _, _, q in owned])
        return [
            QuotaUse(kind, name, quota.unit, quota.limit, status.remaining, status.reset_s)
            for (kind, name, quota), status in zip(owned, decision.statuses, strict=True)
        ]


@dataclass(frozen=True, slots=True)
class QuotaUse:
    """One quota now: ``kind`` is ``key``, ``model`` or ``deployment``; ``remaining`` is
    what one more charge may use (``limit`` minus the window's units, at least 0)."""

    kind: str
    name: str
    unit: str
    limit: int
    remaining: int
    reset_s: float


class DeploymentQuotaSpent(Exception):
    """An upstream's own RPM/TPM quota has no room now: route the request elsewhere."""

    def __init__(self, deployment_id: str, retry_after_s: float | None) -> None:
        super().__init__(deployment_id)
        self.deployment_id = deployment_id
        self.retry_after_s = retry_after_s


def _refusal(
    decision: LimitDecision,
    key: _Quotas,
    model: _Quotas,
    tokens: int,
    headers: list[tuple[bytes, bytes]],
) -> Exception:
    quota = decision.exceeded
    assert quota is not None
    owner = key.label if quota in (key.rpm, key.tpm) else model.label
    what = "requests" if quota.unit == "requests" else "tokens"
    per = "RPM" if quota.unit == "requests" else "TPM"
    plain = {k.decode(): v.decode() for k, v in headers}
    if decision.retry_after_s is None:
        return InvalidRequestError(
            f"This request needs {tokens} tokens (prompt plus max_tokens), more than the "
            f"{quota.limit} tokens per minute allowed for {owner}: lower max_tokens or "
            "shorten the prompt.",
            code="request_too_large",
            headers=plain,
        )
    retry = max(1, math.ceil(decision.retry_after_s))
    error = RateLimitError(
        f"Rate limit reached for {owner}: {quota.limit} {what} per minute ({per}). "
        f"Try again in {retry} s.",
        code="rate_limit_exceeded",
        headers={**plain, "Retry-After": str(retry)},
    )
    error.limit = f"{'key' if quota in (key.rpm, key.tpm) else 'model'}_{per.lower()}"
    return error


_HEADER_NAMES = {
    "requests": (
        b"x-ratelimit-limit-requests",
        b"x-ratelimit-remaining-requests",
        b"x-ratelimit-reset-requests",
    ),
    "tokens": (
        b"x-ratelimit-limit-tokens",
        b"x-ratelimit-remaining-tokens",
        b"x-ratelimit-reset-tokens",
    ),
}


def _headers(statuses: Sequence[QuotaStatus], shown: _Quotas) -> list[tuple[bytes, bytes]]:
    """OpenAI's x-ratelimit-{limit,remaining,reset}-{requests,tokens} for the shown quotas."""
    out: list[tuple[bytes, bytes]] = []
    for status in statuses:
        quota = status.quota
        if quota is not shown.rpm and quota is not shown.tpm:
            continue
        limit, remaining, reset = _HEADER_NAMES[quota.unit]
        out.append((limit, b"%d" % quota.limit))
        out.append((remaining, b"%d" % max(0, status.remaining)))
        out.append((reset, format_reset(status.reset_s).encode()))
    return out


def format_reset(seconds: float) -> str:
    """A duration as OpenAI writes it in x-ratelimit-reset-*: ``"20ms"``, ``"1.5s"``, ``"6m0s"``."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{max(1, round(seconds * 1000))}ms"
    if seconds < 60:
        text = f"{seconds:.3f}".rstrip("0").rstrip(".")
        return f"{text}s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest}s"
