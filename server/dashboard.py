"""The monitoring dashboard of the HTTP server: a page shell that holds no data, and the JSON and
PNG routes its script reads with the caller's bearer token.

The page (`/dashboard`) is static and needs no token; it reads one from its URL fragment
(`/dashboard#token=...`, never sent to the server), keeps it in the tab's session storage and
sends it as `Authorization: Bearer` on every data request. The data routes answer only a request
the HTTP layer has authenticated (a principal in the ASGI scope), within the caller's project.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from turing.server import access
from turing.server.services import Services
from turing.tools import charts, monitoring
from turing.tools.errors import ConflictError, InvalidInputError, NotFoundError, TuringError

logger = logging.getLogger(__name__)

PAGE_PATH = "/dashboard"  # the page shell: public, holds no data
PUBLIC_PATHS = frozenset({PAGE_PATH})  # served without a token by the HTTP layer
API_PREFIX = "/dashboard/api"
RENDER_THREADS = 2  # charts drawn at once; each takes a core for a fraction of a second
NO_STORE = {"cache-control": "no-store"}
CHART_FORMATS = ("png", "json")


def routes(services: Services) -> list[Route]:
    """The dashboard's routes: the page shell, then the data routes that need a principal."""
    limiter = anyio.CapacityLimiter(RENDER_THREADS)

    async def page(request: Request) -> Response:
        nonce = secrets.token_urlsafe(16)
        return Response(
            PAGE.replace("{nonce}", nonce),
            media_type="text/html; charset=utf-8",
            headers={**page_headers(nonce), **NO_STORE},
        )

    async def overview(request: Request) -> Response:
        since = request.query_params.get("since")
        return await _answer(request, limiter, lambda: monitoring.overview(services, since))

    async def chart(request: Request) -> Response:
        kind, form = request.path_params["kind"], request.path_params["format"]

        def draw() -> Any:
            if form not in CHART_FORMATS:
                raise NotFoundError(f"no chart format {form!r}; ask for {kind}.png or {kind}.json")
            arguments = chart_arguments(request.query_params)
            if form == "json":
                return charts.chart_data(services, kind, **arguments)
            return charts.chart_png(services, kind, **arguments)[0]

        return await _answer(request, limiter, draw)

    return [
        Route(PAGE_PATH, page, methods=["GET"]),
        Route(f"{API_PREFIX}/overview", overview, methods=["GET"]),
        Route(f"{API_PREFIX}/charts/{{kind}}.{{format:str}}", chart, methods=["GET"]),
    ]


def page_headers(nonce: str) -> dict[str, str]:
    """Headers of the page: its own script and style only, images from itself or blobs."""
    policy = (
        f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
        "img-src 'self' blob:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )
    return {
        "content-security-policy": policy,
        "referrer-policy": "no-referrer",
        "x-content-type-options": "nosniff",
        "x-frame-options": "DENY",
    }


def chart_arguments(query: Any) -> dict[str, Any]:
    """`chart_data` arguments from a query string: run=..&run=.., eval=.., deployment, since,
    metric (a name given twice, or one that no chart takes, is refused)."""
    lists = {"run": "runs", "eval": "evals"}
    single = ("deployment", "since", "metric")
    unknown = sorted(set(query.keys()) - set(lists) - set(single))
    if unknown:
        allowed = ", ".join([*lists, *single])
        raise InvalidInputError(f"unknown parameter(s) {', '.join(unknown)}; allowed: {allowed}")
    arguments: dict[str, Any] = {name: query.getlist(key) or None for key, name in lists.items()}
    for name in single:
        values = query.getlist(name)
        if len(values) > 1:
            raise InvalidInputError(f"{name} given {len(values)} times; give it once")
        arguments[name] = values[0] if values else None
    return arguments


async def _answer(
    request: Request, limiter: anyio.CapacityLimiter, work: Callable[[], Any]
) -> Response:
    """Run `work` off the event loop as the request's principal; answer JSON or a PNG."""
    principal = request.scope.get("state", {}).get(access.SCOPE_KEY)
    if not isinstance(principal, access.Principal):
        # Mounted without the HTTP layer's authentication: refuse rather than serve data.
        return _error(401, "a bearer token is required: Authorization: Bearer <token>")
    try:
        with access.calling_as(principal):
            found = await anyio.to_thread.run_sync(work, limiter=limiter)
    except TuringError as exc:
        return _error(_status(exc), str(exc))
    if isinstance(found, bytes):
        return Response(found, media_type="image/png", headers=NO_STORE)
    return JSONResponse(found, headers=NO_STORE)


def _status(exc: TuringError) -> int:
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, ConflictError):
        return 409
    return 400


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message}}, status_code=status, headers=NO_STORE)


# The page shell. It holds no data: everything shown is fetched with the caller's token and put
# in place with textContent, so a name from the registry can never become markup.
PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>Turing dashboard</title>
<style nonce="{nonce}">
  body { font: 14px/1.4 system-ui, sans-serif; margin: 0; color: #1d232b; background: #f4f6f8; }
  header { display: flex; gap: 16px; align-items: baseline; padding: 12px 24px;
           background: #1d232b; color: #fff; }
  header h1 { font-size: 18px; margin: 0; }
  #status { color: #c9d1d9; }
  main { padding: 8px 24px 24px; max-width: 1200px; }
  section { background: #fff; border-radius: 6px; padding: 12px 16px; margin: 16px 0;
            box-shadow: 0 1px 2px rgba(0,0,0,.1); }
  h2 { font-size: 16px; margin: 4px 0 8px; }
  h3 { font-size: 14px; margin: 12px 0 4px; }
  img.chart { display: block; width: 100%; max-width: 900px; min-height: 40px; }
  table { border-collapse: collapse; margin: 8px 0; font-variant-numeric: tabular-nums; }
  th, td { text-align: left; padding: 3px 10px 3px 0; border-bottom: 1px solid #e3e7eb; }
  th { color: #57606a; font-weight: 600; }
  .empty { color: #57606a; font-style: italic; }
  .error { color: #b42318; }
  code { background: #eef1f4; padding: 1px 4px; border-radius: 3px; }
</style>
</head>
<body>
<header><h1>Turing</h1><span id="status">loading&hellip;</span></header>
<main>
  <section id="auth-help" hidden>
    <h2>A token is needed</h2>
    <p>Open this page as <code>/dashboard#token=YOUR_TOKEN</code>. Create a token with
    <code>turing token create --name me --role viewer</code>. The part after <code>#</code>
    stays in your browser: it is sent only as an <code>Authorization</code> header.</p>
  </section>
  <section id="training">
    <h2>Training</h2>
    <img class="chart" id="chart-loss" alt="Training loss of recent runs">
    <table id="runs"></table>
  </section>
  <section id="evaluations">
    <h2>Evaluations</h2>
    <img class="chart" id="chart-eval" alt="Evaluation scores with intervals">
    <table id="evals"></table>
  </section>
  <section id="deployments">
    <h2>Deployments</h2>
    <div id="deployment-list"></div>
  </section>
</main>
<script nonce="{nonce}">
(() => {
  "use strict";
  const STORE_KEY = "turing-dashboard-token";
  const REFRESH_MS = 15000;
  const API = "/dashboard/api";
  const status = document.getElementById("status");

  // The fragment holds the token and, optionally, the traffic window: #token=...&since=24h.
  // The token is moved to this tab's session storage and taken out of the address bar.
  const fragment = new URLSearchParams(location.hash.slice(1));
  const since = fragment.get("since") || "";
  function readToken() {
    const fromHash = fragment.get("token");
    if (!fromHash) return sessionStorage.getItem(STORE_KEY);
    sessionStorage.setItem(STORE_KEY, fromHash);
    fragment.delete("token");
    const rest = fragment.toString();
    history.replaceState(null, "", location.pathname + location.search + (rest ? "#" + rest : ""));
    return fromHash;
  }

  const token = readToken();
  const windowQuery = since ? "?since=" + encodeURIComponent(since) : "";

  class HttpError extends Error {
    constructor(response, message) { super(message); this.status = response.status; }
  }

  async function get(path) {
    const response = await fetch(path, {
      headers: { Authorization: "Bearer " + token }, cache: "no-store",
    });
    if (!response.ok) {
      let message = response.status + " " + response.statusText;
      try { message = (await response.json()).error.message || message; } catch (_) { }
      throw new HttpError(response, message);
    }
    return response;
  }

  async function loadChart(img, path) {
    const blob = await (await get(path)).blob();
    const url = URL.createObjectURL(blob);
    await new Promise((resolve, reject) => {
      img.onload = resolve;
      img.onerror = () => reject(new Error("the chart " + path + " is not an image"));
      const previous = img.dataset.url;
      img.src = url;
      img.dataset.url = url;
      if (previous) URL.revokeObjectURL(previous);
    });
    img.dataset.loaded = "true";
  }

  function text(value, digits) {
    if (value === null || value === undefined) return "\\u2013";
    if (typeof value === "number" && digits !== undefined) return value.toFixed(digits);
    return String(value);
  }

  function fillTable(table, headings, rows, emptyText) {
    table.replaceChildren();
    if (!rows.length) {
      const cell = table.insertRow().insertCell();
      cell.textContent = emptyText;
      cell.className = "empty";
      return;
    }
    const head = table.createTHead().insertRow();
    for (const heading of headings) {
      const th = document.createElement("th");
      th.textContent = heading;
      head.appendChild(th);
    }
    const body = table.createTBody();
    for (const values of rows) {
      const row = body.insertRow();
      for (const value of values) row.insertCell().textContent = value;
    }
  }

  function showRuns(runs) {
    fillTable(document.getElementById("runs"),
      ["run", "status", "step", "loss", "validation loss", "tokens/s", "ETA s"],
      runs.map(run => [run.run_id, run.status,
        run.step === null ? "\\u2013" : run.step + "/" + run.total_steps,
        text(run.loss, 4), text(run.validation_loss, 4), text(run.tokens_per_second, 0),
        text(run.eta_seconds, 0)]),
      "No runs yet.");
  }

  function showEvals(evals) {
    fillTable(document.getElementById("evals"),
      ["eval", "status", "model", "gate", "verdict", "scores (95% interval)"],
      evals.map(found => [found.eval_id, found.status, found.version_id || found.model,
        found.gate || "\\u2013",
        found.passed === null ? "\\u2013" : (found.passed ? "passed" : "failed"),
        Object.entries(found.scores).map(([metric, score]) => metric + " " + score.value +
          (score.ci ? " [" + score.ci[0] + ", " + score.ci[1] + "]" : "")).join("; ")]),
      "No evaluations yet.");
  }

  function showDeployments(deployments, span) {
    const list = document.getElementById("deployment-list");
    list.replaceChildren();
    if (!deployments.length) {
      const note = document.createElement("p");
      note.className = "empty";
      note.textContent = "No deployments yet.";
      list.appendChild(note);
      return [];
    }
    const charts = [];
    for (const deployment of deployments) {
      const block = document.createElement("div");
      block.className = "deployment";
      block.dataset.deployment = deployment.deployment;
      const title = document.createElement("h3");
      title.textContent = deployment.deployment + " \\u00b7 revision " + deployment.revision +
        (deployment.environment ? " \\u00b7 " + deployment.environment : "") +
        " \\u00b7 window " + span;
      const table = document.createElement("table");
      const row = (label, weight, found) => [label, weight, found.count, found.errors,
        found.error_rate === null ? "\\u2013" : (100 * found.error_rate).toFixed(1) + "%",
        text(found.latency_p50_ms, 1), text(found.latency_p95_ms, 1), text(found.cost, 6)];
      // The routes of the current revision, then every live query of the window, whichever
      // revision served it (a canary rolled back since counts there).
      fillTable(table,
        ["route", "weight", "queries", "errors", "error rate", "p50 ms", "p95 ms", "cost"],
        deployment.routes.map(route => row(route.version_id + (route.shadow ? " (shadow)" : ""),
          route.shadow ? "shadow" : route.weight + "%", route)).concat(
          deployment.routes.length ? [row("all live traffic", "", deployment.live)] : []),
        "No routes.");
      const img = document.createElement("img");
      img.className = "chart traffic";
      img.alt = "Traffic of " + deployment.deployment;
      block.append(title, table, img);
      list.appendChild(block);
      charts.push([img, API + "/charts/traffic.png?deployment=" +
        encodeURIComponent(deployment.deployment) + "&since=" + encodeURIComponent(span)]);
    }
    return charts;
  }

  async function refresh() {
    try {
      const data = await (await get(API + "/overview" + windowQuery)).json();
      showRuns(data.runs);
      showEvals(data.evals);
      const charts = [
        [document.getElementById("chart-loss"), API + "/charts/loss.png"],
        [document.getElementById("chart-eval"), API + "/charts/eval.png"],
        ...showDeployments(data.deployments, data.window),
      ];
      const results = await Promise.allSettled(charts.map(([img, path]) => loadChart(img, path)));
      const failed = results.filter(result => result.status === "rejected");
      status.className = failed.length ? "error" : "";
      status.textContent = "project " + data.project + " \\u00b7 updated " +
        new Date().toLocaleTimeString() + " \\u00b7 " + (charts.length - failed.length) + "/" +
        charts.length + " charts" +
        (failed.length ? " \\u00b7 " + failed[0].reason.message : "");
      document.body.dataset.state = failed.length ? "partial" : "ready";
    } catch (error) {
      status.className = "error";
      status.textContent = error.message;
      document.body.dataset.state = "error";
      if (error.status === 401) {
        document.getElementById("auth-help").hidden = false;
        return;
      }
    }
    setTimeout(refresh, REFRESH_MS);
  }

  if (!token) {
    document.getElementById("auth-help").hidden = false;
    status.textContent = "no token";
    document.body.dataset.state = "no-token";
  } else {
    refresh();
  }
})();
</script>
</body>
</html>
"""
