"""Token counts of conversations, in the base model's own tokenizer and chat template.

The tokenizer is converted from the base model's GGUF once, in a child process (the conversion
needs transformers, which pulls in torch), and cached as a `tokenizer.json`; after that, counting
needs only the `tokenizers` library and runs in batches off the GIL.

Run as `python -m turing.tools.datasets.tokens BASE_GGUF OUT_DIR` to write the cache entry.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from turing.tools.chat import ChatTemplate, ChatTemplateError, read_chat_template
from turing.tools.errors import InvalidInputError

logger = logging.getLogger(__name__)

TOKENIZER_FILE = "tokenizer.json"
SETTINGS_FILE = "settings.json"
CONVERSION_TIMEOUT_S = 300
MEASURE_CHUNK = 8192
_LOADED: dict[str, TokenCounter] = {}
_LOAD_LOCK = threading.Lock()


# Marks the trained answers while rendering once; private-use characters that data rarely holds.
_MARK = "\ue000\ue001"


@dataclass(frozen=True)
class TokenLengths:
    """A conversation's tokens as training lays it out: in all, and before its first answer.

    `total` runs to the end-of-turn token of the last trained answer; `before_answer` is the
    prompt that precedes the first trained answer, which carries no loss.
    """

    total: int
    before_answer: int


@dataclass(frozen=True)
class TokenCounter:
    """Counts tokens exactly as training lays a conversation out for one base model."""

    tokenizer: Any  # tokenizers.Tokenizer
    template: ChatTemplate
    add_bos: bool
    fingerprint: str

    @cached_property
    def special_tokens(self) -> re.Pattern[str] | None:
        """Matches the tokenizer's special tokens in text (None when it has none)."""
        decoder = self.tokenizer.get_added_tokens_decoder()
        names = sorted({token.content for token in decoder.values() if token.special}, key=len)
        if not names:
            return None
        return re.compile("|".join(re.escape(name) for name in reversed(names)))

    def is_structural(self, token: str) -> bool:
        """Whether the chat template itself writes this token (a turn boundary, for one)."""
        return token in self.template.source or token == self.template.end_of_turn

    def measure(self, rows: Sequence[dict[str, Any]]) -> list[TokenLengths | str]:
        """Lengths of `{"messages": [...], "tools"?: [...]}` rows, tokenised in batches.

        Returns, per row, its lengths or, when the chat template cannot render it, the reason.
        """
        lengths: list[TokenLengths | str] = []
        # The Rust tokenizer runs outside the GIL: one chunk is tokenised while the next renders.
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = None
            for start in range(0, len(rows), MEASURE_CHUNK):
                rendered = self._render_all(rows[start : start + MEASURE_CHUNK])
                encoding = pool.submit(self.tokenizer.encode_batch, rendered[0], False)
                if pending is not None:
                    lengths += self._lengths(*pending)
                pending = (*rendered, encoding)
            if pending is not None:
                lengths += self._lengths(*pending)
        return lengths

    def _render_all(
        self, rows: Sequence[dict[str, Any]]
    ) -> tuple[list[str], list[tuple[int, int]], dict[int, str]]:
        texts: list[str] = []
        spans: list[tuple[int, int]] = []
        failures: dict[int, str] = {}
        for index, row in enumerate(rows):
            try:
                text, span = self._render(row["messages"], row.get("tools"))
            except ChatTemplateError as exc:
                failures[index] = str(exc)
                text, span = "", (0, 0)
            texts.append(text)
            spans.append(span)
        return texts, spans, failures

    def _lengths(
        self,
        texts: list[str],
        spans: list[tuple[int, int]],
        failures: dict[int, str],
        encoding: Future[list[Any]],
    ) -> list[TokenLengths | str]:
        bos = self.template.bos_token
        lengths: list[TokenLengths | str] = []
        for index, (text, encoded, (start, end)) in enumerate(
            zip(texts, encoding.result(), spans, strict=True)
        ):
            if index in failures:
                lengths.append(failures[index])
                continue
            extra = 1 if self.add_bos and not (bos and text.startswith(bos)) else 0
            total = _tokens_before(encoded, end, len(text))
            lengths.append(
                TokenLengths(total + extra, _tokens_before(encoded, start, len(text)) + extra)
            )
        return lengths

    def _render(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None
    ) -> tuple[str, tuple[int, int]]:
        """The conversation's text and the character span from its first trained answer to
        the end of its last one."""
        trained = [
            index
            for index, message in enumerate(messages)
            if message["role"] == "assistant" and message.get("weight", 1) != 0
        ]
        if not trained:
            text = self.template.render(messages, tools=tools)
            return text, (len(text), len(text))
        if trained == [len(messages) - 1]:
            found = self._render_final_answer(messages, tools)
            if found is not None:
                return found
        marked = self._render_marked(messages, tools, trained[0], trained[-1])
        if marked is not None:
            return marked

        # A template that rewrites content (or an answer that is only tool calls): slower, exact.
        pieces = self.template.split_turns(messages, tools)
        text = self.template.render(messages, tools=tools)
        return text, (len(pieces[0][0]), sum(len(p) + len(a) for p, a in pieces))

    def _render_final_answer(
        self, messages: list[dict[str, Any]], tools: Any
    ) -> tuple[str, tuple[int, int]] | None:
        """The common case, one answer at the end: its text and end-of-turn close the render."""
        content = messages[-1].get("content")
        if not isinstance(content, str) or not content or messages[-1].get("tool_calls"):
            return None
        text = self.template.render(messages, tools=tools)
        closed = content + self.template.end_of_turn
        start = text.rfind(closed)
        # Anything after the answer must be template furniture, not more conversation.
        if start < 0 or len(text) - start - len(closed) > len(self.template.end_of_turn) + 2:
            return None
        return text, (start, start + len(closed))

    def _render_marked(
        self, messages: list[dict[str, Any]], tools: Any, first: int, last: int
    ) -> tuple[str, tuple[int, int]] | None:
        chosen = {first, last}
        if any(not isinstance(messages[i].get("content"), str) for i in chosen):
            return None
        marked = [
            {**message, "content": _MARK + message["content"]} if index in chosen else message
            for index, message in enumerate(messages)
        ]
        text = self.template.render(marked, tools=tools)
        if text.count(_MARK) != len(chosen):
            return None

        start = text.find(_MARK)
        last_start = text.rfind(_MARK) - (len(_MARK) if last != first else 0)
        text = text.replace(_MARK, "")
        end_of_turn = text.find(self.template.end_of_turn, last_start)
        end = end_of_turn + len(self.template.end_of_turn) if end_of_turn >= 0 else len(text)
        return text, (start, end)


def _tokens_before(encoding: Any, offset: int, length: int) -> int:
    """How many tokens start before character `offset` of the encoded text."""
    if offset >= length:
        return len(encoding)
    found = encoding.char_to_token(offset)
    return len(encoding) if found is None else int(found)


def load_token_counter(base_gguf: Path, cache_root: Path) -> TokenCounter:
    """The token counter of a base model, converting and caching its tokenizer on first use.

    Args:
        base_gguf: The base model's GGUF file.
        cache_root: Folder of cached tokenizers (one subfolder per GGUF file version).

    Raises:
        InvalidInputError: The GGUF file has no usable tokenizer.
    """
    from tokenizers import Tokenizer

    folder = cache_root / _cache_key(base_gguf)
    with _LOAD_LOCK:
        if str(folder) in _LOADED:
            return _LOADED[str(folder)]
        if not (folder / SETTINGS_FILE).is_file():
            _convert_in_child(base_gguf, folder)

        settings = json.loads((folder / SETTINGS_FILE).read_text(encoding="utf-8"))
        tokenizer = Tokenizer.from_file(str(folder / TOKENIZER_FILE))
        template = read_chat_template(base_gguf)
        counter = TokenCounter(
            tokenizer=tokenizer,
            template=template,
            add_bos=bool(settings["add_bos"]),
            fingerprint=_fingerprint(folder / TOKENIZER_FILE, template, settings),
        )
        _LOADED[str(folder)] = counter
        return counter


def _cache_key(base_gguf: Path) -> str:
    stat = base_gguf.stat()
    identity = f"{base_gguf.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}"
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


def _fingerprint(tokenizer_file: Path, template: ChatTemplate, settings: dict[str, Any]) -> str:
    digest = hashlib.sha256(tokenizer_file.read_bytes())
    digest.update(template.source.encode())
    digest.update(json.dumps(settings, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def _convert_in_child(base_gguf: Path, folder: Path) -> None:
    logger.info("converting the tokenizer of %s (once per base model)", base_gguf)
    command = [sys.executable, "-m", "turing.tools.datasets.tokens", str(base_gguf), str(folder)]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=CONVERSION_TIMEOUT_S, check=False
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise InvalidInputError(f"cannot read the tokenizer of {base_gguf}: {last}")


def write_tokenizer_cache(base_gguf: Path, folder: Path) -> None:
    """Convert the GGUF's tokenizer to `tokenizer.json` plus its BOS setting, atomically."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    tokenizer = AutoTokenizer.from_pretrained(str(base_gguf.parent), gguf_file=base_gguf.name)
    staging = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    staging.mkdir(parents=True, exist_ok=True)
    tokenizer.backend_tokenizer.save(str(staging / TOKENIZER_FILE))
    settings = {"add_bos": bool(getattr(tokenizer, "add_bos_token", False))}
    (staging / SETTINGS_FILE).write_text(json.dumps(settings), encoding="utf-8")
    try:
        os.replace(staging, folder)
    except OSError:  # another process cached it first; theirs is as good
        shutil.rmtree(staging, ignore_errors=True)
        if not (folder / SETTINGS_FILE).is_file():
            raise


def main(argv: list[str]) -> int:
    """Entry point of the conversion child process; it reports on stderr through logging."""
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(message)s")
    if len(argv) != 2:
        logger.error("usage: python -m turing.tools.datasets.tokens BASE_GGUF OUT_DIR")
        return 2
    try:
        write_tokenizer_cache(Path(argv[0]), Path(argv[1]))
    except Exception as exc:  # the boundary of a child process: report and fail
        logger.error("%s: %s", type(exc).__name__, exc)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
