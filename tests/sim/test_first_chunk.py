"""The role-only delta leaves with the first token, as vLLM sends it: after prefill."""

from __future__ import annotations

import httpx

from aigw.sim.server import BackendSettings, create_app
from tests.servers import serve_in_thread


def test_role_delta_is_sent_together_with_the_first_token() -> None:
    with serve_in_thread(create_app(BackendSettings(time_scale=0.05))) as server:
        body = {
            "model": "m",
            "messages": [{"role": "user", "content": "x " * 2000}],
            "max_tokens": 3,
            "stream": True,
        }
        with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body) as response:
            chunks = response.iter_raw()
            first = next(chunks)
            rest = b"".join(chunks)
    events = [e for e in first.split(b"\n\n") if e]
    assert b'"role":"assistant"' in events[0]
    # The first body bytes already carry a generated token, not just the role.
    assert len(events) >= 2 and b'"content":"' in events[1] and b'"content":""' not in events[1]
    assert rest.endswith(b"data: [DONE]\n\n")
