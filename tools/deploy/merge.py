"""Merged exports: a base model with a LoRA adapter folded into its weights, written as one GGUF.

The merge needs torch, so it runs in a child process; the server only waits for it.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from turing.tools.deploy.gguf_export import EXPORT_DTYPES, check_mergeable_adapter
from turing.tools.errors import InvalidInputError, TuringError
from turing.tools.settings import number_setting

logger = logging.getLogger(__name__)

MERGED_DTYPES = ("f16", "q8_0")
# Loading a base, merging and writing an f16 file of a ~100M-parameter model takes well under a
# minute on two cores; larger bases take longer.
DEFAULT_MERGE_TIMEOUT_S = 1800.0
TIMEOUT_SETTING = "TURING_MERGE_TIMEOUT_S"
MIN_MERGE_TIMEOUT_S = 0.001


def export_merged(
    base_gguf: Path,
    adapter_dir: Path,
    out_path: Path,
    dtype: str = "f16",
    timeout_s: float | None = None,
) -> Path:
    """Merge a peft LoRA adapter into its base model and write the result as a GGUF.

    The adapter is checked here first (only plain LoRA on the attention and MLP projections,
    shapes that fit the base); the merge itself runs in a child process so the caller never
    loads torch. The GGUF carries the base's tokenizer, chat template and stop tokens.

    Args:
        base_gguf: The base model GGUF the adapter was trained on.
        adapter_dir: Folder holding peft's `adapter_config.json` and `adapter_model.safetensors`.
        out_path: Where to write the merged GGUF; replaced atomically.
        dtype: "f16" or "q8_0" for the weight matrices (norms stay f32).
        timeout_s: Seconds the child process may take before it is stopped; by default the
            TURING_MERGE_TIMEOUT_S setting, else 1800.

    Returns:
        `out_path`.

    Raises:
        InvalidInputError: A bad dtype, an adapter the export refuses, or a merge that failed
            (the message carries the child's reason).
    """
    if dtype not in MERGED_DTYPES:
        raise InvalidInputError(
            f"dtype={dtype!r} is not a merged export type; use one of {', '.join(MERGED_DTYPES)}"
        )
    layers = check_mergeable_adapter(Path(adapter_dir), Path(base_gguf))
    logger.info(
        "merging adapter %s (%d layers) into %s as %s", adapter_dir, layers, base_gguf, dtype
    )

    job = {
        "base_gguf": str(base_gguf),
        "adapter_dir": str(adapter_dir),
        "out_path": str(out_path),
        "dtype": dtype,
    }
    _run_child(job, merge_timeout() if timeout_s is None else timeout_s)
    if not Path(out_path).is_file():
        raise InvalidInputError(f"the merge of {adapter_dir} ended without writing {out_path}")
    return Path(out_path)


def merge_timeout() -> float:
    """Seconds a merge may take: the TURING_MERGE_TIMEOUT_S setting, else 1800."""
    return number_setting(TIMEOUT_SETTING, DEFAULT_MERGE_TIMEOUT_S, minimum=MIN_MERGE_TIMEOUT_S)


def _run_child(job: dict[str, Any], timeout_s: float) -> None:
    with tempfile.TemporaryDirectory(prefix="turing-merge-") as folder:
        job_path, answer_path = Path(folder) / "job.json", Path(folder) / "answer.json"
        job_path.write_text(json.dumps(job), encoding="utf-8")
        command = [sys.executable, "-m", __name__, str(job_path), str(answer_path)]
        env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=timeout_s, env=env, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise InvalidInputError(
                f"merging adapter {job['adapter_dir']} did not finish within {timeout_s:g} s; "
                f"raise {TIMEOUT_SETTING} for a larger base model"
            ) from exc
        answer = json.loads(answer_path.read_text()) if answer_path.is_file() else None

    if done.returncode == 0:
        return
    if answer is not None:
        raise InvalidInputError(f"merging adapter {job['adapter_dir']} failed: {answer['error']}")
    last = (done.stderr.strip().splitlines() or ["no output"])[-1]
    killed = " (killed: out of memory?)" if done.returncode in (-9, 137) else ""
    raise InvalidInputError(
        f"the merge process for adapter {job['adapter_dir']} ended with exit code "
        f"{done.returncode}{killed}: {last}"
    )


def merge_and_write(base_gguf: Path, adapter_dir: Path, out_path: Path, dtype: str) -> Path:
    """Load the base with its adapter in PyTorch, fold the adapter in and write the GGUF.

    This is the child process's work; callers use `export_merged`, which checks the adapter
    first and keeps torch out of their process.
    """
    from turing.tools.deploy.gguf_export import export_model_gguf
    from turing.tools.modeling import load_model

    if dtype not in EXPORT_DTYPES:
        raise InvalidInputError(f"dtype {dtype!r} is not supported; use one of {EXPORT_DTYPES}")
    model, _ = load_model(Path(base_gguf), Path(adapter_dir))
    merged = model.merge_and_unload()
    return export_model_gguf(merged, Path(base_gguf), Path(out_path), dtype)


def main(argv: list[str]) -> int:
    """Entry point of the merge child process: a job file in, an answer file on failure."""
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(message)s")
    if len(argv) != 2:
        logger.error("usage: python -m turing.tools.deploy.merge JOB_JSON ANSWER_JSON")
        return 2
    job = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    try:
        merge_and_write(
            Path(job["base_gguf"]), Path(job["adapter_dir"]), Path(job["out_path"]), job["dtype"]
        )
    except TuringError as exc:
        _answer(Path(argv[1]), str(exc))
        return 1
    except Exception as exc:  # the boundary of a child process: report and fail
        logger.exception("merge failed")
        _answer(Path(argv[1]), f"{type(exc).__name__}: {exc}")
        return 1
    return 0


def _answer(path: Path, error: str) -> None:
    path.write_text(json.dumps({"error": error}), encoding="utf-8")


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
