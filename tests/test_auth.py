from __future__ import annotations

import hashlib
import hmac
from typing import Any

import pytest

from aigw.auth import INVALID_KEY_MESSAGE, Authenticator
from aigw.config import AuthConfig
from aigw.errors import AuthenticationError, ConfigError, PermissionDeniedError
from aigw.types import ANONYMOUS, Principal

TEAM_A = "sk-team-a-0123456789"
TEAM_B = "sk-team-b-9876543210"
ADMIN = "adm-0123456789abcdef"


def authenticator(**auth: Any) -> Authenticator:
    auth.setdefault(
        "keys",
        [
            {
                "name": "team-a",
                "key": TEAM_A,
                "models": ["small"],
                "rpm": 60,
                "tpm": 1000,
                "max_parallel": 4,
                "priority": 5,
            },
            {"name": "team-b", "key_sha256": hashlib.sha256(TEAM_B.encode()).hexdigest()},
        ],
    )
    return Authenticator.from_config(AuthConfig.model_validate(auth))


def bearer(key: str) -> bytes:
    return f"Bearer {key}".encode()


def test_a_key_maps_to_its_principal() -> None:
    principal = authenticator().authenticate(bearer(TEAM_A))
    assert principal == Principal(
        name="team-a",
        priority=5,
        models=frozenset({"small"}),
        rpm=60,
        tpm=1000,
        max_parallel=4,
    )


def test_a_key_given_as_its_sha256_authenticates() -> None:
    principal = authenticator().authenticate(bearer(TEAM_B))
    assert principal.name == "team-b"
    assert principal.models is None and principal.rpm is None


def test_only_digests_of_secrets_are_kept() -> None:
    auth = authenticator(admin_key=ADMIN)
    kept = repr([getattr(auth, slot) for slot in Authenticator.__slots__])
    for secret in (TEAM_A, TEAM_B, ADMIN):
        assert secret not in kept
        assert repr(secret.encode()) not in kept
    assert all(len(digest) == 32 for digest in auth._principals)


@pytest.mark.parametrize(
    "header",
    [
        b"bearer " + TEAM_A.encode(),
        b"BEARER " + TEAM_A.encode(),
        b"  Bearer    " + TEAM_A.encode() + b"  ",
    ],
)
def test_scheme_is_case_insensitive_and_spaces_are_tolerated(header: bytes) -> None:
    assert authenticator().authenticate(header).name == "team-a"


@pytest.mark.parametrize(
    "header",
    [
        None,
        b"",
        b"Bearer",
        b"Bearer    ",
        TEAM_A.encode(),  # no scheme
        b"Basic " + TEAM_A.encode(),
        b"Bearer sk-wrong",
        b"Bearer " + TEAM_A.encode() + b"x",
        b"Bearer " + ADMIN.encode(),  # the admin key is not a client key
    ],
)
def test_missing_malformed_and_wrong_keys_get_one_401(header: bytes | None) -> None:
    with pytest.raises(AuthenticationError) as caught:
        authenticator(admin_key=ADMIN).authenticate(header)
    error = caught.value
    assert error.status == 401
    assert error.code == "invalid_api_key"
    assert error.message == INVALID_KEY_MESSAGE
    assert error.headers == {"WWW-Authenticate": "Bearer"}


def test_an_open_gateway_lets_everyone_in_as_anonymous() -> None:
    auth = authenticator(keys=[])
    assert auth.open
    assert auth.authenticate(None) is ANONYMOUS
    assert auth.authenticate(b"Bearer anything") is ANONYMOUS
    assert not authenticator().open


def test_duplicate_secrets_are_a_config_error_naming_the_field() -> None:
    keys = [{"name": "a", "key": TEAM_A}, {"name": "b", "key": TEAM_A}]
    with pytest.raises(ConfigError) as caught:
        authenticator(keys=keys)
    assert caught.value.problems == [
        "auth.keys[1].key: the same secret as auth.keys[0] ('a'); every key needs its own secret"
    ]
    assert TEAM_A not in str(caught.value)


def test_a_secret_given_once_plain_and_once_hashed_is_a_duplicate() -> None:
    digest = hashlib.sha256(TEAM_A.encode()).hexdigest()
    keys = [{"name": "a", "key": TEAM_A}, {"name": "b", "key_sha256": digest}]
    with pytest.raises(ConfigError, match=r"auth\.keys\[1\]\.key_sha256: the same secret"):
        authenticator(keys=keys)


def test_the_admin_key_must_differ_from_client_keys() -> None:
    with pytest.raises(ConfigError, match=r"auth\.admin_key: the same secret as auth\.keys\[0\]"):
        authenticator(admin_key=TEAM_A)


def test_authorize_model_follows_the_allow_list() -> None:
    auth = authenticator()
    team_a = auth.authenticate(bearer(TEAM_A))
    auth.authorize_model(team_a, "small")
    auth.authorize_model(auth.authenticate(bearer(TEAM_B)), "large")  # no list: every model
    auth.authorize_model(ANONYMOUS, "large")
    with pytest.raises(PermissionDeniedError) as caught:
        auth.authorize_model(team_a, "large")
    error = caught.value
    assert (error.status, error.code, error.param) == (403, "model_not_allowed", "model")
    assert "'large'" in error.message and "'team-a'" in error.message
    assert TEAM_A not in error.message


def test_visible_models_filters_by_the_allow_list_in_order() -> None:
    auth = authenticator()
    names = ["large", "small", "tiny"]
    assert auth.visible_models(auth.authenticate(bearer(TEAM_A)), names) == ["small"]
    assert auth.visible_models(auth.authenticate(bearer(TEAM_B)), iter(names)) == names
    assert auth.visible_models(ANONYMOUS, names) == names


@pytest.mark.parametrize("admin_key", [None, ""])
def test_without_an_admin_key_the_admin_api_is_disabled_not_open(admin_key: str | None) -> None:
    auth = authenticator(admin_key=admin_key)
    assert not auth.admin_enabled
    for header in (None, b"", bearer(TEAM_A), bearer("anything")):
        assert not auth.is_admin(header)
        with pytest.raises(PermissionDeniedError) as caught:
            auth.check_admin(header)
        assert (caught.value.status, caught.value.code) == (403, "admin_disabled")


def test_the_admin_key_opens_the_admin_api() -> None:
    auth = authenticator(admin_key=ADMIN)
    assert auth.admin_enabled
    assert auth.is_admin(bearer(ADMIN))
    assert auth.is_admin(b"bearer   " + ADMIN.encode())
    auth.check_admin(bearer(ADMIN))


def test_a_client_key_on_the_admin_api_is_forbidden() -> None:
    auth = authenticator(admin_key=ADMIN)
    assert not auth.is_admin(bearer(TEAM_A))
    with pytest.raises(PermissionDeniedError) as caught:
        auth.check_admin(bearer(TEAM_B))
    assert (caught.value.status, caught.value.code) == (403, "admin_only")


@pytest.mark.parametrize("header", [None, b"", b"Basic " + ADMIN.encode(), bearer("adm-wrong")])
def test_a_missing_or_wrong_admin_key_is_unauthenticated(header: bytes | None) -> None:
    for auth in (authenticator(admin_key=ADMIN), authenticator(keys=[], admin_key=ADMIN)):
        assert not auth.is_admin(header)
        with pytest.raises(AuthenticationError) as caught:
            auth.check_admin(header)
        assert (caught.value.status, caught.value.code) == (401, "invalid_api_key")
        assert caught.value.message == INVALID_KEY_MESSAGE


def test_the_admin_key_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def recording(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr("aigw.auth.hmac.compare_digest", recording)
    auth = authenticator(admin_key=ADMIN)
    assert auth.is_admin(bearer(ADMIN))
    assert not auth.is_admin(bearer("adm-wrong"))
    expected = hashlib.sha256(ADMIN.encode()).digest()
    assert calls == [
        (expected, expected),
        (hashlib.sha256(b"adm-wrong").digest(), expected),
    ]
