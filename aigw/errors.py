"""The gateway's one error tree.

Every error a client can see is a :class:`GatewayError`: it carries the HTTP status, OpenAI's
error ``type``, an optional ``param`` (the request field at fault) and ``code``.
:func:`aigw.api.responses.error_response` renders any of them as OpenAI's error JSON::

    {"error": {"message": ..., "type": ..., "param": ..., "code": ...}}

Tree::

    GatewayError
    ├── InvalidRequestError        400  malformed JSON, missing or ill-typed fields
    ├── AuthenticationError        401
    ├── PermissionDeniedError      403
    ├── NotFoundError              404  unknown model or route
    ├── MethodNotAllowedError      405
    ├── PayloadTooLargeError       413  body over server.max_body_bytes
    ├── UnsupportedMediaTypeError  415  admin POST without Content-Type: application/json
    ├── RateLimitError             429
    ├── UpstreamStatusError        the upstream's own 4xx/5xx, passed through with its message
    ├── UpstreamConnectionError    502  upstream unreachable or broke the protocol
    ├── UpstreamTimeoutError       504  connect / first byte / idle gap / total timeout
    ├── DeadlineExceededError      504  the request's own deadline (retry.deadline_s) passed
    └── ServiceUnavailableError    503  no deployment could serve the request

``retryable`` tells the gateway whether another deployment may be tried: only failures that
happened before the client received a byte, and that are not the client's fault, are retried.

:class:`ConfigError` is separate: it never reaches a client, it stops startup.
"""

from __future__ import annotations

import math

__all__ = [
    "AuthenticationError",
    "ConfigError",
    "DeadlineExceededError",
    "GatewayError",
    "InvalidRequestError",
    "MethodNotAllowedError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "RateLimitError",
    "ServiceUnavailableError",
    "UnsupportedMediaTypeError",
    "UpstreamConnectionError",
    "UpstreamStatusError",
    "UpstreamTimeoutError",
]


class GatewayError(Exception):
    """Base of every client-visible error."""

    status: int = 500
    type: str = "api_error"
    retryable: bool = False
    # A 429's limit, for metrics: key_rpm, key_tpm, model_rpm or model_tpm (else its code).
    limit: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}

    def to_dict(self) -> dict[str, object]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequestError(GatewayError):
    status = 400
    type = "invalid_request_error"


class AuthenticationError(GatewayError):
    status = 401
    type = "authentication_error"


class PermissionDeniedError(GatewayError):
    status = 403
    type = "permission_error"


class NotFoundError(GatewayError):
    status = 404
    type = "invalid_request_error"


class MethodNotAllowedError(GatewayError):
    status = 405
    type = "invalid_request_error"


class ConflictError(GatewayError):
    """The request is valid but this gateway's current setup cannot carry it out."""

    status = 409
    type = "invalid_request_error"


class PayloadTooLargeError(GatewayError):
    status = 413
    type = "invalid_request_error"


class UnsupportedMediaTypeError(GatewayError):
    status = 415
    type = "invalid_request_error"


class RateLimitError(GatewayError):
    status = 429
    type = "rate_limit_error"


class UpstreamStatusError(GatewayError):
    """An upstream answered with an error status; its status and message reach the client.

    5xx, 429 and 408 from an upstream are retryable on another deployment; other 4xx are the
    request's fault (context too long, bad parameter) and are passed through at once.
    ``retry_after_s``: how long the upstream asked us to wait (its ``Retry-After``), relayed
    to the client as ``Retry-After`` in whole seconds.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message, param=param, code=code)
        self.status = status
        self.type = type or _type_for_status(status)
        self.retryable = status >= 500 or status in (408, 429)
        self.retry_after_s: float | None = None

    def set_retry_after(self, seconds: float) -> None:
        """The upstream asked for ``seconds`` of quiet; the client is told in whole seconds."""
        self.retry_after_s = seconds
        self.headers["Retry-After"] = str(max(1, math.ceil(seconds)))


class UpstreamConnectionError(GatewayError):
    status = 502
    type = "api_error"
    retryable = True


class UpstreamTimeoutError(GatewayError):
    status = 504
    type = "timeout"
    retryable = True


class DeadlineExceededError(GatewayError):
    """The request's overall deadline passed (queueing, attempts and backoff together)."""

    status = 504
    type = "timeout"


class ServiceUnavailableError(GatewayError):
    status = 503
    type = "service_unavailable"


def _type_for_status(status: int) -> str:
    return {
        400: "invalid_request_error",
        401: "authentication_error",
        403: "permission_error",
        404: "invalid_request_error",
        422: "invalid_request_error",
        429: "rate_limit_error",
    }.get(status, "api_error")


class ConfigError(Exception):
    """A configuration mistake. ``problems`` lists each one as ``file: field.path: expectation``."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems
