"""Training worker: `python -m turing.tools.finetune.worker RUN_DIR` fine-tunes one run.

Reads `job.json` (base_gguf, train_path, validation_path, params), appends every step and
validation to `metrics.jsonl`, saves the adapter to `adapter/` and ends with `result.json`.
SIGTERM stops it at the next step boundary with status cancelled.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

from turing.server.jobs import write_json_atomic
from turing.tools.chat import read_chat_template
from turing.tools.datasets.prepare import read_jsonl
from turing.tools.errors import TuringError

logger = logging.getLogger("turing.train")


class MetricsFile:
    """Appends events as JSON lines, flushed one by one so readers see progress live."""

    def __init__(self, path: Path):
        self.handle = open(path, "a", buffering=1)  # noqa: SIM115 (open for the whole run)

    def __call__(self, event: dict[str, Any]) -> None:
        event = {**event, "time": time.time()}
        self.handle.write(json.dumps(event) + "\n")
        if event["type"] == "step" and (event["step"] % 10 == 0 or event["step"] == 1):
            logger.info("step %d/%d loss %.4f %.0f tokens/s", event["step"],
                        event["total_steps"], event["loss"], event["tokens_per_second"])
        elif event["type"] == "validation":
            logger.info("validation loss %.4f at step %d", event["validation_loss"], event["step"])


def run(folder: Path, should_stop: Any) -> dict[str, Any]:
    """Train the run described in the folder and return its result."""
    from turing.tools.finetune.train import parse_params, train
    from turing.tools.modeling import load_model, quiet_libraries

    quiet_libraries()
    job = json.loads((folder / "job.json").read_text())
    params = parse_params(job["params"])
    train_rows = read_jsonl(Path(job["train_path"]))
    validation_path = Path(job["validation_path"])
    validation_rows = read_jsonl(validation_path) if validation_path.exists() else []

    logger.info("loading base model %s", job["base_gguf"])
    model, tokenizer = load_model(Path(job["base_gguf"]))
    template = read_chat_template(job["base_gguf"])
    outcome = train(model, tokenizer, template, train_rows, validation_rows, params,
                    on_event=MetricsFile(folder / "metrics.jsonl"), should_stop=should_stop)

    summary = outcome.summary()
    if outcome.cancelled:
        return {"status": "cancelled", "error": None, **summary}
    adapter = save_adapter(outcome.model, folder / "adapter")
    return {"status": "succeeded", "error": None, "adapter_dir": str(adapter), **summary}


def save_adapter(model: Any, destination: Path) -> Path:
    """Save the LoRA adapter under a temporary name, then rename it into place."""
    staging = destination.with_name(f".{destination.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(str(staging))
    shutil.rmtree(destination, ignore_errors=True)
    os.replace(staging, destination)
    return destination


def main() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    folder = Path(sys.argv[1])
    stop_requested = False

    def request_stop(*_: Any) -> None:
        nonlocal stop_requested
        stop_requested = True
        logger.info("stop requested; ending at the next step")

    signal.signal(signal.SIGTERM, request_stop)
    try:
        result = run(folder, lambda: stop_requested)
    except TuringError as exc:
        result = {"status": "failed", "error": str(exc)}
    except Exception as exc:
        logger.exception("training failed")
        result = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    write_json_atomic(folder / "result.json", result)
    logger.info("run ended: %s", result["status"])
    sys.exit(0 if result["status"] != "failed" else 1)


if __name__ == "__main__":
    main()
