"""Pre-flight of fine-tuning: every problem of a request at once, and a measured cost estimate."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import write_jsonl
from turing.server.registry import Registry
from turing.server.services import Services
from turing.server.workspace import Workspace
from turing.tools.base_models import register_base_model
from turing.tools.chat import read_chat_template
from turing.tools.datasets.store import create_dataset, load_split, split_path
from turing.tools.errors import InvalidInputError
from turing.tools.finetune.preflight import (
    MemoryModel,
    Problem,
    check_config,
    lora_parameter_count,
    matching_modules,
    preflight,
    probe_in_child,
    raise_if_errors,
    read_model_shape,
)
from turing.tools.finetune.train import LLAMA_PROJECTIONS, parse_params, train
from turing.tools.modeling import load_model

REPO = Path(__file__).resolve().parents[2]
FINGERPRINT = "fp-tiny"
SYSTEM = "You are a careful assistant. Answer every question briefly, politely and in English."


def dataset_row(**changes: Any) -> dict[str, Any]:
    """A datasets registry row for the tiny base model, as create_dataset stores it."""
    row = {
        "id": "ds-0123456789abcdef",
        "base_model": "tiny",
        "tokenizer_fingerprint": FINGERPRINT,
        "max_seq_len": 512,
        "train_rows": 400,
        "validation_rows": 40,
        "report": {"tokens": {"per_row": {"max": 120}, "train_tokens_per_epoch": 24_000}},
    }
    return {**row, **changes}


def check(tiny_base: Path, dataset: dict[str, Any] | None = None, **raw: Any) -> list[Problem]:
    params = parse_params(raw)
    return check_config(tiny_base, params, dataset or dataset_row(), "tiny", FINGERPRINT)


def errors(problems: list[Problem]) -> list[Problem]:
    return [problem for problem in problems if problem.severity == "error"]


# --- the model as peft sees it --------------------------------------------------------------


def test_module_names_and_shapes_read_from_gguf_are_those_of_the_loaded_model(
    tiny_base: Path,
) -> None:
    from torch import nn

    from tests.tiny_model import build_tiny_model

    expected: dict[str, tuple[int, int] | None] = {}
    for name, module in build_tiny_model().named_modules():
        if isinstance(module, nn.Linear):
            expected[name] = (module.in_features, module.out_features)
        elif isinstance(module, nn.Embedding):
            expected[name] = (module.num_embeddings, module.embedding_dim)
        else:
            expected[name] = None

    assert read_model_shape(tiny_base).modules == expected


@pytest.mark.parametrize(
    "targets",
    [["q_proj", "down_proj"], ["self_attn.v_proj", "lm_head"], ["model.layers.1.mlp.up_proj"]],
)
def test_targets_select_the_same_layers_as_peft(tiny_base: Path, targets: list[str]) -> None:
    from peft import LoraConfig, get_peft_model

    from tests.tiny_model import build_tiny_model

    shape = read_model_shape(tiny_base)
    model = get_peft_model(build_tiny_model(), LoraConfig(r=4, target_modules=targets))
    adapted = {
        name.removeprefix("base_model.model.")
        for name, module in model.named_modules()
        if hasattr(module, "lora_A")
    }
    selected = {name for target in targets for name in matching_modules(shape, target)}
    assert selected == adapted
    params = parse_params({"lora_rank": 4, "target_modules": targets})
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert lora_parameter_count(shape, params, sorted(selected)) == trainable


# --- static checks ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "phrase"),
    [
        ("qkv_proj", "matches no module"),
        ("mlp", "LoRA cannot adapt"),
        ("input_layernorm", "LoRA cannot adapt"),
    ],
)
def test_a_target_module_that_is_no_layer_is_named_with_the_valid_ones(
    tiny_base: Path, target: str, phrase: str
) -> None:
    found = errors(check(tiny_base, target_modules=["q_proj", target]))

    assert len(found) == 1
    assert found[0].field == "hyperparameters.target_modules"
    assert found[0].value == target
    assert phrase in found[0].message
    assert all(name in found[0].hint for name in LLAMA_PROJECTIONS)


def test_every_problem_is_reported_together_in_one_error(tiny_base: Path) -> None:
    dataset = dataset_row(max_seq_len=32768, train_rows=5000, report={})
    problems = check(
        tiny_base,
        dataset,
        target_modules=["qkv_proj", "v_proj"],
        precision="fp16",
        batch_size=1024,
        max_seq_len=32768,
        learning_rate=0.5,
    )

    with pytest.raises(InvalidInputError) as raised:
        raise_if_errors(problems)
    message = str(raised.value)
    assert "3 problem(s)" in message
    assert "'qkv_proj' matches no module" in message
    assert "fp16 needs a GPU" in message
    assert "1024 rows of 32768 tokens needs about" in message
    assert "Warnings: hyperparameters.learning_rate=0.5" in message


def test_a_batch_that_does_not_fit_in_memory_is_refused_with_one_that_fits(
    tiny_base: Path,
) -> None:
    shape = read_model_shape(tiny_base)
    params = parse_params({"batch_size": 16})
    selected = [name for name in shape.modules if name.endswith(LLAMA_PROJECTIONS)]
    model = MemoryModel(shape, params, lora_parameter_count(shape, params, selected))
    width = 120  # the longest row of dataset_row()
    room = model.fixed_bytes() + int(3.5 * model.row_bytes(width))
    room = max(room, model.load_bytes())
    fitting = (room - model.fixed_bytes()) // model.row_bytes(width)

    tight = check_config(tiny_base, params, dataset_row(), "tiny", FINGERPRINT, memory_bytes=room)
    roomy = check_config(tiny_base, params, dataset_row(), "tiny", FINGERPRINT, memory_bytes=2**40)

    (problem,) = errors(tight)
    assert problem.field == "hyperparameters.batch_size"
    assert f"batch_size={fitting} fits" in problem.hint
    assert not errors(roomy)


def test_a_rank_above_the_narrowest_targeted_layer_is_refused(tiny_base: Path) -> None:
    (problem,) = errors(check(tiny_base, lora_rank=64))
    wide_only = check(tiny_base, lora_rank=64, target_modules=["q_proj", "o_proj"])

    assert problem.field == "hyperparameters.lora_rank"
    assert "above the 32 features of k_proj (64 in, 32 out)" in problem.message
    assert "lora_rank <= 32" in problem.hint
    assert not errors(wide_only)


@pytest.mark.parametrize(
    ("prepared_for", "prepared_fingerprint", "refused"),
    [
        ("other-model", "fp-other", True),  # another base model
        ("tiny", "fp-old", True),  # same name, but its tokenizer or chat template changed
        ("tiny", FINGERPRINT, False),
        ("tiny-copy", FINGERPRINT, False),  # the same tokenizer and template under another name
    ],
)
def test_a_dataset_prepared_for_another_base_or_template_is_refused(
    tiny_base: Path, prepared_for: str, prepared_fingerprint: str, refused: bool
) -> None:
    dataset = dataset_row(base_model=prepared_for, tokenizer_fingerprint=prepared_fingerprint)
    found = errors(check(tiny_base, dataset))

    assert bool(found) is refused
    if refused:
        assert found[0].field == "dataset_id"
        assert f"prepared for {prepared_for}" in found[0].message
        assert "base_model='tiny'" in found[0].hint


@pytest.mark.parametrize(
    ("max_seq_len", "longest", "refused"),
    [(128, 300, True), (256, 200, False), (1024, 300, False)],
)
def test_a_max_seq_len_that_would_cut_rows_the_dataset_kept_is_refused(
    tiny_base: Path, max_seq_len: int, longest: int, refused: bool
) -> None:
    dataset = dataset_row(report={"tokens": {"per_row": {"max": longest}}})
    found = errors(check(tiny_base, dataset, max_seq_len=max_seq_len))

    assert bool(found) is refused
    if refused:
        assert found[0].field == "hyperparameters.max_seq_len"
        assert "omit max_seq_len to train at 512" in found[0].hint


def test_unusual_but_workable_values_are_warnings_that_do_not_block(tiny_base: Path) -> None:
    problems = check(tiny_base, learning_rate=0.2, lora_rank=4, lora_alpha=256)

    fields = {problem.field for problem in problems}
    assert {"hyperparameters.learning_rate", "hyperparameters.lora_alpha"} <= fields
    assert not errors(problems)
    raise_if_errors(problems)  # warnings alone never raise


def test_fp16_is_refused_on_a_cpu_only(tiny_base: Path) -> None:
    params = parse_params({"precision": "fp16"})
    on_cpu = check_config(tiny_base, params, dataset_row(), "tiny", FINGERPRINT, device="cpu")
    on_gpu = check_config(tiny_base, params, dataset_row(), "tiny", FINGERPRINT, device="cuda")

    assert [problem.field for problem in errors(on_cpu)] == ["hyperparameters.precision"]
    assert not errors(on_gpu)


def test_the_static_check_never_imports_torch(tiny_base: Path) -> None:
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from tests.tools.test_preflight import dataset_row\n"
        "from turing.tools.finetune.preflight import check_config, static_estimate\n"
        "from turing.tools.finetune.train import parse_params\n"
        "params = parse_params({'precision': 'fp16'})\n"
        f"base = Path({str(tiny_base)!r})\n"
        "problems = check_config(base, params, dataset_row(), 'tiny', 'fp-tiny')\n"
        "static_estimate(base, params, dataset_row())\n"
        "assert problems, 'fp16 on a CPU must be a problem'\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr


# --- through the registry, with the probe --------------------------------------------------


def qa_rows(count: int) -> list[dict[str, Any]]:
    return [
        {
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": f"What is {i} plus {i}?"},
                {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."},
            ]
        }
        for i in range(count)
    ]


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory, tiny_base: Path) -> Services:
    home = tmp_path_factory.mktemp("home")
    workspace = Workspace(home=home, cache=Path(os.environ["TURING_CACHE"]))
    services = Services(workspace=workspace, registry=Registry(workspace.registry_path))
    register_base_model(services, "tiny", str(tiny_base))
    return services


@pytest.fixture(scope="module")
def dataset_id(services: Services, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = write_jsonl(tmp_path_factory.mktemp("data") / "qa.jsonl", qa_rows(40))
    created = create_dataset(services, str(path), base_model="tiny", validation_fraction=0.2)
    return str(created["dataset_id"])


def test_bad_parameters_an_unknown_dataset_and_base_model_come_back_together(
    services: Services,
) -> None:
    result = preflight(services, "ds-missing", "no-such-model", {"epochs": 0, "colour": "red"})

    assert result["ok"] is False
    assert {problem["field"] for problem in result["problems"]} == {
        "hyperparameters.epochs",
        "hyperparameters.colour",
        "dataset_id",
        "base_model",
    }
    assert result["estimate"] is None


def test_the_probe_measures_steps_and_its_total_steps_match_training(
    services: Services, dataset_id: str, tiny_base: Path
) -> None:
    hyperparameters = {"epochs": 2, "batch_size": 4}
    result = preflight(services, dataset_id, "tiny", hyperparameters)

    assert result["ok"] is True, result["problems"]
    estimate = result["estimate"]
    assert estimate["source"] == "probe"
    for key in ("seconds_per_step", "tokens_per_step", "tokens_per_second", "peak_memory_bytes"):
        assert math.isfinite(estimate[key]) and estimate[key] > 0, key
    assert estimate["estimated_seconds"]["total"] > estimate["estimated_seconds"]["training"] > 0
    assert estimate["dropped_train_rows"] == 0

    # Training itself, on the same split files and parameters, agrees on steps and tokens.
    model, tokenizer = load_model(tiny_base)
    done = train(
        model,
        tokenizer,
        read_chat_template(tiny_base),
        load_split(services, dataset_id, "train"),
        load_split(services, dataset_id, "validation"),
        parse_params(result["hyperparameters"]),
    )
    assert estimate["total_steps"] == done.total_steps == done.steps
    assert estimate["train_tokens"] == done.train_tokens
    assert estimate["trainable_parameters"] == done.trainable_parameters


def test_a_dataset_whose_every_row_would_lose_its_answer_is_refused_before_training(
    services: Services, dataset_id: str, tiny_base: Path
) -> None:
    result = preflight(services, dataset_id, "tiny", {"max_seq_len": 16})

    assert result["ok"] is False
    messages = [problem["message"] for problem in result["problems"]]
    assert any("no training row keeps an answer token within max_seq_len=16" in m for m in messages)
    assert result["estimate"]["source"] == "static"  # refused before any step was run

    # The probe, run on its own, refuses the same rows as training would.
    estimate, problems = probe_in_child(
        tiny_base,
        split_path(services, dataset_id, "train"),
        split_path(services, dataset_id, "validation"),
        parse_params({"max_seq_len": 16}),
    )
    assert estimate is None
    assert [problem.severity for problem in problems] == ["error"]
    assert "no training row keeps an answer token" in problems[0].message
