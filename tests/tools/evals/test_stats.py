"""Bootstrap intervals and paired tests on hand-computed, identical and clearly different cases."""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import pytest

from turing.tools.evals.metrics import Scorer
from turing.tools.evals.stats import (
    bootstrap_ci,
    compare,
    interval,
    mcnemar,
    paired_permutation,
)

LABELS = ["yes", "no", "maybe"]


def outcomes(only_a: int, only_b: int, both: int = 5, neither: int = 3) -> tuple[list, list]:
    a = [True] * only_a + [False] * only_b + [True] * both + [False] * neither
    b = [False] * only_a + [True] * only_b + [True] * both + [False] * neither
    return a, b


def label_records(predictions: list[str], references: list[str]) -> list[dict[str, Any]]:
    scorer = Scorer(["accuracy", "macro_f1", "token_f1"], labels=LABELS)
    return [scorer.example(p, r) for p, r in zip(predictions, references, strict=True)]


def mean_of(metric: str):
    return lambda records: sum(record[metric] for record in records) / len(records)


def macro_f1(records: list[dict[str, Any]]) -> float:
    return Scorer(["macro_f1"], labels=LABELS).aggregate(records)["macro_f1"]


def references(n: int) -> list[str]:
    return [LABELS[i % 3] for i in range(n)]


def mostly_right(refs: list[str], wrong_every: int) -> list[str]:
    """The references with every `wrong_every`-th answer replaced by the next label."""
    return [
        LABELS[(LABELS.index(ref) + 1) % 3] if i % wrong_every == 0 else ref
        for i, ref in enumerate(refs)
    ]


# --- McNemar ------------------------------------------------------------------------------


def test_mcnemar_matches_a_hand_computed_exact_p_value() -> None:
    a, b = outcomes(only_a=8, only_b=2)

    result = mcnemar(a, b)

    # 2 * P(X <= 2), X ~ Binomial(10, 1/2) = 2 * (1 + 10 + 45) / 1024
    assert result == {"only_a": 8, "only_b": 2, "p_value": 0.109375, "method": "exact_binomial"}
    assert mcnemar(b, a)["p_value"] == 0.109375


@pytest.mark.parametrize(
    ("only_a", "only_b", "expected"),
    [
        (0, 0, 1.0),
        (1, 0, 1.0),
        (3, 3, 1.0),
        (5, 0, 2 / 32),
        (30, 2, 2 * (1 + 32 + 496) / 2**32),
    ],
)
def test_mcnemar_p_values_of_small_cases(only_a: int, only_b: int, expected: float) -> None:
    assert mcnemar(*outcomes(only_a, only_b))["p_value"] == pytest.approx(expected, rel=1e-12)


def test_mcnemar_of_identical_outcomes_is_one() -> None:
    same = [True, False, True, True, False]

    assert mcnemar(same, same)["p_value"] == 1.0
    assert mcnemar([1, 0, 1], [1.0, 0.0, 1.0])["p_value"] == 1.0


@pytest.mark.parametrize(("only_a", "only_b"), [(1480, 1520), (2600, 2400), (800, 1300)])
def test_mcnemar_of_many_discordant_rows_matches_exact_integer_sums(
    only_a: int, only_b: int
) -> None:
    n, smaller = only_a + only_b, min(only_a, only_b)
    exact = min(1.0, 2 * sum(math.comb(n, k) for k in range(smaller + 1)) / 2**n)

    p_value = mcnemar(*outcomes(only_a, only_b))["p_value"]

    assert p_value == pytest.approx(exact, rel=1e-9, abs=1e-300)


def test_mcnemar_stays_fast_at_a_hundred_thousand_rows() -> None:
    a, b = outcomes(only_a=50_400, only_b=49_600, both=0, neither=0)
    started = time.perf_counter()

    p_value = mcnemar(a, b)["p_value"]

    assert time.perf_counter() - started < 1.0
    # normal approximation: z = 800 / sqrt(100000) ~ 2.53, two-sided p ~ 0.0114
    assert p_value == pytest.approx(0.0114, abs=0.001)


@pytest.mark.parametrize(
    ("a", "b", "message"),
    [
        ([True, False], [True], "differ in length"),
        ([], [], "no rows"),
        ([1, 0, 0.5], [1, 0, 1], "only 0/1"),
    ],
)
def test_mcnemar_refuses_unpaired_or_non_binary_outcomes(a: list, b: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        mcnemar(a, b)


# --- paired permutation -------------------------------------------------------------------


def test_paired_permutation_of_identical_scores_is_one() -> None:
    scores = np.random.default_rng(1).random(200).tolist()

    assert paired_permutation(scores, scores) == 1.0


def test_paired_permutation_finds_a_consistent_shift() -> None:
    rng = np.random.default_rng(2)
    b = rng.random(200)
    a = b + 0.2 + rng.normal(0, 0.05, 200)

    p_value = paired_permutation(a.tolist(), b.tolist(), resamples=2000)

    assert p_value == pytest.approx(1 / 2001)


def test_paired_permutation_does_not_flag_noise() -> None:
    rng = np.random.default_rng(3)
    b = rng.random(200)
    a = b + rng.normal(0, 0.05, 200)

    assert paired_permutation(a.tolist(), b.tolist(), resamples=2000) > 0.05


def test_paired_permutation_enumerates_every_flip_of_few_rows() -> None:
    # Of the 8 sign flips of (1, 1, 1) only all-plus and all-minus reach |mean| 1.
    assert paired_permutation([1, 1, 1], [0, 0, 0]) == 0.25
    # (2, 1): flips give |mean| 1.5, 0.5, 0.5, 1.5; two of four reach 1.5.
    assert paired_permutation([2, 1], [0, 0]) == 0.5


def test_paired_permutation_is_fixed_by_its_seed() -> None:
    rng = np.random.default_rng(4)
    a, b = rng.random(50).tolist(), rng.random(50).tolist()

    first = paired_permutation(a, b, resamples=500, seed=9)

    assert paired_permutation(a, b, resamples=500, seed=9) == first
    assert 0 < first <= 1


# --- bootstrap intervals ------------------------------------------------------------------


def test_bootstrap_ci_contains_the_estimate_and_is_fixed_by_its_seed() -> None:
    data = np.random.default_rng(5).normal(10, 2, 300)

    low, high = bootstrap_ci(len(data), lambda rows: float(data[rows].mean()), seed=1)

    assert low < data.mean() < high
    # the standard error is about 2 / sqrt(300) = 0.115, so a 95% interval spans ~0.45
    assert 0.3 < high - low < 0.6
    assert bootstrap_ci(len(data), lambda rows: float(data[rows].mean()), seed=1) == (low, high)
    assert bootstrap_ci(len(data), lambda rows: float(data[rows].mean()), seed=2) != (low, high)


def test_a_narrower_confidence_gives_a_narrower_interval() -> None:
    data = np.random.default_rng(6).random(100)

    def width(confidence: float) -> float:
        low, high = bootstrap_ci(100, lambda rows: float(data[rows].mean()), confidence=confidence)
        return high - low

    assert width(0.5) < width(0.9) < width(0.99)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n": 0}, "at least one row"),
        ({"n": 5, "resamples": 0}, "resamples=0"),
        ({"n": 5, "confidence": 1.0}, "between 0 and 1"),
        ({"n": 5, "confidence": 0}, "between 0 and 1"),
    ],
)
def test_bootstrap_ci_refuses_settings_out_of_range(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        bootstrap_ci(statistic=lambda rows: 0.0, **kwargs)


def test_interval_brackets_a_models_score() -> None:
    refs = references(90)
    records = label_records(mostly_right(refs, wrong_every=4), refs)
    accuracy = mean_of("accuracy")

    low, high = interval(records, accuracy, resamples=300, seed=3)

    assert low < accuracy(records) < high
    assert interval(records, accuracy, resamples=300, seed=3) == [low, high]
    with pytest.raises(ValueError, match="no records"):
        interval([], accuracy)


# --- compare ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("metric", "aggregate", "test"),
    [
        ("accuracy", mean_of("accuracy"), "mcnemar"),
        ("macro_f1", macro_f1, "paired_bootstrap"),
        ("token_f1", mean_of("token_f1"), "paired_permutation"),
    ],
)
def test_compare_of_identical_predictions_is_not_significant(
    metric: str, aggregate: Any, test: str
) -> None:
    refs = references(60)
    records = label_records(mostly_right(refs, wrong_every=3), refs)

    result = compare(records, list(records), metric, aggregate, resamples=200)

    assert result["test"] == test
    assert result["p_value"] == 1.0
    assert result["significant"] is False
    assert result["ci"] == [0.0, 0.0]
    assert result["difference"] == 0.0
    assert result["value"] == result["other"] == pytest.approx(aggregate(records))
    assert result["n"] == 60


@pytest.mark.parametrize(
    ("metric", "aggregate", "test"),
    [
        ("accuracy", mean_of("accuracy"), "mcnemar"),
        ("macro_f1", macro_f1, "paired_bootstrap"),
        ("token_f1", mean_of("token_f1"), "paired_permutation"),
    ],
)
def test_compare_finds_a_clearly_better_model(metric: str, aggregate: Any, test: str) -> None:
    refs = references(90)
    better = label_records(mostly_right(refs, wrong_every=10), refs)
    worse = label_records(mostly_right(refs, wrong_every=2), refs)

    result = compare(better, worse, metric, aggregate, resamples=300, seed=1)

    assert result["test"] == test
    assert result["significant"] is True
    assert result["p_value"] < 0.01
    assert result["difference"] == pytest.approx(aggregate(better) - aggregate(worse))
    assert 0 < result["ci"][0] <= result["difference"] <= result["ci"][1]


def test_compare_of_a_small_difference_is_not_significant() -> None:
    refs = references(60)
    a = label_records(mostly_right(refs, wrong_every=5), refs)
    b = label_records(mostly_right(refs, wrong_every=6), refs)

    result = compare(a, b, "accuracy", mean_of("accuracy"), resamples=300)

    assert result["p_value"] > 0.05
    assert result["significant"] is False
    assert result["difference"] == pytest.approx(-2 / 60)
    assert result["ci"][0] < 0 < result["ci"][1]


def test_compare_resamples_mean_metrics_like_the_aggregate_would() -> None:
    refs = references(40)
    a = label_records(mostly_right(refs, wrong_every=3), refs)
    b = label_records(mostly_right(refs, wrong_every=7), refs)
    token_f1 = mean_of("token_f1")

    result = compare(a, b, "token_f1", token_f1, resamples=200, seed=8)
    expected = bootstrap_ci(
        40,
        lambda rows: token_f1([a[i] for i in rows]) - token_f1([b[i] for i in rows]),
        resamples=200,
        seed=8,
    )

    assert result["ci"] == pytest.approx(list(expected))


def test_compare_tests_other_per_example_scores_by_permutation() -> None:
    rng = np.random.default_rng(11)
    a = [{"loss": float(x)} for x in rng.normal(2.0, 0.3, 80)]
    b = [{"loss": record["loss"] + 0.5} for record in a]

    result = compare(a, b, "loss", mean_of("loss"), resamples=200)

    assert result["test"] == "paired_permutation"
    assert result["difference"] == pytest.approx(-0.5)
    assert result["significant"] is True
    assert result["ci"] == pytest.approx([-0.5, -0.5])


@pytest.mark.parametrize(
    ("records_b", "message"),
    [
        ([{"accuracy": 1.0}], "differ in length"),
        ([{"accuracy": 1.0}, {"exact_match": 1.0}], "record 1 of b has no per-example"),
    ],
)
def test_compare_refuses_unpaired_records(records_b: list, message: str) -> None:
    records_a = [{"accuracy": 1.0}, {"accuracy": 0.0}]

    with pytest.raises(ValueError, match=message):
        compare(records_a, records_b, "accuracy", lambda records: 0.0)


def test_compare_refuses_empty_records() -> None:
    with pytest.raises(ValueError, match="no rows"):
        compare([], [], "accuracy", lambda records: 0.0)


def test_compare_widens_the_interval_for_a_stricter_alpha() -> None:
    refs = references(60)
    a = label_records(mostly_right(refs, wrong_every=3), refs)
    b = label_records(mostly_right(refs, wrong_every=5), refs)

    def width(alpha: float) -> float:
        low, high = compare(a, b, "accuracy", mean_of("accuracy"), alpha=alpha)["ci"]
        return high - low

    assert width(0.01) > width(0.05) > width(0.2)
    with pytest.raises(ValueError, match="alpha=0"):
        compare(a, b, "accuracy", mean_of("accuracy"), alpha=0)
