"""Normalise one dataset record, whatever its format, into a single chat conversation.

A record (a JSONL line, a JSON array element or a CSV row as a dict) becomes {"messages": [...]}
plus "tools" when it has some, or a list of problems whose paths point into the record as written.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from functools import lru_cache
from itertools import islice, pairwise
from typing import Any

from turing.tools.datasets.problems import Code, Problem, define, show
from turing.tools.errors import InvalidInputError

FORMATS = ("openai_chat", "prompt_completion", "alpaca", "sharegpt", "classification", "columns")
ROLES = ("system", "user", "assistant", "tool")
COLUMN_ROLES = ("system", "user", "assistant")
# Enough records to outvote a few odd ones, few enough that detection costs nothing.
DETECT_SAMPLE = 100
QUOTED_ITEMS = 12

# --- problem codes -------------------------------------------------------------------------

RECORD_NOT_OBJECT = define(
    "record_not_object",
    "error",
    "write each record as an object with the fields of its format",
)
FORMAT_MISMATCH = define(
    "format_mismatch",
    "error",
    "choose the format the records are written in, or rename their keys to that format's",
)
MIXED_FORMAT_KEYS = define(
    "mixed_format_keys",
    "error",
    "keep the fields of one format in each record and remove the others",
)
# Bookkeeping keys that exports add to every record; ignored without a warning.
RECORD_METADATA_KEYS = frozenset({"id", "uuid", "source", "metadata"})

IGNORED_KEY = define(
    "ignored_key",
    "warning",
    "nothing to do if the key is metadata; it is not used for training",
)
MISSING_FIELD = define("missing_field", "error", "add the field with its text")
WRONG_TYPE = define("wrong_type", "error", "give the value the JSON type the message names")
EMPTY_CONVERSATION = define(
    "empty_conversation",
    "error",
    "add at least a user turn and the assistant's answer",
)
MESSAGE_NOT_OBJECT = define(
    "message_not_object",
    "error",
    'write each turn as an object such as {"role": "user", "content": "..."}',
)
UNKNOWN_ROLE = define("unknown_role", "error", "use one of the roles the message lists")
UNKNOWN_MESSAGE_KEY = define(
    "unknown_message_key",
    "error",
    "remove the key from the message, or rename it to one of the allowed keys",
)
LEGACY_FUNCTION_CALL = define(
    "legacy_function_call",
    "error",
    'rewrite it as "tool_calls": [{"type": "function", "function": {"name": ..., '
    '"arguments": "<JSON string>"}}]',
)
MISSING_CONTENT = define("missing_content", "error", "give the turn its text in content")
UNSUPPORTED_CONTENT_PART = define(
    "unsupported_content_part",
    "error",
    'keep only text parts {"type": "text", "text": "..."} in content',
)
EMPTY_CONTENT = define("empty_content", "error", "write the text of the turn, or drop the record")
MISPLACED_KEY = define(
    "misplaced_key",
    "error",
    "keep weight and tool_calls on assistant messages and tool_call_id on tool messages",
)
BAD_WEIGHT = define(
    "bad_weight",
    "error",
    "set weight to 0 (do not learn this turn) or 1 (learn it), or leave it out",
)
ALL_WEIGHTS_ZERO = define(
    "all_weights_zero",
    "error",
    "set weight 1 on at least one assistant message, or drop the record",
)
BAD_TOOL_CALL = define(
    "bad_tool_call",
    "error",
    'write each tool call as {"type": "function", "function": {"name": ..., '
    '"arguments": "<JSON string>"}}',
)
TOOL_ARGUMENTS_NOT_STRING = define(
    "tool_arguments_not_string",
    "error",
    "encode the arguments with json.dumps so that they are a JSON string",
)
TOOL_ARGUMENTS_INVALID_JSON = define(
    "tool_arguments_invalid_json",
    "error",
    "fix the arguments string so that it parses as JSON",
)
TOOL_CALL_ID_REUSED = define(
    "tool_call_id_reused",
    "error",
    "give every tool call of a conversation its own id",
)
BAD_TOOL_DEFINITION = define(
    "bad_tool_definition",
    "error",
    'describe each tool as {"type": "function", "function": {"name": ..., '
    '"description": ..., "parameters": {...}}}',
)
ORPHAN_TOOL_MESSAGE = define(
    "orphan_tool_message",
    "error",
    "put each tool message right after the assistant tool call it answers",
)
UNKNOWN_TOOL_CALL_ID = define(
    "unknown_tool_call_id",
    "error",
    "set tool_call_id to the id of the earlier tool call this message answers",
)
UNANSWERED_TOOL_CALL = define(
    "unanswered_tool_call",
    "warning",
    "add a tool message with the call's result before the next assistant turn",
)
MISPLACED_SYSTEM = define(
    "misplaced_system",
    "error",
    "keep a single system message, as the first turn",
)
NO_USER_TURN = define("no_user_turn", "error", "add the user turn that the assistant answers")
NO_ASSISTANT_TURN = define(
    "no_assistant_turn",
    "error",
    "add the assistant answer the model should learn as the last turn",
)
LAST_TURN_NOT_ASSISTANT = define(
    "last_turn_not_assistant",
    "error",
    "drop the trailing turns, or add the assistant's answer after them",
)
REPEATED_ROLE = define(
    "repeated_role",
    "error",
    "merge consecutive turns of one role; after a tool call, insert the tool result",
)
BAD_HISTORY_ENTRY = define(
    "bad_history_entry",
    "error",
    'write each history entry as a pair ["user text", "assistant text"]',
)
MISSING_COLUMN = define(
    "missing_column",
    "error",
    'map the role to a field the record has: a key, a dotted path or an index like "answer[0]"',
)
COLUMN_NOT_TEXT = define(
    "column_not_text",
    "error",
    'point the column at one text value, e.g. "answer[0]" for the first item of a list',
)

# --- format shapes -------------------------------------------------------------------------

# The keys that make a record look like each format, in the order detection tries them.
_SHAPES = (
    ("openai_chat", ("messages",)),
    ("sharegpt", ("conversations",)),
    ("alpaca", ("instruction", "output")),
    ("prompt_completion", ("prompt", "completion")),
    ("classification", ("text", "label")),
)
_REQUIRED_KEYS = dict(_SHAPES)
_ALLOWED_KEYS = {
    "openai_chat": frozenset({"messages", "tools", "parallel_tool_calls"}),
    "sharegpt": frozenset({"conversations", "system", "tools"}),
    "alpaca": frozenset({"instruction", "input", "output", "system", "history"}),
    "prompt_completion": frozenset({"prompt", "completion", "system"}),
    "classification": frozenset({"text", "label", "system"}),
}
# Keys that carry another format's content, and the format they belong to.
_CONTENT_KEYS = {
    "messages": "openai_chat",
    "conversations": "sharegpt",
    "instruction": "alpaca",
    "output": "alpaca",
    "prompt": "prompt_completion",
    "completion": "prompt_completion",
    "text": "classification",
}
_CONVERSATION_FORMATS = frozenset({"openai_chat", "sharegpt"})

_MESSAGE_KEYS = frozenset({"role", "content", "name", "weight", "tool_calls", "tool_call_id"})
_ALLOWED_MESSAGE_KEYS = "role, content, name, weight, tool_calls, tool_call_id"
# Names other formats give a role, to suggest the OpenAI one in the error.
_ROLE_ALIASES = {
    "human": "user",
    "bot": "assistant",
    "gpt": "assistant",
    "model": "assistant",
    "ai": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "developer": "system",
    "function": "tool",
    "observation": "tool",
    "ipython": "tool",
}
_SPEAKERS = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "bot": "assistant",
    "model": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "system": "system",
    "function_call": "function_call",
    "observation": "tool",
    "tool": "tool",
    "function": "tool",
}
_CHECKED_CONTENT_ROLES = ("system", "user", "assistant")

_COLUMN_PATH = re.compile(r"[^.\[\]]+(\[\d+\])*(\.[^.\[\]]+(\[\d+\])*)*")
_COLUMN_STEP = re.compile(r"[^.\[\]]+|\[\d+\]")


ColumnSpec = tuple[tuple[str, str, tuple[str | int, ...]], ...]


class _Turn:
    """One normalised message, the role used for order checks, and where it is in the record."""

    __slots__ = ("content_key", "message", "path", "role", "role_key")

    def __init__(
        self,
        role: str | None,
        message: dict[str, Any] | None,
        path: str,
        role_key: str,
        content_key: str,
    ) -> None:
        self.role = role  # None when the role is unknown and was already reported
        self.message = message
        self.path = path
        self.role_key = role_key
        self.content_key = content_key

    @property
    def role_path(self) -> str:
        return self.path + self.role_key

    @property
    def content_path(self) -> str:
        return self.path + self.content_key


class _Draft:
    """The conversation being built from one record, with every problem found so far."""

    __slots__ = ("line", "problems", "tools", "turns", "uses_tools", "where")

    def __init__(self, line: int) -> None:
        self.line = line
        self.problems: list[Problem] = []
        self.turns: list[_Turn] = []
        self.tools: list[dict[str, Any]] | None = None
        self.uses_tools = False
        self.where = "$"  # the path of the turn list, for problems of the whole conversation

    def add(self, code: Code, path: str, message: str) -> None:
        self.problems.append(code.at(self.line, path, message))

    def turn(
        self,
        role: str | None,
        message: dict[str, Any] | None,
        path: str,
        role_key: str = "",
        content_key: str = "",
    ) -> None:
        if role == "tool" or (message is not None and "tool_calls" in message):
            self.uses_tools = True
        self.turns.append(_Turn(role, message, path, role_key, content_key))


# --- public API ----------------------------------------------------------------------------


def detect_format(values: Sequence[Any]) -> str | None:
    """The format most of the first records look like, judged by their keys.

    "messages" means openai_chat, "conversations" sharegpt, "instruction" with "output" alpaca,
    "prompt" with "completion" prompt_completion, "text" with "label" classification. Records of
    no known shape do not vote; a tie goes to the format listed first in FORMATS.

    Args:
        values: Parsed records in file order; only the first DETECT_SAMPLE are looked at.

    Returns:
        A name from FORMATS, or None when no record has a known shape ("columns" is never
        detected: it needs a mapping of roles to fields).
    """
    votes = Counter(_shape_of(value) for value in islice(values, DETECT_SAMPLE))
    votes.pop(None, None)
    if not votes:
        return None
    return max(FORMATS, key=lambda name: votes[name])


def normalize_record(
    value: Any,
    format: str,
    line: int,
    *,
    columns: Mapping[str, str] | None = None,
) -> tuple[dict[str, Any] | None, list[Problem]]:
    """Turn one record into a normalised chat conversation, reporting every problem in it.

    Args:
        value: The parsed record: a JSON value, or a CSV row as a dict of header to cell.
        format: One of FORMATS.
        line: The physical line where the record starts, copied into every problem.
        columns: For format "columns" only: maps "user", "assistant" (both required) and
            optionally "system" to a field of the record: a key ("text"), a dotted path
            ("meta.question") or a list index ("answer[0]").

    Returns:
        ({"messages": [...]} plus "tools" when the record has some, or None when any problem is
        an error; every problem found, warnings included, with JSON paths into the record.)

    Raises:
        InvalidInputError: format is not one of FORMATS, or columns is missing or invalid for
            format "columns", or given for another format.
    """
    spec = _check_options(format, columns)
    if format == "openai_chat":
        plain = _plain_chat(value)
        if plain is not None:
            return plain, []

    draft = _Draft(line)
    if not isinstance(value, dict):
        draft.add(
            RECORD_NOT_OBJECT,
            "$",
            f"the record is {_describe(value)}; format {format} needs an object per record",
        )
        return None, draft.problems

    if spec is not None:
        _build_columns(value, spec, draft)
    elif _check_record_keys(value, format, draft):
        _BUILDERS[format](value, draft)
    if draft.turns:
        _check_conversation(draft)
    return _finish(draft)


_PLAIN_NEXT = {None: ("system", "user"), "system": ("user",), "user": ("assistant",)}
_PLAIN_NEXT["assistant"] = ("user",)


def _plain_chat(value: Any) -> dict[str, Any] | None:
    """The conversation of a faultless plain chat record, or None to take the full path.

    Most records are system/user/assistant turns with text and nothing else; checking just that
    shape is several times cheaper than the general checks, which give the same result on it.
    """
    if (
        not isinstance(value, dict)
        or len(value) != 1
        or not isinstance(value.get("messages"), list)
    ):
        return None
    messages = []
    previous = None
    for message in value["messages"]:
        if not isinstance(message, dict) or len(message) != 2:
            return None
        role, content = message.get("role"), message.get("content")
        if role not in _PLAIN_NEXT[previous] or not isinstance(content, str):
            return None
        if not content.strip(_INVISIBLE):
            return None
        messages.append({"role": role, "content": content})
        previous = role
    return {"messages": messages} if previous == "assistant" else None


def _check_options(format: str, columns: Mapping[str, str] | None) -> ColumnSpec | None:
    if format not in FORMATS:
        raise InvalidInputError(
            f"format {format!r} is not supported; allowed: {', '.join(FORMATS)}"
        )
    if format != "columns":
        if columns is not None:
            raise InvalidInputError(
                f"columns applies to format 'columns' only, not to {format!r}; leave it out"
            )
        return None

    if not isinstance(columns, Mapping) or not columns:
        raise InvalidInputError(
            'format "columns" needs columns: a mapping of roles to fields, e.g. '
            '{"user": "question", "assistant": "answer[0]"}'
        )
    bad = [f"{role!r}: {path!r}" for role, path in columns.items() if not isinstance(path, str)]
    if bad:
        raise InvalidInputError(f"columns must map roles to field names, got {', '.join(bad)}")
    return _compile_columns(tuple(columns.items()))


def _finish(draft: _Draft) -> tuple[dict[str, Any] | None, list[Problem]]:
    if any(problem.severity == "error" for problem in draft.problems):
        return None, draft.problems

    conversation: dict[str, Any] = {"messages": [turn.message for turn in draft.turns]}
    if draft.tools:
        conversation["tools"] = draft.tools
    return conversation, draft.problems


def _shape_of(value: Any) -> str | None:
    if not isinstance(value, dict):
        return None
    for name, keys in _SHAPES:
        if all(key in value for key in keys):
            return name
    return None


# --- keys of the record --------------------------------------------------------------------


def _check_record_keys(record: dict[str, Any], format: str, draft: _Draft) -> bool:
    """Report top-level keys the format does not read; False when none of its keys is there."""
    required = _REQUIRED_KEYS[format]
    if not any(key in record for key in required):
        draft.add(FORMAT_MISMATCH, "$", _mismatch_message(record, format, required))
        return False

    allowed = _ALLOWED_KEYS[format]
    for key in record:
        if key in allowed or key in RECORD_METADATA_KEYS:
            continue
        other = _CONTENT_KEYS.get(key)
        if other is not None and _clashes(record, format, other):
            draft.add(
                MIXED_FORMAT_KEYS,
                f"$.{key}",
                f"{key!r} ({other}) is next to {_quoted(required)} ({format}); "
                "a record must use the keys of one format",
            )
        else:
            draft.add(IGNORED_KEY, f"$.{key}", f"key {key!r} is not part of {format}; ignored")
    return True


def _clashes(record: dict[str, Any], format: str, other: str) -> bool:
    # A chat record next to any other content is ambiguous; a flat record only clashes with a
    # full second record (alpaca exports often carry a stray formatted "text" field).
    if format in _CONVERSATION_FORMATS or other in _CONVERSATION_FORMATS:
        return True
    return all(key in record for key in _REQUIRED_KEYS[other])


def _mismatch_message(record: dict[str, Any], format: str, required: tuple[str, ...]) -> str:
    present = _quoted(tuple(record)) or "no keys"
    message = f"format {format} needs {_quoted(required)}; this record has {present}"
    shape = _shape_of(record)
    if shape is not None:
        message += f" (it looks like {shape})"
    return message


# --- openai_chat ---------------------------------------------------------------------------


def _build_openai_chat(record: dict[str, Any], draft: _Draft) -> None:
    draft.where = "$.messages"
    if "tools" in record:
        draft.tools = _tool_definitions(record["tools"], "$.tools", draft)
    parallel = record.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        draft.add(
            WRONG_TYPE,
            "$.parallel_tool_calls",
            f"is {_describe(parallel)}; parallel_tool_calls must be true or false",
        )

    messages = record["messages"]
    if not isinstance(messages, list):
        draft.add(
            WRONG_TYPE,
            "$.messages",
            f"is {_describe(messages)}; messages must be a list of "
            '{"role": ..., "content": ...} objects',
        )
        return
    if not messages:
        draft.add(EMPTY_CONVERSATION, "$.messages", "is an empty list; it needs the turns")
        return
    for index, message in enumerate(messages):
        _add_openai_message(message, f"$.messages[{index}]", draft)


def _add_openai_message(message: Any, path: str, draft: _Draft) -> None:
    if not isinstance(message, dict):
        draft.add(
            MESSAGE_NOT_OBJECT,
            path,
            f"is {_describe(message)}; a message is an object with role and content",
        )
        draft.turn(None, None, path)
        return

    for key in message:
        if key not in _MESSAGE_KEYS:
            _report_message_key(key, path, draft)
    role = _openai_role(message, path, draft)
    calls = _openai_tool_calls(message, role, path, draft) if "tool_calls" in message else None
    out: dict[str, Any] = {"role": role, "content": _openai_content(message, role, path, draft)}

    if "name" in message:
        _copy_name(message["name"], out, path, draft)
    if calls is not None:
        out["tool_calls"] = calls
    if "tool_call_id" in message:
        _copy_tool_call_id(message["tool_call_id"], role, out, path, draft)
    if "weight" in message:
        _copy_weight(message["weight"], role, out, path, draft)
    draft.turn(role, out, path, ".role", ".content")


def _report_message_key(key: str, path: str, draft: _Draft) -> None:
    if key == "function_call":
        draft.add(
            LEGACY_FUNCTION_CALL,
            f"{path}.function_call",
            "function_call is the legacy form of a tool call and is not supported; use tool_calls",
        )
        return
    draft.add(
        UNKNOWN_MESSAGE_KEY,
        f"{path}.{key}",
        f"key {show(key)} is not allowed in a message; allowed: {_ALLOWED_MESSAGE_KEYS}",
    )


def _openai_role(message: dict[str, Any], path: str, draft: _Draft) -> str | None:
    """The message's role; for an unknown one, the role it most likely means, or None."""
    role = message.get("role")
    if role in ROLES:
        return str(role)

    allowed = ", ".join(ROLES)
    if "role" not in message:
        draft.add(UNKNOWN_ROLE, f"{path}.role", f"role is missing; allowed: {allowed}")
        return None
    suggestion = _suggest_role(role)
    text = f"{show(role)} is not a role; allowed: {allowed}"
    if suggestion is not None:
        text += f"; use {suggestion!r} instead"
    draft.add(UNKNOWN_ROLE, f"{path}.role", text)
    return suggestion


def _suggest_role(role: Any) -> str | None:
    if not isinstance(role, str):
        return None
    lowered = role.strip().lower()
    return lowered if lowered in ROLES else _ROLE_ALIASES.get(lowered)


def _openai_content(
    message: dict[str, Any], role: str | None, path: str, draft: _Draft
) -> str | None:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if content is None:
        # Only an assistant message that calls tools may leave its text out.
        if role == "assistant" and (message.get("tool_calls") or "function_call" in message):
            return None
        state = "is null" if "content" in message else "is missing"
        draft.add(
            MISSING_CONTENT,
            f"{path}.content",
            f"content {state}; every message needs text, except an assistant message "
            "with tool_calls",
        )
        return None
    if isinstance(content, list):
        return _join_text_parts(content, f"{path}.content", draft)

    draft.add(
        WRONG_TYPE,
        f"{path}.content",
        f"is {_describe(content)}; content must be a string or a list of text parts",
    )
    return None


def _join_text_parts(parts: list[Any], path: str, draft: _Draft) -> str:
    texts = []
    for index, part in enumerate(parts):
        if isinstance(part, dict) and part.get("type") == "text":
            text = part.get("text")
            if isinstance(text, str):
                texts.append(text)
                continue
        kind = part.get("type") if isinstance(part, dict) else part
        draft.add(
            UNSUPPORTED_CONTENT_PART,
            f"{path}[{index}]",
            f'part {show(kind)} is not supported; only {{"type": "text", "text": "..."}} parts are',
        )
    return "\n".join(texts)


def _copy_name(name: Any, out: dict[str, Any], path: str, draft: _Draft) -> None:
    if isinstance(name, str) and name:
        out["name"] = name
        return
    draft.add(WRONG_TYPE, f"{path}.name", f"is {_describe(name)}; name must be a non-empty string")


def _copy_tool_call_id(
    call_id: Any, role: str | None, out: dict[str, Any], path: str, draft: _Draft
) -> None:
    if role is not None and role != "tool":
        draft.add(
            MISPLACED_KEY,
            f"{path}.tool_call_id",
            f"tool_call_id is on a {role!r} message; only tool messages answer a tool call",
        )
    elif isinstance(call_id, str) and call_id:
        out["tool_call_id"] = call_id
    else:
        draft.add(
            WRONG_TYPE,
            f"{path}.tool_call_id",
            f"is {_describe(call_id)}; tool_call_id must be the id string of a tool call",
        )


def _copy_weight(
    weight: Any, role: str | None, out: dict[str, Any], path: str, draft: _Draft
) -> None:
    if role is not None and role != "assistant":
        draft.add(
            MISPLACED_KEY,
            f"{path}.weight",
            f"weight is on a {role!r} message; only assistant messages are learned or skipped",
        )
    # A bool is an int in Python, but true/false are not the 0/1 the format asks for.
    elif type(weight) is int and weight in (0, 1):
        out["weight"] = weight
    else:
        draft.add(BAD_WEIGHT, f"{path}.weight", f"weight {show(weight)} is not allowed; use 0 or 1")


# --- tool calls and tool definitions -------------------------------------------------------


def _openai_tool_calls(
    message: dict[str, Any], role: str | None, path: str, draft: _Draft
) -> list[dict[str, Any]] | None:
    """The message's tool calls; a wrong one is reported and kept as a stand-in for ids."""
    calls = message["tool_calls"]
    path = f"{path}.tool_calls"
    if role is not None and role != "assistant":
        draft.add(
            MISPLACED_KEY,
            path,
            f"tool_calls is on a {role!r} message; only assistant messages call tools",
        )
        return None
    if not isinstance(calls, list):
        draft.add(WRONG_TYPE, path, f"is {_describe(calls)}; tool_calls must be a list")
        return None
    if not calls:
        return None

    return [_openai_tool_call(call, f"{path}[{index}]", draft) for index, call in enumerate(calls)]


def _openai_tool_call(call: Any, path: str, draft: _Draft) -> dict[str, Any]:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict):
        draft.add(
            BAD_TOOL_CALL,
            path,
            f"tool call {show(call)} has no function object with a name and arguments",
        )
        return _tool_call(None, None, None)
    if call.get("type", "function") != "function":
        draft.add(
            BAD_TOOL_CALL,
            f"{path}.type",
            f"type {show(call['type'])} is not allowed; use 'function'",
        )

    call_id = call.get("id")
    if call_id is not None and not (isinstance(call_id, str) and call_id):
        draft.add(BAD_TOOL_CALL, f"{path}.id", f"id {show(call_id)} must be a non-empty string")
        call_id = None
    name = _tool_call_name(function.get("name"), f"{path}.function.name", draft)
    arguments = _tool_call_arguments(function, f"{path}.function.arguments", draft)
    return _tool_call(call_id, name, arguments)


def _tool_call(call_id: str | None, name: str | None, arguments: str | None) -> dict[str, Any]:
    # A call with an error keeps its place (name or arguments None) so that the tool message
    # answering it is not reported as well; the record is rejected, so it is never output.
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _tool_call_name(name: Any, path: str, draft: _Draft) -> str | None:
    if isinstance(name, str) and name.strip():
        return name
    draft.add(BAD_TOOL_CALL, path, f"function name {show(name)} must be a non-empty string")
    return None


def _tool_call_arguments(function: dict[str, Any], path: str, draft: _Draft) -> str | None:
    if "arguments" not in function:
        draft.add(BAD_TOOL_CALL, path, 'arguments is missing; use "{}" for a call without any')
        return None
    arguments = function["arguments"]
    if not isinstance(arguments, str):
        draft.add(
            TOOL_ARGUMENTS_NOT_STRING,
            path,
            f"arguments is {_describe(arguments)}; it must be a string holding JSON, "
            'e.g. "{\\"city\\": \\"Paris\\"}"',
        )
        return None
    return arguments if _is_json(arguments, path, draft) else None


def _is_json(text: str, path: str, draft: _Draft) -> bool:
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:
        draft.add(
            TOOL_ARGUMENTS_INVALID_JSON,
            path,
            f"arguments {show(text)} is not valid JSON: {exc.msg} at character {exc.pos}",
        )
        return False
    return True


def _tool_definitions(value: Any, path: str, draft: _Draft) -> list[dict[str, Any]] | None:
    """The record's tools in OpenAI form; a bare {"name", ...} function is wrapped."""
    if value is None:
        return None
    if not isinstance(value, list):
        draft.add(
            BAD_TOOL_DEFINITION,
            path,
            f"tools is {_describe(value)}; it must be a list of function definitions",
        )
        return None

    tools = []
    for index, tool in enumerate(value):
        definition = _tool_definition(tool, index, path, draft)
        if definition is not None:
            tools.append(definition)
    return tools


def _tool_definition(tool: Any, index: int, path: str, draft: _Draft) -> dict[str, Any] | None:
    function = tool.get("function", tool) if isinstance(tool, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(function, dict) or not isinstance(name, str) or not name.strip():
        draft.add(
            BAD_TOOL_DEFINITION,
            path,
            f"tool {index} ({show(tool)}) has no function with a non-empty name",
        )
        return None

    definition: dict[str, Any] = {"name": name}
    for key, kind, expected in (
        ("description", str, "a string"),
        ("parameters", dict, "an object"),
    ):
        field = function.get(key)
        if field is None:
            continue
        if isinstance(field, kind):
            definition[key] = field
        else:
            draft.add(
                BAD_TOOL_DEFINITION,
                path,
                f"tool {index} ({name!r}): {key} is {_describe(field)}; it must be {expected}",
            )
    return {"type": "function", "function": definition}


# --- sharegpt ------------------------------------------------------------------------------


def _build_sharegpt(record: dict[str, Any], draft: _Draft) -> None:
    draft.where = "$.conversations"
    if "tools" in record:
        draft.tools = _sharegpt_tools(record["tools"], draft)
    _add_system_field(record, draft)

    turns = record["conversations"]
    if not isinstance(turns, list):
        draft.add(
            WRONG_TYPE,
            "$.conversations",
            f'is {_describe(turns)}; it must be a list of {{"from": ..., "value": ...}} turns',
        )
        return
    if not turns:
        draft.add(EMPTY_CONVERSATION, "$.conversations", "is an empty list; it needs the turns")
        return
    for index, turn in enumerate(turns):
        _add_sharegpt_turn(turn, f"$.conversations[{index}]", draft)


def _sharegpt_tools(value: Any, draft: _Draft) -> list[dict[str, Any]] | None:
    if not isinstance(value, str):
        return _tool_definitions(value, "$.tools", draft)
    # LLaMA-Factory stores the tool list as a JSON string; an empty one means no tools.
    if not value.strip():
        return None
    try:
        decoded = json.loads(value)
    except json.JSONDecodeError as exc:
        draft.add(
            BAD_TOOL_DEFINITION,
            "$.tools",
            f"tools {show(value)} is not valid JSON: {exc.msg} at character {exc.pos}",
        )
        return None
    return _tool_definitions(decoded, "$.tools", draft)


def _add_sharegpt_turn(item: Any, path: str, draft: _Draft) -> None:
    if not isinstance(item, dict):
        draft.add(
            MESSAGE_NOT_OBJECT,
            path,
            f'is {_describe(item)}; a turn is an object like {{"from": "human", "value": "..."}}',
        )
        draft.turn(None, None, path)
        return

    role_key, value_key = ("from", "value") if "from" in item else ("role", "content")
    kind = _speaker_kind(item.get(role_key), f"{path}.{role_key}", draft)
    text = _sharegpt_value(item, value_key, f"{path}.{value_key}", draft)

    if kind == "function_call":
        if text is None:
            calls = [_tool_call(None, None, None)]
        else:
            calls = _sharegpt_calls(text, f"{path}.{value_key}", draft)
        message: dict[str, Any] = {"role": "assistant", "content": None, "tool_calls": calls}
        draft.turn("assistant", message, path, f".{role_key}", f".{value_key}")
        return
    message = {"role": kind, "content": text}
    draft.turn(kind, message, path, f".{role_key}", f".{value_key}")


def _speaker_kind(speaker: Any, path: str, draft: _Draft) -> str | None:
    if isinstance(speaker, str):
        kind = _SPEAKERS.get(speaker) or _SPEAKERS.get(speaker.lower())
        if kind is not None:
            return kind
    shown = "is missing" if speaker is None else f"{show(speaker)} is not a speaker"
    draft.add(UNKNOWN_ROLE, path, f"{shown}; allowed: {', '.join(_SPEAKERS)}")
    return None


def _sharegpt_value(item: dict[str, Any], key: str, path: str, draft: _Draft) -> str | None:
    value = item.get(key)
    if isinstance(value, str):
        return value
    if value is None:
        state = "null" if key in item else "missing"
        draft.add(MISSING_CONTENT, path, f"{key} is {state}; every turn needs its text")
    else:
        draft.add(WRONG_TYPE, path, f"is {_describe(value)}; {key} must be a string")
    return None


def _sharegpt_calls(text: str, path: str, draft: _Draft) -> list[dict[str, Any]]:
    """The calls of a function_call turn, which holds a JSON object or a list of them."""
    try:
        decoded = json.loads(text)
    except json.JSONDecodeError as exc:
        draft.add(
            BAD_TOOL_CALL,
            path,
            f"{show(text)} is not JSON ({exc.msg}); a function_call turn holds "
            '{"name": ..., "arguments": {...}}',
        )
        return [_tool_call(None, None, None)]

    items = decoded if isinstance(decoded, list) else [decoded]
    if not items:
        draft.add(BAD_TOOL_CALL, path, "is an empty list; a function_call turn holds a call")
        return [_tool_call(None, None, None)]
    return [_sharegpt_call(item, path, draft) for item in items]


def _sharegpt_call(item: Any, path: str, draft: _Draft) -> dict[str, Any]:
    name = item.get("name") if isinstance(item, dict) else None
    if not isinstance(item, dict) or not isinstance(name, str) or not name.strip():
        draft.add(BAD_TOOL_CALL, path, f"call {show(item)} has no non-empty name")
        return _tool_call(None, None, None)

    arguments = item.get("arguments")
    if isinstance(arguments, dict | list):
        arguments = json.dumps(arguments, ensure_ascii=False)
    elif not isinstance(arguments, str):
        draft.add(
            BAD_TOOL_CALL,
            path,
            f"arguments of {name!r} is {_describe(arguments)}; give an object or a JSON string",
        )
        arguments = None
    elif not _is_json(arguments, path, draft):
        arguments = None
    return _tool_call(None, name, arguments)


# --- flat formats: prompt_completion, alpaca, classification -------------------------------


def _build_prompt_completion(record: dict[str, Any], draft: _Draft) -> None:
    _add_system_field(record, draft)
    _add_field_turn(record, "prompt", "user", draft)
    _add_field_turn(record, "completion", "assistant", draft)


def _build_classification(record: dict[str, Any], draft: _Draft) -> None:
    _add_system_field(record, draft)
    _add_field_turn(record, "text", "user", draft)

    label = record.get("label")
    text = None
    if isinstance(label, str):
        text = label
    elif isinstance(label, bool | int | float):
        text = str(label)
    elif "label" not in record:
        draft.add(MISSING_FIELD, "$.label", f"label is missing; the record has {_quoted(record)}")
    else:
        draft.add(
            WRONG_TYPE,
            "$.label",
            f"is {_describe(label)}; label must be a string, a number or a boolean",
        )
    draft.turn("assistant", {"role": "assistant", "content": text}, "$.label")


def _build_alpaca(record: dict[str, Any], draft: _Draft) -> None:
    _add_system_field(record, draft)
    if "history" in record:
        _add_history(record["history"], draft)

    instruction = _field_text(record, "instruction", draft)
    extra = _optional_text(record, "input", draft)
    user = instruction
    if instruction is not None and extra and not extra.isspace():
        user = f"{instruction}\n\n{extra}"
        if not instruction or instruction.isspace():
            draft.add(
                EMPTY_CONTENT,
                "$.instruction",
                "instruction is empty; the input needs an instruction that says what to do",
            )
    draft.turn("user", {"role": "user", "content": user}, "$.instruction")
    _add_field_turn(record, "output", "assistant", draft)


def _add_history(history: Any, draft: _Draft) -> None:
    if not isinstance(history, list):
        draft.add(
            WRONG_TYPE,
            "$.history",
            f"is {_describe(history)}; history must be a list of [user, assistant] pairs",
        )
        return

    for index, pair in enumerate(history):
        path = f"$.history[{index}]"
        if not (
            isinstance(pair, list) and len(pair) == 2 and all(isinstance(t, str) for t in pair)
        ):
            draft.add(
                BAD_HISTORY_ENTRY, path, f"is {_describe(pair)}; expected [user text, answer text]"
            )
            continue
        draft.turn("user", {"role": "user", "content": pair[0]}, f"{path}[0]")
        draft.turn("assistant", {"role": "assistant", "content": pair[1]}, f"{path}[1]")


def _add_system_field(record: dict[str, Any], draft: _Draft) -> None:
    # Exports write "system": "" for "no system prompt", so a blank one adds no turn.
    system = _optional_text(record, "system", draft)
    if system and not system.isspace():
        draft.turn("system", {"role": "system", "content": system}, "$.system")


def _add_field_turn(record: dict[str, Any], key: str, role: str, draft: _Draft) -> None:
    text = _field_text(record, key, draft)
    draft.turn(role, {"role": role, "content": text}, f"$.{key}")


def _field_text(record: dict[str, Any], key: str, draft: _Draft) -> str | None:
    if key not in record:
        draft.add(MISSING_FIELD, f"$.{key}", f"{key} is missing; the record has {_quoted(record)}")
        return None
    if record[key] is None:
        draft.add(WRONG_TYPE, f"$.{key}", f"is null; {key} must be a string")
        return None
    return _optional_text(record, key, draft)


def _optional_text(record: dict[str, Any], key: str, draft: _Draft) -> str | None:
    value = record.get(key)
    if value is None or isinstance(value, str):
        return value
    draft.add(WRONG_TYPE, f"$.{key}", f"is {_describe(value)}; {key} must be a string")
    return None


# --- columns -------------------------------------------------------------------------------


@lru_cache(maxsize=64)
def _compile_columns(items: tuple[tuple[str, str], ...]) -> ColumnSpec:
    mapping = dict(items)
    errors = [
        f"{role!r} is not a role; allowed: {', '.join(COLUMN_ROLES)}"
        for role in mapping
        if role not in COLUMN_ROLES
    ]
    errors += [f"{role!r} is missing" for role in ("user", "assistant") if role not in mapping]
    errors += [f"{role!r} maps to an empty name" for role, path in items if not path.strip()]
    if errors:
        raise InvalidInputError(
            "invalid columns: " + "; ".join(errors) + '; e.g. {"user": "question", '
            '"assistant": "answer[0]"}'
        )
    return tuple(
        (role, mapping[role], _column_steps(mapping[role]))
        for role in COLUMN_ROLES
        if role in mapping
    )


def _column_steps(path: str) -> tuple[str | int, ...]:
    # A name that is not a valid path (a CSV header like "price [USD]") is one literal key.
    if not _COLUMN_PATH.fullmatch(path):
        return (path,)
    return tuple(
        int(step[1:-1]) if step.startswith("[") else step for step in _COLUMN_STEP.findall(path)
    )


def _build_columns(record: dict[str, Any], spec: ColumnSpec, draft: _Draft) -> None:
    for role, path, steps in spec:
        text = _column_text(record, role, path, steps, draft)
        draft.turn(role, {"role": role, "content": text}, f"$.{path}")


def _column_text(
    record: dict[str, Any], role: str, path: str, steps: tuple[str | int, ...], draft: _Draft
) -> str | None:
    value, missing = _resolve(record, path, steps)
    where = f"$.{path}"
    if missing is not None:
        draft.add(MISSING_COLUMN, where, f"{path!r} (the {role} turn) is missing: {missing}")
    elif isinstance(value, str):
        return value
    elif isinstance(value, bool | int | float):
        return str(value)
    elif value is None:
        draft.add(EMPTY_CONTENT, where, f"is null; the {role} turn needs text")
    elif isinstance(value, list):
        draft.add(
            COLUMN_NOT_TEXT,
            where,
            f"is a list of {len(value)} items; pick one, e.g. {path + '[0]'!r}",
        )
    else:
        first = next(iter(value), "key") if isinstance(value, dict) else "key"
        draft.add(
            COLUMN_NOT_TEXT,
            where,
            f"is {_describe(value)}; pick one text field, e.g. {f'{path}.{first}'!r}",
        )
    return None


def _resolve(
    record: dict[str, Any], path: str, steps: tuple[str | int, ...]
) -> tuple[Any, str | None]:
    """The value at a column path, or None and why it is not there."""
    if path in record:
        return record[path], None

    value: Any = record
    walked = ""
    for step in steps:
        where = repr(walked) if walked else "the record"
        if isinstance(step, int):
            if not isinstance(value, list):
                return None, f"{where} is {_describe(value)}, not a list"
            if step >= len(value):
                return None, f"{where} has {len(value)} items"
            walked += f"[{step}]"
        elif not isinstance(value, dict):
            return None, f"{where} is {_describe(value)}, not an object"
        elif step not in value:
            return None, f"{where} has no key {step!r}; its keys: {_quoted(value) or 'none'}"
        else:
            walked = f"{walked}.{step}" if walked else step
        value = value[step]
    return value, None


# --- checks of the whole conversation ------------------------------------------------------


def _check_conversation(draft: _Draft) -> None:
    """The rules every format shares, run on the normalised turns."""
    turns = draft.turns
    _check_system_turns(turns, draft)
    _check_roles_present(turns, draft)
    _check_turn_order(turns, draft)
    _check_empty_turns(turns, draft)
    if draft.uses_tools:
        _link_tool_calls(draft)
    _check_weights(turns, draft)


def _check_system_turns(turns: list[_Turn], draft: _Draft) -> None:
    for index, turn in enumerate(turns):
        if turn.role != "system" or index == 0:
            continue
        if turns[0].role == "system":
            where = f"a second system message (the first is at {turns[0].path})"
        else:
            where = "a system message after other turns"
        draft.add(
            MISPLACED_SYSTEM,
            turn.role_path,
            f"{where}; a conversation has at most one, as its first turn",
        )


def _check_roles_present(turns: list[_Turn], draft: _Draft) -> None:
    roles = [turn.role for turn in turns]
    # An unknown role is already reported, and it may be the very turn that seems missing.
    if None in roles:
        return
    present = ", ".join(sorted({str(role) for role in roles}))
    if "user" not in roles:
        draft.add(
            NO_USER_TURN,
            draft.where,
            f"no user turn (roles present: {present}); the assistant must answer a user",
        )
    if "assistant" not in roles:
        draft.add(
            NO_ASSISTANT_TURN,
            draft.where,
            f"no assistant turn (roles present: {present}); the model learns only from "
            "assistant turns",
        )


def _check_turn_order(turns: list[_Turn], draft: _Draft) -> None:
    for previous, turn in pairwise(turns):
        if turn.role == previous.role and turn.role in ("user", "assistant"):
            draft.add(
                REPEATED_ROLE,
                turn.role_path,
                f"two {turn.role} turns in a row ({previous.path} and {turn.path}); "
                "user and assistant turns must alternate",
            )

    last = turns[-1]
    # With no assistant turn at all, no_assistant_turn already says what is missing.
    has_answer = any(turn.role == "assistant" for turn in turns)
    if has_answer and last.role is not None and last.role != "assistant":
        draft.add(
            LAST_TURN_NOT_ASSISTANT,
            last.role_path,
            f"the last turn is from {last.role!r}; a conversation ends with an assistant turn",
        )


# Whitespace plus the zero-width characters that print as nothing.
_INVISIBLE = " \t\n\r\f\v\u00a0\u200b\u200c\u200d\u2060\ufeff\u2028\u2029\u3000"


def _check_empty_turns(turns: list[_Turn], draft: _Draft) -> None:
    for turn in turns:
        message = turn.message
        if message is None or turn.role not in _CHECKED_CONTENT_ROLES:
            continue
        content = message["content"]
        if not isinstance(content, str) or "tool_calls" in message:
            continue
        if not content.strip(_INVISIBLE):
            state = "empty" if not content else f"only whitespace ({show(content)})"
            draft.add(
                EMPTY_CONTENT,
                turn.content_path,
                f"the {turn.role} turn is {state}; it needs text",
            )


def _check_weights(turns: list[_Turn], draft: _Draft) -> None:
    weights = [
        turn.message.get("weight") for turn in turns if turn.role == "assistant" and turn.message
    ]
    if weights and all(weight == 0 for weight in weights):
        draft.add(
            ALL_WEIGHTS_ZERO,
            draft.where,
            f"all {len(weights)} assistant messages have weight 0; nothing is left to learn",
        )


# --- tool call ids -------------------------------------------------------------------------


def _calls_of(turn: _Turn) -> list[dict[str, Any]]:
    if turn.role != "assistant" or turn.message is None:
        return []
    calls: list[dict[str, Any]] = turn.message.get("tool_calls") or []
    return calls


def _link_tool_calls(draft: _Draft) -> None:
    """Give calls and tool messages their ids, and check each tool message answers a call."""
    taken = {call["id"] for turn in draft.turns for call in _calls_of(turn) if call["id"]}
    ids = _new_call_ids(taken)
    known: set[str] = set()
    pending: list[tuple[dict[str, Any], _Turn]] = []
    after_calls = False

    for turn in draft.turns:
        if turn.role == "tool":
            _answer_call(turn, after_calls, pending, known, draft)
            continue
        if turn.role == "assistant":
            _warn_unanswered(pending, draft)
            pending = [(call, turn) for call in _calls_of(turn)]
            _register_calls(pending, ids, known, draft)
        after_calls = turn.message is not None and "tool_calls" in turn.message


def _new_call_ids(taken: set[str]) -> Iterator[str]:
    number = 0
    while True:
        number += 1
        candidate = f"call_{number}"
        if candidate not in taken:
            yield candidate


def _register_calls(
    calls: list[tuple[dict[str, Any], _Turn]], ids: Iterator[str], known: set[str], draft: _Draft
) -> None:
    for call, turn in calls:
        if call["id"] is None:
            call["id"] = next(ids)
        elif call["id"] in known:
            draft.add(
                TOOL_CALL_ID_REUSED,
                f"{turn.path}.tool_calls",
                f"id {show(call['id'])} is already used by an earlier tool call",
            )
        known.add(call["id"])


def _answer_call(
    turn: _Turn,
    after_calls: bool,
    pending: list[tuple[dict[str, Any], _Turn]],
    known: set[str],
    draft: _Draft,
) -> None:
    message = turn.message
    assert message is not None  # a turn gets the tool role only with a message
    call_id = message.get("tool_call_id")
    if not after_calls:
        reason = "it does not follow an assistant message with tool_calls"
    elif call_id is None and not pending:
        reason = "every tool call before it already has its result"
    else:
        _match_call(turn, call_id, pending, known, draft)
        return
    draft.add(ORPHAN_TOOL_MESSAGE, turn.role_path, f"the tool message answers no call: {reason}")


def _match_call(
    turn: _Turn,
    call_id: str | None,
    pending: list[tuple[dict[str, Any], _Turn]],
    known: set[str],
    draft: _Draft,
) -> None:
    if call_id is None:
        assert turn.message is not None
        turn.message["tool_call_id"] = pending.pop(0)[0]["id"]
    elif call_id not in known:
        draft.add(
            UNKNOWN_TOOL_CALL_ID,
            f"{turn.path}.tool_call_id",
            f"{show(call_id)} matches no earlier tool call; known ids: {_quoted(sorted(known))}",
        )
    else:
        pending[:] = [entry for entry in pending if entry[0]["id"] != call_id]


def _warn_unanswered(pending: list[tuple[dict[str, Any], _Turn]], draft: _Draft) -> None:
    for call, turn in pending:
        draft.add(
            UNANSWERED_TOOL_CALL,
            turn.path,
            f"tool call {call['id']!r} ({call['function']['name'] or 'unnamed'}) gets no tool "
            "message before the next assistant turn",
        )


# --- helpers -------------------------------------------------------------------------------


def _describe(value: Any) -> str:
    """A JSON type name and a short repr, e.g. "a number (5)" or "an object ({'a': 1})"."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        kind = "a boolean"
    elif isinstance(value, int | float):
        kind = "a number"
    elif isinstance(value, str):
        kind = "a string"
    elif isinstance(value, list):
        kind = "a list"
    elif isinstance(value, dict):
        kind = "an object"
    else:
        kind = type(value).__name__
    return f"{kind} ({show(value)})"


def _quoted(keys: Any) -> str:
    """Up to a dozen keys or values, quoted, for a message."""
    first = list(islice(keys, QUOTED_ITEMS + 1))
    shown = ", ".join(show(key) for key in first[:QUOTED_ITEMS])
    return shown + ", ..." if len(first) > QUOTED_ITEMS else shown


_BUILDERS = {
    "openai_chat": _build_openai_chat,
    "sharegpt": _build_sharegpt,
    "alpaca": _build_alpaca,
    "prompt_completion": _build_prompt_completion,
    "classification": _build_classification,
}
