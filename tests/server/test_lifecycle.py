"""The whole lifecycle through a real MCP client session against `turing serve` (tiny model)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import wait_until_done, write_jsonl
from turing.server.quickstart import LifecycleError, Session

pytestmark = pytest.mark.anyio

LABELS = {
    "billing": [
        "I was charged twice this month",
        "my invoice shows the wrong amount",
        "why did my card get billed again",
        "the payment on my statement is too high",
        "please fix the extra charge",
        "billing took money two times",
    ],
    "login": [
        "I cannot sign in to my account",
        "password reset email never arrives",
        "my login keeps failing",
        "locked out after too many attempts",
        "two factor code is not accepted",
        "cannot access my profile",
    ],
    "shipping": [
        "where is my parcel",
        "the package has not arrived yet",
        "tracking number shows no updates",
        "delivery is a week late",
        "my order was sent to the wrong address",
        "courier lost my box",
    ],
}
SYSTEM = "Classify the ticket as billing, login or shipping."


def ticket_rows() -> list[dict]:
    return [
        {
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": text},
                {"role": "assistant", "content": label},
            ]
        }
        for label, texts in LABELS.items()
        for text in texts
    ]


async def prepare(session: Session, tmp_path: Path, tiny_base: Path) -> str:
    await session.call("register_base_model", name="tiny", gguf_path=str(tiny_base))
    data = write_jsonl(tmp_path / "tickets.jsonl", ticket_rows())
    dataset = await session.call("prepare_dataset", path=str(data), validation_fraction=0.34)
    assert dataset["train_rows"] + dataset["validation_rows"] == 18
    assert dataset["validation_rows"] >= 3
    return dataset["dataset_id"]


async def test_every_stage_runs_through_the_mcp_tools(
    session: Session, tmp_path: Path, tiny_base: Path
) -> None:
    dataset_id = await prepare(session, tmp_path, tiny_base)
    again = await session.call(
        "prepare_dataset", path=str(tmp_path / "tickets.jsonl"), validation_fraction=0.34
    )
    assert again["dataset_id"] == dataset_id

    started = await session.call(
        "start_finetune",
        dataset_id=dataset_id,
        base_model="tiny",
        hyperparameters={"epochs": 4, "batch_size": 4, "learning_rate": 0.01},
    )
    assert started["status"] in ("queued", "running")
    run = await wait_until_done(session, "get_run", "run_id", started["run_id"])
    assert run["status"] == "succeeded", run["error"]
    assert run["progress"]["step"] == run["progress"]["total_steps"] == run["result"]["steps"]
    assert {"loss", "tokens_per_second", "eta_seconds"} <= set(run["progress"])

    listed = await session.call("list_runs")
    assert [item["run_id"] for item in listed] == [run["run_id"]]
    metrics = await session.client.read_resource(run["metrics_uri"])
    steps = [json.loads(line) for line in metrics.contents[0].text.splitlines()]
    losses = [event["loss"] for event in steps if event["type"] == "step"]
    assert losses[-1] < losses[0], "training did not lower the loss"
    log = await session.client.read_resource(run["log_uri"])
    assert run["run_id"] in log.contents[0].text or log.contents[0].text

    with pytest.raises(LifecycleError, match="no GGUF to serve yet"):
        await session.call(
            "query_model", model=run["run_id"], messages=[{"role": "user", "content": "hello"}]
        )

    evaluation = await session.call("run_eval", model=run["run_id"], dataset_id=dataset_id)
    evaluation = await wait_until_done(session, "get_eval", "eval_id", evaluation["eval_id"])
    assert evaluation["status"] == "succeeded", evaluation["error"]
    assert evaluation["rows"] >= 3 and evaluation["backend"] == "torch"
    scores = evaluation["scores"]
    assert set(scores) == {"model", "base"}
    assert {"accuracy", "macro_f1", "exact_match"} <= set(scores["model"])
    assert 0 <= scores["model"]["accuracy"]["value"] <= 1
    assert evaluation["comparisons"]["base"]["accuracy"]["test"] == "mcnemar"
    predictions = await session.client.read_resource(evaluation["predictions_uri"])
    first = json.loads(predictions.contents[0].text.splitlines()[0])
    assert {"messages", "reference", "model", "base", "label"} <= set(first)
    assert {"prediction", "wrong", "accuracy", "predicted_label"} <= set(first["model"])

    deployed = await session.call("deploy", model=run["run_id"], deployment="triage")
    assert deployed["revision"] == 1 and deployed["version_id"].startswith("mv-")
    assert Path(deployed["gguf_path"]).is_file()
    redeployed = await session.call("deploy", model=run["run_id"], deployment="triage")
    assert redeployed["revision"] == 2 and redeployed["version_id"] == deployed["version_id"]

    answer = await session.call(
        "query_model",
        model="triage",
        messages=[{"role": "user", "content": "where is my parcel"}],
        max_tokens=8,
    )
    assert isinstance(answer["text"], str) and "<|im_" not in answer["text"]
    assert answer["version_id"] == deployed["version_id"] and answer["revision"] == 2
    assert answer["prompt_tokens"] > 0 and 0 < answer["completion_tokens"] <= 8
    assert answer["latency_ms"] > 0

    served = await session.call(
        "run_eval", model="triage", dataset_id=dataset_id, compare_base=False
    )
    served = await wait_until_done(session, "get_eval", "eval_id", served["eval_id"])
    assert served["status"] == "succeeded" and served["backend"] == "llama_cpp"

    deployments = await session.call("list_deployments")
    assert deployments[0]["routes"] == [{"version_id": deployed["version_id"], "weight": 100}]


async def test_a_cancelled_run_ends_cancelled(
    session: Session, tmp_path: Path, tiny_base: Path
) -> None:
    dataset_id = await prepare(session, tmp_path, tiny_base)
    run = await session.call(
        "start_finetune",
        dataset_id=dataset_id,
        base_model="tiny",
        hyperparameters={"epochs": 100, "batch_size": 1},
    )
    cancelling = await session.call("cancel_run", run_id=run["run_id"])
    assert cancelling["status"] == "cancelling"
    ended = await wait_until_done(session, "get_run", "run_id", run["run_id"], timeout=120)
    assert ended["status"] == "cancelled"
    with pytest.raises(LifecycleError, match="only a succeeded run"):
        await session.call("deploy", model=run["run_id"], deployment="nope")


@pytest.mark.parametrize(
    ("tool", "arguments", "message"),
    [
        ("get_run", {"run_id": "run-missing"}, "no run 'run-missing'"),
        (
            "start_finetune",
            {"dataset_id": "ds-x", "hyperparameters": {"lora_rank": 0, "lr": 1}},
            "lora_rank=0: must be an integer.*lr=1: unknown parameter.*no dataset 'ds-x'",
        ),
        ("prepare_dataset", {"path": "/nonexistent/data.jsonl"}, "outside the folders"),
        ("prepare_dataset", {"path": "data/tickets.jsonl"}, "not an absolute path"),
        ("prepare_dataset", {"path": str(Path(__file__).parent)}, "not a regular file"),
        ("register_base_model", {"name": "mine", "gguf_path": __file__}, "not a readable GGUF"),
        ("register_base_model", {"name": "run-1", "gguf_path": __file__}, "not allowed"),
        ("deploy", {"model": "run-x", "deployment": "smollm2-135m-instruct"}, "base model's name"),
        ("deploy", {"model": "run-x", "deployment": "bad name"}, "is not allowed"),
        (
            "query_model",
            {"model": "nobody", "messages": [{"role": "user", "content": "hi"}]},
            "no model 'nobody'",
        ),
        ("query_model", {"model": "smollm2-135m-instruct", "messages": []}, "messages is empty"),
        ("deploy", {"model": "run-missing", "deployment": "x"}, "no run 'run-missing'"),
        (
            "run_eval",
            {"model": "smollm2-135m-instruct", "dataset_id": "ds-missing"},
            "no dataset 'ds-missing'",
        ),
    ],
)
async def test_bad_requests_get_errors_that_name_the_value(
    session: Session, tool: str, arguments: dict, message: str
) -> None:
    with pytest.raises(LifecycleError, match=message):
        await session.call(tool, **arguments)


async def test_invalid_rows_are_reported_with_line_numbers(
    session: Session, tmp_path: Path
) -> None:
    rows = ticket_rows()[:3]
    text = "".join(json.dumps(row) + "\n" for row in rows) + "{not json\n"
    path = tmp_path / "broken.jsonl"
    path.write_text(text)
    with pytest.raises(LifecycleError, match="line 4"):
        await session.call("prepare_dataset", path=str(path))
    assert await session.call("list_datasets") == []


def test_listing_tools_loads_neither_torch_nor_a_model(tmp_path: Path) -> None:
    script = (
        "import asyncio, sys\n"
        "from mcp import Client\n"
        "from turing.server.app import create_app\n"
        "async def main():\n"
        "    async with Client(create_app()) as client:\n"
        "        return [tool.name for tool in (await client.list_tools()).tools]\n"
        "names = asyncio.run(main())\n"
        "heavy = [m for m in ('torch', 'transformers', 'llama_cpp', 'peft') if m in sys.modules]\n"
        "print(len(names), heavy)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={"TURING_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "44 []"
