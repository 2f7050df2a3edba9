"""The training loop: LoRA steps, validation, atomic checkpoints, exact resume, early stopping.

One `Trainer` runs one training job in one process, or in each process of a torchrun world:
every process takes its share of each batch, DDP sums the adapter gradients, and rank 0 alone
writes checkpoints and events. The loss of a batch is the mean over its answer tokens across all
processes, so a run gives the same numbers on one process or on several.

A checkpoint holds what resuming needs to continue as if never stopped: adapter weights,
optimiser moments, the data position (the batch order of an epoch is a function of the seed and
the epoch, so the step number says where to carry on) and every random generator's state.

With an `eval_metric`, every validated checkpoint is also scored on a task metric: rank 0 answers
the first `eval_rows` validation rows greedily and the score is shared with every process. The
random generators are saved before and restored after, so scoring changes no training number.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as functional
from torch import nn

from turing.tools.chat import ChatTemplate
from turing.tools.errors import InvalidInputError, TuringError
from turing.tools.evals.metrics import Scorer
from turing.tools.finetune import checkpoints
from turing.tools.finetune.distributed import World
from turing.tools.finetune.train import (
    EVAL_METRICS,
    EVAL_PREFIX,
    IGNORE,
    LABEL_METRICS,
    EvalRow,
    Example,
    TrainParams,
    checkpoint_metric,
    learning_rate_at,
    lower_is_better,
    make_batches,
    prepare_examples,
    select_eval_rows,
    tokenize_conversation,
)
from turing.tools.modeling import encode_text, generate

logger = logging.getLogger(__name__)

Event = dict[str, Any]

# A conversation whose tokens and loss mask stand for the whole layout in the fingerprint.
_FINGERPRINT_CONVERSATION = [
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": "Which day follows Monday?"},
    {"role": "assistant", "content": "Tuesday."},
    {"role": "user", "content": "And after that?"},
    {"role": "assistant", "content": "Wednesday."},
]
# Parameters that shape the trajectory: a resumed run must have the same ones.
_TRAJECTORY_PARAMS = (
    "epochs",
    "learning_rate",
    "batch_size",
    "lora_rank",
    "lora_alpha",
    "lora_dropout",
    "target_modules",
    "max_seq_len",
    "warmup_ratio",
    "weight_decay",
    "seed",
    "precision",
)
# Tokens an answer may run past the longest reference answer before generation is cut off.
EVAL_ANSWER_SLACK = 16


class NonFiniteLossError(TuringError):
    """The training loss became NaN or infinite; the run stops before the bad step is applied."""


@dataclass
class TrainResult:
    """What a run produced: the peft model (as after its last step) and its summary numbers.

    `final_loss` is the token-weighted mean training loss over the last epoch's worth of steps
    (one batch alone is too noisy); `validation_loss` is the latest validation, if any.
    `output_step` is the checkpoint chosen as the run's output by `selection_metric`.
    """

    model: Any
    cancelled: bool
    stopped_early: bool
    final_loss: float | None
    validation_loss: float | None
    steps: int
    total_steps: int
    train_tokens: int
    trainable_parameters: int
    seconds: float
    dropped_rows: int
    fingerprint: str
    resumed_from: int | None = None
    output_step: int | None = None
    checkpoints: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """The numbers as a JSON-ready dict (without the model)."""
        return {key: value for key, value in asdict(self).items() if key != "model"}


@dataclass
class Progress:
    """Where a run stands, beyond model and optimiser: saved with every checkpoint."""

    step: int = 0
    train_tokens: int = 0
    compute_seconds: float = 0.0
    since_checkpoint: list[tuple[float, int]] = field(default_factory=list)  # (loss, tokens)
    recent: list[tuple[float, int]] = field(default_factory=list)  # the last epoch of steps
    best: float | None = None  # best value of the early-stopping metric so far
    stale_validations: int = 0
    validation: dict[str, float] | None = None


def training_fingerprint(tokenizer: Any, template: ChatTemplate) -> str:
    """A hash of the chat template and the loss mask it yields, to check a run against later.

    Two setups with the same fingerprint lay out and mask conversations identically.
    """
    example = tokenize_conversation(_FINGERPRINT_CONVERSATION, tokenizer, template, 4096)
    layout = {
        "template": template.source,
        "special": [tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id],
        "input_ids": example.input_ids,
        "labels": example.labels,
    }
    return hashlib.sha256(json.dumps(layout, sort_keys=True).encode()).hexdigest()[:16]


def attach_lora(model: Any, params: TrainParams) -> Any:
    """Wrap a causal language model with fresh LoRA adapters; only they will train.

    Raises:
        InvalidInputError: A target module name matches no layer of the model.
    """
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=params.lora_rank,
        lora_alpha=params.lora_alpha,
        lora_dropout=params.lora_dropout,
        target_modules=params.target_modules,
        task_type="CAUSAL_LM",
    )
    # LoRA A is drawn from the global generator; seeding it makes the run repeatable.
    torch.manual_seed(params.seed)
    try:
        return get_peft_model(model, config)
    except ValueError as exc:
        raise InvalidInputError(
            f"target_modules={params.target_modules!r} does not fit this model: {exc}"
        ) from exc


def prepare_for_training(model: Any, precision: str, device: Any) -> None:
    """Cast the frozen base weights to the run's precision and pick the attention kernel.

    bf16 runs on the CPU's bf16 matrix instructions (AVX512-BF16, AMX) while the adapters stay
    float32. Eager attention beats PyTorch's CPU flash-attention kernel on short sequences,
    chiefly in the backward pass.

    Raises:
        InvalidInputError: fp16 asked for on a CPU, which has no fast fp16 arithmetic.
    """
    if precision == "fp16" and device.type != "cuda":
        raise InvalidInputError("precision='fp16' needs a GPU; on a CPU use 'bf16' or 'fp32'")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]
    model.to(device=device, dtype=dtype)
    if device.type == "cpu" and hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")


class AnswerLoss(nn.Module):
    """Summed cross-entropy over the answer tokens of a right-padded batch.

    The vocabulary projection (49k columns for SmolLM2) is costly, so logits are computed only
    at positions whose next token carries a label. No attention mask is needed: padding only
    follows real tokens, which causal attention already keeps from seeing it.
    """

    def __init__(self, model: Any, precision: str) -> None:
        super().__init__()
        self.model = model
        self.precision = precision

    def forward(self, input_ids: Any, labels: Any) -> tuple[Any, Any, Any]:
        """Return (summed loss, answer tokens, correctly predicted answer tokens)."""
        from peft.helpers import disable_input_dtype_casting

        causal_lm = self.model.get_base_model()
        device_type = input_ids.device.type
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        # peft casts activations to the float32 adapter weights and autocast casts them back;
        # skipping that round trip saves two copies of every activation per LoRA layer.
        with (
            torch.autocast(device_type, dtype=dtype or torch.float32, enabled=dtype is not None),
            disable_input_dtype_casting(self.model),
        ):
            hidden = causal_lm.model(input_ids=input_ids, use_cache=False).last_hidden_state
            targets = labels[:, 1:]
            answer = targets != IGNORE
            logits = causal_lm.lm_head(hidden[:, :-1][answer])
        # Softmax in float32: bf16 keeps ~3 significant digits, too few for a 49k-way softmax.
        logits = logits.float()
        wanted = targets[answer]
        loss = functional.cross_entropy(logits, wanted, reduction="sum")
        correct = (logits.argmax(dim=-1) == wanted).sum()
        return loss, answer.sum(), correct


def collate(examples: list[Example], pad_id: int, device: Any) -> tuple[Any, Any, int]:
    """Right-pad examples into (input ids, labels, real tokens) tensors on `device`."""
    width = max(len(example.input_ids) for example in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    for row, example in enumerate(examples):
        size = len(example.input_ids)
        input_ids[row, :size] = torch.tensor(example.input_ids)
        labels[row, :size] = torch.tensor(example.labels)
    tokens = sum(len(example.input_ids) for example in examples)
    return input_ids.to(device), labels.to(device), tokens


class Trainer:
    """Runs one LoRA training job; see `turing.tools.finetune.train.train` for the arguments."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        template: ChatTemplate,
        train_rows: list[dict[str, Any]],
        validation_rows: list[dict[str, Any]],
        params: TrainParams,
        *,
        on_event: Callable[[Event], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        run_dir: Path | None = None,
        resume: bool = False,
        init_checkpoint: Path | None = None,
        base_sha256: str | None = None,
        world: World | None = None,
        eval_labels: list[str] | None = None,
    ) -> None:
        self.started = time.monotonic()
        self.params = params
        self.tokenizer = tokenizer
        self.template = template
        self.world = world or World()
        self.device = self.world.device()
        self.run_dir = run_dir
        self.base_sha256 = base_sha256
        self._emit = on_event or (lambda event: None)
        self._should_stop = should_stop or (lambda: False)
        self.fingerprint = training_fingerprint(tokenizer, template)

        # Data
        self.train_set, self.validation_set, self.dropped = prepare_examples(
            train_rows, validation_rows, tokenizer, template, params.max_seq_len
        )
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else tokenizer.eos_token_id
        self.lengths = [len(example.input_ids) for example in self.train_set]
        self.steps_per_epoch = math.ceil(len(self.train_set) / params.batch_size)
        self.total_steps = self.steps_per_epoch * params.epochs
        self.warmup_steps = math.ceil(params.warmup_ratio * self.total_steps)
        self.checkpoint_every = params.checkpoint_every or self.steps_per_epoch
        self.scorer, self.eval_set = self._eval_setup(validation_rows, eval_labels)
        self.metric, self.monitor = self._choose_metrics()

        # Model and optimiser
        prepare_for_training(model, params.precision, self.device)
        self.model = attach_lora(model, params)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        for parameter in self.trainable:
            parameter.data = parameter.data.float()
        self.trainable_count = sum(p.numel() for p in self.trainable)
        if init_checkpoint is not None:
            self._load_adapter(Path(init_checkpoint), "init_checkpoint")
        self.loss = AnswerLoss(self.model, params.precision)
        self.step_loss: nn.Module = self.loss
        if self.world.distributed:
            self.step_loss = nn.parallel.DistributedDataParallel(self.loss)
        self.optimizer = torch.optim.AdamW(
            self.trainable, lr=params.learning_rate, weight_decay=params.weight_decay
        )
        self.progress = Progress()
        self.saved_step = 0  # the step of the newest checkpoint
        self.resumed_from: int | None = None
        if resume:
            self._resume()

    # Setup

    def _eval_setup(
        self, validation_rows: list[dict[str, Any]], labels: list[str] | None
    ) -> tuple[Scorer | None, list[EvalRow]]:
        """The task-metric scorer and the rows it scores at checkpoints (none without a metric).

        Raises:
            InvalidInputError: A label metric without labels, or a metric that is no task metric.
        """
        metric = self.params.eval_metric
        if metric is None:
            return None, []
        if metric in LABEL_METRICS and not labels:
            others = ", ".join(name for name in EVAL_METRICS if name not in LABEL_METRICS)
            raise InvalidInputError(
                f"eval_metric={metric!r} scores answers against the dataset's label set, and "
                f"there is none; without labels use one of {others}"
            )
        scorer = Scorer([metric], labels=labels if metric in LABEL_METRICS else None)
        rows = (
            select_eval_rows(validation_rows, self.params.eval_rows) if self.validation_set else []
        )
        if not rows:
            logger.warning(
                "no validation row can be answered: eval_metric=%s is not scored", metric
            )
        return scorer, rows

    def _choose_metrics(self) -> tuple[str, str | None]:
        """The selection metric and the early-stopping metric, given what data there is."""
        metric = checkpoint_metric(self.params)
        if metric.startswith(EVAL_PREFIX) and not self.eval_set:
            logger.warning(
                "%s is not scored: the output checkpoint is chosen by validation_loss", metric
            )
            metric = "validation_loss"
        if not self.validation_set and metric.startswith("validation_"):
            logger.warning("no validation rows: the output checkpoint is chosen by train_loss")
            metric = "train_loss"
        if not self.validation_set or self.params.early_stopping_patience == 0:
            return metric, None
        validated = metric.startswith(("validation_", EVAL_PREFIX))
        return metric, metric if validated else "validation_loss"

    def _manifest_basics(self) -> dict[str, Any]:
        params = self.params
        return {
            "lora": {
                "rank": params.lora_rank,
                "alpha": params.lora_alpha,
                "dropout": params.lora_dropout,
                "target_modules": sorted(params.target_modules),
            },
            "base_sha256": self.base_sha256,
            "fingerprint": self.fingerprint,
            "params": asdict(params),
            "total_steps": self.total_steps,
            "world_size": self.world.size,
        }

    def _check_compatible(self, manifest: dict[str, Any], what: str, exact: bool) -> None:
        """Refuse a checkpoint made for another adapter shape, base model or data layout."""
        ours = self._manifest_basics()
        mismatches = []
        for key, label in (("rank", "lora_rank"), ("alpha", "lora_alpha")):
            if manifest["lora"][key] != ours["lora"][key]:
                mismatches.append(f"{label} {manifest['lora'][key]} != {ours['lora'][key]}")
        if manifest["lora"]["target_modules"] != ours["lora"]["target_modules"]:
            mismatches.append(
                f"target_modules {manifest['lora']['target_modules']} != "
                f"{ours['lora']['target_modules']}"
            )
        theirs_base, our_base = manifest.get("base_sha256"), self.base_sha256
        if theirs_base and our_base and theirs_base != our_base:
            mismatches.append(f"base model sha256 {theirs_base[:12]} != {our_base[:12]}")
        if manifest.get("fingerprint") != self.fingerprint:
            mismatches.append(
                f"chat template/loss mask fingerprint {manifest.get('fingerprint')} != "
                f"{self.fingerprint}"
            )
        if exact:
            saved = manifest.get("params", {})
            for key in _TRAJECTORY_PARAMS:
                theirs, mine = saved.get(key), ours["params"][key]
                if key == "target_modules":
                    continue  # compared above, order aside
                if theirs != mine:
                    mismatches.append(f"{key} {theirs!r} != {mine!r}")
            if manifest.get("total_steps") != self.total_steps:
                mismatches.append(
                    f"total steps {manifest.get('total_steps')} != {self.total_steps} "
                    "(the training data changed)"
                )
        if mismatches:
            name = Path(manifest["path"]).name
            raise InvalidInputError(
                f"{what} {name} does not match this run (checkpoint vs run): "
                + "; ".join(mismatches)
            )

    def _load_adapter(self, folder: Path, what: str) -> dict[str, Any]:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        manifest = checkpoints.read_manifest(folder)
        if manifest is None:
            raise InvalidInputError(f"{what} {folder} is not a complete checkpoint")
        self._check_compatible(manifest, what, exact=what == "resume checkpoint")
        weights = load_file(str(folder / "adapter_model.safetensors"), device=str(self.device))
        outcome = set_peft_model_state_dict(self.model, weights)
        unexpected = list(getattr(outcome, "unexpected_keys", None) or [])
        if unexpected:
            raise InvalidInputError(
                f"{what} {folder} holds weights this adapter lacks: {unexpected[:3]}"
            )
        return manifest

    def _resume(self) -> None:
        if self.run_dir is None:
            raise InvalidInputError("resume needs the run folder that holds the checkpoints")
        if self.world.is_main:
            checkpoints.sweep_incomplete(self.run_dir)
        self.world.barrier()
        manifest = checkpoints.latest_resumable(self.run_dir)
        if manifest is None:
            raise InvalidInputError(
                f"{self.run_dir.name} has no complete checkpoint to resume from"
            )
        folder = Path(manifest["path"])
        self._load_adapter(folder, "resume checkpoint")
        state = torch.load(folder / checkpoints.TRAINER_STATE, weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.progress = Progress(**state["progress"])
        random.setstate(state["rng"]["python"])
        torch.set_rng_state(state["rng"]["torch"])
        if torch.cuda.is_available() and state["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(state["rng"]["cuda"])
        self.resumed_from = self.saved_step = self.progress.step
        self._event(
            {
                "type": "resumed",
                "step": self.progress.step,
                "checkpoint": folder.name,
                "message": f"resumed from {folder.name} ({self.progress.step} steps done)",
            }
        )

    # Events

    def _event(self, event: Event) -> None:
        if self.world.is_main:
            self._emit(event)

    # The loop

    def run(self) -> TrainResult:
        """Train to the end, to an early stop, or to a cancel; return the result."""
        progress = self.progress
        logger.info(
            "training %d LoRA parameters on %d rows (%d validation) for %d steps%s",
            self.trainable_count,
            len(self.train_set),
            len(self.validation_set),
            self.total_steps,
            f" from step {progress.step}" if progress.step else "",
        )
        cancelled = stopped_early = False
        self.model.train()
        first_epoch, skip = divmod(progress.step, self.steps_per_epoch)
        for epoch in range(first_epoch, self.params.epochs):
            batches = self.epoch_batches(epoch)
            for batch in batches[skip if epoch == first_epoch else 0 :]:
                if self.world.any(self._should_stop()):
                    cancelled = True
                    break
                self.train_step(batch)
                due = progress.step % self.checkpoint_every == 0
                if due or progress.step == self.total_steps:
                    self._checkpoint()
                    if self._should_stop_early():
                        stopped_early = True
                        break
            if cancelled or stopped_early:
                break

        if cancelled and self.saved_step != progress.step:
            self._checkpoint(validate=False)
        output = None if cancelled else self._choose_output()
        return TrainResult(
            model=self.model,
            cancelled=cancelled,
            stopped_early=stopped_early,
            final_loss=_token_weighted_mean(progress.recent),
            validation_loss=(progress.validation or {}).get("validation_loss"),
            steps=progress.step,
            total_steps=self.total_steps,
            train_tokens=progress.train_tokens,
            trainable_parameters=self.trainable_count,
            seconds=time.monotonic() - self.started,
            dropped_rows=self.dropped,
            fingerprint=self.fingerprint,
            resumed_from=self.resumed_from,
            output_step=output,
            checkpoints=self._checkpoint_summaries(),
        )

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """The batches of training example indices of one epoch, in training order."""
        return make_batches(self.lengths, self.params.batch_size, self.params.seed * 1000 + epoch)

    def train_step(self, batch: list[int]) -> None:
        """One optimiser step over one batch, shared out between the processes."""
        progress = self.progress
        started = time.monotonic()
        rate = learning_rate_at(
            progress.step, self.total_steps, self.params.learning_rate, self.warmup_steps
        )
        for group in self.optimizer.param_groups:
            group["lr"] = rate

        # This process's share of the batch; a process left without rows runs one row at
        # weight zero, because every DDP process must take part in each backward pass.
        share = batch[self.world.rank :: self.world.size]
        weight = 1.0 if share else 0.0
        examples = [self.train_set[i] for i in share or batch[:1]]
        input_ids, labels, tokens = collate(examples, self.pad_id, self.device)
        answers = int((labels[:, 1:] != IGNORE).sum()) if share else 0
        total_answers, total_tokens = self.world.sum([float(answers), float(tokens * weight)])

        loss_sum, _, _ = self.step_loss(input_ids, labels)
        # DDP averages gradients over processes; scaling by the world size turns that into the
        # sum, so the step's loss is the mean over every answer token of the whole batch.
        scaled = loss_sum * (weight * self.world.size / total_answers)
        (batch_loss,) = self.world.sum([float(loss_sum.detach()) * weight])
        batch_loss /= total_answers
        if not math.isfinite(batch_loss):
            self._non_finite(batch_loss, rate)
        scaled.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

        progress.step += 1
        progress.train_tokens += int(total_tokens)
        progress.compute_seconds += time.monotonic() - started
        progress.since_checkpoint.append((batch_loss, int(total_answers)))
        progress.recent = [*progress.recent, (batch_loss, int(total_answers))][
            -self.steps_per_epoch :
        ]
        remaining = self.total_steps - progress.step
        self._event(
            {
                "type": "step",
                "step": progress.step,
                "total_steps": self.total_steps,
                "epoch": round(progress.step / self.steps_per_epoch, 4),
                "loss": batch_loss,
                "learning_rate": rate,
                "tokens_per_second": progress.train_tokens / max(progress.compute_seconds, 1e-9),
                "elapsed_seconds": time.monotonic() - self.started,
                "eta_seconds": progress.compute_seconds / progress.step * remaining,
            }
        )

    def _non_finite(self, loss: float, rate: float) -> None:
        done = [m["step"] for m in self._list_checkpoints()]
        kept = f"checkpoint step {done[-1]} is kept" if done else "no checkpoint was written yet"
        message = (
            f"the training loss became {loss} at step {self.progress.step + 1} "
            f"(learning rate {rate:.3g}); the step was not applied and {kept}. "
            "Lower learning_rate or check the data for extreme rows."
        )
        self._event({"type": "non_finite_loss", "step": self.progress.step + 1, "message": message})
        raise NonFiniteLossError(message)

    # Validation and checkpoints

    def evaluate(self) -> dict[str, float]:
        """Loss and next-token accuracy over the validation answers, across every process."""
        was_training = self.model.training
        self.model.eval()
        totals = [0.0, 0.0, 0.0]
        lengths = [len(example.input_ids) for example in self.validation_set]
        batches = make_batches(lengths, self.params.batch_size, seed=0)
        with torch.no_grad():
            for batch in batches[self.world.rank :: self.world.size]:
                examples = [self.validation_set[i] for i in batch]
                input_ids, labels, _ = collate(examples, self.pad_id, self.device)
                loss, count, correct = self.loss(input_ids, labels)
                totals = [totals[0] + float(loss), totals[1] + int(count), totals[2] + int(correct)]
        self.model.train(was_training)
        loss_sum, count, correct = self.world.sum(totals)
        return {
            "validation_loss": loss_sum / max(1.0, count),
            "validation_accuracy": correct / max(1.0, count),
        }

    def evaluate_task(self) -> dict[str, float]:
        """The task metric of greedy answers to the eval rows, as `{"eval_<metric>": value}`.

        Rank 0 alone generates (no collective runs meanwhile, so nothing can deadlock); the
        others add 0 to the sum that hands every process the same value.
        """
        assert self.scorer is not None and self.params.eval_metric is not None
        metric = self.params.eval_metric
        value = self._score_answers(metric) if self.world.is_main else 0.0
        (value,) = self.world.sum([value])
        return {EVAL_PREFIX + metric: value}

    def _score_answers(self, metric: str) -> float:
        assert self.scorer is not None
        references = [row.reference for row in self.eval_set]
        longest = max(len(encode_text(self.tokenizer, text, at_start=False)) for text in references)
        max_new_tokens = min(self.params.max_seq_len, longest + EVAL_ANSWER_SLACK)

        # Generation runs in eval mode and draws no random numbers, but the generators are
        # restored all the same: the run must train exactly as it would without scoring.
        saved = _random_states()
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                answers = generate(
                    self.model,
                    self.tokenizer,
                    self.template,
                    [row.prompt for row in self.eval_set],
                    max_new_tokens,
                    batch_size=self.params.batch_size,
                )
        finally:
            self.model.train(was_training)
            _restore_random_states(saved)

        records = [
            self.scorer.example(answer, reference)
            for answer, reference in zip(answers, references, strict=True)
        ]
        return float(self.scorer.aggregate(records)[metric])

    def _checkpoint(self, validate: bool = True) -> None:
        progress = self.progress
        self.saved_step = progress.step
        metrics: dict[str, float | None] = {
            "train_loss": _token_weighted_mean(progress.since_checkpoint)
        }
        # A checkpoint taken to cancel is off the schedule: it neither validates nor restarts the
        # training-loss window, so a resumed run reports what an uninterrupted one would.
        if validate:
            if self.validation_set:
                progress.validation = self.evaluate()
                if self.eval_set:
                    progress.validation.update(self.evaluate_task())
                metrics.update(progress.validation)
                self._event({"type": "validation", "step": progress.step, **progress.validation})
            progress.since_checkpoint = []
            if self.monitor is not None:
                self._track_improvement(metrics[self.monitor])
        if self.run_dir is None:
            return

        if self.world.is_main:
            state = {
                "optimizer": self.optimizer.state_dict(),
                "progress": asdict(progress),
                "rng": {
                    "python": random.getstate(),
                    "torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
                },
            }

            def write_files(folder: Path) -> None:
                self.model.save_pretrained(str(folder))
                (folder / "README.md").unlink(missing_ok=True)  # peft's model card stub
                torch.save(state, folder / checkpoints.TRAINER_STATE)

            manifest = {
                **self._manifest_basics(),
                "epoch": round(progress.step / self.steps_per_epoch, 4),
                "metrics": metrics,
            }
            folder = checkpoints.write_checkpoint(
                self.run_dir, progress.step, write_files, manifest
            )
            checkpoints.drop_trainer_state(self.run_dir, keep_step=progress.step)
            described = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if v is not None)
            self._event(
                {
                    "type": "checkpoint",
                    "step": progress.step,
                    "path": str(folder),
                    "metrics": metrics,
                    "message": f"saved {folder.name}" + (f" ({described})" if described else ""),
                }
            )
        self.world.barrier()

    def _track_improvement(self, value: float | None) -> None:
        if value is None:
            return
        sign = 1 if lower_is_better(self.monitor or "validation_loss") else -1
        best = self.progress.best
        if best is None or sign * (best - value) > self.params.early_stopping_min_delta:
            self.progress.best = value
            self.progress.stale_validations = 0
        else:
            self.progress.stale_validations += 1

    def _should_stop_early(self) -> bool:
        patience = self.params.early_stopping_patience
        if self.monitor is None or self.progress.stale_validations < patience:
            return False
        if self.progress.step >= self.total_steps:
            return False
        message = (
            f"stopped early at step {self.progress.step}: {self.monitor} has not improved "
            f"on {self.progress.best:.4f} for {patience} validations"
        )
        logger.info(message)
        self._event({"type": "early_stopped", "step": self.progress.step, "message": message})
        return True

    def _list_checkpoints(self) -> list[dict[str, Any]]:
        return checkpoints.list_checkpoints(self.run_dir) if self.run_dir else []

    def _checkpoint_summaries(self) -> list[dict[str, Any]]:
        return [
            {"step": m["step"], "path": m["path"], "metrics": m.get("metrics", {})}
            for m in self._list_checkpoints()
        ]

    def _choose_output(self) -> int | None:
        """Make the best checkpoint by the selection metric the run's output; return its step."""
        if self.run_dir is None or not self.world.is_main:
            return None
        found = self._list_checkpoints()
        best = checkpoints.best_checkpoint(found, self.metric, lower_is_better(self.metric))
        if best is None:
            return None
        checkpoints.set_output(self.run_dir, best)
        logger.info("output: %s by %s", Path(best["path"]).name, self.metric)
        return int(best["step"])


def _random_states() -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def _restore_random_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    torch.set_rng_state(states["torch"])
    if states["cuda"] is not None:
        torch.cuda.set_rng_state_all(states["cuda"])


def _token_weighted_mean(losses: list[tuple[float, int]]) -> float | None:
    count = sum(tokens for _, tokens in losses)
    return sum(loss * tokens for loss, tokens in losses) / count if count else None
