"""Query telemetry: one row per request, queued on the reply path and written in batches.

`Telemetry.record` only queues what happened; a background thread prices each request at its
deployment's pricing, flags personal data the answer added to the prompt, and inserts a batch of
rows in one transaction. Rows it cannot write go to a spill file that the next start writes.
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import queue
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from turing.server.registry import utc_now
from turing.tools.errors import InvalidInputError
from turing.tools.query import feedback
from turing.tools.settings import number_setting

if TYPE_CHECKING:
    from turing.server.services import Services
    from turing.tools.deploy.versions import ModelTarget

logger = logging.getLogger(__name__)

TRANSPORTS = ("mcp", "http")
FLUSH_INTERVAL_S = 0.2  # how long the writer gathers rows before a batch is written
FLUSH_INTERVAL_ENV = "TURING_TELEMETRY_FLUSH_S"
MAX_FLUSH_INTERVAL_S = 3600.0
BATCH_ROWS = 500
# Waits between attempts to write a batch; after the last one it goes to the spill file.
RETRY_DELAYS_S = (0.2, 1.0, 3.0)
BUSY_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 120.0
MAX_PRICE_PER_1K = 1000.0
MAX_MODEL_NAME_CHARS = 200
PRICING_FIELDS = ("price_per_1k_tokens", "replaced_model", "replaced_price_per_1k_tokens")
COLUMNS = (
    "deployment",
    "revision",
    "version_id",
    "latency_ms",
    "time_to_first_token_ms",
    "prompt_tokens",
    "completion_tokens",
    "error",
    "error_type",
    "shadow",
    "routing_key",
    "transport",
    "cost",
    "replaced_cost",
    "pii",
    "created_at",
)
INSERT_SQL = f"INSERT INTO queries ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"


class CompletionLike(Protocol):
    """What telemetry reads of an answer: an engine's Completion, or a finished stream's."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    time_to_first_token_ms: float


@dataclass
class _Request:
    """One recorded request, before it is priced and scanned."""

    row: dict[str, Any]
    prompt: str
    answer: str | None
    log: tuple[str, list[dict[str, Any]]] | None = None  # (query_id, messages) to log the text


@dataclass
class _Marker:
    """Set once every request queued before it is written; `stop` ends the writer."""

    done: threading.Event = field(default_factory=threading.Event)
    stop: bool = False


class Telemetry:
    """The query rows of one registry, written by a background thread.

    Args:
        registry_path: The registry database (already migrated); the writer opens its own
            connection, so a batch never holds the registry's lock while a request reads it.
        spill_path: Where rows that could not be written are kept until the next start.
        flush_interval_s: How long the writer gathers rows before writing a batch; by default
            TURING_TELEMETRY_FLUSH_S, else FLUSH_INTERVAL_S.
        busy_timeout_s: How long one write waits for another writer's lock.
        retry_delays_s: The waits between attempts at a batch that failed.
    """

    def __init__(
        self,
        registry_path: Path,
        spill_path: Path | None = None,
        *,
        flush_interval_s: float | None = None,
        busy_timeout_s: float = BUSY_TIMEOUT_S,
        retry_delays_s: Sequence[float] = RETRY_DELAYS_S,
    ) -> None:
        self.registry_path = registry_path
        self.spill_path = spill_path
        self._flush_interval_s = flush_interval() if flush_interval_s is None else flush_interval_s
        self._retry_delays_s = tuple(retry_delays_s)
        self._busy_timeout_s = busy_timeout_s
        self._conn: sqlite3.Connection | None = self._connect()
        self._queue: queue.SimpleQueue[_Request | _Marker] = queue.SimpleQueue()
        self._state = threading.Lock()  # orders record() against close()
        self._write_lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="turing-telemetry", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    def record(
        self,
        target: ModelTarget,
        completion: CompletionLike | None,
        *,
        latency_ms: float,
        error: BaseException | str | None = None,
        messages: list[dict[str, Any]] | None = None,
        answer: str | None = None,
        routing_key_digest: str | None = None,
        shadow: bool = False,
        transport: str = "mcp",
        log_id: str | None = None,
    ) -> None:
        """Queue one request's row; returns at once, the writer thread does the rest.

        Args:
            target: What answered: its deployment, revision and version_id (or name) are kept.
            completion: The answer, or None when there was none; given together with an error,
                the partial answer of a stream that failed.
            latency_ms: Wall time of the whole request in milliseconds.
            error: The failure, if the request failed.
            messages: The conversation asked; personal data the answer repeats from it is not
                flagged. Without it every kind of personal data in the answer is.
            answer: The text the caller received; by default the completion's text.
            routing_key_digest: The digest of the caller's sticky key, never the key itself.
            shadow: A mirrored request whose answer reached nobody.
            transport: How the request came: "mcp" or "http".
            log_id: The query_id under which the conversation and answer also go to the query
                log, PII-redacted (the deployment's query logging is on); None keeps no text.

        Raises:
            ValueError: An unknown transport.
        """
        if transport not in TRANSPORTS:
            raise ValueError(f"transport={transport!r}: allowed are {', '.join(TRANSPORTS)}")
        request = _Request(
            row={
                "deployment": target.deployment,
                "revision": target.revision,
                "version_id": target.version_id or target.name,
                "latency_ms": float(latency_ms),
                "time_to_first_token_ms": _attribute(completion, "time_to_first_token_ms"),
                "prompt_tokens": _attribute(completion, "prompt_tokens"),
                "completion_tokens": _attribute(completion, "completion_tokens"),
                "error": None if error is None else str(error) or type(error).__name__,
                "error_type": type(error).__name__ if isinstance(error, BaseException) else None,
                "shadow": int(shadow),
                "routing_key": routing_key_digest,
                "transport": transport,
                "created_at": utc_now(),
            },
            prompt=_prompt_text(messages),
            answer=answer if answer is not None else _attribute(completion, "text"),
            log=(log_id, list(messages or ())) if log_id else None,
        )
        with self._state:
            if not self._closed:
                self._queue.put(request)
                return
        # After close (a late shadow request at exit): write it here rather than lose it.
        self._write([request])

    def flush(self, timeout_s: float = CLOSE_TIMEOUT_S) -> bool:
        """Wait until every row recorded so far is written; False if that took over timeout_s."""
        with self._state:
            if self._closed:
                return True
            marker = _Marker()
            self._queue.put(marker)
        return marker.done.wait(timeout_s)

    def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """Write every queued row, stop the writer and close its connection (idempotent)."""
        with self._state:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_Marker(stop=True))
        atexit.unregister(self.close)
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            logger.error(
                "telemetry writer still busy after %.0f s; rows may be unwritten", timeout_s
            )
            return
        with self._write_lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # --- the writer thread -----------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._replay_spill()
        except Exception:  # kept for the next start; today's rows still get written
            logger.exception("could not replay %s", self.spill_path)
        while True:
            requests, markers = self._gather()
            try:
                if requests:
                    self._write(requests)
            except Exception:  # the writer must outlive any one batch
                logger.exception("telemetry batch of %d rows failed; spilling it", len(requests))
                self._spill([request.row for request in requests])
            for marker in markers:
                marker.done.set()
                if marker.stop:
                    return

    def _gather(self) -> tuple[list[_Request], list[_Marker]]:
        """A batch: what arrives within the flush interval after the first item, up to a marker."""
        item = self._queue.get()
        deadline = time.monotonic() + self._flush_interval_s
        requests: list[_Request] = []
        while True:
            if isinstance(item, _Marker):
                return requests, [item]
            requests.append(item)
            remaining = deadline - time.monotonic()
            if len(requests) >= BATCH_ROWS or remaining <= 0:
                return requests, []
            try:
                item = self._queue.get(timeout=remaining)
            except queue.Empty:
                return requests, []

    def _write(self, requests: list[_Request]) -> None:
        """Price, scan and insert a batch; retried, then spilled, so no row is dropped."""
        with self._write_lock:
            rows = self._complete_rows(requests)
            for attempt, delay in enumerate((*self._retry_delays_s, None), start=1):
                try:
                    self._insert(rows)
                    return
                except sqlite3.Error as exc:
                    if delay is None:
                        logger.error(
                            "could not write %d telemetry rows after %d attempts (%s); keeping "
                            "them in %s",
                            len(rows),
                            attempt,
                            exc,
                            self.spill_path,
                        )
                        self._spill(rows)
                        return
                    logger.warning("telemetry write failed (%s); retrying in %.1f s", exc, delay)
                    time.sleep(delay)

    def _complete_rows(self, requests: list[_Request]) -> list[dict[str, Any]]:
        prices = self._prices({request.row["deployment"] for request in requests})
        rows = []
        for request in requests:
            row = dict(request.row)
            tokens = (row["prompt_tokens"] or 0) + (row["completion_tokens"] or 0)
            price, replaced_price = prices.get(row["deployment"], (0.0, 0.0))
            row["cost"] = tokens / 1000 * price
            # A shadow answer reached nobody, so it stood in for no call to the replaced model.
            row["replaced_cost"] = 0.0 if row["shadow"] else tokens / 1000 * replaced_price
            row["pii"] = _pii(request.answer, request.prompt)
            if request.log is not None:
                query_id, messages = request.log
                row[feedback.LOG_KEY] = feedback.log_entry(
                    query_id, row, messages, request.answer or ""
                )
            rows.append(row)
        return rows

    def _prices(self, deployments: set[str | None]) -> dict[str, tuple[float, float]]:
        names = sorted(name for name in deployments if name)
        if not names:
            return {}
        try:
            with self._connection() as conn:
                found = conn.execute(
                    "SELECT deployment, price_per_1k_tokens, replaced_price_per_1k_tokens "
                    f"FROM pricing WHERE deployment IN ({', '.join('?' * len(names))})",
                    names,
                ).fetchall()
        except sqlite3.Error as exc:
            logger.warning("could not read pricing (%s); costs of this batch are 0", exc)
            return {}
        return {name: (price or 0.0, replaced or 0.0) for name, price, replaced in found}

    def _insert(self, rows: list[dict[str, Any]]) -> None:
        values = [[row.get(column) for column in COLUMNS] for row in rows]
        logged = [row.get(feedback.LOG_KEY) for row in rows]
        with self._connection() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                if any(logged):
                    # A query-log entry needs its row's number, so such a batch goes row by row.
                    for row_values, entry in zip(values, logged, strict=True):
                        row_id = conn.execute(INSERT_SQL, row_values).lastrowid
                        if entry:
                            feedback.insert_log(conn, row_id, entry)
                else:
                    conn.executemany(INSERT_SQL, values)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(
            self.registry_path,
            check_same_thread=False,
            timeout=self._busy_timeout_s,
            isolation_level=None,
        )

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        """The writer's connection, or after close a fresh one for a late row."""
        if self._conn is not None:
            yield self._conn
            return
        conn = self._connect()
        try:
            yield conn
        finally:
            conn.close()

    def _spill(self, rows: list[dict[str, Any]]) -> None:
        if self.spill_path is None:
            logger.error("no spill file configured: %d telemetry rows are lost", len(rows))
            return
        with self.spill_path.open("a", encoding="utf-8") as spill:
            spill.writelines(json.dumps(row) + "\n" for row in rows)

    def _replay_spill(self) -> None:
        """Write the rows a previous process could not, then remove the spill file."""
        if self.spill_path is None or not self.spill_path.exists():
            return
        rows = []
        for number, line in enumerate(self.spill_path.read_text("utf-8").splitlines(), 1):
            try:
                rows.append(json.loads(line))
            except ValueError:  # a line cut short when a process died while spilling
                logger.warning("skipping unreadable line %d of %s", number, self.spill_path)
        try:
            with self._write_lock:
                self._insert(rows)
        except sqlite3.Error as exc:
            logger.error("could not write %d spilled telemetry rows yet: %s", len(rows), exc)
            return
        self.spill_path.unlink()
        logger.info("wrote %d telemetry rows kept in %s", len(rows), self.spill_path)


def flush_interval() -> float:
    """Seconds the writer gathers rows before a batch: TURING_TELEMETRY_FLUSH_S, else 0.2.

    Raises:
        InvalidInputError: The setting is not a number from 0 to MAX_FLUSH_INTERVAL_S.
    """
    return number_setting(
        FLUSH_INTERVAL_ENV, FLUSH_INTERVAL_S, minimum=0.0, maximum=MAX_FLUSH_INTERVAL_S
    )


# --- pricing ------------------------------------------------------------------------------


def set_pricing(
    services: Services,
    deployment: str,
    price_per_1k_tokens: float,
    replaced_model: str | None = None,
    replaced_price_per_1k_tokens: float = 0.0,
    reason: str = "",
    actor: str = "",
) -> dict[str, Any]:
    """Set what a deployment's tokens cost and what the model it replaces would have cost.

    Requests recorded before the change keep the prices they were recorded at. The change is
    kept in the audit trail.

    Raises:
        NotFoundError: No such deployment.
        InvalidInputError: A price that is negative, not finite or over MAX_PRICE_PER_1K, or a
            replaced price without the replaced model's name.
    """
    from turing.tools import audit

    services.registry.get("deployments", deployment, "deployment")
    price = _check_price("price_per_1k_tokens", price_per_1k_tokens)
    replaced_price = _check_price("replaced_price_per_1k_tokens", replaced_price_per_1k_tokens)
    name = (replaced_model or "").strip() or None
    if name is None and replaced_price > 0:
        raise InvalidInputError(
            "replaced_model is empty: name the foundation model whose price "
            f"replaced_price_per_1k_tokens={replaced_price} is (e.g. 'gpt-4o-mini')"
        )
    if name is not None and len(name) > MAX_MODEL_NAME_CHARS:
        raise InvalidInputError(
            f"replaced_model has {len(name)} characters: at most {MAX_MODEL_NAME_CHARS}"
        )

    # Rows recorded so far are priced at the old prices, the next ones at the new.
    services.telemetry.flush()
    previous = services.registry.find("pricing", deployment)
    row = {
        "deployment": deployment,
        "price_per_1k_tokens": price,
        "replaced_model": name,
        "replaced_price_per_1k_tokens": replaced_price,
        "updated_at": utc_now(),
    }
    services.registry.write_many([("update" if previous else "insert", "pricing", deployment, row)])
    audit.record(
        services,
        "set_pricing",
        deployment,
        reason,
        actor=actor,
        pricing={key: row[key] for key in PRICING_FIELDS},
        previous={key: previous[key] for key in PRICING_FIELDS} if previous else None,
    )
    return get_pricing(services, deployment)


def get_pricing(services: Services, deployment: str | None) -> dict[str, Any]:
    """A deployment's prices, with "configured": False (and all 0) when none were set."""
    row = services.registry.find("pricing", deployment) if deployment else None
    if row is None:
        return {
            "price_per_1k_tokens": 0.0,
            "replaced_model": None,
            "replaced_price_per_1k_tokens": 0.0,
            "configured": False,
            "note": "pricing not configured: costs and savings are 0; set them with set_pricing",
        }
    priced = {key: row[key] for key in PRICING_FIELDS}
    return {**priced, "configured": True, "updated_at": row["updated_at"]}


def _check_price(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInputError(f"{name}={value!r}: give a number, e.g. 0.002")
    if not math.isfinite(value) or not 0 <= value <= MAX_PRICE_PER_1K:
        raise InvalidInputError(f"{name}={value}: must be between 0 and {MAX_PRICE_PER_1K:g}")
    return float(value)


# --- row helpers --------------------------------------------------------------------------


def _attribute(completion: CompletionLike | None, name: str) -> Any:
    return getattr(completion, name, None) if completion is not None else None


def _prompt_text(messages: list[dict[str, Any]] | None) -> str:
    if not messages:
        return ""
    return "\n".join(str(message.get("content") or "") for message in messages)


def _pii(answer: str | None, prompt: str) -> str | None:
    """The kinds of personal data the answer holds and the prompt did not, comma-separated."""
    if not answer:
        return None
    from turing.tools.evals.safety import emitted_pii

    try:
        kinds = emitted_pii(answer, prompt)
    except Exception:  # a scanner fault must not cost the row
        logger.exception("PII scan of an answer failed; recording the request without it")
        return None
    return ",".join(kinds) or None
