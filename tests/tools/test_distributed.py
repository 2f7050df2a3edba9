"""The training worker under torchrun: two CPU processes (gloo) train as one process does."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tools.test_checkpoints import PARAMS, qa_rows, read_lines, run_to_end, write_job
from turing.tools.finetune import checkpoints

WORKER = "turing.tools.finetune.worker"


def run_under_torchrun(run_dir: Path, processes: int) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={processes}",
        "-m",
        WORKER,
        str(run_dir),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)


def test_two_processes_train_and_checkpoint_like_one(tiny_base: Path, tmp_path: Path) -> None:
    # 21 rows in batches of 4: the last batch of each epoch has one row, which leaves the second
    # process without any. No dropout: its random masks depend on how a batch is shared out; fp32,
    # as bf16 rounds differently when a batch is cut in two.
    params = {
        **PARAMS,
        "epochs": 2,
        "checkpoint_every": 3,
        "lora_dropout": 0.0,
        "precision": "fp32",
    }
    single = tmp_path / "single"
    write_job(single, tiny_base, params, train=qa_rows(21))
    expected = run_to_end(single)

    pair = tmp_path / "pair"
    write_job(pair, tiny_base, params, train=qa_rows(21))
    done = run_under_torchrun(pair, 2)

    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((pair / "result.json").read_text())
    assert result["status"] == "succeeded", result
    assert result["steps"] == expected["steps"] == 12
    assert result["train_tokens"] == expected["train_tokens"]
    assert result["final_loss"] == pytest.approx(expected["final_loss"], rel=1e-4)
    assert result["validation_loss"] == pytest.approx(expected["validation_loss"], rel=1e-4)
    saved = checkpoints.list_checkpoints(pair)
    assert [m["step"] for m in saved] == [3, 6, 9, 12]
    assert all(m["world_size"] == 2 for m in saved) and checkpoints.verify(saved[-1])
    assert (pair / "adapter" / "adapter_model.safetensors").is_file()
    # One writer: each step is recorded once, and the run started once.
    steps = [e["step"] for e in read_lines(pair / "metrics.jsonl") if e["type"] == "step"]
    assert steps == list(range(1, 13))
    assert [e["type"] for e in read_lines(pair / "events.jsonl")].count("started") == 1
