"""The ``aigw`` command: serve, demo, fake-backend, check-config."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import socket
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from aigw.errors import ConfigError

if TYPE_CHECKING:
    from aigw.config import GatewayConfig

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    from aigw.telemetry.logs import LogFormatter

    handler = logging.StreamHandler()
    handler.setFormatter(LogFormatter(json=args.log_format == "json"))
    logging.basicConfig(level=getattr(logging, args.log_level.upper()), handlers=[handler])
    # httpx logs every metrics scrape at INFO; that is noise next to the gateway's own lines.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.root.level))
    try:
        result: int = args.run(args)
        return result
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aigw", description="OpenAI-compatible LLM gateway")
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    parser.add_argument(
        "--log-format",
        default="text",
        choices=["text", "json"],
        help="json: one JSON object per line (uvicorn's lines too)",
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the gateway from a config file")
    serve.add_argument("--config", required=True, help="YAML config file")
    serve.add_argument("--host", help="overrides server.host")
    serve.add_argument("--port", type=int, help="overrides server.port")
    serve.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="overrides server.workers: N gateway processes on one port (more than 1 needs "
        "state.backend: redis)",
    )
    serve.add_argument(
        "--access-log",
        action="store_true",
        help="one line per proxied request: key, model, deployment, status, tokens, timings",
    )
    serve.set_defaults(run=_serve)

    demo = commands.add_parser("demo", help="three simulated GPU backends behind the gateway")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=8080)
    demo.add_argument(
        "--admin-key",
        help="enable the admin API and /dashboard with this key (default: $AIGW_ADMIN_KEY; "
        "the environment keeps it out of the process list)",
    )
    demo.set_defaults(run=_demo)

    fake = commands.add_parser(
        "fake-backend", help="one simulated GPU inference server (vLLM-like)"
    )
    fake.add_argument("--host", default="127.0.0.1")
    fake.add_argument("--port", type=int, default=9001)
    from aigw.sim.settings import add_arguments  # not aigw.sim.server: every command parses this

    add_arguments(fake)
    fake.set_defaults(run=_fake_backend)

    check = commands.add_parser("check-config", help="validate a config file")
    check.add_argument("file")
    check.set_defaults(run=_check_config)
    return parser


def _uvicorn_options() -> dict[str, object]:
    """The fastest event loop and HTTP parser installed (uvloop, httptools)."""
    options: dict[str, object] = {}
    try:
        import uvloop  # noqa: F401

        options["loop"] = "uvloop"
    except ImportError:
        pass
    try:
        import httptools  # noqa: F401

        options["http"] = "httptools"
    except ImportError:
        pass
    return options


def _serve(args: argparse.Namespace) -> int:
    gc.disable()  # for the start-up only: aigw.serving.settle_heap turns it back on
    from aigw.configfile import load_config
    from aigw.serving import bind

    config = load_config(args.config)
    workers = args.workers if args.workers is not None else config.server.workers
    if workers < 1:
        raise ConfigError([f"--workers: expected a whole number >= 1 (got {workers})"])
    if workers > 1 and config.state.backend != "redis":
        raise ConfigError(
            [
                f"{args.config}: state.backend: --workers {workers} needs 'redis' (got "
                f"{config.state.backend!r}): each worker would keep its own queues, rate "
                "limits and sessions"
            ]
        )
    if workers == 1:
        return _serve_one(args, config)
    from aigw.workers import Supervisor

    host = args.host or config.server.host
    port = args.port if args.port is not None else config.server.port
    try:
        sock = bind(host, port)
    except OSError as exc:
        raise ConfigError([f"cannot listen on {host}:{port}: {exc.strerror or exc}"]) from None
    return Supervisor(workers, sock, lambda s, _: _serve_one(args, config, s)).run()


def _serve_one(
    args: argparse.Namespace, config: GatewayConfig, sock: socket.socket | None = None
) -> int:
    """One gateway process: alone, or a worker serving ``sock`` under a supervisor."""
    import uvicorn

    from aigw.app import create_app
    from aigw.configfile import load_config
    from aigw.serving import GatewayServer, Lifecycle, gateway_protocol

    lifecycle = Lifecycle(supervisor=os.getppid() if sock is not None else None)
    options = uvicorn.Config(
        create_app(
            config,
            access_log=args.access_log,
            lifecycle=lifecycle,
            load=lambda: load_config(args.config),
        ),
        host=args.host or config.server.host,
        port=args.port if args.port is not None else config.server.port,
        access_log=False,  # aigw's own access log (above) says more, for proxied requests
        log_config=None,  # uvicorn's lines go through the handler main() set up
        log_level=args.log_level,
        **{**_uvicorn_options(), "http": gateway_protocol(config.server)},  # type: ignore[arg-type]
    )
    server = GatewayServer(
        options, lifecycle, config.server.drain_seconds, config.server.shutdown_delay_s
    )
    server.run(sockets=[sock] if sock is not None else None)  # returns after a drain
    return 0 if server.started else 1


def _fake_backend(args: argparse.Namespace) -> int:
    import uvicorn

    from aigw.sim.server import create_app, settings_from_args

    settings = settings_from_args(args)
    print(
        f"aigw fake-backend: model {settings.model!r}, profile {settings.profile}, "
        f"http://{args.host}:{args.port}/v1",
        flush=True,
    )
    uvicorn.run(
        create_app(settings),
        host=args.host,
        port=args.port,
        access_log=False,
        log_level="warning",
        **_uvicorn_options(),  # type: ignore[arg-type]
    )
    return 0


def _demo(args: argparse.Namespace) -> int:
    from aigw.demo import run_demo

    options = _uvicorn_options()
    admin_key = args.admin_key or os.environ.get("AIGW_ADMIN_KEY") or None
    if options.get("loop") == "uvloop":
        import uvloop

        uvloop.run(run_demo(args.host, args.port, admin_key))
    else:
        asyncio.run(run_demo(args.host, args.port, admin_key))
    return 0


def _check_config(args: argparse.Namespace) -> int:
    from aigw.configfile import load_config

    config = load_config(args.file)
    print(f"ok: {args.file}")
    for model in config.models:
        deployments = ", ".join(f"{d.id} ({d.provider})" for d in model.deployments)
        policy = model.policy if isinstance(model.policy, str) else model.policy.get("name")
        fallbacks = f", fallbacks: {', '.join(model.fallbacks)}" if model.fallbacks else ""
        print(f"  {model.name}: policy {policy}, deployments: {deployments}{fallbacks}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
