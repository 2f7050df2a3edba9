"""Charts of training, evaluations and live traffic: their data, read from the registry and the
run folders, and one renderer that draws it as a PNG (matplotlib's Agg backend, no display).

The dashboard page and the `get_chart` MCP tool both go through `chart_data` and `render_png`,
so a chart looks the same wherever it is shown. Only what the caller's project may see is read.
"""

from __future__ import annotations

import io
import logging
import math
import sqlite3
import threading
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeGuard

import numpy as np

from turing.server import access
from turing.server.services import Services
from turing.tools import jobs
from turing.tools.deploy.versions import current_routes
from turing.tools.errors import InvalidInputError, NotFoundError
from turing.tools.query.traffic_metrics import REFUSED_ERROR_TYPE, parse_since

logger = logging.getLogger(__name__)

CHART_KINDS = ("loss", "eval", "traffic")
MAX_SERIES = 8  # runs on one loss chart, evaluations on one comparison
MAX_POINTS = 2000  # steps drawn per run; longer runs are thinned evenly
MAX_METRIC_PANELS = 4
MAX_BUCKETS = 60
MAX_TRAFFIC_ROWS = 200_000  # the newest queries of a window; older ones are left out and said so
DEFAULT_WINDOW = "24h"
# Bucket widths of the traffic chart in seconds: the smallest one giving at most MAX_BUCKETS.
BUCKET_WIDTHS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 86400)
# Matplotlib's tab10 colours: one per series, in order, on every chart.
PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
ROLE_COLOURS = {"model": PALETTE[0], "champion": PALETTE[1], "base": PALETTE[7]}
_RENDER_LOCK = threading.Lock()  # matplotlib's text and font caches are not thread-safe


# ---- Data ----


def chart_data(
    services: Services,
    kind: str,
    runs: list[str] | None = None,
    evals: list[str] | None = None,
    deployment: str | None = None,
    since: str | None = None,
    metric: str | None = None,
) -> dict[str, Any]:
    """The data one chart draws, as JSON-ready values.

    Args:
        services: The server's services.
        kind: "loss" (training and validation loss of runs), "eval" (scores with intervals of
            evaluations, per model scored) or "traffic" (a deployment's requests, latency,
            errors and cost per route over time).
        runs: For "loss": run ids; the newest runs with steps by default.
        evals: For "eval": eval ids; the newest finished evaluations by default.
        deployment: For "traffic": the deployment (required).
        since: For "traffic": the window start, ISO 8601 or a duration such as "15m";
            the last 24 hours by default.
        metric: For "eval": one metric to draw; the evaluations' task metrics by default.

    Raises:
        InvalidInputError: An unknown kind, or an argument the kind does not take.
        NotFoundError: A run, evaluation or deployment that does not exist (or belongs to
            another project).
    """
    if kind not in CHART_KINDS:
        raise InvalidInputError(f"kind={kind!r}: allowed kinds are {', '.join(CHART_KINDS)}")
    given = {"runs": runs, "evals": evals, "deployment": deployment, "since": since}
    given["metric"] = metric
    takes = {"loss": {"runs"}, "eval": {"evals", "metric"}, "traffic": {"deployment", "since"}}
    stray = [name for name, value in given.items() if value is not None and name not in takes[kind]]
    if stray:
        raise InvalidInputError(
            f"{', '.join(stray)} not used by a {kind!r} chart; it takes "
            f"{', '.join(sorted(takes[kind]))}"
        )
    if kind == "loss":
        return loss_data(services, runs)
    if kind == "eval":
        return eval_data(services, evals, metric)
    if deployment is None:
        raise InvalidInputError("a 'traffic' chart needs deployment=<name>")
    return traffic_data(services, deployment, since)


def loss_data(services: Services, run_ids: list[str] | None = None) -> dict[str, Any]:
    """Training loss per step and validation loss of runs: given ones, or the newest with steps."""
    if run_ids is not None:
        _check_ids("runs", run_ids)
        rows = [_visible_row(services, "runs", run_id, "run") for run_id in run_ids]
    else:
        newest = services.registry.rows("runs", order_by="created_at desc")
        rows = [row for row in newest if visible(row)]
    series = []
    for row in rows:
        found = _run_series(row)
        if found["steps"] or run_ids is not None:
            series.append(found)
        if len(series) == MAX_SERIES:
            break
    return {"kind": "loss", "runs": series}


def _run_series(row: dict[str, Any]) -> dict[str, Any]:
    """One run's steps and losses; a resumed run's repeated steps keep their newest value."""
    events = jobs.read_events(Path(row["folder"]))
    losses: dict[int, float] = {}
    validation: dict[int, float] = {}
    last: dict[str, Any] | None = None
    for event in events:
        if event.get("type") == "step" and _finite(event.get("loss")):
            losses[int(event["step"])] = float(event["loss"])
            last = event
        elif event.get("type") == "validation" and _finite(event.get("validation_loss")):
            validation[int(event["step"])] = float(event["validation_loss"])
    steps = _thin(sorted(losses))
    return {
        "run_id": row["id"],
        "status": row["status"],
        "base_model": row["base_model"],
        "dataset_id": row["dataset_id"],
        "total_steps": last["total_steps"] if last else None,
        "tokens_per_second": last.get("tokens_per_second") if last else None,
        "steps": steps,
        "loss": [losses[step] for step in steps],
        "validation_steps": sorted(validation),
        "validation_loss": [validation[step] for step in sorted(validation)],
    }


def eval_data(
    services: Services, eval_ids: list[str] | None = None, metric: str | None = None
) -> dict[str, Any]:
    """Scores with confidence intervals of each model an evaluation scored (model, base,
    champion), for given evaluations or the newest finished ones."""
    if eval_ids is not None:
        _check_ids("evals", eval_ids)
        rows = [services.registry.get("evals", eval_id, "eval") for eval_id in eval_ids]
        for row in rows:
            if not visible_eval(services, row):
                raise NotFoundError(f"no eval {row['id']!r}; list them to see what exists")
    else:
        finished = services.registry.rows(
            "evals", "status = 'succeeded'", order_by="created_at desc"
        )
        rows = [row for row in finished if visible_eval(services, row)][:MAX_SERIES]

    evaluations = []
    for row in rows:
        result = row["result"] or {}
        evaluations.append(
            {
                "eval_id": row["id"],
                "model": row["model"],
                "version_id": row.get("version_id"),
                "status": row["status"],
                "dataset_id": row["dataset_id"],
                "passed": (result.get("verdict") or {}).get("passed"),
                "metrics": list(result.get("metrics") or []),
                "scores": result.get("scores") or {},
            }
        )
    metrics = _eval_metrics(evaluations, metric)
    return {"kind": "eval", "metrics": metrics, "evals": evaluations}


def _eval_metrics(evaluations: list[dict[str, Any]], metric: str | None) -> list[str]:
    """The metrics to draw: the one asked for (it must be scored), else the task metrics."""
    scored = {name for found in evaluations for table in found["scores"].values() for name in table}
    if metric is not None:
        if evaluations and metric not in scored:
            raise InvalidInputError(
                f"metric={metric!r} is not among the scores of these evaluations: "
                f"{', '.join(sorted(scored)) or 'none'}"
            )
        return [metric]
    ordered: list[str] = []
    for found in evaluations:
        ordered += [name for name in found["metrics"] if name not in ordered and name in scored]
    return ordered[:MAX_METRIC_PANELS]


def traffic_data(services: Services, deployment: str, since: str | None = None) -> dict[str, Any]:
    """A deployment's live and shadow traffic per route over time: requests, errors, latency
    percentiles and cost in evenly wide buckets."""
    start = parse_since(since or DEFAULT_WINDOW)
    row = _visible_row(services, "deployments", deployment, "deployment")
    rows, truncated = _traffic_rows(services, deployment, start)
    width = _bucket_width(rows)
    routes = {
        (route.version_id, route.shadow): route.weight
        for route in current_routes(services, deployment)
    }
    grouped: dict[tuple[str, bool], list[tuple[Any, ...]]] = {key: [] for key in routes}
    for query in rows:
        grouped.setdefault((query[0] or "", bool(query[1])), []).append(query)

    slots = range(_slot(rows[0], width), _slot(rows[-1], width) + 1) if rows else range(0)
    series = []
    for (version_id, shadow), taken in grouped.items():
        weight = routes.get((version_id, shadow))
        series.append(
            {
                "version_id": version_id,
                "shadow": shadow,
                "weight": weight,
                "current": weight is not None,
                "label": _route_label(version_id, shadow, weight),
                "points": _buckets(taken, width, slots),
            }
        )
    return {
        "kind": "traffic",
        "deployment": deployment,
        "revision": row["revision"],
        "since": start,
        "bucket_seconds": width,
        "queries": len(rows),
        "truncated": truncated,
        "routes": series,
    }


def _traffic_rows(
    services: Services, deployment: str, start: str | None
) -> tuple[list[tuple[Any, ...]], bool]:
    """(version_id, shadow, created_at, latency_ms, error, error_type, cost) rows, oldest first."""
    services.telemetry.flush()
    where, params = "deployment = ?", [deployment]
    if start is not None:
        where, params = where + " AND created_at >= ?", [*params, start]
    path = services.workspace.registry_path
    # A read-only connection of its own: WAL lets it read while the registry's writes go on.
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        rows = conn.execute(
            "SELECT version_id, shadow, created_at, latency_ms, error, error_type, cost "
            f"FROM queries WHERE {where} ORDER BY id DESC LIMIT ?",
            [*params, MAX_TRAFFIC_ROWS + 1],
        ).fetchall()
    truncated = len(rows) > MAX_TRAFFIC_ROWS
    return rows[:MAX_TRAFFIC_ROWS][::-1], truncated


def _bucket_width(rows: list[tuple[Any, ...]]) -> int:
    if len(rows) < 2:
        return BUCKET_WIDTHS[0]
    span = (_moment(rows[-1][2]) - _moment(rows[0][2])).total_seconds()
    for width in BUCKET_WIDTHS:
        if span / width <= MAX_BUCKETS:
            return width
    return math.ceil(span / MAX_BUCKETS)


def _buckets(rows: list[tuple[Any, ...]], width: int, slots: range) -> list[dict[str, Any]]:
    """Per bucket of `slots` (bucket starts / width): its start, requests, errors (refusals of
    the caller's input excluded), error rate, p50 and p95 latency of answered requests, and
    cost. A bucket without requests has no rate or latency (None), so a line breaks there."""
    grouped: dict[int, list[tuple[Any, ...]]] = {slot: [] for slot in slots}
    for row in rows:
        grouped[_slot(row, width)].append(row)
    points = []
    for slot, found in grouped.items():
        errors = sum(1 for row in found if row[4] is not None and row[5] != REFUSED_ERROR_TYPE)
        latencies = [row[3] for row in found if row[4] is None and row[3] is not None]
        p50, p95 = np.percentile(latencies, (50, 95)) if latencies else (None, None)
        points.append(
            {
                "time": datetime.fromtimestamp(slot * width, UTC).isoformat(),
                "count": len(found),
                "errors": errors,
                "error_rate": round(errors / len(found), 6) if found else None,
                "latency_p50_ms": None if p50 is None else round(float(p50), 3),
                "latency_p95_ms": None if p95 is None else round(float(p95), 3),
                "cost": round(sum(row[6] or 0.0 for row in found), 8),
            }
        )
    return points


def _slot(row: tuple[Any, ...], width: int) -> int:
    return int(_moment(row[2]).timestamp()) // width


def _route_label(version_id: str, shadow: bool, weight: int | None) -> str:
    if shadow:
        return f"{version_id} (shadow)"
    return f"{version_id} ({weight}%)" if weight is not None else f"{version_id} (earlier)"


# ---- Visibility ----


def visible(row: dict[str, Any], project: str | None = None) -> bool:
    """Whether a project ("*": every one) may see a row; the caller's project unless given."""
    if project is None:
        return access.visible(row.get("project"))
    return (
        project == access.EVERY_PROJECT or (row.get("project") or access.DEFAULT_PROJECT) == project
    )


def visible_eval(services: Services, row: dict[str, Any], project: str | None = None) -> bool:
    """An evaluation belongs to the project of the dataset it scored."""
    dataset = services.registry.find("datasets", row["dataset_id"]) if row["dataset_id"] else None
    return visible(dataset or {}, project)


def _visible_row(services: Services, table: str, key: str, what: str) -> dict[str, Any]:
    row = services.registry.get(table, key, what)
    if not visible(row):  # another project's object is as unknown as a missing one
        raise NotFoundError(f"no {what} {key!r}; list them to see what exists")
    return row


def _check_ids(name: str, ids: list[str]) -> None:
    if not isinstance(ids, list) or not all(isinstance(item, str) for item in ids):
        raise InvalidInputError(f'{name} must be a list of ids, e.g. ["{name[:-1]}-0123456789"]')
    if not 1 <= len(ids) <= MAX_SERIES:
        raise InvalidInputError(f"{name}: give 1 to {MAX_SERIES} ids, not {len(ids)}")


# ---- Rendering ----


def render_png(data: dict[str, Any]) -> bytes:
    """Draw a chart's data (from `chart_data`) as a PNG image."""
    # Imported here: matplotlib takes a moment to load, and the server starts without it.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    draw = {"loss": _draw_loss, "eval": _draw_eval, "traffic": _draw_traffic}[data["kind"]]
    with _RENDER_LOCK:
        figure = Figure(figsize=(9, 4.6), dpi=100, layout="constrained")
        FigureCanvasAgg(figure)
        draw(figure, data)
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", facecolor="white")
    return buffer.getvalue()


def chart_png(services: Services, kind: str, **arguments: Any) -> tuple[bytes, dict[str, Any]]:
    """A chart's PNG and the data drawn in it; the arguments are `chart_data`'s."""
    data = chart_data(services, kind, **arguments)
    return render_png(data), data


def describe(data: dict[str, Any]) -> str:
    """A few lines saying what a chart shows, for a reader that cannot see the image."""
    if data["kind"] == "loss":
        lines = [f"Training loss of {len(data['runs'])} run(s)."]
        for run in data["runs"]:
            last = (
                f"loss {run['loss'][-1]:.4f} at step {run['steps'][-1]}"
                if run["steps"]
                else "no steps"
            )
            validation = run["validation_loss"]
            checked = f", validation loss {validation[-1]:.4f}" if validation else ""
            lines.append(
                f"{run['run_id']} ({run['status']}): {last} of {run['total_steps']}{checked}"
            )
        return "\n".join(lines)
    if data["kind"] == "eval":
        lines = [f"Scores of {len(data['evals'])} evaluation(s): {', '.join(data['metrics'])}."]
        for found in data["evals"]:
            for role, table in found["scores"].items():
                scores = ", ".join(
                    f"{metric} {table[metric]['value']}" + _interval(table[metric].get("ci"))
                    for metric in data["metrics"]
                    if metric in table
                )
                lines.append(f"{found['eval_id']} {_scored_name(found, role)}: {scores}")
        return "\n".join(lines)
    lines = [
        f"Traffic of {data['deployment']} (revision {data['revision']}) since {data['since']}: "
        f"{data['queries']} queries in {data['bucket_seconds']} s buckets."
    ]
    for route in data["routes"]:
        points = route["points"]
        count = sum(point["count"] for point in points)
        errors = sum(point["errors"] for point in points)
        cost = sum(point["cost"] for point in points)
        lines.append(f"{route['label']}: {count} queries, {errors} errors, cost {cost:.6g}")
    return "\n".join(lines)


def _interval(ci: list[float] | None) -> str:
    return f" [{ci[0]}, {ci[1]}]" if ci else ""


def _draw_loss(figure: Any, data: dict[str, Any]) -> None:
    axes = figure.add_subplot()
    axes.set_title("Training loss")
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    drawn = False
    for index, run in enumerate(data["runs"]):
        colour = PALETTE[index % len(PALETTE)]
        if run["steps"]:
            label = f"{run['run_id']} ({run['status']})"
            axes.plot(run["steps"], run["loss"], color=colour, linewidth=2, label=label)
            drawn = True
        if run["validation_steps"]:
            axes.plot(
                run["validation_steps"],
                run["validation_loss"],
                color=colour,
                linestyle="--",
                marker="o",
                label=f"{run['run_id']} validation",
            )
    _finish(axes, drawn, "no training steps recorded yet")


def _draw_eval(figure: Any, data: dict[str, Any]) -> None:
    metrics, evaluations = data["metrics"], data["evals"]
    if not metrics:
        axes = figure.add_subplot()
        axes.set_title("Evaluation scores")
        _finish(axes, False, "no finished evaluation with scores yet")
        return
    figure.suptitle("Evaluation scores with 95% intervals")
    entries = [
        (f"{found['eval_id']} {_scored_name(found, role)}", role, table)
        for found in evaluations
        for role, table in found["scores"].items()
    ]
    panels = figure.subplots(1, len(metrics), sharey=True, squeeze=False)[0]
    for axes, metric in zip(panels, metrics, strict=True):
        axes.set_title(metric)
        for position, (_, role, table) in enumerate(entries):
            score = table.get(metric)
            if score is None or not _finite(score.get("value")):
                continue
            value, interval = float(score["value"]), score.get("ci")
            error = None
            if interval and all(_finite(bound) for bound in interval):
                error = [[max(0.0, value - interval[0])], [max(0.0, interval[1] - value)]]
            colour = ROLE_COLOURS.get(role, PALETTE[4])
            axes.barh(position, value, xerr=error, color=colour, capsize=4, height=0.6)
            axes.annotate(
                f"{value:.3g}",
                (value, position),
                xytext=(4, 6),
                textcoords="offset points",
                fontsize=8,
            )
        axes.set_yticks(range(len(entries)), [label for label, _, _ in entries])
        axes.invert_yaxis()
        axes.set_xlim(left=0)
        axes.grid(axis="x", alpha=0.3)


def _scored_name(found: dict[str, Any], role: str) -> str:
    if role.startswith("model"):
        name = found["version_id"] or found["model"]
        return f"{name} (torch)" if role != "model" else name
    return role


def _draw_traffic(figure: Any, data: dict[str, Any]) -> None:
    import matplotlib.dates as dates

    figure.suptitle(
        f"{data['deployment']} (revision {data['revision']}): traffic per route, "
        f"{data['bucket_seconds']} s buckets"
    )
    panels = figure.subplots(2, 2, sharex=True).flatten()
    titles = ("requests", "latency p95 ms (p50 dashed)", "error rate %", "cost")
    for axes, title in zip(panels, titles, strict=True):
        axes.set_title(title, fontsize=10)
        axes.grid(alpha=0.3)
    drawn = False
    for index, route in enumerate(data["routes"]):
        points = route["points"]
        if not points:
            continue
        drawn = True
        colour = PALETTE[index % len(PALETTE)]
        style = {"color": colour, "marker": "o", "markersize": 4, "linewidth": 2}
        times = [datetime.fromisoformat(point["time"]) for point in points]
        panels[0].plot(times, [p["count"] for p in points], label=route["label"], **style)
        panels[1].plot(times, _values(points, "latency_p95_ms"), **style)
        panels[1].plot(times, _values(points, "latency_p50_ms"), **{**style, "linestyle": "--"})
        panels[2].plot(times, [100 * rate for rate in _values(points, "error_rate")], **style)
        panels[3].plot(times, [p["cost"] for p in points], **style)
    if not drawn:
        for axes in panels:
            axes.set_xticks([])
        panels[0].text(
            0.5, 0.5, "no queries in this window", ha="center", transform=panels[0].transAxes
        )
        return
    # A window of one bucket would make the date axis span years: pad it by a bucket each side.
    times = [datetime.fromisoformat(p["time"]) for r in data["routes"] for p in r["points"]]
    pad = timedelta(seconds=data["bucket_seconds"])
    locator = dates.AutoDateLocator()
    for axes in panels:
        axes.set_xlim(min(times) - pad, max(times) + pad)
        axes.xaxis.set_major_locator(locator)
        axes.xaxis.set_major_formatter(dates.ConciseDateFormatter(locator))
        axes.set_ylim(bottom=0)
    panels[2].set_ylim(top=max(1.0, panels[2].get_ylim()[1]))  # an error-free route sits at 0
    handles, labels = panels[0].get_legend_handles_labels()
    figure.legend(
        handles, labels, loc="outside lower center", ncols=min(4, len(labels)), fontsize=8
    )


def _values(points: list[dict[str, Any]], key: str) -> list[float]:
    return [math.nan if point[key] is None else point[key] for point in points]


def _finish(axes: Any, drawn: bool, empty: str) -> None:
    if drawn:
        axes.legend(fontsize=8)
        axes.grid(alpha=0.3)
    else:
        axes.text(0.5, 0.5, empty, ha="center", va="center", transform=axes.transAxes)
        axes.set_xticks([])
        axes.set_yticks([])


# ---- Helpers ----


def _thin(steps: list[int]) -> list[int]:
    """At most MAX_POINTS steps, evenly spread, always keeping the last."""
    if len(steps) <= MAX_POINTS:
        return steps
    every = math.ceil(len(steps) / MAX_POINTS)
    kept = steps[::every]
    return kept if kept[-1] == steps[-1] else [*kept, steps[-1]]


def _moment(stamp: str) -> datetime:
    moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _finite(value: Any) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
