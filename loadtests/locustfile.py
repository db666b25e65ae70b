"""Locust load test for a running gateway (for example `./dev demo`).

    .venv/bin/pip install -e '.[load]'
    .venv/bin/locust -f loadtests/locustfile.py --host http://127.0.0.1:8080 \\
        --headless -u 50 -r 10 --run-time 60s

Users mix streamed chat (time to first token is reported as its own entry, "TTFT"),
non-streamed chat and embeddings. AIGW_MODEL picks the model (default: the demo's).
Every user stops when --run-time ends; point it only at hosts you run.
"""

from __future__ import annotations

import os
import random
import time

from locust import HttpUser, between, events, task

MODEL = os.environ.get("AIGW_MODEL", "llama-3-8b")
QUESTIONS = [
    "Explain continuous batching in two sentences.",
    "What is a KV cache?",
    "Write a haiku about load balancers.",
    "Summarise the CAP theorem.",
]


class GatewayUser(HttpUser):
    wait_time = between(0.1, 0.5)

    def _messages(self) -> list[dict[str, str]]:
        return [{"role": "user", "content": random.choice(QUESTIONS)}]

    @task(6)
    def chat_stream(self) -> None:
        body = {"model": MODEL, "messages": self._messages(), "max_tokens": 64, "stream": True}
        started = time.perf_counter()
        first: float | None = None
        with self.client.post(
            "/v1/chat/completions",
            json=body,
            stream=True,
            catch_response=True,
            name="chat (stream)",
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
                return
            done = False
            for line in response.iter_lines():
                if not line:
                    continue
                if first is None:
                    first = time.perf_counter()
                if line.startswith(b'data: {"error"'):
                    response.failure(line.decode()[:200])
                    return
                if line == b"data: [DONE]":
                    done = True
            if not done:
                response.failure("stream ended without [DONE]")
                return
            response.success()
        if first is not None:
            events.request.fire(
                request_type="SSE",
                name="TTFT",
                response_time=(first - started) * 1000,
                response_length=0,
                exception=None,
                context={},
            )

    @task(3)
    def chat(self) -> None:
        body = {"model": MODEL, "messages": self._messages(), "max_tokens": 32}
        self.client.post("/v1/chat/completions", json=body, name="chat")

    @task(1)
    def embeddings(self) -> None:
        self.client.post(
            "/v1/embeddings",
            json={"model": MODEL, "input": random.choice(QUESTIONS)},
            name="embeddings",
        )
