"""Checkpoints of the training worker: atomic writes, exact resume after SIGKILL, early stopping,
the best checkpoint as output, refusal of mismatched checkpoints, and a non-finite loss."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import write_jsonl
from turing.tools.finetune import checkpoints

WORKER = "turing.tools.finetune.worker"
ANSWER = "The answer is forty two."


def qa_rows(count: int, answer: str = ANSWER) -> list[dict[str, Any]]:
    return [
        {
            "messages": [
                {"role": "user", "content": f"What is question {i}?"},
                {"role": "assistant", "content": answer},
            ]
        }
        for i in range(count)
    ]


def write_job(run_dir: Path, base: Path, params: dict[str, Any], **extra: Any) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    data = run_dir.parent / f"{run_dir.name}-data"
    data.mkdir(exist_ok=True)
    job = {
        "base_gguf": str(base),
        "train_path": str(write_jsonl(data / "train.jsonl", extra.pop("train", qa_rows(24)))),
        "validation_path": str(
            write_jsonl(data / "validation.jsonl", extra.pop("validation", qa_rows(4)))
        ),
        "params": params,
        **extra,
    }
    (run_dir / "job.json").write_text(json.dumps(job))


def start(run_dir: Path) -> subprocess.Popen[bytes]:
    log = open(run_dir / "log.txt", "ab")  # noqa: SIM115 - the child owns it until it exits
    return subprocess.Popen([sys.executable, "-m", WORKER, str(run_dir)], stdout=log, stderr=log)


def run_to_end(run_dir: Path, timeout: float = 300) -> dict[str, Any]:
    worker = start(run_dir)
    worker.wait(timeout=timeout)
    return read_result(run_dir)


def read_result(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "result.json"
    assert path.exists(), (run_dir / "log.txt").read_text()[-3000:]
    return json.loads(path.read_text())


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def step_losses(run_dir: Path) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in read_lines(run_dir / "metrics.jsonl") if "loss" in e}


PARAMS = {
    "epochs": 4,
    "batch_size": 4,
    "learning_rate": 1e-2,
    "lora_dropout": 0.1,  # draws random numbers, so resuming must restore the generator too
    "checkpoint_every": 2,
    "early_stopping_patience": 0,
}


def test_a_run_killed_and_resumed_ends_exactly_as_an_uninterrupted_one(
    tiny_base: Path, tmp_path: Path
) -> None:
    whole = tmp_path / "whole"
    write_job(whole, tiny_base, PARAMS)
    expected = run_to_end(whole)
    assert expected["status"] == "succeeded", expected

    # Kill without warning once a few checkpoints exist, then resume from what is on disk.
    broken = tmp_path / "broken"
    write_job(broken, tiny_base, PARAMS)
    worker = start(broken)
    deadline = time.monotonic() + 120
    while len(checkpoints.list_checkpoints(broken)) < 3:
        assert worker.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    killed_at = max(step_losses(broken))
    assert not (broken / "result.json").exists()

    write_job(broken, tiny_base, PARAMS, resume=True)
    resumed = run_to_end(broken)

    assert resumed["status"] == "succeeded", resumed
    assert (
        resumed["resumed_from"] >= killed_at - PARAMS["checkpoint_every"]
    )  # work lost <= 1 interval
    assert resumed["final_loss"] == pytest.approx(expected["final_loss"], rel=1e-6)
    assert resumed["validation_loss"] == pytest.approx(expected["validation_loss"], rel=1e-6)
    assert resumed["steps"] == expected["steps"] == 24
    events = [e["type"] for e in read_lines(broken / "events.jsonl")]
    assert events.count("started") == 2 and "resumed" in events
    # The steps the killed attempt logged after its checkpoint were dropped and logged again.
    logged = [e["step"] for e in read_lines(broken / "metrics.jsonl") if e["type"] == "step"]
    assert logged == list(range(1, 25))
    # Only the newest checkpoint keeps the optimiser state; every one keeps its adapter.
    saved = checkpoints.list_checkpoints(broken)
    assert [m["step"] for m in saved] == list(range(2, 25, 2))
    assert [checkpoints.TRAINER_STATE in m["files"] for m in saved] == [False] * 11 + [True]


def test_a_kill_in_the_middle_of_a_checkpoint_write_leaves_the_last_complete_one(
    tiny_base: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    write_job(run_dir, tiny_base, {**PARAMS, "checkpoint_every": 1})
    worker = start(run_dir)
    root = run_dir / checkpoints.CHECKPOINTS
    deadline = time.monotonic() + 120
    caught = None
    # Freeze the worker the moment a checkpoint is being written; if the write finished between
    # seeing it and freezing, let it go on and wait for the next one.
    while caught is None:
        assert worker.poll() is None and time.monotonic() < deadline, "no write was caught"
        partial = list(root.glob(".step-*.tmp")) if root.exists() else []
        if partial and checkpoints.list_checkpoints(run_dir):
            os.kill(worker.pid, signal.SIGSTOP)
            caught = partial[0] if partial[0].exists() else None
            if caught is None:
                os.kill(worker.pid, signal.SIGCONT)
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()

    complete = checkpoints.list_checkpoints(run_dir)
    assert caught.exists() and checkpoints.read_manifest(caught) is None
    last = complete[-1]["step"]
    write_job(run_dir, tiny_base, {**PARAMS, "checkpoint_every": 1}, resume=True)
    resumed = run_to_end(run_dir)

    assert resumed["status"] == "succeeded", resumed
    assert resumed["resumed_from"] == last
    assert not caught.exists()  # swept before training went on
    assert [m["step"] for m in checkpoints.list_checkpoints(run_dir)] == list(range(1, 25))


def test_validation_loss_that_stops_improving_stops_the_run_and_keeps_the_best_checkpoint(
    tiny_base: Path, tmp_path: Path
) -> None:
    # Validation answers differ from the trained one: the more the model memorises the training
    # answer, the worse it does on them.
    run_dir = tmp_path / "run"
    params = {**PARAMS, "epochs": 20, "checkpoint_every": 3, "early_stopping_patience": 2}
    write_job(run_dir, tiny_base, params, validation=qa_rows(4, "Nobody knows that one."))
    result = run_to_end(run_dir)

    assert result["status"] == "succeeded", result
    assert result["stopped_early"] and result["steps"] < result["total_steps"] == 120
    losses = {c["step"]: c["metrics"]["validation_loss"] for c in result["checkpoints"]}
    best = min(losses, key=losses.__getitem__)
    assert result["output_step"] == best < result["steps"]
    assert sorted(losses)[-3] == best  # two validations without improvement, then the stop
    source = json.loads((run_dir / "adapter" / "source.json").read_text())
    assert source["step"] == best
    stored = (run_dir / "adapter" / "adapter_model.safetensors").read_bytes()
    chosen = Path(result["checkpoints"][sorted(losses).index(best)]["path"])
    assert stored == (chosen / "adapter_model.safetensors").read_bytes()
    events = [e["type"] for e in read_lines(run_dir / "events.jsonl")]
    assert "early_stopped" in events and events[-1] == "finished"


def test_the_output_can_be_chosen_by_another_metric(tiny_base: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    write_job(run_dir, tiny_base, {**PARAMS, "epochs": 2, "selection_metric": "last"})
    result = run_to_end(run_dir)

    assert result["output_step"] == result["steps"] == 12


def test_resuming_with_another_lora_rank_is_refused_naming_both(
    tiny_base: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    write_job(run_dir, tiny_base, {**PARAMS, "epochs": 1})
    assert run_to_end(run_dir)["status"] == "succeeded"

    write_job(run_dir, tiny_base, {**PARAMS, "epochs": 1, "lora_rank": 4}, resume=True)
    result = run_to_end(run_dir)

    assert result["status"] == "failed"
    assert "does not match this run" in result["error"]
    assert "lora_rank 16 != 4" in result["error"]


def test_starting_from_a_checkpoint_of_another_shape_is_refused(
    tiny_base: Path, tmp_path: Path
) -> None:
    source = tmp_path / "source"
    write_job(source, tiny_base, {**PARAMS, "epochs": 1})
    assert run_to_end(source)["status"] == "succeeded"
    step_two = checkpoints.find_checkpoint(source, 2)["path"]

    fits = tmp_path / "fits"
    write_job(fits, tiny_base, {**PARAMS, "epochs": 1}, init_checkpoint=step_two)
    first = run_to_end(fits)
    assert first["status"] == "succeeded", first
    assert step_losses(fits)[1] < step_losses(source)[1]  # it starts from trained weights

    other = tmp_path / "other"
    write_job(other, tiny_base, {**PARAMS, "lora_alpha": 8}, init_checkpoint=step_two)
    result = run_to_end(other)
    assert result["status"] == "failed"
    assert (
        "init_checkpoint step-000002" in result["error"] and "lora_alpha 32 != 8" in result["error"]
    )


def test_a_non_finite_loss_stops_the_run_before_the_step_and_keeps_the_checkpoints(
    tiny_base: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file, save_file

    from turing.tools.chat import read_chat_template
    from turing.tools.finetune.train import parse_params, train
    from turing.tools.finetune.trainer import NonFiniteLossError
    from turing.tools.modeling import load_model

    template = read_chat_template(tiny_base)
    params = parse_params({**PARAMS, "epochs": 2})
    steps_taken: list[int] = []

    def cancel_after_four_steps() -> bool:
        steps_taken.append(1)
        return len(steps_taken) > 4

    model, tokenizer = load_model(tiny_base)
    train(
        model,
        tokenizer,
        template,
        qa_rows(24),
        qa_rows(4),
        params,
        should_stop=cancel_after_four_steps,
        run_dir=tmp_path,
    )
    assert [m["step"] for m in checkpoints.list_checkpoints(tmp_path)] == [2, 4]

    # Overflowed adapter weights, as a diverging run's would be, in a complete checkpoint.
    latest = checkpoints.find_checkpoint(tmp_path, 4)
    folder = Path(latest["path"])
    weights = load_file(folder / "adapter_model.safetensors")
    kept = {name: (folder / name).read_bytes() for name in latest["files"]}

    def write_files(target: Path) -> None:
        for name, content in kept.items():
            (target / name).write_bytes(content)
        save_file(
            {k: v * float("inf") for k, v in weights.items()}, target / "adapter_model.safetensors"
        )

    manifest = {k: v for k, v in latest.items() if k not in ("files", "path", "step")}
    checkpoints.write_checkpoint(tmp_path, 4, write_files, manifest)

    events: list[dict[str, Any]] = []
    model, tokenizer = load_model(tiny_base)
    with pytest.raises(NonFiniteLossError) as raised:
        train(
            model,
            tokenizer,
            template,
            qa_rows(24),
            qa_rows(4),
            params,
            on_event=events.append,
            run_dir=tmp_path,
            resume=True,
        )

    message = str(raised.value)
    assert "the training loss became nan at step 5" in message
    assert "the step was not applied and checkpoint step 4 is kept" in message
    assert "Lower learning_rate" in message
    assert [m["step"] for m in checkpoints.list_checkpoints(tmp_path)] == [2, 4]
    assert [e["type"] for e in events] == ["resumed", "non_finite_loss"]
