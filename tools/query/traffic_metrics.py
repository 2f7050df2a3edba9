"""Traffic metrics read from the recorded queries: per deployment, version and route, and A/B
comparisons between the routes of a revision with a significance test.

Live rows (answers someone received) and shadow rows (mirrored answers nobody received) are
always summarised apart. Every reader first waits for the telemetry writer, so a query answered
before the read is counted.
"""

from __future__ import annotations

import math
import re
import sqlite3
from collections import Counter
from collections.abc import Callable
from contextlib import closing
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from turing.server import access
from turing.server.services import Services
from turing.tools.deploy.routing import Route
from turing.tools.deploy.versions import champion_of, revision_routes
from turing.tools.errors import InvalidInputError, NotFoundError
from turing.tools.evals import stats
from turing.tools.query.telemetry import get_pricing

# Per-query values compared with Mann-Whitney's test: the column (or derivation) of each.
VALUE_METRICS = ("latency_ms", "ttft_ms", "tokens_in", "tokens_out", "decode_tokens_per_s", "cost")
# Shares of queries compared with Fisher's exact test.
RATE_METRICS = ("error_rate", "pii_rate")
REFUSED_ERROR_TYPE = "InvalidInputError"  # the caller's input, refused by the routed model
COMPARABLE_METRICS = VALUE_METRICS + RATE_METRICS
DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
DURATION_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
MIN_VALUES_TO_COMPARE = 2


def deployment_metrics(
    services: Services, deployment: str, since: str | None = None, revision: int | None = None
) -> dict[str, Any]:
    """A deployment's traffic: all of it, per version, and per route of one revision.

    Args:
        services: The server's services.
        deployment: The deployment's name.
        since: Only queries at or after this time: ISO 8601 (UTC if no offset) or a duration
            back from now such as "15m", "24h", "7d".
        revision: The revision whose routes are broken out; its current one by default.

    Raises:
        NotFoundError: No such deployment.
        InvalidInputError: A bad `since` or a revision the deployment does not have.
    """
    current = services.registry.get("deployments", deployment, "deployment")["revision"]
    start = parse_since(since)
    chosen = current if revision is None else _check_revision(deployment, revision, current)
    rows = _query_rows(services, "deployment = ?", [deployment], start)

    by_version: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_version.setdefault(row["version_id"], []).append(row)
    routes = []
    for route in revision_routes(services, deployment, chosen):
        matching = [
            row for row in by_version.get(route.version_id, []) if _on_route(row, chosen, route)
        ]
        routes.append({**route.describe(), "metrics": summarize(matching)})

    return {
        "deployment": deployment,
        "since": start,
        "current_revision": current,
        "pricing": get_pricing(services, deployment),
        **_split(rows),
        "versions": [
            {"version_id": version_id, **_split(version_rows)}
            for version_id, version_rows in sorted(
                by_version.items(), key=lambda item: -len(item[1])
            )
        ],
        "routes": {"revision": chosen, "routes": routes},
    }


def version_metrics(
    services: Services, version_id: str, since: str | None = None
) -> dict[str, Any]:
    """A model version's traffic over every deployment that routed to it, and per deployment.

    Queries that named the version (or base model) directly, not through a deployment, are
    listed with "deployment": null. `since` is as for `deployment_metrics`.

    Raises:
        NotFoundError: No such model version or base model, and no query recorded for the name.
        InvalidInputError: A bad `since`.
    """
    from turing.tools.deploy import aliases

    if aliases.is_reference(version_id):
        version_id = aliases.resolve_reference(services, version_id)
    start = parse_since(since)
    rows = _query_rows(services, "version_id = ?", [version_id], start)
    known = services.registry.find("model_versions", version_id) or services.registry.find(
        "base_models", version_id
    )
    if known is None and not rows:
        raise NotFoundError(
            f"no model version {version_id!r}; list deployments or versions to see what exists"
        )

    by_deployment: dict[str | None, list[dict[str, Any]]] = {}
    for row in rows:
        by_deployment.setdefault(row["deployment"], []).append(row)
    deployments = [
        {"deployment": name, "pricing": get_pricing(services, name), **_split(found)}
        for name, found in sorted(by_deployment.items(), key=lambda item: item[0] or "")
    ]
    return {"version_id": version_id, "since": start, **_split(rows), "deployments": deployments}


def compare_routes(
    services: Services,
    deployment: str,
    metric: str,
    revision: int | None = None,
    since: str | None = None,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Compare the routes of a revision on one metric: each route's value with its interval, and
    each challenger against the champion with an unpaired significance test.

    Value metrics (latency_ms, ttft_ms, tokens_in, tokens_out, decode_tokens_per_s, cost) are
    per-query values: the mean with a bootstrap interval, the median, and Mann-Whitney's U test.
    Rate metrics (error_rate over all queries, pii_rate over answered ones) use Wilson
    intervals, Newcombe's interval of the difference and Fisher's exact test. With several
    challengers the p-values are Holm-adjusted. A shadow route is compared on its shadow rows.

    Raises:
        NotFoundError: No such deployment.
        InvalidInputError: An unknown metric (the allowed ones are named), a bad revision or
            `since`, or a confidence outside (0, 1).
    """
    if metric not in COMPARABLE_METRICS:
        raise InvalidInputError(
            f"metric={metric!r}: allowed metrics are {', '.join(COMPARABLE_METRICS)}"
        )
    if not 0 < confidence < 1:
        raise InvalidInputError(f"confidence={confidence}: must be between 0 and 1, e.g. 0.95")
    current = services.registry.get("deployments", deployment, "deployment")["revision"]
    chosen = current if revision is None else _check_revision(deployment, revision, current)
    start = parse_since(since)
    rows = _query_rows(services, "deployment = ? AND revision = ?", [deployment, chosen], start)
    routes = revision_routes(services, deployment, chosen)

    samples = {
        route.version_id: _samples(metric, [row for row in rows if _on_route(row, chosen, route)])
        for route in routes
    }
    described = [
        {**route.describe(), **_describe_sample(metric, samples[route.version_id], confidence)}
        for route in routes
    ]
    reference = champion_of(routes)
    comparisons = [
        _compare(metric, reference, route.version_id, samples, confidence)
        for route in routes
        if route.version_id != reference
    ]
    _adjust(comparisons, 1 - confidence)

    result: dict[str, Any] = {
        "deployment": deployment,
        "revision": chosen,
        "metric": metric,
        "confidence": confidence,
        "since": start,
        "champion": reference,
        "routes": described,
        "comparisons": comparisons,
    }
    if not comparisons:
        result["note"] = f"revision {chosen} has one route: nothing to compare it with"
    return result


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Count, errors, latency and time-to-first-token percentiles, tokens, speed, cost, PII.

    Latency and time to first token are over answered queries (a refusal's time says nothing
    of the model's speed); errors and error_rate are over all of them. `refused` counts the
    caller's mistakes that reached a model (a prompt too long for its context): they are in
    errors_by_type but not in errors, so they do not count against a version. decode_tokens_per_s is
    the tokens after the first over the time after the first, summed over answered queries.
    """
    answered = [row for row in rows if row["error"] is None]
    refused = sum(1 for row in rows if _refused(row))
    errors = len(rows) - len(answered) - refused
    cost = sum(row["cost"] or 0.0 for row in rows)
    replaced = sum(row["replaced_cost"] or 0.0 for row in rows)
    flagged = [row["pii"] for row in answered if row["pii"]]
    return {
        "count": len(rows),
        "answered": len(answered),
        "refused": refused,
        "errors": errors,
        "error_rate": _round(errors / len(rows), 6) if rows else None,
        "errors_by_type": dict(
            Counter(row["error_type"] or "other" for row in rows if row["error"])
        ),
        "latency_ms": _percentiles(_column(answered, "latency_ms"), (50, 95, 99)),
        "ttft_ms": _percentiles(_column(answered, "time_to_first_token_ms"), (50, 95)),
        "tokens_in": sum(row["prompt_tokens"] or 0 for row in rows),
        "tokens_out": sum(row["completion_tokens"] or 0 for row in rows),
        "decode_tokens_per_s": _decode_speed(answered),
        "cost": _round(cost, 8),
        "replaced_cost": _round(replaced, 8),
        "savings": _round(replaced - cost, 8),
        "pii_flags": len(flagged),
        "pii_kinds": dict(Counter(kind for kinds in flagged for kind in kinds.split(","))),
        "first_at": rows[0]["created_at"] if rows else None,
        "last_at": rows[-1]["created_at"] if rows else None,
    }


def parse_since(since: str | None) -> str | None:
    """The stored timestamp form (UTC ISO 8601) of a window start, or None for all time.

    Raises:
        InvalidInputError: Neither an ISO 8601 time nor a duration such as "15m" or "7d".
    """
    if since is None or not since.strip():
        return None
    text = since.strip()
    duration = DURATION.match(text)
    if duration:
        amount, unit = float(duration.group(1)), duration.group(2)
        try:
            moment = datetime.now(UTC) - timedelta(**{DURATION_UNITS[unit]: amount})
        except (OverflowError, ValueError):
            raise InvalidInputError(
                f"since={since!r} reaches back before the year 1; give a shorter duration"
            ) from None
    else:
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise InvalidInputError(
                f"since={since!r}: give an ISO 8601 time (e.g. 2026-12-05T09:00:00Z) or a "
                "duration back from now: a number with s, m, h, d or w (e.g. 15m, 24h, 7d)"
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")


# Prometheus counters: (name, help, SQL aggregate over a group of query rows).
PROMETHEUS_COUNTERS = (
    ("turing_queries_total", "Queries recorded, answered or failed.", "count(*)"),
    ("turing_query_errors_total", "Queries that failed.", "sum(error IS NOT NULL)"),
    ("turing_prompt_tokens_total", "Prompt tokens read.", "sum(coalesce(prompt_tokens, 0))"),
    (
        "turing_completion_tokens_total",
        "Tokens generated.",
        "sum(coalesce(completion_tokens, 0))",
    ),
    ("turing_cost_total", "Estimated cost at the deployment's price.", "sum(coalesce(cost, 0))"),
    (
        "turing_replaced_cost_total",
        "What the replaced model would have cost for the same tokens.",
        "sum(coalesce(replaced_cost, 0))",
    ),
    (
        "turing_pii_flags_total",
        "Answers adding personal data to the prompt's.",
        "sum(pii IS NOT NULL)",
    ),
)
# The latency histogram of answered queries: upper bounds of its buckets, in seconds.
LATENCY_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
LATENCY_SQL = (
    "coalesce(sum(CASE WHEN error IS NULL THEN latency_ms END), 0) / 1000.0",
    "sum(error IS NULL)",
    *(f"sum(error IS NULL AND latency_ms <= {bound * 1000:g})" for bound in LATENCY_BUCKETS_S),
)
# Queries a project may see: its deployments', and its versions' when asked by version.
PROJECT_FILTER = (
    "(? = '*' OR deployment IN (SELECT name FROM deployments WHERE project = ?) OR "
    "(deployment IS NULL AND version_id IN (SELECT id FROM model_versions WHERE project = ?)))"
)


def prometheus_text(services: Services, project: str | None = None) -> str:
    """Every deployment's and version's counters and latency histogram, then the training,
    evaluation and deployment gauges, in Prometheus's text exposition format.

    Query series are labelled by deployment ("" for queries that named a version directly),
    version and traffic ("live" or "shadow"); rates, averages and quantiles are left to
    Prometheus (rate(), sums over counts, histogram_quantile()).

    Args:
        services: The server's services.
        project: Only this project's series, "*" for every project; by default the project of
            the caller (every project on stdio).
    """
    from turing.tools import monitoring  # here: monitoring reads these traffic metrics too

    project = access.current().project if project is None else project
    services.telemetry.flush()
    aggregates = ", ".join([sql for _, _, sql in PROMETHEUS_COUNTERS] + list(LATENCY_SQL))
    path = services.workspace.registry_path
    # A read-only connection of its own: WAL lets it read while the registry's writes go on.
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        groups = conn.execute(
            f"SELECT deployment, version_id, shadow, {aggregates} FROM queries "
            f"WHERE {PROJECT_FILTER} GROUP BY deployment, version_id, shadow "
            "ORDER BY deployment, version_id, shadow",
            [project] * 3,
        ).fetchall()
    labelled = [
        (
            _labels(
                deployment=deployment or "",
                version=version_id or "",
                traffic="shadow" if shadow else "live",
            ),
            values,
        )
        for deployment, version_id, shadow, *values in groups
    ]
    lines = []
    for index, (name, help_text, _) in enumerate(PROMETHEUS_COUNTERS):
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
        lines += [
            f"{name}{{{labels}}} {_number(values[index] or 0)}" for labels, values in labelled
        ]
    lines += _latency_histogram(labelled, len(PROMETHEUS_COUNTERS))
    lines += monitoring.prometheus_lines(services, project)
    return "\n".join(lines) + "\n"


def _latency_histogram(labelled: list[tuple[str, list[Any]]], offset: int) -> list[str]:
    """The `turing_query_latency_seconds` histogram: cumulative buckets, sum and count."""
    name = "turing_query_latency_seconds"
    lines = [f"# HELP {name} Latency of answered queries.", f"# TYPE {name} histogram"]
    for labels, values in labelled:
        total, count, *buckets = (value or 0 for value in values[offset:])
        for bound, within in zip(LATENCY_BUCKETS_S, buckets, strict=True):
            lines.append(f'{name}_bucket{{{labels},le="{bound:g}"}} {_number(within)}')
        lines.append(f'{name}_bucket{{{labels},le="+Inf"}} {_number(count)}')
        lines.append(f"{name}_sum{{{labels}}} {_number(total)}")
        lines.append(f"{name}_count{{{labels}}} {_number(count)}")
    return lines


def _labels(**labels: str) -> str:
    def escape(value: str) -> str:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    return ",".join(f'{key}="{escape(value)}"' for key, value in labels.items())


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


# --- rows ---------------------------------------------------------------------------------


def _query_rows(
    services: Services, where: str, params: list[Any], start: str | None
) -> list[dict[str, Any]]:
    """Matching query rows, oldest first, once every recorded query is written."""
    services.telemetry.flush()
    if start is not None:
        where, params = f"({where}) AND created_at >= ?", [*params, start]
    return services.registry.rows("queries", where, params, order_by="id")


def _split(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        "live": summarize([row for row in rows if not row["shadow"]]),
        "shadow": summarize([row for row in rows if row["shadow"]]),
    }


def _on_route(row: dict[str, Any], revision: int, route: Route) -> bool:
    return (
        row["revision"] == revision
        and row["version_id"] == route.version_id
        and bool(row["shadow"]) == route.shadow
    )


def _check_revision(deployment: str, revision: int, current: int) -> int:
    if isinstance(revision, bool) or not isinstance(revision, int) or not 1 <= revision <= current:
        raise InvalidInputError(
            f"revision={revision!r}: deployment {deployment!r} has revisions 1 to {current}"
        )
    return revision


def _column(rows: list[dict[str, Any]], name: str) -> list[float]:
    return [float(row[name]) for row in rows if row[name] is not None]


def _percentiles(values: list[float], levels: tuple[int, ...]) -> dict[str, float | None]:
    """Linear-interpolated percentiles p50, p95, ... and the mean, in the values' unit."""
    if not values:
        return {**{f"p{level}": None for level in levels}, "mean": None}
    found = np.percentile(values, levels)
    return {
        **{
            f"p{level}": _round(float(value), 3) for level, value in zip(levels, found, strict=True)
        },
        "mean": _round(float(np.mean(values)), 3),
    }


def _refused(row: dict[str, Any]) -> bool:
    """Whether a query failed on the caller's input rather than on the model or the server."""
    return row["error"] is not None and row["error_type"] == REFUSED_ERROR_TYPE


def _decode_seconds(row: dict[str, Any]) -> float | None:
    """Seconds spent on the tokens after the first, or None when there were none."""
    tokens, ttft = row["completion_tokens"], row["time_to_first_token_ms"]
    if not tokens or tokens < 2 or ttft is None or row["latency_ms"] <= ttft:
        return None
    return (row["latency_ms"] - ttft) / 1000


def _decode_speed(rows: list[dict[str, Any]]) -> float | None:
    tokens, seconds = 0, 0.0
    for row in rows:
        spent = _decode_seconds(row)
        if spent is not None:
            tokens += row["completion_tokens"] - 1
            seconds += spent
    return _round(tokens / seconds, 2) if seconds > 0 else None


def _round(value: float, digits: int) -> float:
    return round(value, digits) if math.isfinite(value) else value


# --- comparisons --------------------------------------------------------------------------

_VALUE_OF: dict[str, Callable[[dict[str, Any]], float | None]] = {
    "latency_ms": lambda row: row["latency_ms"],
    "ttft_ms": lambda row: row["time_to_first_token_ms"],
    "tokens_in": lambda row: row["prompt_tokens"],
    "tokens_out": lambda row: row["completion_tokens"],
    "decode_tokens_per_s": lambda row: (
        (row["completion_tokens"] - 1) / spent if (spent := _decode_seconds(row)) else None
    ),
    "cost": lambda row: row["cost"] or 0.0,
}


def _samples(metric: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """A route's per-query values (value metrics) or its hits and rows (rate metrics)."""
    if metric == "error_rate":
        failed = sum(1 for row in rows if row["error"] is not None and not _refused(row))
        return {"hits": failed, "n": len(rows)}
    answered = [row for row in rows if row["error"] is None]
    if metric == "pii_rate":
        return {"hits": sum(1 for row in answered if row["pii"]), "n": len(answered)}
    values = [_VALUE_OF[metric](row) for row in answered]
    return {"values": [float(value) for value in values if value is not None]}


def _describe_sample(metric: str, sample: dict[str, Any], confidence: float) -> dict[str, Any]:
    if metric in RATE_METRICS:
        hits, n = sample["hits"], sample["n"]
        return {
            "n": n,
            "hits": hits,
            "value": _round(hits / n, 6) if n else None,
            "ci": [_round(bound, 6) for bound in stats.wilson_interval(hits, n, confidence)]
            if n
            else None,
        }
    values = sample["values"]
    if not values:
        return {"n": 0, "value": None, "median": None, "ci": None}
    array = np.asarray(values)
    low, high = stats.bootstrap_ci(
        len(array), lambda rows: float(array[rows].mean()), confidence=confidence
    )
    return {
        "n": len(values),
        "value": _round(float(array.mean()), 6),
        "median": _round(float(np.median(array)), 6),
        "ci": [_round(low, 6), _round(high, 6)],
    }


def _compare(
    metric: str,
    reference: str,
    version_id: str,
    samples: dict[str, dict[str, Any]],
    confidence: float,
) -> dict[str, Any]:
    """One challenger against the champion: difference (challenger - champion), interval, test."""
    base, other = samples[reference], samples[version_id]
    compared: dict[str, Any] = {"version_id": version_id, "reference": reference}
    if metric in RATE_METRICS:
        if not base["n"] or not other["n"]:
            return {**compared, **_too_few(metric, 1)}
        difference = other["hits"] / other["n"] - base["hits"] / base["n"]
        ci = stats.proportion_difference_interval(
            other["hits"], other["n"], base["hits"], base["n"], confidence
        )
        p_value = stats.fisher_exact(other["hits"], other["n"], base["hits"], base["n"])
        test = "fisher_exact"
    else:
        first, second = other["values"], base["values"]
        if min(len(first), len(second)) < MIN_VALUES_TO_COMPARE:
            return {**compared, **_too_few(metric, MIN_VALUES_TO_COMPARE)}
        difference = float(np.mean(first) - np.mean(second))
        ci = stats.unpaired_bootstrap_ci(first, second, confidence=confidence)
        p_value = stats.mann_whitney(first, second)["p_value"]
        test = "mann_whitney_u"
    return {
        **compared,
        "difference": _round(difference, 6),
        "ci": [_round(bound, 6) for bound in ci],
        "test": test,
        "p_value": p_value,
    }


def _too_few(metric: str, least: int) -> dict[str, Any]:
    counted = "queries" if metric == "error_rate" else "answered queries"
    return {
        "difference": None,
        "ci": None,
        "test": None,
        "p_value": None,
        "reason": f"each route needs at least {least} {counted} with a value to compare",
    }


def _adjust(comparisons: list[dict[str, Any]], alpha: float) -> None:
    """Holm-adjust the p-values of the comparisons that ran, and mark the significant ones."""
    tested = [comparison for comparison in comparisons if comparison["p_value"] is not None]
    adjusted = stats.holm([comparison["p_value"] for comparison in tested])
    for comparison, p_adjusted in zip(tested, adjusted, strict=True):
        comparison["p_adjusted"] = p_adjusted
        comparison["significant"] = p_adjusted < alpha
    for comparison in comparisons:
        comparison.setdefault("p_adjusted", None)
        comparison.setdefault("significant", False)
