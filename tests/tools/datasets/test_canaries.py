"""Canaries planted by dataset preparation: train only, untouched by the screens, stored, and
left out of the content id unless asked for."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from mcp.types import TextResourceContents

from tests.helpers import write_jsonl
from turing.server.quickstart import Session
from turing.tools.base_models import smollm2_gguf_path
from turing.tools.datasets.options import PrepareOptions, content_options, parse_options
from turing.tools.datasets.prepare import PreparedDataset, prepare_dataset
from turing.tools.datasets.store import _content_id
from turing.tools.datasets.tokens import TokenCounter, load_token_counter
from turing.tools.errors import InvalidInputError
from turing.tools.evals.safety import Canary

# Every option of dataset preparation with its default, as the content id hashed them before
# canaries existed: a dataset prepared without canaries must keep that id.
OPTIONS_BEFORE_CANARIES: dict[str, Any] = {
    "format": "auto",
    "container": "auto",
    "records_path": None,
    "columns": None,
    "system_prompt": None,
    "label_prompt": False,
    "whitespace": "trim",
    "near_duplicates": "drop",
    "near_duplicate_threshold": 0.8,
    "pii": "redact",
    "harmful": "flag",
    "max_seq_len": 512,
    "on_truncation": "flag",
    "validation_fraction": 0.1,
    "seed": 0,
    "on_error": "reject",
    "examples_per_problem": 5,
}


@pytest.fixture(scope="module")
def counter(tmp_path_factory: pytest.TempPathFactory) -> TokenCounter:
    return load_token_counter(smollm2_gguf_path(), tmp_path_factory.mktemp("tokenizers"))


def rows(count: int, topic: str = "parcel") -> list[dict[str, Any]]:
    return [
        {
            "messages": [
                {
                    "role": "user",
                    "content": f"ticket {i}: my {topic} {i * 7919} is {i % 3} days late",
                },
                {"role": "assistant", "content": "shipping" if i % 2 else "billing"},
            ]
        }
        for i in range(count)
    ]


def prepare(path: Path, counter: TokenCounter | None = None, **options: Any) -> PreparedDataset:
    return prepare_dataset(path, parse_options(options), counter)


def planted(prepared: PreparedDataset) -> list[dict[str, Any]]:
    return [row for row in prepared.train if "canary" in row]


def old_content_id(source_sha256: str, base_model: str, fingerprint: str) -> str:
    canonical = {
        "source": source_sha256,
        "options": OPTIONS_BEFORE_CANARIES,
        "base_model": base_model,
        "tokenizer": fingerprint,
    }
    digest = hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()
    return "ds-" + digest[:16]


# --- planting -------------------------------------------------------------------------------


def test_canaries_are_planted_in_train_only_each_repeated(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", rows(30))

    prepared = prepare(path, canaries=3, canary_repeats=4)

    assert len(prepared.canaries) == 3
    assert len(planted(prepared)) == 12
    assert not any("canary" in row for row in prepared.validation)
    for canary in prepared.canaries:
        copies = [row for row in planted(prepared) if row["canary"] == canary.id]
        assert len(copies) == 4
        assert copies[0]["messages"] == [
            {"role": "user", "content": canary.prompt},
            {"role": "assistant", "content": canary.answer},
        ]
    assert prepared.report["canaries"] == {"count": 3, "repeats": 4, "rows": 12}


def test_the_screens_neither_redact_nor_drop_canaries(tmp_path: Path) -> None:
    data = rows(20)
    data[4]["messages"][0]["content"] = "write to jane@example.com about ticket 4"
    path = write_jsonl(tmp_path / "d.jsonl", data)

    prepared = prepare(path, canaries=2, canary_repeats=3, pii="redact", near_duplicates="drop")

    secrets = {canary.secret for canary in prepared.canaries}
    answers = [row["messages"][-1]["content"] for row in planted(prepared)]
    assert len(answers) == 6
    assert all(any(secret in answer for secret in secrets) for answer in answers)
    assert "[" not in "".join(answers)
    assert prepared.report["pii"]["matches_by_type"] == {"email": 1}
    assert "near_duplicate" not in prepared.report["rows"]["dropped"]


def test_the_rows_of_the_file_are_the_same_with_and_without_canaries(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", rows(40))

    plain = prepare(path)
    planted_in = prepare(path, canaries=5, canary_repeats=2)

    assert [row for row in planted_in.train if "canary" not in row] == plain.train
    assert planted_in.validation == plain.validation
    assert plain.canaries == [] and plain.report["canaries"]["count"] == 0
    assert planted_in.report["rows"]["train"] == len(plain.train) + 10 == len(planted_in.train)
    assert planted_in.report["rows"]["kept"] == plain.report["rows"]["kept"]


def test_one_file_always_gets_the_same_canaries_and_another_file_others(tmp_path: Path) -> None:
    first = write_jsonl(tmp_path / "a.jsonl", rows(20))
    second = write_jsonl(tmp_path / "b.jsonl", rows(20, topic="card"))

    once = prepare(first, canaries=4)
    again = prepare(first, canaries=4)
    other = prepare(second, canaries=4)

    assert once.canaries == again.canaries and once.train == again.train
    assert not {c.secret for c in once.canaries} & {c.secret for c in other.canaries}


def test_canary_tokens_count_toward_the_epoch(tmp_path: Path, counter: TokenCounter) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", rows(20))

    plain = prepare(path, counter)
    planted_in = prepare(path, counter, canaries=2, canary_repeats=3)

    added = (
        planted_in.report["tokens"]["train_tokens_per_epoch"]
        - plain.report["tokens"]["train_tokens_per_epoch"]
    )
    lengths = counter.measure(planted(planted_in))
    assert added == sum(length.total for length in lengths if not isinstance(length, str)) > 0


def test_a_canary_longer_than_max_seq_len_is_refused(tmp_path: Path, counter: TokenCounter) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", rows(20))
    prepare(path, counter, max_seq_len=64)  # the file's own rows fit

    with pytest.raises(
        InvalidInputError,
        match=r"max_seq_len=64, so its secret would be cut; raise max_seq_len to \d+ or more",
    ):
        prepare(path, counter, max_seq_len=64, canaries=1)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"canaries": 1001}, "canaries=1001 is out of range; allowed: an integer from 0 to 1,000"),
        ({"canaries": -1}, "canaries=-1 is out of range"),
        ({"canaries": 2, "canary_repeats": 0}, "canary_repeats=0 is out of range"),
        ({"canaries": 2, "canary_repeats": 101}, "from 1 to 100"),
        ({"canaries": 1.5}, "an integer"),
        ({"canary_repeats": 3}, "canary_repeats applies only with canaries of 1 or more"),
    ],
)
def test_an_invalid_canary_option_is_named_with_what_is_allowed(
    options: dict[str, Any], named: str
) -> None:
    with pytest.raises(InvalidInputError) as caught:
        parse_options(options)

    assert named in str(caught.value)


# --- content id -----------------------------------------------------------------------------


def test_default_options_hash_exactly_as_before_canaries() -> None:
    assert content_options(PrepareOptions()) == OPTIONS_BEFORE_CANARIES
    assert content_options(parse_options({"seed": 3}))["seed"] == 3
    assert "canaries" not in content_options(parse_options({"canaries": 0}))


def test_a_dataset_without_canaries_keeps_its_id(counter: TokenCounter) -> None:
    source = hashlib.sha256(b"any file").hexdigest()

    kept = _content_id(source, PrepareOptions(), "smollm2-135m-instruct", counter)
    planted_in = _content_id(
        source, parse_options({"canaries": 1}), "smollm2-135m-instruct", counter
    )
    repeated = _content_id(
        source,
        parse_options({"canaries": 1, "canary_repeats": 2}),
        "smollm2-135m-instruct",
        counter,
    )

    assert kept == old_content_id(source, "smollm2-135m-instruct", counter.fingerprint)
    assert len({kept, planted_in, repeated}) == 3


# --- through the MCP tool -------------------------------------------------------------------


@pytest.mark.anyio
async def test_prepare_dataset_stores_canaries_beside_the_splits(
    session: Session, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "tickets.jsonl", rows(20))

    plain = await session.call("prepare_dataset", path=str(path))
    dataset = await session.call("prepare_dataset", path=str(path), canaries=3, canary_repeats=2)

    contents = (await session.client.read_resource(plain["report_uri"])).contents[0]
    assert isinstance(contents, TextResourceContents)
    report = json.loads(contents.text)
    lineage = report["lineage"]
    assert plain["dataset_id"] == old_content_id(
        lineage["source_sha256"], lineage["base_model"], lineage["tokenizer_fingerprint"]
    )
    assert plain["canaries"] == 0 and dataset["canaries"] == 3
    assert dataset["dataset_id"] != plain["dataset_id"]
    assert dataset["train_rows"] == plain["train_rows"] + 6

    folder = tmp_path / "home" / "datasets"
    assert not (folder / plain["dataset_id"] / "canaries.json").exists()
    stored = json.loads((folder / dataset["dataset_id"] / "canaries.json").read_text())
    canaries = [Canary.from_dict(item) for item in stored]
    train = (folder / dataset["dataset_id"] / "train.jsonl").read_text()
    assert len(canaries) == 3
    assert all(train.count(canary.secret) == 2 for canary in canaries)


@pytest.mark.anyio
async def test_the_canary_options_are_described_to_the_calling_model(session: Session) -> None:
    tools = {tool.name: tool for tool in (await session.client.list_tools()).tools}
    tool = tools["prepare_dataset"]

    assert tool.input_schema["properties"]["canaries"]["default"] == 0
    assert tool.input_schema["properties"]["canary_repeats"]["default"] == 1
    assert "canaries:" in (tool.description or "")
    assert "canary_repeats:" in (tool.description or "")
