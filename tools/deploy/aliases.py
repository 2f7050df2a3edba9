"""Aliases of a deployment's model versions, named as `deployment@alias` wherever a model is.

`champion` (the live route with most weight) and `challenger` (the other live route of most
weight, if any) follow the deployment's routes, so they move with every revision and are never
stored. Other aliases (e.g. `stable`, `candidate`) are set by hand; each move is kept in the
alias history and the audit trail with who made it and why.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from turing.server.registry import utc_now
from turing.server.services import Services
from turing.tools import audit
from turing.tools.deploy import versions
from turing.tools.deploy.routing import Route, live_routes, parse_stored
from turing.tools.errors import ConflictError, InvalidInputError, NotFoundError

logger = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
ROUTE_ALIASES = (CHAMPION, CHALLENGER)
ALIAS_PATTERN = re.compile(r"[a-z][a-z0-9_-]{0,31}")
SEPARATOR = "@"


# ---- Names ----


def is_reference(ref: str) -> bool:
    """Whether a model reference names an alias (`deployment@alias`)."""
    return SEPARATOR in ref


def parse_reference(ref: str) -> tuple[str, str]:
    """Split `deployment@alias` into its two names, refusing a malformed reference."""
    deployment, _, alias = ref.partition(SEPARATOR)
    if not deployment or not alias or SEPARATOR in alias:
        raise InvalidInputError(
            f"model reference {ref!r} is not an alias reference: write deployment@alias, "
            f"e.g. 'triage@{CHAMPION}'"
        )
    return deployment, alias


def check_alias_name(alias: str) -> None:
    """Refuse an alias name that cannot be set by hand: malformed, or one that follows routes."""
    if alias in ROUTE_ALIASES:
        raise InvalidInputError(
            f"alias {alias!r} follows the deployment's routes and cannot be set or deleted; "
            "move it with deploy, canary, promote, set_routes or rollback"
        )
    if not ALIAS_PATTERN.fullmatch(alias):
        raise InvalidInputError(
            f"alias name {alias!r} is not allowed: use 1-32 lowercase letters, digits, '-' or "
            "'_', starting with a letter (e.g. 'stable')"
        )


# ---- Resolving ----


def resolve_reference(services: Services, ref: str) -> str:
    """The model version id that `deployment@alias` names now."""
    deployment, alias = parse_reference(ref)
    return resolve_alias(services, deployment, alias)


def resolve_alias(services: Services, deployment: str, alias: str) -> str:
    """The model version id an alias of a deployment points to now.

    Raises:
        NotFoundError: No such deployment, or no such alias (the message lists the known ones).
        ConflictError: The challenger is asked for while two challengers tie.
    """
    routes = versions.current_routes(services, deployment)
    if alias == CHALLENGER:
        challengers = challengers_of(routes)
        if len(challengers) > 1:
            raise ConflictError(
                f"{deployment}@{CHALLENGER} is ambiguous: {', '.join(challengers)} tie for the "
                "second-highest weight; name the version (mv-...) instead"
            )
        if challengers:
            return challengers[0]
    elif alias == CHAMPION:
        return versions.champion_of(routes)
    else:
        found = _set_version(services, deployment, alias)
        if found is not None:
            return found

    known = ", ".join(sorted(current_aliases(services, deployment, routes))) or "none"
    why = "it sends all live traffic to one version" if alias == CHALLENGER else "none is set"
    raise NotFoundError(
        f"deployment {deployment!r} has no alias {alias!r} ({why}); its aliases: {known}"
    )


def challengers_of(routes: list[Route]) -> list[str]:
    """The live routes of most weight after the champion: one, none, or several on a tie."""
    champion = versions.champion_of(routes)
    others = [route for route in live_routes(routes) if route.version_id != champion]
    if not others:
        return []
    top = max(route.weight for route in others)
    return [route.version_id for route in others if route.weight == top]


def route_aliases(routes: list[Route]) -> dict[str, str]:
    """champion, and challenger when exactly one route holds that place, for these routes."""
    found = {CHAMPION: versions.champion_of(routes)}
    challengers = challengers_of(routes)
    if len(challengers) == 1:
        found[CHALLENGER] = challengers[0]
    return found


def current_aliases(
    services: Services, deployment: str, routes: list[Route] | None = None
) -> dict[str, str]:
    """Every alias of a deployment and the version it points to now."""
    routes = versions.current_routes(services, deployment) if routes is None else routes
    found = route_aliases(routes)
    for row in _rows_set(services, deployment):
        found[row["alias"]] = row["version_id"]
    return found


def _set_version(services: Services, deployment: str, alias: str) -> str | None:
    """The version an alias set by hand points to, or None (never set, or deleted)."""
    row = services.registry.find("aliases", (deployment, alias))
    return None if row is None or row["version_id"] is None else str(row["version_id"])


def _rows_set(services: Services, deployment: str) -> list[dict[str, Any]]:
    """The aliases of a deployment set by hand and not deleted, by name."""
    where = "deployment = ? AND version_id IS NOT NULL"
    return services.registry.rows("aliases", where, [deployment], order_by="alias")


def aliases_of_version(services: Services, version_id: str) -> list[str]:
    """The `deployment@alias` references that point to a version now."""
    found = []
    for row in services.registry.rows("deployments", order_by="name"):
        for alias, target in current_aliases(services, row["name"]).items():
            if target == version_id:
                found.append(f"{row['name']}{SEPARATOR}{alias}")
    return found


# ---- Setting ----


def set_alias(
    services: Services,
    deployment: str,
    alias: str,
    version_id: str,
    reason: str = "",
    actor: str = "",
) -> dict[str, Any]:
    """Point a deployment's alias at a model version (creating or moving the alias).

    Args:
        services: The server's services.
        deployment: An existing deployment; its versions share one base model.
        alias: 1-32 lowercase letters, digits, '-' or '_'; not champion or challenger.
        version_id: A model version (mv-...) or another alias (`deployment@alias`), resolved
            now: the alias keeps pointing at that version when the other one moves.
        reason: Why; kept in the alias history and the audit trail.
        actor: Who moves the alias (a person or an agent).

    Raises:
        ConflictError: The alias already points to that version.
    """
    check_alias_name(alias)
    with versions.DEPLOY_LOCK:
        serving = versions.get_version_base(services, versions.current_routes(services, deployment))
        version = _named_version(services, version_id)
        if version["base_model"] != serving:
            raise InvalidInputError(
                f"{version['id']} is built on base model {version['base_model']!r} but "
                f"{deployment!r} serves {serving!r}; an alias names a version of its deployment"
            )
        previous = services.registry.find("aliases", (deployment, alias))
        previous_id = _set_version(services, deployment, alias)
        if previous_id == version["id"]:
            raise ConflictError(f"{deployment}@{alias} already points to {version['id']}")

        now = utc_now()
        row = {
            "deployment": deployment,
            "alias": alias,
            "version_id": version["id"],
            "reason": reason,
            "actor": actor,
            "updated_at": now,
        }
        write = ("update", "aliases", (deployment, alias), row) if previous else None
        history = _history_row(deployment, alias, "set", version["id"], previous_id, reason, actor)
        services.registry.write_many(
            [write or ("insert", "aliases", None, row), ("insert", "alias_history", None, history)]
        )
        audit.record(
            services,
            "set_alias",
            deployment,
            reason,
            alias=alias,
            version_id=version["id"],
            previous_version_id=previous_id,
            actor=actor,
        )
    logger.info(
        "deployment %s alias %s -> %s (was %s)", deployment, alias, version["id"], previous_id
    )
    return {
        "deployment": deployment,
        "alias": alias,
        "reference": f"{deployment}{SEPARATOR}{alias}",
        "version_id": version["id"],
        "previous_version_id": previous_id,
        "reason": reason,
        "actor": actor,
        "updated_at": now,
    }


def delete_alias(
    services: Services, deployment: str, alias: str, reason: str = "", actor: str = ""
) -> dict[str, Any]:
    """Remove an alias set by hand; its history stays.

    Raises:
        NotFoundError: The deployment has no such alias (the message lists the known ones).
    """
    check_alias_name(alias)
    with versions.DEPLOY_LOCK:
        previous_id = _set_version(services, deployment, alias)
        if previous_id is None:
            resolve_alias(services, deployment, alias)  # raises, naming the aliases there are
        # A deleted alias keeps its row with no version, so the table only ever gains rows.
        cleared = {"version_id": None, "reason": reason, "actor": actor, "updated_at": utc_now()}
        history = _history_row(deployment, alias, "delete", None, previous_id, reason, actor)
        services.registry.write_many(
            [
                ("update", "aliases", (deployment, alias), cleared),
                ("insert", "alias_history", None, history),
            ]
        )
        audit.record(
            services,
            "delete_alias",
            deployment,
            reason,
            alias=alias,
            previous_version_id=previous_id,
            actor=actor,
        )
    logger.info("deployment %s alias %s deleted (was %s)", deployment, alias, previous_id)
    return {
        "deployment": deployment,
        "alias": alias,
        "deleted": True,
        "previous_version_id": previous_id,
    }


def _named_version(services: Services, ref: str) -> dict[str, Any]:
    if is_reference(ref):
        ref = resolve_reference(services, ref)
    if not ref.startswith("mv-"):
        raise InvalidInputError(
            f"version_id {ref!r}: give a model version id (mv-...) or an alias "
            "(deployment@alias); export a run with export_model first"
        )
    return services.registry.get("model_versions", ref, "model version")


def _history_row(
    deployment: str,
    alias: str,
    action: str,
    version_id: str | None,
    previous_id: str | None,
    reason: str,
    actor: str,
) -> dict[str, Any]:
    return {
        "deployment": deployment,
        "alias": alias,
        "action": action,
        "version_id": version_id,
        "previous_version_id": previous_id,
        "reason": reason,
        "actor": actor,
        "time": utc_now(),
    }


# ---- Reading ----


def list_aliases(services: Services, deployment: str) -> dict[str, Any]:
    """A deployment's aliases now, and the history of every move of each, oldest first."""
    revision = services.registry.get("deployments", deployment, "deployment")["revision"]
    routes = versions.current_routes(services, deployment)
    set_by_hand = {row["alias"]: row for row in _rows_set(services, deployment)}
    listed = []
    for alias, version_id in current_aliases(services, deployment, routes).items():
        row = set_by_hand.get(alias)
        listed.append(
            {
                "alias": alias,
                "reference": f"{deployment}{SEPARATOR}{alias}",
                "version_id": version_id,
                "follows": "routes" if row is None else "set_alias",
                "reason": None if row is None else row["reason"],
                "actor": None if row is None else row["actor"],
                "updated_at": None if row is None else row["updated_at"],
            }
        )
    challengers = challengers_of(routes)
    return {
        "deployment": deployment,
        "revision": revision,
        "aliases": listed,
        "challenger_tie": challengers if len(challengers) > 1 else None,
        "history": alias_history(services, deployment),
    }


def alias_history(services: Services, deployment: str) -> list[dict[str, Any]]:
    """Every move of every alias of a deployment, oldest first.

    Moves of champion and challenger are read from the revisions (with the actor from the
    audit trail); moves of the others from the alias history.
    """
    moves = _route_alias_moves(services, deployment)
    for row in services.registry.rows(
        "alias_history", "deployment = ?", [deployment], order_by="id"
    ):
        moves.append({key: row[key] for key in row if key not in ("id", "deployment")})
    return sorted(moves, key=lambda move: move["time"])


def _route_alias_moves(services: Services, deployment: str) -> list[dict[str, Any]]:
    actors = {
        entry["details"].get("revision"): entry["details"].get("actor", "")
        for entry in audit.read(services, deployment, limit=100_000)
    }
    moves: list[dict[str, Any]] = []
    before: dict[str, str] = {}
    for row in services.registry.rows(
        "deployment_revisions", "deployment = ?", [deployment], order_by="revision"
    ):
        now = route_aliases(parse_stored(row["routes"]))
        for alias in ROUTE_ALIASES:
            if now.get(alias) == before.get(alias):
                continue
            moves.append(
                {
                    "alias": alias,
                    "action": "set" if alias in now else "clear",
                    "version_id": now.get(alias),
                    "previous_version_id": before.get(alias),
                    "reason": row["reason"],
                    "actor": actors.get(row["revision"], ""),
                    "time": row["created_at"],
                    "revision": row["revision"],
                }
            )
        before = now
    return moves
