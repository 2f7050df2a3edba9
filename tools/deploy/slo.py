"""Service-level objectives of deployments, judged over a window of their recorded queries.

An SLO bounds each live route of a deployment's current revision: its error rate, its p95
latency and its safety-flag rate, measured over the route's queries of the last `window_s`
seconds since its version last started serving live traffic there (a revision that only moves
weights keeps the evidence; a version rolled back and routed again starts afresh). A route is
judged only once it has `min_requests` such queries.

- error rate: failed queries over all queries; refusals of the caller's input (a prompt too long
  for the model) are not the route's fault and do not count as failures (as in get_metrics).
- p95 latency: over answered queries, in milliseconds, waiting for the engine included.
- safety-flag rate: answered queries whose answer added personal data the prompt did not hold
  (the telemetry's PII screen, the `pii` column of the queries), over answered queries.

A canary (a live route other than the champion) that breaches is rolled back by the monitor
when the SLO has auto_rollback on: a new revision through set_routes gives its weight to the
champion, and an auto_rollback incident records the trigger. A champion that breaches, or a
canary with auto_rollback off, is recorded as an slo_breach incident once per SLO and stint
of serving.
"""

from __future__ import annotations

import logging
import math
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from turing.server import access
from turing.server.registry import utc_now
from turing.server.services import Services
from turing.tools import audit
from turing.tools.deploy import traffic
from turing.tools.deploy.incidents import list_incidents, record_incident
from turing.tools.deploy.routing import Route, live_routes
from turing.tools.deploy.versions import champion_of, revision_routes
from turing.tools.errors import InvalidInputError, TuringError
from turing.tools.settings import number_setting

logger = logging.getLogger(__name__)

# (measured metric, SLO field bounding it)
OBJECTIVES = (
    ("error_rate", "max_error_rate"),
    ("p95_latency_ms", "max_p95_latency_ms"),
    ("safety_flag_rate", "max_safety_flag_rate"),
)
DEFAULT_WINDOW_S = 300
MAX_WINDOW_S = 7 * 24 * 3600
DEFAULT_MIN_REQUESTS = 20
MAX_MIN_REQUESTS = 1_000_000
MAX_LATENCY_MS = 3_600_000.0
CHECK_INTERVAL_ENV = "TURING_SLO_CHECK_S"
CHECK_INTERVAL_S = 5.0
MONITOR_ACTOR = "slo-monitor"


def set_slo(
    services: Services,
    deployment: str,
    max_error_rate: float | None = None,
    max_p95_latency_ms: float | None = None,
    max_safety_flag_rate: float | None = None,
    window_s: int = DEFAULT_WINDOW_S,
    min_requests: int = DEFAULT_MIN_REQUESTS,
    auto_rollback: bool = True,
    reason: str = "",
    actor: str = "",
) -> dict[str, Any]:
    """Set (or replace) a deployment's SLO; returns it with an evaluation of the traffic now.

    Raises:
        NotFoundError: No such deployment.
        InvalidInputError: No bound given, or values out of range; every problem in one message.
    """
    services.registry.get("deployments", deployment, "deployment")
    slo = {
        "deployment": deployment,
        "max_error_rate": max_error_rate,
        "max_p95_latency_ms": max_p95_latency_ms,
        "max_safety_flag_rate": max_safety_flag_rate,
        "window_s": window_s,
        "min_requests": min_requests,
        "auto_rollback": auto_rollback,
    }
    _check_slo(slo)
    row = {
        **slo,
        "auto_rollback": int(auto_rollback),
        "updated_at": utc_now(),
        "updated_by": actor or access.current().actor,
    }
    exists = services.registry.find("slos", deployment) is not None
    services.registry.write_many([("update" if exists else "insert", "slos", deployment, row)])
    audit.record(services, "set_slo", deployment, reason, actor=row["updated_by"], slo=slo)
    logger.info("deployment %s SLO set: %s", deployment, slo)
    return get_slo(services, deployment)


def get_slo(services: Services, deployment: str) -> dict[str, Any]:
    """A deployment's SLO and how each live route of its current revision measures against it.

    Raises:
        NotFoundError: No such deployment.
    """
    services.registry.get("deployments", deployment, "deployment")
    slo = _find_slo(services, deployment)
    if slo is None:
        return {
            "slo": None,
            "status": None,
            "note": f"deployment {deployment!r} has no SLO; set one with set_slo (e.g. "
            "max_error_rate=0.05, max_p95_latency_ms=2000)",
        }
    services.telemetry.flush()  # a query answered before this call is counted
    return {"slo": slo, "status": evaluate(services, slo)}


def evaluate(services: Services, slo: dict[str, Any]) -> dict[str, Any]:
    """Measure each live route of the deployment's current revision over the SLO's window."""
    from turing.tools.query.traffic_metrics import summarize

    deployment = slo["deployment"]
    revision = services.registry.get("deployments", deployment, "deployment")["revision"]
    routes = revision_routes(services, deployment, revision)
    champion = champion_of(routes)
    start = (datetime.now(UTC) - timedelta(seconds=slo["window_s"])).isoformat(
        timespec="milliseconds"
    )
    live = live_routes(routes)
    since = _serving_since(services, deployment, revision, [r.version_id for r in live], start)
    rows = services.registry.rows(
        "queries",
        "deployment = ? AND revision >= ? AND shadow = 0 AND created_at >= ?",
        [deployment, min(since.values()), start],
        order_by="id",
    )
    measured = []
    for route in live:
        first = since[route.version_id]
        mine = [r for r in rows if r["version_id"] == route.version_id and r["revision"] >= first]
        judged = _judge(slo, route, route.version_id == champion, summarize(mine))
        measured.append({**judged, "since_revision": first})
    return {
        "deployment": deployment,
        "revision": revision,
        "champion": champion,
        "window_start": start,
        "routes": measured,
        "breaching": [route["version_id"] for route in measured if route["breaches"]],
    }


def check_deployment(services: Services, slo: dict[str, Any]) -> list[dict[str, Any]]:
    """Evaluate one SLO and act on its breaches; returns the incidents recorded."""
    status = evaluate(services, slo)
    breaching = [route for route in status["routes"] if route["breaches"]]
    canaries = [route for route in breaching if route["role"] == "canary"]
    if canaries and slo["auto_rollback"]:
        incidents = _roll_back(services, slo, status, canaries)
        breaching = [route for route in breaching if route["role"] != "canary"]
    else:
        incidents = []
    for route in breaching:
        incidents += _record_breaches(services, slo, status, route)
    return incidents


def check_all(services: Services) -> list[dict[str, Any]]:
    """Check every deployment that has an SLO; a failure on one is logged, the rest go on."""
    incidents = []
    for slo in list_slos(services):
        try:
            incidents += check_deployment(services, slo)
        except Exception:  # one deployment's trouble must not stop the others' checks
            logger.exception("SLO check of deployment %s failed", slo["deployment"])
    return incidents


def list_slos(services: Services) -> list[dict[str, Any]]:
    """Every deployment's SLO."""
    return [_decode(row) for row in services.registry.rows("slos", order_by="deployment")]


class SloMonitor:
    """Checks every SLO from the scheduler's tick, at most once per interval.

    Args:
        services: The server's services.
        interval_s: Seconds between checks; TURING_SLO_CHECK_S, else CHECK_INTERVAL_S.

    Raises:
        InvalidInputError: A malformed TURING_SLO_CHECK_S, when no interval is given.
    """

    def __init__(self, services: Services, interval_s: float | None = None) -> None:
        self.services = services
        self.interval_s = check_interval() if interval_s is None else interval_s
        self._next_at = 0.0

    def tick(self) -> None:
        """Check the SLOs if the interval has passed since the last check."""
        now = time.monotonic()
        if now < self._next_at:
            return
        self._next_at = now + self.interval_s
        check_all(self.services)


def check_interval() -> float:
    """Seconds between SLO checks: TURING_SLO_CHECK_S (0.5 to 3600), 5 by default."""
    return number_setting(CHECK_INTERVAL_ENV, CHECK_INTERVAL_S, minimum=0.5, maximum=3600.0)


# --- judging ------------------------------------------------------------------------------


def _judge(
    slo: dict[str, Any], route: Route, is_champion: bool, summary: dict[str, Any]
) -> dict[str, Any]:
    answered = summary["answered"]
    values = {
        "error_rate": summary["error_rate"],
        "p95_latency_ms": summary["latency_ms"]["p95"],
        "safety_flag_rate": round(summary["pii_flags"] / answered, 6) if answered else None,
    }
    judged = summary["count"] >= slo["min_requests"]
    breaches = []
    for metric, bound in OBJECTIVES:
        threshold, value = slo[bound], values[metric]
        if judged and threshold is not None and value is not None and value > threshold:
            breaches.append({"slo": metric, "measured": value, "threshold": threshold})
    return {
        "version_id": route.version_id,
        "weight": route.weight,
        "role": "champion" if is_champion else "canary",
        "requests": summary["count"],
        "answered": answered,
        **values,
        "judged": judged,
        "note": None
        if judged
        else f"{summary['count']} of the {slo['min_requests']} queries needed to judge it",
        "breaches": breaches,
    }


def _serving_since(
    services: Services, deployment: str, revision: int, version_ids: list[str], start: str
) -> dict[str, int]:
    """The revision from which each version has served live traffic without a break.

    The walk back stops at the first revision made before the window started: the queries of
    earlier revisions all fall before the window.
    """
    since = dict.fromkeys(version_ids, revision)
    pending = set(version_ids)
    earlier = revision - 1
    while pending and earlier >= 1:
        row = services.registry.get("deployment_revisions", (deployment, earlier + 1))
        if row["created_at"] < start:
            break
        served = {
            route.version_id
            for route in live_routes(revision_routes(services, deployment, earlier))
        }
        for version_id in list(pending):
            if version_id in served:
                since[version_id] = earlier
            else:
                pending.discard(version_id)
        earlier -= 1
    return since


def _trigger(slo: dict[str, Any], route: dict[str, Any], revision: int) -> str:
    """One line saying what breached: each SLO with its measured value and threshold."""
    first = route["since_revision"]
    revisions = f"revision {revision}" if first == revision else f"revisions {first}-{revision}"
    parts = [
        f"{breach['slo']} {breach['measured']:g} > {breach['threshold']:g}"
        for breach in route["breaches"]
    ]
    return (
        f"{', '.join(parts)} over {route['requests']} queries to {route['version_id']} "
        f"({route['role']}, {route['weight']}%) of {revisions} in the last "
        f"{slo['window_s']} s"
    )


# --- acting -------------------------------------------------------------------------------


def _roll_back(
    services: Services,
    slo: dict[str, Any],
    status: dict[str, Any],
    canaries: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    """Give the breaching canaries' weight to the champion in a new revision, and record it."""
    deployment, revision = slo["deployment"], status["revision"]
    dropped = {route["version_id"] for route in canaries}
    routes = revision_routes(services, deployment, revision)
    freed = sum(route.weight for route in routes if route.version_id in dropped)
    kept = [
        Route(route.version_id, route.weight + freed, False)
        if route.version_id == status["champion"] and not route.shadow
        else route
        for route in routes
        if route.version_id not in dropped or route.shadow
    ]
    triggers = [_trigger(slo, route, revision) for route in canaries]
    if services.registry.get("deployments", deployment)["revision"] != revision:
        logger.info(
            "deployment %s changed while its SLO was checked; checked again next", deployment
        )
        return []
    try:
        changed = traffic.set_routes(
            services,
            deployment,
            [route.describe() for route in kept],
            reason="automatic rollback: " + "; ".join(triggers),
            actor=MONITOR_ACTOR,
        )
    except TuringError as exc:
        logger.warning("automatic rollback of %s failed: %s", deployment, exc)
        return [
            _breach_incident(services, slo, status, route, f"automatic rollback failed: {exc}")
            for route in canaries
            if not _already_recorded(services, deployment, route)
        ]
    return [
        record_incident(
            services,
            "auto_rollback",
            trigger,
            deployment=deployment,
            version_id=route["version_id"],
            actor=MONITOR_ACTOR,
            revision=revision,
            since_revision=route["since_revision"],
            new_revision=changed["revision"],
            routes=changed["routes"],
            window_s=slo["window_s"],
            min_requests=slo["min_requests"],
            requests=route["requests"],
            breaches=route["breaches"],
        )
        for route, trigger in zip(canaries, triggers, strict=True)
    ]


def _record_breaches(
    services: Services, slo: dict[str, Any], status: dict[str, Any], route: dict[str, Any]
) -> list[dict[str, Any]]:
    """An slo_breach incident, once per version, breached SLO and stint of serving."""
    if _already_recorded(services, slo["deployment"], route):
        return []
    action = (
        "none: the champion serves most traffic; roll back or kill it if it must stop"
        if route["role"] == "champion"
        else "none: auto_rollback is off for this SLO"
    )
    return [_breach_incident(services, slo, status, route, action)]


def _breach_incident(
    services: Services,
    slo: dict[str, Any],
    status: dict[str, Any],
    route: dict[str, Any],
    action: str,
) -> dict[str, Any]:
    return record_incident(
        services,
        "slo_breach",
        _trigger(slo, route, status["revision"]),
        deployment=slo["deployment"],
        version_id=route["version_id"],
        actor=MONITOR_ACTOR,
        revision=status["revision"],
        since_revision=route["since_revision"],
        role=route["role"],
        window_s=slo["window_s"],
        min_requests=slo["min_requests"],
        requests=route["requests"],
        breaches=route["breaches"],
        slos=sorted(breach["slo"] for breach in route["breaches"]),
        action=action,
    )


def _already_recorded(services: Services, deployment: str, route: dict[str, Any]) -> bool:
    """Whether each SLO this route breaches was already recorded for its stint of serving."""
    seen: set[str] = set()
    for incident in list_incidents(services, deployment, "slo_breach", limit=1000):
        details = incident["details"] or {}
        stint = details.get("since_revision")
        if incident["version_id"] == route["version_id"] and stint == route["since_revision"]:
            seen.update(details.get("slos", []))
    return all(breach["slo"] in seen for breach in route["breaches"])


# --- rows ---------------------------------------------------------------------------------


def _find_slo(services: Services, deployment: str) -> dict[str, Any] | None:
    row = services.registry.find("slos", deployment)
    return None if row is None else _decode(row)


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "auto_rollback": bool(row["auto_rollback"])}


def _check_slo(slo: dict[str, Any]) -> None:
    """Refuse an SLO with no bound or with values out of range, naming every problem."""
    problems = []
    if all(slo[bound] is None for _, bound in OBJECTIVES):
        problems.append(
            "no bound given: set at least one of max_error_rate, max_p95_latency_ms, "
            "max_safety_flag_rate"
        )
    for bound, low, high in (
        ("max_error_rate", 0.0, 1.0),
        ("max_safety_flag_rate", 0.0, 1.0),
        ("max_p95_latency_ms", 1.0, MAX_LATENCY_MS),  # 0 would roll back every canary
    ):
        value = slo[bound]
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            problems.append(f"{bound}={value!r}: must be a number")
        elif not math.isfinite(value) or not low <= value <= high:
            problems.append(f"{bound}={value!r}: must be from {low:.10g} to {high:.10g}")
    for field, low, high in (
        ("window_s", 10, MAX_WINDOW_S),
        ("min_requests", 1, MAX_MIN_REQUESTS),
    ):
        value = slo[field]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            problems.append(f"{field}={value!r}: must be a whole number from {low} to {high}")
    if not isinstance(slo["auto_rollback"], bool):
        problems.append(f"auto_rollback={slo['auto_rollback']!r}: must be true or false")
    if problems:
        raise InvalidInputError("SLO refused:\n  " + "\n  ".join(problems))
