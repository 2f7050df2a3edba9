"""Route rules and the choice of a route: weights, sticky keys, shadows (no model needed)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from turing.tools.deploy.routing import Route, check_routes, choose_route, parse_stored
from turing.tools.errors import InvalidInputError

BASES = {"mv-a": "tiny", "mv-b": "tiny", "mv-c": "tiny", "mv-other": "other-base"}
KEYS = [f"user-{number}" for number in range(10_000)]


def check(routes: object, base_model: str | None = "tiny") -> list[Route]:
    return check_routes(routes, BASES.get, base_model)


def test_weights_90_10_over_10000_keys_land_within_one_point() -> None:
    routes = [Route("mv-a", 90), Route("mv-b", 10)]
    counts = Counter(choose_route(routes, key, "triage", 3).version_id for key in KEYS)
    assert abs(counts["mv-a"] / len(KEYS) - 0.90) <= 0.01, counts
    assert abs(counts["mv-b"] / len(KEYS) - 0.10) <= 0.01, counts


def test_random_routing_follows_the_weights_too() -> None:
    routes = [Route("mv-a", 90), Route("mv-b", 10)]
    rng = random.Random(7)
    counts = Counter(choose_route(routes, None, "triage", 1, rng).version_id for _ in KEYS)
    assert abs(counts["mv-a"] / len(KEYS) - 0.90) <= 0.01, counts


def test_weight_0_and_shadow_routes_receive_nothing() -> None:
    routes = [Route("mv-a", 0), Route("mv-b", 100), Route("mv-c", 0, shadow=True)]
    chosen = {choose_route(routes, key, "triage", 1).version_id for key in KEYS}
    chosen |= {choose_route(routes, None, "triage", 1, random.Random(1)).version_id}
    assert chosen == {"mv-b"}


def test_a_key_stays_on_its_route_within_a_revision_and_may_move_in_a_new_one() -> None:
    routes = [Route("mv-a", 50), Route("mv-b", 50)]
    first = {key: choose_route(routes, key, "triage", 1).version_id for key in KEYS[:1000]}
    for _ in range(3):
        again = {key: choose_route(routes, key, "triage", 1).version_id for key in KEYS[:1000]}
        assert again == first
    moved = {key: choose_route(routes, key, "triage", 2).version_id for key in KEYS[:1000]}
    assert moved != first  # the revision is part of the hash
    other = {key: choose_route(routes, key, "support", 1).version_id for key in KEYS[:1000]}
    assert other != first  # and so is the deployment


def test_valid_routes_are_parsed_with_shadows() -> None:
    routes = check(
        [
            {"version_id": "mv-a", "weight": 70},
            {"version_id": "mv-b", "weight": 30.0, "shadow": False},
            {"version_id": "mv-c", "shadow": True},
        ]
    )
    assert routes == [Route("mv-a", 70), Route("mv-b", 30), Route("mv-c", 0, True)]
    assert parse_stored([route.stored() for route in routes]) == routes
    assert parse_stored([["mv-a", 100]]) == [Route("mv-a", 100)]
    assert [route.describe() for route in routes][2] == {
        "version_id": "mv-c",
        "weight": 0,
        "shadow": True,
    }


@pytest.mark.parametrize(
    ("routes", "expected"),
    [
        (
            [{"version_id": "mv-a", "weight": 60}, {"version_id": "mv-b", "weight": 30}],
            ["sum to 90 (60 (mv-a) + 30 (mv-b)); they must sum to exactly 100"],
        ),
        (
            [{"version_id": "mv-a", "weight": 110}, {"version_id": "mv-b", "weight": -10}],
            ["routes[0] (mv-a): weight=110", "routes[1] (mv-b): weight=-10", "0..100"],
        ),
        (
            [{"version_id": "mv-a", "weight": 50}, {"version_id": "mv-a", "weight": 50}],
            ["routes[1] (mv-a): already routed by routes[0]; a version may appear once"],
        ),
        (
            [{"version_id": "mv-nope", "weight": 100}],
            ["routes[0] (mv-nope): no such model version"],
        ),
        (
            [{"version_id": "run-1", "weight": 100}],
            ["routes[0] (run-1): not a model version id"],
        ),
        (
            [{"version_id": "mv-other", "weight": 100}],
            ["built on base model 'other-base', but this deployment serves 'tiny'"],
        ),
        (
            [
                {"version_id": "mv-a", "weight": 100},
                {"version_id": "mv-b", "shadow": True, "weight": 5},
            ],
            ["routes[1] (mv-b): weight=5 on a shadow route"],
        ),
        (
            [{"version_id": "mv-a", "weight": 12.5}, {"version_id": "mv-b", "weight": "87"}],
            ["routes[0] (mv-a): weight=12.5", "routes[1] (mv-b): weight='87'"],
        ),
        (
            [{"version_id": "mv-a", "weight": 100, "share": 1}],
            ["unknown fields ['share']"],
        ),
        ([{"version_id": "mv-a", "shadow": True}], ["no live (non-shadow) route"]),
        ([], ["non-empty list"]),
        (
            [{"version_id": "mv-a", "weight": 100}]
            + [{"version_id": f"mv-{n}", "weight": 0} for n in range(16)],
            ["17 routes given; at most 16"],
        ),
    ],
)
def test_bad_routes_are_refused_naming_the_route_and_the_rule(
    routes: list[dict[str, object]], expected: list[str]
) -> None:
    with pytest.raises(InvalidInputError) as refused:
        check(routes)
    for fragment in expected:
        assert fragment in str(refused.value)


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(InvalidInputError) as refused:
        check(
            [
                {"version_id": "mv-a", "weight": -5},
                {"version_id": "mv-a", "weight": 50},
                {"version_id": "mv-nope", "weight": 20},
            ]
        )
    message = str(refused.value)
    assert "routes[0] (mv-a): weight=-5" in message
    assert "routes[1] (mv-a): already routed" in message
    assert "routes[2] (mv-nope): no such model version" in message


def test_a_new_deployment_takes_the_base_of_its_first_route() -> None:
    with pytest.raises(InvalidInputError, match="routes\\[1\\] \\(mv-other\\): built on base"):
        check(
            [{"version_id": "mv-a", "weight": 50}, {"version_id": "mv-other", "weight": 50}],
            base_model=None,
        )
