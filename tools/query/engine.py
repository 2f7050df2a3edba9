"""Serve chat completions from a GGUF base model, optionally with a LoRA adapter, via llama.cpp.

Prompts are rendered with the same chat template training uses; nothing here writes to stdout.
"""

from __future__ import annotations

import codecs
import ctypes
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from turing.tools.chat import ChatTemplateError, Message, read_chat_template
from turing.tools.errors import ConflictError, InvalidInputError

logger = logging.getLogger(__name__)
native_logger = logging.getLogger(__name__ + ".llama_cpp")

# ggml log levels: none, debug, info, warn, error (5 continues the previous message). Load-time
# info is a page of model metadata per engine, so it goes to debug.
_NATIVE_LEVELS = {
    0: logging.DEBUG,
    1: logging.DEBUG,
    2: logging.DEBUG,
    3: logging.WARNING,
    4: logging.ERROR,
}
_native_log_lock = threading.Lock()
_native_log_state: dict[str, Any] = {"callback": None, "level": logging.DEBUG}
# llama.cpp logs on the thread that called it; the last error explains a failed load.
_native_errors = threading.local()


@dataclass
class Completion:
    """One generated answer and what it cost."""

    text: str
    prompt_tokens: int
    completion_tokens: int  # every sampled token, the end-of-turn token included
    latency_ms: float
    time_to_first_token_ms: float
    finish_reason: str  # "stop": end of turn or a stop string; "length": max_tokens or context


class Engine:
    """A loaded llama.cpp model (base GGUF plus optional LoRA adapter GGUF) that answers chats.

    One engine runs one generation at a time; concurrent callers wait on its lock.
    """

    def __init__(
        self,
        base_gguf: Path,
        adapter_gguf: Path | None = None,
        n_ctx: int = 2048,
        n_threads: int | None = None,
    ) -> None:
        """Load the base model and adapter.

        Args:
            base_gguf: The base model GGUF file.
            adapter_gguf: A llama.cpp LoRA adapter GGUF exported for this base, or None.
            n_ctx: Context window in tokens (prompt plus answer).
            n_threads: CPU threads for llama.cpp; defaults to every core this process may use.

        Raises:
            InvalidInputError: A file is missing or llama.cpp cannot load it.
        """
        self.base_gguf = Path(base_gguf)
        self.adapter_gguf = Path(adapter_gguf) if adapter_gguf else None
        self.n_ctx = n_ctx
        self._check_files()
        self.template = read_chat_template(self.base_gguf)

        self._llm = self._load(n_threads or len(os.sched_getaffinity(0)))
        self._add_bos = self._llm.metadata.get("tokenizer.ggml.add_bos_token") == "true"
        self._lock = threading.Lock()
        self._stop_ids = self._end_token_ids()
        logger.info("loaded engine base=%s adapter=%s", self.base_gguf, self.adapter_gguf)

    def _check_files(self) -> None:
        if self.n_ctx < 16:
            raise InvalidInputError(f"n_ctx={self.n_ctx}: must be at least 16 tokens")
        for label, path in (("base model", self.base_gguf), ("adapter", self.adapter_gguf)):
            if path is not None and not path.is_file():
                raise InvalidInputError(f"{label} GGUF {path} does not exist")

    def _load(self, n_threads: int) -> Any:
        import llama_cpp

        _route_native_logs(llama_cpp)
        _native_errors.last = ""
        try:
            # verbose=True because verbose=False makes llama-cpp-python point fd 1 at /dev/null
            # while loading, which would swallow MCP protocol messages written meanwhile; the C
            # logs go to our logger instead.
            llm = llama_cpp.Llama(
                model_path=str(self.base_gguf),
                lora_path=str(self.adapter_gguf) if self.adapter_gguf else None,
                n_ctx=self.n_ctx,
                n_batch=min(512, self.n_ctx),
                n_threads=n_threads,
                n_threads_batch=n_threads,
                logits_all=False,
                verbose=True,
            )
        except (ValueError, RuntimeError) as exc:
            what = f"base {self.base_gguf}"
            if self.adapter_gguf:
                what += f" with LoRA adapter {self.adapter_gguf} (exported for this base?)"
            raise InvalidInputError(f"llama.cpp could not load {what}: {exc}") from exc
        llm.verbose = False  # silences llama-cpp-python's per-call prints from here on

        # llama-cpp-python 0.3.16 misses a failed adapter load (a NULL ctypes pointer is never
        # None) and would silently serve the bare base model.
        if self.adapter_gguf and not getattr(llm, "_lora_adapter", True):
            llm.close()
            raise InvalidInputError(
                f"llama.cpp could not load LoRA adapter {self.adapter_gguf} over base "
                f"{self.base_gguf}: {_native_errors.last or 'no reason logged'}"
            )
        return llm

    def _end_token_ids(self) -> set[int]:
        ids = {self._llm.token_eos()}
        for key in ("tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"):
            if key in self._llm.metadata:
                ids.add(int(self._llm.metadata[key]))
        end_of_turn = self._llm.tokenize(
            self.template.end_of_turn.encode(), add_bos=False, special=True
        )
        if len(end_of_turn) == 1:
            ids.add(end_of_turn[0])
        return ids

    def tokenize(self, text: str) -> list[int]:
        """Tokenize prompt text as served: special tokens parsed, BOS per the GGUF, never twice.

        Args:
            text: Rendered prompt text.

        Returns:
            llama.cpp token ids.
        """
        with self._lock:
            llm = self._require_open()
            # add_bos=True adds BOS only when the GGUF's tokenizer.ggml.add_bos_token says so.
            tokens: list[int] = llm.tokenize(text.encode(), add_bos=True, special=True)
        bos = llm.token_bos()
        if self._add_bos and len(tokens) > 1 and tokens[0] == tokens[1] == bos:
            tokens = tokens[1:]  # the template wrote BOS itself
        return tokens

    def render(self, messages: list[Message]) -> str:
        """Render a conversation to the prompt text the model sees, ending with the answer cue.

        Raises:
            InvalidInputError: The chat template rejects the messages.
        """
        try:
            return self.template.render(messages, add_generation_prompt=True)
        except ChatTemplateError as exc:
            raise InvalidInputError(str(exc)) from exc

    def complete(
        self,
        messages: list[Message],
        max_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: list[str] | None = None,
    ) -> Completion:
        """Generate the assistant's next turn for a conversation.

        Args:
            messages: Chat messages ({"role", "content"}), ending with the user's turn.
            max_tokens: Most tokens to generate; fewer when the context window runs out.
            temperature: 0 for greedy decoding; higher samples more freely.
            top_p: Nucleus sampling mass when temperature > 0, in (0, 1].
            stop: Extra strings that end the answer; they are not included in it.

        Returns:
            The answer text (without template tokens), token counts and timings.

        Raises:
            InvalidInputError: Bad sampling values, or the prompt does not fit the context.
        """
        _check_sampling(max_tokens, temperature, top_p)
        prompt = self.tokenize(self.render(messages))
        if len(prompt) > self.n_ctx - 1:
            raise InvalidInputError(
                f"prompt is {len(prompt)} tokens but the context window is {self.n_ctx} tokens "
                f"(at most {self.n_ctx - 1} prompt tokens); shorten the conversation"
            )
        budget = min(max_tokens, self.n_ctx - len(prompt))

        with self._lock:
            return self._generate(prompt, budget, temperature, top_p, stop or [])

    def _generate(
        self, prompt: list[int], budget: int, temperature: float, top_p: float, stop: list[str]
    ) -> Completion:
        started = time.perf_counter()
        first_token_at: float | None = None
        text = _StopText(stop)
        count = 0
        finish_reason = "length"

        for token in self._sample(prompt, temperature, top_p):
            first_token_at = first_token_at or time.perf_counter()
            count += 1
            if token in self._stop_ids:
                finish_reason = "stop"
                break
            if text.add(self._llm.detokenize([token])):
                finish_reason = "stop"
                break
            if count >= budget:
                break

        done = time.perf_counter()
        return Completion(
            text=text.finish(),
            prompt_tokens=len(prompt),
            completion_tokens=count,
            latency_ms=(done - started) * 1000,
            time_to_first_token_ms=((first_token_at or done) - started) * 1000,
            finish_reason=finish_reason,
        )

    def _sample(self, prompt: list[int], temperature: float, top_p: float) -> Iterator[int]:
        llm = self._require_open()
        # top_k=0 and min_p=0 switch those filters off; generate() reuses the KV cache for a
        # prompt prefix shared with the previous call.
        return iter(
            llm.generate(
                prompt,
                top_k=0,
                top_p=top_p,
                min_p=0.0,
                typical_p=1.0,
                temp=temperature,
                repeat_penalty=1.0,
            )
        )

    def next_token_logits(self, tokens: list[int]) -> np.ndarray:
        """Return the model's logits for the token after `tokens` (for parity checks and scoring).

        Args:
            tokens: Token ids, e.g. from `tokenize`; at most n_ctx of them.

        Returns:
            A float32 vector of vocabulary size.
        """
        import llama_cpp

        if not 0 < len(tokens) <= self.n_ctx:
            raise InvalidInputError(f"{len(tokens)} tokens: give 1 to {self.n_ctx} tokens")
        with self._lock:
            llm = self._require_open()
            llm.reset()
            llm.eval(tokens)
            logits = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
            return np.ctypeslib.as_array(logits, shape=(llm.n_vocab(),)).copy()

    def answer_log_likelihood(self, pieces: list[tuple[str, str]]) -> tuple[float, int]:
        """Sum the log-probabilities of the answer tokens of a conversation, as served.

        Args:
            pieces: (prompt text, answer text) pairs from `ChatTemplate.split_turns`; the
                prompts are read as context, every answer token is scored.

        Returns:
            (sum of natural-log probabilities of the answer tokens, number of those tokens).
        """
        import llama_cpp

        total, count = 0.0, 0
        with self._lock:
            llm = self._require_open()
            llm.reset()
            for index, (prompt, answer) in enumerate(pieces):
                prompt_ids = llm.tokenize(prompt.encode(), add_bos=index == 0, special=True)
                doubled = len(prompt_ids) > 1 and prompt_ids[0] == prompt_ids[1] == llm.token_bos()
                if index == 0 and doubled:
                    prompt_ids = prompt_ids[1:]  # the template wrote BOS itself
                answer_ids = llm.tokenize(answer.encode(), add_bos=False, special=True)
                if llm.n_tokens + len(prompt_ids) + len(answer_ids) > self.n_ctx:
                    break  # the rest does not fit the context window; score what does
                llm.eval(prompt_ids)
                for token in answer_ids:
                    logits = np.ctypeslib.as_array(
                        llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),)
                    ).astype(np.float64)
                    peak = logits.max()
                    log_norm = peak + np.log(np.exp(logits - peak).sum())
                    total += float(logits[token] - log_norm)
                    count += 1
                    llm.eval([token])
        return total, count

    def close(self) -> None:
        """Free the model and context; later calls raise ConflictError."""
        with self._lock:
            if self._llm is not None:
                self._llm.close()
                self._llm = None
                logger.info("closed engine base=%s adapter=%s", self.base_gguf, self.adapter_gguf)

    def _require_open(self) -> Any:
        if self._llm is None:
            raise ConflictError(
                f"engine for {self.base_gguf} (adapter {self.adapter_gguf}) was closed; get a "
                "fresh one from the engine pool"
            )
        return self._llm


class _StopText:
    """Accumulates decoded answer bytes and cuts the text at the first stop string."""

    def __init__(self, stop: list[str]) -> None:
        self._stop = [s for s in stop if s]
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._text = ""

    def add(self, piece: bytes) -> bool:
        """Append a token's bytes; return True when a stop string has appeared."""
        self._text += self._decoder.decode(piece)
        for marker in self._stop:
            at = self._text.find(marker)
            if at >= 0:
                self._text = self._text[:at]
                return True
        return False

    def finish(self) -> str:
        return self._text + self._decoder.decode(b"", final=True)


def _check_sampling(max_tokens: int, temperature: float, top_p: float) -> None:
    problems = []
    if max_tokens < 1:
        problems.append(f"max_tokens={max_tokens} must be at least 1")
    if temperature < 0:
        problems.append(f"temperature={temperature} must be 0 (greedy) or positive")
    if not 0 < top_p <= 1:
        problems.append(f"top_p={top_p} must be in (0, 1]")
    if problems:
        raise InvalidInputError("; ".join(problems))


def _route_native_logs(llama_cpp: Any) -> None:
    """Send llama.cpp's C-side log lines to Python logging (stderr), never to stdout."""
    with _native_log_lock:
        if _native_log_state["callback"] is not None:
            return

        @llama_cpp.llama_log_callback
        def forward(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
            # Level 5 continues the previous message, so it keeps that message's level.
            if level != 5:
                _native_log_state["level"] = _NATIVE_LEVELS.get(level, logging.DEBUG)
            message = text.decode("utf-8", errors="replace").rstrip()
            if not message:
                return
            native_logger.log(_native_log_state["level"], "%s", message)
            if _native_log_state["level"] >= logging.ERROR:
                _native_errors.last = message

        llama_cpp.llama_log_set(forward, ctypes.c_void_p(0))
        _native_log_state["callback"] = forward  # ctypes callbacks must outlive their use


class EnginePool:
    """Loaded engines keyed by (base, adapter); the least recently used is closed past the cap."""

    def __init__(self, max_engines: int = 2) -> None:
        """Create an empty pool holding at most `max_engines` loaded engines."""
        if max_engines < 1:
            raise InvalidInputError(f"max_engines={max_engines}: must be at least 1")
        self.max_engines = max_engines
        self._engines: OrderedDict[tuple[str, str | None], Engine] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, base_gguf: Path, adapter_gguf: Path | None = None) -> Engine:
        """Return the engine for this base and adapter, loading it on first use.

        An engine evicted while a caller still holds it raises ConflictError on its next call;
        call `get` again right before each use.
        """
        key = (
            str(Path(base_gguf).resolve()),
            str(Path(adapter_gguf).resolve()) if adapter_gguf else None,
        )
        evicted: list[Engine] = []
        with self._lock:
            engine = self._engines.get(key)
            if engine is None:
                # Loading under the lock keeps two callers from loading the same model twice.
                engine = Engine(Path(key[0]), Path(key[1]) if key[1] else None)
                self._engines[key] = engine
            self._engines.move_to_end(key)
            while len(self._engines) > self.max_engines:
                evicted.append(self._engines.popitem(last=False)[1])

        # Closing waits for the evicted engine's running generation, so not under the pool lock.
        for old in evicted:
            old.close()
        return engine

    def close(self) -> None:
        """Close every engine in the pool."""
        with self._lock:
            engines = list(self._engines.values())
            self._engines.clear()
        for engine in engines:
            engine.close()
