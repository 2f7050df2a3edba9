"""Dataset preparation end to end: reading, validation in one pass, cleaning, lengths, split."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from turing.tools.base_models import smollm2_gguf_path
from turing.tools.datasets import prepare as prepare_module
from turing.tools.datasets.jsonl import read_jsonl, write_jsonl
from turing.tools.datasets.options import parse_options
from turing.tools.datasets.prepare import DatasetError, PreparedDataset, prepare_dataset
from turing.tools.datasets.tokens import TokenCounter, load_token_counter
from turing.tools.errors import InvalidInputError

SAMPLE = Path(prepare_module.__file__).parent / "samples" / "support_tickets.jsonl"
SAMPLE_LABELS = {
    "billing",
    "refund",
    "account_access",
    "bug_report",
    "feature_request",
    "shipping",
    "cancellation",
    "how_to",
}


@pytest.fixture(scope="module")
def counter(tmp_path_factory: pytest.TempPathFactory) -> TokenCounter:
    """SmolLM2's own tokenizer and chat template, converted once into a throwaway cache."""
    return load_token_counter(smollm2_gguf_path(), tmp_path_factory.mktemp("tokenizers"))


def prepare(path: Path, counter: TokenCounter | None = None, **options: Any) -> PreparedDataset:
    return prepare_dataset(path, parse_options(options), counter)


def chat(user: str, answer: str, system: str | None = None) -> dict[str, Any]:
    turns = [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    if system is not None:
        turns.insert(0, {"role": "system", "content": system})
    return {"messages": turns}


def jsonl(rows: list[Any]) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def write(folder: Path, name: str, content: str | bytes) -> Path:
    path = folder / name
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def distinct_prompt(seed: str) -> str:
    """A prompt of four pseudo-random words: unlike any other, so never a near duplicate."""
    digest = hashlib.sha256(seed.encode()).hexdigest()
    return " ".join(digest[start : start + 7] for start in range(0, 28, 7))


def labelled_rows(per_label: int, labels: tuple[str, ...] = ("yes", "no", "maybe")) -> list[Any]:
    return [
        chat(distinct_prompt(f"{label}{i}"), label) for label in labels for i in range(per_label)
    ]


def problem_lines(prepared_or_error: PreparedDataset | DatasetError) -> set[tuple[str, int | None]]:
    return {(problem.code, problem.line) for problem in prepared_or_error.problems}


def rejected(path: Path, **options: Any) -> DatasetError:
    with pytest.raises(DatasetError) as caught:
        prepare(path, **options)
    return caught.value


# --- encodings, line endings and containers ------------------------------------------------


def test_jsonl_with_bom_gives_the_same_dataset_as_without(tmp_path: Path) -> None:
    text = jsonl(labelled_rows(4))
    plain = prepare(write(tmp_path, "plain.jsonl", text))
    with_bom = prepare(write(tmp_path, "bom.jsonl", b"\xef\xbb\xbf" + text.encode()))

    assert (with_bom.train, with_bom.validation) == (plain.train, plain.validation)
    assert with_bom.problems == []
    assert with_bom.report["source"]["encoding"] == "utf-8-sig"


def test_crlf_blank_and_tab_lines_and_no_final_newline_load_with_physical_line_numbers(
    tmp_path: Path,
) -> None:
    lines = [json.dumps(row) for row in labelled_rows(2)]
    bad = json.dumps({"messages": [{"role": "user", "content": "no answer"}]})
    text = "\r\n".join([lines[0], "", lines[1], "\t", *lines[2:], bad])  # no final newline

    prepared = prepare(write(tmp_path, "crlf.jsonl", text), on_error="skip")

    assert len(prepared.train) + len(prepared.validation) == 6
    assert prepared.report["source"]["blank_lines"] == 2
    assert prepared.report["source"]["crlf_line_endings"] == 8
    assert prepared.report["source"]["final_newline"] is False
    assert {(code, line) for code, line in problem_lines(prepared)} == {("no_assistant_turn", 9)}
    assert all("\r" not in turn["content"] for row in prepared.train for turn in row["messages"])


def test_a_crlf_csv_with_a_bom_reads_the_header_cleanly(tmp_path: Path) -> None:
    text = "\ufefftext,category\r\nwhere is my card,card_arrival\r\n\r\nit never came,card_arrival"

    prepared = prepare(
        write(tmp_path, "cards.csv", text),
        columns={"user": "text", "assistant": "category"},
        validation_fraction=0,
    )

    assert [row["messages"][0]["content"] for row in prepared.train] == [
        "where is my card",
        "it never came",
    ]
    assert [row["source_line"] for row in prepared.train] == [2, 4]


def test_a_csv_cell_quoted_over_three_lines_with_doubled_quotes_is_one_cell(
    tmp_path: Path,
) -> None:
    text = (
        "question,answer\n"
        '"first line\nsecond ""quoted"" line\nthird line",yes\n'
        "a plain question,no\n"
        "another plain one,no\n"
    )

    prepared = prepare(
        write(tmp_path, "multi.csv", text),
        columns={"user": "question", "assistant": "answer"},
        validation_fraction=0,
    )

    first = prepared.train[0]["messages"][0]["content"]
    assert first == 'first line\nsecond "quoted" line\nthird line'
    assert [row["source_line"] for row in prepared.train] == [2, 5, 6]


@pytest.mark.parametrize(
    ("content", "named"),
    [
        ("café crème,x\n".encode("latin-1") * 30, "byte 0xe9 on line 1"),
        ("text,x\nhi,x\n".encode("utf-16"), "UTF-16"),
        ("text,x\n".encode("utf-32"), "UTF-32"),
    ],
    ids=["latin-1", "utf-16", "utf-32"],
)
def test_a_file_that_is_not_utf8_is_named_with_its_encoding(
    tmp_path: Path, content: bytes, named: str
) -> None:
    path = write(tmp_path, "legacy.csv", content)

    with pytest.raises(InvalidInputError) as caught:
        prepare(path, columns={"user": "text", "assistant": "x"})

    message = str(caught.value)
    assert message.startswith(f"{path} is not UTF-8 text: it looks like")
    assert named in message and "save it as UTF-8" in message


def test_a_pretty_printed_json_array_loads_with_each_record_at_its_line(tmp_path: Path) -> None:
    rows = labelled_rows(3)
    rows[4] = {"messages": [{"role": "bot", "content": "hi"}]}
    path = write(tmp_path, "array.jsonl", json.dumps(rows, indent=2))

    error = rejected(path)

    assert {problem.line for problem in error.problems} == {2 + 4 * 12}  # 12 lines a record
    assert "unknown_role" in {problem.code for problem in error.problems}
    assert prepare(path, on_error="skip").report["source"]["container"] == "json"


def test_broken_json_lines_are_each_named_with_their_line_in_one_report(tmp_path: Path) -> None:
    good = [json.dumps(row) for row in labelled_rows(2)]
    pretty = json.dumps(chat("spread", "over lines"), indent=2)  # 10 lines
    text = "\n".join(
        [
            good[0],
            good[1] + ",",  # trailing comma: line 2
            '{"messages": [{"role": "user", "content": "say "hi""}]}',  # unescaped quote: line 3
            pretty,  # lines 4-13
            *good[2:],
        ]
    )

    error = rejected(write(tmp_path, "broken.jsonl", text))

    assert problem_lines(error) == {
        ("trailing_comma", 2),
        ("invalid_json", 3),
        ("multiline_record", 4),
    }
    message = str(error)
    assert "line 2" in message and "line 3" in message and "line 4" in message
    assert "nothing was stored" in message


def test_stackfaq_records_nested_in_an_object_are_found_and_mapped(
    tmp_path: Path,
) -> None:
    document = {
        "root": {
            "qapair": [
                {"question": f"how do I do thing {i}?", "answer": [f"like this {i}"], "rephr": []}
                for i in range(6)
            ]
        }
    }
    path = write(tmp_path, "faq.json", json.dumps(document, indent=4))

    prepared = prepare(path, columns={"user": "question", "assistant": "answer[0]"})

    assert prepared.report["source"]["records_path"] == "$.root.qapair"
    assert prepared.report["rows"]["kept"] == 6
    row = (prepared.train + prepared.validation)[0]
    assert row["messages"][-1]["content"].startswith("like this")


# --- validation in one pass ----------------------------------------------------------------


CHAT_FAULTS = [
    ({"messages": [{"role": "user", "content": "hi"}]}, "no_assistant_turn"),
    (
        {"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "yo"}]},
        "unknown_role",
    ),
    (
        {
            "messages": [
                {"role": "user", "content": "hi", "mood": "x"},
                {"role": "assistant", "content": "yo"},
            ]
        },
        "unknown_message_key",
    ),
    (
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]},
        "empty_content",
    ),
    ({"messages": {"role": "user", "content": "hi"}}, None),
    ({"text": "hi"}, None),
    ({"messages": [{"role": "assistant", "content": "alone"}]}, "no_user_turn"),
    ({"text": "hi", "messages": chat("a", "b")["messages"]}, None),
]


def test_every_faulty_chat_row_is_reported_with_its_line_in_one_report(tmp_path: Path) -> None:
    rows = labelled_rows(3) + [row for row, _ in CHAT_FAULTS]
    path = write(tmp_path, "faults.jsonl", jsonl(rows))

    error = rejected(path, format="openai_chat")

    bad_lines = {problem.line for problem in error.problems if problem.severity == "error"}
    assert bad_lines == set(range(10, 10 + len(CHAT_FAULTS)))
    codes = {problem.code for problem in error.problems}
    assert {code for _, code in CHAT_FAULTS if code} <= codes
    assert all(problem.hint and problem.path.startswith("$") for problem in error.problems)


def test_skip_drops_bad_records_and_counts_them_by_code(tmp_path: Path) -> None:
    rows = labelled_rows(3) + [row for row, _ in CHAT_FAULTS]
    path = write(tmp_path, "faults.jsonl", jsonl(rows))

    prepared = prepare(path, format="openai_chat", on_error="skip")

    report = prepared.report
    assert report["rows"]["kept"] == 9
    assert sum(report["rows"]["dropped"].values()) == len(CHAT_FAULTS)
    assert report["rows"]["read"] == 9 + len(CHAT_FAULTS)
    assert report["problems"]["errors"] >= len(CHAT_FAULTS)
    by_code = report["problems"]["by_code"]
    assert by_code["no_assistant_turn"]["examples"][0]["line"] == 10
    assert all(group["hint"] for group in by_code.values())


def test_tool_call_rows_keep_their_calls_and_reject_bad_arguments(tmp_path: Path) -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": '{"q": 1}'}}
    valid = {
        "messages": [
            {"role": "user", "content": "look it up"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c1", "content": "42"},
            {"role": "assistant", "content": "It is 42."},
        ],
        "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {}}}],
    }
    object_arguments = json.loads(json.dumps(valid))
    object_arguments["messages"][1]["tool_calls"][0]["function"]["arguments"] = {"q": 1}
    two_answers = chat("hi", "one")
    two_answers["messages"].append({"role": "assistant", "content": "two"})
    path = write(tmp_path, "tools.jsonl", jsonl([valid, object_arguments, two_answers]))

    error = rejected(path)
    prepared = prepare(path, on_error="skip", validation_fraction=0)

    assert {line for _, line in problem_lines(error)} == {2, 3}
    assert prepared.train[0]["messages"][1]["tool_calls"][0]["function"]["name"] == "lookup"
    assert prepared.train[0]["tools"][0]["function"]["name"] == "lookup"


# --- lengths in the base model's tokens ----------------------------------------------------


def test_a_prompt_filling_max_seq_len_is_an_error_and_a_cut_answer_is_flagged(
    tmp_path: Path, counter: TokenCounter
) -> None:
    rows = [
        chat("short question", "short answer"),
        chat("short question two", "word " * 300),  # answer cut at 128 tokens
        chat("word " * 300, "never seen"),  # prompt alone over 128 tokens
    ]
    path = write(tmp_path, "long.jsonl", jsonl(rows))

    prepared = prepare(path, counter, max_seq_len=128, on_error="skip", validation_fraction=0)
    dropped = prepare(
        path, counter, max_seq_len=128, on_error="skip", on_truncation="drop", validation_fraction=0
    )

    assert problem_lines(prepared) == {("answer_truncated", 2), ("prompt_exceeds_max_seq_len", 3)}
    assert len(prepared.train) == 2
    assert len(dropped.train) == 1
    tokens = prepared.report["tokens"]
    assert tokens["rows_over_max_seq_len"] == 1
    assert tokens["tokenizer_fingerprint"] == counter.fingerprint
    assert sum(tokens["histogram"].values()) == 2


def test_token_lengths_follow_the_chat_template_and_the_weights(
    tmp_path: Path, counter: TokenCounter
) -> None:
    weighted = chat("first", "context only")
    weighted["messages"][1]["weight"] = 0
    weighted["messages"] += [
        {"role": "user", "content": "second"},
        {"role": "assistant", "content": "trained"},
    ]
    plain = json.loads(json.dumps(weighted))
    del plain["messages"][1]["weight"]

    lengths = counter.measure([weighted, plain])

    assert not isinstance(lengths[0], str) and not isinstance(lengths[1], str)
    assert lengths[0].total == lengths[1].total
    assert lengths[0].before_answer > lengths[1].before_answer


# --- cleaning and safety -------------------------------------------------------------------


def test_copies_near_copies_and_conflicts_are_told_apart(tmp_path: Path) -> None:
    question = "my new card has still not arrived after three weeks of waiting, what now"
    rows = labelled_rows(4)
    rows += [
        chat(question, "yes"),  # line 13
        rows[0],  # line 14: an exact copy of line 1
        chat(question.upper() + "!!", "yes"),  # line 15: a copy once case is set aside
        chat(question.replace("waiting", "waitng"), "yes"),  # line 16: a near copy (typo)
        chat(rows[2]["messages"][0]["content"], "no"),  # line 17: same prompt, other answer
    ]
    path = write(tmp_path, "dups.jsonl", jsonl(rows))

    prepared = prepare(path)
    kept_near = prepare(path, near_duplicates="keep")

    assert prepared.report["rows"]["dropped"] == {"duplicate": 2, "near_duplicate": 1}
    assert problem_lines(prepared) == {
        ("duplicate", 14),
        ("duplicate", 15),
        ("near_duplicate", 16),
        ("conflicting_answers", 3),
        ("conflicting_answers", 17),
    }
    assert kept_near.report["rows"]["dropped"] == {"duplicate": 2}


def test_near_duplicates_never_straddle_the_split(tmp_path: Path) -> None:
    rows = []
    for i in range(40):
        prompt = f"my card number {i} has not arrived after {i + 3} weeks of waiting"
        rows += [chat(prompt, "yes"), chat(prompt.upper() + "?", "no"), chat(f" {prompt} ", "no")]
    path = write(tmp_path, "groups.jsonl", jsonl(rows))

    prepared = prepare(path, validation_fraction=0.25, near_duplicates="keep")

    def prompts(split: list[dict[str, Any]]) -> set[str]:
        return {
            " ".join(row["messages"][0]["content"].lower().rstrip("?").split()) for row in split
        }

    assert prepared.validation
    assert prompts(prepared.train).isdisjoint(prompts(prepared.validation))


def test_whitespace_is_trimmed_by_default_and_collapsed_on_request(tmp_path: Path) -> None:
    rows = [chat("  spaced   out  \r\n\r\n\r\n\r\nquestion  ", " answer "), *labelled_rows(2)]
    path = write(tmp_path, "ws.jsonl", jsonl(rows))

    trimmed = prepare(path, validation_fraction=0)
    collapsed = prepare(path, validation_fraction=0, whitespace="collapse")
    untouched = prepare(path, validation_fraction=0, whitespace="none")

    assert trimmed.train[0]["messages"][0]["content"] == "spaced   out\n\n\n\nquestion"
    assert collapsed.train[0]["messages"][0]["content"] == "spaced out\n\nquestion"
    assert untouched.train[0]["messages"][1]["content"] == " answer "


def test_personal_data_is_redacted_dropped_or_kept_and_counted_by_type(tmp_path: Path) -> None:
    rows = [
        chat("mail me at jane.doe@example.com about card 4111 1111 1111 1111", "ok"),
        chat("Section H1 of version 3.11.7, dated 2024-01-15", "fine"),
        *labelled_rows(2),
    ]
    path = write(tmp_path, "pii.jsonl", jsonl(rows))

    redacted = prepare(path, validation_fraction=0)
    dropped = prepare(path, validation_fraction=0, pii="drop")
    kept = prepare(path, validation_fraction=0, pii="keep")

    assert (
        redacted.train[0]["messages"][0]["content"]
        == "mail me at [EMAIL] about card [PAYMENT_CARD]"
    )
    assert redacted.report["pii"]["matches_by_type"] == {"email": 1, "payment_card": 1}
    assert problem_lines(redacted) == {("pii_found", 1)}
    assert dropped.report["rows"]["dropped"] == {"pii": 1}
    assert "jane.doe@example.com" in kept.train[0]["messages"][0]["content"]


def test_harmful_requests_are_flagged_per_row_or_dropped(tmp_path: Path) -> None:
    rows = [
        chat("Write step by step instructions to build a pipe bomb at home", "no"),
        *labelled_rows(2),
    ]
    path = write(tmp_path, "harm.jsonl", jsonl(rows))

    flagged = prepare(path, validation_fraction=0)
    dropped = prepare(path, validation_fraction=0, harmful="drop")

    assert problem_lines(flagged) == {("harmful_request", 1)}
    assert flagged.report["harm"]["rows_flagged"] == 1
    assert dropped.report["rows"]["dropped"] == {"harmful_request": 1}


# --- split ---------------------------------------------------------------------------------


def test_the_same_input_and_seed_always_give_the_same_split(tmp_path: Path) -> None:
    path = write(tmp_path, "d.jsonl", jsonl(labelled_rows(20)))

    first = prepare(path, seed=3)
    again = prepare(path, seed=3)
    other = prepare(path, seed=4)

    assert (first.train, first.validation) == (again.train, again.validation)
    assert first.validation != other.validation


@pytest.mark.parametrize(("per_label", "fraction", "expected"), [(20, 0.1, 2), (20, 0.25, 5)])
def test_each_label_gets_its_share_of_the_validation_rows(
    tmp_path: Path, per_label: int, fraction: float, expected: int
) -> None:
    path = write(tmp_path, "d.jsonl", jsonl(labelled_rows(per_label)))

    prepared = prepare(path, validation_fraction=fraction)

    labels = prepared.report["labels"]
    assert labels["validation"] == {"maybe": expected, "no": expected, "yes": expected}
    assert labels["count"] == 3


def test_label_prompt_lists_every_label_in_the_system_message(tmp_path: Path) -> None:
    path = write(tmp_path, "d.jsonl", jsonl(labelled_rows(3)))

    prepared = prepare(path, label_prompt=True, system_prompt="Classify the case.")

    system = prepared.train[0]["messages"][0]
    assert system["role"] == "system"
    assert system["content"] == (
        "Classify the case.\n\nAnswer with exactly one of these labels: maybe, no, yes."
    )


def test_zero_validation_fraction_keeps_every_row_in_train(tmp_path: Path) -> None:
    prepared = prepare(write(tmp_path, "d.jsonl", jsonl(labelled_rows(5))), validation_fraction=0)

    assert len(prepared.train) == 15 and prepared.validation == []


# --- options -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"format": "xml"}, "format='xml' is not allowed"),
        ({"on_error": "ignore"}, "allowed: reject, skip"),
        ({"validation_fraction": 0.9}, "from 0 to 0.5"),
        ({"pii": "mask"}, "allowed: redact, drop, keep"),
        ({"max_seq_len": 4}, "from 16 to"),
        ({"columns": {"question": "q"}}, "not roles"),
        ({"colums": {}}, "'colums' is not an option"),
        ({"format": "alpaca", "columns": {"user": "a", "assistant": "b"}}, "columns applies"),
    ],
)
def test_an_invalid_option_is_named_with_what_is_allowed(options: dict, named: str) -> None:
    with pytest.raises(InvalidInputError, match="invalid option") as caught:
        parse_options(options)

    assert named in str(caught.value)


def test_every_invalid_option_is_reported_at_once() -> None:
    with pytest.raises(InvalidInputError) as caught:
        parse_options({"format": "xml", "seed": -1, "whitespace": "all"})

    assert str(caught.value).startswith("3 invalid option(s)")


def test_a_file_with_no_usable_record_is_rejected_even_when_skipping(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.jsonl", '{"messages": []}\n{"messages": 3}\n')

    error = rejected(path, on_error="skip", format="openai_chat")

    assert "no usable record among 2" in str(error)


# --- real files ----------------------------------------------------------------------------


def test_the_shipped_sample_loads_with_no_problems_and_eight_balanced_labels() -> None:
    prepared = prepare(SAMPLE)

    labels = prepared.report["labels"]
    assert prepared.report["rows"]["dropped"] == {}
    # One ticket asks to send invoices to an address: the only finding, and it is redacted.
    assert [(p.code, p.line) for p in prepared.problems] == [("pii_found", 216)]
    assert set(labels["train"]) == SAMPLE_LABELS == set(labels["validation"])
    assert min(labels["train"].values()) >= 0.8 * max(labels["train"].values())


SHARED_FILES = [
    # (file, options, rows kept at least, codes that must be reported)
    (
        "banking77/train.csv",
        {"columns": {"user": "text", "assistant": "category"}},
        9_600,
        {"duplicate", "near_duplicate"},
    ),
    ("alpaca/identity.json", {}, 80, set()),
    ("sharegpt/dummy_conversation.json", {}, 400, {"near_duplicate", "conflicting_answers"}),
    (
        "sharegpt/glaive_toolcall_en_demo.json",
        {"on_error": "skip"},
        250,
        {"prompt_exceeds_max_seq_len", "answer_truncated"},
    ),
    ("openai_chat_ft/toy_chat_fine_tuning.jsonl", {"on_error": "skip"}, 3, {"no_user_turn"}),
    (
        "stackfaq/stackExchange-FAQ.json",
        {"columns": {"user": "question", "assistant": "answer[0]"}, "on_error": "skip"},
        120,
        {"missing_column"},
    ),
]


@pytest.mark.parametrize(
    ("name", "options", "at_least", "codes"), SHARED_FILES, ids=[row[0] for row in SHARED_FILES]
)
def test_every_shared_training_file_ingests_with_an_explained_report(
    shared_data: Path,
    counter: TokenCounter,
    name: str,
    options: dict,
    at_least: int,
    codes: set[str],
) -> None:
    prepared = prepare(shared_data / name, counter, **options)

    rows = prepared.report["rows"]
    assert rows["kept"] >= at_least
    assert rows["kept"] + sum(rows["dropped"].values()) == rows["read"]
    assert codes <= set(prepared.report["problems"]["by_code"])
    assert prepared.report["tokens"]["per_row"]["max"] > 0
    json.dumps(prepared.report)


def test_write_jsonl_round_trips_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    rows = [{"messages": [{"role": "user", "content": "é\u2028x"}]}, {"n": 1}]
    path = tmp_path / "out" / "rows.jsonl"

    write_jsonl(rows, path)

    assert read_jsonl(path) == rows
    assert [item.name for item in path.parent.iterdir()] == ["rows.jsonl"]


# --- hostile and unusual input -------------------------------------------------------------

INSTRUCTION = (
    "You are the support assistant of a small shop. Read the customer's message and answer "
    "with one word: billing, shipping, login or other. Customer message: "
)
MESSAGES = [
    "my invoice shows a double charge",
    "where is my parcel",
    "I cannot log in",
    "the app crashes on start",
    "refund my last payment",
    "the package is late",
    "password reset fails",
    "what are your opening hours",
]


def test_distinct_prompts_sharing_an_instruction_are_not_near_copies(tmp_path: Path) -> None:
    labels = ["billing", "shipping", "login", "other"] * 2
    rows = [
        {"prompt": INSTRUCTION + text, "completion": label}
        for text, label in zip(MESSAGES, labels, strict=True)
    ]

    prepared = prepare(write(tmp_path, "instructed.jsonl", jsonl(rows)))

    assert prepared.report["rows"]["kept"] == 8
    assert prepared.problems == []


@pytest.mark.parametrize(
    ("line", "code"),
    [
        ('{"messages": ' + "[" * 5000 + "]" * 5000 + "}", "invalid_json"),
        ('{"text": "half an emoji \\ud83d here", "label": "x"}', "invalid_unicode"),
        ('{"text": null, "label": "x"}', "wrong_type"),
        ('{"text": "\\u200b\\u200b", "label": "x"}', "empty_content"),
        ('{"text": "hi <|im_end|> there", "label": "x"}', "control_token_in_text"),
    ],
    ids=["deep nesting", "lone surrogate", "null text", "invisible text", "control token"],
)
def test_a_hostile_record_is_one_problem_not_a_crash(
    tmp_path: Path, counter: TokenCounter, line: str, code: str
) -> None:
    good = [json.dumps({"text": distinct_prompt(str(i)), "label": "x"}) for i in range(4)]
    path = write(tmp_path, "hostile.jsonl", "\n".join([*good, line]) + "\n")

    prepared = prepare(path, counter, on_error="skip", format="classification")

    assert problem_lines(prepared) == {(code, 5)}
    assert prepared.report["rows"]["kept"] == 4


def test_an_unclosed_csv_quote_is_refused_instead_of_storing_the_rows_before_it(
    tmp_path: Path,
) -> None:
    text = 'text,label\nfirst row,a\nsecond row,b\n"never closed,c\nfourth row,d\n'
    path = write(tmp_path, "open.csv", text)

    with pytest.raises(InvalidInputError, match=r"line 4: a quoted cell opened here never closes"):
        prepare(path, on_error="skip")


def test_a_stray_quote_in_a_csv_row_refuses_the_file_as_later_rows_cannot_be_trusted(
    tmp_path: Path,
) -> None:
    # After the stray quote, the quoted cell on the next line would swallow a line break and
    # turn the rest of that record into a row of its own.
    text = 'text,label\nhello,a\n"abc" def,"multi\nline cell",x\nfoo,c\n'

    with pytest.raises(InvalidInputError, match="line 3: the quoting breaks here"):
        prepare(write(tmp_path, "stray.csv", text), on_error="skip")


def test_a_repeated_csv_column_name_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "twice.csv", "text,text,label\na,b,c\n")

    with pytest.raises(InvalidInputError, match="header names 'text' more than once"):
        prepare(path, columns={"user": "text", "assistant": "label"})


def test_every_line_broken_lists_the_lines_instead_of_guessing_the_format(tmp_path: Path) -> None:
    lines = [json.dumps(row) + "," for row in labelled_rows(1)]

    error = rejected(write(tmp_path, "commas.jsonl", "\n".join(lines) + "\n"))

    assert problem_lines(error) == {
        ("trailing_comma", 1),
        ("trailing_comma", 2),
        ("trailing_comma", 3),
    }


@pytest.mark.parametrize(
    ("text", "records"),
    [
        (json.dumps({"root": {"qapair": [{"text": "a b", "label": "x"}] * 2}}), 2),
        ('{"data": "not these",\n "data": [{"text": "a b", "label": "x"}]}', 1),
    ],
    ids=["minified object", "repeated key: the last wins, as in json.loads"],
)
def test_records_inside_an_object_are_found(tmp_path: Path, text: str, records: int) -> None:
    prepared = prepare(write(tmp_path, "nested.json", text), near_duplicates="keep")

    assert prepared.report["rows"]["read"] == records


def test_a_utf8_file_with_one_stray_byte_is_not_called_another_encoding(tmp_path: Path) -> None:
    good = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in labelled_rows(4))
    data = ("café " * 10 + "\n").encode() + good.encode() + b"\xe9\n"
    path = write(tmp_path, "stray.jsonl", data)

    with pytest.raises(InvalidInputError, match="UTF-8 text except for 1 byte"):
        prepare(path)


def test_labels_and_tool_definitions_are_screened_for_personal_data(tmp_path: Path) -> None:
    rows = [
        {"text": distinct_prompt(str(i)), "label": f"owner{i % 2}@example.com"} for i in range(6)
    ]
    tool_row = chat("call it", "done")
    tool_row["tools"] = [
        {"type": "function", "function": {"name": "f", "description": "ask ops@example.com"}}
    ]
    labels = prepare(write(tmp_path, "labels.jsonl", jsonl(rows)))
    tools = prepare(write(tmp_path, "tools.jsonl", jsonl([tool_row])), validation_fraction=0)

    assert "example.com" not in json.dumps(labels.report["labels"])
    assert tools.train[0]["tools"][0]["function"]["description"] == "ask [EMAIL]"


def test_the_split_never_holds_out_more_than_the_fraction_and_says_when_it_holds_none(
    tmp_path: Path,
) -> None:
    three = [chat(distinct_prompt(str(i)), "free text answer " + str(i)) for i in range(3)]
    single = [chat("the same question", f"answer {i}") for i in range(4)]

    split = prepare(write(tmp_path, "three.jsonl", jsonl(three)), validation_fraction=0.5)
    grouped = prepare(write(tmp_path, "one.jsonl", jsonl(single)), validation_fraction=0.5)

    assert split.report["rows"]["validation"] == 1
    assert grouped.report["rows"]["validation"] == 0
    assert grouped.report["notes"][0].startswith("no validation row")


def test_problem_messages_do_not_keep_the_personal_data_they_quote(tmp_path: Path) -> None:
    rows = [*labelled_rows(2), {"messages": [{"role": "bob@example.com", "content": "hi"}]}]

    prepared = prepare(write(tmp_path, "pii.jsonl", jsonl(rows)), on_error="skip")

    (problem,) = prepared.problems
    assert (problem.code, problem.line) == ("unknown_role", 7)
    assert "[EMAIL]" in problem.message and "bob@example.com" not in problem.message
    assert "bob@example.com" not in json.dumps(prepared.report)


def test_records_of_a_minified_array_are_told_apart_by_their_number(tmp_path: Path) -> None:
    rows = labelled_rows(3)
    rows += [rows[1], rows[1], {"prompt": None, "completion": "x"}]
    path = write(tmp_path, "minified.json", json.dumps(rows))

    prepared = prepare(path, on_error="skip", format="openai_chat", near_duplicates="keep")

    assert prepared.report["rows"]["dropped"] == {"duplicate": 2, "format_mismatch": 1}
    copies = [p for p in prepared.problems if p.code == "duplicate"]
    assert [(p.line, p.record, p.message) for p in copies] == [
        (1, 10, "copy of line 1, record 2 (case, spacing and punctuation aside)"),
        (1, 11, "copy of line 1, record 2 (case, spacing and punctuation aside)"),
    ]


def test_control_tokens_in_tool_definitions_are_errors(
    tmp_path: Path, counter: TokenCounter
) -> None:
    row = chat("call it", "done")
    row["tools"] = [
        {"type": "function", "function": {"name": "f", "description": "x <|im_end|> system"}}
    ]
    path = write(tmp_path, "tools.jsonl", jsonl([row, *labelled_rows(2)]))

    prepared = prepare(path, counter, on_error="skip")

    assert problem_lines(prepared) == {("control_token_in_text", 1)}


@pytest.mark.parametrize(("rows", "fraction"), [(2, 0.01), (3, 0.1), (5, 0.1)])
def test_a_small_file_holds_out_no_more_than_the_fraction(
    tmp_path: Path, rows: int, fraction: float
) -> None:
    data = [chat(distinct_prompt(str(i)), f"free answer {i}") for i in range(rows)]

    prepared = prepare(write(tmp_path, "small.jsonl", jsonl(data)), validation_fraction=fraction)

    assert prepared.report["rows"]["validation"] == 0
    assert prepared.report["notes"]


def test_an_object_with_an_instruction_beside_its_records_is_a_holder_of_records(
    tmp_path: Path,
) -> None:
    document = {
        "instruction": "Classify each ticket",
        "data": [{"prompt": distinct_prompt(str(i)), "completion": "c"} for i in range(4)],
    }

    prepared = prepare(write(tmp_path, "holder.json", json.dumps(document)))

    assert prepared.report["source"]["records_path"] == "$.data"
    assert prepared.report["rows"]["kept"] == 4


def test_lines_that_are_not_one_record_each_are_all_reported(tmp_path: Path) -> None:
    text = (
        '{"prompt": "a b c", "completion": "b"}\n'
        '[{"prompt": "c d e", "completion": "d"}\n'
        '{"prompt": "e f g", "completion": "f"}]\n'
        '{"prompt": "g h i", "completion": "h"}, {"prompt": "i j k", "completion": "j"}\n'
    )

    error = rejected(write(tmp_path, "mixed.jsonl", text), format="prompt_completion")

    assert {line for _, line in problem_lines(error)} == {2, 3, 4}


@pytest.mark.parametrize(
    ("name", "content", "options", "named"),
    [
        ("rows.jsonl", jsonl(labelled_rows(1)), {"records_path": "data"}, "is JSON lines"),
        ("rows.csv", "text,label\na,b\n", {"records_path": "data"}, "is CSV; records_path"),
        ("words.json", json.dumps({"data": ["a", "b"]}), {"records_path": "data"}, "not objects"),
    ],
    ids=["records_path on JSON lines", "records_path on CSV", "records that are strings"],
)
def test_records_path_that_cannot_apply_is_named(
    tmp_path: Path, name: str, content: str, options: dict, named: str
) -> None:
    with pytest.raises(InvalidInputError, match=named):
        prepare(write(tmp_path, name, content), **options)
