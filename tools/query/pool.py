"""The engine pool: llama.cpp engines keyed by (base, adapter), kept within a memory budget.

Each engine is charged the larger of its estimate (GGUF sizes plus KV cache) and the resident
memory its load really added; past the budget the least recently used idle engines close.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from turing.tools.errors import BusyError, ConflictError, InvalidInputError
from turing.tools.query.engine import Engine, queue_limit_setting
from turing.tools.settings import number_setting

logger = logging.getLogger(__name__)

MEMORY_ENV = "TURING_ENGINE_MEMORY_MB"
DEFAULT_MEMORY_SHARE = 0.25  # of physical memory, when TURING_ENGINE_MEMORY_MB is not set
COMPUTE_ALLOWANCE_MB = 16.0  # llama.cpp's compute and output buffers, beyond weights and KV
MB = 1024 * 1024


def memory_budget_setting() -> float:
    """Megabytes the engine pool may hold: TURING_ENGINE_MEMORY_MB, default a quarter of RAM."""
    default = physical_memory_mb() * DEFAULT_MEMORY_SHARE
    return number_setting(MEMORY_ENV, default, integer=False, minimum=1.0)


# --- memory --------------------------------------------------------------------------------


def process_rss_mb() -> float:
    """This process's resident memory in megabytes (VmRSS, read from /proc/self/statm)."""
    with open("/proc/self/statm") as statm:
        resident_pages = int(statm.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / MB


def physical_memory_mb() -> float:
    """The machine's physical memory in megabytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / MB


def estimate_engine_mb(base_gguf: Path, adapter_gguf: Path | None, n_ctx: int) -> float:
    """Estimate an engine's memory before loading it: its GGUF files plus its KV cache.

    The KV cache holds an f16 key and value vector per layer, KV head and context position;
    a fixed allowance covers llama.cpp's compute buffers.

    Raises:
        InvalidInputError: The base file is not a GGUF whose header can be read.
    """
    files = Path(base_gguf).stat().st_size + (
        Path(adapter_gguf).stat().st_size if adapter_gguf else 0
    )
    meta = read_gguf_numbers(Path(base_gguf))
    arch = meta.get("general.architecture")
    layers = meta.get(f"{arch}.block_count")
    width = meta.get(f"{arch}.embedding_length")
    heads = meta.get(f"{arch}.attention.head_count")
    kv_bytes = 0.0
    if isinstance(layers, int) and isinstance(width, int) and isinstance(heads, int) and heads:
        kv_heads = meta.get(f"{arch}.attention.head_count_kv", heads)
        key = meta.get(f"{arch}.attention.key_length", width // heads)
        value = meta.get(f"{arch}.attention.value_length", width // heads)
        kv_bytes = 2.0 * layers * n_ctx * int(kv_heads) * (int(key) + int(value))
    else:
        logger.warning("no layer shape in %s; its KV cache is left out of the estimate", base_gguf)
    return (files + kv_bytes) / MB + COMPUTE_ALLOWANCE_MB


_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q"}
_GGUF_SCALARS |= {11: "<q", 12: "<d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def read_gguf_numbers(path: Path) -> dict[str, int | float | str]:
    """Read a GGUF header's scalar metadata (numbers and strings), skipping arrays unread.

    Much faster than parsing the whole header: a vocabulary array is skipped, not decoded.

    Raises:
        InvalidInputError: The file is not a little-endian GGUF of version 2 or later.
    """
    not_gguf = f"{path} is not a GGUF file (little-endian, version 2 or later) llama.cpp reads"
    try:
        with open(path, "rb") as handle:
            magic, version, _tensors, count = struct.unpack("<4sIQQ", handle.read(24))
            if magic != b"GGUF" or not 2 <= version < 1000:
                raise InvalidInputError(not_gguf)
            return _read_gguf_fields(handle, count)
    except (struct.error, KeyError, OverflowError) as exc:
        raise InvalidInputError(f"{not_gguf}: its header is cut short or unknown ({exc})") from exc


def _read_gguf_fields(handle: Any, count: int) -> dict[str, int | float | str]:
    found: dict[str, int | float | str] = {}
    for _ in range(count):
        key = _read_gguf_string(handle)
        (kind,) = struct.unpack("<I", handle.read(4))
        if kind == _GGUF_ARRAY:
            _skip_gguf_array(handle)
        elif kind == _GGUF_STRING:
            found[key] = _read_gguf_string(handle)
        else:
            fmt = _GGUF_SCALARS[kind]
            (found[key],) = struct.unpack(fmt, handle.read(struct.calcsize(fmt)))
    return found


def _read_gguf_string(handle: Any) -> str:
    (size,) = struct.unpack("<Q", handle.read(8))
    return handle.read(size).decode("utf-8", errors="replace")


def _skip_gguf_array(handle: Any) -> None:
    kind, count = struct.unpack("<IQ", handle.read(12))
    if kind == _GGUF_STRING:
        for _ in range(count):
            (size,) = struct.unpack("<Q", handle.read(8))
            handle.seek(size, os.SEEK_CUR)
    elif kind == _GGUF_ARRAY:
        for _ in range(count):
            _skip_gguf_array(handle)
    else:
        handle.seek(count * struct.calcsize(_GGUF_SCALARS[kind]), os.SEEK_CUR)


# --- the pool ------------------------------------------------------------------------------

EngineKey = tuple[str, str | None]


@dataclass
class _Entry:
    """A pooled engine with its memory cost and when it was loaded and last handed out."""

    engine: Engine
    estimated_mb: float
    measured_mb: float
    loaded_at: float
    last_used: float

    @property
    def cost_mb(self) -> float:
        """What the budget charges: the larger of the estimate and the measured load."""
        return max(self.estimated_mb, self.measured_mb)


class EnginePool:
    """Loaded engines keyed by (base, adapter), kept within a memory budget.

    Loading an engine that would pass the budget first closes the least recently used idle
    engines. Busy engines are never cut off: an unloaded engine finishes the requests it has
    admitted, then frees its memory.
    """

    def __init__(
        self,
        memory_budget_mb: float | None = None,
        queue_limit: int | None = None,
        max_engines: int | None = None,
        n_ctx: int = 2048,
        n_threads: int | None = None,
    ) -> None:
        """Create an empty pool.

        Args:
            memory_budget_mb: Megabytes all engines may hold together; TURING_ENGINE_MEMORY_MB
                (default a quarter of physical memory) when None.
            queue_limit: Callers that may wait for each busy engine; TURING_ENGINE_QUEUE
                (default 64) when None.
            max_engines: An optional cap on how many engines stay loaded.
            n_ctx: Context window of every engine, in tokens.
            n_threads: CPU threads per engine; every core this process may use when None.

        Raises:
            InvalidInputError: A limit is not positive.
        """
        self.memory_budget_mb = (
            memory_budget_mb if memory_budget_mb is not None else memory_budget_setting()
        )
        self.queue_limit = queue_limit if queue_limit is not None else queue_limit_setting()
        problems = []
        if not self.memory_budget_mb > 0:
            problems.append(f"memory_budget_mb={self.memory_budget_mb}: must be positive")
        if self.queue_limit < 0:
            problems.append(f"queue_limit={self.queue_limit}: must be 0 (no waiting) or more")
        if max_engines is not None and max_engines < 1:
            problems.append(f"max_engines={max_engines}: must be at least 1")
        if problems:
            raise InvalidInputError("; ".join(problems))
        self.max_engines = max_engines
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self._entries: OrderedDict[EngineKey, _Entry] = OrderedDict()
        self._retiring: list[_Entry] = []  # unloaded but still serving admitted requests
        self._lock = threading.Lock()

    def get(self, base_gguf: Path, adapter_gguf: Path | None = None) -> Engine:
        """Return the engine for this base and adapter, loading it on first use.

        An engine unloaded while a caller still holds it raises ConflictError on its next call;
        call `get` again right before each use.

        Raises:
            InvalidInputError: A file is missing or llama.cpp cannot load it.
            ConflictError: The engine alone is larger than the whole memory budget.
            BusyError: Busy engines hold so much of the budget that this one does not fit yet.
        """
        key = _key(base_gguf, adapter_gguf)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                # Loading under the lock keeps two callers from loading the same model twice
                # and keeps the budget arithmetic honest.
                entry = self._load(key)
            self._entries.move_to_end(key)
            entry.last_used = time.time()
            return entry.engine

    def _load(self, key: EngineKey) -> _Entry:
        base, adapter = Path(key[0]), Path(key[1]) if key[1] else None
        for label, path in (("base model", base), ("adapter", adapter)):
            if path is not None and not path.is_file():
                raise InvalidInputError(f"{label} GGUF {path} does not exist")
        estimated = estimate_engine_mb(base, adapter, self.n_ctx)
        self._make_room(key, estimated)

        before = process_rss_mb()
        engine = Engine(
            base, adapter, n_ctx=self.n_ctx, n_threads=self.n_threads, queue_limit=self.queue_limit
        )
        measured = max(0.0, process_rss_mb() - before)
        now = time.time()
        entry = _Entry(engine, estimated, measured, loaded_at=now, last_used=now)
        self._entries[key] = entry
        logger.info(
            "engine %s: estimated %.0f MB, measured %.0f MB; pool holds %.0f of %.0f MB",
            engine.describe(),
            estimated,
            measured,
            self._held_mb(),
            self.memory_budget_mb,
        )
        return entry

    def _make_room(self, key: EngineKey, needed_mb: float) -> None:
        """Unload least recently used idle engines until `needed_mb` more fits the budget."""
        if needed_mb > self.memory_budget_mb:
            raise ConflictError(
                f"engine {_describe(key)} needs about {needed_mb:.0f} MB but the whole engine "
                f"memory budget is {self.memory_budget_mb:.0f} MB; raise {MEMORY_ENV} or use a "
                "smaller model (e.g. a q8_0 export)"
            )
        self._reap()
        for old_key, old in list(self._entries.items()):
            over_cap = self.max_engines is not None and len(self._entries) >= self.max_engines
            if not over_cap and self._held_mb() + needed_mb <= self.memory_budget_mb:
                return
            if not old.engine.busy and not old.engine.waiting:
                self._unload(old_key)
        over_cap = self.max_engines is not None and len(self._entries) >= self.max_engines
        if over_cap or self._held_mb() + needed_mb > self.memory_budget_mb:
            raise BusyError(
                f"engine {_describe(key)} needs about {needed_mb:.0f} MB; busy engines hold "
                f"{self._held_mb():.0f} MB of the {self.memory_budget_mb:.0f} MB budget "
                f"({MEMORY_ENV}) and {len(self._entries)} engines are loaded; retry when they "
                "finish"
            )

    def unload(self, base_gguf: Path, adapter_gguf: Path | None = None) -> bool:
        """Unload an engine: it finishes the requests it has admitted, then frees its memory.

        Returns:
            True when such an engine was loaded.
        """
        with self._lock:
            return self._unload(_key(base_gguf, adapter_gguf))

    def retain(self, keep: set[tuple[Path, Path | None]]) -> list[EngineKey]:
        """Unload every engine whose (base, adapter) is not in `keep`.

        Args:
            keep: (base GGUF, adapter GGUF or None) pairs still served, e.g. by live routes.

        Returns:
            The (base, adapter) keys unloaded.
        """
        wanted = {_key(base, adapter) for base, adapter in keep}
        with self._lock:
            dropped = [key for key in self._entries if key not in wanted]
            for key in dropped:
                self._unload(key)
        return dropped

    def _unload(self, key: EngineKey) -> bool:
        entry = self._entries.pop(key, None)
        if entry is None:
            return False
        if not entry.engine.retire():
            self._retiring.append(entry)
        return True

    def _reap(self) -> None:
        self._retiring = [entry for entry in self._retiring if not entry.engine.closed]

    def _held_mb(self) -> float:
        held = list(self._entries.values()) + self._retiring
        return sum(entry.cost_mb for entry in held)

    def stats(self) -> list[dict[str, Any]]:
        """Describe each loaded engine: files, memory, use and load, most recently used first;
        then the unloaded engines still finishing their requests ("retiring": true)."""
        with self._lock:
            self._reap()
            entries = list(reversed(self._entries.values()))
            retiring = list(self._retiring)
        found = [_entry_stats(entry) | {"retiring": False} for entry in entries]
        return found + [_entry_stats(entry) | {"retiring": True} for entry in retiring]

    def close(self, timeout: float | None = 30.0) -> None:
        """Close every engine, waiting up to `timeout` seconds for each running generation."""
        with self._lock:
            entries = list(self._entries.values()) + self._retiring
            self._entries.clear()
            self._retiring = []
        for entry in entries:
            if not entry.engine.close(timeout):
                logger.warning(
                    "engine %s still generating after %s s; it frees itself when done",
                    entry.engine.describe(),
                    timeout,
                )


def _key(base_gguf: Path, adapter_gguf: Path | None) -> EngineKey:
    return (
        str(Path(base_gguf).resolve()),
        str(Path(adapter_gguf).resolve()) if adapter_gguf else None,
    )


def _describe(key: EngineKey) -> str:
    return key[0] if key[1] is None else f"{key[0]} with adapter {key[1]}"


def _entry_stats(entry: _Entry) -> dict[str, Any]:
    engine = entry.engine
    return {
        "base": str(engine.base_gguf),
        "adapter": str(engine.adapter_gguf) if engine.adapter_gguf else None,
        "estimated_mb": round(entry.estimated_mb, 1),
        "measured_mb": round(entry.measured_mb, 1),
        "loaded_at": _iso(entry.loaded_at),
        "last_used": _iso(entry.last_used),
        "requests": engine.requests,
        "tokens_out": engine.tokens_out,
        "busy": engine.busy,
        "waiting": engine.waiting,
    }


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=UTC).isoformat(timespec="seconds")
