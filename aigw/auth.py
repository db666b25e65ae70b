"""Client API keys and the admin key: who is calling, and what they may do.

Only sha256 digests of secrets are kept, never the secrets: ``auth.keys[].key`` is hashed when
the config is loaded, ``auth.keys[].key_sha256`` is taken as is. A request's key is hashed and
looked up by digest.

Why the lookup is constant-time with respect to the stored secrets: the attacker controls the
*preimage* (the key they send), not its digest. The dict compares the presented digest with a
stored one by hash-table equality, which may stop at the first differing byte, so timing could
at best reveal how many leading bytes of a stored *digest* an attacker's digest shares. Turning
that into a secret needs a sha256 preimage for a chosen digest prefix, which sha256's preimage
resistance rules out; and since the attacker cannot choose their digest byte by byte, they
cannot walk a prefix the way they could walk a plain-text comparison. Where one stored value is
compared directly (the admin key), :func:`hmac.compare_digest` does it anyway.

Semantics the API relies on:

* no client keys configured: an *open* gateway, every request is :data:`ANONYMOUS`;
* a missing, malformed or unknown key: 401 ``invalid_api_key``, one message for all three, so a
  response never tells a guessed key from a missing one;
* ``/admin/*``: 403 ``admin_disabled`` when no admin key is configured (the admin API is never
  open), 403 ``admin_only`` for a valid client key, 401 ``invalid_api_key`` otherwise.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Iterable, Mapping

from aigw.config import AuthConfig, KeyConfig
from aigw.errors import AuthenticationError, ConfigError, PermissionDeniedError
from aigw.types import ANONYMOUS, Principal

__all__ = ["Authenticator"]

log = logging.getLogger("aigw.auth")

INVALID_KEY_MESSAGE = "Incorrect or missing API key. Send it as `Authorization: Bearer <key>`."


class Authenticator:
    """Maps an ``Authorization`` header to a :class:`Principal`; checks model and admin access.

    Built once at startup (:meth:`from_config`) and shared by every request; immutable.
    """

    __slots__ = ("_admin_digest", "_principals")

    def __init__(self, principals: Mapping[bytes, Principal], admin_digest: bytes | None) -> None:
        """``principals``: sha256 digest (32 raw bytes) of each client key -> its principal.
        ``admin_digest``: sha256 digest of the admin key, or None when the admin API is off."""
        self._principals = dict(principals)
        self._admin_digest = admin_digest

    @classmethod
    def from_config(cls, auth: AuthConfig) -> Authenticator:
        """Hash the configured secrets. Raises :class:`ConfigError` when two keys (or a key and
        the admin key) share a secret: the key names a request maps to would be ambiguous."""
        principals: dict[bytes, Principal] = {}
        owners: dict[bytes, int] = {}
        problems: list[str] = []
        for i, key in enumerate(auth.keys):
            digest, field = _digest_of(key)
            if digest in owners:
                first = owners[digest]
                problems.append(
                    f"auth.keys[{i}].{field}: the same secret as auth.keys[{first}] "
                    f"({auth.keys[first].name!r}); every key needs its own secret"
                )
                continue
            owners[digest] = i
            principals[digest] = Principal(
                name=key.name,
                priority=key.priority,
                models=None if key.models is None else frozenset(key.models),
                rpm=key.rpm,
                tpm=key.tpm,
                max_parallel=key.max_parallel,
            )
        admin_digest = None
        if auth.admin_key is not None:
            admin_digest = _sha256(auth.admin_key.get_secret_value().encode())
            if admin_digest in owners:
                problems.append(
                    f"auth.admin_key: the same secret as auth.keys[{owners[admin_digest]}]; "
                    "the admin key must differ from every client key"
                )
        if problems:
            raise ConfigError(problems)
        if admin_digest is None:
            log.info("auth.admin_key is not set: the admin API answers 403")
        return cls(principals, admin_digest)

    @property
    def open(self) -> bool:
        """True when no client keys are configured: every request is :data:`ANONYMOUS`."""
        return not self._principals

    @property
    def admin_enabled(self) -> bool:
        return self._admin_digest is not None

    def authenticate(self, authorization: bytes | None) -> Principal:
        """The principal for a raw ``Authorization`` header value (ASGI header bytes).

        Expects ``Bearer <key>`` (scheme case-insensitive, surrounding spaces ignored). Returns
        :data:`ANONYMOUS` on an open gateway whatever the header. Raises
        :class:`AuthenticationError` (401, ``invalid_api_key``) when the key is missing,
        malformed or unknown, with the same message in each case.
        """
        if not self._principals:
            return ANONYMOUS
        key = _bearer(authorization)
        principal = None if key is None else self._principals.get(_sha256(key))
        if principal is None:
            raise _invalid_key()
        return principal

    def authorize_model(self, principal: Principal, model: str) -> None:
        """Raises :class:`PermissionDeniedError` (403, ``model_not_allowed``) when the key's
        allow-list does not name ``model``. The message names the key by its name only."""
        if not principal.may_use(model):
            raise PermissionDeniedError(
                f"The API key {principal.name!r} is not allowed to use model {model!r}.",
                param="model",
                code="model_not_allowed",
            )

    def visible_models(self, principal: Principal, names: Iterable[str]) -> list[str]:
        """``names`` that ``principal`` may use, in their order (for GET /v1/models)."""
        if principal.models is None:
            return list(names)
        allowed = principal.models
        return [name for name in names if name in allowed]

    def is_admin(self, authorization: bytes | None) -> bool:
        """True when the header carries the admin key; always False when the admin API is off.
        Compared in constant time (:func:`hmac.compare_digest` on sha256 digests)."""
        if self._admin_digest is None:
            return False
        key = _bearer(authorization)
        return key is not None and hmac.compare_digest(_sha256(key), self._admin_digest)

    def check_admin(self, authorization: bytes | None) -> None:
        """Returns when the header carries the admin key; otherwise raises, in this order:

        * :class:`PermissionDeniedError` 403 ``admin_disabled``: no admin key is configured;
        * :class:`PermissionDeniedError` 403 ``admin_only``: a valid client key was sent;
        * :class:`AuthenticationError` 401 ``invalid_api_key``: no key, or a wrong one.
        """
        if self._admin_digest is None:
            raise PermissionDeniedError(
                "The admin API is disabled: set auth.admin_key to enable it.",
                code="admin_disabled",
            )
        if self.is_admin(authorization):
            return
        key = _bearer(authorization)
        if key is not None and _sha256(key) in self._principals:
            raise PermissionDeniedError(
                "This endpoint needs the admin key; client API keys may not use it.",
                code="admin_only",
            )
        raise _invalid_key()


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _digest_of(key: KeyConfig) -> tuple[bytes, str]:
    """The key's sha256 digest, and the config field it came from."""
    if key.key_sha256 is not None:
        return bytes.fromhex(key.key_sha256), "key_sha256"
    assert key.key is not None  # KeyConfig guarantees exactly one of the two
    return _sha256(key.key.get_secret_value().encode()), "key"


def _bearer(authorization: bytes | None) -> bytes | None:
    """The key in ``Bearer <key>``, or None when the header is absent or another shape."""
    if not authorization:
        return None
    scheme, _, key = authorization.strip().partition(b" ")
    if scheme.lower() != b"bearer":
        return None
    return key.strip() or None


def _invalid_key() -> AuthenticationError:
    # RFC 9110: a 401 names the scheme it wants.
    return AuthenticationError(
        INVALID_KEY_MESSAGE, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"}
    )
