"""Task metrics: per-example values, label matching, corpus scores and settings validation."""

from __future__ import annotations

import random

import pytest

from turing.tools.errors import InvalidInputError
from turing.tools.evals.metrics import (
    BINARY_METRICS,
    CORPUS_METRICS,
    TASK_METRICS,
    Scorer,
    default_metrics,
    lcs_length,
    normalise,
    parse_json_output,
    word_tokens,
)

LABELS = ["card arrival", "refund", "lost card"]
SCHEMA = {
    "type": "object",
    "required": ["intent"],
    "properties": {
        "intent": {"enum": ["refund", "card_arrival"]},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
    },
    "additionalProperties": False,
}
PER_EXAMPLE = [metric for metric in TASK_METRICS if metric not in CORPUS_METRICS]


def every_metric(pattern: str = r"[a-z ]+") -> Scorer:
    return Scorer(list(TASK_METRICS), labels=LABELS, schema=SCHEMA, pattern=pattern)


# --- normalise and tokens --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("  hello   world \n", "hello world"),
        ("a\t\tb\r\nc", "a b c"),
        ("Keep Case", "Keep Case"),
        ("   \n\t ", ""),
        ("", ""),
    ],
)
def test_normalise_collapses_whitespace_and_keeps_case(text: str, expected: str) -> None:
    assert normalise(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The cat's HAT!", ["cats", "hat"]),
        ("a an the", []),
        ("Price: $5.00, total", ["price", "500", "total"]),
        ("?!... — «»", []),
        ("   \n ", []),
        ("", []),
        ("我的卡 arrived", ["我", "的", "卡", "arrived"]),
        ("Theory of an apple", ["theory", "of", "apple"]),
    ],
)
def test_word_tokens_are_squad_style(text: str, expected: list[str]) -> None:
    assert word_tokens(text) == expected


def test_lcs_length_agrees_with_the_quadratic_table() -> None:
    rng = random.Random(7)
    for _ in range(300):
        first = rng.choices("abcde", k=rng.randint(0, 40))
        second = rng.choices("abcde", k=rng.randint(0, 40))
        assert lcs_length(first, second) == _lcs_table(first, second), (first, second)


def _lcs_table(first: list[str], second: list[str]) -> int:
    row = [0] * (len(second) + 1)
    for token in first:
        previous = 0
        for j, other in enumerate(second, start=1):
            previous, row[j] = row[j], previous + 1 if token == other else max(row[j], row[j - 1])
    return row[-1]


# --- per-example metrics on typical answers ------------------------------------------------


@pytest.mark.parametrize(
    ("metric", "prediction", "reference", "expected"),
    [
        ("exact_match", "card arrival", "card arrival", 1.0),
        ("exact_match", "  card \n arrival ", "card arrival", 1.0),
        ("exact_match", "Card arrival", "card arrival", 0.0),
        ("exact_match", "card arrival.", "card arrival", 0.0),
        ("accuracy", "Card  Arrival", "card arrival", 1.0),
        ("accuracy", "refund", "card arrival", 0.0),
        ("accuracy", "card arrival, I think", "card arrival", 0.0),
        # pred tokens [cat, sat, on, mat], reference [cat, sat, on, hat]: 3 common, P = R = 3/4
        ("token_f1", "The cat sat on the mat", "a cat sat on a hat", 0.75),
        ("token_f1", "one two three four", "one three two four", 1.0),
        # 2 common of 2 predicted and 4 expected tokens: P = 1, R = 1/2, F1 = 2/3
        ("token_f1", "one two", "one two three four", 2 / 3),
        ("token_f1", "five six", "one two", 0.0),
        # LCS of [one two three four] and [one three two four] is 3: P = R = 3/4
        ("rouge_l", "one two three four", "one three two four", 0.75),
        ("rouge_l", "Card arrived!", "card arrived", 1.0),
        ("rouge_l", "four three two one", "one two three four", 0.25),
        ("json_valid", '{"intent": "refund"}', "anything", 1.0),
        ("schema_valid", '{"intent": "refund"}', "anything", 1.0),
        ("schema_valid", '{"intent": "cancel"}', "anything", 0.0),
        ("regex_match", "lost card", "anything", 1.0),
        ("regex_match", "Lost card", "anything", 0.0),
    ],
)
def test_each_metric_scores_typical_answers(
    metric: str, prediction: str, reference: str, expected: float
) -> None:
    assert every_metric().example(prediction, reference)[metric] == pytest.approx(expected)


def test_a_record_has_every_per_example_metric_and_the_labels_but_no_corpus_metric() -> None:
    record = every_metric().example("refund", "card arrival")

    assert set(record) == {*PER_EXAMPLE, "predicted_label", "reference_label"}
    assert all(isinstance(record[metric], float) for metric in PER_EXAMPLE)
    assert record["predicted_label"] == "refund"
    assert record["reference_label"] == "card arrival"


def test_a_scorer_without_labels_records_no_labels() -> None:
    assert Scorer(["exact_match"]).example("a", "a") == {"exact_match": 1.0}


# --- empty, whitespace-only and punctuation-only predictions ----------------------------------

DEGENERATE = ["", "   \n\t ", "?!...", " — ... "]


@pytest.mark.parametrize("prediction", DEGENERATE)
@pytest.mark.parametrize("metric", PER_EXAMPLE)
def test_a_degenerate_prediction_scores_zero_against_a_real_reference(
    metric: str, prediction: str
) -> None:
    assert every_metric().example(prediction, "card arrival")[metric] == 0.0


@pytest.mark.parametrize(
    ("prediction", "label"),
    [("", "(empty)"), ("   \n\t ", "(empty)"), ("?!...", "(other)"), (" — ... ", "(other)")],
)
def test_a_degenerate_prediction_names_no_label(prediction: str, label: str) -> None:
    assert every_metric().example(prediction, "card arrival")["predicted_label"] == label


@pytest.mark.parametrize("prediction", DEGENERATE)
def test_degenerate_predictions_give_a_defined_corpus_score_for_every_metric(
    prediction: str,
) -> None:
    scorer = every_metric()
    records = [scorer.example(prediction, reference) for reference in LABELS]

    scores = scorer.aggregate(records)

    assert scores == dict.fromkeys(TASK_METRICS, 0.0)


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        (
            "",
            "  ",
            {"exact_match": 1.0, "token_f1": 1.0, "rouge_l": 1.0, "accuracy": 0.0},
        ),
        (
            "?!",
            "...",
            {"exact_match": 0.0, "token_f1": 1.0, "rouge_l": 1.0, "accuracy": 0.0},
        ),
        (
            "...",
            "...",
            {"exact_match": 1.0, "token_f1": 1.0, "rouge_l": 1.0, "accuracy": 0.0},
        ),
        (
            "The.",
            "",
            {"exact_match": 0.0, "token_f1": 1.0, "rouge_l": 1.0, "accuracy": 0.0},
        ),
    ],
)
def test_an_equally_empty_reference_is_matched_by_the_text_metrics(
    prediction: str, reference: str, expected: dict[str, float]
) -> None:
    record = every_metric().example(prediction, reference)

    assert {metric: record[metric] for metric in expected} == expected
    assert record["json_valid"] == record["schema_valid"] == record["regex_match"] == 0.0


@pytest.mark.parametrize(("pattern", "expected"), [(r"[a-z ]*", 1.0), (r"[a-z ]+", 0.0)])
def test_an_empty_prediction_matches_only_a_pattern_that_matches_nothing(
    pattern: str, expected: float
) -> None:
    assert every_metric(pattern).example("  ", "refund")["regex_match"] == expected


# --- labels ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("refund", "refund"),
        ("REFUND", "refund"),
        ("  Card \n  ARRIVAL  ", "card arrival"),
        ("card arrival.", "(other)"),
        ("card", "(other)"),
        ("refund please", "(other)"),
        ("cancel", "(other)"),
        ("...", "(other)"),
        ("", "(empty)"),
        (" \t\n", "(empty)"),
    ],
)
def test_label_of_matches_case_and_space_insensitively_and_nothing_else(
    text: str, label: str
) -> None:
    assert Scorer(["accuracy"], labels=LABELS).label_of(text) == label


def test_a_reference_outside_the_label_set_is_never_scored_correct() -> None:
    record = Scorer(["accuracy"], labels=LABELS).example("cancel", "cancel")

    assert record["reference_label"] == "(other)"
    assert record["accuracy"] == 0.0


# --- macro-F1 and confusion ---------------------------------------------------------------

# (reference, prediction): a is right twice, b once, c once; the rest are mistakes.
PAIRS = [
    ("a", "a"),
    ("a", "A "),
    ("a", "b"),
    ("b", "b"),
    ("b", "something else"),
    ("c", "a"),
    ("c", "c"),
]


def label_records(pairs: list[tuple[str, str]], labels: list[str]) -> tuple[Scorer, list]:
    scorer = Scorer(["accuracy", "macro_f1", "exact_match"], labels=labels)
    return scorer, [scorer.example(prediction, reference) for reference, prediction in pairs]


def test_macro_f1_and_accuracy_match_a_hand_computed_example() -> None:
    scorer, records = label_records(PAIRS, ["a", "b", "c"])

    scores = scorer.aggregate(records)

    # a: 3 predicted, 2 right, support 3 -> F1 4/6; b: 2, 1, 2 -> 2/4; c: 1, 1, 2 -> 2/3
    assert scores["macro_f1"] == pytest.approx((4 / 6 + 2 / 4 + 2 / 3) / 3)
    assert scores["accuracy"] == pytest.approx(4 / 7)
    assert scores["exact_match"] == pytest.approx(3 / 7)  # "A " is not exactly "a"


def test_confusion_lists_per_label_scores_unmatched_and_top_mistakes() -> None:
    scorer, records = label_records(PAIRS, ["a", "b", "c"])

    confusion = scorer.confusion(records)

    assert list(confusion["per_label"]) == ["a", "b", "c"]
    assert confusion["per_label"]["a"] == pytest.approx(
        {"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "support": 3}
    )
    assert confusion["per_label"]["b"] == pytest.approx(
        {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    )
    assert confusion["per_label"]["c"] == pytest.approx(
        {"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2}
    )
    assert confusion["unmatched"] == {"(other)": 1, "(empty)": 0}
    assert confusion["top_confusions"] == [
        {"reference_label": "a", "predicted_label": "b", "count": 1},
        {"reference_label": "b", "predicted_label": "(other)", "count": 1},
        {"reference_label": "c", "predicted_label": "a", "count": 1},
    ]


def test_confusion_orders_mistakes_by_count_and_keeps_the_top_ones() -> None:
    pairs = [("a", "b")] * 3 + [("b", "a")] * 5 + [("a", "")] * 2 + [("b", "b")]
    scorer, records = label_records(pairs, ["a", "b"])

    top = scorer.confusion(records, top=2)["top_confusions"]

    assert [(item["reference_label"], item["predicted_label"], item["count"]) for item in top] == [
        ("b", "a", 5),
        ("a", "b", 3),
    ]


def test_macro_f1_averages_labels_predicted_but_never_referenced_and_skips_absent_ones() -> None:
    scorer, records = label_records([("x", "x"), ("x", "z")], ["x", "y", "z"])

    # x: 1 predicted, 1 right, support 2 -> F1 2/3; z: predicted once, never right -> 0; y absent
    assert scorer.aggregate(records)["macro_f1"] == pytest.approx((2 / 3 + 0) / 2)
    assert list(scorer.confusion(records)["per_label"]) == ["x", "z"]


def test_unmatched_predictions_are_not_classes_of_the_macro_mean() -> None:
    scorer, records = label_records([("x", "x"), ("y", "nonsense"), ("y", "")], ["x", "y"])

    # x: F1 1; y: support 2, never predicted -> F1 0; (other) and (empty) add no class
    assert scorer.aggregate(records)["macro_f1"] == pytest.approx(0.5)


def test_confusion_needs_a_label_set() -> None:
    scorer = Scorer(["exact_match"])

    with pytest.raises(InvalidInputError, match="label set"):
        scorer.confusion([scorer.example("a", "a")])


# --- JSON and schemas ---------------------------------------------------------------------

FENCE = "```"


@pytest.mark.parametrize(
    ("prediction", "expected"),
    [
        ('{"intent": "refund"}', 1.0),
        ('  \n{"intent": "refund"}\n  ', 1.0),
        (f'{FENCE}json\n{{"intent": "refund"}}\n{FENCE}', 1.0),
        (f"{FENCE}\n[1, 2, 3]\n{FENCE}", 1.0),
        (f'{FENCE}JSON {{"a": 1}}{FENCE}', 1.0),
        (f' \n{FENCE}json\n{{"a": 1}}\n{FENCE}\n ', 1.0),
        ("42", 1.0),
        ('Here it is: {"intent": "refund"}', 0.0),
        (f'{FENCE}json\n{{"a": 1}}', 0.0),
        (f'{FENCE}python\n{{"a": 1}}\n{FENCE}', 0.0),
        ('{"intent": "refund"', 0.0),
        ('{"score": NaN}', 0.0),
        ("[" * 100_000 + "]" * 100_000, 0.0),
        ("{'intent': 'refund'}", 0.0),
    ],
)
def test_json_valid_accepts_json_with_or_without_a_code_fence(
    prediction: str, expected: float
) -> None:
    assert Scorer(["json_valid"]).example(prediction, "")["json_valid"] == expected


def test_parse_json_output_returns_the_fenced_value() -> None:
    assert parse_json_output(f'{FENCE}json\n{{"a": [1, 2]}}\n{FENCE}') == {"a": [1, 2]}


@pytest.mark.parametrize(
    ("prediction", "expected"),
    [
        ('{"intent": "refund", "confidence": 0.9}', 1.0),
        (f'{FENCE}json\n{{"intent": "card_arrival"}}\n{FENCE}', 1.0),
        ('{"confidence": 0.9}', 0.0),
        ('{"intent": "cancel"}', 0.0),
        ('{"intent": "refund", "extra": true}', 0.0),
        ('{"intent": "refund", "confidence": 2}', 0.0),
        ('["refund"]', 0.0),
        ("refund", 0.0),
    ],
)
def test_schema_valid_needs_json_that_obeys_the_schema(prediction: str, expected: float) -> None:
    assert Scorer(["schema_valid"], schema=SCHEMA).example(prediction, "")["schema_valid"] == (
        expected
    )


def test_schema_valid_resolves_references_inside_the_schema() -> None:
    schema = {
        "$defs": {"intent": {"enum": ["refund"]}},
        "type": "object",
        "properties": {"intent": {"$ref": "#/$defs/intent"}},
    }
    scorer = Scorer(["schema_valid"], schema=schema)

    assert scorer.example('{"intent": "refund"}', "")["schema_valid"] == 1.0
    assert scorer.example('{"intent": "other"}', "")["schema_valid"] == 0.0


@pytest.mark.parametrize(
    "ref", ["#/$defs/missing", "urn:turing:not-here", "http://127.0.0.1:9/remote.json"]
)
def test_a_schema_with_a_reference_it_cannot_resolve_is_refused_up_front(ref: str) -> None:
    with pytest.raises(InvalidInputError, match=r"\$ref .* cannot be resolved"):
        Scorer(["schema_valid"], schema={"properties": {"intent": {"$ref": ref}}})


def test_a_catastrophic_pattern_stops_with_an_error_instead_of_hanging() -> None:
    scorer = Scorer(["regex_match"], pattern=r"(a|aa)+$")

    with pytest.raises(InvalidInputError, match=r"took over 2 s to match one answer"):
        scorer.example("a" * 60 + "b", "")


# --- regex ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "prediction", "expected"),
    [
        (r"\d{3}-\d{4}", "555-1234", 1.0),
        (r"\d{3}-\d{4}", "  555-1234 \n", 1.0),
        (r"\d{3}-\d{4}", "call 555-1234", 0.0),
        (r"\d{3}-\d{4}", "555-12345", 0.0),
        ("yes|no", "no", 1.0),
        ("yes|no", "yesno", 0.0),
        ("yes|no", "no thanks", 0.0),
        (r"order (\w+) shipped", "order  A17\tshipped", 1.0),
    ],
)
def test_regex_match_needs_the_pattern_to_match_the_whole_normalised_prediction(
    pattern: str, prediction: str, expected: float
) -> None:
    scorer = Scorer(["regex_match"], pattern=pattern)

    assert scorer.example(prediction, "")["regex_match"] == expected


# --- settings -----------------------------------------------------------------------------


def test_every_invalid_setting_is_named_in_one_error() -> None:
    with pytest.raises(InvalidInputError) as raised:
        Scorer(
            ["exact_match", "bleu", "accuracy", "macro_f1", "schema_valid", "regex_match"],
            schema={"type": "objekt"},
            pattern="(unclosed",
        )

    message = str(raised.value)
    assert message.startswith("5 invalid evaluation setting(s)")
    assert "'bleu' is not known; allowed: exact_match, accuracy" in message
    assert "'accuracy' needs the label set" in message
    assert "'macro_f1' needs the label set" in message
    assert "schema is not a valid JSON Schema at type" in message
    assert "pattern '(unclosed' does not compile" in message


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"metrics": []}, "metrics is empty: choose one or more of: exact_match"),
        ({"metrics": "exact_match"}, "must be a list of metric names"),
        ({"metrics": ["schema_valid"]}, "'schema_valid' needs schema"),
        ({"metrics": ["schema_valid"], "schema": ["type"]}, "must be a JSON Schema object"),
        ({"metrics": ["regex_match"]}, "'regex_match' needs pattern"),
        ({"metrics": ["regex_match"], "pattern": 5}, "pattern must be a string"),
        ({"metrics": ["accuracy"], "labels": []}, "'accuracy' needs the label set"),
        ({"metrics": ["accuracy"], "labels": ["yes", " "]}, "label ' ' is empty"),
        ({"metrics": ["accuracy"], "labels": ["yes", "(other)"]}, "'(other)' is reserved"),
        (
            {"metrics": ["accuracy"], "labels": ["Yes", "yes ", "no"]},
            "labels 'Yes', 'yes ' differ only in case or spacing",
        ),
    ],
)
def test_an_invalid_setting_says_what_is_allowed(kwargs: dict, fragment: str) -> None:
    kwargs = dict(kwargs)
    metrics = kwargs.pop("metrics")

    with pytest.raises(InvalidInputError, match="1 invalid evaluation setting") as raised:
        Scorer(metrics, **kwargs)

    assert fragment in str(raised.value)


def test_repeated_metrics_and_labels_are_kept_once_in_order() -> None:
    scorer = Scorer(["token_f1", "exact_match", "token_f1"], labels=["b", "a", "b"])

    assert scorer.metrics == ["token_f1", "exact_match"]
    assert scorer.labels == ["b", "a"]


def test_metric_groups_partition_the_task_metrics() -> None:
    assert (BINARY_METRICS | CORPUS_METRICS).issubset(TASK_METRICS)
    assert not BINARY_METRICS & CORPUS_METRICS
    assert set(TASK_METRICS) - BINARY_METRICS - CORPUS_METRICS == {"token_f1", "rouge_l"}


# --- aggregate ----------------------------------------------------------------------------


def test_aggregate_is_the_mean_of_per_example_values() -> None:
    scorer = Scorer(["exact_match", "token_f1"])
    records = [scorer.example(p, r) for p, r in [("a b", "a b"), ("c", "c d"), ("x", "y")]]

    scores = scorer.aggregate(records)

    assert scores["exact_match"] == pytest.approx(1 / 3)
    assert scores["token_f1"] == pytest.approx((1 + 2 / 3 + 0) / 3)


def test_aggregate_refuses_no_records_and_records_of_another_scorer() -> None:
    scorer = Scorer(["exact_match", "token_f1"])

    with pytest.raises(InvalidInputError, match="no records"):
        scorer.aggregate([])
    with pytest.raises(InvalidInputError, match="record 1 has no 'token_f1'"):
        scorer.aggregate([scorer.example("a", "a"), {"exact_match": 1.0}])


# --- default metrics ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("references", "labels", "expected"),
    [
        (
            ["refund", "card arrival"],
            ["refund", "card arrival"],
            ["accuracy", "macro_f1", "exact_match"],
        ),
        (['{"a": 1}', " [1, 2] "], None, ["json_valid", "exact_match", "token_f1"]),
        ([f'{FENCE}json\n{{"a": 1}}\n{FENCE}'], None, ["json_valid", "exact_match", "token_f1"]),
        (['{"a": 1}', "plain text"], None, ["exact_match", "token_f1", "rouge_l"]),
        (["42", '"text"'], None, ["exact_match", "token_f1", "rouge_l"]),
        (["Your card arrives in 3 days."], None, ["exact_match", "token_f1", "rouge_l"]),
        ([], None, ["exact_match", "token_f1", "rouge_l"]),
        (["refund"], [], ["exact_match", "token_f1", "rouge_l"]),
    ],
)
def test_default_metrics_follow_the_shape_of_the_references(
    references: list[str], labels: list[str] | None, expected: list[str]
) -> None:
    assert default_metrics(references, labels) == expected
