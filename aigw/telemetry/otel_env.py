"""Whether OpenTelemetry's environment variables ask for traces, read without importing the
SDK (opentelemetry-sdk costs a gateway with tracing off ~3 MB and ~15 ms of startup).
:func:`aigw.telemetry.tracing.provider_from_env` builds the provider when they do."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Literal

__all__ = ["traces_exporter"]


def traces_exporter(environ: Mapping[str, str] = os.environ) -> Literal["console", "otlp"] | None:
    """``console`` (``OTEL_TRACES_EXPORTER=console``), ``otlp`` (the default exporter, when
    ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set), or None:
    tracing off (also with ``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none``)."""
    if environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return None
    name = environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower()
    if name == "console":
        return "console"
    endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if name == "otlp" and endpoint:
        return "otlp"
    return None
