"""The `turing` command: `turing serve` (the MCP server on stdio, optionally with the
OpenAI-compatible HTTP API beside it), `turing api` (the HTTP API alone) and `turing quickstart`."""

from __future__ import annotations

import argparse
import logging
import sys

from turing.server import __version__

logger = logging.getLogger(__name__)


def configure_logging(level: str = "INFO") -> None:
    """Send every log line to stderr: on stdio, stdout carries the protocol."""
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="turing", description=__doc__)
    parser.add_argument("--version", action="version", version=f"turing {__version__}")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the MCP server on stdio")
    serve.add_argument(
        "--http",
        metavar="HOST:PORT",
        help="also serve the OpenAI-compatible HTTP API (/v1/chat/completions, /v1/models) on "
        "this loopback address, e.g. 127.0.0.1:8100, sharing engines and telemetry",
    )
    api = commands.add_parser("api", help="serve only the OpenAI-compatible HTTP API")
    api.add_argument("--host", default="127.0.0.1", help="loopback address (default 127.0.0.1)")
    api.add_argument("--port", type=int, default=8100, help="port (default 8100)")

    quick = commands.add_parser(
        "quickstart",
        help="prepare, fine-tune, evaluate, deploy and query a model through the MCP server",
    )
    quick.add_argument("--data", help="a chat JSONL or CSV file (default: the shipped sample)")
    quick.add_argument(
        "--columns",
        help="for CSV: role=column pairs, e.g. user=text,assistant=category[,system=...]",
    )
    quick.add_argument("--system-prompt", help="a system message added to every row")
    quick.add_argument(
        "--epochs", type=int, default=2, help="training epochs (default 2: minutes on a laptop)"
    )
    quick.add_argument("--deployment", default="quickstart", help="deployment name to create")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `turing` command."""
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)
    if args.command in ("serve", "api"):
        return _serve(args)

    from turing.server.quickstart import run_quickstart

    return run_quickstart(args)


def _serve(args: argparse.Namespace) -> int:
    from turing.server.app import create_app
    from turing.server.http_api import HttpServer
    from turing.server.services import Services
    from turing.tools.errors import TuringError

    services = Services.open()
    try:
        if args.command == "api":
            host, port = args.host, args.port
        elif args.http:
            host, _, port_text = args.http.rpartition(":")
            if not host or not port_text.isdigit():
                logger.error("--http %s: give HOST:PORT, e.g. 127.0.0.1:8100", args.http)
                return 2
            port = int(port_text)
        app = create_app(services)
        if args.command == "api":
            HttpServer(services, host.strip("[]"), port).run()  # until Ctrl-C or SIGTERM
        elif args.http:
            http = HttpServer(services, host.strip("[]"), port)
            http.start()
            app.run("stdio")
            http.stop()
        else:
            app.run("stdio")
    except TuringError as exc:
        logger.error("%s", exc)
        return 2
    finally:
        services.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
