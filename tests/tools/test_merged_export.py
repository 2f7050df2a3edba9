"""Merged GGUF export and export parity: llama.cpp answers as the PyTorch model it came from."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from tests.server.test_evals import finished, trained_version
from tests.tiny_model import smollm2_gguf
from tests.tools.test_gguf_export import (
    REFUSED_ADAPTERS,
    add_random_lora,
    load_from_gguf,
    requires_llama_cpp,
)
from turing.server.quickstart import LifecycleError, Session
from turing.tools.deploy.gguf_export import export_lora_adapter
from turing.tools.deploy.merge import export_merged
from turing.tools.deploy.parity import ParityReport, measure_parity
from turing.tools.errors import InvalidInputError

logger = logging.getLogger(__name__)

ASK = [{"role": "user", "content": "my invoice shows the wrong amount"}]


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.tiny_model import build_tiny_base

    return build_tiny_base(tmp_path_factory.mktemp("tiny") / "tiny.gguf", seed=0)


@pytest.fixture(scope="module")
def tiny_adapter(tiny_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """The tiny base with a random non-zero LoRA on every linear layer, and its saved folder."""
    peft_model = add_random_lora(load_from_gguf(tiny_gguf), 1, 0.05)
    folder = tmp_path_factory.mktemp("adapter") / "adapter"
    peft_model.save_pretrained(folder)
    return peft_model, folder


def parity_with(model: Any, gguf: Path, adapter: Path | None = None) -> ParityReport:
    from transformers import AutoTokenizer

    from turing.tools.query.engine import Engine

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    served = Engine(gguf, adapter, n_ctx=512)
    try:
        report = measure_parity(model, tokenizer, served, max_tokens=16)
    finally:
        served.close()
    logger.warning("parity %s: %s", gguf.name, json.dumps(report.summary()))
    return report


# --- tiny model ----------------------------------------------------------------------------


@requires_llama_cpp
def test_adapter_gguf_and_merged_f16_answer_exactly_as_peft_on_eight_prompts(
    tiny_gguf: Path, tiny_adapter: tuple[Any, Path], tmp_path: Path
) -> None:
    peft_model, folder = tiny_adapter
    adapter = export_lora_adapter(folder, tiny_gguf, tmp_path / "adapter.gguf")
    merged = export_merged(tiny_gguf, folder, tmp_path / "merged-f16.gguf", "f16")

    for report in (parity_with(peft_model, tiny_gguf, adapter), parity_with(peft_model, merged)):
        assert len(report.prompts) == 8
        assert all(p.steps == 16 for p in report.prompts), "the random model never stops early"
        assert report.text_match_rate == 1.0, report.summary()
        assert report.next_token_agreement == 1.0, report.summary()


@requires_llama_cpp
def test_merged_q8_0_keeps_nine_in_ten_next_tokens(
    tiny_gguf: Path, tiny_adapter: tuple[Any, Path], tmp_path: Path
) -> None:
    from gguf import GGMLQuantizationType, GGUFReader

    peft_model, folder = tiny_adapter
    merged = export_merged(tiny_gguf, folder, tmp_path / "merged-q8_0.gguf", "q8_0")

    types = {t.name: t.tensor_type for t in GGUFReader(str(merged)).tensors}
    assert types["blk.0.attn_q.weight"] == GGMLQuantizationType.Q8_0
    assert types["blk.0.attn_norm.weight"] == GGMLQuantizationType.F32
    report = parity_with(peft_model, merged)
    assert report.next_token_agreement >= 0.9, report.summary()


def test_merged_file_carries_the_base_tokenizer_template_and_stop_tokens(
    tiny_gguf: Path, tiny_adapter: tuple[Any, Path], tmp_path: Path
) -> None:
    from gguf import GGUFReader

    merged = export_merged(tiny_gguf, tiny_adapter[1], tmp_path / "merged.gguf", "f16")

    base_fields, merged_fields = GGUFReader(str(tiny_gguf)).fields, GGUFReader(str(merged)).fields
    keys = [key for key in base_fields if key.startswith("tokenizer.")]
    assert {"tokenizer.chat_template", "tokenizer.ggml.eos_token_id"} <= set(keys)
    for key in keys:
        assert merged_fields[key].contents() == base_fields[key].contents(), key


@pytest.mark.parametrize("case", list(REFUSED_ADAPTERS))
def test_merged_export_refuses_non_lora_tensors_naming_them(
    case: str, tiny_gguf: Path, tmp_path: Path
) -> None:
    options, message = REFUSED_ADAPTERS[case]
    peft_model = add_random_lora(load_from_gguf(tiny_gguf), 2, 0.05, **options)
    peft_model.save_pretrained(tmp_path / "adapter")

    with pytest.raises(InvalidInputError, match="cannot be merged and exported to GGUF") as refused:
        export_merged(tiny_gguf, tmp_path / "adapter", tmp_path / "merged.gguf")

    assert refused.match(message)
    assert not (tmp_path / "merged.gguf").exists()


@pytest.mark.parametrize("dtype", ["f32", "q4_0", ""])
def test_merged_export_names_the_allowed_dtypes(
    dtype: str, tiny_gguf: Path, tiny_adapter: tuple[Any, Path], tmp_path: Path
) -> None:
    with pytest.raises(InvalidInputError, match=rf"dtype={dtype!r} .* use one of f16, q8_0"):
        export_merged(tiny_gguf, tiny_adapter[1], tmp_path / "merged.gguf", dtype)


def test_a_merge_that_overruns_its_time_is_stopped_with_a_clear_error(
    tiny_gguf: Path, tiny_adapter: tuple[Any, Path], tmp_path: Path
) -> None:
    with pytest.raises(InvalidInputError, match=r"did not finish within 0\.5 s.*MERGE_TIMEOUT"):
        export_merged(tiny_gguf, tiny_adapter[1], tmp_path / "merged.gguf", timeout_s=0.5)
    assert list(tmp_path.iterdir()) == []


def test_a_merge_that_fails_in_the_child_reports_its_reason(
    tiny_gguf: Path, tiny_adapter: tuple[Any, Path], tmp_path: Path
) -> None:
    # The adapter passes the checks, but peft cannot load a config it does not know.
    broken = tmp_path / "adapter"
    broken.mkdir()
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        (broken / name).write_bytes((tiny_adapter[1] / name).read_bytes())
    config = json.loads((broken / "adapter_config.json").read_text())
    (broken / "adapter_config.json").write_text(json.dumps({**config, "r": "eight"}))

    with pytest.raises(InvalidInputError, match=r"merging adapter .* failed: \w+Error"):
        export_merged(tiny_gguf, broken, tmp_path / "merged.gguf")
    assert not (tmp_path / "merged.gguf").exists()


# --- the real SmolLM2 ----------------------------------------------------------------------


@requires_llama_cpp
@pytest.mark.slow
def test_real_smollm2_with_a_random_lora_keeps_parity_through_both_exports(
    tmp_path: Path,
) -> None:
    base = smollm2_gguf()
    peft_model = add_random_lora(load_from_gguf(base), 1, 0.02)
    peft_model.save_pretrained(tmp_path / "adapter")
    adapter = export_lora_adapter(tmp_path / "adapter", base, tmp_path / "adapter.gguf")
    merged = export_merged(base, tmp_path / "adapter", tmp_path / "merged-f16.gguf", "f16")

    over_q4_1 = parity_with(peft_model, base, adapter)
    merged_f16 = parity_with(copy.deepcopy(peft_model), merged)

    # The adapter GGUF runs over the Q4_1 base with 8-bit activations, PyTorch in f32 on the
    # dequantized weights; the merged f16 file is closer to PyTorch's weights.
    assert over_q4_1.next_token_agreement >= 0.9, over_q4_1.summary()
    assert merged_f16.next_token_agreement >= 0.95, merged_f16.summary()
    assert merged_f16.text_match_rate >= 0.75, merged_f16.summary()


# --- through the MCP server ----------------------------------------------------------------


@requires_llama_cpp
@pytest.mark.anyio
async def test_a_merged_version_is_exported_once_then_deployed_queried_and_evaluated(
    session: Session, tmp_path: Path, tiny_base: Path
) -> None:
    adapter = await trained_version(session, tmp_path, tiny_base)
    run_id = adapter["run_id"]

    merged = await session.call("export_model", run_id=run_id, format="merged", dtype="f16")
    again = await session.call("export_model", run_id=run_id, format="merged", dtype="f16")
    q8_0 = await session.call("export_model", run_id=run_id, format="merged", dtype="q8_0")
    assert merged["format"] == "gguf-merged-f16" and q8_0["format"] == "gguf-merged-q8_0"
    assert again == merged
    assert len({adapter["id"], merged["id"], q8_0["id"]}) == 3
    assert Path(merged["gguf_path"]).name == "model.gguf"

    # The merged file answers as the adapter GGUF over the base does.
    ask = {"messages": ASK, "max_tokens": 8}
    via_adapter = await session.call("query_model", model=adapter["id"], **ask)
    via_merged = await session.call("query_model", model=merged["id"], **ask)
    assert via_merged["text"] == via_adapter["text"]

    deployed = await session.call("deploy", model=merged["id"], deployment="merged-triage")
    assert deployed["version_id"] == merged["id"]
    answer = await session.call("query_model", model="merged-triage", **ask)
    assert answer["version_id"] == merged["id"] and answer["text"] == via_merged["text"]

    judged = await finished(
        session,
        await session.call("run_eval", model=merged["id"], dataset_id=adapter["dataset_id"]),
    )
    assert judged["version_id"] == merged["id"] and judged["backend"] == "llama_cpp"
    assert "accuracy" in judged["scores"]["model"]
    with pytest.raises(LifecycleError, match=r"has no PyTorch adapter; use backend='llama_cpp'"):
        await session.call(
            "run_eval", model=merged["id"], dataset_id=adapter["dataset_id"], backend="torch"
        )


@pytest.mark.anyio
@pytest.mark.parametrize(
    "options, message",
    [
        ({"format": "full"}, r"format='full': use 'adapter' .* or 'merged'"),
        ({"format": "merged", "dtype": "f32"}, r"dtype='f32': a merged export .* f16, q8_0"),
        ({"format": "adapter", "dtype": "q8_0"}, r"dtype='q8_0' applies to merged exports only"),
    ],
)
async def test_export_model_names_the_allowed_formats_and_dtypes(
    options: dict[str, str], message: str, session: Session
) -> None:
    with pytest.raises(LifecycleError, match=message):
        await session.call("export_model", run_id="run-000000000000", **options)
