"""The 429s admission answers with, the same from every implementation."""

from __future__ import annotations

import math

from aigw.errors import RateLimitError
from aigw.state.base import Ticket

__all__ = ["max_parallel_error", "queue_full_error", "queue_timeout_error"]


def queue_full_error(ticket: Ticket) -> RateLimitError:
    return RateLimitError(
        f"The queue of `{ticket.queue}` is full ({ticket.max_queue} waiting); retry shortly.",
        code="queue_full",
        headers={"Retry-After": "1"},
    )


def queue_timeout_error(ticket: Ticket) -> RateLimitError:
    # The queue did not move for timeout_s: suggest waiting about as long again.
    retry = max(1, math.ceil(ticket.timeout_s))
    return RateLimitError(
        f"No slot for `{ticket.queue}` within {ticket.timeout_s:g} s of queueing.",
        code="queue_timeout",
        headers={"Retry-After": str(retry)},
    )


def max_parallel_error(ticket: Ticket) -> RateLimitError:
    size = ticket.tenant_pool.size if ticket.tenant_pool is not None else 0
    return RateLimitError(
        f"Key `{ticket.tenant}` already has {size} requests in flight (its max_parallel).",
        code="max_parallel_exceeded",
        headers={"Retry-After": "1"},
    )
