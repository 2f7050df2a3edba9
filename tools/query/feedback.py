"""The feedback loop: opt-in query logging per deployment, feedback on logged answers, and
logged queries as the source of the next dataset version.

Logging is off until set_query_logging turns it on for a deployment. The telemetry writer then
stores each answered query's conversation and answer with personal data redacted, under the
query_id the caller got with the answer. Ratings and corrections pick the rows worth training
on; `create_dataset_from_queries` writes them to a snapshot file in the workspace and prepares
it like any other file, recording where every row came from.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import urllib.parse
from collections import Counter
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any

from turing.server import access
from turing.server.registry import utc_now
from turing.tools import audit
from turing.tools.datasets import pii
from turing.tools.errors import InvalidInputError, NotFoundError

if TYPE_CHECKING:
    from turing.server.services import Services

logger = logging.getLogger(__name__)

SOURCE_PREFIX = "queries://"
RATINGS = {1: "good", -1: "bad"}
SOURCE_FILTERS = ("since", "min_rating", "only_corrected")
MAX_CORRECTION_CHARS = 32_000
MAX_LIST_LIMIT = 500
IDS_SHOWN = 20  # query ids a dataset's summary lists; its report keeps every one
SNAPSHOTS = "feedback"  # workspace folder of the files logged queries are prepared from
LOG_KEY = "_log"  # a telemetry row's query-log entry, inserted with the row
LOG_COLUMNS = ("id", "deployment", "version_id", "messages", "answer", "redactions", "created_at")
LOG_INSERT_SQL = (
    f"INSERT INTO query_log (row_id, {', '.join(LOG_COLUMNS)}) "
    f"VALUES ({', '.join('?' * (len(LOG_COLUMNS) + 1))})"
)


# --- switching logging on and off ----------------------------------------------------------


def set_query_logging(
    services: Services, deployment: str, enabled: bool, reason: str = ""
) -> dict[str, Any]:
    """Turn the query log of a deployment on or off; the change is kept in the audit trail.

    Raises:
        NotFoundError: No such deployment.
        InvalidInputError: `enabled` is not a boolean.
    """
    services.registry.get("deployments", deployment, "deployment")
    if not isinstance(enabled, bool):
        raise InvalidInputError(f"enabled={enabled!r}: give true or false")
    actor = audit.actor_name(access.current())
    row = {
        "deployment": deployment,
        "enabled": int(enabled),
        "updated_at": utc_now(),
        "updated_by": actor,
    }
    previous = services.registry.find("query_logging", deployment)
    action = "update" if previous else "insert"
    services.registry.write_many([(action, "query_logging", deployment, row)])
    audit.record(
        services,
        "query_logging_on" if enabled else "query_logging_off",
        deployment,
        reason,
        previous=bool(previous and previous["enabled"]),
    )
    logger.info("query logging of deployment %s turned %s", deployment, "on" if enabled else "off")
    return logging_status(services, deployment)


def logging_status(services: Services, deployment: str) -> dict[str, Any]:
    """Whether a deployment's queries are logged, who last changed it, and what is logged."""
    services.telemetry.flush()  # answers of a moment ago count
    row = services.registry.find("query_logging", deployment)
    sql = "SELECT count(*), count(rating), count(correction) FROM query_log WHERE deployment = ?"
    logged, rated, corrected = _read(services, sql, [deployment])[0]
    return {
        "deployment": deployment,
        "enabled": bool(row and row["enabled"]),
        "updated_at": row and row["updated_at"],
        "updated_by": row and row["updated_by"],
        "logged": logged,
        "rated": rated,
        "corrected": corrected,
    }


def _read(services: Services, sql: str, params: list[Any]) -> list[sqlite3.Row]:
    path = services.workspace.registry_path
    # A read-only connection of its own: WAL lets it read while the registry's writes go on.
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        conn.row_factory = sqlite3.Row
        return conn.execute(sql, params).fetchall()


def logging_enabled(services: Services, deployment: str | None) -> bool:
    """Whether a query answered now by `deployment` goes to the query log (off when unsure)."""
    if not deployment:
        return False
    try:
        row = services.registry.find("query_logging", deployment)
    except sqlite3.Error as exc:  # never store text when it is unclear the owner wants it
        logger.warning("could not read query logging of %s (%s); not logging", deployment, exc)
        return False
    return bool(row and row["enabled"])


# --- writing the log (on the telemetry writer's thread) ------------------------------------


def redact(text: str) -> tuple[str, list[str]]:
    """The text with personal data and secrets replaced by placeholders, and the kinds found."""
    matches = pii.find_pii(text)
    if not matches:
        return text, []
    return pii.redact_pii(text, matches), [match.type for match in matches]


def log_entry(
    query_id: str, row: dict[str, Any], messages: list[dict[str, Any]], answer: str
) -> dict[str, Any] | None:
    """The query-log entry of one telemetry row, redacted; None when redaction failed."""
    try:
        kinds: list[str] = []
        redacted = []
        for message in messages:
            content, found = redact(str(message.get("content") or ""))
            redacted.append({"role": message.get("role"), "content": content})
            kinds += found
        text, found = redact(answer)
    except Exception:  # without redaction nothing is stored; the telemetry row still is
        logger.exception("redacting query %s failed; its text is not logged", query_id)
        return None
    return {
        "id": query_id,
        "deployment": row["deployment"],
        "version_id": row["version_id"],
        "messages": json.dumps(redacted, ensure_ascii=False),
        "answer": text,
        "redactions": _kinds_text(kinds + found),
        "created_at": row["created_at"],
    }


def insert_log(conn: sqlite3.Connection, row_id: int | None, entry: dict[str, Any]) -> None:
    """Insert a query-log entry for the telemetry row just inserted as `row_id`."""
    conn.execute(LOG_INSERT_SQL, [row_id, *(entry.get(column) for column in LOG_COLUMNS)])


def _kinds_text(kinds: list[str]) -> str | None:
    return ",".join(sorted(set(kinds))) or None


# --- feedback ------------------------------------------------------------------------------


def record_feedback(
    services: Services, query_id: str, rating: int, correction: str | None = None
) -> dict[str, Any]:
    """Rate a logged answer (1 good, -1 bad), optionally with the answer it should have been.

    A second call replaces the earlier feedback. The correction is redacted like the log.

    Raises:
        InvalidInputError: A rating other than 1 or -1, or an empty or overlong correction.
        NotFoundError: No logged query has that id.
    """
    if isinstance(rating, bool) or rating not in RATINGS:
        raise InvalidInputError(f"rating={rating!r}: give 1 (a good answer) or -1 (a bad one)")
    corrected, kinds = (None, []) if correction is None else redact(_check_correction(correction))
    entry = find_logged(services, query_id)

    changes = {
        "rating": rating,
        "correction": corrected,
        "redactions": _kinds_text(_split_kinds(entry["redactions"]) + kinds),
        "feedback_at": utc_now(),
        "feedback_by": audit.actor_name(access.current()),
    }
    services.registry.update("query_log", entry["row_id"], changes)
    logger.info("feedback on query %s of %s: %s", query_id, entry["deployment"], RATINGS[rating])
    replaced = None
    if entry["rating"] is not None:
        replaced = {"rating": entry["rating"], "correction": entry["correction"]}
    # The feedback alone: the logged conversation is for operators (list_logged_queries),
    # while any caller holding a query id may rate it.
    described = _describe({**entry, **changes})
    shown = ("query_id", "deployment", "version_id", "redactions", "rating", "correction")
    return {**{key: described[key] for key in shown}, "replaced": replaced}


def _check_correction(correction: str) -> str:
    if not isinstance(correction, str) or not correction.strip():
        raise InvalidInputError(
            "correction is empty: give the answer the model should have given, or leave it out"
        )
    if len(correction) > MAX_CORRECTION_CHARS:
        raise InvalidInputError(
            f"correction has {len(correction)} characters: at most {MAX_CORRECTION_CHARS}"
        )
    try:
        correction.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInputError(
            f"correction has a lone surrogate at character {exc.start}; send UTF-8 text"
        ) from None
    control = next(
        (i for i, char in enumerate(correction) if char not in "\n\r\t" and not char.isprintable()),
        None,
    )
    if control is not None:
        raise InvalidInputError(
            f"correction has the control character {correction[control]!r} at character "
            f"{control}; send plain text (line breaks and tabs are fine)"
        )
    return correction.strip()


def find_logged(services: Services, query_id: str) -> dict[str, Any]:
    """The query-log entry of a query id, waiting for the telemetry writer if it is queued.

    Raises:
        InvalidInputError: query_id is not a non-empty string.
        NotFoundError: No logged query has that id.
    """
    if not isinstance(query_id, str) or not query_id.strip():
        raise InvalidInputError(
            f"query_id={query_id!r}: give the query_id that query_model returned"
        )
    found = services.registry.rows("query_log", "id = ?", [query_id])
    if not found:
        services.telemetry.flush()  # an answer a moment old may still wait in the writer's queue
        found = services.registry.rows("query_log", "id = ?", [query_id])
    deployment = services.registry.find("deployments", found[0]["deployment"]) if found else None
    if deployment is None or not access.visible(deployment.get("project")):
        raise NotFoundError(
            f"no logged query {query_id!r}: only queries a deployment answered while its query "
            "logging was on are kept (set_query_logging); query_model says logged: true for them"
        )
    return found[0]


def list_logged_queries(
    services: Services, deployment: str, since: str | None = None, limit: int = 50
) -> dict[str, Any]:
    """A deployment's logging status and its logged queries, newest first (redacted text).

    Raises:
        NotFoundError: No such deployment.
        InvalidInputError: A bad `since`, or a limit outside 1..MAX_LIST_LIMIT.
    """
    from turing.tools.query.traffic_metrics import parse_since

    services.registry.get("deployments", deployment, "deployment")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIST_LIMIT:
        raise InvalidInputError(f"limit={limit!r}: give a whole number from 1 to {MAX_LIST_LIMIT}")
    start = parse_since(since)
    status = logging_status(services, deployment)
    where, params = "deployment = ?", [deployment]
    if start is not None:
        where, params = where + " AND created_at >= ?", [*params, start]
    matching = _read(services, f"SELECT count(*) FROM query_log WHERE {where}", params)[0][0]
    newest = _read(
        services,
        f"SELECT * FROM query_log WHERE {where} ORDER BY created_at DESC, row_id DESC LIMIT ?",
        [*params, limit],
    )
    return {
        **status,
        "since": start,
        "matching": matching,
        "queries": [
            _describe({**entry, "messages": json.loads(entry["messages"])})
            for entry in map(dict, newest)
        ],
    }


def _describe(entry: dict[str, Any]) -> dict[str, Any]:
    return {
        "query_id": entry["id"],
        "deployment": entry["deployment"],
        "version_id": entry["version_id"],
        "created_at": entry["created_at"],
        "messages": entry["messages"],
        "answer": entry["answer"],
        "redactions": _split_kinds(entry["redactions"]),
        "rating": entry["rating"],
        "correction": entry["correction"],
        "feedback_at": entry.get("feedback_at"),
        "feedback_by": entry.get("feedback_by"),
    }


def _split_kinds(text: str | None) -> list[str]:
    return text.split(",") if text else []


# --- logged queries as a dataset source ----------------------------------------------------


def is_query_source(path: str) -> bool:
    """Whether prepare_dataset's path names logged queries (queries://<deployment>)."""
    return isinstance(path, str) and path.startswith(SOURCE_PREFIX)


def create_dataset_from_queries(
    services: Services, source: str, base_model: str, **options: Any
) -> dict[str, Any]:
    """Prepare a deployment's logged queries with feedback into a stored dataset version.

    `source` is "queries://<deployment>", optionally with filters written as a URL's query
    (see `parse_source`). Each chosen query becomes one conversation: what was asked, then its
    correction, or its answer when it has none. The rows are written to a snapshot file in the
    workspace (one record per query, its query_id as the record's id) and prepared like any
    other file, so the same cleaning, split and tokenizer checks apply; the report's
    "provenance" names the deployment, window, filter, query ids and redacted kinds.

    Raises:
        NotFoundError: No such deployment.
        InvalidInputError: A bad source or filter, nothing logged, or no query matching.
    """
    from turing.tools.datasets.store import create_dataset

    deployment, start, min_rating, only_corrected = parse_source(source)
    services.registry.get("deployments", deployment, "deployment")

    services.telemetry.flush()  # queries answered just now are part of the window
    chosen = _choose(services, deployment, start, min_rating, only_corrected)
    if not chosen:
        raise InvalidInputError(_nothing_chosen(services, deployment, start, source))
    records = [_record(entry) for entry in chosen]
    snapshot = _write_snapshot(services, deployment, records)
    provenance = _provenance(source, deployment, start, min_rating, only_corrected, chosen)
    logger.info(
        "preparing %d logged queries of deployment %s from %s", len(chosen), deployment, snapshot
    )
    return create_dataset(services, str(snapshot), base_model, provenance=provenance, **options)


def parse_source(source: str) -> tuple[str, str | None, int, bool]:
    """(deployment, window start as stored, min_rating, only_corrected) of a queries:// source.

    Filters: since (ISO 8601, or a duration back from now such as "7d"), min_rating (1, the
    default: answers rated good and corrected ones; 0: also answers nobody rated) and
    only_corrected (true: corrected answers only), e.g.
    "queries://support-bot?since=7d&min_rating=0".

    Raises:
        InvalidInputError: No deployment named, or a filter unknown, repeated or out of range.
    """
    from turing.tools.query.traffic_metrics import parse_since

    parts = urllib.parse.urlsplit(source)
    deployment = urllib.parse.unquote(parts.netloc)
    if not is_query_source(source) or not deployment or parts.path or parts.fragment:
        raise InvalidInputError(
            f"path={source!r}: name one deployment after {SOURCE_PREFIX}, optionally with "
            f"filters, e.g. '{SOURCE_PREFIX}support-bot?since=7d&min_rating=0'"
        )
    filters: dict[str, str] = {}
    for pair in parts.query.split("&") if parts.query else ():
        key, _, value = pair.partition("=")
        key, value = urllib.parse.unquote(key), urllib.parse.unquote(value)
        if key not in SOURCE_FILTERS:
            raise InvalidInputError(
                f"path={source!r}: filter {key!r} is unknown; allowed: {', '.join(SOURCE_FILTERS)}"
            )
        if key in filters:
            raise InvalidInputError(f"path={source!r}: filter {key!r} is given twice")
        filters[key] = value
    return (
        deployment,
        parse_since(filters.get("since")),
        _min_rating(filters.get("min_rating", "1")),
        _flag("only_corrected", filters.get("only_corrected", "false")),
    )


def _min_rating(text: str) -> int:
    if text not in ("0", "1"):
        raise InvalidInputError(
            f"min_rating={text!r}: give 1 (answers rated good, and corrections) or 0 (also "
            "answers nobody rated); answers rated bad count only through their correction"
        )
    return int(text)


def _flag(name: str, text: str) -> bool:
    if text.lower() not in ("true", "false"):
        raise InvalidInputError(f"{name}={text!r}: give true or false")
    return text.lower() == "true"


def _choose(
    services: Services,
    deployment: str,
    start: str | None,
    min_rating: int,
    only_corrected: bool,
) -> list[dict[str, Any]]:
    """Logged queries with a correction, or rated at least min_rating (unrated counts as 0)."""
    where = "deployment = ? AND trim(coalesce(correction, answer, '')) != ''"
    params: list[Any] = [deployment]
    if start is not None:
        where, params = where + " AND created_at >= ?", [*params, start]
    if only_corrected:
        where += " AND correction IS NOT NULL"
    else:
        where += " AND (correction IS NOT NULL OR coalesce(rating, 0) >= ?)"
        params.append(min_rating)
    return services.registry.rows("query_log", where, params, order_by="created_at, row_id")


def _nothing_chosen(services: Services, deployment: str, start: str | None, source: str) -> str:
    status = logging_status(services, deployment)
    if status["logged"] == 0:
        state = "on" if status["enabled"] else "off"
        return (
            f"{source}: deployment {deployment!r} has no logged query (query logging is {state}); "
            f"turn it on with set_query_logging(deployment={deployment!r}, enabled=true), let it "
            "answer queries and rate or correct them with record_feedback"
        )
    window = f" since {start}" if start else ""
    return (
        f"{source}: no logged query{window} matches the filter; deployment {deployment!r} has "
        f"{status['logged']} logged queries, {status['rated']} rated and {status['corrected']} "
        "corrected. Rate answers (rating 1) or correct them with record_feedback, widen since, "
        "or pass min_rating=0 to take unrated answers too"
    )


def _record(entry: dict[str, Any]) -> dict[str, Any]:
    answer = entry["correction"] if entry["correction"] is not None else entry["answer"]
    return {"id": entry["id"], "messages": [*entry["messages"], _assistant(answer)]}


def _assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def _write_snapshot(services: Services, deployment: str, records: list[dict[str, Any]]) -> Path:
    """The records as a read-only JSON lines file named by its content, written once."""
    data = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records).encode()
    digest = hashlib.sha256(data).hexdigest()[:16]
    path = services.workspace.folder(SNAPSHOTS) / f"{deployment}-{digest}.jsonl"
    if path.exists():
        return path
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(data)
    temporary.chmod(0o444)
    os.replace(temporary, path)
    return path


def _provenance(
    source: str,
    deployment: str,
    start: str | None,
    min_rating: int,
    only_corrected: bool,
    chosen: list[dict[str, Any]],
) -> dict[str, Any]:
    redactions: Counter[str] = Counter()
    for entry in chosen:
        redactions.update(_split_kinds(entry["redactions"]))
    corrected = sum(1 for entry in chosen if entry["correction"] is not None)
    rated_good = sum(1 for entry in chosen if entry["correction"] is None and entry["rating"] == 1)
    return {
        "source": source,
        "deployment": deployment,
        "window": {
            "since": start,
            "first_query_at": chosen[0]["created_at"],
            "last_query_at": chosen[-1]["created_at"],
        },
        "filter": {"min_rating": min_rating, "only_corrected": only_corrected},
        "count": len(chosen),
        "corrected": corrected,
        "rated_good": rated_good,
        "unrated": len(chosen) - corrected - rated_good,
        "versions": dict(Counter(entry["version_id"] for entry in chosen).most_common()),
        "redactions": dict(sorted(redactions.items())),
        "query_ids": [entry["id"] for entry in chosen],
    }


def provenance_summary(provenance: dict[str, Any] | None) -> dict[str, Any] | None:
    """A dataset's provenance with its query ids cut to the first IDS_SHOWN (the report has all)."""
    if not provenance:
        return None
    ids = provenance.get("query_ids") or []
    return {**provenance, "query_ids": ids[:IDS_SHOWN], "query_ids_total": len(ids)}
