"""Bearer tokens of the HTTP transport, and the ASGI middleware that guards every HTTP route.

A token's secret is shown once, when it is created; the registry keeps only its SHA-256. The
middleware first refuses requests whose Host or Origin header is not this server's own address
(DNS rebinding), then requires `Authorization: Bearer <secret>` and puts the token's principal
in the request's scope, where the MCP server and the OpenAI-compatible API read it.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import re
import secrets
from collections.abc import Collection, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from turing.server import access
from turing.server.access import ROLES, SCOPE_KEY, Principal
from turing.server.registry import utc_now
from turing.server.services import Services
from turing.tools import audit
from turing.tools.errors import ConflictError, InvalidInputError

logger = logging.getLogger(__name__)

SECRET_PREFIX = "turing_"
MAX_SECRET_LENGTH = 256  # longer bearer values are refused before they are hashed
TOUCH_EVERY = timedelta(minutes=1)  # last_used_at is written at most this often per token
DEFAULT_PROJECT = "default"
PROJECT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MAX_NAME_LENGTH = 100
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")


def create_token(
    services: Services,
    name: str,
    role: str,
    project: str = DEFAULT_PROJECT,
    created_by: str = "local",
) -> tuple[dict[str, Any], str]:
    """Create a bearer token and return its row and its secret (shown once, never stored).

    Args:
        services: The server's services.
        name: Who or what holds it, e.g. "ci" or "alice-laptop"; names may repeat, so a
            replacement can be made before the old token is revoked.
        role: viewer, operator or admin.
        project: The project it acts in, or "*" for every project.
        created_by: Who made it, for the audit trail.
    """
    name = name.strip() if isinstance(name, str) else name
    if not isinstance(name, str) or not name or len(name) > MAX_NAME_LENGTH:
        raise InvalidInputError(f"name={name!r}: give 1-{MAX_NAME_LENGTH} characters")
    if not name.isprintable():
        raise InvalidInputError(f"name={name!r}: control characters are not allowed")
    if role not in ROLES:
        raise InvalidInputError(f"role={role!r}: give one of {', '.join(ROLES)}")
    if project != "*" and not PROJECT_NAME.fullmatch(project or ""):
        raise InvalidInputError(
            f"project={project!r}: give '*' (every project) or a name of letters, digits, "
            "'_', '.' and '-' (at most 64, starting with a letter or digit)"
        )

    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    row = {
        "id": "tok-" + secrets.token_hex(6),
        "name": name,
        "role": role,
        "project": project,
        "secret_sha256": _digest(secret),
        "created_at": utc_now(),
        "created_by": created_by,
        "revoked_at": None,
        "last_used_at": None,
    }
    services.registry.insert("tokens", row)
    details = {"name": name, "role": role, "project": project, "created_by": created_by}
    audit.record(services, "token_created", row["id"], in_project=project, **details)
    logger.info("token %s (%s) created: role %s, project %s", row["id"], name, role, project)
    return public_row(row), secret


def list_tokens(services: Services, include_revoked: bool = True) -> list[dict[str, Any]]:
    """Every token, oldest first, without the secret's hash."""
    where = None if include_revoked else "revoked_at IS NULL"
    return [public_row(row) for row in services.registry.rows("tokens", where, order_by="rowid")]


def revoke_token(services: Services, token_id: str, revoked_by: str = "local") -> dict[str, Any]:
    """Revoke a token at once: the next request that carries it is refused."""
    row = services.registry.get("tokens", token_id, "token")
    if row["revoked_at"]:
        raise ConflictError(f"token {token_id} was already revoked at {row['revoked_at']}")
    row["revoked_at"] = utc_now()
    services.registry.update("tokens", token_id, {"revoked_at": row["revoked_at"]})
    audit.record(
        services,
        "token_revoked",
        token_id,
        in_project=row["project"],
        name=row["name"],
        revoked_by=revoked_by,
    )
    logger.info("token %s (%s) revoked", token_id, row["name"])
    return public_row(row)


def verify(services: Services, secret: str) -> Principal | None:
    """The principal of a live token's secret, or None for an unknown or revoked one."""
    if not secret or len(secret) > MAX_SECRET_LENGTH:
        return None
    found = services.registry.rows("tokens", "secret_sha256 = ?", [_digest(secret)])
    if not found or found[0]["revoked_at"]:
        return None
    row = found[0]
    _touch(services, row)
    return Principal(
        actor=f"{row['name']} ({row['id']})",
        role=row["role"],
        project=row["project"],
        token_id=row["id"],
    )


def public_row(row: dict[str, Any]) -> dict[str, Any]:
    """A token row as shown to people: everything except the secret's hash."""
    return {key: value for key, value in row.items() if key != "secret_sha256"}


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def _touch(services: Services, row: dict[str, Any]) -> None:
    """Record that a token was used, writing at most once a minute per token."""
    now = datetime.now(UTC)
    last = row["last_used_at"]
    if last and now - datetime.fromisoformat(last) < TOUCH_EVERY:
        return
    services.registry.update("tokens", row["id"], {"last_used_at": utc_now()})


def allowed_hosts(host: str, port: int, extra: Iterable[str] = ()) -> frozenset[str]:
    """The Host header values a server bound to `host`:`port` answers to.

    A loopback or wildcard bind answers to the loopback names; a specific address to itself;
    `extra` adds names (with or without a port) that clients use to reach it.
    """
    host = host.strip("[]").lower()
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    local = address is not None and (address.is_loopback or address.is_unspecified)
    names: set[str] = set()
    if host == "localhost" or local:
        names.update(LOOPBACK_NAMES)
    elif address is not None and address.version == 6:
        names.add(f"[{host}]")
    else:
        names.add(host)
    hosts = {f"{name}:{port}" for name in names}
    for name in extra:
        name = name.strip().lower()
        if re.search(r":\d+$", name):
            hosts.add(name)
        else:  # as a client sends it directly, or through a proxy on the scheme's own port
            hosts.update((name, f"{name}:{port}"))
    return frozenset(hosts)


class AccessMiddleware:
    """Guards every HTTP route: Host and Origin first (403), then the bearer token (401).

    On success the token's principal is put at `scope["state"]["turing_principal"]` (and
    `scope["user"]`, so the MCP SDK ties each MCP session to the token that opened it) and made
    current for the request. Every role may use the routes guarded here; what a role may do is
    decided by the tools it calls.
    """

    def __init__(
        self,
        app: ASGIApp,
        services: Services,
        hosts: Collection[str],
        public_paths: Collection[str] = ("/health",),
    ) -> None:
        self.app = app
        self.services = services
        self.hosts = frozenset(host.lower() for host in hosts)
        # A TLS proxy in front makes browsers send https origins for the same names.
        self.origins = frozenset(
            f"{scheme}://{host}" for host in self.hosts for scheme in ("http", "https")
        )
        self.public_paths = frozenset(public_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        refusal = self._check_origin(headers)
        if refusal:
            logger.warning("refused %s %s: %s", scope.get("method"), scope["path"], refusal)
            await _deny(send, 403, "permission_error", refusal)
            return
        if scope["path"] in self.public_paths:
            await self.app(scope, receive, send)
            return

        principal = self._authenticate(headers)
        if principal is None:
            message = (
                "a valid bearer token is required: send 'Authorization: Bearer <secret>' with a "
                "token from `turing token create`"
            )
            await _deny(send, 401, "authentication_error", message)
            return
        scope.setdefault("state", {})[SCOPE_KEY] = principal
        scope["user"] = AuthenticatedUser(
            AccessToken(
                token=principal.token_id or "",
                client_id=principal.token_id or "",
                scopes=[principal.role],
                subject=principal.actor,
            )
        )
        acting = access.acting_as(principal)
        try:
            await self.app(scope, receive, send)
        finally:
            access.restore(acting)

    def _check_origin(self, headers: Headers) -> str | None:
        host = headers.get("host", "").lower()
        if host not in self.hosts:
            expected = ", ".join(sorted(self.hosts))
            return f"Host header {host!r} is not this server's address ({expected})"
        origin = headers.get("origin")
        if origin is not None and origin.lower() not in self.origins:
            return f"Origin {origin!r} is not this server's own origin"
        return None

    def _authenticate(self, headers: Headers) -> Principal | None:
        scheme, _, secret = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return None
        return verify(self.services, secret.strip())


async def _deny(send: Send, status: int, kind: str, message: str) -> None:
    """Answer with OpenAI's error body, which MCP and OpenAI clients both show as text."""
    error = {"message": message, "type": kind, "param": None, "code": None}
    body = json.dumps({"error": error}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    if status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="turing"'))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
