"""Dataset versions through a real MCP session: content addressing, report, problems, rejects."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from tests.helpers import write_jsonl
from turing.server.quickstart import LifecycleError, Session

pytestmark = pytest.mark.anyio


def rows(count: int) -> list[dict]:
    return [
        {
            "messages": [
                {"role": "user", "content": f"ticket {i}: my parcel {i * 31} has not arrived"},
                {"role": "assistant", "content": "shipping" if i % 2 else "billing"},
            ]
        }
        for i in range(count)
    ]


async def read_text(session: Session, uri: str) -> str:
    result = await session.client.read_resource(uri)
    return result.contents[0].text


async def test_the_same_file_and_options_return_the_same_stored_version(
    session: Session, tmp_path: Path
) -> None:
    data = write_jsonl(tmp_path / "tickets.jsonl", rows(20))

    first = await session.call("prepare_dataset", path=str(data))
    again = await session.call("prepare_dataset", path=str(data))
    other = await session.call("prepare_dataset", path=str(data), seed=1)

    assert again == first
    assert other["dataset_id"] != first["dataset_id"]
    assert first["dataset_id"].startswith("ds-")
    assert first["base_model"] == "smollm2-135m-instruct" and first["max_seq_len"] == 512
    assert len(await session.call("list_datasets")) == 2


async def test_the_report_and_every_problem_are_readable_as_resources(
    session: Session, tmp_path: Path
) -> None:
    data = rows(20)
    data[3]["messages"][0]["content"] = "write to jane@example.com please"
    data.append(data[0])
    path = write_jsonl(tmp_path / "tickets.jsonl", data)

    dataset = await session.call("prepare_dataset", path=str(path))
    report = json.loads(await read_text(session, dataset["report_uri"]))
    problems = [
        json.loads(line)
        for line in (await read_text(session, dataset["problems_uri"])).splitlines()
    ]

    assert dataset["dropped"] == {"duplicate": 1}
    assert dataset["problems"] == {"duplicate": 1, "pii_found": 1}
    assert report["rows"] == {
        "read": 21,
        "kept": 20,
        "train": dataset["train_rows"],
        "validation": dataset["validation_rows"],
        "dropped": {"duplicate": 1},
    }
    assert report["lineage"]["source_sha256"] == report["source"]["sha256"]
    assert len(report["lineage"]["tokenizer_fingerprint"]) == 16
    assert report["pii"]["matches_by_type"] == {"email": 1}
    assert report["tokens"]["histogram"]
    assert [(p["code"], p["line"]) for p in problems] == [("pii_found", 4), ("duplicate", 21)]


async def test_a_stored_version_is_read_only(session: Session, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "tickets.jsonl", rows(10))

    await session.call("prepare_dataset", path=str(path))

    stored = list((tmp_path / "home" / "datasets").glob("ds-*/*"))
    assert {item.name for item in stored} == {
        "train.jsonl",
        "validation.jsonl",
        "problems.jsonl",
        "report.json",
    }
    assert all(item.stat().st_mode & 0o222 == 0 for item in stored)


async def test_a_rejected_file_stores_nothing_and_names_each_problem(
    session: Session, tmp_path: Path
) -> None:
    data = "".join(json.dumps(row) + "\n" for row in rows(4))
    data += '{"messages": [{"role": "bot", "content": "hi"}]}\n{"messages": 3},\n'
    path = tmp_path / "broken.jsonl"
    path.write_text(data)

    with pytest.raises(LifecycleError) as caught:
        await session.call("prepare_dataset", path=str(path))

    message = str(caught.value)
    assert "line 5" in message and "unknown_role" in message
    assert "line 6" in message and "trailing_comma" in message
    assert "nothing was stored" in message
    assert await session.call("list_datasets") == []


async def test_bad_options_are_all_named_before_the_file_is_read(
    session: Session, tmp_path: Path
) -> None:
    with pytest.raises(LifecycleError) as caught:
        await session.call(
            "prepare_dataset", path=str(tmp_path / "absent.jsonl"), pii="mask", max_seq_len=2
        )

    assert "2 invalid option(s)" in str(caught.value)
    assert "pii='mask'" in str(caught.value) and "max_seq_len=2" in str(caught.value)


async def test_parallel_first_calls_on_a_new_workspace_all_succeed(
    session: Session, tmp_path: Path
) -> None:
    paths = [write_jsonl(tmp_path / f"part{i}.jsonl", rows(10 + i)) for i in range(3)]

    results = await asyncio.gather(
        *(session.call("prepare_dataset", path=str(path)) for path in paths)
    )

    assert len({result["dataset_id"] for result in results}) == 3
    assert len(await session.call("list_datasets")) == 3


async def test_a_misspelt_argument_is_refused_rather_than_ignored(
    session: Session, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "tickets.jsonl", rows(10))

    with pytest.raises(LifecycleError, match="pii_policy") as caught:
        await session.call("prepare_dataset", path=str(path), pii_policy="keep")

    assert "Extra inputs are not permitted" in str(caught.value)
    assert await session.call("list_datasets") == []
