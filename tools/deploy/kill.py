"""The kill switch: stop serving a model version at once, wherever it is routed, until lifted.

A killed version answers no query from the next one on; no deployment revision changes, so
lifting the kill restores exactly what was served before. What a query meets instead:

- named directly (its id or an alias): refused with a ConflictError that gives the reason;
- chosen by a deployment's weights: answered by the revision's other live routes, as if the
  killed route were not there (a routing key already on a surviving route stays on it); with
  no live route left the query is refused;
- a shadow route: its mirrored copies stop.
"""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
from typing import Any

from turing.server import access
from turing.server.registry import utc_now
from turing.server.services import Services
from turing.tools import audit
from turing.tools.deploy import aliases
from turing.tools.deploy.incidents import record_incident, visible_to_caller
from turing.tools.deploy.routing import Route, choose_route, live_routes
from turing.tools.deploy.versions import (
    ModelTarget,
    current_routes,
    revision_routes,
    version_target,
)
from turing.tools.errors import ConflictError, InvalidInputError, NotFoundError

logger = logging.getLogger(__name__)

MAX_REASON_CHARS = 2000


def kill_version(
    services: Services, version_id: str, reason: str, actor: str = ""
) -> dict[str, Any]:
    """Stop serving a model version at once, recording an incident per deployment it serves.

    Args:
        services: The server's services.
        version_id: A model version id (mv-...) or an alias (deployment@alias) naming one.
        reason: Why; required, kept in the incident and the audit trail.
        actor: Who pulls the switch; the caller's principal by default.

    Raises:
        InvalidInputError: No reason, or `version_id` is not a version id or alias.
        NotFoundError: No such model version.
        ConflictError: The version is already killed.
    """
    version_id = _version_id(services, version_id)
    reason = _check_reason(reason)
    actor = actor or access.current().actor
    existing = services.registry.find("killed_versions", version_id)
    if existing is not None:
        raise ConflictError(
            f"{version_id} was already killed at {existing['killed_at']} by "
            f"{existing['actor']} ({existing['reason']}); lift_kill it first to kill it again"
        )

    row = {"version_id": version_id, "reason": reason, "actor": actor, "killed_at": utc_now()}
    try:
        services.registry.insert("killed_versions", row)
    except sqlite3.IntegrityError:  # killed by another caller a moment ago
        raise ConflictError(f"{version_id} was killed by another caller just now") from None
    effects = _effects(services, version_id, set(_killed(services)))
    trigger = f"kill_version by {actor}: {reason}"
    affected: list[tuple[str | None, str]] = list(effects.items())
    for deployment, effect in affected or [(None, "no deployment routes to it")]:
        record_incident(
            services,
            "kill_switch",
            trigger,
            deployment=deployment,
            version_id=version_id,
            actor=actor,
            reason=reason,
            effect=effect,
        )
    audit.record(services, "kill_version", version_id, reason, actor=actor, effects=effects)
    return {**row, "deployments": effects}


def lift_kill(
    services: Services, version_id: str, reason: str = "", actor: str = ""
) -> dict[str, Any]:
    """Serve a killed model version again wherever its routes send traffic.

    Raises:
        NotFoundError: No such model version.
        ConflictError: The version is not killed.
    """
    version_id = _version_id(services, version_id)
    reason = reason.strip() if isinstance(reason, str) else ""
    actor = actor or access.current().actor
    killed = services.registry.find("killed_versions", version_id)
    if killed is None:
        raise ConflictError(f"{version_id} is not killed; list_incidents shows the kill switch")

    services.registry.delete("killed_versions", version_id)
    deployments: list[str | None] = [name for name, _ in _routing_to(services, version_id)]
    trigger = f"lift_kill by {actor}" + (f": {reason}" if reason else "")
    for deployment in deployments or [None]:
        record_incident(
            services,
            "kill_lifted",
            trigger,
            deployment=deployment,
            version_id=version_id,
            actor=actor,
            reason=reason,
            killed=killed,
        )
    audit.record(services, "lift_kill", version_id, reason, actor=actor, killed=killed)
    return {"version_id": version_id, "lifted": True, "killed": killed, "deployments": deployments}


def killed_versions(services: Services, deployment: str | None = None) -> list[dict[str, Any]]:
    """The versions stopped now that the caller may see, newest kill first; with `deployment`,
    only those its current routes include."""
    rows = services.registry.rows("killed_versions", order_by="killed_at desc")
    if deployment is not None:
        routed = {route.version_id for route in current_routes(services, deployment)}
        rows = [row for row in rows if row["version_id"] in routed]
    return [row for row in rows if visible_to_caller(services, row)]


def serving_target(
    services: Services, target: ModelTarget, routing_key: str | None = None
) -> ModelTarget:
    """The target that answers a routed query once killed versions are taken out.

    Raises:
        ConflictError: The query named a killed version directly, or its deployment has no
            live route left that is not killed.
    """
    killed = _killed(services)
    if not killed:
        return target
    if target.version_id in killed:
        if target.kind != "deployment" or target.deployment is None:
            raise ConflictError(
                f"model version {target.version_id} is stopped by the kill switch "
                f"({killed[target.version_id]['reason']}); query another version or a "
                "deployment, or lift_kill it"
            )
        target = _reroute(services, target, killed, routing_key)
    if any(version_id in killed for version_id in target.shadows):
        kept = tuple(version_id for version_id in target.shadows if version_id not in killed)
        target = dataclasses.replace(target, shadows=kept)
    return target


def _reroute(
    services: Services,
    target: ModelTarget,
    killed: dict[str, dict[str, Any]],
    routing_key: str | None,
) -> ModelTarget:
    deployment, revision = str(target.deployment), int(target.revision or 0)
    routes = revision_routes(services, deployment, revision)
    surviving = [route for route in live_routes(routes) if route.version_id not in killed]
    if not surviving:
        stopped = ", ".join(
            f"{route.version_id} ({killed[route.version_id]['reason']})"
            for route in live_routes(routes)
        )
        raise ConflictError(
            f"deployment {deployment!r} has no live route left: the kill switch stops "
            f"{stopped}; deploy another version or lift_kill one"
        )
    chosen = choose_route(surviving, routing_key, deployment, revision)
    logger.debug(
        "deployment %s: %s is killed, answered by %s", deployment, target.version_id, chosen
    )
    rerouted = version_target(services, chosen.version_id, deployment, revision)
    return dataclasses.replace(rerouted, shadows=target.shadows)


def _effects(services: Services, version_id: str, killed: set[str]) -> dict[str, str]:
    """What killing a version does to each deployment routing to it now, in words."""
    effects = {}
    for deployment, routes in _routing_to(services, version_id):
        live = [route.version_id for route in live_routes(routes)]
        if version_id not in live:
            effects[deployment] = "its shadow copies stop"
            continue
        surviving = [other for other in live if other not in killed]
        effects[deployment] = (
            f"its share goes to the other live routes: {', '.join(surviving)}"
            if surviving
            else "every query is refused: no live route is left (deploy another version or "
            "lift_kill)"
        )
    return effects


def _routing_to(services: Services, version_id: str) -> list[tuple[str, list[Route]]]:
    """Deployments whose current routes (live or shadow) include a version."""
    found = []
    for row in services.registry.rows("deployments", order_by="name"):
        routes = current_routes(services, row["name"])
        if any(route.version_id == version_id for route in routes):
            found.append((row["name"], routes))
    return found


def _killed(services: Services) -> dict[str, dict[str, Any]]:
    return {row["version_id"]: row for row in services.registry.rows("killed_versions")}


def _version_id(services: Services, version: str) -> str:
    if not isinstance(version, str) or not version.strip():
        raise InvalidInputError("version is empty: give a model version id (mv-...) or an alias")
    version = version.strip()
    if aliases.is_reference(version):
        version = aliases.resolve_reference(services, version)
    if not version.startswith("mv-"):
        raise InvalidInputError(
            f"version={version!r}: give a model version id (mv-...) or an alias such as "
            "'triage@challenger'; the kill switch stops model versions"
        )
    if services.registry.find("model_versions", version) is None:
        raise NotFoundError(f"no model version {version!r}; list_models shows the versions")
    return version


def _check_reason(reason: str) -> str:
    text = reason.strip() if isinstance(reason, str) else ""
    if not text:
        raise InvalidInputError("reason is empty: say why the version must stop serving")
    if len(text) > MAX_REASON_CHARS:
        raise InvalidInputError(f"reason is {len(text)} characters; at most {MAX_REASON_CHARS}")
    return text
