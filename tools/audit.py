"""The audit trail: who changed what, with which arguments, and how it ended.

Two kinds of row, never updated or deleted: actions on a subject (gate_set, deploy,
forced_deploy, canary, ... on a deployment), which keep the caller's reason and, for forced
ones, the failing criteria they overrode; and one `tool_call` row per call of a mutating tool,
successful or not, with its arguments (secrets masked) and its result ("ok" or the error).
Every row names its actor (the local user, or a token's name and id) and its project.
"""

from __future__ import annotations

import logging
from typing import Any

from turing.server import access
from turing.server.registry import utc_now
from turing.server.services import Services
from turing.tools.datasets.pii import redact_pii

logger = logging.getLogger(__name__)

MASK = "***"
MAX_TEXT = 1000  # longer argument strings and results are cut to this many characters
# Parts of argument names whose values are secrets (matched inside the lowercased name).
_SECRET_WORDS = (
    "password",
    "passwd",
    "secret",
    "api_key",
    "apikey",
    "access_key",
    "private_key",
    "authorization",
    "credential",
    "cookie",
)


def record(
    services: Services,
    action: str,
    subject: str,
    reason: str = "",
    *,
    in_project: str | None = None,
    **details: Any,
) -> dict[str, Any]:
    """Append one action to the audit trail and return it. Personal data in the reason and
    details is replaced by placeholders, secrets masked, as for tool calls.

    Args:
        in_project: The project the action belongs to, when its subject is not a registered
            object (a token); by default the subject's project.
    """
    principal = access.current()
    reason = redact_pii(reason) if reason else reason
    row = {
        "time": utc_now(),
        "action": action,
        "subject": subject,
        "reason": reason,
        "details": mask_secrets(details),
        "actor": actor_name(principal),
        "project": in_project or _subject_project(services, subject),
    }
    services.registry.insert("audit", row)
    logger.info("audit: %s %s%s", action, subject, f" ({reason})" if reason else "")
    return row


def record_call(
    services: Services, tool: str, arguments: dict[str, Any], result: str
) -> dict[str, Any]:
    """Append one call of a mutating tool: its caller, arguments (secrets masked) and result."""
    principal = access.current()
    row = {
        "time": utc_now(),
        "action": "tool_call",
        "subject": tool,
        "reason": "",
        "details": {},
        "actor": actor_name(principal),
        "project": _call_project(services, principal, arguments),
        "tool": tool,
        "arguments": mask_secrets(arguments),
        "result": _cut(redact_pii(mask_values(result, secret_values(arguments)))),
    }
    services.registry.insert("audit", row)
    logger.info("audit: %s by %s: %s", tool, row["actor"], _cut(row["result"], 200))
    return row


def read(services: Services, subject: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
    """The newest rows first that the caller may see, optionally only those on one subject
    (e.g. a deployment)."""
    clauses, params = [], []
    if subject:
        clauses.append("subject = ?")
        params.append(subject)
    scope, scope_params = access.project_clause("COALESCE(project, 'default') = ?")
    if scope:
        clauses.append(scope)
        params += scope_params
    where = " AND ".join(clauses) or None
    rows = services.registry.rows("audit", where, params or None, order_by="id desc")
    return rows[:limit]


def actor_name(principal: access.Principal) -> str:
    """How the trail names a caller: "local", or a token's name with its id."""
    if principal.token_id is None or principal.token_id in principal.actor:
        return principal.actor
    return f"{principal.actor} ({principal.token_id})"


def mask_secrets(value: Any, key: str = "") -> Any:
    """A copy of tool arguments with the values of secret-looking keys (api_key, token,
    password, secret, ...) and bearer credentials replaced by "***", personal data in free text
    (a correction, a message) replaced by placeholders such as "[EMAIL]", long strings cut.
    Addresses (`endpoint`, `url`, `*path`) are kept whole: they say what was touched."""
    if key and is_secret_key(key):
        return MASK
    if isinstance(value, dict):
        return {k: mask_secrets(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_secrets(item, key) for item in value]
    if isinstance(value, str):
        if value.lower().startswith(("bearer ", "basic ")):
            return MASK
        if key in ("endpoint", "url") or key.endswith("path"):
            return _cut(value)
        return _cut(redact_pii(value))
    return value


def secret_values(value: Any, key: str = "") -> set[str]:
    """The strings `mask_secrets` would hide, wherever they sit in the arguments."""
    if isinstance(value, str):
        secret = (key and is_secret_key(key)) or value.lower().startswith(("bearer ", "basic "))
        return {value} if secret and value else set()
    if isinstance(value, dict):
        return set().union(*(secret_values(v, str(k)) for k, v in value.items()))
    if isinstance(value, list):
        return set().union(*(secret_values(item, key) for item in value))
    return set()


def mask_values(text: str, secrets: set[str]) -> str:
    """`text` with each of `secrets` replaced by "***" (an error message may quote them)."""
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def is_secret_key(key: str) -> bool:
    """Whether an argument of this name holds a secret: "api_key", "access_token",
    "password"; not "max_tokens" or "api_key_env" (the name of a variable, not its value)."""
    name = key.lower().replace("-", "_")
    if name.endswith("_env"):
        return False
    return any(word in name for word in _SECRET_WORDS) or "token" in name.split("_")


def _cut(text: str, limit: int = MAX_TEXT) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _subject_project(services: Services, subject: str) -> str:
    deployment = services.registry.find("deployments", subject)
    if deployment is not None:
        return str(deployment.get("project") or access.DEFAULT_PROJECT)
    return access.owner_project()


def _call_project(
    services: Services, principal: access.Principal, arguments: dict[str, Any]
) -> str:
    # A caller of every project acts in the project of the object it names, if any.
    if principal.scoped:
        return principal.project
    for kind, name in access.named_objects(arguments):
        found = access.object_project(services, kind, name)
        if found is not None:
            return found[0]
    return access.EVERY_PROJECT
