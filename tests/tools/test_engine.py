"""llama.cpp serving: prompts, stops, context limits, threads, the engine pool, a clean stdout."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.tiny_model import smollm2_gguf, tiny_llama_config
from turing.tools.deploy.gguf_export import export_model_gguf
from turing.tools.errors import ConflictError, InvalidInputError


def llama_cpp_importable() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


pytestmark = pytest.mark.skipif(
    not llama_cpp_importable(), reason="llama-cpp-python is not importable: pip install -e ."
)

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2_engine() -> Iterator[Any]:
    from turing.tools.query.engine import Engine

    engine = Engine(smollm2_gguf(), n_ctx=1024)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def smollm2_tokenizer() -> Any:
    from transformers import AutoTokenizer

    base = smollm2_gguf()
    return AutoTokenizer.from_pretrained(base.parent, gguf_file=base.name)


@pytest.fixture(scope="module")
def emitter(tmp_path_factory: pytest.TempPathFactory) -> Callable[[int, int], Any]:
    """Make engines over tiny models whose greedy answer repeats one chosen token forever."""
    from turing.tools.query.engine import Engine

    folder = tmp_path_factory.mktemp("emitters")

    def make(token_id: int, n_ctx: int = 256) -> Any:
        path = folder / f"emits-{token_id}.gguf"
        if not path.exists():
            export_model_gguf(build_emitter_model(token_id), smollm2_gguf(), path)
        return Engine(path, n_ctx=n_ctx, n_threads=1)

    return make


def build_emitter_model(token_id: int) -> Any:
    """A llama whose next-token logits always peak at `token_id`, whatever the prompt.

    Attention and MLP outputs are zero, so the last hidden state is the (shared) embedding, and
    only the output row of `token_id` lines up with it.
    """
    import torch
    from transformers import LlamaForCausalLM

    config = tiny_llama_config()
    config.tie_word_embeddings = False
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" not in name:
                param.zero_()
        model.model.embed_tokens.weight.fill_(1.0)
        model.lm_head.weight[token_id].fill_(1.0)
    return model


# --- prompts and answers -------------------------------------------------------------------


CONVERSATIONS = {
    "question": QUESTION,
    "system-and-turns": [
        {"role": "system", "content": "You answer in one word."},
        {"role": "user", "content": "Colour of the sky?"},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "And grass?"},
    ],
    "unicode-code-and-spacing": [
        {"role": "user", "content": "Ünïcödé 🚀 naïve café\n\n  def f(x):\n\treturn x**2  # 平方"},
    ],
}


@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_served_prompt_tokens_equal_transformers_tokens_for_the_same_text(
    name: str, smollm2_engine: Any, smollm2_tokenizer: Any
) -> None:
    text = smollm2_engine.render(CONVERSATIONS[name])

    served = smollm2_engine.tokenize(text)

    assert served == smollm2_tokenizer(text)["input_ids"]
    assert served.count(1) == text.count("<|im_start|>"), "template tokens parse as one token each"


def test_template_tokens_the_model_emits_never_reach_the_answer_text(emitter: Any) -> None:
    engine = emitter(1)  # token 1 is <|im_start|>, a control token that does not end the turn

    completion = engine.complete(QUESTION, max_tokens=6)

    assert completion.text == ""
    assert completion.completion_tokens == 6
    assert completion.finish_reason == "length"
    engine.close()


def test_end_of_turn_token_stops_the_answer(emitter: Any) -> None:
    engine = emitter(2)  # <|im_end|>

    completion = engine.complete(QUESTION, max_tokens=50)

    assert (completion.text, completion.completion_tokens, completion.finish_reason) == (
        "",
        1,
        "stop",
    )
    engine.close()


def test_stop_string_cuts_the_answer_before_it(emitter: Any, tiny_engine: Any) -> None:
    (paris,) = tiny_engine.tokenize(" Paris")
    engine = emitter(paris)

    unstopped = engine.complete(QUESTION, max_tokens=4)
    stopped = engine.complete(QUESTION, max_tokens=50, stop=["Paris Paris"])

    assert (unstopped.text, unstopped.finish_reason) == (" Paris" * 4, "length")
    assert (stopped.text, stopped.finish_reason, stopped.completion_tokens) == (" ", "stop", 2)
    engine.close()


def test_answer_never_runs_past_the_context_window(emitter: Any, tiny_engine: Any) -> None:
    (paris,) = tiny_engine.tokenize(" Paris")
    engine = emitter(paris, n_ctx=64)

    completion = engine.complete(QUESTION, max_tokens=500)

    assert completion.prompt_tokens + completion.completion_tokens == 64
    assert completion.finish_reason == "length"
    engine.close()


def test_prompt_longer_than_the_context_is_refused_with_the_numbers(emitter: Any) -> None:
    engine = emitter(2, n_ctx=64)
    long_question = [{"role": "user", "content": "word " * 100}]

    with pytest.raises(InvalidInputError, match=r"prompt is 1\d\d tokens .* window is 64 tokens"):
        engine.complete(long_question)
    engine.close()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_tokens": 0}, "max_tokens=0"),
        ({"temperature": -1.0}, "temperature=-1.0"),
        ({"top_p": 0.0}, r"top_p=0\.0"),
    ],
)
def test_bad_sampling_values_are_refused_naming_them(
    tiny_engine: Any, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidInputError, match=message):
        tiny_engine.complete(QUESTION, **options)


def test_greedy_answers_repeat_and_sampled_answers_report_timings(tiny_engine: Any) -> None:
    first = tiny_engine.complete(QUESTION, max_tokens=12)
    again = tiny_engine.complete(QUESTION, max_tokens=12)
    sampled = tiny_engine.complete(QUESTION, max_tokens=12, temperature=0.9, top_p=0.9)

    assert first.text == again.text
    assert first.completion_tokens == again.completion_tokens > 0
    assert 0 < sampled.time_to_first_token_ms <= sampled.latency_ms


def test_two_threads_querying_one_engine_both_get_their_own_answers(tiny_engine: Any) -> None:
    questions = [QUESTION, [{"role": "user", "content": "Name three colours."}]]
    expected = [tiny_engine.complete(q, max_tokens=24).text for q in questions]
    answers: dict[int, str] = {}

    def ask(index: int) -> None:
        answers[index] = tiny_engine.complete(questions[index], max_tokens=24).text

    threads = [threading.Thread(target=ask, args=(i,)) for i in (0, 1, 0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert answers == {0: expected[0], 1: expected[1]}


# --- the engine pool -----------------------------------------------------------------------


def test_pool_reuses_engines_and_closes_the_least_recently_used(
    tiny_gguf: Path, tmp_path: Path
) -> None:
    from turing.tools.query.pool import EnginePool

    a, b, c = (shutil.copy(tiny_gguf, tmp_path / f"{name}.gguf") for name in "abc")
    pool = EnginePool(max_engines=2)

    engine_a = pool.get(Path(a))
    engine_b = pool.get(Path(b))
    assert pool.get(Path(a)) is engine_a
    pool.get(Path(c))

    assert engine_a.complete(QUESTION, max_tokens=2).completion_tokens > 0
    with pytest.raises(ConflictError, match="was closed"):
        engine_b.complete(QUESTION, max_tokens=2)
    assert pool.get(Path(b)) is not engine_b
    pool.close()


def test_pool_loads_an_engine_once_when_threads_ask_together(tiny_gguf: Path) -> None:
    from turing.tools.query.pool import EnginePool

    pool = EnginePool()
    got: list[Any] = []
    threads = [threading.Thread(target=lambda: got.append(pool.get(tiny_gguf))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert len(got) == 4
    assert all(engine is got[0] for engine in got)
    pool.close()


def test_missing_model_file_is_refused_naming_it(tmp_path: Path) -> None:
    from turing.tools.query.engine import Engine

    with pytest.raises(InvalidInputError, match=r"base model GGUF .*nowhere\.gguf does not exist"):
        Engine(tmp_path / "nowhere.gguf")


def test_adapter_file_llama_cpp_rejects_is_refused_instead_of_serving_the_base(
    tiny_gguf: Path,
) -> None:
    from turing.tools.query.engine import Engine

    with pytest.raises(InvalidInputError, match=r"expect general\.type to be 'adapter'"):
        Engine(tiny_gguf, adapter_gguf=tiny_gguf, n_threads=1)


# --- process hygiene -----------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from turing.tools.query.engine import Engine

    engine = Engine(Path(sys.argv[1]), n_ctx=512)
    story = engine.complete(
        [{"role": "user", "content": "Tell me a long story about a dragon."}], max_tokens=20
    )
    answer = engine.complete([{"role": "user", "content": "What is 2 + 2?"}], max_tokens=64)
    engine.close()
    Path(sys.argv[2]).write_text(json.dumps([story.__dict__, answer.__dict__]))
    """
)


def test_real_smollm2_decode_survives_and_writes_nothing_to_stdout(tmp_path: Path) -> None:
    # llama-cpp-python 0.3.36 built natively here segfaults in llama_decode on SmolLM2; a
    # child process turns that crash into a failed assertion instead of a dead test run.
    result = tmp_path / "result.json"

    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(smollm2_gguf()), str(result)],
        capture_output=True,
        timeout=300,
    )

    assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
    assert done.stdout == b"", "stdout belongs to the MCP protocol"
    story, answer = json.loads(result.read_text())
    assert story["completion_tokens"] == 20
    assert answer["finish_reason"] == "stop"
    assert "4" in answer["text"]
    assert "<|im_" not in story["text"] + answer["text"]


def test_importing_serving_and_export_modules_loads_no_heavy_libraries() -> None:
    code = (
        "import sys, turing.tools.query.engine, turing.tools.deploy.gguf_export\n"
        "print(sorted({'torch', 'transformers', 'peft', 'llama_cpp'} & set(sys.modules)))"
    )

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
