"""``aigw demo``: three simulated GPU backends and the gateway, in one process."""

from __future__ import annotations

from aigw.app import create_app
from aigw.configfile import parse_config
from aigw.serving import ServedApp, bind, gateway_protocol, serve_together
from aigw.sim.profiles import get_profile
from aigw.sim.server import BackendSettings
from aigw.sim.server import create_app as create_backend

__all__ = ["DEMO_MODEL", "run_demo"]

DEMO_MODEL = "llama-3-8b"
UPSTREAM_MODEL = "meta-llama/Meta-Llama-3-8B-Instruct"
# Three GPUs of different speeds and KV-cache sizes, as in a real mixed fleet.
PROFILES = ("h100", "a100", "l4")


async def run_demo(host: str, port: int, admin_key: str | None = None) -> None:
    """Serve the demo until interrupted; ``admin_key`` enables ``/admin`` and ``/dashboard``."""
    backend_sockets = [bind("127.0.0.1", 0) for _ in PROFILES]
    gateway_socket = bind(host, port)
    deployments = []
    for profile, sock in zip(PROFILES, backend_sockets, strict=True):
        backend_port = sock.getsockname()[1]
        deployments.append(
            {
                "id": f"gpu-{profile}",
                "provider": "openai",
                "base_url": f"http://127.0.0.1:{backend_port}/v1",
                "model": UPSTREAM_MODEL,
                "metrics_url": f"http://127.0.0.1:{backend_port}/metrics",
                "decode_step": get_profile(profile).decode_step(),
            }
        )
    raw: dict[str, object] = {"models": [{"name": DEMO_MODEL, "deployments": deployments}]}
    if admin_key:
        raw["auth"] = {"admin_key": admin_key}
    config = parse_config(raw, source="<demo>")
    apps: list[ServedApp] = [
        (create_backend(BackendSettings(model=UPSTREAM_MODEL, profile=profile, seed=i)), sock)
        for i, (profile, sock) in enumerate(zip(PROFILES, backend_sockets, strict=True))
    ]
    apps.append((create_app(config), gateway_socket, {"http": gateway_protocol(config.server)}))
    url = f"http://{host}:{gateway_socket.getsockname()[1]}"

    def banner() -> None:
        fleet = ", ".join(f"{d['id']} at {d['base_url']}" for d in deployments)
        dashboard = (
            f"Dashboard: {url}/dashboard (sign in with the admin key you gave)\n\n"
            if admin_key
            else ""
        )
        print(
            f"""
aigw demo: gateway at {url}/v1 serving model {DEMO_MODEL!r}
simulated GPU backends: {fleet}

Try it with curl:

  curl -s {url}/v1/chat/completions -H 'content-type: application/json' \\
    -d '{{"model": "{DEMO_MODEL}", "messages": [{{"role": "user", "content": "Hello!"}}]}}'

or with the OpenAI Python SDK:

  from openai import OpenAI
  client = OpenAI(base_url="{url}/v1", api_key="unused")
  print(client.chat.completions.create(model="{DEMO_MODEL}", messages=[{{"role": "user", "content": "Hello!"}}]).choices[0].message.content)

{dashboard}Ctrl-C stops everything.
""",
            flush=True,
        )

    await serve_together(apps, on_started=banner, timeout_graceful_shutdown=2)
    print("aigw demo stopped.", flush=True)
