"""Configured secrets never reach a client: scrubbing of text relayed from upstreams.

An upstream may echo the request's headers (a debugging proxy, a misconfigured server), and
with them the gateway's provider key; its error messages may name internal hosts. Every body,
stream chunk and error message the gateway relays passes through :class:`Redactor`, which
replaces each configured secret (deployment ``api_key`` and ``headers`` values, the admin key,
the Redis password) with ``[redacted]`` and each deployment's internal origin
(``scheme://host:port`` of its ``base_url`` and ``metrics_url``) with ``[upstream]``.

Client keys are not among them: only their digests are kept, and they are never sent upstream,
so an upstream cannot echo them. Secrets shorter than :data:`MIN_SECRET_CHARS` are not scrubbed
(replacing a short common string would mangle ordinary output); such keys are weak anyway.

Cost: one ``in`` test per secret per relayed piece (a C substring search, a few tens of ns for
a typical chunk) and a replacement only where one is found. A secret split across two stream
reads is not seen; upstreams that echo headers do it inside one JSON event, which arrives whole
in practice.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import AnyStr
from urllib.parse import urlsplit

from aigw.config import GatewayConfig

__all__ = ["MIN_SECRET_CHARS", "Redactor", "redactor_for"]

MIN_SECRET_CHARS = 8
REDACTED = "[redacted]"
# Not the deployment's id: several deployments often share one origin (one engine serving
# several models, a cloud API); the gateway's own messages already name the deployment.
UPSTREAM = "[upstream]"


class Redactor:
    """Replaces secrets in relayed bytes, and secrets and internal origins in error messages.

    Origins are scrubbed from error messages only: model output that names a public host
    (``api.openai.com``) must reach the client unchanged.
    """

    __slots__ = ("_data", "_text")

    def __init__(
        self, secrets: Iterable[str] = (), origins: Iterable[tuple[str, str]] = ()
    ) -> None:
        hidden = [(s, REDACTED) for s in secrets if len(s) >= MIN_SECRET_CHARS]
        self._data = _longest_first((s.encode(), r.encode()) for s, r in hidden)
        self._text = _longest_first([*hidden, *origins])

    @classmethod
    def of(
        cls, secrets: Iterable[str | None], deployment_urls: Iterable[tuple[str, str | None]] = ()
    ) -> Redactor:
        """Secrets to hide, and (deployment id, URL) pairs whose origin names the deployment."""
        origins: list[tuple[str, str]] = []
        for _, url in deployment_urls:
            if url:
                parts = urlsplit(url)
                origins += [
                    (f"{parts.scheme}://{parts.netloc}", UPSTREAM),
                    (parts.netloc, UPSTREAM),
                ]
        return cls((s for s in secrets if s), origins)

    def __bool__(self) -> bool:
        """Whether there is anything to scrub."""
        return bool(self._text)

    def text(self, value: str) -> str:
        """An error message as a client may see it."""
        for secret, replacement in self._text:
            if secret in value:
                value = value.replace(secret, replacement)
        return value

    def data(self, value: bytes) -> bytes:
        """A relayed body or stream chunk as a client may see it."""
        for secret, replacement in self._data:
            if secret in value:
                value = value.replace(secret, replacement)
        return value


def _longest_first(pairs: Iterable[tuple[AnyStr, AnyStr]]) -> tuple[tuple[AnyStr, AnyStr], ...]:
    """Distinct pairs, longest secret first, so a secret containing another is replaced whole."""
    return tuple(sorted(set(pairs), key=lambda pair: -len(pair[0])))


def redactor_for(config: GatewayConfig) -> Redactor:
    """Every secret the config holds (client keys aside) and every deployment's origins."""
    secrets: list[str | None] = []
    urls: list[tuple[str, str | None]] = []
    if config.auth.admin_key is not None:
        secrets.append(config.auth.admin_key.get_secret_value())
    if config.state.url:
        secrets.append(urlsplit(config.state.url).password)
    for model in config.models:
        for deployment in model.deployments:
            if deployment.api_key is not None:
                secrets.append(deployment.api_key.get_secret_value())
            secrets.extend(deployment.headers.values())
            urls += [(deployment.id, deployment.base_url), (deployment.id, deployment.metrics_url)]
    return Redactor.of(secrets, urls)
