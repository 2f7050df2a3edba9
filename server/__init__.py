"""The Turing process: settings, workspace registry, job supervision, MCP app and CLI."""

__version__ = "0.1.0"
