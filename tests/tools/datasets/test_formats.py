"""Per-record normalisation: every format becomes one chat conversation or a list of problems."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from turing.tools.datasets import formats
from turing.tools.datasets.formats import detect_format, normalize_record
from turing.tools.datasets.problems import Code, Problem
from turing.tools.errors import InvalidInputError

RESERVED_NAMES = {
    "invalid_json",
    "trailing_comma",
    "multiline_record",
    "not_an_object",
    "csv_bad_quotes",
    "csv_wrong_cell_count",
    "blank_line",
}
RESERVED_PREFIXES = (
    "pii_",
    "harm_",
    "duplicate",
    "near_duplicate",
    "conflict",
    "length_",
    "prompt_",
    "answer_",
)
FAQ_COLUMNS = {"user": "question", "assistant": "answer[0]"}


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def assistant(text: str | None, **extra: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": text, **extra}


def system(text: str) -> dict[str, Any]:
    return {"role": "system", "content": text}


def chat(*messages: Any, **extra: Any) -> dict[str, Any]:
    return {"messages": list(messages), **extra}


def call(name: str, arguments: Any, call_id: str | None = None) -> dict[str, Any]:
    made: dict[str, Any] = {"type": "function", "function": {"name": name, "arguments": arguments}}
    if call_id is not None:
        made["id"] = call_id
    return made


def tool(text: str, call_id: str | None = None) -> dict[str, Any]:
    message = {"role": "tool", "content": text}
    if call_id is not None:
        message["tool_call_id"] = call_id
    return message


def turn(speaker: str, value: str) -> dict[str, str]:
    return {"from": speaker, "value": value}


def the_problem(problems: list[Problem], code: str, path: str) -> Problem:
    """The problem with this code at this path, checked to be readable."""
    matching = [problem for problem in problems if problem.code == code and problem.path == path]
    assert matching, f"no {code} at {path}; got {[str(problem) for problem in problems]}"
    problem = matching[0]
    assert problem.message.strip()
    assert problem.hint.strip()
    assert problem.line == 7
    return problem


def assert_rejected(value: Any, format: str, code: str, path: str, **options: Any) -> Problem:
    conversation, problems = normalize_record(value, format, 7, **options)
    assert conversation is None
    return the_problem(problems, code, path)


# --- openai_chat ---------------------------------------------------------------------------

CHAT_ERRORS = [
    ("no assistant turn", chat(user("hi")), "no_assistant_turn", "$.messages"),
    (
        "bot role",
        chat(user("hi"), {"role": "bot", "content": "yo"}),
        "unknown_role",
        "$.messages[1].role",
    ),
    (
        "missing role",
        chat({"content": "hi"}, assistant("yo")),
        "unknown_role",
        "$.messages[0].role",
    ),
    (
        "unknown message key",
        chat({**user("hi"), "lang": "en"}, assistant("yo")),
        "unknown_message_key",
        "$.messages[0].lang",
    ),
    (
        "empty assistant content",
        chat(user("hi"), assistant("")),
        "empty_content",
        "$.messages[1].content",
    ),
    (
        "whitespace user content",
        chat(user(" \n\t"), assistant("yo")),
        "empty_content",
        "$.messages[0].content",
    ),
    (
        "messages as an object",
        {"messages": {"role": "user", "content": "hi"}},
        "wrong_type",
        "$.messages",
    ),
    ("messages empty", {"messages": []}, "empty_conversation", "$.messages"),
    ("no messages key", {"text": "hi"}, "format_mismatch", "$"),
    ("only an assistant turn", chat(assistant("yo")), "no_user_turn", "$.messages"),
    (
        "text next to messages",
        chat(user("hi"), assistant("yo"), text="hi"),
        "mixed_format_keys",
        "$.text",
    ),
    (
        "prompt next to messages",
        chat(user("hi"), assistant("yo"), prompt="hi"),
        "mixed_format_keys",
        "$.prompt",
    ),
    ("message not an object", chat("hi", assistant("yo")), "message_not_object", "$.messages[0]"),
    (
        "content missing",
        chat({"role": "user"}, assistant("yo")),
        "missing_content",
        "$.messages[0].content",
    ),
    (
        "content a number",
        chat({"role": "user", "content": 3}, assistant("yo")),
        "wrong_type",
        "$.messages[0].content",
    ),
    (
        "image content part",
        chat(
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url"}]},
            assistant("yo"),
        ),
        "unsupported_content_part",
        "$.messages[0].content[1]",
    ),
    (
        "legacy function_call",
        chat(user("hi"), {"role": "assistant", "content": None, "function_call": {"name": "f"}}),
        "legacy_function_call",
        "$.messages[1].function_call",
    ),
    (
        "system not first",
        chat(user("hi"), system("be brief"), assistant("yo")),
        "misplaced_system",
        "$.messages[1].role",
    ),
    (
        "two system messages",
        chat(system("a"), system("b"), user("hi"), assistant("yo")),
        "misplaced_system",
        "$.messages[1].role",
    ),
    (
        "ends with a user turn",
        chat(user("hi"), assistant("yo"), user("and?")),
        "last_turn_not_assistant",
        "$.messages[2].role",
    ),
    (
        "two user turns in a row",
        chat(user("hi"), user("hello?"), assistant("yo")),
        "repeated_role",
        "$.messages[1].role",
    ),
    ("record is a list", [user("hi"), assistant("yo")], "record_not_object", "$"),
    ("record is a string", "hi", "record_not_object", "$"),
]


def test_an_alias_role_suggests_the_openai_role() -> None:
    problem = assert_rejected(
        chat(user("hi"), {"role": "bot", "content": "yo"}),
        "openai_chat",
        "unknown_role",
        "$.messages[1].role",
    )

    assert "'bot'" in problem.message
    assert "use 'assistant'" in problem.message


def test_an_unknown_message_key_names_the_allowed_keys() -> None:
    value = chat({**user("hi"), "lang": "en"}, assistant("yo"))
    problem = assert_rejected(value, "openai_chat", "unknown_message_key", "$.messages[0].lang")

    assert "'lang'" in problem.message
    assert "tool_call_id" in problem.message


def test_every_bad_message_is_reported_not_only_the_first() -> None:
    value = chat({"role": "human", "content": "hi"}, {"role": "gpt", "content": ""})
    conversation, problems = normalize_record(value, "openai_chat", 7)

    assert conversation is None
    assert {(problem.code, problem.path) for problem in problems} == {
        ("unknown_role", "$.messages[0].role"),
        ("unknown_role", "$.messages[1].role"),
        ("empty_content", "$.messages[1].content"),
    }


def test_a_valid_chat_record_comes_back_unchanged() -> None:
    value = chat(system("Be kind. "), user("  hi  "), assistant("hello\n"))
    conversation, problems = normalize_record(value, "openai_chat", 7)

    assert problems == []
    assert conversation == value


def test_unknown_top_level_keys_are_ignored_with_one_warning_each() -> None:
    value = chat(user("hi"), assistant("yo"), topic="cards", score=3)
    conversation, problems = normalize_record(value, "openai_chat", 7)

    assert conversation == chat(user("hi"), assistant("yo"))
    assert [(problem.code, problem.severity, problem.path) for problem in problems] == [
        ("ignored_key", "warning", "$.topic"),
        ("ignored_key", "warning", "$.score"),
    ]


def test_bookkeeping_keys_such_as_an_id_are_ignored_silently() -> None:
    value = chat(user("hi"), assistant("yo"), id="row-1", metadata={"source": "web"})
    conversation, problems = normalize_record(value, "openai_chat", 7)

    assert conversation == chat(user("hi"), assistant("yo"))
    assert problems == []


def test_text_parts_of_content_are_joined_with_newlines() -> None:
    parts = [{"type": "text", "text": "first"}, {"type": "text", "text": "second"}]
    conversation, problems = normalize_record(
        chat({"role": "user", "content": parts}, assistant("yo")), "openai_chat", 7
    )

    assert problems == []
    assert conversation == chat(user("first\nsecond"), assistant("yo"))


def test_a_named_message_keeps_its_name() -> None:
    value = chat({**user("hi"), "name": "ana"}, assistant("yo"))

    assert normalize_record(value, "openai_chat", 7) == (value, [])


# --- weights -------------------------------------------------------------------------------


def test_weight_zero_is_kept_and_an_omitted_weight_adds_no_key() -> None:
    value = chat(user("hi"), assistant("draft", weight=0), user("again"), assistant("final"))
    conversation, problems = normalize_record(value, "openai_chat", 7)

    assert problems == []
    assert conversation is not None
    assert conversation["messages"][1] == {"role": "assistant", "content": "draft", "weight": 0}
    assert conversation["messages"][3] == {"role": "assistant", "content": "final"}


WEIGHT_ERRORS = [
    ("weight 2", chat(user("hi"), assistant("yo", weight=2)), "bad_weight", "$.messages[1].weight"),
    (
        "weight true",
        chat(user("hi"), assistant("yo", weight=True)),
        "bad_weight",
        "$.messages[1].weight",
    ),
    (
        "weight 0.5",
        chat(user("hi"), assistant("yo", weight=0.5)),
        "bad_weight",
        "$.messages[1].weight",
    ),
    (
        "weight on a user turn",
        chat({**user("hi"), "weight": 1}, assistant("yo")),
        "misplaced_key",
        "$.messages[0].weight",
    ),
    (
        "every weight zero",
        chat(user("hi"), assistant("yo", weight=0)),
        "all_weights_zero",
        "$.messages",
    ),
]


# --- tool calls ----------------------------------------------------------------------------

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def test_a_tool_call_answered_by_a_tool_message_is_normalised_with_ids() -> None:
    value = chat(
        user("Weather in Paris?"),
        assistant(None, tool_calls=[call("get_weather", '{"city": "Paris"}')]),
        tool('{"celsius": 21}'),
        assistant("It is 21 °C in Paris."),
        tools=[WEATHER_TOOL],
    )
    conversation, problems = normalize_record(value, "openai_chat", 7)

    assert problems == []
    assert conversation == {
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            },
            {"role": "tool", "content": '{"celsius": 21}', "tool_call_id": "call_1"},
            {"role": "assistant", "content": "It is 21 °C in Paris."},
        ],
        "tools": [WEATHER_TOOL],
    }


def test_normalising_leaves_the_record_as_it_was() -> None:
    value = chat(
        user("hi"),
        assistant(None, tool_calls=[call("f", "{}")]),
        tool("ok"),
        assistant("done"),
        tools=[{"name": "f"}],
    )
    before = json.dumps(value)
    normalize_record(value, "openai_chat", 7)

    assert json.dumps(value) == before


def test_tool_messages_are_matched_to_their_calls_by_given_ids() -> None:
    calls = [call("get_weather", '{"city": "Oslo"}', "a"), call("get_weather", "{}", "b")]
    value = chat(
        user("Weather?"),
        assistant(None, tool_calls=calls),
        tool("cold", "b"),
        tool("warm"),  # no id: it answers the earliest call still open, "a"
        assistant("Cold and warm."),
    )
    conversation, problems = normalize_record(value, "openai_chat", 7)

    assert problems == []
    assert conversation is not None
    assert [message.get("tool_call_id") for message in conversation["messages"]] == [
        None,
        None,
        "b",
        "a",
        None,
    ]


def test_a_bare_tool_definition_is_wrapped_in_openai_form() -> None:
    bare = {"name": "get_time", "description": "Time now"}
    conversation, _ = normalize_record(
        chat(user("hi"), assistant("yo"), tools=[bare]), "openai_chat", 7
    )

    assert conversation is not None
    assert conversation["tools"] == [{"type": "function", "function": bare}]


TOOL_ERRORS = [
    (
        "arguments as an object",
        chat(
            user("hi"),
            assistant(None, tool_calls=[call("f", {"x": 1})]),
            tool("ok"),
            assistant("done"),
        ),
        "tool_arguments_not_string",
        "$.messages[1].tool_calls[0].function.arguments",
    ),
    (
        "arguments not JSON",
        chat(
            user("hi"),
            assistant(None, tool_calls=[call("f", "{x: 1")]),
            tool("ok"),
            assistant("done"),
        ),
        "tool_arguments_invalid_json",
        "$.messages[1].tool_calls[0].function.arguments",
    ),
    (
        "call without a name",
        chat(
            user("hi"), assistant(None, tool_calls=[call("", "{}")]), tool("ok"), assistant("done")
        ),
        "bad_tool_call",
        "$.messages[1].tool_calls[0].function.name",
    ),
    (
        "call without function",
        chat(user("hi"), assistant(None, tool_calls=[{"id": "c"}]), tool("ok"), assistant("done")),
        "bad_tool_call",
        "$.messages[1].tool_calls[0]",
    ),
    (
        "two assistant turns in a row",
        chat(user("hi"), assistant(None, tool_calls=[call("f", "{}")]), assistant("done")),
        "repeated_role",
        "$.messages[2].role",
    ),
    (
        "tool message without a call",
        chat(user("hi"), tool("ok"), assistant("done")),
        "orphan_tool_message",
        "$.messages[1].role",
    ),
    (
        "more results than calls",
        chat(
            user("hi"),
            assistant(None, tool_calls=[call("f", "{}")]),
            tool("a"),
            tool("b"),
            assistant("done"),
        ),
        "orphan_tool_message",
        "$.messages[3].role",
    ),
    (
        "unknown tool_call_id",
        chat(
            user("hi"),
            assistant(None, tool_calls=[call("f", "{}", "c1")]),
            tool("a", "c9"),
            assistant("done"),
        ),
        "unknown_tool_call_id",
        "$.messages[2].tool_call_id",
    ),
    (
        "tool_call_id on a user turn",
        chat({**user("hi"), "tool_call_id": "c"}, assistant("yo")),
        "misplaced_key",
        "$.messages[0].tool_call_id",
    ),
    (
        "tool_calls on a user turn",
        chat({**user("hi"), "tool_calls": [call("f", "{}")]}, assistant("yo")),
        "misplaced_key",
        "$.messages[0].tool_calls",
    ),
    (
        "content null without calls",
        chat(user("hi"), assistant(None)),
        "missing_content",
        "$.messages[1].content",
    ),
    (
        "reused call id",
        chat(
            user("hi"),
            assistant(None, tool_calls=[call("f", "{}", "c1"), call("g", "{}", "c1")]),
            tool("a", "c1"),
            tool("b", "c1"),
            assistant("done"),
        ),
        "tool_call_id_reused",
        "$.messages[1].tool_calls",
    ),
    (
        "parallel_tool_calls not a boolean",
        chat(user("hi"), assistant("yo"), parallel_tool_calls="yes"),
        "wrong_type",
        "$.parallel_tool_calls",
    ),
    (
        "tools not a list",
        chat(user("hi"), assistant("yo"), tools={"name": "f"}),
        "bad_tool_definition",
        "$.tools",
    ),
    (
        "tool without a name",
        chat(user("hi"), assistant("yo"), tools=[{"type": "function", "function": {}}]),
        "bad_tool_definition",
        "$.tools",
    ),
]


ONE_PROBLEM_ONLY = [
    (
        "arguments as an object",
        chat(
            user("hi"),
            assistant(None, tool_calls=[call("f", {"x": 1})]),
            tool("ok"),
            assistant("done"),
        ),
        "tool_arguments_not_string",
    ),
    (
        "call without a name",
        chat(
            user("hi"), assistant(None, tool_calls=[call("", "{}")]), tool("ok"), assistant("done")
        ),
        "bad_tool_call",
    ),
    (
        "legacy function_call",
        chat(user("hi"), {"role": "assistant", "content": None, "function_call": {"name": "f"}}),
        "legacy_function_call",
    ),
    (
        "bot role",
        chat(user("hi"), {"role": "bot", "content": "yo"}),
        "unknown_role",
    ),
]


@pytest.mark.parametrize(
    ("value", "code"),
    [case[1:] for case in ONE_PROBLEM_ONLY],
    ids=[case[0] for case in ONE_PROBLEM_ONLY],
)
def test_a_mistake_is_reported_once_without_knock_on_problems(value: Any, code: str) -> None:
    _, problems = normalize_record(value, "openai_chat", 7)

    assert [problem.code for problem in problems] == [code]


def test_generated_call_ids_skip_the_ids_the_record_already_uses() -> None:
    value = chat(
        user("hi"),
        assistant(None, tool_calls=[call("f", "{}")]),
        tool("a"),
        assistant(None, tool_calls=[call("g", "{}", "call_1")]),
        tool("b"),
        assistant("done"),
    )
    conversation, problems = normalize_record(value, "openai_chat", 7)

    assert problems == []
    assert conversation is not None
    ids = [message.get("tool_call_id") for message in conversation["messages"]]
    assert ids == [None, None, "call_2", None, "call_1", None]


def test_arguments_given_as_an_object_point_to_json_dumps() -> None:
    value = chat(user("hi"), assistant(None, tool_calls=[call("f", {"x": 1})]), tool("ok"))
    path = "$.messages[1].tool_calls[0].function.arguments"
    problem = assert_rejected(value, "openai_chat", "tool_arguments_not_string", path)

    assert "json.dumps" in problem.hint


def test_a_call_left_unanswered_before_the_next_assistant_turn_is_a_warning() -> None:
    value = chat(
        user("hi"),
        assistant(None, tool_calls=[call("f", "{}", "c1"), call("g", "{}", "c2")]),
        tool("f done", "c1"),
        assistant("done"),
    )
    conversation, problems = normalize_record(value, "openai_chat", 7)

    assert conversation is not None
    problem = the_problem(problems, "unanswered_tool_call", "$.messages[1]")
    assert problem.severity == "warning"
    assert "'c2'" in problem.message


# --- sharegpt ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("human", "gpt"),
    [("human", "gpt"), ("user", "assistant"), ("human", "bot"), ("user", "model")],
)
def test_sharegpt_speaker_aliases_map_to_user_and_assistant(human: str, gpt: str) -> None:
    value = {"conversations": [turn(human, "hi"), turn(gpt, "yo")]}

    assert normalize_record(value, "sharegpt", 7) == (chat(user("hi"), assistant("yo")), [])


def test_sharegpt_items_may_use_role_and_content_keys() -> None:
    value = {"conversations": [user("hi"), assistant("yo")]}

    assert normalize_record(value, "sharegpt", 7) == (chat(user("hi"), assistant("yo")), [])


def test_a_sharegpt_system_first_turn_becomes_the_system_message() -> None:
    value = {"conversations": [turn("system", "Be brief."), turn("human", "hi"), turn("gpt", "yo")]}
    expected = chat(system("Be brief."), user("hi"), assistant("yo"))

    assert normalize_record(value, "sharegpt", 7) == (expected, [])


def test_a_sharegpt_system_field_becomes_the_system_message() -> None:
    value = {"system": "Be brief.", "conversations": [turn("human", "hi"), turn("gpt", "yo")]}
    expected = chat(system("Be brief."), user("hi"), assistant("yo"))

    assert normalize_record(value, "sharegpt", 7) == (expected, [])


def test_sharegpt_function_call_and_observation_become_a_tool_exchange() -> None:
    tools = [{"name": "get_weather", "description": "Weather", "parameters": {"type": "object"}}]
    value = {
        "conversations": [
            turn("human", "Weather in Rome?"),
            turn("function_call", '{"name": "get_weather", "arguments": {"city": "Rome"}}'),
            turn("observation", '{"celsius": 25}'),
            turn("gpt", "25 °C."),
        ],
        "tools": json.dumps(tools),
    }
    conversation, problems = normalize_record(value, "sharegpt", 7)

    assert problems == []
    tool_call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'},
    }
    assert conversation == {
        "messages": [
            user("Weather in Rome?"),
            {"role": "assistant", "content": None, "tool_calls": [tool_call]},
            {"role": "tool", "content": '{"celsius": 25}', "tool_call_id": "call_1"},
            assistant("25 °C."),
        ],
        "tools": [{"type": "function", "function": tools[0]}],
    }


def test_a_sharegpt_function_call_may_hold_a_list_of_calls() -> None:
    calls = [{"name": "f", "arguments": {}}, {"name": "g", "arguments": '{"n": 1}'}]
    value = {
        "conversations": [
            turn("human", "hi"),
            turn("function_call", json.dumps(calls)),
            turn("observation", "f done"),
            turn("observation", "g done"),
            turn("gpt", "both done"),
        ]
    }
    conversation, problems = normalize_record(value, "sharegpt", 7)

    assert problems == []
    assert conversation is not None
    made = conversation["messages"][1]["tool_calls"]
    assert [(c["id"], c["function"]["name"], c["function"]["arguments"]) for c in made] == [
        ("call_1", "f", "{}"),
        ("call_2", "g", '{"n": 1}'),
    ]
    assert [m.get("tool_call_id") for m in conversation["messages"][2:4]] == ["call_1", "call_2"]


@pytest.mark.parametrize("value", ["get_weather(Rome)", "[]", '{"arguments": {}}'])
def test_a_bad_sharegpt_function_call_is_reported_once(value: str) -> None:
    record = {
        "conversations": [
            turn("human", "hi"),
            turn("function_call", value),
            turn("observation", "25"),
            turn("gpt", "ok"),
        ]
    }
    conversation, problems = normalize_record(record, "sharegpt", 7)

    assert conversation is None
    assert [(problem.code, problem.path) for problem in problems] == [
        ("bad_tool_call", "$.conversations[1].value")
    ]


def test_an_empty_sharegpt_tools_list_adds_no_tools() -> None:
    value = {"conversations": [turn("human", "hi"), turn("gpt", "yo")], "tools": "[]"}

    assert normalize_record(value, "sharegpt", 7) == (chat(user("hi"), assistant("yo")), [])


SHAREGPT_ERRORS = [
    (
        "unknown speaker",
        {"conversations": [turn("narrator", "hi"), turn("gpt", "yo")]},
        "unknown_role",
        "$.conversations[0].from",
    ),
    (
        "system field and system turn",
        {
            "system": "a",
            "conversations": [turn("system", "b"), turn("human", "hi"), turn("gpt", "yo")],
        },
        "misplaced_system",
        "$.conversations[0].from",
    ),
    ("conversations not a list", {"conversations": "hi"}, "wrong_type", "$.conversations"),
    (
        "value missing",
        {"conversations": [{"from": "human"}, turn("gpt", "yo")]},
        "missing_content",
        "$.conversations[0].value",
    ),
    (
        "empty gpt value",
        {"conversations": [turn("human", "hi"), turn("gpt", " ")]},
        "empty_content",
        "$.conversations[1].value",
    ),
    (
        "function_call not JSON",
        {
            "conversations": [
                turn("human", "hi"),
                turn("function_call", "get_weather(Rome)"),
                turn("observation", "25"),
                turn("gpt", "ok"),
            ]
        },
        "bad_tool_call",
        "$.conversations[1].value",
    ),
    (
        "observation without a call",
        {"conversations": [turn("human", "hi"), turn("observation", "25"), turn("gpt", "ok")]},
        "orphan_tool_message",
        "$.conversations[1].from",
    ),
    (
        "tools string not JSON",
        {"conversations": [turn("human", "hi"), turn("gpt", "yo")], "tools": "[{"},
        "bad_tool_definition",
        "$.tools",
    ),
    (
        "two human turns",
        {"conversations": [turn("human", "hi"), turn("human", "hey"), turn("gpt", "yo")]},
        "repeated_role",
        "$.conversations[1].from",
    ),
    (
        "messages key instead",
        {"messages": [turn("human", "hi"), turn("gpt", "yo")]},
        "format_mismatch",
        "$",
    ),
]


def test_an_unknown_sharegpt_speaker_lists_the_accepted_ones() -> None:
    value = {"conversations": [turn("narrator", "hi"), turn("gpt", "yo")]}
    problem = assert_rejected(value, "sharegpt", "unknown_role", "$.conversations[0].from")

    assert "'narrator'" in problem.message
    assert "human" in problem.message
    assert "function_call" in problem.message


# --- alpaca --------------------------------------------------------------------------------

ALPACA_CASES = [
    (
        "empty input",
        {"instruction": "Say hi", "input": "", "output": "Hi!"},
        chat(user("Say hi"), assistant("Hi!")),
    ),
    (
        "input present",
        {"instruction": "Translate to French", "input": "cat", "output": "chat"},
        chat(user("Translate to French\n\ncat"), assistant("chat")),
    ),
    (
        "no input key",
        {"instruction": "Say hi", "output": "Hi!"},
        chat(user("Say hi"), assistant("Hi!")),
    ),
    (
        "history and system",
        {
            "system": "Be brief.",
            "instruction": "And 3+3?",
            "input": "",
            "output": "6",
            "history": [["1+1?", "2"], ["2+2?", "4"]],
        },
        chat(
            system("Be brief."),
            user("1+1?"),
            assistant("2"),
            user("2+2?"),
            assistant("4"),
            user("And 3+3?"),
            assistant("6"),
        ),
    ),
]


@pytest.mark.parametrize(
    ("value", "expected"),
    [case[1:] for case in ALPACA_CASES],
    ids=[case[0] for case in ALPACA_CASES],
)
def test_an_alpaca_record_becomes_a_conversation(
    value: dict[str, Any], expected: dict[str, Any]
) -> None:
    assert normalize_record(value, "alpaca", 7) == (expected, [])


ALPACA_ERRORS = [
    (
        "history entry of one item",
        {"instruction": "a", "output": "b", "history": [["only"]]},
        "bad_history_entry",
        "$.history[0]",
    ),
    (
        "history entry not text",
        {"instruction": "a", "output": "b", "history": [["q", 5]]},
        "bad_history_entry",
        "$.history[0]",
    ),
    (
        "history not a list",
        {"instruction": "a", "output": "b", "history": "q a"},
        "wrong_type",
        "$.history",
    ),
    (
        "empty history answer",
        {"instruction": "a", "output": "b", "history": [["q", ""]]},
        "empty_content",
        "$.history[0][1]",
    ),
    ("output missing", {"instruction": "a", "input": ""}, "missing_field", "$.output"),
    ("output empty", {"instruction": "a", "output": ""}, "empty_content", "$.output"),
    ("instruction a number", {"instruction": 4, "output": "b"}, "wrong_type", "$.instruction"),
    (
        "instruction empty with input",
        {"instruction": "", "input": "cat", "output": "b"},
        "empty_content",
        "$.instruction",
    ),
    ("chat record instead", chat(user("hi"), assistant("yo")), "format_mismatch", "$"),
]


def test_a_stray_text_field_in_alpaca_is_only_a_warning() -> None:
    value = {"instruction": "a", "input": "", "output": "b", "text": "### a ### b"}
    conversation, problems = normalize_record(value, "alpaca", 7)

    assert conversation == chat(user("a"), assistant("b"))
    assert the_problem(problems, "ignored_key", "$.text").severity == "warning"


# --- classification and prompt_completion --------------------------------------------------

FLAT_CASES = [
    (
        "label text",
        "classification",
        {"text": "I was charged twice", "label": "billing"},
        chat(user("I was charged twice"), assistant("billing")),
    ),
    (
        "label number",
        "classification",
        {"text": "5 stars!", "label": 5},
        chat(user("5 stars!"), assistant("5")),
    ),
    (
        "label boolean",
        "classification",
        {"text": "spam?", "label": True},
        chat(user("spam?"), assistant("True")),
    ),
    (
        "classification with system",
        "classification",
        {"system": "Classify.", "text": "hi", "label": "greeting"},
        chat(system("Classify."), user("hi"), assistant("greeting")),
    ),
    (
        "prompt and completion",
        "prompt_completion",
        {"prompt": "2+2=", "completion": " 4"},
        chat(user("2+2="), assistant(" 4")),
    ),
    (
        "blank system is no turn",
        "prompt_completion",
        {"system": "", "prompt": "2+2=", "completion": "4"},
        chat(user("2+2="), assistant("4")),
    ),
]


@pytest.mark.parametrize(
    ("format", "value", "expected"),
    [case[1:] for case in FLAT_CASES],
    ids=[case[0] for case in FLAT_CASES],
)
def test_a_flat_record_becomes_a_user_and_assistant_turn(
    format: str, value: dict[str, Any], expected: dict[str, Any]
) -> None:
    assert normalize_record(value, format, 7) == (expected, [])


FLAT_ERRORS = [
    ("label missing", "classification", {"text": "hi"}, "missing_field", "$.label"),
    ("label empty", "classification", {"text": "hi", "label": ""}, "empty_content", "$.label"),
    ("label a list", "classification", {"text": "hi", "label": ["a"]}, "wrong_type", "$.label"),
    ("text empty", "classification", {"text": "", "label": "a"}, "empty_content", "$.text"),
    (
        "system a number",
        "classification",
        {"text": "hi", "label": "a", "system": 1},
        "wrong_type",
        "$.system",
    ),
    ("completion missing", "prompt_completion", {"prompt": "hi"}, "missing_field", "$.completion"),
    (
        "completion empty",
        "prompt_completion",
        {"prompt": "hi", "completion": ""},
        "empty_content",
        "$.completion",
    ),
    (
        "prompt a number",
        "prompt_completion",
        {"prompt": 2, "completion": "two"},
        "wrong_type",
        "$.prompt",
    ),
    (
        "prompt next to messages",
        "prompt_completion",
        {"prompt": "a", "completion": "b", "messages": []},
        "mixed_format_keys",
        "$.messages",
    ),
    (
        "alpaca record instead",
        "prompt_completion",
        {"instruction": "a", "output": "b"},
        "format_mismatch",
        "$",
    ),
]


# Every table of faulty records, each case run against its format.
REJECTED = [
    *((f"openai_chat: {case[0]}", "openai_chat", *case[1:]) for case in CHAT_ERRORS),
    *((f"weight: {case[0]}", "openai_chat", *case[1:]) for case in WEIGHT_ERRORS),
    *((f"tool call: {case[0]}", "openai_chat", *case[1:]) for case in TOOL_ERRORS),
    *((f"sharegpt: {case[0]}", "sharegpt", *case[1:]) for case in SHAREGPT_ERRORS),
    *((f"alpaca: {case[0]}", "alpaca", *case[1:]) for case in ALPACA_ERRORS),
    *((f"{case[1]}: {case[0]}", *case[1:]) for case in FLAT_ERRORS),
]


@pytest.mark.parametrize(
    ("format", "value", "code", "path"),
    [case[1:] for case in REJECTED],
    ids=[case[0] for case in REJECTED],
)
def test_a_faulty_record_is_rejected_with_its_code_and_path(
    format: str, value: Any, code: str, path: str
) -> None:
    assert_rejected(value, format, code, path)


def test_a_format_mismatch_names_the_expected_keys_and_the_likely_format() -> None:
    problem = assert_rejected({"text": "hi", "label": "a"}, "openai_chat", "format_mismatch", "$")

    assert "'messages'" in problem.message
    assert "'text', 'label'" in problem.message
    assert "classification" in problem.message


# --- columns -------------------------------------------------------------------------------

FAQ_RECORD = {
    "question": "Strikethrough in Markdown?",
    "answer": ["Use ~~tildes~~.", "Or <del> tags."],
    "rephr": ["How to strike text?"],
}
COLUMN_CASES = [
    (
        "list index",
        FAQ_RECORD,
        FAQ_COLUMNS,
        chat(user("Strikethrough in Markdown?"), assistant("Use ~~tildes~~.")),
    ),
    (
        "second item",
        FAQ_RECORD,
        {"user": "rephr[0]", "assistant": "answer[1]"},
        chat(user("How to strike text?"), assistant("Or <del> tags.")),
    ),
    (
        "csv row with system",
        {"text": "Card lost", "category": "card", "id": "9"},
        {"system": "id", "user": "text", "assistant": "category"},
        chat(system("9"), user("Card lost"), assistant("card")),
    ),
    (
        "dotted path",
        {"meta": {"question": "Why?"}, "reply": "Because."},
        {"user": "meta.question", "assistant": "reply"},
        chat(user("Why?"), assistant("Because.")),
    ),
    (
        "header with a dot",
        {"q.text": "Why?", "a": "Because."},
        {"user": "q.text", "assistant": "a"},
        chat(user("Why?"), assistant("Because.")),
    ),
    (
        "number cell",
        {"question": "2+2?", "answer": 4},
        {"user": "question", "assistant": "answer"},
        chat(user("2+2?"), assistant("4")),
    ),
]


@pytest.mark.parametrize(
    ("value", "columns", "expected"),
    [case[1:] for case in COLUMN_CASES],
    ids=[case[0] for case in COLUMN_CASES],
)
def test_columns_pick_each_turn_from_a_field_of_the_record(
    value: dict[str, Any], columns: dict[str, str], expected: dict[str, Any]
) -> None:
    assert normalize_record(value, "columns", 7, columns=columns) == (expected, [])


COLUMN_ERRORS = [
    (
        "list without an index",
        FAQ_RECORD,
        {"user": "question", "assistant": "answer"},
        "column_not_text",
        "$.answer",
    ),
    (
        "index past the end",
        FAQ_RECORD,
        {"user": "question", "assistant": "answer[5]"},
        "missing_column",
        "$.answer[5]",
    ),
    (
        "index into a string",
        {**FAQ_RECORD, "answer": "Use tildes."},
        FAQ_COLUMNS,
        "missing_column",
        "$.answer[0]",
    ),
    ("missing key", {"question": "q"}, FAQ_COLUMNS, "missing_column", "$.answer[0]"),
    ("empty cell", {"question": "", "answer": ["a"]}, FAQ_COLUMNS, "empty_content", "$.question"),
    ("null value", {"question": None, "answer": ["a"]}, FAQ_COLUMNS, "empty_content", "$.question"),
    (
        "object value",
        {"question": {"title": "q"}, "answer": ["a"]},
        FAQ_COLUMNS,
        "column_not_text",
        "$.question",
    ),
    ("row is a list", ["q", "a"], FAQ_COLUMNS, "record_not_object", "$"),
]


@pytest.mark.parametrize(
    ("value", "columns", "code", "path"),
    [case[1:] for case in COLUMN_ERRORS],
    ids=[case[0] for case in COLUMN_ERRORS],
)
def test_a_bad_column_is_reported_with_its_path(
    value: Any, columns: dict[str, str], code: str, path: str
) -> None:
    assert_rejected(value, "columns", code, path, columns=columns)


def test_a_list_column_suggests_picking_an_element() -> None:
    columns = {"user": "question", "assistant": "answer"}
    problem = assert_rejected(FAQ_RECORD, "columns", "column_not_text", "$.answer", columns=columns)

    assert "'answer[0]'" in problem.message


@pytest.mark.parametrize(
    ("format", "columns", "fragment"),
    [
        ("markdown", None, "'markdown' is not supported"),
        ("columns", None, "needs columns"),
        ("columns", {"user": "q"}, "'assistant' is missing"),
        ("columns", {"user": "q", "assistant": "a", "judge": "j"}, "'judge' is not a role"),
        ("columns", {"user": "q", "assistant": ""}, "empty name"),
        ("openai_chat", {"user": "q", "assistant": "a"}, "applies to format 'columns' only"),
    ],
)
def test_invalid_options_raise_an_error_naming_the_fix(
    format: str, columns: dict[str, str] | None, fragment: str
) -> None:
    with pytest.raises(InvalidInputError, match=fragment):
        normalize_record({"q": "x", "a": "y"}, format, 7, columns=columns)


# --- detection -----------------------------------------------------------------------------

DETECT_CASES = [
    ("chat", [chat(user("hi"), assistant("yo"))], "openai_chat"),
    ("sharegpt", [{"conversations": []}], "sharegpt"),
    ("alpaca", [{"instruction": "a", "input": "", "output": "b"}], "alpaca"),
    ("prompt completion", [{"prompt": "a", "completion": "b"}], "prompt_completion"),
    ("classification", [{"text": "a", "label": 1}], "classification"),
    (
        "majority wins",
        [{"text": "a", "label": 1}] * 3 + [{"prompt": "a", "completion": "b"}],
        "classification",
    ),
    (
        "odd records do not vote",
        [[1], "x", {"q": 1}, {"prompt": "a", "completion": "b"}],
        "prompt_completion",
    ),
    ("no known shape", [{"question": "q", "answer": ["a"]}, 3], None),
    ("nothing", [], None),
]


@pytest.mark.parametrize(
    ("values", "expected"),
    [case[1:] for case in DETECT_CASES],
    ids=[case[0] for case in DETECT_CASES],
)
def test_detect_format_picks_the_shape_most_records_have(
    values: list[Any], expected: str | None
) -> None:
    assert detect_format(values) == expected


# --- the shared public files ---------------------------------------------------------------


def load_records(path: Path) -> list[Any]:
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    loaded = json.loads(path.read_text())
    return loaded if isinstance(loaded, list) else loaded["root"]["qapair"]


SHARED_FILES = [
    ("alpaca/identity.json", "alpaca", 91, 91, {}),
    ("sharegpt/dummy_conversation.json", "sharegpt", 500, 500, {}),
    ("sharegpt/glaive_toolcall_en_demo.json", "sharegpt", 300, 300, {}),
    ("openai_chat_ft/toy_chat_fine_tuning.jsonl", "openai_chat", 5, 4, {"no_user_turn": 1}),
]


@pytest.mark.parametrize(
    ("name", "format", "records", "valid", "codes"),
    SHARED_FILES,
    ids=[case[0] for case in SHARED_FILES],
)
def test_every_record_of_a_shared_file_is_normalised(
    shared_data: Path, name: str, format: str, records: int, valid: int, codes: dict[str, int]
) -> None:
    values = load_records(shared_data / name)
    assert detect_format(values) == format

    results = [normalize_record(value, format, line) for line, value in enumerate(values, 1)]
    found = Counter(problem.code for _, problems in results for problem in problems)
    assert len(values) == records
    assert sum(conversation is not None for conversation, _ in results) == valid
    assert found == codes


def test_the_toy_chat_example_without_a_user_turn_is_rejected(shared_data: Path) -> None:
    values = load_records(shared_data / "openai_chat_ft/toy_chat_fine_tuning.jsonl")
    conversation, problems = normalize_record(values[3], "openai_chat", 7)

    assert conversation is None
    the_problem(problems, "no_user_turn", "$.messages")


def test_every_glaive_tool_call_is_answered_by_its_observation(shared_data: Path) -> None:
    values = load_records(shared_data / "sharegpt/glaive_toolcall_en_demo.json")
    calls = answers = 0
    for value in values:
        conversation, _ = normalize_record(value, "sharegpt", 7)
        assert conversation is not None
        for message in conversation["messages"]:
            calls += len(message.get("tool_calls", []))
            answers += message["role"] == "tool" and message["tool_call_id"].startswith("call_")

    assert calls == answers == 211


def test_stackfaq_answers_are_picked_by_index(shared_data: Path) -> None:
    values = load_records(shared_data / "stackfaq/stackExchange-FAQ.json")
    results = [normalize_record(value, "columns", 7, columns=FAQ_COLUMNS) for value in values]

    codes = Counter(problem.code for _, problems in results for problem in problems)
    assert sum(conversation is not None for conversation, _ in results) == len(values) - 1
    assert codes == {"missing_column": 1}  # one thread holds its single answer as a plain string


# --- the codes themselves ------------------------------------------------------------------


def test_the_codes_of_this_module_avoid_the_names_the_reader_owns() -> None:
    names = [code.name for code in vars(formats).values() if isinstance(code, Code)]

    assert len(names) >= 30
    assert not RESERVED_NAMES.intersection(names)
    assert not [name for name in names if name.startswith(RESERVED_PREFIXES)]


def test_the_fast_path_for_plain_chat_gives_what_the_full_checks_give(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = random.Random(0)
    records = []
    for _ in range(300):
        turns = [system(rng.choice(["be brief", " be kind "]))] if rng.random() < 0.5 else []
        for _ in range(rng.randint(1, 3)):
            turns += [user(rng.choice(["q", " q ", "a\nb"])), assistant(rng.choice(["a", "b "]))]
        records.append(chat(*turns))
    fast = [normalize_record(record, "openai_chat", 1) for record in records]

    monkeypatch.setattr(formats, "_plain_chat", lambda value: None)
    full = [normalize_record(record, "openai_chat", 1) for record in records]

    assert fast == full
    assert all(problems == [] for _, problems in fast)
