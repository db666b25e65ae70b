"""Bad keys and state in a config file: ``aigw check-config`` refuses it and names each field."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
import yaml

from tests.e2e.procs import REPO_ROOT

pytestmark = pytest.mark.e2e

GOOD_KEY = {"name": "team-a", "key": "sk-team-a-0123456789"}


def check(
    tmp_path: Path, keys: Sequence[object], **extra: object
) -> subprocess.CompletedProcess[str]:
    document = {
        "models": [
            {
                "name": "m",
                "deployments": [
                    {"id": "d", "base_url": "http://127.0.0.1:9/v1", "model": "m"},
                ],
            }
        ],
        "auth": {"keys": keys},
        **extra,
    }
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(document))
    return subprocess.run(
        [sys.executable, "-m", "aigw", "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO_ROOT,
    )


@pytest.mark.parametrize(
    ("keys", "extra", "field"),
    [
        ([{"name": "team-a", "key_sha256": "XYZ"}], {}, "auth.keys[0].key_sha256"),
        ([GOOD_KEY, GOOD_KEY], {}, "auth.keys[1].name"),
        ([{**GOOD_KEY, "priority": "high"}], {}, "auth.keys[0].priority"),
        ([{**GOOD_KEY, "rpm": 0}], {}, "auth.keys[0].rpm"),
        ([{"name": "team-a"}], {}, "auth.keys[0]"),  # neither key nor key_sha256
        ([{**GOOD_KEY, "models": ["nope"]}], {}, "auth.keys[0].models[0]"),
        ([GOOD_KEY], {"state": {"backend": "redis"}}, "state"),  # no url
        ([GOOD_KEY], {"state": {"backend": "redis", "url": "http://x"}}, "state.url"),
        ([GOOD_KEY], {"state": {"lease_ttl_s": 0}}, "state.lease_ttl_s"),
    ],
    ids=[
        "bad-sha256",
        "duplicate-name",
        "priority-not-int",
        "zero-rpm",
        "no-secret",
        "unknown-model",
        "redis-without-url",
        "redis-url-scheme",
        "lease-ttl",
    ],
)
def test_check_config_names_the_bad_field(
    tmp_path: Path, keys: list[object], extra: dict[str, object], field: str
) -> None:
    result = check(tmp_path, keys, **extra)
    assert result.returncode != 0, result.stdout
    assert f"bad.yaml: {field}" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_check_config_lists_every_key_problem_at_once(tmp_path: Path) -> None:
    keys = [
        {"name": "team-a", "key_sha256": "XYZ"},
        {"name": "team-a", "key": "sk-other-0123456789", "priority": "high"},
    ]
    result = check(tmp_path, keys)
    assert result.returncode != 0
    for field in ("auth.keys[0].key_sha256", "auth.keys[1].priority"):
        assert field in result.stderr, result.stderr
