"""Query telemetry: the background writer, pricing, PII flags, metrics and A/B comparisons.

Every query row here is written through the telemetry writer, as the query path writes it.
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from turing.server.registry import Registry
from turing.server.services import SPILL_NAME, Services
from turing.server.workspace import Workspace
from turing.tools import audit
from turing.tools.deploy.routing import Route
from turing.tools.deploy.versions import ModelTarget, write_revision
from turing.tools.errors import BusyError, InvalidInputError, NotFoundError
from turing.tools.evals import stats
from turing.tools.query import traffic_metrics
from turing.tools.query.engine import Completion
from turing.tools.query.telemetry import Telemetry, flush_interval, get_pricing, set_pricing


@pytest.fixture
def services(tmp_path: Path) -> Any:
    opened = Services.open(Workspace(tmp_path / "home", tmp_path / "cache"))
    yield opened
    opened.close()


def target(version_id: str, deployment: str | None = "triage", revision: int = 1) -> ModelTarget:
    return ModelTarget(
        kind="deployment" if deployment else "version",
        name=deployment or version_id,
        base_model="tiny",
        base_gguf="tiny.gguf",
        version_id=version_id,
        deployment=deployment,
        revision=revision if deployment else None,
    )


def answer(
    latency_ms: float = 100.0, ttft_ms: float = 10.0, tokens_in: int = 20, tokens_out: int = 10
) -> Completion:
    return Completion(
        text="Your invoice was corrected.",
        prompt_tokens=tokens_in,
        completion_tokens=tokens_out,
        latency_ms=latency_ms,
        time_to_first_token_ms=ttft_ms,
        finish_reason="stop",
    )


def deploy(services: Services, *routes: Route, deployment: str = "triage") -> int:
    return write_revision(services, deployment, list(routes), "test routes")


def count_rows(path: Path) -> int:
    with closing(sqlite3.connect(path)) as conn:
        return int(conn.execute("SELECT count(*) FROM queries").fetchone()[0])


ASK = [{"role": "user", "content": "my invoice is wrong, write to ann@example.com"}]


# --- the writer ---------------------------------------------------------------------------


def test_every_row_recorded_from_many_threads_is_in_the_registry_after_close(
    services: Services,
) -> None:
    def record_many(thread: int) -> None:
        for index in range(500):
            services.telemetry.record(
                target(f"mv-{thread}"),
                answer(latency_ms=index + 1.0),
                latency_ms=index + 1.0,
                messages=ASK,
                routing_key_digest=f"key-{index % 7}",
                transport="http" if index % 2 else "mcp",
            )

    threads = [threading.Thread(target=record_many, args=(thread,)) for thread in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    services.close()

    reopened = Registry(services.workspace.registry_path)
    rows = reopened.rows("queries")
    assert len(rows) == 2000
    assert {row["transport"] for row in rows} == {"mcp", "http"}
    assert {row["version_id"] for row in rows} == {"mv-0", "mv-1", "mv-2", "mv-3"}
    assert all(row["deployment"] == "triage" and row["shadow"] == 0 for row in rows)
    assert sorted(row["latency_ms"] for row in rows if row["version_id"] == "mv-2") == [
        float(index + 1) for index in range(500)
    ]


def test_recording_does_not_wait_for_a_locked_database(tmp_path: Path) -> None:
    registry_path = tmp_path / "registry.db"
    Registry(registry_path)
    telemetry = Telemetry(registry_path, tmp_path / SPILL_NAME, busy_timeout_s=30)
    blocker = sqlite3.connect(registry_path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        started = time.perf_counter()
        for _ in range(200):
            telemetry.record(target("mv-a"), answer(), latency_ms=5.0)
        elapsed = time.perf_counter() - started
        assert not telemetry.flush(timeout_s=0.5)  # the writer is waiting on the lock
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()

    assert elapsed < 0.5, f"200 records took {elapsed:.3f} s while the database was locked"
    assert telemetry.flush(timeout_s=30)
    assert count_rows(registry_path) == 200
    telemetry.close()


def test_rows_that_cannot_be_written_are_spilled_and_written_at_the_next_start(
    tmp_path: Path,
) -> None:
    registry_path, spill = tmp_path / "registry.db", tmp_path / SPILL_NAME
    Registry(registry_path)
    telemetry = Telemetry(registry_path, spill, busy_timeout_s=0.05, retry_delays_s=(0.01,))
    blocker = sqlite3.connect(registry_path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        for index in range(10):
            telemetry.record(target("mv-a"), answer(), latency_ms=float(index))
        telemetry.close()
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()

    assert count_rows(registry_path) == 0
    assert len(spill.read_text().splitlines()) == 10

    reopened = Telemetry(registry_path, spill)
    assert reopened.flush()
    assert count_rows(registry_path) == 10 and not spill.exists()
    reopened.close()


def test_a_spill_line_cut_short_is_skipped_and_the_rest_written(tmp_path: Path) -> None:
    registry_path, spill = tmp_path / "registry.db", tmp_path / SPILL_NAME
    Registry(registry_path)
    row = {"deployment": "triage", "version_id": "mv-a", "latency_ms": 5.0, "shadow": 0}
    spill.write_text(json.dumps(row) + "\n" + json.dumps(row)[:20])

    telemetry = Telemetry(registry_path, spill)
    assert telemetry.flush()
    telemetry.close()
    assert count_rows(registry_path) == 1 and not spill.exists()


def test_a_row_recorded_after_close_is_written_at_once(services: Services) -> None:
    telemetry = services.telemetry
    telemetry.close()
    telemetry.record(target("mv-a"), None, latency_ms=0.0, error="late shadow", shadow=True)
    assert count_rows(services.workspace.registry_path) == 1


def test_an_error_keeps_its_message_and_type_and_a_partial_answer_its_tokens(
    services: Services,
) -> None:
    services.telemetry.record(
        target("mv-a"), None, latency_ms=3.0, error=BusyError("engine busy: 1 running, 8 waiting")
    )
    services.telemetry.record(
        target("mv-a"), answer(tokens_out=4), latency_ms=50.0, error="client went away"
    )
    services.telemetry.flush()
    busy, partial = services.registry.rows("queries", order_by="id")
    assert busy["error"] == "engine busy: 1 running, 8 waiting"
    assert busy["error_type"] == "BusyError" and busy["prompt_tokens"] is None
    assert partial["error_type"] is None and partial["completion_tokens"] == 4


def test_an_unknown_transport_is_refused(services: Services) -> None:
    with pytest.raises(ValueError, match="transport='grpc': allowed are mcp, http"):
        services.telemetry.record(target("mv-a"), answer(), latency_ms=1.0, transport="grpc")


@pytest.mark.parametrize("raw", ["soon", "-1", "nan", "7200"])
def test_a_bad_flush_interval_setting_names_the_setting(
    monkeypatch: pytest.MonkeyPatch, raw: str
) -> None:
    monkeypatch.setenv("TURING_TELEMETRY_FLUSH_S", raw)
    with pytest.raises(InvalidInputError, match=f"TURING_TELEMETRY_FLUSH_S='{raw}': must be"):
        flush_interval()


def test_the_flush_interval_setting_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TURING_TELEMETRY_FLUSH_S", "1.5")
    assert flush_interval() == 1.5
    monkeypatch.delenv("TURING_TELEMETRY_FLUSH_S")
    assert flush_interval() == 0.2


# --- PII and pricing ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer_text", "flagged"),
    [
        ("Write to bob@corp.example.org for a refund.", "email"),
        ("We will write to ann@example.com today.", None),  # the prompt held it
        ("Call +1 415 555 0100 or mail bob@corp.example.org", "email,phone"),
        ("Your invoice was corrected.", None),
    ],
)
def test_pii_is_flagged_only_when_the_answer_adds_it(
    services: Services, answer_text: str, flagged: str | None
) -> None:
    services.telemetry.record(
        target("mv-a"), answer(), latency_ms=1.0, messages=ASK, answer=answer_text
    )
    services.telemetry.flush()
    (row,) = services.registry.rows("queries")
    assert row["pii"] == flagged


def test_costs_follow_the_prices_in_force_when_each_query_was_recorded(
    services: Services,
) -> None:
    deploy(services, Route("mv-a", 100))
    services.telemetry.record(target("mv-a"), answer(tokens_in=100, tokens_out=50), latency_ms=1)
    assert get_pricing(services, "triage")["configured"] is False

    priced = set_pricing(services, "triage", 0.002, "gpt-4o-mini", 0.01, "launch", "alice")
    assert priced["configured"] is True and priced["replaced_model"] == "gpt-4o-mini"
    services.telemetry.record(target("mv-a"), answer(tokens_in=100, tokens_out=50), latency_ms=1)
    services.telemetry.record(
        target("mv-b"), answer(tokens_in=100, tokens_out=50), latency_ms=1, shadow=True
    )
    services.telemetry.flush()

    before, after, shadow = services.registry.rows("queries", order_by="id")
    assert before["cost"] == 0 and before["replaced_cost"] == 0
    assert after["cost"] == pytest.approx(150 / 1000 * 0.002)
    assert after["replaced_cost"] == pytest.approx(150 / 1000 * 0.01)
    assert shadow["cost"] == pytest.approx(150 / 1000 * 0.002) and shadow["replaced_cost"] == 0

    (trail,) = audit.read(services, "triage")
    assert trail["action"] == "set_pricing" and trail["details"]["actor"] == "alice"
    assert trail["details"]["pricing"]["price_per_1k_tokens"] == 0.002
    assert trail["details"]["previous"] is None
    set_pricing(services, "triage", 0.003)
    assert audit.read(services, "triage")[0]["details"]["previous"]["replaced_model"] == (
        "gpt-4o-mini"
    )
    assert get_pricing(services, "triage")["replaced_model"] is None


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"price_per_1k_tokens": -1}, "price_per_1k_tokens=-1: must be between 0 and 1000"),
        ({"price_per_1k_tokens": math.nan}, "price_per_1k_tokens=nan"),
        ({"price_per_1k_tokens": True}, "price_per_1k_tokens=True: give a number"),
        ({"price_per_1k_tokens": 0.1, "replaced_price_per_1k_tokens": 2000}, "between 0 and"),
        (
            {"price_per_1k_tokens": 0.1, "replaced_price_per_1k_tokens": 0.5},
            "replaced_model is empty: name the foundation model",
        ),
    ],
)
def test_bad_prices_are_refused_with_the_rule(
    services: Services, arguments: dict[str, Any], message: str
) -> None:
    deploy(services, Route("mv-a", 100))
    with pytest.raises(InvalidInputError, match=message.replace("(", r"\(")):
        set_pricing(services, "triage", **arguments)


def test_pricing_an_unknown_deployment_is_not_found(services: Services) -> None:
    with pytest.raises(NotFoundError, match="no deployment 'nowhere'"):
        set_pricing(services, "nowhere", 0.1)


# --- metrics ------------------------------------------------------------------------------


def test_metrics_summarise_live_and_shadow_apart_per_version_and_route(
    services: Services,
) -> None:
    deploy(services, Route("mv-a", 70), Route("mv-b", 30), Route("mv-c", 0, True))
    set_pricing(services, "triage", 0.001, "big-model", 0.01)
    latencies = [100.0 + 10 * index for index in range(20)]
    for latency in latencies:
        services.telemetry.record(
            target("mv-a"), answer(latency, ttft_ms=20, tokens_out=11), latency_ms=latency
        )
    services.telemetry.record(target("mv-a"), None, latency_ms=1, error=BusyError("busy"))
    for _ in range(5):
        services.telemetry.record(target("mv-b"), answer(50, 10), latency_ms=50)
        services.telemetry.record(target("mv-c"), answer(80, 10), latency_ms=80, shadow=True)
    services.telemetry.record(
        target("mv-b"), answer(50, 10), latency_ms=50, messages=ASK, answer="bob@corp.example.org"
    )

    found = traffic_metrics.deployment_metrics(services, "triage")
    live, shadow = found["live"], found["shadow"]
    assert live["count"] == 27 and live["errors"] == 1
    assert live["error_rate"] == pytest.approx(1 / 27, abs=1e-6)
    assert live["errors_by_type"] == {"BusyError": 1}
    every = latencies + [50.0] * 6
    assert live["latency_ms"]["p50"] == pytest.approx(np.percentile(every, 50))
    assert live["latency_ms"]["p99"] == pytest.approx(np.percentile(every, 99))
    assert live["tokens_out"] == 20 * 11 + 6 * 10
    assert live["pii_flags"] == 1 and live["pii_kinds"] == {"email": 1}
    assert live["cost"] == pytest.approx((20 * 31 + 6 * 30) / 1000 * 0.001)
    assert live["savings"] == pytest.approx((20 * 31 + 6 * 30) / 1000 * (0.01 - 0.001))
    # Ten tokens after the first in (latency - ttft) each, summed over answered queries.
    decode_seconds = sum(latency - 20 for latency in latencies) / 1000 + 6 * 40 / 1000
    assert live["decode_tokens_per_s"] == pytest.approx((200 + 6 * 9) / decode_seconds, 0.01)
    assert shadow["count"] == 5 and shadow["replaced_cost"] == 0
    assert found["pricing"]["configured"] is True

    versions = {entry["version_id"]: entry for entry in found["versions"]}
    assert versions["mv-a"]["live"]["count"] == 21 and versions["mv-c"]["shadow"]["count"] == 5
    routes = found["routes"]["routes"]
    assert [route["version_id"] for route in routes] == ["mv-a", "mv-b", "mv-c"]
    assert [route["metrics"]["count"] for route in routes] == [21, 6, 5]
    assert routes[2]["shadow"] is True

    version = traffic_metrics.version_metrics(services, "mv-b")
    assert version["live"]["count"] == 6
    assert [entry["deployment"] for entry in version["deployments"]] == ["triage"]


def test_metrics_of_a_route_count_only_its_own_revision(services: Services) -> None:
    deploy(services, Route("mv-a", 100))
    services.telemetry.record(target("mv-a", revision=1), answer(), latency_ms=10)
    deploy(services, Route("mv-a", 50), Route("mv-b", 50))
    services.telemetry.record(target("mv-a", revision=2), answer(), latency_ms=10)

    current = traffic_metrics.deployment_metrics(services, "triage")
    assert current["current_revision"] == 2 and current["live"]["count"] == 2
    assert [route["metrics"]["count"] for route in current["routes"]["routes"]] == [1, 0]
    first = traffic_metrics.deployment_metrics(services, "triage", revision=1)
    assert first["routes"]["routes"][0]["metrics"]["count"] == 1
    with pytest.raises(InvalidInputError, match="revision=3: deployment 'triage' has revisions 1"):
        traffic_metrics.deployment_metrics(services, "triage", revision=3)


def test_a_window_keeps_only_the_queries_since_its_start(services: Services) -> None:
    deploy(services, Route("mv-a", 100))
    services.telemetry.record(target("mv-a"), answer(), latency_ms=10)
    services.telemetry.flush()
    time.sleep(0.01)
    boundary = traffic_metrics.parse_since("0s")
    for _ in range(3):
        services.telemetry.record(target("mv-a"), answer(), latency_ms=10)

    assert (
        traffic_metrics.deployment_metrics(services, "triage", since=boundary)["live"]["count"] == 3
    )
    assert traffic_metrics.deployment_metrics(services, "triage", since="1h")["live"]["count"] == 4
    assert traffic_metrics.deployment_metrics(services, "triage")["live"]["count"] == 4


@pytest.mark.parametrize(
    ("since", "expected"),
    [
        ("2026-12-05T09:00:00Z", "2026-12-05T09:00:00.000+00:00"),
        ("2026-12-05T10:00:00+01:00", "2026-12-05T09:00:00.000+00:00"),
        ("2026-12-05T09:00:00", "2026-12-05T09:00:00.000+00:00"),
        (None, None),
        ("  ", None),
    ],
)
def test_a_window_start_is_stored_as_utc(since: str | None, expected: str | None) -> None:
    assert traffic_metrics.parse_since(since) == expected


@pytest.mark.parametrize("since", ["yesterday", "15 minutes", "-5m", "7y"])
def test_a_bad_window_start_says_what_is_allowed(since: str) -> None:
    with pytest.raises(InvalidInputError, match=r"ISO 8601 time .* or a duration"):
        traffic_metrics.parse_since(since)


def test_metrics_of_unknown_names_are_not_found(services: Services) -> None:
    with pytest.raises(NotFoundError, match="no deployment 'nowhere'"):
        traffic_metrics.deployment_metrics(services, "nowhere")
    with pytest.raises(NotFoundError, match="no model version 'mv-nothing'"):
        traffic_metrics.version_metrics(services, "mv-nothing")


def test_prometheus_counters_are_labelled_by_deployment_version_and_traffic(
    services: Services,
) -> None:
    deploy(services, Route("mv-a", 100), Route("mv-b", 0, True))
    set_pricing(services, "triage", 0.5)
    for latency in (100.0, 300.0):
        services.telemetry.record(target("mv-a"), answer(tokens_in=600), latency_ms=latency)
    services.telemetry.record(target("mv-a"), None, latency_ms=1, error="failed")
    services.telemetry.record(target("mv-b"), answer(), latency_ms=50, shadow=True)
    services.telemetry.record(target('mv-"q"', deployment=None), answer(), latency_ms=7)

    lines = traffic_metrics.prometheus_text(services).splitlines()
    live = 'deployment="triage",version="mv-a",traffic="live"'
    assert f"turing_queries_total{{{live}}} 3" in lines
    assert f"turing_query_errors_total{{{live}}} 1" in lines
    assert f"turing_prompt_tokens_total{{{live}}} 1200" in lines
    assert f"turing_cost_total{{{live}}} 0.61" in lines  # (600 + 10) * 2 / 1000 * 0.5
    assert f"turing_query_latency_seconds_sum{{{live}}} 0.4" in lines
    assert f"turing_query_latency_seconds_count{{{live}}} 2" in lines
    shadow = 'deployment="triage",version="mv-b",traffic="shadow"'
    assert f"turing_queries_total{{{shadow}}} 1" in lines
    assert 'turing_queries_total{deployment="",version="mv-\\"q\\"",traffic="live"} 1' in lines
    assert "# TYPE turing_queries_total counter" in lines


# --- A/B comparisons ----------------------------------------------------------------------


def seed_ab(services: Services, slow: list[float], fast: list[float], errors_b: int = 0) -> None:
    deploy(services, Route("mv-a", 50), Route("mv-b", 50))
    for latency in slow:
        services.telemetry.record(target("mv-a"), answer(latency, 5), latency_ms=latency)
    for latency in fast:
        services.telemetry.record(target("mv-b"), answer(latency, 5), latency_ms=latency)
    for _ in range(errors_b):
        services.telemetry.record(target("mv-b"), None, latency_ms=1, error="engine failed")


def test_a_faster_route_is_significantly_faster(services: Services) -> None:
    rng = np.random.default_rng(0)
    seed_ab(services, list(rng.normal(200, 20, 40)), list(rng.normal(150, 20, 40)))

    found = traffic_metrics.compare_routes(services, "triage", "latency_ms")
    assert found["champion"] == "mv-a" and found["revision"] == 1
    a, b = found["routes"]
    assert a["n"] == b["n"] == 40
    assert a["ci"][0] < a["value"] < a["ci"][1] and 180 < a["value"] < 220
    (comparison,) = found["comparisons"]
    assert comparison["version_id"] == "mv-b" and comparison["test"] == "mann_whitney_u"
    assert comparison["difference"] == pytest.approx(b["value"] - a["value"], abs=1e-5)
    assert comparison["ci"][1] < 0 and comparison["p_value"] < 1e-6 and comparison["significant"]


def test_routes_drawn_from_one_distribution_are_not_called_different(
    services: Services,
) -> None:
    rng = np.random.default_rng(1)
    seed_ab(services, list(rng.normal(200, 20, 40)), list(rng.normal(200, 20, 40)))
    (comparison,) = traffic_metrics.compare_routes(services, "triage", "latency_ms")["comparisons"]
    assert comparison["p_value"] > 0.05 and not comparison["significant"]
    assert comparison["ci"][0] < 0 < comparison["ci"][1]


def test_error_rates_are_compared_with_fishers_exact_test(services: Services) -> None:
    seed_ab(services, [100.0] * 40, [100.0] * 30, errors_b=10)
    found = traffic_metrics.compare_routes(services, "triage", "error_rate")
    a, b = found["routes"]
    assert (a["hits"], a["n"], a["value"]) == (0, 40, 0.0)
    assert (b["hits"], b["n"], b["value"]) == (10, 40, 0.25)
    assert a["ci"][0] == 0.0 and b["ci"][0] < 0.25 < b["ci"][1]
    (comparison,) = found["comparisons"]
    assert comparison["test"] == "fisher_exact" and comparison["difference"] == 0.25
    assert comparison["p_value"] == pytest.approx(stats.fisher_exact(10, 40, 0, 40))
    assert comparison["significant"] and comparison["ci"][0] > 0


def test_a_route_without_enough_queries_is_not_tested(services: Services) -> None:
    seed_ab(services, [100.0, 120.0], [90.0])
    (comparison,) = traffic_metrics.compare_routes(services, "triage", "ttft_ms")["comparisons"]
    assert comparison["p_value"] is None and not comparison["significant"]
    assert "needs at least 2 answered queries" in comparison["reason"]


def test_a_single_route_has_nothing_to_compare_with(services: Services) -> None:
    deploy(services, Route("mv-a", 100))
    found = traffic_metrics.compare_routes(services, "triage", "pii_rate")
    assert found["comparisons"] == [] and "one route" in found["note"]


def test_an_unknown_metric_names_the_allowed_ones(services: Services) -> None:
    deploy(services, Route("mv-a", 100))
    with pytest.raises(InvalidInputError) as refused:
        traffic_metrics.compare_routes(services, "triage", "latency")
    assert "metric='latency': allowed metrics are latency_ms, ttft_ms, tokens_in" in str(
        refused.value
    )
    assert "error_rate, pii_rate" in str(refused.value)


def test_several_challengers_are_holm_adjusted(services: Services) -> None:
    deploy(services, Route("mv-a", 50), Route("mv-b", 25), Route("mv-c", 25))
    rng = np.random.default_rng(2)
    for version_id, mean in (("mv-a", 200), ("mv-b", 150), ("mv-c", 198)):
        for latency in rng.normal(mean, 20, 30):
            services.telemetry.record(target(version_id), answer(latency, 5), latency_ms=latency)
    comparisons = traffic_metrics.compare_routes(services, "triage", "latency_ms")["comparisons"]
    raw = [comparison["p_value"] for comparison in comparisons]
    assert [comparison["p_adjusted"] for comparison in comparisons] == stats.holm(raw)
    assert [comparison["significant"] for comparison in comparisons] == [True, False]


# --- the unpaired tests behind the comparisons --------------------------------------------


def test_fishers_exact_test_matches_the_tea_tasting_table() -> None:
    # Fisher's lady tasting tea: 3 of 4 right each way, two-sided p = 34/70.
    assert stats.fisher_exact(3, 4, 1, 4) == pytest.approx(34 / 70)
    assert stats.fisher_exact(0, 10, 0, 12) == 1.0


def test_newcombes_interval_matches_his_published_example() -> None:
    # Newcombe (1998), example (a): 56/70 - 48/80, method 10: 0.0524 to 0.3339.
    low, high = stats.proportion_difference_interval(56, 70, 48, 80)
    assert low == pytest.approx(0.0524, abs=1e-4) and high == pytest.approx(0.3339, abs=1e-4)


def test_wilson_interval_stays_in_bounds_at_the_extremes() -> None:
    assert stats.wilson_interval(0, 10)[0] == 0.0 and stats.wilson_interval(10, 10)[1] == 1.0
    assert stats.wilson_interval(0, 0) == [0.0, 1.0]


def test_mann_whitney_agrees_with_scipy_exact_and_with_ties() -> None:
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(3)
    for n1, n2 in ((3, 4), (9, 8), (40, 60), (150, 200)):
        a, b = rng.normal(0, 1, n1), rng.normal(0.5, 1, n2)
        ours = stats.mann_whitney(a, b)
        method = "exact" if ours["method"] == "exact" else "asymptotic"
        theirs = scipy_stats.mannwhitneyu(a, b, method=method)
        assert ours["u"] == theirs.statistic
        assert ours["p_value"] == pytest.approx(theirs.pvalue, rel=1e-9)
    tied_a, tied_b = rng.integers(0, 5, 40), rng.integers(1, 6, 50)
    ours = stats.mann_whitney(tied_a, tied_b)
    theirs = scipy_stats.mannwhitneyu(tied_a, tied_b, method="asymptotic")
    assert ours["method"] == "normal" and ours["p_value"] == pytest.approx(theirs.pvalue)


def test_fisher_agrees_with_scipy_on_large_tables() -> None:
    scipy_stats = pytest.importorskip("scipy.stats")
    for table in ((30, 1000, 50, 1000), (0, 50, 5, 50), (7, 9, 2, 11)):
        hits_a, n_a, hits_b, n_b = table
        expected = scipy_stats.fisher_exact([[hits_a, n_a - hits_a], [hits_b, n_b - hits_b]])
        assert stats.fisher_exact(*table) == pytest.approx(expected.pvalue, rel=1e-9)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: stats.mann_whitney([], [1.0]), "group a is empty"),
        (lambda: stats.mann_whitney([1.0], [math.inf]), "group b holds a value that is not"),
        (lambda: stats.fisher_exact(5, 4, 0, 1), "hits=5 of n=4"),
        (lambda: stats.wilson_interval(1, 2, confidence=1.5), "confidence=1.5"),
        (lambda: stats.proportion_difference_interval(0, 0, 1, 2), "at least one row"),
    ],
)
def test_unpaired_tests_refuse_bad_input(call: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()
