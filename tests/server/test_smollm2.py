"""The real base model end to end: SmolLM2 fine-tuned for a few steps, exported, served."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from tests.helpers import wait_until_done, write_jsonl
from tests.server.test_lifecycle import ticket_rows
from turing.server.quickstart import Session, server_parameters

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


async def test_smollm2_trains_exports_and_answers_over_a_clean_stdio_wire(
    tmp_path: Path,
) -> None:
    wire_faults: list[Any] = []

    async def on_message(message: Any) -> None:
        # Anything a library prints to the server's stdout arrives here as a parse error.
        if isinstance(message, Exception):
            wire_faults.append(message)

    async with Client(
        server_parameters(str(tmp_path / "home")), message_handler=on_message
    ) as client:
        session = Session(client)
        data = write_jsonl(tmp_path / "tickets.jsonl", ticket_rows())
        dataset = await session.call("prepare_dataset", path=str(data), validation_fraction=0.2)

        started = await session.call(
            "start_finetune",
            dataset_id=dataset["dataset_id"],
            hyperparameters={"epochs": 1, "batch_size": 8},
        )
        run = await wait_until_done(session, "get_run", "run_id", started["run_id"])
        assert run["status"] == "succeeded", run["error"]
        assert run["base_model"] == "smollm2-135m-instruct"
        assert run["result"]["steps"] == 2

        deployed = await session.call("deploy", model=run["run_id"], deployment="smol")
        answer = await session.call(
            "query_model",
            model="smol",
            max_tokens=24,
            messages=[{"role": "user", "content": "What is the capital of France?"}],
        )

    assert answer["completion_tokens"] > 0 and answer["text"].strip()
    assert "<|im_" not in answer["text"]
    assert answer["version_id"] == deployed["version_id"]
    assert wire_faults == [], f"stdout of `turing serve` carried non-protocol bytes: {wire_faults}"
