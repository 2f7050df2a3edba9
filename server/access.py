"""Who is calling: the principal of a request, its role and its project.

On stdio the caller is the local user, who owns the workspace: an admin of every project. Over
HTTP the bearer token decides; the HTTP layer puts the token's principal in the request's scope
(`scope["state"]["turing_principal"]`) and the MCP server makes it current for the tool call.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass

ROLES = ("viewer", "operator", "admin")
ENVIRONMENTS = ("dev", "staging", "prod")
SCOPE_KEY = "turing_principal"


@dataclass(frozen=True)
class Principal:
    """A caller: "local" on stdio, a token's name and id over HTTP."""

    actor: str
    role: str  # one of ROLES
    project: str  # the project it acts in; "*" for every project
    token_id: str | None = None

    def at_least(self, role: str) -> bool:
        """Whether this caller's role is `role` or above it."""
        return ROLES.index(self.role) >= ROLES.index(role)


LOCAL = Principal(actor="local", role="admin", project="*")

_current: contextvars.ContextVar[Principal] = contextvars.ContextVar(
    "turing_principal", default=LOCAL
)


def current() -> Principal:
    """The principal of the call being served (LOCAL outside any HTTP request)."""
    return _current.get()


def acting_as(principal: Principal) -> contextvars.Token[Principal]:
    """Make `principal` current; give the returned token to `restore` when the call ends."""
    return _current.set(principal)


def restore(token: contextvars.Token[Principal]) -> None:
    _current.reset(token)
