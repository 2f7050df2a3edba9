"""The fine-tuning child process: `python -m turing.tools.finetune.worker RUN_DIR`.

It reads `job.json`, appends progress to `metrics.jsonl`, logs to stderr, and ends by writing
`result.json` (and `adapter/` on success), both renamed into place so they are never half written.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from turing.server.jobs import write_json_atomic
from turing.server.registry import utc_now
from turing.tools.datasets.jsonl import read_jsonl
from turing.tools.errors import TuringError

logger = logging.getLogger(__name__)

ADAPTER_NAME = "adapter"
METRICS_NAME = "metrics.jsonl"
RESULT_NAME = "result.json"


class MetricsWriter:
    """Appends one JSON object per line to metrics.jsonl, flushed at once for live readers."""

    def __init__(self, handle: TextIO, total_log_lines: int = 50) -> None:
        self._handle = handle
        self._total_log_lines = total_log_lines

    def __call__(self, event: dict[str, Any]) -> None:
        record = {**event, "time": utc_now()}
        self._handle.write(json.dumps(record) + "\n")
        self._handle.flush()
        self._log(event)

    def _log(self, event: dict[str, Any]) -> None:
        if event["type"] == "validation":
            logger.info("step %d validation loss %.4f", event["step"], event["validation_loss"])
            return
        every = max(1, event["total_steps"] // self._total_log_lines)
        if event["step"] % every == 0 or event["step"] in (1, event["total_steps"]):
            logger.info(
                "step %d/%d epoch %.2f loss %.4f lr %.2e %.0f tokens/s eta %.0fs",
                event["step"],
                event["total_steps"],
                event["epoch"],
                event["loss"],
                event["learning_rate"],
                event["tokens_per_second"],
                event["eta_seconds"],
            )


def save_adapter_atomic(model: Any, run_dir: Path) -> Path:
    """Save the peft adapter into RUN_DIR/adapter via a temporary folder renamed into place."""
    final = run_dir / ADAPTER_NAME
    temporary = run_dir / f".{ADAPTER_NAME}.tmp"
    shutil.rmtree(temporary, ignore_errors=True)
    model.save_pretrained(str(temporary))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(temporary, final)
    return final


def run_job(run_dir: Path, stop: threading.Event) -> dict[str, Any]:
    """Train the job described by RUN_DIR/job.json and return the result to record."""
    from turing.tools.chat import read_chat_template
    from turing.tools.finetune.train import parse_params, train
    from turing.tools.modeling import load_model

    # Job description
    job = json.loads((run_dir / "job.json").read_text())
    params = parse_params(job.get("params"))
    base = Path(job["base_gguf"])
    train_rows = read_jsonl(Path(job["train_path"]))
    validation_path = Path(job["validation_path"]) if job.get("validation_path") else None
    has_validation = validation_path is not None and validation_path.exists()
    validation_rows = read_jsonl(validation_path) if has_validation else []
    logger.info(
        "run %s: %d train rows, %d validation rows",
        run_dir.name,
        len(train_rows),
        len(validation_rows),
    )

    # Training
    model, tokenizer = load_model(base)
    template = read_chat_template(base)
    with open(run_dir / METRICS_NAME, "a", encoding="utf-8") as metrics:
        result = train(
            model,
            tokenizer,
            template,
            train_rows,
            validation_rows,
            params,
            on_event=MetricsWriter(metrics),
            should_stop=stop.is_set,
        )

    # Outcome
    summary = {
        "final_loss": result.final_loss,
        "validation_loss": result.validation_loss,
        "steps": result.steps,
        "total_steps": result.total_steps,
        "train_tokens": result.train_tokens,
        "trainable_parameters": result.trainable_parameters,
        "dropped_rows": result.dropped_rows,
        "seconds": round(result.seconds, 3),
    }
    if result.cancelled:
        logger.info("run %s cancelled after %d steps", run_dir.name, result.steps)
        return {"status": "cancelled", "error": None, **summary}
    adapter = save_adapter_atomic(result.model, run_dir)
    logger.info("run %s succeeded: adapter in %s", run_dir.name, adapter)
    return {"status": "succeeded", "error": None, **summary, "adapter_dir": str(adapter.resolve())}


def describe_error(exc: BaseException) -> str:
    """One readable line for a failure: a domain error's own message, else its type and text."""
    if isinstance(exc, TuringError):
        return str(exc)
    if isinstance(exc, KeyError):
        return f"job.json lacks the key {exc}"
    return f"{type(exc).__name__}: {exc}"


def main(argv: list[str] | None = None) -> int:
    """Run one fine-tuning job; the exit code is 0 unless the run failed."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write("usage: python -m turing.tools.finetune.worker RUN_DIR\n")
        return 2
    run_dir = Path(args[0])
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )

    # SIGTERM asks for a stop at the next step boundary; the run then records itself cancelled.
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())

    started = time.monotonic()
    try:
        result = run_job(run_dir, stop)
    except Exception as exc:
        if isinstance(exc, TuringError):
            logger.error("run %s failed: %s", run_dir.name, exc)
        else:
            logger.exception("run %s failed", run_dir.name)
        seconds = round(time.monotonic() - started, 3)
        result = {"status": "failed", "error": describe_error(exc), "seconds": seconds}
    write_json_atomic(run_dir / RESULT_NAME, result)
    return 1 if result["status"] == "failed" else 0


if __name__ == "__main__":
    # Library progress bars would flood the log; tqdm reads this when first imported.
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
