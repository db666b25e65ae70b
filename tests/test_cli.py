"""The `aigw` command as a user runs it: check-config, demo (in a subprocess), serve."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.servers import free_port

ROOT = Path(__file__).parent.parent


def aigw(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aigw", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
    )


def test_check_config_ok_prints_one_line_per_model() -> None:
    result = aigw("check-config", "configs/vllm-fleet.yaml", env={"VLLM_API_KEY": "k"})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "ok: configs/vllm-fleet.yaml"
    assert (
        lines[1].strip().startswith("llama-3-70b: policy gpu-aware, deployments: vllm-0 (openai)")
    )
    assert lines[2].strip().startswith("bge-m3:")


def test_check_config_lists_every_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "server: {port: 99999}\n"
        "models:\n"
        "  - name: m\n"
        "    deployments:\n"
        "      - {id: a, provider: vllm, base_url: 'http://x/v1', model: m, api_key: '${ABSENT_KEY_1}'}\n"
    )
    result = aigw("check-config", str(bad), env={"ABSENT_KEY_1": ""})
    assert result.returncode == 1
    problems = result.stderr.strip().splitlines()
    assert len(problems) == 2, result.stderr
    assert all(p.startswith(f"{bad}: ") for p in problems)
    assert any("server.port:" in p for p in problems)
    assert any(
        "models[0].deployments[0].provider: expected one of openai, anthropic" in p
        for p in problems
    )
    assert "Traceback" not in result.stderr


def test_serve_with_bad_config_exits_1_without_traceback(tmp_path: Path) -> None:
    result = aigw("serve", "--config", str(tmp_path / "missing.yaml"))
    assert result.returncode == 1
    assert "cannot read config file" in result.stderr and "Traceback" not in result.stderr


def test_demo_works_as_printed_and_stops_on_ctrl_c() -> None:
    port = free_port()
    demo = subprocess.Popen(
        [sys.executable, "-m", "aigw", "demo", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )
    try:
        assert demo.stdout is not None
        banner = []
        deadline = time.monotonic() + 30
        for line in demo.stdout:
            banner.append(line)
            if "Ctrl-C stops everything" in line or time.monotonic() > deadline:
                break
        text = "".join(banner)
        assert f"http://127.0.0.1:{port}/v1" in text, text
        snippet = [
            line.strip()
            for line in banner
            if line.strip().startswith(("from openai", "client =", "print("))
        ]
        assert len(snippet) == 3
        run = subprocess.run(
            [sys.executable, "-c", "\n".join(snippet)], capture_output=True, text=True, timeout=30
        )
        assert run.returncode == 0, run.stderr
        assert run.stdout.strip()  # the simulated model's answer
        curl = shutil.which("curl")
        if curl is not None:
            start = next(i for i, line in enumerate(banner) if line.strip().startswith("curl "))
            command = banner[start].strip().rstrip("\\") + " " + banner[start + 1].strip()
            out = subprocess.run(
                ["bash", "-c", command], capture_output=True, text=True, timeout=30
            )
            assert '"chat.completion"' in out.stdout, out.stdout + out.stderr
    finally:
        demo.send_signal(signal.SIGINT)
        try:
            output, _ = demo.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            demo.kill()
            pytest.fail("aigw demo did not stop on Ctrl-C")
    assert demo.returncode == 0, output
    assert "aigw demo stopped." in output
    assert "Traceback" not in output
