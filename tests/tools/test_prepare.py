"""Dataset preparation: parsing, validation, de-duplication, splits and the shipped samples."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from turing.tools.datasets import prepare as prepare_module
from turing.tools.datasets.prepare import (
    DatasetError,
    RowProblem,
    prepare_dataset,
    read_jsonl,
    write_jsonl,
)
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
TICKET_COLUMNS = {"user": "text", "assistant": "category"}


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


def labelled_rows(per_label: int, labels: tuple[str, ...] = ("yes", "no", "maybe")) -> list[Any]:
    return [chat(f"question {i} for {label}", label) for label in labels for i in range(per_label)]


def shared_data() -> Path:
    configured = os.environ.get("TURING_SHARED_DATA")
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"


# --- encodings and line endings ------------------------------------------------------------


def test_jsonl_with_bom_gives_the_same_dataset_as_without(tmp_path: Path) -> None:
    text = jsonl(labelled_rows(4))
    plain = prepare_dataset(write(tmp_path, "plain.jsonl", text))
    with_bom = prepare_dataset(write(tmp_path, "bom.jsonl", b"\xef\xbb\xbf" + text.encode()))

    assert with_bom.train == plain.train
    assert with_bom.validation == plain.validation
    assert with_bom.problems == []


def test_crlf_blank_lines_and_no_final_newline_are_read_cleanly(tmp_path: Path) -> None:
    lines = [json.dumps(row) for row in labelled_rows(2)]
    text = "\r\n".join([lines[0], "", lines[1], "   ", *lines[2:]])  # no newline at the end

    prepared = prepare_dataset(write(tmp_path, "crlf.jsonl", text), validation_fraction=0)

    assert len(prepared.train) == 6
    assert prepared.report["blank_lines"] == 2
    assert prepared.report["rows_read"] == 6
    assert all(not turn["content"].endswith("\r") for turn in prepared.train[-1]["messages"])


def test_crlf_csv_with_a_bom_reads_the_header_cleanly(tmp_path: Path) -> None:
    text = "\ufefftext,category\r\nwhere is my card,card_arrival\r\n\r\nit never came,card_arrival"

    prepared = prepare_dataset(
        write(tmp_path, "cards.csv", text), columns=TICKET_COLUMNS, validation_fraction=0
    )

    assert [row["messages"][0]["content"] for row in prepared.train] == [
        "where is my card",
        "it never came",
    ]
    assert prepared.report["blank_lines"] == 1


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("text,x\ncafé,x\n".encode("latin-1"), "byte 0xe9 on line 2"),
        ("text,x\n".encode("utf-16"), "is UTF-16 text"),
    ],
    ids=["latin-1", "utf-16"],
)
def test_a_file_that_is_not_utf8_is_named_in_the_error(
    tmp_path: Path, content: bytes, expected: str
) -> None:
    path = write(tmp_path, "legacy.csv", content)

    with pytest.raises(InvalidInputError) as caught:
        prepare_dataset(path, columns={"user": "text", "assistant": "x"})

    assert str(caught.value).startswith(str(path))
    assert expected in str(caught.value)
    assert "as UTF-8" in str(caught.value)


# --- row validation ------------------------------------------------------------------------


def test_bad_json_is_reported_with_its_line_alongside_later_problems(tmp_path: Path) -> None:
    good = json.dumps(chat("hi", "hello"))
    bot = json.dumps(
        {"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "x"}]}
    )
    text = "\n".join([good, '{"messages": [', good, "", bot, json.dumps(chat("a", ""))])

    with pytest.raises(DatasetError) as caught:
        prepare_dataset(write(tmp_path, "mixed.jsonl", text))

    problems = caught.value.problems
    assert [(p.line, p.field) for p in problems] == [
        (2, "row"),
        (5, "messages[1].role"),
        (6, "messages[1].content"),
    ]
    assert problems[0].message.startswith("not valid JSON: ")
    message = str(caught.value)
    assert "mixed.jsonl" in message and "3 problem(s) in 3 of 5 rows" in message
    assert (
        "line 5, field messages[1].role: 'bot' is not a role; allowed: system, user, assistant"
        in message
    )


BAD_ROWS = [
    pytest.param("[1, 2]", "row", "got an array", id="not an object"),
    pytest.param('{"text": "hi"}', "messages", "is missing", id="missing messages"),
    pytest.param('{"messages": []}', "messages", "is empty", id="empty messages"),
    pytest.param('{"messages": "hi"}', "messages", "got a string", id="messages not a list"),
    pytest.param('{"messages": [7]}', "messages[0]", "got a number", id="message not an object"),
    pytest.param(
        '{"messages": [{"role": "human", "content": "hi"}, {"role": "assistant", "content": "a"}]}',
        "messages[0].role",
        "'human' is not a role; allowed: system, user, assistant",
        id="unknown role",
    ),
    pytest.param(
        '{"messages": [{"content": "hi"}, {"role": "assistant", "content": "a"}]}',
        "messages[0].role",
        "is missing; allowed: system, user, assistant",
        id="missing role",
    ),
    pytest.param(
        '{"messages": [{"role": "user", "content": ["hi"]},'
        ' {"role": "assistant", "content": "a"}]}',
        "messages[0].content",
        "got an array; content must be a string",
        id="content not a string",
    ),
    pytest.param(
        '{"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "a"}]}',
        "messages[0].content",
        "is empty",
        id="blank content",
    ),
    pytest.param(
        '{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}]}',
        "messages",
        "has no assistant turn",
        id="no assistant turn",
    ),
    pytest.param(
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "a"},'
        ' {"role": "user", "content": "and?"}]}',
        "messages[2].role",
        "must end with an assistant turn",
        id="last turn from the user",
    ),
]


@pytest.mark.parametrize(("line", "field", "fragment"), BAD_ROWS)
def test_an_invalid_row_is_reported_with_its_line_and_field(
    tmp_path: Path, line: str, field: str, fragment: str
) -> None:
    text = jsonl([chat("fine", "ok")]) + line + "\n"

    with pytest.raises(DatasetError) as caught:
        prepare_dataset(write(tmp_path, "rows.jsonl", text))

    [problem] = caught.value.problems
    assert (problem.line, problem.field) == (2, field)
    assert fragment in problem.message


def test_a_json_array_file_is_rejected_with_the_expected_layout(tmp_path: Path) -> None:
    path = write(tmp_path, "array.json", json.dumps([chat("a", "b")], indent=2))

    with pytest.raises(InvalidInputError, match=r"one .* object per line"):
        prepare_dataset(path)


def test_a_jsonl_file_whose_first_row_is_an_array_is_reported_row_by_row(tmp_path: Path) -> None:
    path = write(tmp_path, "rows.jsonl", "[1]\n" + jsonl([chat("a", "b")]))

    with pytest.raises(DatasetError) as caught:
        prepare_dataset(path)

    assert [(p.line, p.field) for p in caught.value.problems] == [(1, "row")]


# --- CSV -----------------------------------------------------------------------------------


def test_csv_rows_become_conversations_with_the_mapped_columns(tmp_path: Path) -> None:
    text = (
        'id,text,category\n1,"Where is my card, it is late",card_arrival\n'
        "2,Card broke,card_broken\n"
    )

    prepared = prepare_dataset(
        write(tmp_path, "tickets.csv", text),
        columns=TICKET_COLUMNS,
        system_prompt="Answer with the category.",
        validation_fraction=0,
    )

    assert prepared.train[0] == chat(
        "Where is my card, it is late", "card_arrival", system="Answer with the category."
    )
    assert prepared.report["format"] == "csv"


@pytest.mark.parametrize(
    ("name", "separator", "delimiter"),
    [("t.tsv", "\t", "\t"), ("t.csv", ";", ";"), ("t.csv", "\t", "\t"), ("t.txt", "|", "|")],
)
def test_the_csv_delimiter_is_sniffed_from_the_header(
    tmp_path: Path, name: str, separator: str, delimiter: str
) -> None:
    text = f"text{separator}category\nhello, there{separator}greeting\n"

    prepared = prepare_dataset(
        write(tmp_path, name, text), columns=TICKET_COLUMNS, validation_fraction=0
    )

    assert prepared.report["delimiter"] == delimiter
    assert prepared.train[0]["messages"][0]["content"] == "hello, there"


def test_a_system_column_becomes_the_system_turn(tmp_path: Path) -> None:
    text = "instruction,question,answer\nBe brief.,What is 2+2?,4\n"
    columns = {"system": "instruction", "user": "question", "assistant": "answer"}

    prepared = prepare_dataset(
        write(tmp_path, "qa.csv", text), columns=columns, validation_fraction=0
    )

    assert prepared.train == [chat("What is 2+2?", "4", system="Be brief.")]


def test_a_missing_csv_column_is_named_with_the_header(tmp_path: Path) -> None:
    path = write(tmp_path, "t.csv", "text,label\nhi,greeting\n")

    with pytest.raises(InvalidInputError) as caught:
        prepare_dataset(path, columns=TICKET_COLUMNS)

    assert "no column 'category'" in str(caught.value)
    assert "'text', 'label'" in str(caught.value)


def test_csv_without_a_column_mapping_lists_the_header(tmp_path: Path) -> None:
    path = write(tmp_path, "t.csv", "text,label\nhi,greeting\n")

    with pytest.raises(InvalidInputError, match=r"columns is required.*'text', 'label'"):
        prepare_dataset(path)


def test_empty_csv_cells_are_reported_with_row_and_column(tmp_path: Path) -> None:
    text = "text,category\nhello,greeting\n,greeting\nbye,\nfine,ok,extra\n"

    with pytest.raises(DatasetError) as caught:
        prepare_dataset(write(tmp_path, "t.csv", text), columns=TICKET_COLUMNS)

    assert [(p.line, p.field) for p in caught.value.problems] == [
        (3, "text"),
        (4, "category"),
        (5, "row"),
    ]
    assert "empty cell in column 'category'" in caught.value.problems[1].message


def test_an_unclosed_csv_quote_stops_reading_with_the_row_named(tmp_path: Path) -> None:
    text = 'text,category\nhello,greeting\n"where is it,lost\nnext,row\n'

    with pytest.raises(DatasetError) as caught:
        prepare_dataset(write(tmp_path, "t.csv", text), columns=TICKET_COLUMNS)

    assert caught.value.problems == [
        RowProblem(
            3, "row", "cannot be parsed as CSV: unexpected end of data; check the quotes in it"
        )
    ]


# --- policies, duplicates and options ------------------------------------------------------


def test_skip_policy_drops_bad_rows_and_counts_them_by_reason(tmp_path: Path) -> None:
    rows = [json.dumps(row) for row in labelled_rows(3)]
    bad = ["{oops", '{"messages": [{"role": "bot", "content": "x"}]}', "[]"]
    path = write(tmp_path, "mixed.jsonl", "\n".join(rows[:4] + bad + rows[4:]))

    prepared = prepare_dataset(path, on_error="skip")

    assert prepared.report["rows_kept"] == 9
    assert prepared.report["rows_dropped"] == {
        "invalid_json": 1,
        "not_an_object": 1,
        "unknown_role": 1,
    }
    assert [problem.line for problem in prepared.problems] == [5, 6, 7]
    assert prepared.report["problems"][0]["line"] == 5


def test_exact_duplicates_are_removed_and_counted(tmp_path: Path) -> None:
    rows = [*labelled_rows(2), chat("question 0 for yes", "yes"), chat("question 0 for yes", "yes")]

    prepared = prepare_dataset(write(tmp_path, "d.jsonl", jsonl(rows)), validation_fraction=0)

    assert len(prepared.train) == 6
    assert prepared.report["rows_dropped"] == {"duplicate": 2}


@pytest.mark.parametrize("on_error", ["reject", "skip"])
def test_a_file_with_no_valid_rows_is_rejected(tmp_path: Path, on_error: str) -> None:
    path = write(tmp_path, "bad.jsonl", "{bad\n\n[]\n")

    with pytest.raises(DatasetError) as caught:
        prepare_dataset(path, on_error=on_error)

    assert len(caught.value.problems) == 2


def test_an_empty_file_is_rejected_as_having_no_rows(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="has no rows"):
        prepare_dataset(write(tmp_path, "empty.jsonl", "\n\n"))


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"format": "parquet"}, "allowed: auto, chat_jsonl, csv"),
        ({"on_error": "ignore"}, "allowed: reject, skip"),
        ({"validation_fraction": 0.6}, "from 0 to 0.5"),
        ({"validation_fraction": -0.1}, "from 0 to 0.5"),
        ({"validation_fraction": float("nan")}, "from 0 to 0.5"),
        ({"seed": "7"}, "seed '7' is not an integer"),
        ({"system_prompt": " "}, "system_prompt is empty"),
        ({"columns": {"bot": "x", "user": "t"}}, "'bot' is not a role"),
        ({"columns": {"user": "text"}}, "no 'assistant' entry"),
    ],
)
def test_an_invalid_option_is_named_with_what_is_allowed(
    tmp_path: Path, options: dict[str, Any], fragment: str
) -> None:
    path = write(tmp_path, "d.jsonl", jsonl(labelled_rows(2)))

    with pytest.raises(InvalidInputError, match=re.escape(fragment)):
        prepare_dataset(path, **options)


def test_every_invalid_option_is_reported_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, "d.jsonl", jsonl(labelled_rows(2)))

    with pytest.raises(InvalidInputError, match="3 invalid option"):
        prepare_dataset(path, format="xml", on_error="x", validation_fraction=2)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match=r"no dataset file at .*absent\.jsonl"):
        prepare_dataset(tmp_path / "absent.jsonl")


def test_system_prompt_is_added_only_to_rows_without_one(tmp_path: Path) -> None:
    rows = [chat("a", "x"), chat("b", "y", system="own")]

    prepared = prepare_dataset(
        write(tmp_path, "s.jsonl", jsonl(rows)), system_prompt="fixed", validation_fraction=0
    )

    assert [row["messages"][0]["content"] for row in prepared.train] == ["fixed", "own"]


# --- split ---------------------------------------------------------------------------------


def test_the_same_input_and_seed_always_give_the_same_split(tmp_path: Path) -> None:
    path = write(tmp_path, "d.jsonl", jsonl(labelled_rows(20)))

    first = prepare_dataset(path, seed=3)
    again = prepare_dataset(path, seed=3)
    other = prepare_dataset(path, seed=4)

    assert (first.train, first.validation) == (again.train, again.validation)
    assert first.validation != other.validation


@pytest.mark.parametrize(("per_label", "fraction", "expected"), [(20, 0.1, 2), (20, 0.25, 5)])
def test_each_label_gets_its_share_of_the_validation_rows(
    tmp_path: Path, per_label: int, fraction: float, expected: int
) -> None:
    path = write(tmp_path, "d.jsonl", jsonl(labelled_rows(per_label)))

    prepared = prepare_dataset(path, validation_fraction=fraction)

    assert prepared.report["validation_labels"] == {
        "maybe": expected,
        "no": expected,
        "yes": expected,
    }
    assert prepared.report["labels"] == {"maybe": per_label, "no": per_label, "yes": per_label}


def test_a_tiny_dataset_still_gets_one_validation_row_and_keeps_each_label_in_train(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, "d.jsonl", jsonl(labelled_rows(2)))

    prepared = prepare_dataset(path, validation_fraction=0.1)

    assert len(prepared.validation) == 1
    assert {row["messages"][-1]["content"] for row in prepared.train} == {"yes", "no", "maybe"}


def test_identical_prompts_land_on_the_same_side_of_the_split(tmp_path: Path) -> None:
    rows = []
    for i in range(30):
        rows += [
            chat(f"Prompt {i}", "yes"),
            chat(f"  prompt   {i} ", "yes"),
            chat(f"PROMPT {i}", "no"),
        ]

    prepared = prepare_dataset(write(tmp_path, "d.jsonl", jsonl(rows)), validation_fraction=0.2)

    def prompts(split: list[dict[str, Any]]) -> set[str]:
        return {" ".join(row["messages"][0]["content"].split()).lower() for row in split}

    assert prepared.validation
    assert prompts(prepared.train).isdisjoint(prompts(prepared.validation))
    assert prepared.report["prompts_with_conflicting_answers"] == 30


def test_zero_validation_fraction_keeps_every_row_in_train(tmp_path: Path) -> None:
    prepared = prepare_dataset(
        write(tmp_path, "d.jsonl", jsonl(labelled_rows(10))), validation_fraction=0
    )

    assert (len(prepared.train), prepared.validation) == (30, [])


def test_free_text_answers_get_no_label_distribution(tmp_path: Path) -> None:
    rows = [
        chat(f"Tell me about {n}", f"{n} is a number.\nIt is {n % 2} mod 2.") for n in range(20)
    ]

    prepared = prepare_dataset(write(tmp_path, "d.jsonl", jsonl(rows)))

    assert prepared.report["labels"] is None
    assert prepared.report["validation_rows"] == 2
    assert prepared.report["answer_chars"]["min"] == len("0 is a number.\nIt is 0 mod 2.")


def test_the_report_is_json_serialisable(tmp_path: Path) -> None:
    prepared = prepare_dataset(write(tmp_path, "d.jsonl", jsonl(labelled_rows(5))))

    report = json.loads(json.dumps(prepared.report))

    assert report["sha256"] == prepared.source_sha256
    assert report["train_rows"] + report["validation_rows"] == report["rows_kept"] == 15


# --- JSONL files ---------------------------------------------------------------------------


def test_write_jsonl_round_trips_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    rows = [chat("héllo", "wörld"), {"n": 1}]
    path = tmp_path / "out" / "rows.jsonl"

    write_jsonl(rows, path)

    assert read_jsonl(path) == rows
    assert [p.name for p in path.parent.iterdir()] == ["rows.jsonl"]


def test_a_failed_write_keeps_the_previous_file_whole(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    write_jsonl([{"n": 1}], path)

    with pytest.raises(TypeError):
        write_jsonl([{"n": 2}, {"n": object()}], path)

    assert read_jsonl(path) == [{"n": 1}]
    assert [p.name for p in tmp_path.iterdir()] == ["rows.jsonl"]


def test_read_jsonl_names_the_bad_line(tmp_path: Path) -> None:
    path = write(tmp_path, "rows.jsonl", '{"a": 1}\n\n{"a": \n')

    with pytest.raises(InvalidInputError, match=r"rows\.jsonl, line 3: not valid JSON"):
        read_jsonl(path)


# --- shipped and shared data ---------------------------------------------------------------


def test_the_shipped_sample_loads_with_no_problems_and_eight_balanced_labels() -> None:
    prepared = prepare_dataset(SAMPLE)

    report = prepared.report
    assert prepared.problems == [] and report["rows_dropped"] == {}
    assert set(report["labels"]) == SAMPLE_LABELS
    assert min(report["labels"].values()) >= 0.8 * max(report["labels"].values())
    assert 380 <= report["rows_kept"] <= 420
    assert set(report["validation_labels"]) == SAMPLE_LABELS


def test_the_shipped_sample_has_one_system_prompt_naming_every_label() -> None:
    rows = read_jsonl(SAMPLE)

    systems = {row["messages"][0]["content"] for row in rows}
    tickets = [" ".join(row["messages"][1]["content"].lower().split()) for row in rows]
    assert len(systems) == 1
    assert all(label in next(iter(systems)) for label in SAMPLE_LABELS)
    assert len(set(tickets)) == len(tickets)
    assert all(
        [turn["role"] for turn in row["messages"]] == ["system", "user", "assistant"]
        for row in rows
    )


def test_banking77_from_the_shared_data_folder_loads_cleanly() -> None:
    path = shared_data() / "banking77" / "train.csv"
    if not path.exists():
        pytest.skip(f"Banking77 is not at {path}; set TURING_SHARED_DATA to the shared data folder")

    prepared = prepare_dataset(path, columns=TICKET_COLUMNS)

    assert prepared.problems == []
    assert prepared.report["rows_kept"] > 9_000
    assert (
        prepared.report["rows_kept"] + sum(prepared.report["rows_dropped"].values())
        == (prepared.report["rows_read"])
    )
    assert 0.09 <= len(prepared.validation) / prepared.report["rows_kept"] <= 0.11
