"""The supply chain: every dependency is pinned in constraints.txt, the environment that runs the
tests was installed from it, and pip-audit finds no known vulnerability in the pins."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
CONSTRAINTS = ROOT / "constraints.txt"


def pins() -> dict[str, str]:
    found: dict[str, str] = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep and version, f"constraints.txt: {line!r} is not pinned with =="
        found[canonicalize_name(name)] = version
    return found


def test_every_declared_dependency_is_pinned() -> None:
    pinned = pins()
    requirements = [Requirement(r) for r in metadata.requires("aigw") or []]
    missing = [r.name for r in requirements if canonicalize_name(r.name) not in pinned]
    assert not missing, f"not in constraints.txt (run ./dev lock): {missing}"


def test_the_installed_environment_matches_the_pins() -> None:
    pinned = pins()
    drifted = {
        name: (dist.version, pinned[name])
        for dist in metadata.distributions()
        if (name := canonicalize_name(dist.metadata["Name"])) in pinned
        and dist.version != pinned[name]
    }
    assert not drifted, f"installed vs pinned (reinstall with ./dev, or ./dev lock): {drifted}"


def test_no_known_vulnerability_in_the_pins() -> None:
    audit = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip_audit",
            "--requirement",
            str(CONSTRAINTS),
            "--no-deps",  # every dependency is already pinned in the file
            "--disable-pip",
            "--progress-spinner",
            "off",
            "--format",
            "json",
            "--timeout",
            "10",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    try:
        report = json.loads(audit.stdout)
    except json.JSONDecodeError:
        pytest.skip(f"pip-audit could not run (no vulnerability database?): {audit.stderr[-300:]}")
    dependencies = report["dependencies"]
    audited = [d for d in dependencies if "skip_reason" not in d]
    if not audited:
        pytest.skip(
            "pip-audit could not reach its vulnerability database (PyPI's JSON API) from here: "
            f"{dependencies[0]['skip_reason'] if dependencies else 'no dependencies'}"
        )
    vulnerable = {d["name"]: [v["id"] for v in d["vulns"]] for d in audited if d["vulns"]}
    assert not vulnerable, f"known vulnerabilities (upgrade the pins with ./dev lock): {vulnerable}"
