"""Sticky conversation sessions: which session a request belongs to, and whether it stays.

A conversation's later turns are cheapest on the deployment that served its earlier ones:
that engine still holds the conversation's KV cache (prefix caching), so it prefills only
the new turn. A model with ``sticky`` in its config therefore binds each session to a
deployment (the binding lives in a :class:`~aigw.state.sessions.SessionStore`; the gateway
looks it up before routing and binds after the answer).

Rules, pure and synchronous like every policy (:func:`keep_bound`):

- a session's first request is routed by the model's policy, and the session is bound to
  the deployment that answered it;
- later requests go to the bound deployment while it is a candidate (not draining, not
  already tried for this request, passes the model-aware filters), not ejected by outlier
  detection, and under its load bound:

  - with ``max_concurrency``: below it (as this process sees its in-flight count);
  - without: with this request, its in-flight count at most
    ``max(4, ceil(1.5 x`` the candidates' mean in-flight, this request included``))``. This
    is the bound of consistent hashing with bounded loads (Mirrokni, Thorup, Zadimoghaddam,
    2018; c = 1.5): a deployment heavy with busy conversations sheds new turns before it
    becomes the fleet's straggler, and the floor of 4 keeps a near-idle fleet from moving a
    session (and losing its KV cache) for a few parallel requests;

- otherwise the policy routes the request, and the session is rebound to whichever
  deployment answers it (that one now holds the conversation's longest prefix). Only the
  sessions of an unavailable deployment move; the others keep their bindings untouched.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

from aigw.config import StickyConfig
from aigw.fleet.deployment import Deployment
from aigw.types import RequestMeta

__all__ = ["LOAD_FACTOR", "MIN_IN_FLIGHT", "Stickiness", "keep_bound"]

LOAD_FACTOR = 1.5  # the bound deployment may carry this many times the mean in-flight
MIN_IN_FLIGHT = 4  # ... and always this many, so a near-idle fleet never moves sessions
_MAX_ID_CHARS = 128  # longer session ids are stored as their sha256 (short Redis keys)


class Stickiness:
    """One model's ``sticky`` settings, built once: how to find a request's session key."""

    __slots__ = ("_header", "_prefix", "_user", "ttl_s")

    def __init__(self, config: StickyConfig, model: str) -> None:
        self.ttl_s = config.ttl_s
        self._user = config.key == "user"
        self._header = config.header.encode("latin-1")
        # The model's length first: no model name can make two (model, tenant, id) collide.
        self._prefix = f"{len(model)}:{model}:"

    def session_key(self, tenant: str, body: Mapping[str, Any], meta: RequestMeta) -> str | None:
        """The store key of the request's session, or None (no session id: route normally).

        Scoped by model and by ``tenant`` (the API key's name, which holds no ``:``), so one
        tenant cannot steer, or learn from, another tenant's sessions by sending its id.
        """
        if self._user:
            user = body.get("user")
            session = user if isinstance(user, str) else None
        else:
            raw = meta.header(self._header)
            session = raw.decode("latin-1").strip() if raw is not None else None
        if not session:
            return None
        if len(session) > _MAX_ID_CHARS:
            session = "#" + hashlib.sha256(session.encode("utf-8", "surrogatepass")).hexdigest()
        return f"{self._prefix}{tenant}:{session}"


def keep_bound(bound_id: str, candidates: Sequence[Deployment]) -> Deployment | None:
    """The bound deployment if the session may stay on it, else None (see the module docs).

    ``candidates``: the request's deployments after the filters, left out those ejected
    (the router's healthy list). A bound deployment missing from them is draining, ejected,
    filtered out or already tried, and the session moves.
    """
    bound: Deployment | None = None
    total = 1  # this request
    for d in candidates:
        total += d.state.in_flight
        if d.id == bound_id:
            bound = d
    if bound is None:
        return None
    limit = bound.config.max_concurrency
    in_flight = bound.state.in_flight
    if limit is not None:
        return bound if in_flight < limit else None
    cap = max(MIN_IN_FLIGHT, math.ceil(LOAD_FACTOR * total / len(candidates)))
    return bound if in_flight + 1 <= cap else None
