"""Evaluation worker: `python -m turing.tools.evals.worker EVAL_DIR` scores a model on rows.

Reads `job.json` (backend, base_gguf, adapter, rows_path, compare_base), appends progress to
`metrics.jsonl`, writes every prediction to `predictions.jsonl` and the scores to `result.json`.
"""

from __future__ import annotations

import json
import logging
import re
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from turing.server.jobs import write_json_atomic
from turing.tools.chat import read_chat_template
from turing.tools.datasets.jsonl import read_jsonl, write_jsonl

logger = logging.getLogger("turing.eval")

Generate = Callable[[list[list[dict[str, Any]]]], list[str]]
BATCH = 16


def normalise(text: str) -> str:
    """The form compared by exact match: surrounding space trimmed, inner runs collapsed."""
    return re.sub(r"\s+", " ", text).strip()


def split_reference(row: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    """The conversation up to the final assistant turn, and that turn's text as the reference."""
    messages = row["messages"]
    return messages[:-1], messages[-1]["content"]


def score(
    generate: Generate, rows: list[dict[str, Any]], phase: str, progress: Callable[..., None]
) -> list[dict[str, Any]]:
    """Generate an answer for every row and mark exact matches."""
    scored = []
    for start in range(0, len(rows), BATCH):
        batch = rows[start : start + BATCH]
        prompts = [split_reference(row)[0] for row in batch]
        for row, prompt, prediction in zip(batch, prompts, generate(prompts), strict=True):
            reference = split_reference(row)[1]
            scored.append(
                {
                    "messages": prompt,
                    "reference": reference,
                    "prediction": prediction,
                    "correct": normalise(prediction) == normalise(reference),
                }
            )
        progress(phase=phase, done=len(scored), total=len(rows))
    return scored


def torch_generator(base_gguf: str, adapter: str | None, max_new_tokens: int) -> Generate:
    from turing.tools.modeling import generate, load_model

    model, tokenizer = load_model(Path(base_gguf), Path(adapter) if adapter else None)
    template = read_chat_template(base_gguf)
    return lambda prompts: generate(model, tokenizer, template, prompts, max_new_tokens)


def llama_cpp_generator(base_gguf: str, adapter: str | None, max_new_tokens: int) -> Generate:
    from turing.tools.query.engine import Engine

    engine = Engine(Path(base_gguf), Path(adapter) if adapter else None)
    return lambda prompts: [
        engine.complete(prompt, max_tokens=max_new_tokens, temperature=0.0).text
        for prompt in prompts
    ]


GENERATORS = {"torch": torch_generator, "llama_cpp": llama_cpp_generator}


def run(folder: Path) -> dict[str, Any]:
    """Score the model (and the base beside it) and return the result summary."""
    job = json.loads((folder / "job.json").read_text())
    rows = read_jsonl(Path(job["rows_path"]))
    # References are short labels or answers; room for twice their length in characters is
    # more than enough tokens and keeps a rambling model from running for hundreds of tokens.
    max_new_tokens = min(512, max(16, max(len(split_reference(r)[1]) for r in rows) // 2 + 16))
    started = time.time()

    def progress(**event: Any) -> None:
        event.update(type="progress", elapsed_seconds=round(time.time() - started, 1))
        with open(folder / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(event) + "\n")

    make = GENERATORS[job["backend"]]
    scored = score(make(job["base_gguf"], job["adapter"], max_new_tokens), rows, "model", progress)
    result: dict[str, Any] = _summary(scored, "")
    if job["compare_base"]:
        base = score(make(job["base_gguf"], None, max_new_tokens), rows, "base", progress)
        for item, base_item in zip(scored, base, strict=True):
            item["base_prediction"] = base_item["prediction"]
            item["base_correct"] = base_item["correct"]
        result.update(_summary(base, "base_"))

    write_jsonl(scored, folder / "predictions.jsonl")
    result.update(
        status="succeeded",
        metric="exact_match",
        rows=len(rows),
        max_new_tokens=max_new_tokens,
        seconds=round(time.time() - started, 1),
    )
    return result


def _summary(scored: list[dict[str, Any]], prefix: str) -> dict[str, Any]:
    correct = sum(item["correct"] for item in scored)
    return {f"{prefix}exact_match": round(correct / len(scored), 4), f"{prefix}correct": correct}


def main() -> None:
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    folder = Path(sys.argv[1])
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        result = run(folder)
    except SystemExit:
        write_json_atomic(folder / "result.json", {"status": "cancelled", "error": None})
        raise
    except Exception as exc:
        logger.exception("evaluation failed")
        write_json_atomic(
            folder / "result.json", {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
        )
        sys.exit(1)
    write_json_atomic(folder / "result.json", result)
    logger.info("evaluation finished: %s", result)


if __name__ == "__main__":
    main()
