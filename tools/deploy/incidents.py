"""The incident log: SLO breaches, automatic rollbacks and kill-switch changes, with their trigger.

One row per event, appended and never changed. The trigger says in one line what started it
(an SLO with its measured value, threshold and window, or a caller and their reason); the
details keep the same facts as JSON for tools to read.
"""

from __future__ import annotations

import logging
from typing import Any

from turing.server import access
from turing.server.registry import utc_now
from turing.server.services import Services
from turing.tools.errors import InvalidInputError

logger = logging.getLogger(__name__)

INCIDENT_KINDS = ("slo_breach", "auto_rollback", "kill_switch", "kill_lifted")
MAX_LIMIT = 1000


def record_incident(
    services: Services,
    kind: str,
    trigger: str,
    *,
    deployment: str | None = None,
    version_id: str | None = None,
    actor: str = "",
    **details: Any,
) -> dict[str, Any]:
    """Append one incident and return it.

    Raises:
        ValueError: An unknown kind (a programming error, not a caller's).
    """
    if kind not in INCIDENT_KINDS:
        raise ValueError(f"incident kind {kind!r}: allowed are {', '.join(INCIDENT_KINDS)}")
    row = {
        "time": utc_now(),
        "deployment": deployment,
        "version_id": version_id,
        "kind": kind,
        "trigger": trigger,
        "details": details,
        "actor": actor,
    }
    services.registry.insert("incidents", row)
    logger.warning(
        "incident %s on deployment %s, version %s: %s", kind, deployment, version_id, trigger
    )
    return row


def list_incidents(
    services: Services,
    deployment: str | None = None,
    kind: str | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """Incidents, newest first, optionally of one deployment and one kind.

    Raises:
        NotFoundError: No such deployment.
        InvalidInputError: An unknown kind, or a limit outside 1..MAX_LIMIT.
    """
    if kind is not None and kind not in INCIDENT_KINDS:
        raise InvalidInputError(f"kind={kind!r}: allowed kinds are {', '.join(INCIDENT_KINDS)}")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise InvalidInputError(f"limit={limit!r}: give a whole number from 1 to {MAX_LIMIT}")
    conditions, params = [], []
    if deployment is not None:
        services.registry.get("deployments", deployment, "deployment")
        conditions.append("deployment = ?")
        params.append(deployment)
    if kind is not None:
        conditions.append("kind = ?")
        params.append(kind)
    where = " AND ".join(conditions) or None
    rows = services.registry.rows("incidents", where, params or None, order_by="id desc")
    return [row for row in rows if visible_to_caller(services, row)][:limit]


def visible_to_caller(services: Services, row: dict[str, Any]) -> bool:
    """Whether the caller's project holds the row's deployment, else its model version."""
    if row.get("deployment"):
        owner = services.registry.find("deployments", row["deployment"])
    else:
        owner = services.registry.find("model_versions", row.get("version_id"))
    return access.visible((owner or {}).get("project"))
