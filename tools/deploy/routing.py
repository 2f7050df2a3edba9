"""Traffic routes of a deployment revision: their rules, and which route answers one query.

A route sends a whole-number percentage of live traffic to a model version, or mirrors traffic
to it without answering from it (a shadow route). Live weights sum to exactly 100.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from turing.tools.errors import InvalidInputError

MAX_ROUTES = 16  # every route may hold an engine in memory
MAX_SHADOW_ROUTES = 4  # each shadow route repeats every request's work once more
MAX_ROUTING_KEY_CHARS = 1024
ROUTE_FIELDS = ("version_id", "weight", "shadow")


class Route(NamedTuple):
    """One route of a revision; indexable like the stored [version_id, weight] pairs."""

    version_id: str
    weight: int
    shadow: bool = False

    def stored(self) -> list[Any]:
        """The JSON form kept in deployment_revisions: [id, weight], or [id, 0, true]."""
        return [self.version_id, 0, True] if self.shadow else [self.version_id, self.weight]

    def describe(self) -> dict[str, Any]:
        """The form tools return; shadow routes carry "shadow": true."""
        described: dict[str, Any] = {"version_id": self.version_id, "weight": self.weight}
        if self.shadow:
            described["shadow"] = True
        return described


def parse_stored(stored: Sequence[Sequence[Any]]) -> list[Route]:
    """Routes from their stored form: [version_id, weight] or [version_id, weight, shadow]."""
    return [
        Route(str(entry[0]), int(entry[1]), bool(entry[2]) if len(entry) > 2 else False)
        for entry in stored
    ]


def live_routes(routes: Sequence[Route]) -> list[Route]:
    """The routes that answer queries: not shadows, weight above 0."""
    return [route for route in routes if not route.shadow and route.weight > 0]


def check_routes(
    routes: Any, base_of: Callable[[str], str | None], base_model: str | None
) -> list[Route]:
    """Validate routes as a caller gave them, reporting every problem in one error.

    Args:
        routes: A list of {"version_id": str, "weight": int 0..100, "shadow": bool}.
        base_of: The base model of a version id, or None when no such version exists.
        base_model: The base model every version must share; None to take the first route's.

    Raises:
        InvalidInputError: Naming each offending route and value, and the rule it breaks.
    """
    if not isinstance(routes, list) or not routes:
        raise InvalidInputError(
            'routes must be a non-empty list of {"version_id": "mv-...", "weight": 0-100, '
            '"shadow": false}'
        )
    problems: list[str] = []
    parsed: list[Route] = []
    seen: dict[str, int] = {}
    for index, entry in enumerate(routes):
        route = _check_route(index, entry, problems)
        if route is None:
            continue
        label = f"routes[{index}] ({route.version_id})"
        if route.version_id in seen:
            problems.append(
                f"{label}: already routed by routes[{seen[route.version_id]}]; "
                "a version may appear once"
            )
            continue
        seen[route.version_id] = index
        problems += _check_version(label, route.version_id, base_of, base_model)
        base_model = base_model or base_of(route.version_id)
        parsed.append(route)

    problems += _check_totals(routes, parsed)
    if problems:
        raise InvalidInputError("routes refused:\n  " + "\n  ".join(problems))
    return parsed


def _check_route(index: int, entry: Any, problems: list[str]) -> Route | None:
    if not isinstance(entry, dict):
        problems.append(f"routes[{index}]={entry!r}: each route is an object with version_id")
        return None
    unknown = sorted(set(entry) - set(ROUTE_FIELDS))
    version_id = entry.get("version_id")
    label = f"routes[{index}] ({version_id})"
    if unknown:
        problems.append(f"{label}: unknown fields {unknown}; allowed: {', '.join(ROUTE_FIELDS)}")
    if not isinstance(version_id, str) or not version_id:
        problems.append(f"routes[{index}]: version_id={version_id!r}; give a model version id")
        return None
    shadow = entry.get("shadow", False)
    if not isinstance(shadow, bool):
        problems.append(f"{label}: shadow={shadow!r}; must be true or false")
        return None
    weight = entry.get("weight", 0 if shadow else None)
    if isinstance(weight, float) and weight.is_integer():
        weight = int(weight)
    if not isinstance(weight, int) or isinstance(weight, bool):
        problems.append(f"{label}: weight={weight!r}; weights are whole percentages 0..100")
        return None
    if shadow and weight != 0:
        problems.append(
            f"{label}: weight={weight} on a shadow route; shadow routes mirror traffic and "
            "take no weight (omit it or give 0)"
        )
    elif not 0 <= weight <= 100:
        problems.append(f"{label}: weight={weight}; weights are whole percentages 0..100")
    return Route(version_id, weight, shadow)


def _check_version(
    label: str, version_id: str, base_of: Callable[[str], str | None], base_model: str | None
) -> list[str]:
    if not version_id.startswith("mv-"):
        return [f"{label}: not a model version id (mv-...); export a run first"]
    base = base_of(version_id)
    if base is None:
        return [f"{label}: no such model version; list_models shows the versions"]
    if base_model is not None and base != base_model:
        return [
            f"{label}: built on base model {base!r}, but this deployment serves "
            f"{base_model!r}; every route must share one base model"
        ]
    return []


def _check_totals(routes: list[Any], parsed: list[Route]) -> list[str]:
    problems = []
    if len(routes) > MAX_ROUTES:
        problems.append(f"{len(routes)} routes given; at most {MAX_ROUTES} are allowed")
    shadows = sum(route.shadow for route in parsed)
    if shadows > MAX_SHADOW_ROUTES:
        problems.append(f"{shadows} shadow routes given; at most {MAX_SHADOW_ROUTES} are allowed")
    live = [route for route in parsed if not route.shadow]
    total = sum(route.weight for route in live)
    if not live:
        problems.append("no live (non-shadow) route: at least one must receive traffic")
    elif total != 100:
        weights = " + ".join(f"{route.weight} ({route.version_id})" for route in live)
        problems.append(
            f"weights of the live routes sum to {total} ({weights}); they must sum to exactly 100"
        )
    return problems


def check_routing_key(routing_key: str | None) -> None:
    """Refuse a routing key that cannot identify a caller."""
    if routing_key is None:
        return
    if not isinstance(routing_key, str) or not routing_key:
        raise InvalidInputError(
            f"routing_key={routing_key!r}: give a non-empty string (e.g. a user id), or omit it "
            "for random routing by weight"
        )
    if len(routing_key) > MAX_ROUTING_KEY_CHARS:
        raise InvalidInputError(
            f"routing_key is {len(routing_key)} characters; at most {MAX_ROUTING_KEY_CHARS}"
        )


def choose_route(
    routes: Sequence[Route],
    key: str | None,
    deployment: str,
    revision: int,
    rng: random.Random | None = None,
) -> Route:
    """The live route that answers one query.

    With a key, the choice is sticky: sha256(deployment, revision, key) picks a point on the
    cumulative weights, so one key lands on one route for the whole revision (a new revision
    may place it elsewhere). Without a key the point is random. Weight 0 and shadow routes are
    never chosen.

    Raises:
        InvalidInputError: The routes have no live route.
    """
    live = live_routes(routes)
    if not live:
        raise InvalidInputError(f"deployment {deployment!r} revision {revision} has no live route")
    total = sum(route.weight for route in live)
    if key is None:
        point = (rng or random).randrange(total)
    else:
        digest = hashlib.sha256(f"{deployment}\0{revision}\0{key}".encode()).digest()
        point = (int.from_bytes(digest[:8], "big") * total) >> 64  # uniform in [0, total)
    upto = 0
    for route in live:
        upto += route.weight
        if point < upto:
            return route
    return live[-1]


def key_digest(key: str | None) -> str | None:
    """What telemetry keeps of a routing key: a short hash, since keys often name people."""
    return None if key is None else hashlib.sha256(key.encode()).hexdigest()[:16]
