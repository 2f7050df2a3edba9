"""Streaming answers, one generation per engine with a bounded line, and the memory-budget pool."""

from __future__ import annotations

import gc
import json
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.tiny_model import smollm2_gguf
from tests.tools.test_engine import build_emitter_model, llama_cpp_importable
from turing.tools.deploy.gguf_export import export_model_gguf
from turing.tools.errors import BusyError, ConflictError, InvalidInputError

pytestmark = pytest.mark.skipif(
    not llama_cpp_importable(), reason="llama-cpp-python is not importable: pip install -e ."
)

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
COLOURS = [{"role": "user", "content": "Name three colours."}]


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture
def make_engine(tiny_gguf: Path) -> Iterator[Callable[..., Any]]:
    """Fresh tiny engines with chosen queue limits, closed after the test."""
    from turing.tools.query.engine import Engine

    made: list[Any] = []

    def make(**options: Any) -> Any:
        made.append(Engine(tiny_gguf, n_ctx=256, n_threads=1, **options))
        return made[-1]

    yield make
    for engine in made:
        engine.close(timeout=30)


@pytest.fixture(scope="module")
def emitter(tmp_path_factory: pytest.TempPathFactory) -> Callable[[int], Any]:
    """Engines over tiny models whose greedy answer repeats one chosen token forever."""
    from turing.tools.query.engine import Engine

    folder = tmp_path_factory.mktemp("emitters")

    def make(token_id: int) -> Any:
        path = folder / f"emits-{token_id}.gguf"
        if not path.exists():
            export_model_gguf(build_emitter_model(token_id), smollm2_gguf(), path)
        return Engine(path, n_ctx=256, n_threads=1)

    return make


def wait_until(condition: Callable[[], bool], seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def in_thread(target: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    """Run `target` on a thread; the dict gets its "result" or its "error"."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = target()
        except Exception as exc:  # the test inspects whatever was raised
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


# --- streaming -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("messages", "stop"),
    [(QUESTION, None), (COLOURS, None), (QUESTION, ["e", "the"]), (COLOURS, [" a", "\n"])],
)
def test_stream_deltas_join_to_the_text_complete_returns(
    tiny_engine: Any, messages: list[dict[str, str]], stop: list[str] | None
) -> None:
    whole = tiny_engine.complete(messages, max_tokens=24, stop=stop)

    with tiny_engine.stream(messages, max_tokens=24, stop=stop) as stream:
        deltas = list(stream)

    assert "".join(deltas) == whole.text == stream.completion.text
    assert all(deltas), "no empty deltas"
    assert stream.completion.completion_tokens == whole.completion_tokens
    assert stream.completion.finish_reason == whole.finish_reason
    assert 0 < stream.completion.time_to_first_token_ms <= stream.completion.latency_ms


def test_stop_string_spanning_tokens_never_reaches_a_delta(emitter: Any, tiny_engine: Any) -> None:
    (paris,) = tiny_engine.tokenize(" Paris")
    engine = emitter(paris)

    stopped = list(engine.stream(QUESTION, max_tokens=50, stop=["Paris Paris"]))
    # "Paris" could start "Paris London" until the next token shows it does not.
    held_back = list(engine.stream(QUESTION, max_tokens=3, stop=["Paris London"]))

    assert stopped == [" "]
    assert held_back == [" ", "Paris ", "Paris Paris"]  # the end releases what was held
    engine.close()


def test_template_tokens_never_reach_a_delta(emitter: Any) -> None:
    engine = emitter(1)  # <|im_start|>, a control token that does not end the turn

    stream = engine.stream(QUESTION, max_tokens=5)
    deltas = list(stream)

    assert deltas == []
    assert (stream.completion.text, stream.completion.completion_tokens) == ("", 5)
    engine.close()


def test_stream_refuses_at_the_call_before_any_token(tiny_engine: Any) -> None:
    with pytest.raises(InvalidInputError, match=r"prompt is \d+ tokens .* window is 256 tokens"):
        tiny_engine.stream([{"role": "user", "content": "word " * 300}])
    with pytest.raises(InvalidInputError, match="max_tokens=0"):
        tiny_engine.stream(QUESTION, max_tokens=0)
    with pytest.raises(InvalidInputError, match="list of strings"):
        tiny_engine.stream(QUESTION, stop="\n")

    assert not tiny_engine.busy, "a refused call holds nothing"


def test_completion_is_unavailable_until_the_stream_ends(tiny_engine: Any) -> None:
    stream = tiny_engine.stream(QUESTION, max_tokens=8)

    with pytest.raises(ConflictError, match="still streaming"):
        _ = stream.completion
    first = next(stream)
    stream.close()

    assert stream.completion.finish_reason == "cancelled"
    assert stream.completion.text == first
    assert list(stream) == []
    assert not tiny_engine.busy


# --- one generation at a time --------------------------------------------------------------


def test_concurrent_streams_on_one_engine_are_all_answered_in_turn(make_engine: Any) -> None:
    engine = make_engine(queue_limit=8)
    questions = [QUESTION, COLOURS] * 3
    expected = [engine.complete(q, max_tokens=16).text for q in questions]

    def ask(question: list[dict[str, str]]) -> str:
        with engine.stream(question, max_tokens=16) as stream:
            return "".join(piece for piece in stream)

    runs = [in_thread(lambda q=q: ask(q)) for q in questions]
    for thread, _ in runs:
        thread.join(timeout=120)

    assert [outcome.get("result") for _, outcome in runs] == expected
    assert engine.requests == 2 * len(questions)
    assert not engine.busy and engine.waiting == 0


def test_caller_past_the_queue_limit_gets_busy_error_naming_the_numbers(
    make_engine: Any,
) -> None:
    engine = make_engine(queue_limit=1)
    running = engine.stream(QUESTION, max_tokens=4)
    waiter, waited = in_thread(lambda: engine.complete(COLOURS, max_tokens=4))
    wait_until(lambda: engine.waiting == 1)

    with pytest.raises(BusyError) as refused:
        engine.stream(QUESTION, max_tokens=4)
    running.close()
    waiter.join(timeout=60)

    message = str(refused.value)
    assert "tiny.gguf is busy" in message
    assert "1 request running and 1 waiting, at most 1 may wait (TURING_ENGINE_QUEUE)" in message
    assert waited["result"].completion_tokens > 0, "the caller in line is still served"


def test_caller_waiting_past_the_wait_limit_gets_busy_error(make_engine: Any) -> None:
    engine = make_engine(queue_limit=4, wait_seconds=0.3)
    running = engine.stream(QUESTION, max_tokens=4)

    started = time.monotonic()
    with pytest.raises(BusyError, match=r"busy for 0\.3 s \(TURING_ENGINE_WAIT_S\)"):
        engine.complete(QUESTION, max_tokens=4)
    waited = time.monotonic() - started
    running.close()

    assert 0.25 < waited < 5
    assert engine.waiting == 0
    assert engine.complete(QUESTION, max_tokens=2).completion_tokens > 0


def test_limits_come_from_the_environment_and_bad_values_are_named(
    make_engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TURING_ENGINE_QUEUE", "0")
    engine = make_engine()
    held = engine.stream(QUESTION, max_tokens=2)

    with pytest.raises(BusyError, match="at most 0 may wait"):
        engine.stream(QUESTION, max_tokens=2)
    held.close()

    monkeypatch.setenv("TURING_ENGINE_WAIT_S", "soon")
    with pytest.raises(InvalidInputError, match="TURING_ENGINE_WAIT_S='soon': must be a number"):
        make_engine()


def test_an_abandoned_stream_frees_the_engine_when_collected(make_engine: Any) -> None:
    engine = make_engine(queue_limit=0)
    stream = engine.stream(QUESTION, max_tokens=8)
    next(stream)
    assert engine.busy

    del stream
    gc.collect()

    assert not engine.busy
    assert engine.complete(QUESTION, max_tokens=2).completion_tokens > 0


def test_close_turns_away_waiting_callers_and_retire_serves_them_first(
    make_engine: Any,
) -> None:
    closing, retiring = make_engine(queue_limit=1), make_engine(queue_limit=1)
    runs = []
    for engine in (closing, retiring):
        running = engine.stream(QUESTION, max_tokens=4)
        runs.append((running, *in_thread(lambda e=engine: e.complete(QUESTION, max_tokens=4))))
        wait_until(lambda e=engine: e.waiting == 1)

    closer, _ = in_thread(lambda: closing.close())
    wait_until(lambda: refuses_as_closed(closing))  # not BusyError: the line is full until then
    assert retiring.retire() is False, "busy: frees its memory later"
    assert retiring.retired and not retiring.closed
    with pytest.raises(ConflictError, match="was closed"):
        retiring.stream(QUESTION)
    for running, waiter, _ in runs:
        running.close()
        waiter.join(timeout=60)
    closer.join(timeout=60)

    assert isinstance(runs[0][2]["error"], ConflictError)
    assert runs[1][2]["result"].completion_tokens > 0
    assert closing.closed and retiring.closed


def refuses_as_closed(engine: Any) -> bool:
    try:
        engine.stream(QUESTION).close()
    except BusyError:
        return False
    except ConflictError:
        return True
    return False


# --- the pool ------------------------------------------------------------------------------


@pytest.fixture
def copies(tiny_gguf: Path, tmp_path: Path, tiny_engine: Any) -> list[Path]:
    """Three distinct files of the tiny model (tiny_engine has paid llama.cpp's one-off setup)."""
    return [Path(shutil.copy(tiny_gguf, tmp_path / f"{name}.gguf")) for name in "abc"]


def pool_of(**options: Any) -> Any:
    from turing.tools.query.pool import EnginePool

    return EnginePool(n_ctx=256, n_threads=1, **options)


def charged_mb(pool: Any) -> dict[str, float]:
    return {
        Path(row["base"]).name: max(row["estimated_mb"], row["measured_mb"]) for row in pool.stats()
    }


def test_estimate_counts_the_files_and_the_kv_cache(tiny_gguf: Path) -> None:
    from turing.tools.query.pool import COMPUTE_ALLOWANCE_MB, estimate_engine_mb

    small = estimate_engine_mb(tiny_gguf, None, 256)
    large = estimate_engine_mb(tiny_gguf, None, 4096)

    file_mb = tiny_gguf.stat().st_size / 2**20
    # tiny llama: 2 layers x positions x 2 KV heads x (16 key + 16 value dims) x 2 bytes (f16)
    kv_mb_per_position = 2 * 2 * (16 + 16) * 2 / 2**20
    assert small == pytest.approx(file_mb + 256 * kv_mb_per_position + COMPUTE_ALLOWANCE_MB)
    assert large - small == pytest.approx((4096 - 256) * kv_mb_per_position)


def test_loading_past_the_budget_closes_the_least_recently_used_idle_engine(
    copies: list[Path],
) -> None:
    pool = pool_of(memory_budget_mb=10_000)
    a, b = pool.get(copies[0]), pool.get(copies[1])
    held = sum(charged_mb(pool).values())
    pool.memory_budget_mb = held + 1  # room for two, not three
    assert pool.get(copies[0]) is a  # now b is the least recently used

    c = pool.get(copies[2])

    assert b.closed and not a.closed
    assert [Path(row["base"]).name for row in pool.stats()] == ["c.gguf", "a.gguf"]
    with pytest.raises(ConflictError, match="was closed"):
        b.complete(QUESTION, max_tokens=2)
    assert c.complete(QUESTION, max_tokens=2).completion_tokens > 0
    pool.close()


def test_busy_engines_are_not_evicted_and_the_load_waits_with_the_numbers(
    copies: list[Path],
) -> None:
    pool = pool_of(memory_budget_mb=10_000)
    a = pool.get(copies[0])
    pool.memory_budget_mb = sum(charged_mb(pool).values()) + 1
    running = a.stream(QUESTION, max_tokens=4)

    with pytest.raises(BusyError, match=r"busy engines hold \d+ MB of the \d+ MB budget"):
        pool.get(copies[1])
    running.close()
    b = pool.get(copies[1])

    assert a.closed and not b.closed
    pool.close()


def test_engine_larger_than_the_whole_budget_is_refused_with_the_numbers(
    copies: list[Path],
) -> None:
    pool = pool_of(memory_budget_mb=5)

    with pytest.raises(
        ConflictError,
        match=r"needs about \d+ MB but the whole engine memory budget"
        r" is 5 MB; raise TURING_ENGINE_MEMORY_MB",
    ):
        pool.get(copies[0])
    assert pool.stats() == []


def test_max_engines_still_caps_the_pool(copies: list[Path]) -> None:
    pool = pool_of(memory_budget_mb=10_000, max_engines=1)

    first = pool.get(copies[0])
    second = pool.get(copies[1])

    assert first.closed and not second.closed
    pool.close()


def test_unload_and_retain_free_engines_and_stats_describe_the_rest(copies: list[Path]) -> None:
    pool = pool_of(memory_budget_mb=10_000)
    a, b, c = (pool.get(path) for path in copies)
    a.complete(QUESTION, max_tokens=3)

    assert pool.unload(copies[2]) is True
    assert pool.unload(copies[2]) is False
    dropped = pool.retain({(copies[0], None)})

    assert [Path(base).name for base, _ in dropped] == ["b.gguf"]
    assert b.closed and c.closed and not a.closed
    (row,) = pool.stats()
    assert row["base"] == str(copies[0].resolve()) and row["adapter"] is None
    assert (row["requests"], row["tokens_out"], row["busy"], row["waiting"]) == (1, 3, False, 0)
    assert row["estimated_mb"] > 0 and row["measured_mb"] >= 0
    assert row["loaded_at"] <= row["last_used"]
    pool.close()
    assert a.closed


def test_an_engine_unloaded_while_streaming_finishes_then_frees_its_memory(
    copies: list[Path],
) -> None:
    pool = pool_of(memory_budget_mb=10_000)
    engine = pool.get(copies[0])
    stream = engine.stream(QUESTION, max_tokens=6)

    assert pool.unload(copies[0]) is True
    assert not engine.closed
    text = "".join(stream)

    assert stream.completion.completion_tokens > 0 and text == stream.completion.text
    assert engine.closed
    pool.close()


def test_budget_and_queue_limit_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from turing.tools.query.pool import physical_memory_mb

    monkeypatch.delenv("TURING_ENGINE_MEMORY_MB", raising=False)
    assert pool_of().memory_budget_mb == pytest.approx(physical_memory_mb() / 4)

    monkeypatch.setenv("TURING_ENGINE_MEMORY_MB", "512")
    monkeypatch.setenv("TURING_ENGINE_QUEUE", "3")
    pool = pool_of()
    assert (pool.memory_budget_mb, pool.queue_limit) == (512, 3)

    monkeypatch.setenv("TURING_ENGINE_MEMORY_MB", "-1")
    with pytest.raises(InvalidInputError, match=r"TURING_ENGINE_MEMORY_MB='-1': must be a number"):
        pool_of()


# --- memory really released ----------------------------------------------------------------

RELEASE_CHILD = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from turing.tools.query.pool import EnginePool, process_rss_mb

    pool = EnginePool(memory_budget_mb=4096, n_ctx=2048)
    cycles = []
    for _ in range(2):  # deploy, roll back, deploy again
        before = process_rss_mb()
        engine = pool.get(Path(sys.argv[1]))
        engine.complete([{"role": "user", "content": "What is 2 + 2?"}], max_tokens=16)
        (row,) = pool.stats()
        loaded = process_rss_mb()
        pool.retain(set())
        released = process_rss_mb()
        cycles.append({
            "estimated_mb": row["estimated_mb"], "measured_mb": row["measured_mb"],
            "rss_before": before, "rss_loaded": loaded, "rss_released": released,
            "closed": engine.closed,
        })
    Path(sys.argv[2]).write_text(json.dumps(cycles))
    """
)


def test_unloading_real_smollm2_gives_its_memory_back_to_the_system(tmp_path: Path) -> None:
    # A child process: its RSS is the engine's alone, and a native crash fails only this test.
    result = tmp_path / "cycles.json"

    done = subprocess.run(
        [sys.executable, "-c", RELEASE_CHILD, str(smollm2_gguf()), str(result)],
        capture_output=True,
        timeout=300,
    )

    assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
    cycles = json.loads(result.read_text())
    print(json.dumps(cycles, indent=1))  # the measured numbers, shown with pytest -s
    for cycle in cycles:
        load_cost = cycle["rss_loaded"] - cycle["rss_before"]
        assert cycle["closed"]
        assert cycle["measured_mb"] > 80, "SmolLM2's weights (~94 MB) are resident once loaded"
        assert cycle["estimated_mb"] == pytest.approx(cycle["measured_mb"], rel=0.3)
        assert cycle["rss_loaded"] - cycle["rss_released"] > 0.75 * load_cost
    # After the first load's one-off setup, a reload costs (and releases) nearly all of it.
    second = cycles[1]
    assert second["rss_released"] - second["rss_before"] < 0.1 * second["measured_mb"]
