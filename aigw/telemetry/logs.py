"""Logs: one access line per proxied request, and every log line as JSON or as text.

:class:`AccessLog` is a :class:`~aigw.telemetry.records.RequestObserver` that logs one record
per request on the ``aigw.access`` logger, its fields in ``record.fields``. :class:`LogFormatter`
renders any record, the gateway's and uvicorn's alike, as one JSON object per line (``ts``,
``level``, ``logger``, ``msg``, then the fields) or as text with ``key=value`` pairs.

What is never logged: prompts and completions (the gateway has no option to log them), API
keys (only their names), and upstream addresses beyond what an error message names.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson

from aigw.telemetry.records import RequestRecord

__all__ = ["AccessLog", "LogFormatter"]

access_log = logging.getLogger("aigw.access")


class AccessLog:
    """Logs each finished request: id, key name, model, deployment, attempts, status, error
    code, tokens, queue wait, time to first token and duration (milliseconds)."""

    def on_request(self, record: RequestRecord) -> None:
        if not access_log.isEnabledFor(logging.INFO):
            return
        fields: dict[str, Any] = {
            "request_id": record.request_id,
            "key": record.key,
            "endpoint": record.endpoint,
            "model": record.model,
            "stream": record.stream,
            "status": record.status,
            "duration_ms": round(record.duration_s * 1000, 2),
        }
        if record.error_code is not None:
            fields["error"] = record.error_code
        if record.trace is not None:  # tracing is on: the line names its trace
            fields["trace_id"] = f"{record.trace[0].get_span_context().trace_id:032x}"
        attempt = record.attempt
        if attempt is not None:
            fields["deployment"] = attempt.deployment.id
            fields["attempts"] = attempt.number
            fields["queue_ms"] = round(attempt.queued_s * 1000, 2)
            if attempt.first_byte_at is not None:
                fields["ttft_ms"] = round((attempt.first_byte_at - record.started_at) * 1000, 2)
            if attempt.usage is not None:
                fields["input_tokens"] = attempt.usage.prompt_tokens
                fields["output_tokens"] = attempt.usage.completion_tokens
        access_log.info("request", extra={"fields": fields})


class LogFormatter(logging.Formatter):
    """One line per record: a JSON object (``json=True``) or text with ``key=value`` fields."""

    def __init__(self, *, json: bool) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self._json = json

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] | None = getattr(record, "fields", None)
        if not self._json:
            text = super().format(record)
            if fields:
                text += " " + " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
            return text
        line: dict[str, Any] = {
            "ts": _iso(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if fields:
            line.update(fields)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


def _iso(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"
