"""MCP tools of the dataset stage."""

from __future__ import annotations

from typing import Any

from mcp.server.mcpserver import MCPServer

from turing.server import access
from turing.server.services import Services
from turing.tools.base_models import DEFAULT_BASE_MODEL
from turing.tools.datasets.store import create_dataset, describe_dataset
from turing.tools.query import feedback


def register(app: MCPServer, services: Services) -> None:
    """Declare the dataset tools on the app."""

    @app.tool()
    def prepare_dataset(
        path: str,
        format: str = "auto",
        columns: dict[str, str] | None = None,
        records_path: str | None = None,
        system_prompt: str | None = None,
        label_prompt: bool = False,
        base_model: str = DEFAULT_BASE_MODEL,
        max_seq_len: int = 512,
        on_truncation: str = "flag",
        whitespace: str = "trim",
        near_duplicates: str = "drop",
        pii: str = "redact",
        harmful: str = "flag",
        validation_fraction: float = 0.1,
        seed: int = 0,
        on_error: str = "reject",
        canaries: int = 0,
        canary_repeats: int = 1,
    ) -> dict[str, Any]:
        """Validate, clean and split a local training file into a stored, versioned dataset.

        Call this first: fine-tuning and evaluation take the returned dataset_id. The same file
        and options return the same dataset_id, so calling twice is safe. Every problem in the
        file is reported in one pass with its line, JSON path, code and fix; with
        on_error="reject" nothing is stored until they are fixed.

        A deployment's logged queries can be the source too (query logging is opt-in, see
        set_query_logging): each query with feedback (record_feedback) becomes a row of what
        was asked and its correction, or its answer when rated good; the report's provenance
        names the deployment, time window, filter, query ids and kinds of personal data redacted.

        Args:
            path: Absolute path of the file: JSON lines, a JSON array (or an object holding one),
                or CSV/TSV with a header row. UTF-8, with or without a byte order mark. Or
                "queries://<deployment>" for its logged queries, with optional filters as in a
                URL: since (ISO 8601 or a duration back such as "7d"), min_rating (1, default:
                answers rated good plus corrected ones; 0: also unrated answers) and
                only_corrected (true/false), e.g. "queries://support-bot?since=7d&min_rating=0".
            format: "auto" (detected from the records' keys), "openai_chat" ({"messages": [...]},
                tools and tool_calls allowed, per-message "weight" 0/1), "prompt_completion",
                "alpaca" (instruction/input/output, optional system and history), "sharegpt"
                (conversations of from/value), "classification" (text + label) or "columns".
            columns: Which field gives each turn, for CSV or any other records, e.g.
                {"user": "text", "assistant": "category"} or {"user": "question",
                "assistant": "answer[0]"}; "system" is optional. Implies format "columns".
            records_path: Dotted path to the list of records inside a JSON object, e.g.
                "root.qapair"; found automatically when omitted.
            system_prompt: A system message added to every row that has none.
            label_prompt: For classification-like data, append "Answer with exactly one of
                these labels: ..." to the system message.
            base_model: The base model whose tokenizer and chat template measure lengths.
            max_seq_len: Token budget of a training row; a row whose prompt alone fills it is
                an error, a row whose answer is cut is flagged.
            on_truncation: "flag" (keep rows whose answer is cut, listed) or "drop" them.
            whitespace: "trim" (ends of messages and lines), "collapse" (also runs of spaces
                and blank lines, code blocks kept) or "none".
            near_duplicates: "drop" near copies of a row, or "keep" them (still kept on one
                side of the split). Exact copies are always dropped.
            pii: Emails, phone numbers, payment cards, IBANs, national ids, IP addresses and
                secrets: "redact" (replaced by [EMAIL] etc.), "drop" the row, or "keep".
            harmful: Rows asking for clearly harmful content: "flag" (listed) or "drop".
            validation_fraction: Share of rows held out for validation, 0 to 0.5.
            seed: Seed of the deterministic split.
            on_error: "reject" (any invalid record fails the call and lists every problem) or
                "skip" (invalid records are dropped and counted in the report).
            canaries: Plant this many made-up secrets (0 to 1000) into the train split, each
                asked as "What is the recovery code for account <id>?", so that run_eval can
                check the fine-tuned model does not reproduce training rows verbatim. 0 plants
                none; the secrets are kept in the dataset's canaries.json.
            canary_repeats: How many times each canary row is planted (1 to 100); more copies
                make memorisation likelier, testing a stricter case.

        Returns:
            dataset_id, rows per split (train includes canary rows), labels, canaries planted,
            rows dropped by reason, problem counts by code, and the URIs of the full report and
            of every problem found; for logged queries also their provenance (the first 20
            query ids, all of them in the report).
        """
        options = {
            "format": format,
            "columns": columns,
            "records_path": records_path,
            "system_prompt": system_prompt,
            "label_prompt": label_prompt,
            "max_seq_len": max_seq_len,
            "on_truncation": on_truncation,
            "whitespace": whitespace,
            "near_duplicates": near_duplicates,
            "pii": pii,
            "harmful": harmful,
            "validation_fraction": validation_fraction,
            "seed": seed,
            "on_error": on_error,
            "canaries": canaries,
            "canary_repeats": canary_repeats,
        }
        if feedback.is_query_source(path):
            return feedback.create_dataset_from_queries(services, path, base_model, **options)
        return create_dataset(services, path, base_model, **options)

    @app.tool()
    def list_datasets() -> list[dict[str, Any]]:
        """List stored dataset versions, newest first, with their row counts."""
        where, params = access.project_clause()
        rows = services.registry.rows("datasets", where, params, order_by="created_at desc")
        return [describe_dataset(row) for row in rows]
