"""Read a dataset file into records, each with the physical line it starts on.

Handles the containers people actually have: JSON lines, a JSON array, records nested inside a
JSON object, and CSV/TSV with a sniffed delimiter and quoted multi-line cells. Text must be UTF-8
(a byte order mark is allowed); any other encoding is named in the error instead of being read
as mojibake. A broken record is reported with its line and reading goes on with the next one.
"""

from __future__ import annotations

import bisect
import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from turing.tools.datasets.problems import Problem, define
from turing.tools.errors import InvalidInputError

CONTAINERS = ("auto", "jsonl", "json", "csv")
CSV_DELIMITERS = ",\t;|"
SNIFF_CHARS = 64 * 1024
CSV_FIELD_LIMIT = 64 * 1024 * 1024  # the csv module's default of 128 KiB cuts long answers

INVALID_JSON = define(
    "invalid_json",
    "error",
    'make the line one complete JSON value: write a double quote inside a string as \\", '
    "close every bracket and brace",
)
TRAILING_COMMA = define(
    "trailing_comma", "error", "remove the comma after the record; JSON lines are not separated"
)
MULTILINE_RECORD = define(
    "multiline_record",
    "error",
    "put each record on a single line (json.dumps without indent), or make the whole file "
    "one JSON array",
)
NOT_AN_OBJECT = define(
    "not_an_object", "error", 'make each record a JSON object such as {"messages": [...]}'
)
INVALID_UNICODE = define(
    "invalid_unicode",
    "error",
    "write the whole character: an emoji escape needs both halves, e.g. \\ud83d\\ude00",
)
CSV_WRONG_CELL_COUNT = define(
    "csv_wrong_cell_count",
    "error",
    "give the row as many cells as the header; quote cells that contain the delimiter",
)


class Record(NamedTuple):
    """One record of the file: its parsed value and the physical line it starts on (1-based)."""

    line: int
    value: Any


@dataclass
class ReadResult:
    """The records of a file, the records that could not be parsed, and how the file is laid out."""

    records: list[Record] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    container: str = "jsonl"
    encoding: str = "utf-8"
    records_path: str | None = None
    delimiter: str | None = None
    blank_lines: int = 0
    crlf_lines: int = 0
    final_newline: bool = True
    columns: list[str] | None = None

    @property
    def records_read(self) -> int:
        """Records found in the file, parsed or not."""
        return len(self.records) + len(self.problems)

    def layout(self) -> dict[str, Any]:
        """The file's layout for the dataset report."""
        return {
            "container": self.container,
            "encoding": self.encoding,
            "records_path": self.records_path,
            "delimiter": self.delimiter,
            "columns": self.columns,
            "blank_lines": self.blank_lines,
            "crlf_line_endings": self.crlf_lines,
            "final_newline": self.final_newline,
        }


def read_records(
    path: Path, data: bytes, *, container: str = "auto", records_path: str | None = None
) -> ReadResult:
    """Split a file's bytes into records with their physical line numbers.

    Args:
        path: The file's path: named in errors; its suffix helps choose the container.
        data: The file's bytes.
        container: "jsonl", "json" (one JSON value holding the records), "csv" (or TSV), or
            "auto" to decide from the suffix and the content.
        records_path: For "json": a dotted path to the list of records inside the top-level
            object, e.g. "root.qapair"; found automatically when omitted.

    Raises:
        InvalidInputError: The file is not UTF-8 text, is empty, or its JSON or CSV structure
            is broken beyond the record level (a JSON array that does not parse, a CSV file
            with no header).
    """
    text, encoding = decode_text(path, data)
    if not text.strip():
        raise InvalidInputError(f"{path} is empty; it needs at least one record")

    chosen, document = container, None
    if container == "auto":
        chosen, document = _choose_container(path, text, records_path)
    if chosen == "csv" and records_path:
        raise InvalidInputError(
            f"{path} is CSV; records_path only applies to a JSON document, so leave it out"
        )
    if chosen == "csv":
        result = _read_csv(path, text)
    elif chosen == "json":
        result = _read_json_document(path, text, records_path, document)
    else:
        result = _read_jsonl(text)
    result.encoding = encoding
    result.crlf_lines = text.count("\r\n")
    result.final_newline = text.endswith("\n")
    return result


# --- bytes to text -------------------------------------------------------------------------


def decode_text(path: Path, data: bytes) -> tuple[str, str]:
    """The file's text and "utf-8" or "utf-8-sig"; any other encoding is an error naming it."""
    for bom, name in ((b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32")):
        if data.startswith(bom):
            raise _not_utf8(path, name, "its byte order mark")
    for bom, name in ((b"\xff\xfe", "UTF-16"), (b"\xfe\xff", "UTF-16")):
        if data.startswith(bom):
            raise _not_utf8(path, name, "its byte order mark")

    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        where = f"byte 0x{data[exc.start]:02x} on line {line}"
        stray = _stray_bytes(data)
        if stray:
            raise InvalidInputError(
                f"{path} is UTF-8 text except for {stray} byte(s) that are not, the first being "
                f"{where}; fix or remove those bytes (the rest of the file is fine as it is)"
            ) from exc
        raise _not_utf8(path, _guess_encoding(data), where) from exc

    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        if text.count("\x00") * 4 <= len(text):
            raise InvalidInputError(
                f"{path} holds NUL bytes (first on line {line}): it is binary data, not a text "
                "dataset file"
            )
        raise _not_utf8(path, "UTF-16", f"NUL bytes from line {line}")
    return text, "utf-8-sig" if data.startswith(b"\xef\xbb\xbf") else "utf-8"


def _stray_bytes(data: bytes) -> int:
    """How many bytes break UTF-8 in text that is otherwise UTF-8 with accents, else 0."""
    decoded = data.decode("utf-8", errors="replace")
    broken = decoded.count("\ufffd")
    accented = sum(1 for char in decoded if char > "\x7f") - broken
    return broken if accented >= 10 * broken else 0


# Single-byte encodings so alike on short or ordinary text that a guess between them is a coin
# toss; the multi-byte code pages of East Asia are told apart reliably.
_SINGLE_BYTE = ("cp", "iso8859", "latin", "mac", "koi8")
_MULTI_BYTE = ("cp932", "cp936", "cp949", "cp950")


def _guess_encoding(data: bytes) -> str:
    from charset_normalizer import from_bytes  # imported only when a file is not UTF-8

    best = from_bytes(data[: 1024 * 1024]).best()
    if best is None:
        return "binary data or an unknown encoding"
    name = best.encoding.replace("_", "-")
    if name.startswith(_SINGLE_BYTE) and not name.startswith(_MULTI_BYTE) and name != "cp1252":
        return f"cp1252 or another single-byte encoding (the closest guess is {name})"
    return name


def _not_utf8(path: Path, encoding: str, evidence: str) -> InvalidInputError:
    return InvalidInputError(
        f"{path} is not UTF-8 text: it looks like {encoding} ({evidence}); save it as UTF-8 "
        f"(for example `iconv -f {encoding.split()[0]} -t UTF-8`, naming the encoding it was "
        "written in) and try again"
    )


def _choose_container(path: Path, text: str, records_path: str | None) -> tuple[str, Any]:
    """The container, and the parsed document when telling needed a parse of it."""
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        return "csv", None
    start = text.lstrip()[:1]
    if records_path or start == "[":
        return "json", None  # a JSONL file of arrays is not a dataset shape anyone writes
    if start != "{":
        return ("json" if suffix == ".json" else "jsonl" if suffix == ".jsonl" else "csv"), None
    try:
        document = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return "jsonl", None  # several records or broken ones: JSON lines reports them by line
    # One object: a single record is a JSON lines file of one line; anything else holds records.
    if _looks_like_record(document) and "\n" not in text.strip():
        return "jsonl", None
    return "json", document


# --- JSON lines ----------------------------------------------------------------------------


def _read_jsonl(text: str) -> ReadResult:
    result = ReadResult(container="jsonl")
    lines = text.split("\n")  # not splitlines: U+2028 may sit inside a JSON string
    if lines[-1] == "":
        lines.pop()  # a final newline ends the last line and opens none
    numbers = [number for number, line in enumerate(lines, start=1) if line.strip()]
    result.blank_lines = len(lines) - len(numbers)

    values = _parse_all_at_once([lines[number - 1] for number in numbers])
    if values is None:
        _parse_line_by_line(text, lines, numbers, result)
        return result
    escaped = "\\u" in text
    for number, value in zip(numbers, values, strict=True):
        _add_record(result, number, value, escaped and "\\u" in lines[number - 1])
    return result


def _parse_all_at_once(lines: list[str]) -> list[Any] | None:
    """Every line's value from one parse of them all as an array, or None if any is broken.

    Only lines that each open and close an object qualify, and only if every value comes back
    an object, one per line; anything else (a record spread over lines, two on one line) is
    left to the line-by-line reader, which says where the trouble is.
    """
    if not all(line.lstrip()[:1] == "{" and line.rstrip()[-1:] == "}" for line in lines):
        return None
    try:
        values = json.loads("[" + ",".join(lines) + "]")
    except (json.JSONDecodeError, RecursionError):
        return None
    if len(values) != len(lines) or not all(isinstance(value, dict) for value in values):
        return None
    return values


def _parse_line_by_line(
    text: str, lines: list[str], numbers: list[int], result: ReadResult
) -> None:
    starts = _line_starts(text)
    skip_to = 0
    for number in numbers:
        if number <= skip_to:
            continue  # a line of a record spread over several, already reported
        line = lines[number - 1].removesuffix("\r")
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            problem, consumed = _diagnose_line(text, starts, number, line, exc)
            result.problems.append(problem)
            skip_to = number + consumed
        except RecursionError:
            result.problems.append(INVALID_JSON.at(number, "$", "nested too deeply to read"))
        else:
            _add_record(result, number, value, "\\u" in line)


def _add_record(result: ReadResult, line: int, value: Any, escaped: bool) -> None:
    # Only a \\u escape can put a lone surrogate (half of an emoji pair) into a string.
    if escaped and not _encodable(value):
        message = "a string holds a lone surrogate escape such as \\ud83d, half of a character"
        result.problems.append(INVALID_UNICODE.at(line, "$", message))
        return
    result.records.append(Record(line, value))


def _encodable(value: Any) -> bool:
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _diagnose_line(
    text: str, starts: list[int], number: int, line: str, exc: json.JSONDecodeError
) -> tuple[Problem, int]:
    """The problem of a JSON line that does not parse, and how many more lines it spans."""
    stripped = line.rstrip()
    if stripped.endswith(","):
        try:
            json.loads(stripped[:-1])
        except json.JSONDecodeError:
            pass
        else:
            return TRAILING_COMMA.at(number, "$", "the line ends with a comma after the record"), 0

    if stripped.lstrip()[:1] in ("{", "[") and exc.pos >= len(stripped):
        try:
            _, end = json.JSONDecoder().raw_decode(text, starts[number - 1] + _indent(line))
        except json.JSONDecodeError:
            pass
        else:
            last = bisect.bisect_right(starts, end - 1)
            message = f"one record is spread over lines {number}-{last}"
            return MULTILINE_RECORD.at(number, "$", message), last - number

    message = f"not valid JSON: {exc.msg} at column {exc.colno}"
    return INVALID_JSON.at(number, "$", message), 0


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _line_starts(text: str) -> list[int]:
    starts = [0]
    position = text.find("\n")
    while position >= 0:
        starts.append(position + 1)
        position = text.find("\n", position + 1)
    return starts


# --- one JSON document ---------------------------------------------------------------------


def _read_json_document(
    path: Path, text: str, records_path: str | None, document: Any = None
) -> ReadResult:
    if document is not None:
        keys = _records_keys(path, document, records_path)
    elif records_path or not text.lstrip().startswith("["):
        keys = _records_keys(path, _load_document(path, text, records_path), records_path)
    else:
        keys = []  # a top-level array is read element by element, each parsed once
    result = ReadResult(container="json", records_path=_format_path(keys) if keys else None)
    starts = _line_starts(text)
    escaped = "\\u" in text
    try:
        for offset, value in _array_elements(text, _position_of(text, keys)):
            _add_record(result, bisect.bisect_right(starts, offset), value, escaped)
    except json.JSONDecodeError as exc:
        raise _broken_document(path, exc.msg, exc.lineno, exc.colno) from exc
    except RecursionError as exc:
        raise InvalidInputError(f"{path} is nested too deeply to read as JSON") from exc
    if not result.records_read:
        raise InvalidInputError(f"{path} holds an empty list: there are no records to prepare")
    return result


def _load_document(path: Path, text: str, records_path: str | None) -> Any:
    try:
        return json.loads(text)
    except RecursionError as exc:
        raise InvalidInputError(f"{path} is nested too deeply to read as JSON") from exc
    except json.JSONDecodeError as exc:
        if records_path and path.suffix.lower() == ".jsonl":
            raise InvalidInputError(
                f"{path} is JSON lines, but records_path only applies to a file that is one "
                "JSON document; leave records_path out"
            ) from exc
        raise _broken_document(path, exc.msg, exc.lineno, exc.colno) from exc


def _broken_document(path: Path, reason: str, line: int, column: int) -> InvalidInputError:
    return InvalidInputError(
        f"{path} is not valid JSON: {reason} at line {line}, column {column}; a JSON file must "
        "be one array of records (or an object holding one), and JSON lines need a .jsonl name"
    )


# Keys that make an object one record of a known format, rather than a holder of records.
RECORD_SHAPES = (
    {"messages"},
    {"conversations"},
    {"instruction", "output"},
    {"prompt", "completion"},
    {"text", "label"},
)


def _looks_like_record(document: Any) -> bool:
    return isinstance(document, dict) and any(shape <= document.keys() for shape in RECORD_SHAPES)


def _records_keys(path: Path, document: Any, records_path: str | None) -> list[str]:
    """The keys leading from the document to its list of records."""
    if records_path:
        keys = [key for key in records_path.strip().removeprefix("$").split(".") if key]
        found = _follow(document, keys)
        if not isinstance(found, list):
            raise InvalidInputError(
                f"{path}: records_path {records_path!r} does not lead to a list of records; "
                f"the top-level keys are: {_key_list(document)}"
            )
        return keys

    if isinstance(document, list):
        return []
    if isinstance(document, dict):
        if _looks_like_record(document):
            raise InvalidInputError(
                f"{path} holds a single record spread over several lines; put one record per "
                "line (JSON lines) or wrap the records in one JSON array"
            )
        found = _largest_record_list(document)
        if found is not None:
            return found
    raise InvalidInputError(
        f"{path}: no list of records found; the top-level keys are: {_key_list(document)}; "
        "pass records_path to say where the records are"
    )


def _follow(document: Any, keys: list[str]) -> Any:
    for key in keys:
        if not isinstance(document, dict) or key not in document:
            return None
        document = document[key]
    return document


def _largest_record_list(document: dict[str, Any], depth: int = 4) -> list[str] | None:
    """Keys of the longest list of objects nested inside `document`, searched a few levels down."""
    found = _record_lists(document, [], depth)
    return max(found, key=lambda item: item[0])[1] if found else None


def _record_lists(
    document: dict[str, Any], keys: list[str], depth: int
) -> list[tuple[int, list[str]]]:
    found = []
    for key, value in document.items():
        if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
            found.append((len(value), [*keys, key]))
        elif isinstance(value, dict) and depth > 1:
            found += _record_lists(value, [*keys, key], depth - 1)
    return found


def _key_list(document: Any) -> str:
    if isinstance(document, dict):
        return ", ".join(repr(key) for key in list(document)[:20]) or "(none)"
    kinds = {list: "a list", str: "a string", bool: "true or false", type(None): "null"}
    return f"(none: the document is {kinds.get(type(document), 'a number')})"


def _format_path(keys: list[str]) -> str:
    return "$." + ".".join(keys)


_DECODER = json.JSONDecoder()


def _skip_space(text: str, position: int) -> int:
    while position < len(text) and text[position] in " \t\r\n":
        position += 1
    return position


def _position_of(text: str, keys: list[str]) -> int:
    """The offset where the value at `keys` starts in a document already known to parse."""
    position = _skip_space(text, 0)
    for key in keys:
        position = _value_of_key(text, position, key)
    return position


def _value_of_key(text: str, position: int, key: str) -> int:
    """Where the value of `key` starts in the object at `position`; the last one, as json.loads
    keeps the last of repeated keys."""
    found = -1
    position = _skip_space(text, position + 1)  # past "{"
    while text[position] != "}":
        name, position = _DECODER.raw_decode(text, position)
        position = _skip_space(text, _skip_space(text, position) + 1)  # past ":"
        if name == key:
            found = position
        _, position = _DECODER.raw_decode(text, position)
        position = _skip_space(text, position)
        if text[position] == ",":
            position = _skip_space(text, position + 1)
    return found


def _array_elements(text: str, position: int) -> Iterator[tuple[int, Any]]:
    """(offset, value) of each element of the JSON array starting at `position`.

    Checks the array's own punctuation, and that nothing but white space follows a top-level
    array, so a file read this way is held to what json.loads would accept.

    Raises:
        json.JSONDecodeError: The array is not valid JSON.
    """
    top_level = not text[:position].strip()
    position = _skip_space(text, position + 1)  # past "["
    if text.startswith("]", position):
        _check_after_array(text, position + 1, top_level)
        return
    while True:
        value, end = _DECODER.raw_decode(text, position)
        yield position, value
        position = _skip_space(text, end)
        if text.startswith("]", position):
            _check_after_array(text, position + 1, top_level)
            return
        if not text.startswith(",", position):
            raise json.JSONDecodeError("Expecting ',' delimiter", text, position)
        position = _skip_space(text, position + 1)


def _check_after_array(text: str, position: int, top_level: bool) -> None:
    if top_level and text[position:].strip():
        raise json.JSONDecodeError("Extra data", text, _skip_space(text, position))


# --- CSV -----------------------------------------------------------------------------------


def _read_csv(path: Path, text: str) -> ReadResult:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else sniff_delimiter(text)
    result = ReadResult(container="csv", delimiter=delimiter)
    lines = io.StringIO(text, newline="")
    # strict: an unclosed quote is an error instead of one cell swallowing the rest of the file
    reader = csv.reader(lines, delimiter=delimiter, strict=True)
    csv.field_size_limit(CSV_FIELD_LIMIT)

    header = _read_header(path, reader)
    result.columns = header
    start = reader.line_num + 1
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            # After broken quoting the reader cannot tell where the next row starts, so no row
            # after it can be trusted: the file is refused rather than partly stored.
            if "end of data" in str(exc):
                reason = "a quoted cell opened here never closes, so the rest of the file is in it"
            else:
                reason = f"the quoting breaks here ({exc}), so later rows cannot be told apart"
            raise InvalidInputError(
                f"{path}, line {start}: {reason}; close the quote, and write a quote inside a "
                'quoted cell as two ("")'
            ) from exc
        else:
            _add_csv_row(result, start, header, cells)
        start = reader.line_num + 1
    return result


def _read_header(path: Path, reader: Any) -> list[str]:
    try:
        header = [name.strip() for name in next(reader, [])]
    except csv.Error as exc:
        raise InvalidInputError(f"{path}: the header row cannot be read: {exc}") from exc
    if not any(header):
        raise InvalidInputError(f"{path} has no header row; a CSV file starts with column names")
    repeated = sorted({name for name in header if header.count(name) > 1 and name})
    if repeated:
        names = ", ".join(map(repr, repeated))
        raise InvalidInputError(f"{path}: the header names {names} more than once; rename them")
    return header


def _add_csv_row(result: ReadResult, line: int, header: list[str], cells: list[str]) -> None:
    if not any(cell.strip() for cell in cells):
        result.blank_lines += 1
        return
    if len(cells) > len(header) and any(cell.strip() for cell in cells[len(header) :]):
        message = f"has {len(cells)} cells but the header has {len(header)}"
        result.problems.append(CSV_WRONG_CELL_COUNT.at(line, "$", message))
        return
    result.records.append(Record(line, dict(zip(header, cells, strict=False))))


def sniff_delimiter(text: str) -> str:
    """The delimiter of a CSV text: the only one in its header, else the csv sniffer's choice."""
    header = text.split("\n", 1)[0]
    in_header = [delimiter for delimiter in CSV_DELIMITERS if delimiter in header]
    if len(in_header) == 1:
        return in_header[0]
    # Free text in data rows is full of commas and semicolons, so the header decides when it can.
    sample = text[:SNIFF_CHARS]
    if len(text) > SNIFF_CHARS:
        sample = sample[: sample.rfind("\n") + 1] or sample
    try:
        return csv.Sniffer().sniff(sample, delimiters=CSV_DELIMITERS).delimiter
    except csv.Error:
        counts = {delimiter: header.count(delimiter) for delimiter in CSV_DELIMITERS}
        return max(counts, key=lambda delimiter: counts[delimiter]) if any(counts.values()) else ","
