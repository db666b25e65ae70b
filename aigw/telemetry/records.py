"""What one client request came to, as request-level observers (metrics, access log) see it.

The API layer opens a :class:`RequestRecord` when a request arrives and hands it, complete, to
every :class:`RequestObserver` once the response is over (sent, failed, or abandoned by the
client). Attempt-level events (each try on a deployment) go to the
:class:`~aigw.fleet.attempt.AttemptObserver` interface instead; the record keeps the final
attempt, which holds the deployment, the usage and the timings of the try that answered.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from aigw.fleet.attempt import Attempt

__all__ = ["CLIENT_CLOSED", "RequestObserver", "RequestObservers", "RequestRecord"]

# nginx's convention for "the client closed the connection before the response was complete".
CLIENT_CLOSED = 499


class RequestRecord:
    """One client request. Times are event-loop seconds; ``status`` is what the client got
    (:data:`CLIENT_CLOSED` when it went away first). ``model`` is the configured public name
    (None when the request named no configured model: never a client-chosen string).
    ``key`` is the API key's *name*. ``error_code`` is the OpenAI error code sent, in the
    error body or (``status`` 200) in an error event that ended a stream. ``resumes``: for
    a stream of a ``stream_resume`` model, the outcome of each break (``resumed``,
    ``failed``, ``not_resumable``; :data:`aigw.relay.ResumeOutcome`), in order."""

    __slots__ = (
        "attempt",
        "endpoint",
        "error_code",
        "finished_at",
        "key",
        "limit",
        "model",
        "request_id",
        "resumes",
        "started_at",
        "status",
        "stream",
        "trace",
    )

    def __init__(self, endpoint: str, started_at: float) -> None:
        self.endpoint = endpoint
        self.started_at = started_at
        self.finished_at = started_at
        self.request_id: str | None = None
        self.key: str | None = None
        self.model: str | None = None
        self.stream = False
        self.status = 200
        self.error_code: str | None = None
        self.limit: str | None = None  # which limit refused it (a 429), e.g. "key_rpm"
        self.attempt: Attempt | None = None  # the last try, when one was made
        self.resumes: tuple[str, ...] = ()
        self.trace: Any = None  # the tracer's handle on this request's span, when tracing

    @property
    def duration_s(self) -> float:
        return self.finished_at - self.started_at


class RequestObserver(Protocol):
    def on_request(self, record: RequestRecord) -> None:
        """The request is over. Must not raise, block or await."""
        ...


class RequestObservers:
    """Fan a finished request out to every observer, in order."""

    __slots__ = ("_all",)

    def __init__(self, observers: Sequence[RequestObserver] = ()) -> None:
        self._all = tuple(observers)

    def on_request(self, record: RequestRecord) -> None:
        for observer in self._all:
            observer.on_request(record)
