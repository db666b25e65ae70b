"""OpenTelemetry traces: one span per client request, children for queue waits and attempts.

Off unless OpenTelemetry's own environment asks for it (:func:`provider_from_env`):
``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``..._TRACES_ENDPOINT``) exports over OTLP/HTTP protobuf,
``OTEL_TRACES_EXPORTER=console`` prints spans (debugging), ``OTEL_SDK_DISABLED=true`` or
``OTEL_TRACES_EXPORTER=none`` turns them off; ``OTEL_SERVICE_NAME``,
``OTEL_RESOURCE_ATTRIBUTES`` and ``OTEL_TRACES_SAMPLER`` work as everywhere. Off, the gateway
builds no :class:`Tracing` and the hot path pays one ``is None`` test per request.

Spans, with attributes after OpenTelemetry's GenAI semantic conventions:

- ``{operation} {model}`` (SERVER): the client request. A ``traceparent`` from the client
  makes it a child of the client's trace. ``gen_ai.operation.name``, ``gen_ai.request.model``
  (the public name), ``gen_ai.request.stream``, ``gen_ai.usage.*``, ``http.response.status_code``,
  ``aigw.key`` (the key's name), ``aigw.request_id``, ``aigw.deployment``, ``aigw.attempts``,
  ``error.type`` (the OpenAI error code) when it failed.
- ``queue wait`` (INTERNAL): time an attempt waited for a deployment slot (only when it did).
- ``{operation} {upstream model}`` (CLIENT): one try on one deployment. ``gen_ai.provider.name``,
  ``gen_ai.request.model`` / ``gen_ai.response.model`` (the upstream's model id),
  ``gen_ai.usage.*``, ``gen_ai.response.time_to_first_chunk``, ``aigw.deployment``,
  ``aigw.attempt``, ``aigw.policy``, ``aigw.queue_wait_s``, and the error if it failed. While it
  runs it is the current span, so the upstream request carries its ``traceparent`` (vLLM and
  SGLang continue the trace).

Times: the pipeline stamps events with the event loop's clock; spans get wall-clock
nanoseconds, converted at each event. The exporter's batch processor runs in the SDK's own
thread: exporting never blocks the event loop.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from aigw.errors import GatewayError
from aigw.fleet.attempt import Attempt
from aigw.telemetry.otel_env import traces_exporter
from aigw.telemetry.records import RequestRecord

__all__ = ["Tracing", "inject_trace_context", "provider_from_env"]

log = logging.getLogger("aigw.tracing")

_PROPAGATOR = TraceContextTextMapPropagator()  # stateless: W3C traceparent/tracestate
_OPERATIONS = {
    "chat/completions": "chat",
    "completions": "text_completion",
    "embeddings": "embeddings",
}


def provider_from_env(environ: Mapping[str, str] = os.environ) -> TracerProvider | None:
    """The tracer provider OpenTelemetry's environment variables describe; None when off."""
    exporter_name = traces_exporter(environ)
    if exporter_name == "console":
        exporter: Any = ConsoleSpanExporter()
    elif exporter_name == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()  # reads the endpoint, headers and timeout from the env
    else:
        return None
    attributes = {} if "OTEL_SERVICE_NAME" in environ else {"service.name": "aigw"}
    provider = TracerProvider(resource=Resource.create(attributes))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    log.info("tracing on: %s exporter", exporter_name)
    return provider


class _HeaderGetter(Getter[list[tuple[bytes, bytes]]]):
    """Reads ASGI request headers (lowercase bytes pairs) for the propagator."""

    def get(self, carrier: list[tuple[bytes, bytes]], key: str) -> list[str] | None:
        wanted = key.lower().encode()
        values = [v.decode("latin-1") for k, v in carrier if k == wanted]
        return values or None

    def keys(self, carrier: list[tuple[bytes, bytes]]) -> list[str]:
        return [k.decode("latin-1") for k, _ in carrier]


_GETTER = _HeaderGetter()


def inject_trace_context(headers: Mapping[str, str]) -> Mapping[str, str]:
    """``headers`` plus the current span's ``traceparent`` (unchanged when there is none)."""
    carrier = dict(headers)
    _PROPAGATOR.inject(carrier)
    return carrier


class Tracing:
    """Writes the spans; a request and an attempt observer. Build one per app."""

    inject = staticmethod(inject_trace_context)  # for the upstream pool, while tracing is on

    def __init__(
        self,
        provider: TracerProvider,
        clock: Callable[[], float],
        policies: Mapping[str, str],
    ) -> None:
        self.provider = provider
        self._tracer = provider.get_tracer("aigw")
        self._clock = clock
        self._policies = dict(policies)

    def set_policies(self, policies: Mapping[str, str]) -> None:
        """After a config reload: each model's policy name, for the attempt spans."""
        self._policies = dict(policies)

    def _wall_ns(self, loop_time: float) -> int:
        return time.time_ns() - int((self._clock() - loop_time) * 1e9)

    # --- the request span (opened by the API layer, closed as a RequestObserver) -------------

    def start_request(self, record: RequestRecord, headers: list[tuple[bytes, bytes]]) -> None:
        """Open the request's span and make it current (call in the request's task)."""
        parent = _PROPAGATOR.extract(headers, getter=_GETTER)
        operation = _OPERATIONS.get(record.endpoint, record.endpoint)
        span = self._tracer.start_span(
            operation,
            context=parent,
            kind=SpanKind.SERVER,
            start_time=self._wall_ns(record.started_at),
            attributes={
                "gen_ai.operation.name": operation,
                "http.request.method": "POST",
                "http.route": f"/v1/{record.endpoint}",
            },
        )
        token = otel_context.attach(trace.set_span_in_context(span))
        record.trace = (span, token)

    def on_request(self, record: RequestRecord) -> None:
        if record.trace is None:
            return
        span, token = record.trace
        record.trace = None
        if not span.is_recording():  # sampled out: nothing to write
            otel_context.detach(token)
            span.end()
            return
        operation = _OPERATIONS.get(record.endpoint, record.endpoint)
        if record.model is not None:
            span.update_name(f"{operation} {record.model}")
            span.set_attribute("gen_ai.request.model", record.model)
        attributes: dict[str, Any] = {
            "gen_ai.request.stream": record.stream,
            "http.response.status_code": record.status,
        }
        if record.key is not None:
            attributes["aigw.key"] = record.key
        if record.request_id is not None:
            attributes["aigw.request_id"] = record.request_id
        attempt = record.attempt
        if attempt is not None:
            attributes["aigw.deployment"] = attempt.deployment.id
            attributes["aigw.attempts"] = attempt.number
            attributes.update(_usage(attempt))
        span.set_attributes(attributes)
        if record.error_code is not None or record.status >= 500:
            span.set_attribute("error.type", record.error_code or str(record.status))
            span.set_status(Status(StatusCode.ERROR, record.error_code))
        otel_context.detach(token)
        span.end(end_time=self._wall_ns(record.finished_at))

    # --- attempt spans (AttemptObserver) -----------------------------------------------------

    def on_dispatch(self, attempt: Attempt) -> None:
        if not trace.get_current_span().is_recording():
            # The request was sampled out: no child spans; the upstream still gets the
            # request's traceparent (flagged unsampled) from the current context.
            return
        started = self._wall_ns(attempt.started_at)
        if attempt.queued_s > 0:
            queued = self._tracer.start_span(
                "queue wait",
                start_time=started - int(attempt.queued_s * 1e9),
                attributes={"aigw.deployment": attempt.deployment.id},
            )
            queued.end(end_time=started)
        deployment = attempt.deployment
        operation = _OPERATIONS.get(attempt.ctx.endpoint.value, attempt.ctx.endpoint.value)
        span = self._tracer.start_span(
            f"{operation} {deployment.config.model}",
            kind=SpanKind.CLIENT,
            start_time=started,
            attributes={
                "gen_ai.operation.name": operation,
                "gen_ai.provider.name": deployment.config.provider,
                "gen_ai.request.model": deployment.config.model,
                "aigw.deployment": deployment.id,
                "aigw.attempt": attempt.number,
                "aigw.policy": self._policies.get(deployment.model, ""),
                "aigw.queue_wait_s": attempt.queued_s,
            },
        )
        # Current while the attempt runs: the upstream request carries its traceparent.
        token = otel_context.attach(trace.set_span_in_context(span))
        attempt.trace = (span, token)

    def on_first_byte(self, attempt: Attempt) -> None:
        if attempt.trace is not None and attempt.first_byte_at is not None:
            seconds = attempt.first_byte_at - attempt.started_at
            attempt.trace[0].set_attribute("gen_ai.response.time_to_first_chunk", seconds)

    def on_success(self, attempt: Attempt) -> None:
        if attempt.trace is not None:
            span = attempt.trace[0]
            span.set_attribute("gen_ai.response.model", attempt.deployment.config.model)
            span.set_attributes(_usage(attempt))

    def on_failure(self, attempt: Attempt, error: GatewayError) -> None:
        if attempt.trace is not None:
            span = attempt.trace[0]
            span.set_attribute("error.type", error.code or type(error).__name__)
            span.set_status(Status(StatusCode.ERROR, error.code))

    def on_finish(self, attempt: Attempt) -> None:
        if attempt.trace is None:
            return
        span, token = attempt.trace
        attempt.trace = None
        if attempt.abandoned:
            span.set_attribute("aigw.abandoned", True)
        otel_context.detach(token)
        span.end(end_time=self._wall_ns(attempt.last_byte_at or self._clock()))

    def shutdown(self) -> None:
        self.provider.shutdown()  # flushes what the batch processor still holds


def _usage(attempt: Attempt) -> Iterable[tuple[str, int]] | dict[str, int]:
    usage = attempt.usage
    if usage is None:
        return {}
    return {
        "gen_ai.usage.input_tokens": usage.prompt_tokens,
        "gen_ai.usage.output_tokens": usage.completion_tokens,
    }
