"""The error hierarchy: every failure a caller can fix is a TuringError naming what to change."""

from __future__ import annotations

from mcp.server.mcpserver.exceptions import ResourceError, ToolError


class TuringError(ToolError, ResourceError):
    """Root of every error Turing raises on purpose; its message is shown to the caller.

    It derives from the SDK's tool and resource errors, so the MCP server passes the message to
    the client as a result the model can act on instead of hiding it as a crash.
    """


class InvalidInputError(TuringError):
    """An argument, file or row is wrong; the message names it and what is allowed."""


class NotFoundError(TuringError):
    """A dataset, run, model version or deployment does not exist."""


class ConflictError(TuringError):
    """The request clashes with the current state (e.g. deploying a run that has not finished)."""


class BusyError(ConflictError):
    """A shared resource (e.g. a model engine) is at capacity; retry later or raise the limit."""


class UpstreamError(ConflictError):
    """A remote server that a route points at could not be reached or answered with an error."""
