"""The `turing` command: `turing serve` (the MCP server on stdio) and `turing quickstart`."""

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

    commands.add_parser("serve", help="run the MCP server on stdio")

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
        from turing.server.app import create_app

        create_app().run("stdio")
        return 0

    from turing.server.quickstart import run_quickstart

    return run_quickstart(args)


if __name__ == "__main__":
    sys.exit(main())
