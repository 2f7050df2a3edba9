"""LoRA training: loss masking, parameter validation, the training loop and the worker process."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import write_jsonl
from turing.tools.chat import read_chat_template
from turing.tools.errors import InvalidInputError
from turing.tools.finetune.train import (
    IGNORE,
    TrainParams,
    parse_params,
    tokenize_conversation,
    tokenize_rows,
    train,
)
from turing.tools.modeling import generate, load_model

WORKER = "turing.tools.finetune.worker"
ANSWER = "The answer is forty two."


def qa_rows(count: int, question: str = "What is question {i}?") -> list[dict[str, Any]]:
    return [
        {
            "messages": [
                {"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": question.format(i=i)},
                {"role": "assistant", "content": ANSWER},
            ]
        }
        for i in range(count)
    ]


@pytest.fixture(scope="module")
def tiny_tokenizer(tiny_base: Path) -> Any:
    _, tokenizer = load_model(tiny_base)
    return tokenizer


CONVERSATIONS = {
    "single turn": [
        {"role": "system", "content": "Classify the query."},
        {"role": "user", "content": "Where is my card?"},
        {"role": "assistant", "content": "card_arrival"},
    ],
    "no system prompt": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
    ],
    "two turns": [
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue"},
        {"role": "user", "content": "Another one."},
        {"role": "assistant", "content": "Green, like grass."},
    ],
    "first answer with weight 0": [
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue", "weight": 0},
        {"role": "user", "content": "Another one."},
        {"role": "assistant", "content": "Green, like grass.", "weight": 1},
    ],
}


@pytest.mark.parametrize("messages", CONVERSATIONS.values(), ids=CONVERSATIONS.keys())
def test_loss_mask_covers_exactly_the_assistant_tokens_and_end_of_turn(
    tiny_base: Path, tiny_tokenizer: Any, messages: list[dict[str, str]]
) -> None:
    template = read_chat_template(tiny_base)
    example = tokenize_conversation(messages, tiny_tokenizer, template, max_seq_len=512)

    labelled = [
        token
        for token, label in zip(example.input_ids, example.labels, strict=True)
        if label != IGNORE
    ]
    context = [
        token
        for token, label in zip(example.input_ids, example.labels, strict=True)
        if label == IGNORE
    ]
    answers = [
        m["content"] + template.end_of_turn
        for m in messages
        if m["role"] == "assistant" and m.get("weight", 1) != 0
    ]
    assert tiny_tokenizer.decode(labelled) == "".join(answers)
    pairs = zip(example.input_ids, example.labels, strict=True)
    assert all(label in (IGNORE, token) for token, label in pairs)

    # The context is the rendered conversation without the answers: no prompt token is trained.
    rendered = template.render(messages)
    for answer in answers:
        rendered = rendered.replace(answer, "", 1)
    assert tiny_tokenizer.decode(context) == rendered.removesuffix("\n")


def test_the_end_of_turn_token_is_trained_although_it_is_also_the_padding_token(
    tiny_base: Path, tiny_tokenizer: Any
) -> None:
    from turing.tools.finetune.trainer import collate
    from turing.tools.modeling import end_of_turn_id

    template = read_chat_template(tiny_base)
    end = end_of_turn_id(tiny_tokenizer, template)
    assert tiny_tokenizer.pad_token_id == tiny_tokenizer.eos_token_id == end  # SmolLM2's setup
    short, long = (
        tokenize_conversation(CONVERSATIONS[name], tiny_tokenizer, template, 512)
        for name in ("no system prompt", "two turns")
    )
    input_ids, labels, tokens = collate([short, long], tiny_tokenizer.pad_token_id, "cpu")

    size = len(short.input_ids)
    assert labels[0, size - 1].item() == end  # the answer's last token: end of turn, trained
    assert labels[0, size:].eq(IGNORE).all()  # the same id as padding: not trained
    assert input_ids[0, size:].eq(end).all()
    assert tokens == len(short.input_ids) + len(long.input_ids)


def test_tool_calls_are_trained_as_text_when_the_template_has_no_tool_support(
    tiny_base: Path, tiny_tokenizer: Any
) -> None:
    template = read_chat_template(tiny_base)
    call = {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": '{"q": 1}'}}
    messages = [
        {"role": "user", "content": "Look it up."},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
        {"role": "assistant", "content": "It is 42."},
    ]
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]

    example = tokenize_conversation(messages, tiny_tokenizer, template, 512, tools)

    labelled = [
        t for t, label in zip(example.input_ids, example.labels, strict=True) if label != IGNORE
    ]
    end = template.end_of_turn
    assert tiny_tokenizer.decode(labelled) == (
        f'<tool_call>{{"name": "lookup", "arguments": {{"q": 1}}}}</tool_call>{end}It is 42.{end}'
    )
    assert '{"name": "lookup", "parameters": {}}' in tiny_tokenizer.decode(example.input_ids)


def test_a_conversation_starts_with_a_single_bos_token(
    tiny_base: Path, tiny_tokenizer: Any
) -> None:
    template = read_chat_template(tiny_base)
    example = tokenize_conversation(CONVERSATIONS["single turn"], tiny_tokenizer, template, 512)

    bos = tiny_tokenizer.bos_token_id
    assert example.input_ids[0] == bos
    assert example.input_ids[1] != bos


def test_parse_params_reports_every_bad_key_at_once() -> None:
    raw = {"lora_rank": 0, "epochs": "three", "learning_rate": -1, "batch_sise": 8}

    with pytest.raises(InvalidInputError) as caught:
        parse_params(raw)

    message = str(caught.value)
    assert "lora_rank=0: must be an integer between 1 and 256" in message
    assert "epochs='three': must be an integer" in message
    assert "learning_rate=-1: must be a number greater than 0" in message
    assert "unknown parameter 'batch_sise'" in message
    assert "batch_size" in message  # the valid keys are listed


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"lora_dropout": 1.0}, "lora_dropout=1.0: must be a number at least 0 and less than 1"),
        ({"batch_size": True}, "batch_size=True: must be an integer"),
        ({"target_modules": []}, "target_modules=[]: must be a non-empty list"),
        ({"warmup_ratio": float("nan")}, "warmup_ratio=nan: must be a number"),
        ({"max_seq_len": 4}, "max_seq_len=4: must be an integer between 8 and 32768"),
    ],
)
def test_parse_params_names_the_bad_value_and_what_is_allowed(
    raw: dict[str, Any], expected: str
) -> None:
    with pytest.raises(InvalidInputError, match=re.escape(expected)):
        parse_params(raw)


def test_parse_params_fills_defaults_and_keeps_given_values() -> None:
    params = parse_params({"epochs": 2, "learning_rate": 5e-4, "seed": None})

    assert params.epochs == 2
    assert params.learning_rate == 5e-4
    assert params.seed == TrainParams().seed
    assert len(params.target_modules) == 7


def test_rows_truncated_to_no_answer_are_dropped_and_counted(
    tiny_base: Path, tiny_tokenizer: Any
) -> None:
    template = read_chat_template(tiny_base)
    long_rows = qa_rows(3, question="word " * 100 + "{i}")

    examples, dropped = tokenize_rows(qa_rows(2) + long_rows, tiny_tokenizer, template, 64)

    assert (len(examples), dropped) == (2, 3)
    assert all(len(example.input_ids) <= 64 for example in examples)


def test_a_dataset_with_no_answer_left_after_truncation_is_refused_before_training(
    tiny_base: Path,
) -> None:
    model, tokenizer = load_model(tiny_base)
    template = read_chat_template(tiny_base)
    events: list[dict[str, Any]] = []

    with pytest.raises(InvalidInputError, match="max_seq_len=32"):
        train(
            model,
            tokenizer,
            template,
            qa_rows(4, question="word " * 40 + "{i}"),
            [],
            TrainParams(max_seq_len=32),
            on_event=events.append,
        )

    assert events == []
    assert not hasattr(model, "peft_config")  # no adapter was attached


def test_loss_goes_down_on_a_small_memorisable_dataset(tiny_base: Path) -> None:
    model, tokenizer = load_model(tiny_base)
    template = read_chat_template(tiny_base)
    events: list[dict[str, Any]] = []
    params = TrainParams(epochs=8, learning_rate=1e-2, batch_size=8)

    result = train(
        model, tokenizer, template, qa_rows(32), qa_rows(8), params, on_event=events.append
    )

    losses = [event["loss"] for event in events if event["type"] == "step"]
    validations = [event["validation_loss"] for event in events if event["type"] == "validation"]
    assert result.steps == len(losses) == 32
    assert len(validations) == 8
    assert result.final_loss is not None and result.final_loss < 0.6 * losses[0]
    assert validations == sorted(validations, reverse=True)
    conversation = [{"role": "user", "content": "Something new?"}]
    assert generate(result.model, tokenizer, template, [conversation], 16) == [ANSWER]


def test_training_is_deterministic_for_a_seed(tiny_base: Path) -> None:
    template = read_chat_template(tiny_base)
    losses = []
    for _ in range(2):
        model, tokenizer = load_model(tiny_base)
        events: list[dict[str, Any]] = []
        params = TrainParams(epochs=1, batch_size=4, seed=7)
        train(model, tokenizer, template, qa_rows(12), [], params, on_event=events.append)
        losses.append([event["loss"] for event in events])

    assert losses[0] == losses[1]


def start_worker(run_dir: Path, base: Path, params: dict[str, Any]) -> subprocess.Popen[str]:
    run_dir.mkdir(parents=True, exist_ok=True)
    job = {
        "base_gguf": str(base),
        "train_path": str(write_jsonl(run_dir / "train.jsonl", qa_rows(32))),
        "validation_path": str(write_jsonl(run_dir / "validation.jsonl", qa_rows(4))),
        "params": params,
    }
    (run_dir / "job.json").write_text(json.dumps(job))
    return subprocess.Popen(
        [sys.executable, "-m", WORKER, str(run_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_the_worker_trains_and_writes_metrics_adapter_and_result(
    tiny_base: Path, tmp_path: Path
) -> None:
    params = {"epochs": 6, "learning_rate": 1e-2, "batch_size": 8}
    worker = start_worker(tmp_path, tiny_base, params)
    stdout, stderr = worker.communicate(timeout=300)

    assert worker.returncode == 0, stderr
    assert stdout == ""
    assert "step 24/24" in stderr
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["status"] == "succeeded"
    assert result["steps"] == 24
    assert result["trainable_parameters"] > 0
    assert result["final_loss"] > 0 and result["validation_loss"] > 0
    assert Path(result["adapter_dir"]) == (tmp_path / "adapter").resolve()
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert not list(tmp_path.glob(".*tmp*"))

    metrics = read_metrics(tmp_path)
    steps = [event for event in metrics if event["type"] == "step"]
    assert [event["step"] for event in steps] == list(range(1, 25))
    step_keys = {
        "step",
        "total_steps",
        "epoch",
        "loss",
        "learning_rate",
        "tokens_per_second",
        "elapsed_seconds",
        "eta_seconds",
        "time",
    }
    assert step_keys <= set(steps[0])
    validations = [event for event in metrics if event["type"] == "validation"]
    assert [event["step"] for event in validations] == [4, 8, 12, 16, 20, 24]
    assert validations[-1]["validation_loss"] == result["validation_loss"]

    model, tokenizer = load_model(tiny_base, tmp_path / "adapter")
    template = read_chat_template(tiny_base)
    conversation = [{"role": "user", "content": "Anything?"}]
    assert generate(model, tokenizer, template, [conversation], 16) == [ANSWER]


def test_sigterm_stops_the_worker_at_a_step_boundary_as_cancelled_after_a_checkpoint(
    tiny_base: Path, tmp_path: Path
) -> None:
    worker = start_worker(tmp_path, tiny_base, {"epochs": 100, "batch_size": 2})
    deadline = time.monotonic() + 120
    while not read_metrics(tmp_path) and time.monotonic() < deadline:
        assert worker.poll() is None, worker.communicate()[1]
        time.sleep(0.2)

    os.kill(worker.pid, signal.SIGTERM)
    _, stderr = worker.communicate(timeout=60)

    assert worker.returncode == 0, stderr
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["status"] == "cancelled"
    assert 1 <= result["steps"] < result["total_steps"] == 1600
    assert not (tmp_path / "adapter").exists()
    # It saved where it stopped, ready to resume.
    assert result["checkpoints"][-1]["step"] == result["steps"]
    assert (Path(result["checkpoints"][-1]["path"]) / "trainer_state.pt").is_file()


def test_the_worker_fails_with_the_parameter_error_on_bad_params(
    tiny_base: Path, tmp_path: Path
) -> None:
    worker = start_worker(tmp_path, tiny_base, {"lora_rank": 0, "colour": "red"})
    _, stderr = worker.communicate(timeout=120)

    assert worker.returncode == 1
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["status"] == "failed"
    assert "lora_rank=0: must be an integer between 1 and 256" in result["error"]
    assert "unknown parameter 'colour'" in result["error"]
    assert "Traceback" not in stderr
