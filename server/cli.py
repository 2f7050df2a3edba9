"""The `turing` command: `turing serve` (the MCP server on stdio, or with --http one HTTP server
carrying MCP, the OpenAI-compatible API, metrics and the dashboard), `turing token` (the bearer
tokens of that server) and `turing quickstart`."""

from __future__ import annotations

import argparse
import logging
import sys

from turing.server import __version__
from turing.server.access import ROLES

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

    serve = commands.add_parser("serve", help="run the MCP server (stdio unless --http)")
    serve.add_argument(
        "--http",
        metavar="HOST:PORT",
        help="serve over HTTP instead of stdio, e.g. 127.0.0.1:8100: MCP at /mcp, the "
        "OpenAI-compatible API at /v1, /metrics and /dashboard, each request with a bearer "
        "token from `turing token create`",
    )
    serve.add_argument(
        "--allow-remote",
        action="store_true",
        help="let --http listen on a non-loopback address (the traffic is not encrypted)",
    )
    serve.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a host name clients use to reach the HTTP server (checked against the Host "
        "header); repeat for several",
    )

    token = commands.add_parser("token", help="create, list and revoke HTTP bearer tokens")
    token_commands = token.add_subparsers(dest="token_command", required=True)
    create = token_commands.add_parser("create", help="make a token and print its secret once")
    create.add_argument("--name", required=True, help="who or what holds it, e.g. ci")
    create.add_argument("--role", required=True, choices=ROLES, help="what it may do")
    create.add_argument(
        "--project", default="default", help="the project it acts in (default: default; *: all)"
    )
    listing = token_commands.add_parser("list", help="list tokens (never their secrets)")
    listing.add_argument("--json", action="store_true", help="print JSON lines")
    revoke = token_commands.add_parser("revoke", help="revoke a token at once")
    revoke.add_argument("id", help="the token's id (tok-...), as `turing token list` shows")

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
    if args.command == "serve":
        return _serve(args)
    if args.command == "token":
        return _token(args)

    from turing.server.quickstart import run_quickstart

    return run_quickstart(args)


def _serve(args: argparse.Namespace) -> int:
    from turing.server import auth
    from turing.server.app import create_app
    from turing.server.http_api import HttpServer
    from turing.server.services import Services
    from turing.tools.errors import TuringError

    if args.http:
        host, _, port_text = args.http.rpartition(":")
        if not host or not port_text.isdigit():
            logger.error("--http %s: give HOST:PORT, e.g. 127.0.0.1:8100", args.http)
            return 2
    services = Services.open()
    try:
        app = create_app(services)
        if args.http:
            http = HttpServer(
                services,
                host.strip("[]"),
                int(port_text),
                mcp=app,
                allow_remote=args.allow_remote,
                extra_hosts=args.allowed_host,
            )
            if not auth.list_tokens(services, include_revoked=False):
                logger.warning(
                    "no live tokens: every request will be refused until one is "
                    "made with `turing token create --name NAME --role ROLE`"
                )
            http.run()  # until Ctrl-C or SIGTERM
        else:
            app.run("stdio")
    except TuringError as exc:
        logger.error("%s", exc)
        return 2
    finally:
        services.close()
    return 0


def _out(text: str) -> None:
    """What `turing token` answers, on stdout so scripts can capture it. This command is never
    the stdio MCP server (whose stdout is the protocol); its log lines go to stderr."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _token(args: argparse.Namespace) -> int:
    """`turing token create|list|revoke`: the secret goes to stdout, everything else to stderr."""
    import json

    from turing.server import auth
    from turing.server.services import Services
    from turing.tools.errors import TuringError

    services = Services.open()
    try:
        if args.token_command == "create":
            row, secret = auth.create_token(
                services, args.name, args.role, args.project, created_by=_user_name()
            )
            _out(secret)
            logger.info(
                "token %s for %s (role %s, project %s): the secret above is shown only once",
                row["id"],
                row["name"],
                row["role"],
                row["project"],
            )
        elif args.token_command == "revoke":
            auth.revoke_token(services, args.id, revoked_by=_user_name())
        elif args.json:
            for row in auth.list_tokens(services):
                _out(json.dumps(row))
        else:
            _out(_token_table(auth.list_tokens(services)))
    except TuringError as exc:
        logger.error("%s", exc)
        return 2
    finally:
        services.close()
    return 0


def _user_name() -> str:
    """The operating system user running the command, for the audit trail."""
    import getpass

    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name, e.g. an unnamed uid in a container
        return "local"


def _token_table(rows: list[dict[str, str | None]]) -> str:
    columns = ("id", "name", "role", "project", "created_at", "last_used_at", "revoked_at")
    cells = [columns] + [tuple(row[column] or "-" for column in columns) for row in rows]
    widths = [max(len(line[index]) for line in cells) for index in range(len(columns))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in cells
    )


if __name__ == "__main__":
    sys.exit(main())
