"""Serve chat completions from a GGUF base model, optionally with a LoRA adapter, via llama.cpp.

Prompts are rendered with the same chat template training uses; nothing here writes to stdout.
Engines stream their answers and serve one generation at a time behind a bounded line of
waiting callers; `pool.py` keeps them within a memory budget.
"""

from __future__ import annotations

import codecs
import ctypes
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from turing.tools.chat import ChatTemplateError, Message, read_chat_template
from turing.tools.errors import BusyError, ConflictError, InvalidInputError
from turing.tools.settings import number_setting

logger = logging.getLogger(__name__)
native_logger = logging.getLogger(__name__ + ".llama_cpp")

QUEUE_ENV = "TURING_ENGINE_QUEUE"
QUEUE_WAIT_ENV = "TURING_ENGINE_WAIT_S"
DEFAULT_QUEUE_LIMIT = 64
DEFAULT_WAIT_SECONDS = 120.0

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
    latency_ms: float  # from the call, so a wait for a busy engine counts
    time_to_first_token_ms: float
    finish_reason: str  # "stop": end of turn or a stop string; "length": max_tokens or context;
    # "cancelled": the stream was closed before its end


class _Slot:
    """Admission to an engine: one holder at a time, a bounded FIFO of waiters, a wait limit.

    Not a lock owned by a thread: a stream may take the slot on one thread and release it on
    another (e.g. an HTTP server iterating a stream from a worker pool).
    """

    def __init__(
        self,
        name: str,
        queue_limit: int,
        wait_seconds: float,
        when_retired_and_idle: Callable[[], None],
    ) -> None:
        self.name = name
        self.queue_limit = queue_limit
        self.wait_seconds = wait_seconds
        self.busy = False
        self._queue: deque[object] = deque()
        self._cond = threading.Condition()
        self._refusal: str | None = None  # set once the engine is retiring or closed
        self._drop_waiters = False
        self._when_retired_and_idle = when_retired_and_idle
        self._idle_reported = False

    @property
    def waiting(self) -> int:
        return len(self._queue)

    @property
    def refusing(self) -> bool:
        return self._refusal is not None

    def acquire(self) -> None:
        """Take the slot, waiting in line while another caller holds it.

        Raises:
            BusyError: The line is full, or the wait ran past `wait_seconds`.
            ConflictError: The engine was closed or unloaded.
        """
        try:
            self._admit()
        except BaseException:
            self._report_if_idle()  # the last caller leaving the line of a retired engine
            raise

    def _admit(self) -> None:
        with self._cond:
            self._check_open()
            if not self.busy and not self._queue:
                self.busy = True
                return
            if len(self._queue) >= self.queue_limit:
                raise BusyError(
                    f"engine {self.name} is busy: 1 request running and {len(self._queue)} "
                    f"waiting, at most {self.queue_limit} may wait ({QUEUE_ENV}); retry shortly"
                )
            self._wait_in_line(object())

    def _wait_in_line(self, ticket: object) -> None:
        self._queue.append(ticket)
        deadline = time.monotonic() + self.wait_seconds
        try:
            while True:
                if self._drop_waiters:
                    self._check_open()  # even when the slot just came free: closing wins
                if not self.busy and self._queue[0] is ticket:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise BusyError(
                        f"engine {self.name} stayed busy for {self.wait_seconds:g} s "
                        f"({QUEUE_WAIT_ENV}): 1 request running and {len(self._queue) - 1} "
                        "others waiting; retry shortly"
                    )
                self._cond.wait(remaining)
        except BaseException:
            self._queue.remove(ticket)
            self._cond.notify_all()
            raise
        self._queue.popleft()
        self.busy = True

    def release(self) -> None:
        """Give the slot back to the next caller in line."""
        with self._cond:
            self.busy = False
            self._cond.notify_all()
        self._report_if_idle()

    def refuse(self, reason: str, drop_waiters: bool) -> None:
        """Refuse new callers with `reason`; once nobody holds or waits, report the engine idle.

        Args:
            reason: The ConflictError message new (and, with drop_waiters, queued) callers get.
            drop_waiters: Also turn away callers already waiting instead of serving them.
        """
        with self._cond:
            self._refusal = reason
            self._drop_waiters = self._drop_waiters or drop_waiters
            self._cond.notify_all()
        self._report_if_idle()

    def _report_if_idle(self) -> None:
        """Call `when_retired_and_idle` once, the first time a refusing slot is left empty."""
        with self._cond:
            idle = self._refusal is not None and not self.busy and not self._queue
            report = idle and not self._idle_reported
            self._idle_reported = self._idle_reported or idle
        if report:
            self._when_retired_and_idle()

    def _check_open(self) -> None:
        if self._refusal is not None:
            raise ConflictError(self._refusal)


class Engine:
    """A loaded llama.cpp model (base GGUF plus optional LoRA adapter GGUF) that answers chats.

    A llama.cpp context is not thread-safe, so one engine runs one generation at a time: other
    callers wait in a bounded line and are turned away with BusyError past it.
    """

    def __init__(
        self,
        base_gguf: Path,
        adapter_gguf: Path | None = None,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        queue_limit: int | None = None,
        wait_seconds: float | None = None,
    ) -> None:
        """Load the base model and adapter.

        Args:
            base_gguf: The base model GGUF file.
            adapter_gguf: A llama.cpp LoRA adapter GGUF exported for this base, or None.
            n_ctx: Context window in tokens (prompt plus answer).
            n_threads: CPU threads for llama.cpp; defaults to every core this process may use.
            queue_limit: Most callers that may wait while one generates; TURING_ENGINE_QUEUE
                (default 64) when None.
            wait_seconds: Longest a caller waits in line before BusyError; TURING_ENGINE_WAIT_S
                (default 120) when None.

        Raises:
            InvalidInputError: A file is missing, a limit is invalid or llama.cpp cannot load it.
        """
        self.base_gguf = Path(base_gguf)
        self.adapter_gguf = Path(adapter_gguf) if adapter_gguf else None
        self.n_ctx = n_ctx
        self._check_files()
        self._slot = _Slot(
            self.describe(),
            queue_limit if queue_limit is not None else queue_limit_setting(),
            wait_seconds if wait_seconds is not None else wait_seconds_setting(),
            when_retired_and_idle=self._free,
        )
        _check_limits(self._slot.queue_limit, self._slot.wait_seconds)
        self.template = read_chat_template(self.base_gguf)

        self._llm = self._load(n_threads or len(os.sched_getaffinity(0)))
        self._add_bos = self._llm.metadata.get("tokenizer.ggml.add_bos_token") == "true"
        self._life = threading.Lock()  # guards freeing the model against tokenizing
        self._freed = threading.Event()
        self._stop_ids = self._end_token_ids()
        self.requests = 0
        self.tokens_out = 0
        logger.info("loaded engine %s", self.describe())

    def describe(self) -> str:
        """Name the engine by its files, for logs and errors."""
        if self.adapter_gguf is None:
            return str(self.base_gguf)
        return f"{self.base_gguf} with adapter {self.adapter_gguf}"

    @property
    def busy(self) -> bool:
        """True while a generation (or scoring call) holds the engine."""
        return self._slot.busy

    @property
    def waiting(self) -> int:
        """How many callers wait in line for the engine."""
        return self._slot.waiting

    @property
    def closed(self) -> bool:
        """True once the model's memory has been freed."""
        return self._freed.is_set()

    @property
    def retired(self) -> bool:
        """True once `close` or `retire` was called: new requests are refused from then on."""
        return self._slot.refusing

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

        Tokenizing reads only the vocabulary, so it does not wait for a running generation.

        Args:
            text: Rendered prompt text.

        Returns:
            llama.cpp token ids.
        """
        with self._life:
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

    def stream(
        self,
        messages: list[Message],
        max_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: list[str] | None = None,
    ) -> CompletionStream:
        """Start generating the assistant's next turn; iterate the result for text deltas.

        Everything that can refuse the request happens here, before any token: the sampling
        values, the prompt length and the engine's slot (waiting in line if it is busy). The
        returned stream holds the slot until it ends or is closed, so close it (or use it as a
        context manager) when not reading it to the end.

        Args:
            messages: Chat messages ({"role", "content"}), ending with the user's turn.
            max_tokens: Most tokens to generate; fewer when the context window runs out.
            temperature: 0 for greedy decoding; higher samples more freely.
            top_p: Nucleus sampling mass when temperature > 0, in (0, 1].
            stop: Extra strings that end the answer; they are not included in it.

        Returns:
            A CompletionStream yielding text deltas; `.completion` holds the totals at its end.

        Raises:
            InvalidInputError: Bad sampling values, or the prompt does not fit the context.
            BusyError: Too many callers already wait for this engine, or the wait timed out.
            ConflictError: The engine was closed or unloaded.
        """
        started = time.perf_counter()
        _check_sampling(max_tokens, temperature, top_p)
        stop = _check_stop(stop)
        prompt = self.tokenize(self.render(messages))
        if len(prompt) > self.n_ctx - 1:
            raise InvalidInputError(
                f"prompt is {len(prompt)} tokens but the context window is {self.n_ctx} tokens "
                f"(at most {self.n_ctx - 1} prompt tokens); shorten the conversation"
            )
        budget = min(max_tokens, self.n_ctx - len(prompt))

        self._acquire()
        try:
            tokens = self._sample(prompt, temperature, top_p)
        except BaseException:
            self._release()
            raise
        self.requests += 1
        return CompletionStream(self, tokens, len(prompt), budget, stop, started)

    def complete(
        self,
        messages: list[Message],
        max_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: list[str] | None = None,
    ) -> Completion:
        """Generate the assistant's next turn for a conversation: `stream` read to its end.

        Returns:
            The answer text (without template tokens), token counts and timings.

        Raises:
            InvalidInputError: Bad sampling values, or the prompt does not fit the context.
            BusyError: Too many callers already wait for this engine, or the wait timed out.
        """
        with self.stream(messages, max_tokens, temperature, top_p, stop) as stream:
            for _ in stream:
                pass
            return stream.completion

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

    def _piece(self, token: int) -> bytes | None:
        """The bytes of a sampled token, or None when the token ends the turn."""
        if token in self._stop_ids:
            return None
        piece: bytes = self._llm.detokenize([token])  # control tokens detokenize to b""
        return piece

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
        with self._holding() as llm:
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
        with self._holding() as llm:
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

    def close(self, timeout: float | None = None) -> bool:
        """Free the model and context once the running generation ends; later calls raise.

        Callers waiting in line are turned away with ConflictError.

        Args:
            timeout: Most seconds to wait for the running generation; None waits for it. On
                timeout the engine still frees itself when that generation ends.

        Returns:
            True when the memory has been freed.
        """
        self._slot.refuse(self._closed_reason(), drop_waiters=True)
        return self._freed.wait(timeout)

    def retire(self) -> bool:
        """Refuse new requests and free the model once the running and waiting ones are served.

        Returns:
            True when the engine was idle and its memory is freed already.
        """
        self._slot.refuse(self._closed_reason(), drop_waiters=False)
        return self.closed

    def _acquire(self) -> None:
        self._slot.acquire()
        if self._llm is None:  # freed by a close that raced this caller's admission
            self._slot.release()
            raise ConflictError(self._closed_reason())

    def _release(self) -> None:
        self._slot.release()  # frees the model when a retired engine's last request ends

    @contextmanager
    def _holding(self) -> Iterator[Any]:
        """Hold the engine's slot for a call that uses the llama.cpp context directly."""
        self._acquire()
        try:
            yield self._llm
        finally:
            self._release()

    def _free(self) -> None:
        with self._life:
            if self._llm is None:
                return
            self._llm.close()
            self._llm = None
        self._freed.set()
        logger.info("closed engine %s", self.describe())

    def _closed_reason(self) -> str:
        return f"engine for {self.describe()} was closed; get a fresh one from the engine pool"

    def _require_open(self) -> Any:
        if self._llm is None:
            raise ConflictError(self._closed_reason())
        return self._llm


class CompletionStream:
    """The text of one answer as it is generated; iterating yields str deltas.

    Deltas never contain template tokens, nor text that could still turn out to be the start
    of a stop string; joined, they equal `completion.text`. The stream holds its engine until
    it ends, is closed, leaves its `with` block or is garbage-collected.
    """

    def __init__(
        self,
        engine: Engine,
        tokens: Iterator[int],
        prompt_tokens: int,
        budget: int,
        stop: list[str],
        started: float,
    ) -> None:
        self._engine: Engine | None = engine
        self._tokens = tokens
        self._prompt_tokens = prompt_tokens
        self._budget = budget
        self._text = _StopText(stop)
        self._started = started
        self._first_token_at: float | None = None
        self._count = 0
        self._completion: Completion | None = None

    @property
    def completion(self) -> Completion:
        """The whole answer with its token counts and timings, once the stream has ended.

        Raises:
            ConflictError: The stream is still running; read it to the end or close it first.
        """
        if self._completion is None:
            raise ConflictError("the answer is still streaming: read it to the end or close it")
        return self._completion

    def __iter__(self) -> CompletionStream:
        return self

    def __next__(self) -> str:
        while self._completion is None:
            reason = self._step()
            if reason is not None:
                tail = self._text.finish()
                self._finish(reason)
                if tail:
                    return tail
                break
            delta = self._text.take()
            if delta:
                return delta
        raise StopIteration

    def _step(self) -> str | None:
        """Sample one token; return the finish reason when the answer has ended."""
        try:
            token = next(self._tokens)
        except StopIteration:
            return "length"
        except BaseException:
            self._finish("error")
            raise
        self._first_token_at = self._first_token_at or time.perf_counter()
        self._count += 1

        piece = self._engine._piece(token) if self._engine else None
        if piece is None or self._text.add(piece):
            return "stop"
        if self._count >= self._budget:
            return "length"
        return None

    def close(self) -> None:
        """End the answer early (finish_reason "cancelled") and release the engine."""
        if self._completion is None:
            self._finish("cancelled")

    def _finish(self, reason: str) -> None:
        done = time.perf_counter()
        self._completion = Completion(
            text=self._text.text() if reason != "cancelled" else self._text.sent(),
            prompt_tokens=self._prompt_tokens,
            completion_tokens=self._count,
            latency_ms=(done - self._started) * 1000,
            time_to_first_token_ms=((self._first_token_at or done) - self._started) * 1000,
            finish_reason=reason,
        )
        engine, self._engine = self._engine, None
        if engine is not None:
            close_generator = getattr(self._tokens, "close", None)
            if close_generator is not None:
                close_generator()  # leaves llama-cpp-python's generate() before the next call
            engine.tokens_out += self._count
            engine._release()

    def __enter__(self) -> CompletionStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        # An abandoned stream must not keep its engine from other callers.
        if getattr(self, "_completion", True) is None:
            self.close()


class _StopText:
    """Decodes answer bytes, cuts the text at the first stop string and hands out safe deltas.

    A delta never ends inside a possible stop string: text that could be the start of one is
    held back until the next token settles it.
    """

    def __init__(self, stop: list[str]) -> None:
        self._stop = [s for s in stop if s]
        self._hold = max((len(s) for s in self._stop), default=1) - 1
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._text = ""
        self._sent = 0
        self._stopped = False

    def add(self, piece: bytes) -> bool:
        """Append a token's bytes; return True when a stop string has appeared."""
        before = len(self._text)
        self._text += self._decoder.decode(piece)
        # A stop string not found before must end in the new text.
        start = max(0, before - self._hold)
        found = [at for at in (self._text.find(s, start) for s in self._stop) if at >= 0]
        if found:
            self._text = self._text[: min(found)]
            self._stopped = True
        return self._stopped

    def take(self) -> str:
        """Return the text not handed out yet that no stop string can still claim."""
        end = len(self._text)
        for size in range(min(self._hold, end - self._sent), 0, -1):
            tail = self._text[end - size :]
            if any(s.startswith(tail) for s in self._stop):
                end -= size
                break
        delta = self._text[self._sent : end]
        self._sent = end
        return delta

    def finish(self) -> str:
        """Flush the decoder and return everything not handed out yet."""
        if not self._stopped:
            self._text += self._decoder.decode(b"", final=True)
        delta = self._text[self._sent :]
        self._sent = len(self._text)
        return delta

    def text(self) -> str:
        """The answer so far (all of it once finished)."""
        return self._text

    def sent(self) -> str:
        """The text handed out so far."""
        return self._text[: self._sent]


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


def _check_stop(stop: list[str] | None) -> list[str]:
    if stop is None:
        return []
    if isinstance(stop, str) or not all(isinstance(s, str) for s in stop):
        raise InvalidInputError(f"stop={stop!r}: give a list of strings")
    return [s for s in stop if s]


def _check_limits(queue_limit: int, wait_seconds: float) -> None:
    if queue_limit < 0:
        raise InvalidInputError(f"queue_limit={queue_limit}: must be 0 (no waiting) or more")
    if not wait_seconds > 0:
        raise InvalidInputError(f"wait_seconds={wait_seconds}: must be positive")


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


# --- settings ------------------------------------------------------------------------------


def queue_limit_setting() -> int:
    """How many callers may wait for a busy engine: TURING_ENGINE_QUEUE, default 64."""
    return int(number_setting(QUEUE_ENV, DEFAULT_QUEUE_LIMIT, minimum=0, integer=True))


def wait_seconds_setting() -> float:
    """How long a caller waits for a busy engine: TURING_ENGINE_WAIT_S, default 120 seconds."""
    return number_setting(QUEUE_WAIT_ENV, DEFAULT_WAIT_SECONDS, integer=False, minimum=0.001)
