"""Access logs and JSON logs: `aigw serve --access-log --log-format json` as a real process."""

from __future__ import annotations

import json
import logging
import signal
from typing import Any

import openai
import pytest

from aigw.telemetry.logs import LogFormatter
from tests.conftest import deployment
from tests.e2e.procs import GatewayProcess, Processes
from tests.servers import ThreadedServer

KEY = "sk-canary-logs-0123456789"
PROVIDER_KEY = "sk-canary-provider-logs-987654"


def _record(fields: dict[str, Any] | None) -> logging.LogRecord:
    record = logging.LogRecord("aigw.access", logging.INFO, __file__, 1, "request", None, None)
    if fields is not None:
        record.fields = fields
    return record


def test_json_lines_carry_the_fields() -> None:
    line = json.loads(LogFormatter(json=True).format(_record({"status": 200, "model": "m"})))
    assert line["level"] == "info" and line["logger"] == "aigw.access"
    assert line["msg"] == "request" and line["status"] == 200 and line["model"] == "m"
    assert line["ts"].endswith("Z")


def test_text_lines_carry_the_fields_as_pairs() -> None:
    text = LogFormatter(json=False).format(_record({"status": 429, "error": None}))
    assert text.endswith("aigw.access: request status=429")


@pytest.mark.e2e
def test_serve_logs_one_json_access_line_per_request(
    processes: Processes, start_backend: Any
) -> None:
    backend: ThreadedServer = start_backend()
    config = {
        "models": [
            {
                "name": "chat",
                "deployments": [deployment(backend.url, "gpu-a", api_key=PROVIDER_KEY)],
            }
        ],
        "auth": {"keys": [{"name": "team-logs", "key": KEY}]},
    }
    gateway = GatewayProcess(
        processes, config, "gw", global_args=["--log-format", "json"], serve_args=["--access-log"]
    )
    gateway.wait_ready()
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=KEY, max_retries=0)
    hello: list[Any] = [{"role": "user", "content": "a secret prompt"}]
    with client:
        reply = client.chat.completions.create(model="chat", messages=hello, max_tokens=3)
        list(client.chat.completions.create(model="chat", messages=hello, stream=True))
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="nope", messages=hello)
    gateway.proc.signal(signal.SIGTERM)
    gateway.proc.popen.wait(15)
    text = gateway.proc.log_text()
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]  # all JSON
    access = [line for line in lines if line["logger"] == "aigw.access"]
    assert [(a["status"], a["stream"], a["model"]) for a in access] == [
        (200, False, "chat"),
        (200, True, "chat"),
        (404, False, None),
    ]
    first = access[0]
    assert first["key"] == "team-logs" and first["deployment"] == "gpu-a"
    assert first["attempts"] == 1 and first["endpoint"] == "chat/completions"
    assert reply.usage is not None
    assert first["input_tokens"] == reply.usage.prompt_tokens
    assert first["output_tokens"] == reply.usage.completion_tokens
    assert first["duration_ms"] > 0 and "queue_ms" in first
    assert access[1]["ttft_ms"] <= access[1]["duration_ms"]
    assert access[2]["error"] == "model_not_found"
    assert any(line["logger"].startswith("uvicorn") for line in lines)  # uvicorn's too
    for secret in (KEY, PROVIDER_KEY, "a secret prompt"):
        assert secret not in text
