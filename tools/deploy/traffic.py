"""Traffic strategies over deployment revisions: weighted routes, canary, promote, rollback.

Every change is a new numbered revision and one audit entry with who made it and why. A version
that newly receives live traffic, or becomes the champion, must pass the deployment's gate
(unless forced with a reason); shadow routes need no verdict, since nobody reads their answers;
a rollback returns to routes that were already served, so it is not gated.
"""

from __future__ import annotations

import logging
from typing import Any

from turing.server.services import Services
from turing.tools import audit
from turing.tools.deploy import aliases, versions
from turing.tools.deploy.routing import Route, check_routes, live_routes
from turing.tools.errors import ConflictError, InvalidInputError, NotFoundError

logger = logging.getLogger(__name__)


def _resolve_aliases(services: Services, routes: Any) -> Any:
    """Routes whose version_id is an alias (deployment@alias) name the version it points to."""
    if not isinstance(routes, list):
        return routes  # check_routes names the problem
    resolved = []
    for entry in routes:
        version = entry.get("version_id") if isinstance(entry, dict) else None
        if isinstance(version, str) and aliases.is_reference(version):
            entry = {**entry, "version_id": aliases.resolve_reference(services, version)}
        resolved.append(entry)
    return resolved


def set_routes(
    services: Services,
    deployment: str,
    routes: list[dict[str, Any]],
    reason: str = "",
    force_reason: str = "",
    actor: str = "",
) -> dict[str, Any]:
    """Give a deployment a new revision with these routes (creating the deployment if new).

    Args:
        services: The server's services.
        deployment: The endpoint's name.
        routes: [{"version_id": "mv-...", "weight": 0..100, "shadow": false}, ...]; live
            weights sum to exactly 100, a version appears once, all share one base model.
        reason: Why this revision exists; kept with it and in the audit trail.
        force_reason: Route traffic even to versions without a passing gate verdict.
        actor: Who makes the change (a person or an agent), kept in the audit trail.

    Raises:
        InvalidInputError: Routes breaking a rule; every problem is named in one message.
        ConflictError: A version newly receiving traffic lacks a passing gate verdict.
    """
    routes = _resolve_aliases(services, routes)
    with versions.DEPLOY_LOCK:
        exists = services.registry.find("deployments", deployment) is not None
        if not exists:
            versions.check_new_deployment(services, deployment)
        base = _base_model(services, deployment) if exists else None
        parsed = check_routes(routes, lambda version_id: _base_of(services, version_id), base)
        return _change(
            services,
            deployment,
            parsed,
            "set_routes",
            reason or "set routes",
            force_reason,
            actor,
        )


def canary(
    services: Services,
    deployment: str,
    model: str,
    percent: int,
    reason: str = "",
    force_reason: str = "",
    actor: str = "",
) -> dict[str, Any]:
    """Send `percent` of a deployment's traffic to a new version, the rest to its champion.

    Other live routes are replaced; shadow routes stay. The canary must pass the gate.
    """
    if isinstance(percent, bool) or not isinstance(percent, int) or not 1 <= percent <= 99:
        raise InvalidInputError(
            f"percent={percent!r}: give a whole percentage from 1 to 99 (deploy sends 100)"
        )
    version = versions.find_version(services, model)
    with versions.DEPLOY_LOCK:
        current = versions.current_routes(services, deployment)
        champion = versions.champion_of(current)
        if version["id"] == champion:
            raise InvalidInputError(
                f"{version['id']} is already the champion of {deployment!r}; canary another version"
            )
        base = _base_model(services, deployment)
        if version["base_model"] != base:
            raise InvalidInputError(
                f"{version['id']} is built on base model {version['base_model']!r}, but "
                f"{deployment!r} serves {base!r}; every route must share one base model"
            )
        routes = [Route(champion, 100 - percent), Route(version["id"], percent)]
        routes += [r for r in current if r.shadow and r.version_id != version["id"]]
        return _change(
            services,
            deployment,
            routes,
            "canary",
            reason or f"canary {version['id']} at {percent}%",
            force_reason,
            actor,
        )


def promote(
    services: Services, deployment: str, reason: str = "", force_reason: str = "", actor: str = ""
) -> dict[str, Any]:
    """Send all live traffic to the challenger: the non-champion live route of highest weight.

    Shadow routes stay. The challenger becomes the champion, so it must pass the gate.

    Raises:
        ConflictError: No challenger (one live route), or two challengers tie.
    """
    with versions.DEPLOY_LOCK:
        current = versions.current_routes(services, deployment)
        champion = versions.champion_of(current)
        challengers = [r for r in live_routes(current) if r.version_id != champion]
        if not challengers:
            raise ConflictError(
                f"deployment {deployment!r} sends all live traffic to {champion}: nothing to "
                "promote; start a canary first"
            )
        top = max(route.weight for route in challengers)
        tied = [route.version_id for route in challengers if route.weight == top]
        champion_weight = max(r.weight for r in live_routes(current) if r.version_id == champion)
        if top == champion_weight:
            raise ConflictError(
                f"{tied[0]} and the champion {champion} of {deployment!r} tie at {top}%: say "
                "which one wins with set_routes"
            )
        if len(tied) > 1:
            raise ConflictError(
                f"challengers {', '.join(tied)} of {deployment!r} tie at {top}%: say which one "
                "wins with set_routes"
            )
        winner = tied[0]
        routes = [Route(winner, 100)] + [r for r in current if r.shadow and r.version_id != winner]
        return _change(
            services,
            deployment,
            routes,
            "promote",
            reason or f"promote {winner} over {champion}",
            force_reason,
            actor,
        )


def rollback(
    services: Services,
    deployment: str,
    revision: int | None = None,
    reason: str = "",
    actor: str = "",
) -> dict[str, Any]:
    """Make a new revision that copies the previous revision's routes, or a named revision's.

    Not gated: the routes were served before.

    Raises:
        ConflictError: No previous revision, or the named revision is the current one.
        NotFoundError: The named revision does not exist; the message lists those that do.
    """
    with versions.DEPLOY_LOCK:
        current = services.registry.get("deployments", deployment, "deployment")["revision"]
        if revision is None:
            if current == 1:
                raise ConflictError(
                    f"deployment {deployment!r} has only revision 1: there is no previous "
                    "revision to roll back to"
                )
            revision = current - 1
        elif not 1 <= revision <= current:
            raise NotFoundError(
                f"deployment {deployment!r} has no revision {revision}; its revisions are 1 to "
                f"{current}"
            )
        elif revision == current:
            raise ConflictError(
                f"revision {revision} is already the current revision of {deployment!r}; "
                "name an earlier one"
            )
        routes = versions.revision_routes(services, deployment, revision)
        return _change(
            services,
            deployment,
            routes,
            "rollback",
            reason or f"rollback to revision {revision}",
            "",
            actor,
            restored_revision=revision,
        )


def _change(
    services: Services,
    deployment: str,
    routes: list[Route],
    action: str,
    reason: str,
    force_reason: str,
    actor: str,
    **details: Any,
) -> dict[str, Any]:
    """Gate, write and audit a new revision; the caller holds versions.DEPLOY_LOCK."""
    exists = services.registry.find("deployments", deployment) is not None
    previous = versions.current_routes(services, deployment) if exists else []
    if exists and [r.stored() for r in routes] == [r.stored() for r in previous]:
        # A new revision would change nothing but reshuffle every sticky routing key.
        raise ConflictError(
            f"{deployment!r} already serves exactly these routes; no new revision was made"
        )
    champion = versions.champion_of(previous) if previous else None
    checks = {} if action == "rollback" else _gate_checks(services, deployment, previous, routes)
    failing = {version_id: c for version_id, c in checks.items() if not c["passed"]}
    force_reason = force_reason.strip()
    if failing and not force_reason:
        raise _refusal(action, deployment, failing)

    revision = versions.write_revision(services, deployment, routes, reason)
    forced = bool(failing)
    audit.record(
        services,
        f"forced_{action}" if forced else action,
        deployment,
        force_reason if forced else reason,
        actor=actor,
        revision=revision,
        routes=[route.describe() for route in routes],
        previous_routes=[route.describe() for route in previous],
        previous_champion=champion,
        gate={version_id: _summary(check) for version_id, check in checks.items()},
        overridden=[line for check in failing.values() for line in check["problems"]],
        **({"change_reason": reason} if forced else {}),
        **details,
    )
    logger.info(
        "deployment %s revision %d (%s): %s",
        deployment,
        revision,
        action,
        ", ".join(f"{r.version_id} {'shadow' if r.shadow else r.weight}" for r in routes),
    )
    return {
        "deployment": deployment,
        "revision": revision,
        "action": action,
        "routes": [route.describe() for route in routes],
        "previous_routes": [route.describe() for route in previous],
        "champion": versions.champion_of(routes),
        "reason": reason,
        "gate": checks,
        **details,
    }


def _gate_checks(
    services: Services, deployment: str, previous: list[Route], routes: list[Route]
) -> dict[str, dict[str, Any]]:
    """The gate's word on each version newly receiving live traffic or becoming champion."""
    from turing.tools.evals import gating

    champion = versions.champion_of(previous) if previous else None
    serving = {route.version_id for route in live_routes(previous)}
    new_champion = versions.champion_of(routes)
    judged = [
        route.version_id
        for route in live_routes(routes)
        if route.version_id not in serving
        or (route.version_id == new_champion and route.version_id != champion)
    ]
    return {
        version_id: gating.check_deploy(services, version_id, deployment, champion)
        for version_id in judged
    }


def _refusal(action: str, deployment: str, failing: dict[str, dict[str, Any]]) -> ConflictError:
    lines = [
        line if version_id in line else f"{version_id}: {line}"
        for version_id, check in failing.items()
        for line in check["problems"]
    ]
    revision = next(iter(failing.values())).get("gate_revision")
    return ConflictError(
        f"{action} on {deployment!r} refused by its gate (revision {revision}):\n  "
        + "\n  ".join(lines)
        + f"\nTo go ahead anyway, call {action} again with force_reason='<why>'; the reason and "
        "these failures go into the audit trail."
    )


def _summary(check: dict[str, Any]) -> dict[str, Any]:
    return {key: check.get(key) for key in ("gated", "passed", "eval_id", "gate_revision")}


def _base_model(services: Services, deployment: str) -> str:
    champion = versions.champion_version(services, deployment)
    version = services.registry.get("model_versions", champion, "model version")
    return str(version["base_model"])


def _base_of(services: Services, version_id: str) -> str | None:
    version = services.registry.find("model_versions", version_id)
    return None if version is None else str(version["base_model"])
