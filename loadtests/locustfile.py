"""Locust load test for a gateway you run (for example `aigw demo`); send it nowhere else.

Headless, with a demo started for you, HTML/CSV reports and thresholds (see the README):

    loadtests/run.sh --run-time 60s --users 50 --spawn-rate 10

or Locust by hand against a running gateway (`.venv/bin/pip install -e '.[load]'`):

    .venv/bin/locust -f loadtests/locustfile.py --host http://127.0.0.1:8080 \\
        --headless -u 50 -r 10 --run-time 60s

Users behave like clients of a chat product: streamed chat, plain chat, embeddings, and
multi-turn conversations (streamed; the history grows turn by turn under one `x-session-id`).
Half the users (by default) send the "high" key, half the "low" key. Entries in the report:

    chat (stream) ttft     time to the first content token of a streamed chat (a role-only
                           opening chunk does not count); a failure if none arrived
    chat (stream) total    the whole stream, up to the end of the body; a failure on a
                           non-200, an error event or a stream without [DONE]
    chat (session) ttft / chat (session) total   the same for each turn of a conversation
    chat, embeddings       the whole response, body read; a failure on a non-200 or a reply
                           without choices / embeddings

Locust itself times a `stream=True` request at its response headers, so streams are timed
here and reported with explicit response times.

Settings (environment variables; the URL comes from --host):

    AIGW_MODEL              chat model (default llama-3-8b, the demo's)
    AIGW_EMBEDDING_MODEL    embeddings model (default: AIGW_MODEL)
    AIGW_KEY_HIGH           API key of the "high" users, sent as `Authorization: Bearer`;
    AIGW_KEY_LOW            of the "low" users. Unset: no Authorization header (an open
                            gateway such as the demo serves every request anonymously).
                            The key's priority is the gateway's `auth.keys[].priority`.
    AIGW_PRIORITY_HIGH      `x-aigw-priority` sent by the "high" users (default: none)
    AIGW_PRIORITY_LOW       by the "low" users (default -10; empty: none). The gateway lets
                            a client only lower its key's priority (it takes the smaller),
                            so on an open gateway this header tells the two groups apart.
    AIGW_USERS_HIGH, AIGW_USERS_LOW   relative numbers of the two kinds of users (1, 1)
    AIGW_WEIGHT_STREAM, AIGW_WEIGHT_CHAT, AIGW_WEIGHT_EMBEDDINGS, AIGW_WEIGHT_SESSION
                            task weights (6, 3, 1, 2); 0 turns a task off
    AIGW_MAX_TOKENS         max_tokens of every chat request (64)
    AIGW_THINK_MIN, AIGW_THINK_MAX   seconds a user waits between tasks and between the
                            turns of a conversation (0.1, 0.5)
    AIGW_SESSION_TURNS      turns per conversation (3)
    AIGW_SESSION_HASH_KEY   1: also send the session id as `x-aigw-hash-key`, which the
                            gateway's consistent-hash routing reads today (default 0)
    AIGW_TIMEOUT_S          connect and read timeout of each request (60)

Pass/fail thresholds (AIGW_MAX_FAIL_RATIO, AIGW_MAX_P99_MS, AIGW_MAX_P99_MS_BY_ENTRY,
AIGW_MIN_REQUESTS) are described in loadtests/thresholds.py; when Locust quits they set its
exit code (0 pass, 1 breach). Every user stops when --run-time ends.
"""

from __future__ import annotations

import logging
import os
import random
import time
import uuid
from dataclasses import dataclass
from typing import Any

import requests
import urllib3
from chat_stream import StreamOutcome, raw_chunks, read_chat_stream
from locust import HttpUser, between, events, task
from locust.env import Environment
from locust.runners import WorkerRunner
from thresholds import EntryStats, Thresholds, breaches

log = logging.getLogger("aigw.loadtest")

QUESTIONS = [
    "Explain continuous batching in two sentences.",
    "What is a KV cache?",
    "Write a haiku about load balancers.",
    "Summarise the CAP theorem.",
]
FOLLOW_UPS = [
    "Can you give an example?",
    "Shorter, please.",
    "How does that change on a GPU with less memory?",
    "Why does that matter for latency?",
]


@dataclass(frozen=True, slots=True)
class Persona:
    """One kind of client: its API key and the `x-aigw-priority` it sends (None: neither)."""

    key: str | None
    priority: str | None

    def headers(self) -> dict[str, str]:
        headers = {}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        if self.priority:
            headers["x-aigw-priority"] = self.priority
        return headers


@dataclass(frozen=True, slots=True)
class Settings:
    model: str
    embedding_model: str
    high: Persona
    low: Persona
    users_high: int
    users_low: int
    weight_stream: int
    weight_chat: int
    weight_embeddings: int
    weight_session: int
    max_tokens: int
    think_min: float
    think_max: float
    session_turns: int
    session_hash_key: bool
    timeout_s: float

    @classmethod
    def from_env(cls, env: dict[str, str]) -> Settings:
        model = env.get("AIGW_MODEL") or "llama-3-8b"
        return cls(
            model=model,
            embedding_model=env.get("AIGW_EMBEDDING_MODEL") or model,
            high=Persona(env.get("AIGW_KEY_HIGH"), env.get("AIGW_PRIORITY_HIGH")),
            low=Persona(env.get("AIGW_KEY_LOW"), env.get("AIGW_PRIORITY_LOW", "-10")),
            users_high=_int(env, "AIGW_USERS_HIGH", 1),
            users_low=_int(env, "AIGW_USERS_LOW", 1),
            weight_stream=_int(env, "AIGW_WEIGHT_STREAM", 6),
            weight_chat=_int(env, "AIGW_WEIGHT_CHAT", 3),
            weight_embeddings=_int(env, "AIGW_WEIGHT_EMBEDDINGS", 1),
            weight_session=_int(env, "AIGW_WEIGHT_SESSION", 2),
            max_tokens=_int(env, "AIGW_MAX_TOKENS", 64),
            think_min=_float(env, "AIGW_THINK_MIN", 0.1),
            think_max=_float(env, "AIGW_THINK_MAX", 0.5),
            session_turns=max(1, _int(env, "AIGW_SESSION_TURNS", 3)),
            session_hash_key=env.get("AIGW_SESSION_HASH_KEY", "0") == "1",
            timeout_s=_float(env, "AIGW_TIMEOUT_S", 60.0),
        )


def _int(env: dict[str, str], name: str, default: int) -> int:
    return int(env.get(name) or default)


def _float(env: dict[str, str], name: str, default: float) -> float:
    return float(env.get(name) or default)


# Read once when Locust loads the file: task weights and user weights are class attributes.
SETTINGS = Settings.from_env(dict(os.environ))
THRESHOLDS = Thresholds.from_env(os.environ)


# Reading response.raw raises urllib3's errors (a reset, a read timeout), not requests' ones.
TRANSPORT_ERRORS = (urllib3.exceptions.HTTPError, requests.RequestException)


class StreamFailure(Exception):
    """Why a stream entry failed; Locust groups failures by this text."""


class GatewayUser(HttpUser):
    """A chat client. Plain requests go through Locust's `self.client` (timed with the body
    read); streams through a session of our own, timed here (see the module docstring)."""

    abstract = True
    persona: Persona = Persona(None, None)
    wait_time = between(SETTINGS.think_min, SETTINGS.think_max)

    def on_start(self) -> None:
        self.client.headers.update(self.persona.headers())
        self.streams = requests.Session()
        self.streams.headers.update(self.persona.headers())

    def on_stop(self) -> None:
        self.streams.close()

    @task(SETTINGS.weight_stream)
    def chat_stream(self) -> None:
        self._stream([_user(random.choice(QUESTIONS))], "chat (stream)", {})

    @task(SETTINGS.weight_chat)
    def chat(self) -> None:
        body = {
            "model": SETTINGS.model,
            "messages": [_user(random.choice(QUESTIONS))],
            "max_tokens": SETTINGS.max_tokens,
        }
        with self.client.post(
            "/v1/chat/completions",
            json=body,
            name="chat",
            catch_response=True,
            timeout=SETTINGS.timeout_s,
        ) as response:
            if response.status_code == 200 and not _json_list(response, "choices"):
                response.failure("200 without choices")

    @task(SETTINGS.weight_embeddings)
    def embeddings(self) -> None:
        body = {"model": SETTINGS.embedding_model, "input": random.choice(QUESTIONS)}
        with self.client.post(
            "/v1/embeddings",
            json=body,
            name="embeddings",
            catch_response=True,
            timeout=SETTINGS.timeout_s,
        ) as response:
            if response.status_code == 200 and not _json_list(response, "data"):
                response.failure("200 without data")

    @task(SETTINGS.weight_session)
    def conversation(self) -> None:
        """Several streamed turns; each resends the whole history plus a new question.

        `x-session-id` is a plain header the gateway does not read today (it ignores headers
        outside `x-aigw-*`); sticky sessions keyed by it will come later. Until then the
        gateway's prefix-affinity routing sees the shared opening of the conversation, and
        AIGW_SESSION_HASH_KEY=1 adds `x-aigw-hash-key` for consistent-hash routing.
        """
        session = uuid.uuid4().hex
        headers = {"x-session-id": session}
        if SETTINGS.session_hash_key:
            headers["x-aigw-hash-key"] = session
        messages = [_user(random.choice(QUESTIONS))]
        for turn in range(SETTINGS.session_turns):
            if turn:  # the person reads the answer and types the next question
                self.wait()  # type: ignore[no-untyped-call]
            reply = self._stream(messages, "chat (session)", headers)
            if reply is None:
                return  # a client gives up on a conversation whose turn failed
            messages += [{"role": "assistant", "content": reply}, _user(random.choice(FOLLOW_UPS))]

    def _stream(
        self, messages: list[dict[str, str]], name: str, headers: dict[str, str]
    ) -> str | None:
        """POST a streamed chat; report `<name> ttft` and `<name> total`; the reply text, or
        None when the stream failed."""
        body: dict[str, Any] = {
            "model": SETTINGS.model,
            "messages": messages,
            "max_tokens": SETTINGS.max_tokens,
            "stream": True,
        }
        start_time = time.time()
        started = time.perf_counter()
        outcome: StreamOutcome | None = None
        error: Exception | None = None
        try:
            with self.streams.post(
                f"{self.host}/v1/chat/completions",
                json=body,
                headers=headers,
                stream=True,
                timeout=SETTINGS.timeout_s,
            ) as response:
                if response.status_code != 200:
                    error = StreamFailure(f"HTTP {response.status_code}: {response.text[:200]}")
                else:
                    outcome = read_chat_stream(
                        raw_chunks(response.raw), time.perf_counter, TRANSPORT_ERRORS
                    )
                    if outcome.error is not None:
                        error = StreamFailure(outcome.error)
        except requests.RequestException as exc:
            error = exc
        finished = time.perf_counter()
        if outcome is not None and outcome.first_token_at is not None:
            self._report(f"{name} ttft", start_time, outcome.first_token_at - started, 0, None)
        else:
            self._report(
                f"{name} ttft",
                start_time,
                finished - started,
                0,
                error or StreamFailure("stream had no content token"),
            )
        length = outcome.length if outcome is not None else 0
        self._report(f"{name} total", start_time, finished - started, length, error)
        return outcome.text if outcome is not None and error is None else None

    def _report(
        self, name: str, start_time: float, seconds: float, length: int, error: Exception | None
    ) -> None:
        self.environment.events.request.fire(
            request_type="POST",
            name=name,
            start_time=start_time,
            response_time=seconds * 1000,
            response_length=length,
            exception=error,
            context=self.context(),
            url=f"{self.host}/v1/chat/completions",
        )


class HighPriorityUser(GatewayUser):
    weight = SETTINGS.users_high
    persona = SETTINGS.high


class LowPriorityUser(GatewayUser):
    weight = SETTINGS.users_low
    persona = SETTINGS.low


def _user(content: str) -> dict[str, str]:
    return {"role": "user", "content": content}


def _json_list(response: requests.Response, field: str) -> bool:
    try:
        value: Any = response.json().get(field)
    except (ValueError, AttributeError):
        return False
    return isinstance(value, list) and len(value) > 0


@events.quitting.add_listener  # type: ignore[untyped-decorator]
def check_thresholds(environment: Environment, **_: Any) -> None:
    """Set the exit code from the thresholds (Locust's documented way: process_exit_code)."""
    if isinstance(environment.runner, WorkerRunner) or environment.stats is None:
        return  # in a distributed run the master, which holds every worker's stats, decides
    stats = environment.stats
    entries = [_entry(s) for s in stats.entries.values()]
    found = breaches(THRESHOLDS, _entry(stats.total), entries)
    for line in found:
        log.error("threshold breached: %s", line)
    if not found:
        log.info("thresholds met: %s", THRESHOLDS)
    environment.process_exit_code = 1 if found else 0


def _entry(s: Any) -> EntryStats:
    p99 = s.get_response_time_percentile(0.99) if s.num_requests else 0.0
    return EntryStats(s.name, s.num_requests, s.num_failures, float(p99 or 0.0))
