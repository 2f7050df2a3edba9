"""Pre-flight of a fine-tuning request: every problem at once, and what the run would cost.

`check_config` reads only the base model's GGUF metadata, the dataset's registry row and /proc,
so the server answers at once and never imports torch. `probe_in_child` then runs a few real
training steps in a child process and extrapolates the run's tokens, time and peak memory from
them. `preflight` does both for the MCP tool.

Run as `python -m turing.tools.finetune.preflight JOB_JSON OUT_JSON` to probe.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import logging
import math
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from turing.server.jobs import write_json_atomic
from turing.server.services import Services
from turing.tools.base_models import DEFAULT_BASE_MODEL, SUPPORTED_ARCHITECTURES, get_base_model
from turing.tools.datasets.jsonl import read_jsonl
from turing.tools.datasets.store import split_path
from turing.tools.datasets.tokens import TokenCounter, TokenLengths, load_token_counter
from turing.tools.deploy.gguf_export import read_gguf_info
from turing.tools.errors import InvalidInputError, TuringError
from turing.tools.finetune.train import (
    EVAL_METRICS,
    LABEL_METRICS,
    LLAMA_PROJECTIONS,
    TrainParams,
    check_parameter,
    combination_problems,
    make_batches,
    parse_params,
)

logger = logging.getLogger(__name__)

PROBE_STEPS = 3  # the first, on the widest batch, warms up and sets the peak; the rest are timed
PROBE_TIMEOUT_S = 300
# A whole run's allocator holds more than a few steps did: on SmolLM2, 3.15 GB probed against
# 3.56 GB over the run it stood for.
PROBE_PEAK_MARGIN = 1.15
TYPICAL_LEARNING_RATES = (1e-5, 1e-2)  # where LoRA runs usually land
TYPICAL_ALPHA_RATIOS = (0.25, 16.0)  # lora_alpha / lora_rank

# Hugging Face names of a llama block's linear layers, by their GGUF tensor names.
LLAMA_LINEAR = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
# The other modules of a llama block: peft matches their names but cannot adapt them.
LLAMA_OTHER = ("self_attn", "mlp", "mlp.act_fn", "input_layernorm", "post_attention_layernorm")

# Memory model of one CPU training step, fitted to SmolLM2-135M measurements (bf16, eager
# attention, LoRA on every projection); the probe measures instead of guessing.
RUNTIME_BYTES = 320 * 2**20  # Python, torch and transformers themselves
LOAD_BYTES_PER_PARAMETER = 7.5  # GGUF weights dequantised to float32, with transient copies
ACTIVATION_FACTOR = 1.4  # autograd keeps more than the layer outputs counted below
ATTENTION_SCORE_BYTES = 7  # per attention score in bf16: scores, float32 softmax, its bf16 copy
LOGIT_BYTES = 14  # per logit of an answer token: bf16, float32 copy, softmax and gradient
ANSWER_SHARE = 0.5  # share of a batch's tokens assumed to be answers (the report has no split)
LORA_BYTES_PER_PARAMETER = 16  # float32 weight, gradient and AdamW's two moments
CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with (or worth knowing about) a fine-tuning request."""

    severity: str  # "error": the run would fail or train nonsense; "warning": it would run
    field: str  # where the problem lies, e.g. "hyperparameters.target_modules"
    value: Any
    message: str
    hint: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The problem as a JSON-ready dict."""
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.field}={self.value!r}: {self.message}" + (
            f" ({self.hint})" if self.hint else ""
        )


def _error(field: str, value: Any, message: str, hint: str = "") -> Problem:
    return Problem("error", field, value, message, hint)


def _warning(field: str, value: Any, message: str, hint: str = "") -> Problem:
    return Problem("warning", field, value, message, hint)


def raise_if_errors(problems: list[Problem]) -> None:
    """Raise one error that lists every error problem; warnings are mentioned after them.

    Raises:
        InvalidInputError: At least one problem is an error.
    """
    errors = [problem for problem in problems if problem.severity == "error"]
    if not errors:
        return
    warnings = [problem for problem in problems if problem.severity == "warning"]
    message = f"the fine-tuning request has {len(errors)} problem(s): " + "; ".join(
        f"({number}) {problem}" for number, problem in enumerate(errors, start=1)
    )
    if warnings:
        message += ". Warnings: " + "; ".join(str(problem) for problem in warnings)
    raise InvalidInputError(message)


# --- the model, from its GGUF metadata ---------------------------------------------------------


@dataclass(frozen=True)
class ModelShape:
    """What pre-flight needs of a base model, read from its GGUF file without loading it."""

    architecture: str
    block_count: int
    hidden: int
    intermediate: int
    head_count: int
    kv_features: int  # output features of a k or v projection (grouped-query attention)
    vocab_size: int
    parameters: int
    # Every module name as peft sees it in the Hugging Face model -> (in, out) features of a
    # layer LoRA can adapt (linear or embedding), or None for one it cannot.
    modules: dict[str, tuple[int, int] | None]

    def adaptable_names(self) -> list[str]:
        """The short names of the layers LoRA can adapt, in model order."""
        names = (name.rsplit(".", 1)[-1] for name, shape in self.modules.items() if shape)
        return list(dict.fromkeys(names))


def read_model_shape(base_gguf: Path) -> ModelShape:
    """The architecture, sizes and module names of a base model, from its GGUF metadata.

    Raises:
        InvalidInputError: The file is not a readable GGUF model of a supported architecture.
    """
    info = read_gguf_info(base_gguf)
    if info.architecture not in SUPPORTED_ARCHITECTURES:
        raise InvalidInputError(
            f"{base_gguf} is a {info.architecture!r} model; supported architectures: "
            f"{', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    shapes = info.tensor_shapes  # innermost first: (in_features, out_features)
    hidden, vocab = info.embedding_length, info.vocab_size

    modules: dict[str, tuple[int, int] | None] = {
        "": None,
        "model": None,
        "model.embed_tokens": (vocab, hidden),
        "model.layers": None,
    }
    for block in range(info.block_count):
        prefix = f"model.layers.{block}"
        modules[prefix] = None
        for gguf_name, hf_name in LLAMA_LINEAR.items():
            shape = shapes.get(f"blk.{block}.{gguf_name}.weight")
            if shape is not None:
                modules[f"{prefix}.{hf_name}"] = (int(shape[0]), int(shape[1]))
        modules.update({f"{prefix}.{name}": None for name in LLAMA_OTHER})
    modules.update({"model.norm": None, "model.rotary_emb": None, "lm_head": (hidden, vocab)})

    up = shapes.get("blk.0.ffn_up.weight")
    key = shapes.get("blk.0.attn_k.weight")
    return ModelShape(
        architecture=info.architecture,
        block_count=info.block_count,
        hidden=hidden,
        intermediate=int(up[1]) if up else 4 * hidden,
        head_count=info.head_count,
        kv_features=int(key[1]) if key else hidden,
        vocab_size=vocab,
        parameters=sum(math.prod(shape) for shape in shapes.values()),
        modules=modules,
    )


def matching_modules(shape: ModelShape, target: str) -> list[str]:
    """The modules a target_modules entry selects, by peft's rule for a list of names.

    A name matches a module whose full name equals it or ends with "." followed by it.
    """
    return [name for name in shape.modules if name == target or name.endswith("." + target)]


def _check_targets(shape: ModelShape, params: TrainParams) -> tuple[list[Problem], list[str]]:
    """Problems of target_modules, and the adaptable modules the targets select."""
    problems: list[Problem] = []
    selected: list[str] = []
    valid = shape.adaptable_names()
    field = "hyperparameters.target_modules"
    for target in params.target_modules:
        found = matching_modules(shape, target)
        if not found:
            close = difflib.get_close_matches(target, valid, n=3, cutoff=0.6)
            guess = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
            problems.append(
                _error(
                    field,
                    target,
                    f"{target!r} matches no module of this {shape.architecture} model{guess}",
                    f"valid target modules: {', '.join(valid)}",
                )
            )
            continue
        unusable = [name for name in found if shape.modules[name] is None]
        if unusable:
            problems.append(
                _error(
                    field,
                    target,
                    f"{target!r} selects {unusable[0]!r}"
                    + (f" and {len(unusable) - 1} more" if len(unusable) > 1 else "")
                    + ", which LoRA cannot adapt: only linear and embedding layers take adapters",
                    f"name the layers inside instead; valid target modules: {', '.join(valid)}",
                )
            )
        selected += [name for name in found if shape.modules[name] is not None]

    unexported = sorted({name.rsplit(".", 1)[-1] for name in selected} - set(LLAMA_PROJECTIONS))
    if unexported:
        problems.append(
            _warning(
                field,
                unexported,
                f"adapters on {', '.join(unexported)} train, but export_gguf cannot write them "
                "as a llama.cpp LoRA adapter",
                f"target only {', '.join(LLAMA_PROJECTIONS)} to serve the run with llama.cpp",
            )
        )
    return problems, list(dict.fromkeys(selected))


def _check_rank(shape: ModelShape, params: TrainParams, selected: list[str]) -> list[Problem]:
    problems = []
    if selected:
        narrowest = min(selected, key=lambda name: min(shape.modules[name] or (0, 0)))
        features = shape.modules[narrowest] or (0, 0)
        if params.lora_rank > min(features):
            short = narrowest.rsplit(".", 1)[-1]
            problems.append(
                _error(
                    "hyperparameters.lora_rank",
                    params.lora_rank,
                    f"lora_rank={params.lora_rank} is above the {min(features)} features of "
                    f"{short} ({features[0]} in, {features[1]} out): a rank beyond a layer's "
                    "narrower side adds parameters but no capacity",
                    f"use lora_rank <= {min(features)}, or leave {short} out of target_modules",
                )
            )
    ratio = params.lora_alpha / params.lora_rank
    low, high = TYPICAL_ALPHA_RATIOS
    if not low <= ratio <= high:
        problems.append(
            _warning(
                "hyperparameters.lora_alpha",
                params.lora_alpha,
                f"lora_alpha/lora_rank = {ratio:g} scales the adapter's update {ratio:g}x; "
                f"runs usually stay between {low:g}x and {high:g}x",
                f"lora_alpha = {params.lora_rank} to {2 * params.lora_rank} is the common choice",
            )
        )
    return problems


def _check_learning_rate(params: TrainParams) -> list[Problem]:
    low, high = TYPICAL_LEARNING_RATES
    if low <= params.learning_rate <= high:
        return []
    side = "diverge" if params.learning_rate > high else "barely move the adapters"
    return [
        _warning(
            "hyperparameters.learning_rate",
            params.learning_rate,
            f"learning_rate={params.learning_rate:g} is outside the {low:g} to {high:g} where "
            f"LoRA runs usually land; it may {side}",
            "1e-4 to 1e-3 suits most LoRA runs",
        )
    ]


def _check_precision(params: TrainParams, device: str) -> list[Problem]:
    field = "hyperparameters.precision"
    if params.precision == "fp16" and device == "cpu":
        return [
            _error(
                field,
                "fp16",
                "fp16 needs a GPU; this run would train on the CPU, which has no fast fp16",
                "use bf16 (fast on CPUs with AVX512-BF16 or AMX) or fp32",
            )
        ]
    if params.precision != "bf16" or device != "cpu":
        return []
    flags = _cpu_flags()
    if flags and not flags & _BF16_FLAGS:
        return [
            _warning(
                field,
                "bf16",
                "this CPU has no bf16 instructions (AVX512-BF16 or AMX): bf16 is emulated",
                "fp32 may train faster here",
            )
        ]
    return []


_BF16_FLAGS = {"avx512_bf16", "amx_bf16"}


def training_device() -> str:
    """Where a run would train, "cuda" or "cpu", found without importing torch.

    A GPU needs both a driver that lists one and a torch build with CUDA kernels.
    """
    gpus = Path("/proc/driver/nvidia/gpus")
    spec = importlib.util.find_spec("torch")
    folders = list(spec.submodule_search_locations or []) if spec else []
    has_kernels = any((Path(folder) / "lib" / "libtorch_cuda.so").exists() for folder in folders)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES") not in ("", "-1")
    return "cuda" if gpus.is_dir() and any(gpus.iterdir()) and has_kernels and visible else "cpu"


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


# --- the dataset against the base model and the parameters -------------------------------------


def _check_lineage(
    dataset: dict[str, Any], base_model_name: str, base_fingerprint: str | None
) -> list[Problem]:
    prepared_for = dataset.get("base_model")
    fingerprint = dataset.get("tokenizer_fingerprint")
    if prepared_for is None and fingerprint is None:
        return [
            _warning(
                "dataset_id",
                dataset["id"],
                f"dataset {dataset['id']} records no base model: its token counts may not be "
                f"those of {base_model_name}",
                f"prepare the file again with base_model={base_model_name!r} to check them",
            )
        ]
    if fingerprint and base_fingerprint:
        mismatch = fingerprint != base_fingerprint
    else:
        mismatch = prepared_for != base_model_name
    if not mismatch:
        return []
    theirs = f"{prepared_for} (tokenizer and chat template {fingerprint})"
    ours = f"{base_model_name}" + (f" ({base_fingerprint})" if base_fingerprint else "")
    return [
        _error(
            "dataset_id",
            dataset["id"],
            f"dataset {dataset['id']} was prepared for {theirs}, not for {ours}: its token "
            "counts, truncation and template checks do not hold for this base model",
            f"prepare the file again with base_model={base_model_name!r}, or fine-tune "
            f"{prepared_for!r}",
        )
    ]


def _check_max_seq_len(dataset: dict[str, Any], params: TrainParams) -> list[Problem]:
    prepared = dataset.get("max_seq_len")
    limit = params.max_seq_len
    longest = _token_stats(dataset).get("max")
    if not prepared or limit >= prepared or (longest is not None and longest <= limit):
        return []
    rows = f", and its rows run up to {longest} tokens" if longest is not None else ""
    return [
        _error(
            "hyperparameters.max_seq_len",
            limit,
            f"max_seq_len={limit} is below the {prepared} tokens dataset {dataset['id']} was "
            f"prepared and checked against{rows}: longer rows would be cut short, and a row "
            f"whose prompt fills {limit} tokens would lose its answer entirely",
            f"omit max_seq_len to train at {prepared}, or prepare the dataset again with "
            f"max_seq_len={limit} so its report counts what gets cut",
        )
    ]


def _token_stats(dataset: dict[str, Any]) -> dict[str, Any]:
    tokens = (dataset.get("report") or {}).get("tokens") or {}
    return tokens.get("per_row") or {}


def _check_schedule(dataset: dict[str, Any], params: TrainParams) -> list[Problem]:
    problems = []
    rows = int(dataset.get("train_rows") or 0)
    steps = math.ceil(rows / params.batch_size) * params.epochs
    if rows and params.batch_size > rows:
        problems.append(
            _warning(
                "hyperparameters.batch_size",
                params.batch_size,
                f"batch_size={params.batch_size} is more than the {rows} training rows: each "
                f"epoch is a single step of {rows} rows",
                f"a batch_size of {max(1, rows // 4)} or less gives several steps per epoch",
            )
        )
    if steps and params.checkpoint_every > steps:
        problems.append(
            _warning(
                "hyperparameters.checkpoint_every",
                params.checkpoint_every,
                f"checkpoint_every={params.checkpoint_every} is beyond the run's {steps} steps: "
                "only the final step is checkpointed and validated",
                "0 checkpoints at the end of every epoch",
            )
        )
    if not dataset.get("validation_rows") and params.selection_metric.startswith("validation_"):
        problems.append(
            _warning(
                "hyperparameters.selection_metric",
                params.selection_metric,
                f"dataset {dataset['id']} has no validation rows: the output checkpoint is "
                "chosen by train_loss and early stopping is off",
                "prepare the dataset with validation_fraction > 0 to validate",
            )
        )
    return problems


def _check_evaluation(dataset: dict[str, Any], params: TrainParams) -> list[Problem]:
    """Whether the dataset has what scoring checkpoints by eval_metric needs."""
    metric = params.eval_metric
    if metric is None:
        return []
    problems = []
    if not dataset.get("validation_rows"):
        problems.append(
            _error(
                "hyperparameters.eval_metric",
                metric,
                f"dataset {dataset['id']} has no validation rows to answer at checkpoints",
                "prepare the dataset with validation_fraction > 0, or omit eval_metric",
            )
        )
    labels = (dataset.get("report") or {}).get("labels") or {}
    if metric in LABEL_METRICS and not (labels.get("train") or labels.get("validation")):
        others = ", ".join(name for name in EVAL_METRICS if name not in LABEL_METRICS)
        problems.append(
            _error(
                "hyperparameters.eval_metric",
                metric,
                f"{metric} scores answers against the dataset's label set, and dataset "
                f"{dataset['id']} has none (it is not a classification dataset with labels)",
                f"use eval_metric {others}; or prepare a classification dataset",
            )
        )
    return problems


def count_answerless(counter: TokenCounter, rows: list[dict[str, Any]], max_seq_len: int) -> int:
    """How many rows would keep no answer token within max_seq_len (training drops those)."""
    lengths = counter.measure(rows)
    return sum(
        1
        for measured in lengths
        if not isinstance(measured, TokenLengths) or measured.before_answer >= max_seq_len
    )


def answerless_problem(answerless: int, rows: int, params: TrainParams) -> Problem | None:
    """An error when no training row keeps an answer token; a warning when some would not."""
    if not answerless:
        return None
    limit = params.max_seq_len
    if answerless >= rows:
        return _error(
            "hyperparameters.max_seq_len",
            limit,
            f"no training row keeps an answer token within max_seq_len={limit}: the prompts "
            f"of all {rows} rows fill it, so training would have nothing to learn",
            "raise max_seq_len or shorten the prompts",
        )
    return _warning(
        "hyperparameters.max_seq_len",
        limit,
        f"{answerless} of {rows} training rows keep no answer token within "
        f"max_seq_len={limit} and would be dropped",
        "raise max_seq_len to keep them",
    )


# --- memory ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MemoryModel:
    """Estimated bytes of a training process: fixed costs plus a cost per row of a batch."""

    shape: ModelShape
    params: TrainParams
    lora_parameters: int

    def fixed_bytes(self) -> int:
        """Runtime, base weights (float32 as loaded, plus the cast copy) and LoRA state."""
        per_weight = 4 if self.params.precision == "fp32" else 5
        lora = self.lora_parameters * LORA_BYTES_PER_PARAMETER
        return RUNTIME_BYTES + self.shape.parameters * per_weight + lora

    def load_bytes(self) -> int:
        """The peak while the GGUF file is dequantised, before training starts."""
        return RUNTIME_BYTES + int(self.shape.parameters * LOAD_BYTES_PER_PARAMETER)

    def row_bytes(self, width: int) -> int:
        """Activations kept for the backward pass and answer logits of one row of `width`."""
        shape, rank = self.shape, self.params.lora_rank
        scale = 2 if self.params.precision == "fp32" else 1  # float32 activations are twice bf16
        # Per token and layer: norms, projections, rotary copies and the MLP's four products.
        hidden, kv, mlp = shape.hidden, shape.kv_features, shape.intermediate
        layer = ACTIVATION_FACTOR * 2 * (12 * hidden + 3 * kv + 4 * mlp)
        layer += 2 * 14 * rank + ATTENTION_SCORE_BYTES * shape.head_count * width
        logits = ANSWER_SHARE * shape.vocab_size * LOGIT_BYTES
        return int(scale * width * (shape.block_count * layer + logits))

    def peak_bytes(self, rows: int, width: int) -> int:
        """The estimated peak of training on batches of `rows` rows of `width` tokens."""
        return max(self.load_bytes(), self.fixed_bytes() + rows * self.row_bytes(width))


def lora_parameter_count(shape: ModelShape, params: TrainParams, selected: list[str]) -> int:
    """Trainable parameters of LoRA on the selected modules: rank x (in + out) each."""
    return sum(params.lora_rank * sum(shape.modules[name] or (0, 0)) for name in selected)


def available_memory_bytes() -> int | None:
    """Memory a new process may still use: MemAvailable, capped by this cgroup's limit."""
    available = None
    try:
        with open("/proc/meminfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    room = _cgroup_room()
    if room is not None and available is not None:
        return min(available, room)
    return available


def _cgroup_room() -> int | None:
    # cgroup v2 names its files memory.max and memory.current; v1 keeps them in memory/.
    for limit_name, usage_name in (
        ("memory.max", "memory.current"),
        ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes"),
    ):
        try:
            limit = (CGROUP_ROOT / limit_name).read_text().strip()
            usage = int((CGROUP_ROOT / usage_name).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 2**60:  # "max" or a huge number: no limit
            return max(0, int(limit) - usage)
        return None
    return None


def _batch_width(dataset: dict[str, Any], params: TrainParams) -> tuple[int, int]:
    """(rows, tokens) of the widest batch training will draw, padded to its longest row.

    Batches group rows of similar length, so the widest one is padded to the longest row when
    there are at least a batch of rows beyond the 95th percentile, and to about that
    percentile when the longest rows are a few outliers.
    """
    train_rows = int(dataset.get("train_rows") or 0)
    rows = min(params.batch_size, train_rows or params.batch_size)
    stats = _token_stats(dataset)
    longest, p95 = stats.get("max"), stats.get("p95")
    if longest is None:
        return rows, params.max_seq_len
    few_long_rows = p95 is not None and 0.05 * train_rows < params.batch_size
    widest = p95 if few_long_rows and p95 is not None else longest
    return rows, min(params.max_seq_len, int(widest))


def _check_memory(
    model: MemoryModel, rows: int, width: int, available: int | None
) -> list[Problem]:
    if available is None:
        return []
    peak = model.peak_bytes(rows, width)
    if peak <= available:
        return []
    fixed, per_row = model.fixed_bytes(), model.row_bytes(width)
    fitting = (available - fixed) // per_row if available > fixed else 0
    if model.load_bytes() > available:
        hint = f"loading the base model alone needs about {_gib(model.load_bytes())}"
    elif fitting >= 1:
        hint = f"batch_size={min(fitting, rows - 1)} fits at this max_seq_len"
    elif available > fixed:
        shorter = width
        while shorter > 8 and fixed + model.row_bytes(shorter) > available:
            shorter //= 2
        hint = f"even batch_size=1 does not fit; max_seq_len={shorter} with batch_size=1 would"
    else:
        hint = f"the base model alone needs about {_gib(fixed)}; free memory or use a smaller one"
    return [
        _error(
            "hyperparameters.batch_size",
            model.params.batch_size,
            f"a training step over {rows} rows of {width} tokens needs about {_gib(peak)}, "
            f"but only {_gib(available)} of memory is available",
            hint,
        )
    ]


def _gib(size: float) -> str:
    return f"{size / 2**30:.1f} GiB" if size >= 2**30 else f"{size / 2**20:.0f} MiB"


# --- the static check --------------------------------------------------------------------------


def check_config(
    base_gguf: Path,
    params: TrainParams,
    dataset: dict[str, Any],
    base_model_name: str,
    base_fingerprint: str | None,
    device: str = "cpu",
    memory_bytes: int | None = None,
) -> list[Problem]:
    """Every problem of a fine-tuning request that shows without running it, errors first.

    Reads the base model's GGUF metadata and the dataset's registry row only (no torch).

    Args:
        base_gguf: The base model's GGUF file.
        params: Parsed hyperparameters (see `parse_params`).
        dataset: The dataset's registry row (max_seq_len, base_model, tokenizer_fingerprint,
            train_rows, validation_rows, report, ...).
        base_model_name: The base model's registered name.
        base_fingerprint: Its tokenizer-and-template fingerprint (`TokenCounter.fingerprint`),
            or None when unknown; the base model's name is compared then.
        device: "cpu" or "cuda": where the run would train.
        memory_bytes: Memory the run may use; None reads what is available now on a CPU.
    """
    try:
        shape = read_model_shape(base_gguf)
    except InvalidInputError as exc:
        return [_error("base_model", base_model_name, str(exc))]

    target_problems, selected = _check_targets(shape, params)
    problems = [
        *target_problems,
        *_check_rank(shape, params, selected),
        *_check_learning_rate(params),
        *_check_precision(params, device),
        *_check_lineage(dataset, base_model_name, base_fingerprint),
        *_check_max_seq_len(dataset, params),
        *_check_schedule(dataset, params),
        *_check_evaluation(dataset, params),
    ]
    if device == "cpu":
        model = MemoryModel(shape, params, lora_parameter_count(shape, params, selected))
        available = memory_bytes if memory_bytes is not None else available_memory_bytes()
        problems += _check_memory(model, *_batch_width(dataset, params), available)
    return sorted(problems, key=lambda problem: problem.severity != "error")


def static_estimate(
    base_gguf: Path, params: TrainParams, dataset: dict[str, Any]
) -> dict[str, Any]:
    """What the run would cost, from the dataset's report and the memory model alone."""
    shape = read_model_shape(base_gguf)
    selected = [
        name for target in params.target_modules for name in matching_modules(shape, target)
    ]
    selected = [name for name in dict.fromkeys(selected) if shape.modules[name] is not None]
    lora = lora_parameter_count(shape, params, selected)
    rows = int(dataset.get("train_rows") or 0)
    steps_per_epoch = math.ceil(rows / params.batch_size)
    per_epoch = ((dataset.get("report") or {}).get("tokens") or {}).get("train_tokens_per_epoch")
    return {
        "source": "static",
        "train_rows": rows,
        "steps_per_epoch": steps_per_epoch,
        "total_steps": steps_per_epoch * params.epochs,
        "train_tokens": per_epoch * params.epochs if per_epoch is not None else None,
        "trainable_parameters": lora,
        "peak_memory_bytes": MemoryModel(shape, params, lora).peak_bytes(
            *_batch_width(dataset, params)
        ),
        "available_memory_bytes": available_memory_bytes(),
    }


# --- the probe ---------------------------------------------------------------------------------


def run_probe(
    base_gguf: Path,
    train_rows: list[dict[str, Any]],
    validation_rows: list[dict[str, Any]],
    params: TrainParams,
    steps: int = PROBE_STEPS,
) -> dict[str, Any]:
    """Run a few real training steps and extrapolate the whole run's tokens, time and memory.

    The model is loaded and the rows prepared exactly as training does (it is training's own
    `Trainer`). The first step runs on the widest batch of the first epoch, so it warms up and
    reaches the run's peak memory; the next ones run on the epoch's first batches and are timed.
    Time is extrapolated per padded token, over the batches every epoch will draw.

    Imports torch: call it in a child process (`probe_in_child`), never in the server.

    Raises:
        InvalidInputError: The rows or parameters cannot be trained on.
    """
    from turing.tools.chat import read_chat_template
    from turing.tools.finetune.trainer import Trainer
    from turing.tools.modeling import load_model

    started = time.monotonic()
    model, tokenizer = load_model(base_gguf)
    load_peak = _peak_rss_bytes()
    template = read_chat_template(base_gguf)
    # The probe times training and validation; scoring checkpoints by eval_metric is not timed.
    untimed = replace(params, eval_metric=None)
    trainer = Trainer(model, tokenizer, template, train_rows, validation_rows, untimed)
    startup_seconds = time.monotonic() - started

    timed = _time_training_steps(trainer, steps)
    validation_per_token = _time_validation_batch(trainer)
    estimate = _extrapolate(trainer, timed, validation_per_token, startup_seconds)
    return {
        "source": "probe",
        "device": str(trainer.device),
        **estimate,
        "dropped_train_rows": len(train_rows) - len(trainer.train_set),
        "dropped_validation_rows": len(validation_rows) - len(trainer.validation_set),
        "trainable_parameters": trainer.trainable_count,
        "peak_memory_bytes": int(_peak_rss_bytes() * PROBE_PEAK_MARGIN),
        "measured_peak_memory_bytes": _peak_rss_bytes(),
        "load_memory_bytes": load_peak,
        "gpu_peak_memory_bytes": _gpu_peak_bytes(trainer.device),
        "probe_seconds": time.monotonic() - started,
    }


def _gpu_peak_bytes(device: Any) -> int | None:
    import torch

    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


@dataclass(frozen=True)
class _Timing:
    seconds: float
    padded_tokens: int  # rows x the longest row: what the step computes on
    tokens: int  # real tokens, as training counts them


def _time_training_steps(trainer: Any, steps: int) -> list[_Timing]:
    """Time optimiser steps: the widest batch first (warm-up and peak memory), then others.

    Returns the timings of the steps after the first (or of the first, when it is the only).
    """
    lengths = trainer.lengths
    batches = trainer.epoch_batches(0)
    widest = max(batches, key=lambda batch: _padded(batch, lengths))
    others = [batch for batch in batches if batch is not widest]
    timings = []
    trainer.model.train()
    for batch in [widest, *others[: steps - 1]]:
        started = time.monotonic()
        trainer.train_step(batch)
        seconds = time.monotonic() - started
        timings.append(_Timing(seconds, _padded(batch, lengths), sum(lengths[i] for i in batch)))
    return timings[1:] or timings


def _time_validation_batch(trainer: Any) -> float:
    """Seconds per padded token of a validation forward pass (0 without validation rows)."""
    import torch

    from turing.tools.finetune.trainer import collate

    validation = trainer.validation_set
    if not validation:
        return 0.0
    lengths = [len(example.input_ids) for example in validation]
    batch = make_batches(lengths, trainer.params.batch_size, seed=0)[0]
    input_ids, labels, _ = collate([validation[i] for i in batch], trainer.pad_id, trainer.device)
    trainer.model.eval()
    started = time.monotonic()
    with torch.no_grad():
        trainer.loss(input_ids, labels)
    return (time.monotonic() - started) / _padded(batch, lengths)


def _extrapolate(
    trainer: Any, timed: list[_Timing], validation_per_token: float, startup_seconds: float
) -> dict[str, Any]:
    """The whole run's steps, tokens and seconds, from the timed steps."""
    params, lengths = trainer.params, trainer.lengths
    seconds = sum(timing.seconds for timing in timed)
    tokens = sum(timing.tokens for timing in timed)
    per_padded_token = seconds / sum(timing.padded_tokens for timing in timed)

    padded = sum(
        _padded(batch, lengths)
        for epoch in range(params.epochs)
        for batch in trainer.epoch_batches(epoch)
    )
    validation_lengths = [len(example.input_ids) for example in trainer.validation_set]
    validation_padded = sum(
        _padded(batch, validation_lengths)
        for batch in make_batches(validation_lengths, params.batch_size, seed=0)
    )
    every = params.checkpoint_every or trainer.steps_per_epoch
    validations = math.ceil(trainer.total_steps / every) if trainer.validation_set else 0
    training_seconds = per_padded_token * padded
    validation_seconds = validations * validation_per_token * validation_padded
    return {
        "steps_measured": len(timed),
        "seconds_per_step": seconds / len(timed),
        "tokens_per_step": tokens / len(timed),
        "tokens_per_second": tokens / max(seconds, 1e-9),
        "train_rows": len(trainer.train_set),
        "validation_rows": len(trainer.validation_set),
        "steps_per_epoch": trainer.steps_per_epoch,
        "total_steps": trainer.total_steps,
        "train_tokens": sum(lengths) * params.epochs,
        "validations": validations,
        "estimated_seconds": {
            "startup": startup_seconds,
            "training": training_seconds,
            "validation": validation_seconds,
            "total": startup_seconds + training_seconds + validation_seconds,
        },
    }


def _padded(batch: list[int], lengths: list[int]) -> int:
    return len(batch) * max(lengths[i] for i in batch)


def _peak_rss_bytes() -> int:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def probe_in_child(
    base_gguf: Path,
    train_path: Path,
    validation_path: Path,
    params: TrainParams,
    steps: int = PROBE_STEPS,
    timeout_s: float = PROBE_TIMEOUT_S,
) -> tuple[dict[str, Any] | None, list[Problem]]:
    """Run `run_probe` in a child process, so the caller never imports torch.

    Returns:
        (the estimate, or None when the probe failed; the problems it found).
    """
    with tempfile.TemporaryDirectory(prefix="turing-preflight-") as folder:
        job_path, out_path = Path(folder) / "job.json", Path(folder) / "out.json"
        job = {
            "base_gguf": str(base_gguf),
            "train_path": str(train_path),
            "validation_path": str(validation_path),
            "params": asdict(params),
            "steps": steps,
        }
        write_json_atomic(job_path, job)
        command = [sys.executable, "-m", __name__, str(job_path), str(out_path)]
        env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=timeout_s, env=env, check=False
            )
        except subprocess.TimeoutExpired:
            return None, [_probe_timeout(timeout_s, steps)]
        answer = json.loads(out_path.read_text()) if out_path.is_file() else None

    if answer is not None and "estimate" in answer:
        return answer["estimate"], []
    if answer is not None:
        return None, [_error("hyperparameters", None, answer["error"])]
    last = (done.stderr.strip().splitlines() or ["no output"])[-1]
    killed = " (killed: out of memory?)" if done.returncode in (-9, 137) else ""
    return None, [
        _error(
            "hyperparameters",
            None,
            f"the probe process ended with exit code {done.returncode}{killed}: {last}",
            "lower batch_size or max_seq_len" if killed else "",
        )
    ]


def _probe_timeout(timeout_s: float, steps: int) -> Problem:
    return _warning(
        "hyperparameters",
        None,
        f"the probe of {steps} training steps did not finish within {timeout_s:g} s: "
        "each step takes long, so the run will be slow",
        "lower batch_size or max_seq_len for faster steps",
    )


# --- the tool ----------------------------------------------------------------------------------


@dataclass
class Request:
    """A fine-tuning request resolved against the registry, with the problems found so far."""

    params: TrainParams
    problems: list[Problem]
    dataset: dict[str, Any] | None = None
    base: dict[str, Any] | None = None


def check_request(
    services: Services,
    dataset_id: str,
    base_model: str = DEFAULT_BASE_MODEL,
    hyperparameters: dict[str, Any] | None = None,
) -> Request:
    """Resolve a request as `start_run` would and collect every problem that shows statically.

    Unless given, max_seq_len is the one the dataset's rows were measured against. Rows that
    would keep no answer token are counted with the base model's tokenizer when max_seq_len is
    below the dataset's (at the dataset's own, preparation has already dropped them).
    """
    if hyperparameters is not None and not isinstance(hyperparameters, dict):
        raise InvalidInputError(
            f'hyperparameters must be an object, e.g. {{"epochs": 2}}; got {hyperparameters!r}'
        )
    given = dict(hyperparameters or {})
    problems = _parameter_problems(given)
    valid = {key: value for key, value in given.items() if not _bad_key(problems, key)}
    request = Request(params=parse_params(valid), problems=problems)
    try:
        request.dataset = services.registry.get("datasets", dataset_id, "dataset")
    except TuringError as exc:
        problems.append(_error("dataset_id", dataset_id, str(exc)))
    try:
        request.base = get_base_model(services, base_model)
    except TuringError as exc:
        problems.append(_error("base_model", base_model, str(exc)))
    if request.dataset is None or request.base is None:
        return request

    dataset, base = request.dataset, request.base
    if "max_seq_len" not in valid and dataset.get("max_seq_len"):
        request.params = parse_params({**valid, "max_seq_len": dataset["max_seq_len"]})
    gguf = Path(base["gguf_path"])
    counter = _token_counter(services, gguf, problems)
    fingerprint = counter.fingerprint if counter is not None else None
    device = training_device()
    problems += check_config(gguf, request.params, dataset, base["name"], fingerprint, device)

    prepared = dataset.get("max_seq_len")
    if counter is not None and (not prepared or request.params.max_seq_len < prepared):
        rows = read_jsonl(split_path(services, dataset_id, "train"))
        answerless = count_answerless(counter, rows, request.params.max_seq_len)
        found = answerless_problem(answerless, len(rows), request.params)
        if found is not None:
            problems.append(found)
    request.problems = sorted(problems, key=lambda problem: problem.severity != "error")
    return request


def _parameter_problems(given: dict[str, Any]) -> list[Problem]:
    """One problem per unknown or invalid hyperparameter, then per combination of valid ones."""
    problems = []
    for key, value in given.items():
        allowed = check_parameter(key, value)
        if allowed is not None:
            problems.append(_error(f"hyperparameters.{key}", value, allowed))
    valid = {key: value for key, value in given.items() if not _bad_key(problems, key)}
    for key, value, message in combination_problems(valid):
        problems.append(_error(f"hyperparameters.{key}", value, message))
    return problems


def _bad_key(problems: list[Problem], key: str) -> bool:
    return any(problem.field == f"hyperparameters.{key}" for problem in problems)


def _token_counter(services: Services, gguf: Path, problems: list[Problem]) -> TokenCounter | None:
    try:
        return load_token_counter(gguf, services.workspace.cache_folder("tokenizers"))
    except TuringError as exc:
        problems.append(_error("base_model", str(gguf), str(exc)))
        return None


_PROBE_SLOT = threading.BoundedSemaphore(1)
_PROBE_BUSY = _warning(
    "probe",
    True,
    "another probe is running, so this estimate is static",
    "call again when it is done for a measured estimate",
)
_RUN_TRAINING = _warning(
    "probe",
    True,
    "a run is training now and shares the processors, so the measured time is pessimistic",
)


def preflight(
    services: Services,
    dataset_id: str,
    base_model: str = DEFAULT_BASE_MODEL,
    hyperparameters: dict[str, Any] | None = None,
    probe: bool = True,
    timeout_s: float = PROBE_TIMEOUT_S,
) -> dict[str, Any]:
    """Check a fine-tuning request whole and estimate its cost, without starting it.

    Every problem is returned together. Without errors, and with `probe`, a child process runs
    a few real training steps and the estimate (tokens, seconds, peak memory) is extrapolated
    from them; otherwise it comes from the dataset's report and a memory model.

    Returns:
        {"ok": no error found, "problems": [...], "hyperparameters": the resolved parameters,
        "estimate": {...} or None when the request could not be resolved}.
    """
    request = check_request(services, dataset_id, base_model, hyperparameters)
    problems = request.problems
    estimate = None
    if request.dataset is not None and request.base is not None:
        gguf = Path(request.base["gguf_path"])
        ok = not any(problem.severity == "error" for problem in problems)
        if ok and probe and _PROBE_SLOT.acquire(blocking=False):
            # One probe at a time: each loads a model (over 1 GB for SmolLM2) and holds a
            # thread of the server for up to a minute.
            try:
                if services.registry.rows("runs", "status = 'running'"):
                    problems.append(_RUN_TRAINING)
                estimate, found = probe_in_child(
                    gguf,
                    split_path(services, dataset_id, "train"),
                    split_path(services, dataset_id, "validation"),
                    request.params,
                    timeout_s=timeout_s,
                )
                problems += found
            finally:
                _PROBE_SLOT.release()
        elif ok and probe:
            problems.append(_PROBE_BUSY)
        if estimate is None:
            estimate = static_estimate(gguf, request.params, request.dataset)
    return {
        "ok": not any(problem.severity == "error" for problem in problems),
        "problems": [problem.to_dict() for problem in problems],
        "hyperparameters": asdict(request.params),
        "estimate": estimate,
    }


def main(argv: list[str]) -> int:
    """Entry point of the probe child: read the job, write {"estimate"} or {"error"}."""
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(message)s")
    if len(argv) != 2:
        logger.error("usage: python -m turing.tools.finetune.preflight JOB_JSON OUT_JSON")
        return 2
    job = json.loads(Path(argv[0]).read_text())
    out = Path(argv[1])
    try:
        estimate = run_probe(
            Path(job["base_gguf"]),
            read_jsonl(Path(job["train_path"])),
            read_jsonl(Path(job["validation_path"])),
            TrainParams(**job["params"]),
            job.get("steps", PROBE_STEPS),
        )
    except TuringError as exc:
        write_json_atomic(out, {"error": str(exc)})
        return 1
    except Exception as exc:  # the boundary of a child process: report and fail
        logger.exception("probe failed")
        write_json_atomic(out, {"error": f"the probe failed: {type(exc).__name__}: {exc}"})
        return 1
    write_json_atomic(out, {"estimate": estimate})
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
