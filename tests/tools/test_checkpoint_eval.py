"""Scoring checkpoints on a task metric during training, and choosing the output by it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import write_jsonl
from turing.server.registry import Registry
from turing.server.services import Services
from turing.server.workspace import Workspace
from turing.tools.chat import read_chat_template
from turing.tools.errors import InvalidInputError
from turing.tools.evals.metrics import TASK_METRICS, Scorer
from turing.tools.finetune import checkpoints
from turing.tools.finetune.preflight import check_config, preflight
from turing.tools.finetune.train import (
    EVAL_METRICS,
    LABEL_METRICS,
    TrainParams,
    parse_params,
    select_eval_rows,
    train,
)
from turing.tools.modeling import load_model

WORKER = "turing.tools.finetune.worker"
ANSWER = "The answer is forty two."
# Checkpoints every 2 steps of 3 per epoch; the answer is learnt within a few epochs.
PARAMS: dict[str, Any] = {
    "epochs": 6,
    "batch_size": 4,
    "learning_rate": 1e-2,
    "checkpoint_every": 2,
    "early_stopping_patience": 0,
    "eval_rows": 4,
}


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


def review_rows(count: int) -> list[dict[str, Any]]:
    labels = ("positive", "negative")
    return [
        {
            "messages": [
                {"role": "system", "content": "Label the review."},
                {"role": "user", "content": f"Review {i}: {'great' if i % 2 else 'awful'}."},
                {"role": "assistant", "content": labels[i % 2 == 0]},
            ]
        }
        for i in range(count)
    ]


def earliest_best(values: dict[int, float]) -> int:
    return min(values, key=lambda step: (-values[step], step))


def stop_step(values: dict[int, float], patience: int, last_step: int) -> int | None:
    """Where early stopping with `patience` stops over these scores (higher is better)."""
    best, stale = None, 0
    for step in sorted(values):
        if best is None or values[step] > best:
            best, stale = values[step], 0
        else:
            stale += 1
        if stale >= patience and step < last_step:
            return step
    return None


def train_in_process(base: Path, params: TrainParams, **options: Any) -> tuple[Any, list[Any]]:
    model, tokenizer = load_model(base)
    events: list[dict[str, Any]] = []
    result = train(
        model,
        tokenizer,
        read_chat_template(base),
        qa_rows(12),
        qa_rows(4),
        params,
        on_event=events.append,
        **options,
    )
    return result, events


# --- parameters ----------------------------------------------------------------------------


def test_every_eval_metric_is_a_task_metric_the_scorer_accepts() -> None:
    assert set(EVAL_METRICS) <= set(TASK_METRICS)
    for metric in EVAL_METRICS:
        labels = ["yes", "no"] if metric in LABEL_METRICS else None
        assert Scorer([metric], labels=labels).metrics == [metric]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"selection_metric": "eval_metric"}, "selection_metric='eval_metric': needs eval_metric"),
        ({"eval_metric": "bleu"}, "eval_metric='bleu': must be one of exact_match, accuracy"),
        ({"eval_metric": "schema_valid"}, "eval_metric='schema_valid': must be one of"),
        ({"eval_rows": 0}, "eval_rows=0: must be an integer between 1 and 10000"),
    ],
)
def test_bad_evaluation_parameters_are_refused_naming_the_fields(
    raw: dict[str, Any], expected: str
) -> None:
    with pytest.raises(InvalidInputError, match=re.escape(expected)):
        parse_params(raw)


def test_selection_by_eval_metric_is_accepted_with_a_metric() -> None:
    params = parse_params({"selection_metric": "eval_metric", "eval_metric": "token_f1"})

    assert (params.eval_metric, params.eval_rows) == ("token_f1", 64)


def test_eval_rows_are_the_first_answerable_rows_in_file_order() -> None:
    tool_row = {**qa_rows(1)[0], "tools": [{"type": "function", "function": {"name": "f"}}]}
    unanswered = {"messages": [{"role": "user", "content": "Anyone?"}]}
    lone_answer = {"messages": [{"role": "assistant", "content": "Hi."}]}
    rows = [tool_row, unanswered, lone_answer, *qa_rows(3, "one"), *qa_rows(2, "two")]

    chosen = select_eval_rows(rows, 4)

    assert [row.reference for row in chosen] == ["one", "one", "one", "two"]
    assert chosen[0].prompt == [{"role": "user", "content": "What is question 0?"}]


# --- pre-flight ----------------------------------------------------------------------------


def dataset_row(**changes: Any) -> dict[str, Any]:
    row = {
        "id": "ds-0123456789abcdef",
        "base_model": "tiny",
        "tokenizer_fingerprint": "fp-tiny",
        "max_seq_len": 512,
        "train_rows": 40,
        "validation_rows": 8,
        "report": {"tokens": {"per_row": {"max": 60}, "train_tokens_per_epoch": 2_000}},
    }
    return {**row, **changes}


def eval_problems(tiny_base: Path, dataset: dict[str, Any], metric: str) -> list[str]:
    params = parse_params({"eval_metric": metric})
    found = check_config(tiny_base, params, dataset, "tiny", "fp-tiny")
    return [str(p) for p in found if p.severity == "error" and p.field.endswith("eval_metric")]


def test_a_label_metric_on_a_dataset_without_labels_is_refused_naming_the_others(
    tiny_base: Path,
) -> None:
    (problem,) = eval_problems(tiny_base, dataset_row(), "accuracy")

    assert problem.startswith("hyperparameters.eval_metric='accuracy'")
    assert "has none" in problem
    assert "exact_match, token_f1, rouge_l, json_valid" in problem


def test_a_label_metric_on_a_dataset_with_labels_passes(tiny_base: Path) -> None:
    labels = {"count": 2, "train": {"yes": 20, "no": 20}, "validation": {"yes": 4, "no": 4}}
    dataset = dataset_row(report={**dataset_row()["report"], "labels": labels})

    assert eval_problems(tiny_base, dataset, "macro_f1") == []
    assert eval_problems(tiny_base, dataset_row(), "token_f1") == []


def test_an_eval_metric_on_a_dataset_without_validation_rows_is_refused(tiny_base: Path) -> None:
    (problem,) = eval_problems(tiny_base, dataset_row(validation_rows=0), "exact_match")

    assert "no validation rows" in problem and "validation_fraction" in problem


def test_preflight_names_a_selection_by_eval_metric_without_one_among_all_problems(
    tmp_path: Path,
) -> None:
    workspace = Workspace(home=tmp_path, cache=Path(os.environ["TURING_CACHE"]))
    services = Services(workspace=workspace, registry=Registry(workspace.registry_path))

    alone = preflight(services, "ds-missing", "none", {"selection_metric": "eval_metric"})
    paired = preflight(
        services,
        "ds-missing",
        "none",
        {"selection_metric": "eval_metric", "eval_metric": "rouge_l"},
    )

    fields = {problem["field"]: problem["message"] for problem in alone["problems"]}
    assert "eval_metric" in fields["hyperparameters.selection_metric"]
    assert {problem["field"] for problem in paired["problems"]} == {"dataset_id", "base_model"}


# --- training ------------------------------------------------------------------------------


def test_scoring_checkpoints_leaves_the_training_trajectory_unchanged(tiny_base: Path) -> None:
    # Dropout draws random numbers in training mode: scoring must restore both the mode and
    # the generators, or the steps after the first checkpoint differ.
    common = {**PARAMS, "epochs": 2, "lora_dropout": 0.1}
    plain, plain_events = train_in_process(tiny_base, parse_params(common))
    scored, scored_events = train_in_process(
        tiny_base, parse_params({**common, "eval_metric": "token_f1"})
    )

    def losses(events: list[dict[str, Any]]) -> list[float]:
        return [event["loss"] for event in events if event["type"] == "step"]

    assert losses(scored_events) == losses(plain_events) and len(losses(plain_events)) == 6
    assert scored.final_loss == plain.final_loss
    assert scored.validation_loss == plain.validation_loss
    validations = [event for event in scored_events if event["type"] == "validation"]
    assert len(validations) == 3 and all("eval_token_f1" in event for event in validations)


def test_the_output_is_the_checkpoint_with_the_best_eval_metric_and_early_stopping_follows_it(
    tiny_base: Path, tmp_path: Path
) -> None:
    params = {
        **PARAMS,
        "eval_metric": "token_f1",
        "selection_metric": "eval_metric",
        "early_stopping_patience": 2,
    }
    result, events = train_in_process(tiny_base, parse_params(params), run_dir=tmp_path)

    scores = {c["step"]: c["metrics"]["eval_token_f1"] for c in result.checkpoints}
    assert len(set(scores.values())) > 1  # the data makes the choice mean something
    assert result.output_step == earliest_best(scores)
    source = json.loads((tmp_path / "adapter" / "source.json").read_text())
    assert source["step"] == result.output_step
    # The run stops where patience over the task metric says, though the loss still falls.
    assert result.stopped_early
    assert result.steps == stop_step(scores, 2, result.total_steps)
    losses = [c["metrics"]["validation_loss"] for c in result.checkpoints]
    assert losses == sorted(losses, reverse=True)
    validations = {e["step"]: e["eval_token_f1"] for e in events if e["type"] == "validation"}
    assert validations == scores


def test_a_label_metric_without_labels_is_refused_before_training(tiny_base: Path) -> None:
    with pytest.raises(InvalidInputError, match=r"eval_metric='macro_f1'.*exact_match"):
        train_in_process(tiny_base, TrainParams(eval_metric="macro_f1"))


# --- the worker ----------------------------------------------------------------------------


def write_job(run_dir: Path, base: Path, params: dict[str, Any], report: dict[str, Any]) -> None:
    data = run_dir.parent / f"{run_dir.name}-data"
    data.mkdir(parents=True)
    (data / "report.json").write_text(json.dumps(report))
    run_dir.mkdir()
    job = {
        "base_gguf": str(base),
        "train_path": str(write_jsonl(data / "train.jsonl", review_rows(12))),
        "validation_path": str(write_jsonl(data / "validation.jsonl", review_rows(4))),
        "params": params,
    }
    (run_dir / "job.json").write_text(json.dumps(job))


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def check_recorded(run_dir: Path, result: dict[str, Any], key: str) -> None:
    assert result["status"] == "succeeded", result
    manifests = checkpoints.list_checkpoints(run_dir)
    scores = {m["step"]: m["metrics"][key] for m in manifests}
    assert sorted(scores) == list(range(2, result["steps"] + 1, 2))
    assert all(0.0 <= value <= 1.0 for value in scores.values())
    assert {c["step"]: c["metrics"][key] for c in result["checkpoints"]} == scores
    validations = [e for e in read_lines(run_dir / "metrics.jsonl") if e["type"] == "validation"]
    assert {e["step"]: e[key] for e in validations} == scores
    assert result["output_step"] == earliest_best(scores)
    assert result["output_metrics"][key] == scores[result["output_step"]]
    history = [e for e in read_lines(run_dir / "events.jsonl") if e["type"] == "validation"]
    assert key in history[-1]["message"]


def test_the_worker_scores_every_checkpoint_against_the_dataset_labels(
    tiny_base: Path, tmp_path: Path
) -> None:
    report = {"labels": {"count": 2, "train": {"negative": 6, "positive": 6}, "validation": {}}}
    params = {**PARAMS, "epochs": 2, "eval_metric": "accuracy", "selection_metric": "eval_metric"}
    run_dir = tmp_path / "run"
    write_job(run_dir, tiny_base, params, report)

    subprocess.run([sys.executable, "-m", WORKER, str(run_dir)], timeout=300, check=False)

    check_recorded(run_dir, json.loads((run_dir / "result.json").read_text()), "eval_accuracy")


def test_two_processes_score_checkpoints_without_waiting_on_each_other(
    tiny_base: Path, tmp_path: Path
) -> None:
    params = {
        **PARAMS,
        "epochs": 2,
        "eval_metric": "exact_match",
        "selection_metric": "eval_metric",
    }
    params["early_stopping_patience"] = 1
    run_dir = tmp_path / "run"
    write_job(run_dir, tiny_base, params, {"labels": None})
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]

    done = subprocess.run(
        [*command, "-m", WORKER, str(run_dir)], capture_output=True, text=True, timeout=300
    )

    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((run_dir / "result.json").read_text())
    check_recorded(run_dir, result, "eval_exact_match")
    scores = {c["step"]: c["metrics"]["eval_exact_match"] for c in result["checkpoints"]}
    assert result["steps"] == (stop_step(scores, 1, result["total_steps"]) or 6)
