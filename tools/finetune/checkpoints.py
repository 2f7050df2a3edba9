"""Checkpoints of a run: written atomically, listed, checked, and chosen as the run's output.

A run folder holds `checkpoints/step-000050/` and so on. Each is written into a hidden
temporary folder and renamed into place only once complete, with `manifest.json` last, so a
folder under a `step-` name with a manifest whose files match is a whole checkpoint; anything
else (a kill mid-write) is ignored and swept away. Every checkpoint keeps its adapter weights,
so any of them can become the run's output; only the latest keeps the optimiser, scheduler and
random state needed to resume, which keeps the disk cost to one optimiser state per run.

    manifest.json        step, epoch, metrics, LoRA config, fingerprints, files with sizes/sha256
    adapter_model.safetensors, adapter_config.json   the peft adapter
    trainer_state.pt     optimiser, data position, RNG states (latest checkpoint only)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from turing.server.jobs import write_json_atomic
from turing.server.registry import utc_now
from turing.tools.errors import ConflictError, InvalidInputError

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
OUTPUT = "adapter"
MANIFEST = "manifest.json"
TRAINER_STATE = "trainer_state.pt"
_NAME = re.compile(r"^step-(\d{6,})$")


def checkpoint_name(step: int) -> str:
    """The folder name of the checkpoint taken after `step` optimiser steps."""
    return f"step-{step:06d}"


def write_checkpoint(run_dir: Path, step: int, write_files: Any, manifest: dict[str, Any]) -> Path:
    """Write one checkpoint atomically and return its folder.

    Args:
        run_dir: The run folder.
        step: Optimiser steps done.
        write_files: Called with the temporary folder; writes the adapter and trainer state.
        manifest: Step, metrics and configuration to record; file sizes and hashes are added.
    """
    root = run_dir / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(step)
    temporary = root / f".{final.name}.tmp"
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir()
    write_files(temporary)
    files = {
        path.name: {"bytes": path.stat().st_size, "sha256": _sha256(path)}
        for path in sorted(temporary.iterdir())
    }
    for path in temporary.iterdir():
        _fsync(path)
    write_json_atomic(
        temporary / MANIFEST, {**manifest, "step": step, "files": files, "created_at": utc_now()}
    )
    _fsync(temporary)
    if final.exists():  # a resumed run retaking a step it had already saved
        shutil.rmtree(final)
    os.replace(temporary, final)
    _fsync(root)
    return final


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest of a complete checkpoint, or None when the folder is not one.

    Complete means: a `step-N` name, a readable manifest, and every file it lists present with
    the recorded size (hashes are checked by `verify`, which reads the whole files).
    """
    if not _NAME.match(folder.name) or not (folder / MANIFEST).is_file():
        return None
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    for name, entry in manifest.get("files", {}).items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != entry.get("bytes"):
            return None
    return {**manifest, "path": str(folder)}


def verify(manifest: dict[str, Any]) -> bool:
    """Whether every file of a checkpoint still has the hash its manifest recorded."""
    folder = Path(manifest["path"])
    return all(
        (folder / name).is_file() and _sha256(folder / name) == entry["sha256"]
        for name, entry in manifest.get("files", {}).items()
    )


def list_checkpoints(run_dir: Path) -> list[dict[str, Any]]:
    """Manifests of the run's complete checkpoints, oldest first."""
    root = run_dir / CHECKPOINTS
    if not root.is_dir():
        return []
    manifests = [read_manifest(folder) for folder in root.iterdir() if folder.is_dir()]
    return sorted((m for m in manifests if m is not None), key=lambda m: m["step"])


def latest_resumable(run_dir: Path) -> dict[str, Any] | None:
    """The newest complete checkpoint that holds the trainer state, or None."""
    for manifest in reversed(list_checkpoints(run_dir)):
        if TRAINER_STATE in manifest.get("files", {}) and verify(manifest):
            return manifest
    return None


def sweep_incomplete(run_dir: Path) -> list[str]:
    """Remove the leftovers of interrupted writes; return their names."""
    root = run_dir / CHECKPOINTS
    if not root.is_dir():
        return []
    removed = []
    for folder in root.iterdir():
        if folder.is_dir() and read_manifest(folder) is None:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder.name)
    if removed:
        logger.warning("removed incomplete checkpoints: %s", ", ".join(sorted(removed)))
    return removed


def drop_trainer_state(run_dir: Path, keep_step: int) -> None:
    """Delete the resume state of every checkpoint but `keep_step`'s; adapters stay."""
    for manifest in list_checkpoints(run_dir):
        if manifest["step"] == keep_step or TRAINER_STATE not in manifest["files"]:
            continue
        folder = Path(manifest["path"])
        files = {k: v for k, v in manifest["files"].items() if k != TRAINER_STATE}
        clean = {k: v for k, v in manifest.items() if k != "path"}
        write_json_atomic(folder / MANIFEST, {**clean, "files": files})
        (folder / TRAINER_STATE).unlink(missing_ok=True)


def best_checkpoint(
    checkpoints: list[dict[str, Any]], metric: str, lower_is_better: bool
) -> dict[str, Any] | None:
    """The checkpoint with the best value of `metric` (the earliest among equals).

    "last" takes the newest checkpoint. Checkpoints without the metric are passed over.
    """
    if not checkpoints:
        return None
    if metric == "last":
        return checkpoints[-1]
    scored = [c for c in checkpoints if isinstance(c.get("metrics", {}).get(metric), int | float)]
    if not scored:
        return None
    sign = 1 if lower_is_better else -1
    return min(scored, key=lambda c: (sign * c["metrics"][metric], c["step"]))


def find_checkpoint(run_dir: Path, step: int) -> dict[str, Any]:
    """The complete checkpoint of `step`, or an error listing the steps there are."""
    checkpoints = list_checkpoints(run_dir)
    for manifest in checkpoints:
        if manifest["step"] == step:
            return manifest
    steps = ", ".join(str(m["step"]) for m in checkpoints) or "none"
    raise InvalidInputError(f"{run_dir.name} has no checkpoint at step {step} (steps: {steps})")


def set_output(run_dir: Path, manifest: dict[str, Any]) -> Path:
    """Make a checkpoint's adapter the run's output (`adapter/`), replacing it atomically."""
    if not verify(manifest):
        raise ConflictError(
            f"checkpoint {Path(manifest['path']).name} of {run_dir.name} is damaged: "
            "its files no longer match their recorded hashes"
        )
    source = Path(manifest["path"])
    final = run_dir / OUTPUT
    temporary = Path(tempfile.mkdtemp(prefix=f".{OUTPUT}-", suffix=".tmp", dir=run_dir))
    for name in manifest["files"]:
        if name.startswith("adapter_"):
            shutil.copy2(source / name, temporary / name)
    write_json_atomic(
        temporary / "source.json", {"step": manifest["step"], "checkpoint": source.name}
    )
    old = temporary.with_suffix(".old")
    if final.exists():
        os.replace(final, old)
    os.replace(temporary, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
