"""The audit trail: who changed what a deployment serves, or what judges it, and why.

One row per action (gate_set, deploy, forced_deploy), never updated or deleted. Forced deploys
keep the caller's reason and the failing criteria they overrode.
"""

from __future__ import annotations

import logging
from typing import Any

from turing.server.registry import utc_now
from turing.server.services import Services

logger = logging.getLogger(__name__)


def record(
    services: Services, action: str, subject: str, reason: str = "", **details: Any
) -> dict[str, Any]:
    """Append one action to the audit trail and return it."""
    row = {
        "time": utc_now(),
        "action": action,
        "subject": subject,
        "reason": reason,
        "details": details,
    }
    services.registry.insert("audit", row)
    logger.info("audit: %s %s%s", action, subject, f" ({reason})" if reason else "")
    return row


def read(services: Services, subject: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
    """The newest actions first, optionally only those on one subject (e.g. a deployment)."""
    where, params = ("subject = ?", [subject]) if subject else (None, None)
    rows = services.registry.rows("audit", where, params, order_by="id desc")
    return rows[:limit]
