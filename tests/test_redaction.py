"""The Redactor: configured secrets out of relayed bytes and error text, origins out of errors."""

from __future__ import annotations

from aigw.configfile import parse_config
from aigw.redaction import Redactor, redactor_for

KEY = "sk-provider-0123456789"


def test_secrets_are_replaced_in_bytes_and_text() -> None:
    redact = Redactor.of([KEY])
    assert redact.data(f'{{"echo": "Bearer {KEY}"}}'.encode()) == b'{"echo": "Bearer [redacted]"}'
    assert redact.text(f"bad key {KEY} and {KEY}") == "bad key [redacted] and [redacted]"
    assert redact.data(b"nothing secret") == b"nothing secret"


def test_origins_leave_error_text_but_not_model_output() -> None:
    redact = Redactor.of([], [("gpu-1", "http://10.0.0.5:8000/v1")])
    assert (
        redact.text("POST http://10.0.0.5:8000/v1/chat/completions failed; 10.0.0.5:8000 down")
        == "POST [upstream]/v1/chat/completions failed; [upstream] down"
    )
    assert redact.data(b"see http://10.0.0.5:8000/v1") == b"see http://10.0.0.5:8000/v1"


def test_the_longest_secret_wins_and_short_ones_are_ignored() -> None:
    redact = Redactor.of([KEY, KEY[:12], "abc"])
    assert redact.text(f"{KEY} {KEY[:12]} abc") == "[redacted] [redacted] abc"


def test_an_empty_redactor_is_falsy() -> None:
    assert not Redactor()
    assert Redactor.of(["a-long-secret"])


def test_the_config_names_every_secret_it_holds() -> None:
    config = parse_config(
        {
            "auth": {
                "admin_key": "admin-secret-1234",
                "keys": [{"name": "a", "key": "sk-cl-123456"}],
            },
            "state": {"backend": "redis", "url": "redis://user:redis-pass-9999@10.1.1.1:6379/0"},
            "models": [
                {
                    "name": "m",
                    "deployments": [
                        {
                            "id": "d",
                            "base_url": "http://10.0.0.5:8000/v1",
                            "model": "x",
                            "api_key": "sk-provider-abcdef",
                            "headers": {"x-token": "header-token-5555"},
                            "metrics_url": "http://10.0.0.6:9000/metrics",
                        }
                    ],
                }
            ],
        }
    )
    redact = redactor_for(config)
    text = redact.text(
        "admin-secret-1234 redis-pass-9999 sk-provider-abcdef header-token-5555 "
        "10.0.0.5:8000 http://10.0.0.6:9000/metrics"
    )
    assert text == ("[redacted] [redacted] [redacted] [redacted] [upstream] [upstream]/metrics")
