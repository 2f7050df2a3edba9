"""Monitoring: the Prometheus exposition, the charts, the get_chart MCP tool and the dashboard
page in headless Chromium, over one workspace holding a real tiny training run, an evaluation
and real queries on a deployment with a healthy route and one that cannot answer."""

from __future__ import annotations

import base64
import io
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2 as httpx
import numpy as np
import pytest
from mcp import Client
from mcp.types import ImageContent, TextContent
from PIL import Image

from tests.helpers import skip_if_missing, write_jsonl
from tests.server.test_lifecycle import ticket_rows
from tests.server.test_remote import closed_port
from turing.server import access
from turing.server.auth import create_token
from turing.server.http_api import HttpServer
from turing.server.quickstart import server_parameters
from turing.server.services import Services
from turing.server.workspace import Workspace
from turing.tools import charts, monitoring
from turing.tools.base_models import register_base_model
from turing.tools.datasets.store import create_dataset
from turing.tools.deploy import versions
from turing.tools.deploy.remote import register_remote_version
from turing.tools.deploy.traffic import canary
from turing.tools.errors import InvalidInputError, NotFoundError, UpstreamError
from turing.tools.evals import evals
from turing.tools.finetune import runs
from turing.tools.query import serve
from turing.tools.query.telemetry import set_pricing
from turing.tools.query.traffic_metrics import prometheus_text

ASK = [{"role": "user", "content": "my invoice shows the wrong amount"}]
QUERIES = 16
CANARY_PERCENT = 25
EPOCHS, BATCH_SIZE = 3, 4  # 12 training rows: 3 steps an epoch
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
BLUE, ORANGE = (0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E)  # the first two chart colours
WINDOW = (1280, 2200)


@dataclass
class Monitored:
    """A workspace with something to monitor, and the ids of what is in it."""

    services: Services
    home: Path
    run_id: str
    version_id: str
    broken_id: str
    eval_id: str
    failed: int  # queries routed to the broken route


def wait_for(check: Callable[[], bool], what: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout} s"
        time.sleep(0.3)


@pytest.fixture(scope="module")
def monitored(tmp_path_factory: pytest.TempPathFactory, tiny_base: Path) -> Iterator[Monitored]:
    root = tmp_path_factory.mktemp("monitored")
    services = Services.open(Workspace(root / "home", root / "cache"))
    try:
        # A run of the tiny model, exported, deployed and priced.
        register_base_model(services, "tiny", str(tiny_base))
        data = write_jsonl(root / "tickets.jsonl", ticket_rows())
        dataset = create_dataset(services, str(data), base_model="tiny", validation_fraction=0.34)
        params = {"epochs": EPOCHS, "batch_size": BATCH_SIZE, "learning_rate": 0.01}
        run_id = runs.start_run(services, dataset["dataset_id"], "tiny", params)["run_id"]

        def ended() -> bool:
            runs.advance(services)  # the scheduler's tick
            return runs.get_run(services, run_id)["status"] in ("succeeded", "failed")

        wait_for(ended, f"run {run_id} ending")
        assert runs.get_run(services, run_id)["status"] == "succeeded"
        version = versions.export_run(services, run_id)["id"]
        versions.deploy(services, version, "triage")
        set_pricing(services, "triage", 0.002)
        eval_id = evals.start_eval(services, version, {"dataset_id": dataset["dataset_id"]})[
            "eval_id"
        ]

        # A canary that cannot answer: a remote version at a loopback port nobody listens on.
        endpoint = f"http://127.0.0.1:{closed_port()}/v1"
        broken = register_remote_version(services, endpoint, "tiny", "tiny", check=False)["id"]
        canary(services, "triage", broken, CANARY_PERCENT, reason="a route that fails")
        failed = 0
        for index in range(QUERIES):  # spread over a few seconds: a few points on the chart
            try:
                serve.query_model(services, "triage", ASK, max_tokens=4, routing_key=f"u{index}")
            except UpstreamError:
                failed += 1
            time.sleep(0.15)
        assert 0 < failed < QUERIES

        wait_for(
            lambda: evals.get_eval(services, eval_id)["status"] not in ("running", "cancelling"),
            f"eval {eval_id} ending",
        )
        assert evals.get_eval(services, eval_id)["status"] == "succeeded"
        yield Monitored(services, root / "home", run_id, version, broken, eval_id, failed)
    finally:
        services.close()


@dataclass
class Http:
    url: str
    secret: str  # a viewer of every project
    other_secret: str  # a viewer of a project that holds nothing


@pytest.fixture(scope="module")
def http(monitored: Monitored) -> Iterator[Http]:
    services = monitored.services
    _, secret = create_token(services, "dashboard", "viewer", "*")
    _, other = create_token(services, "elsewhere", "viewer", "other")
    server = HttpServer(services, "127.0.0.1", 0)
    server.start()
    try:
        yield Http(f"http://127.0.0.1:{server.port}", secret, other)
    finally:
        server.stop()


def bearer(secret: str) -> dict[str, str]:
    return {"authorization": f"Bearer {secret}"}


# ---- Prometheus ----


def samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Every sample of an exposition by name, parsed as Prometheus's own client parses it."""
    parser = pytest.importorskip("prometheus_client.parser")
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in parser.text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def families(text: str) -> dict[str, str]:
    parser = pytest.importorskip("prometheus_client.parser")
    return {family.name: family.type for family in parser.text_string_to_metric_families(text)}


def value(found: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    """The one sample of `name` whose labels include `labels`."""
    matching = [number for have, number in found.get(name, []) if labels.items() <= have.items()]
    assert len(matching) == 1, f"{name} samples with {labels}: {found.get(name)}"
    return matching[0]


def test_metrics_carry_traffic_latency_training_eval_and_deployment_series(
    monitored: Monitored, http: Http
) -> None:
    scraped = httpx.get(f"{http.url}/metrics", headers=bearer(http.secret), timeout=60)
    assert scraped.status_code == 200
    assert scraped.headers["content-type"].startswith("text/plain; version=0.0.4")
    kinds = families(scraped.text)
    assert kinds["turing_queries"] == "counter"
    assert kinds["turing_query_latency_seconds"] == "histogram"
    assert kinds["turing_run_step"] == kinds["turing_eval_score"] == "gauge"
    found = samples(scraped.text)

    # Traffic: every query, its errors on the route that failed, the cost, the histogram.
    live = {"deployment": "triage", "traffic": "live"}
    good, bad = monitored.version_id, monitored.broken_id
    answered = QUERIES - monitored.failed
    assert value(found, "turing_queries_total", **live, version=good) == answered
    assert value(found, "turing_queries_total", **live, version=bad) == monitored.failed
    assert value(found, "turing_query_errors_total", **live, version=bad) == monitored.failed
    assert value(found, "turing_cost_total", **live, version=good) > 0
    buckets = [
        (float(labels["le"]), number)
        for labels, number in found["turing_query_latency_seconds_bucket"]
        if labels["version"] == good
    ]
    counts = [number for _, number in sorted(buckets)]
    assert counts == sorted(counts) and counts[-1] == answered  # cumulative, +Inf = all
    assert value(found, "turing_query_latency_seconds_count", version=good) == answered
    assert value(found, "turing_query_latency_seconds_sum", version=good) > 0

    # Training progress of the finished run.
    run = {"run": monitored.run_id}
    total = EPOCHS * 3
    assert value(found, "turing_run_step", **run) == value(found, "turing_run_total_steps", **run)
    assert value(found, "turing_run_total_steps", **run) == total
    assert 0 < value(found, "turing_run_loss", **run) < 20
    assert value(found, "turing_run_validation_loss", **run) > 0
    assert value(found, "turing_run_tokens_per_second", **run) > 0
    assert value(found, "turing_run_status", **run, status="succeeded") == 1
    assert value(found, "turing_runs", status="succeeded") == 1
    assert value(found, "turing_run_info", **run, base_model="tiny", project="default") == 1

    # Scores with their intervals, for the model and the base it was compared with.
    for role in ("model", "base"):
        scored = {"eval": monitored.eval_id, "role": role, "metric": "accuracy"}
        low = value(found, "turing_eval_score_ci_low", **scored)
        high = value(found, "turing_eval_score_ci_high", **scored)
        assert low <= value(found, "turing_eval_score", **scored) <= high

    # The deployment: the canary's revision and its weights.
    assert value(found, "turing_deployment_revision", deployment="triage") == 2
    weights = {
        labels["version"]: number for labels, number in found["turing_deployment_route_weight"]
    }
    assert weights == {good: 100 - CANARY_PERCENT, bad: CANARY_PERCENT}


def test_metrics_of_a_project_leave_out_every_other_project(
    monitored: Monitored, http: Http
) -> None:
    scraped = httpx.get(f"{http.url}/metrics", headers=bearer(http.other_secret), timeout=60)
    found = samples(scraped.text)
    assert value(found, "turing_runs", status="succeeded") == 0
    for name in ("turing_queries_total", "turing_run_step", "turing_eval_score"):
        assert name not in found
    assert "turing_deployment_revision" not in found
    # Outside any request the caller is the local user, who sees every project.
    assert "turing_run_step" in samples(prometheus_text(monitored.services))


# ---- Charts ----


def colour_pixels(png: bytes, colour: tuple[int, int, int], tolerance: int = 24) -> int:
    """How many pixels of an image are within `tolerance` of a colour on every channel."""
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    return int((np.abs(pixels - np.array(colour)).max(axis=2) <= tolerance).sum())


def test_charts_draw_the_recorded_training_evaluation_and_traffic(monitored: Monitored) -> None:
    services = monitored.services
    png, loss = charts.chart_png(services, "loss", runs=[monitored.run_id])
    (run,) = loss["runs"]
    assert run["steps"] == list(range(1, EPOCHS * 3 + 1)) and run["status"] == "succeeded"
    assert len(run["loss"]) == len(run["steps"]) and run["validation_loss"]
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert Image.open(io.BytesIO(png)).size == (900, 460)
    assert colour_pixels(png, BLUE) > 500  # the loss curve

    png, scores = charts.chart_png(services, "eval")
    (found,) = scores["evals"]
    assert found["eval_id"] == monitored.eval_id and set(found["scores"]) == {"model", "base"}
    assert "accuracy" in scores["metrics"]
    assert colour_pixels(png, BLUE) > 500  # the model's bars

    png, traffic = charts.chart_png(services, "traffic", deployment="triage", since="1h")
    routes = {route["version_id"]: route for route in traffic["routes"]}
    assert set(routes) == {monitored.version_id, monitored.broken_id}
    good, bad = routes[monitored.version_id], routes[monitored.broken_id]
    assert good["weight"] == 100 - CANARY_PERCENT and bad["weight"] == CANARY_PERCENT
    assert traffic["queries"] == QUERIES and traffic["bucket_seconds"] == 1
    assert [point["time"] for point in good["points"]] == [p["time"] for p in bad["points"]]
    assert sum(point["count"] for point in bad["points"]) == monitored.failed
    assert sum(point["errors"] for point in bad["points"]) == monitored.failed
    assert sum(point["errors"] for point in good["points"]) == 0
    for point in good["points"] + bad["points"]:  # a bucket without queries has no rate
        assert (point["error_rate"] is None) == (point["count"] == 0)
    assert all(point["error_rate"] == 1 for point in bad["points"] if point["count"])
    assert all(point["latency_p95_ms"] is None for point in bad["points"])
    answered = [point for point in good["points"] if point["count"]]
    assert all(point["latency_p95_ms"] >= point["latency_p50_ms"] > 0 for point in answered)
    assert colour_pixels(png, BLUE) > 300 and colour_pixels(png, ORANGE) > 100
    assert f"{monitored.failed} queries, {monitored.failed} errors" in charts.describe(traffic)


@pytest.fixture
def empty(tmp_path: Path) -> Iterator[Services]:
    services = Services.open(Workspace(tmp_path / "home", tmp_path / "cache"))
    yield services
    services.close()


@pytest.mark.parametrize(
    ("kind", "arguments", "error", "message"),
    [
        ("pie", {}, InvalidInputError, "kind='pie': allowed kinds are loss, eval, traffic"),
        ("loss", {"deployment": "triage"}, InvalidInputError, "deployment not used by a 'loss'"),
        ("traffic", {}, InvalidInputError, "a 'traffic' chart needs deployment=<name>"),
        ("traffic", {"deployment": "nowhere"}, NotFoundError, "no deployment 'nowhere'"),
        ("traffic", {"deployment": "x", "since": "soon"}, InvalidInputError, "since='soon'"),
        ("loss", {"runs": ["run-0000000000"]}, NotFoundError, "no run 'run-0000000000'"),
        ("loss", {"runs": ["run-1"] * 9}, InvalidInputError, "give 1 to 8 ids, not 9"),
        ("eval", {"evals": []}, InvalidInputError, "give 1 to 8 ids, not 0"),
    ],
)
def test_a_bad_chart_request_says_what_is_allowed(
    empty: Services, kind: str, arguments: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message.replace("(", r"\(")):
        charts.chart_data(empty, kind, **arguments)


@pytest.mark.parametrize("kind", ["loss", "eval"])
def test_a_chart_of_nothing_yet_is_still_an_image(empty: Services, kind: str) -> None:
    png, data = charts.chart_png(empty, kind)
    assert png.startswith(b"\x89PNG") and not data.get("runs") and not data.get("evals")


def test_a_caller_of_another_project_sees_none_of_this_one(monitored: Monitored) -> None:
    services = monitored.services
    with access.calling_as(access.Principal("elsewhere", "viewer", "other")):
        assert charts.loss_data(services)["runs"] == []
        assert charts.eval_data(services)["evals"] == []
        with pytest.raises(NotFoundError, match="no deployment 'triage'"):
            charts.traffic_data(services, "triage")
        with pytest.raises(NotFoundError, match=f"no run '{monitored.run_id}'"):
            charts.loss_data(services, [monitored.run_id])
        with pytest.raises(NotFoundError, match=f"no eval '{monitored.eval_id}'"):
            charts.eval_data(services, [monitored.eval_id])
        seen = monitoring.overview(services)
        assert seen["runs"] == seen["evals"] == seen["deployments"] == []


# ---- The MCP tool ----


@pytest.mark.anyio
async def test_get_chart_gives_mcp_clients_the_chart_as_image_content(
    monitored: Monitored,
) -> None:
    async with Client(server_parameters(str(monitored.home))) as client:
        result = await client.call_tool("get_chart", {"kind": "traffic", "deployment": "triage"})
        assert not result.is_error
        described, image = result.content
        assert isinstance(described, TextContent) and isinstance(image, ImageContent)
        assert "Traffic of triage (revision 2)" in described.text
        assert image.mime_type == "image/png"
        png = base64.b64decode(image.data)
        assert colour_pixels(png, BLUE) > 300 and colour_pixels(png, ORANGE) > 100

        loss = await client.call_tool("get_chart", {"kind": "loss"})
        assert monitored.run_id in loss.content[0].text  # type: ignore[union-attr]

        refused = await client.call_tool("get_chart", {"kind": "loss", "deployment": "triage"})
        assert refused.is_error
        assert "deployment not used by a 'loss' chart" in refused.content[0].text  # type: ignore[union-attr]


# ---- The dashboard ----


def test_only_the_page_shell_is_served_without_a_token_and_it_holds_no_data(
    monitored: Monitored, http: Http
) -> None:
    page = httpx.get(f"{http.url}/dashboard", timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "script-src 'nonce-" in policy and "connect-src 'self'" in policy
    assert policy.split("'nonce-")[1].split("'")[0] in page.text  # the script carries the nonce
    for secret_data in (monitored.run_id, monitored.version_id, monitored.eval_id, "triage"):
        assert secret_data not in page.text

    api = f"{http.url}/dashboard/api"
    for path in ("/overview", "/charts/loss.png", "/charts/traffic.json?deployment=triage"):
        assert httpx.get(api + path, timeout=30).status_code == 401
        wrong = httpx.get(api + path, headers=bearer("turing_not-a-token"), timeout=30)
        assert wrong.status_code == 401

    overview = httpx.get(f"{api}/overview", headers=bearer(http.secret), timeout=60).json()
    assert [run["run_id"] for run in overview["runs"]] == [monitored.run_id]
    (deployment,) = overview["deployments"]
    assert deployment["deployment"] == "triage" and deployment["live"]["count"] == QUERIES
    chart = httpx.get(f"{api}/charts/eval.png", headers=bearer(http.secret), timeout=60)
    assert chart.headers["content-type"] == "image/png" and chart.content.startswith(b"\x89PNG")

    refusals = {
        "/charts/loss.gif": (404, "no chart format 'gif'"),
        "/charts/pie.png": (400, "allowed kinds are loss, eval, traffic"),
        "/charts/traffic.png?deployment=nowhere": (404, "no deployment 'nowhere'"),
        "/charts/loss.png?colour=red": (400, "unknown parameter(s) colour"),
        "/charts/traffic.json?deployment=a&deployment=b": (400, "deployment given 2 times"),
    }
    for path, (status, message) in refusals.items():
        answer = httpx.get(api + path, headers=bearer(http.secret), timeout=60)
        assert answer.status_code == status and message in answer.json()["error"]["message"]
    elsewhere = httpx.get(f"{api}/overview", headers=bearer(http.other_secret), timeout=60)
    assert elsewhere.json()["runs"] == [] and elsewhere.json()["deployments"] == []


def chromium(url: str, profile: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    """Headless Chromium on a fresh profile, given time for the page's fetches to finish."""
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        f"--user-data-dir={profile}",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        "--virtual-time-budget=10000",
        *flags,
        url,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=180, check=True)


@skip_if_missing(
    not Path(CHROMIUM).exists(), "chromium is not installed (apt-get install chromium)"
)
def test_the_dashboard_shows_every_chart_in_headless_chromium(
    monitored: Monitored, http: Http, tmp_path: Path
) -> None:
    page = f"{http.url}/dashboard#token={http.secret}"
    dom = chromium(page, tmp_path / "dom-profile", "--dump-dom").stdout
    assert 'data-state="ready"' in dom, dom[-3000:]
    assert dom.count('data-loaded="true"') == 3  # loss, eval and the deployment's traffic
    assert dom.count('src="blob:') == 3
    assert "3/3 charts" in dom
    for shown in (monitored.run_id, monitored.eval_id, monitored.version_id, monitored.broken_id):
        assert shown in dom
    assert 'data-deployment="triage"' in dom and http.secret not in dom

    shot = tmp_path / "dashboard.png"
    chromium(page, tmp_path / "shot-profile", f"--screenshot={shot}")
    png = shot.read_bytes()
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert pixels.shape[:2] == (WINDOW[1], WINDOW[0])
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200  # not a blank page
    assert colour_pixels(png, BLUE) > 3000  # loss curve, model bars, the good route
    assert colour_pixels(png, ORANGE) > 100  # the failing route on the traffic chart
    assert colour_pixels(png, (0x1D, 0x23, 0x2B), tolerance=2) > 10_000  # the header bar

    # Without a token the page says how to get one, and asks for no data.
    bare = chromium(f"{http.url}/dashboard", tmp_path / "bare-profile", "--dump-dom").stdout
    assert 'data-state="no-token"' in bare and "turing token create" in bare
    assert 'id="auth-help" hidden' not in bare and "blob:" not in bare
