"""The workspace: the folder (TURING_HOME) that holds the registry and every artifact."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_HOME = Path("~/.turing")


@dataclass(frozen=True)
class Workspace:
    """Paths inside one Turing workspace; folders are created on first use.

    `cache` holds data derived from files outside the workspace (converted tokenizers), shared
    by every workspace of the user: TURING_CACHE, else $XDG_CACHE_HOME/turing or ~/.cache/turing.
    """

    home: Path
    cache: Path

    @classmethod
    def from_env(cls) -> Workspace:
        """The workspace named by TURING_HOME (or ~/.turing) and the cache folder."""
        raw = os.environ.get("TURING_HOME") or str(DEFAULT_HOME)
        cache = os.environ.get("TURING_CACHE")
        if not cache:
            cache = str(Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache") / "turing")
        return cls(Path(raw).expanduser().resolve(), Path(cache).expanduser().resolve())

    def cache_folder(self, kind: str) -> Path:
        """A folder of the shared cache, such as tokenizers."""
        path = self.cache / kind
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def registry_path(self) -> Path:
        return self.home / "registry.db"

    def folder(self, kind: str, item_id: str = "") -> Path:
        """The folder of one artifact kind (datasets, runs, evals, models), or of one item."""
        path = self.home / kind / item_id if item_id else self.home / kind
        path.mkdir(parents=True, exist_ok=True)
        return path
