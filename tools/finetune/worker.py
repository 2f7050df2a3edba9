"""The fine-tuning child process: `python -m turing.tools.finetune.worker RUN_DIR`.

It reads `job.json`, appends steps and validations to `metrics.jsonl` and milestones (started,
resumed, checkpoint, early stop, finished, failed) to `events.jsonl`, logs to stderr, writes
checkpoints under `checkpoints/`, and ends by writing `result.json` (renamed into place, so it is
never half written); on success the chosen checkpoint's adapter is in `adapter/`.

With an `eval_metric`, the label set that accuracy and macro_f1 score against is read from the
dataset's `report.json`, beside its splits.

Under torchrun (`python -m torch.distributed.run --nproc_per_node=N -m
turing.tools.finetune.worker RUN_DIR`) every process trains its share of each batch and rank 0
writes the files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
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
from turing.tools.finetune import checkpoints
from turing.tools.finetune.distributed import World, join_world, leave_world
from turing.tools.finetune.train import EVAL_PREFIX, LABEL_METRICS
from turing.tools.jobs import append_event

logger = logging.getLogger(__name__)

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
            logger.info("%s", _describe(event))
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


# Training events that also go to events.jsonl, the run's readable history.
_HISTORY_EVENTS = {"resumed", "checkpoint", "validation", "early_stopped", "non_finite_loss"}


class EventRouter:
    """Sends steps and validations to metrics.jsonl, and milestones to events.jsonl too."""

    def __init__(self, run_dir: Path, metrics: MetricsWriter) -> None:
        self._run_dir = run_dir
        self._metrics = metrics

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind in ("step", "validation"):
            self._metrics(event)
        if kind in _HISTORY_EVENTS:
            fields = {k: v for k, v in event.items() if k not in ("type", "message")}
            message = event.get("message") or _describe(event)
            append_event(self._run_dir, kind, message, **fields)
            if kind != "validation":
                logger.info("%s", message)


def _describe(event: dict[str, Any]) -> str:
    if event["type"] == "validation":
        scores = "".join(
            f", {key} {value:.3f}" for key, value in event.items() if key.startswith(EVAL_PREFIX)
        )
        return (
            f"validation at step {event['step']}: loss {event['validation_loss']:.4f}, "
            f"token accuracy {event['validation_accuracy']:.3f}{scores}"
        )
    return event["type"].replace("_", " ")


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def dataset_labels(train_path: Path) -> list[str] | None:
    """The label set of the dataset whose train split is `train_path`, from its report.

    Returns:
        Every label of the train and validation splits, sorted; None when the dataset has none
        (not a classification dataset, or no report beside the split).
    """
    path = train_path.parent / "report.json"
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    counts = report.get("labels") or {}
    labels = {*(counts.get("train") or {}), *(counts.get("validation") or {})} - {""}
    return sorted(labels) or None


def forget_steps_after_checkpoint(run_dir: Path) -> None:
    """Drop the metrics a killed attempt logged after the checkpoint a resume starts from.

    The resumed attempt logs those steps again, so the series stays one value per step;
    events.jsonl keeps the history of both attempts.
    """
    latest = checkpoints.latest_resumable(run_dir)
    path = run_dir / METRICS_NAME
    if latest is None or not path.exists():
        return
    kept = [
        line
        for line in path.read_text(encoding="utf-8").splitlines(keepends=True)
        if _step_of(line) <= latest["step"]
    ]
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text("".join(kept), encoding="utf-8")
    os.replace(temporary, path)


def _step_of(line: str) -> float:
    try:
        return float(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return float("inf")  # a half-written line from the killed attempt


def run_job(run_dir: Path, stop: threading.Event, world: World) -> dict[str, Any]:
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
    init_checkpoint = Path(job["init_checkpoint"]) if job.get("init_checkpoint") else None
    labels = (
        dataset_labels(Path(job["train_path"])) if params.eval_metric in LABEL_METRICS else None
    )
    logger.info(
        "run %s: %d train rows, %d validation rows%s",
        run_dir.name,
        len(train_rows),
        len(validation_rows),
        f", {world.size} processes" if world.distributed else "",
    )

    if job.get("resume") and world.is_main:
        forget_steps_after_checkpoint(run_dir)

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
            on_event=EventRouter(run_dir, MetricsWriter(metrics)) if world.is_main else None,
            should_stop=stop.is_set,
            run_dir=run_dir,
            resume=bool(job.get("resume")),
            init_checkpoint=init_checkpoint,
            base_sha256=file_sha256(base) if base.is_file() else None,
            world=world,
            eval_labels=labels,
        )

    # Outcome
    summary = result.summary()
    summary["seconds"] = round(result.seconds, 3)
    chosen = [c for c in result.checkpoints if c["step"] == result.output_step]
    summary["output_metrics"] = chosen[0]["metrics"] if chosen else None
    if result.cancelled:
        logger.info("run %s cancelled after %d steps", run_dir.name, result.steps)
        return {"status": "cancelled", "error": None, **summary}
    adapter = run_dir / checkpoints.OUTPUT
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

    # SIGTERM asks for a stop at the next step boundary; the run saves a checkpoint and records
    # itself cancelled.
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())

    started = time.monotonic()
    world = World()
    try:
        world = join_world()
        if world.is_main:
            append_event(run_dir, "started", f"training started (pid {os.getpid()})")
        result = run_job(run_dir, stop, world)
    except Exception as exc:
        if isinstance(exc, TuringError):
            logger.error("run %s failed: %s", run_dir.name, exc)
        else:
            logger.exception("run %s failed", run_dir.name)
        seconds = round(time.monotonic() - started, 3)
        result = {"status": "failed", "error": describe_error(exc), "seconds": seconds}
        result["checkpoints"] = [
            {"step": m["step"], "path": m["path"], "metrics": m.get("metrics", {})}
            for m in checkpoints.list_checkpoints(run_dir)
        ]
    if world.is_main:
        write_json_atomic(run_dir / RESULT_NAME, result)
        if result["status"] == "failed":
            append_event(run_dir, "failed", result["error"])
        else:
            append_event(run_dir, "finished", f"run {result['status']}", status=result["status"])
    leave_world(world)
    return 1 if result["status"] == "failed" else 0


if __name__ == "__main__":
    # Library progress bars would flood the log; tqdm reads this when first imported.
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
