"""Fixtures of the serving tests: a tiny GGUF and one engine over it, per test module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.tiny_model import build_tiny_base


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_base(tmp_path_factory.mktemp("tiny") / "tiny.gguf", seed=0)


@pytest.fixture(scope="module")
def tiny_engine(tiny_gguf: Path) -> Iterator[Any]:
    from turing.tools.query.engine import Engine

    engine = Engine(tiny_gguf, n_ctx=256, n_threads=1)
    yield engine
    engine.close()
