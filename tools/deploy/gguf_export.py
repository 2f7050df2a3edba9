"""Export trained weights to GGUF for llama.cpp: LoRA adapters over a base, or whole models.

Owns llama.cpp's tensor names, its rotary row layout for q/k projections, and atomic writes.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from turing.tools.errors import InvalidInputError

logger = logging.getLogger(__name__)

# Architectures whose tensor layout this module knows; llama.cpp's llama layout permutes q/k rows.
SUPPORTED_ARCHITECTURES = ("llama",)

# GGUF names of the linear layers a LoRA adapter may adapt, per transformer block.
LORA_TARGETS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")

EXPORT_DTYPES = ("f32", "f16", "q8_0")

# llama.cpp's general.file_type for each export dtype: ALL_F32, MOSTLY_F16, MOSTLY_Q8_0.
_FILE_TYPES = {"f32": 0, "f16": 1, "q8_0": 7}

# Q8_0 packs blocks of 32 values of a row; a row of another length cannot be quantized.
Q8_0_BLOCK = 32

# safetensors dtype names and the numpy types they read as (bf16 is widened by hand).
_SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16}

_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<part>[AB])\.weight$")


@dataclass(frozen=True)
class GGUFInfo:
    """The hyperparameters of a GGUF model that exporters and servers need."""

    path: Path
    architecture: str
    block_count: int
    head_count: int
    head_count_kv: int
    context_length: int
    embedding_length: int
    vocab_size: int
    add_bos_token: bool
    # GGUF lists a matrix's shape innermost first: (in_features, out_features).
    tensor_shapes: dict[str, tuple[int, ...]] = field(repr=False, compare=False)


def read_gguf_info(gguf_path: str | Path) -> GGUFInfo:
    """Read architecture, block count, heads and context length from a GGUF file's metadata.

    Args:
        gguf_path: A GGUF model file.

    Returns:
        The model's hyperparameters.

    Raises:
        InvalidInputError: The file is missing, not GGUF, or lacks a required key.
    """
    path = Path(gguf_path)
    if not path.is_file():
        raise InvalidInputError(f"GGUF file {path} does not exist; pass the path of a .gguf file")
    stat = path.stat()
    return _read_info_cached(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=16)
def _read_info_cached(path: str, mtime_ns: int, size: int) -> GGUFInfo:
    reader = _open_reader(Path(path))
    arch = _required(reader, path, "general.architecture")
    tokens = _optional(reader, "tokenizer.ggml.tokens")
    head_count = _required(reader, path, f"{arch}.attention.head_count")
    return GGUFInfo(
        path=Path(path),
        architecture=str(arch),
        block_count=int(_required(reader, path, f"{arch}.block_count")),
        head_count=_scalar(head_count, path, "head_count"),
        head_count_kv=_scalar(
            _optional(reader, f"{arch}.attention.head_count_kv") or head_count,
            path,
            "head_count_kv",
        ),
        context_length=int(_required(reader, path, f"{arch}.context_length")),
        embedding_length=int(_required(reader, path, f"{arch}.embedding_length")),
        vocab_size=int(_optional(reader, f"{arch}.vocab_size") or len(tokens or [])),
        add_bos_token=bool(_optional(reader, "tokenizer.ggml.add_bos_token")),
        tensor_shapes={t.name: tuple(int(n) for n in t.shape) for t in reader.tensors},
    )


def _open_reader(path: Path) -> Any:
    from gguf import GGUFReader  # parses the whole header; only exporters and servers pay for it

    try:
        return GGUFReader(str(path))
    except (ValueError, OSError) as exc:
        raise InvalidInputError(f"{path} is not a readable GGUF file: {exc}") from exc


def _optional(reader: Any, key: str) -> Any:
    field = reader.fields.get(key)
    return None if field is None else field.contents()


def _required(reader: Any, path: str | Path, key: str) -> Any:
    value = _optional(reader, key)
    if value is None:
        raise InvalidInputError(f"GGUF file {path} has no metadata key {key!r}")
    return value


def _scalar(value: Any, path: str | Path, name: str) -> int:
    # Some architectures store one head count per layer; the llama layout uses a single one.
    if isinstance(value, list):
        raise InvalidInputError(
            f"GGUF file {path} has per-layer {name} values; only one is supported"
        )
    return int(value)


def permute_rotary_rows(weight: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder the output rows of a q or k projection from Hugging Face to llama.cpp rope layout.

    Hugging Face rotates the two halves of each head; llama.cpp's llama architecture rotates
    adjacent pairs. Interleaving the halves of every head makes both compute the same thing.

    Args:
        weight: A matrix whose first axis is n_head * head_dim output rows.
        n_head: Heads of that projection (attention heads for q, key/value heads for k).

    Returns:
        The matrix with rows reordered; other axes are unchanged.
    """
    rows = weight.shape[0]
    if rows % (2 * n_head):
        raise InvalidInputError(f"{rows} rows cannot be split into {n_head} heads of even size")
    split = weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:])
    return split.swapaxes(1, 2).reshape(weight.shape)


# --- LoRA adapters -------------------------------------------------------------------------


@dataclass
class _LoraPair:
    module: str
    gguf_name: str
    lora_a: np.ndarray
    lora_b: np.ndarray


def export_lora_adapter(adapter_dir: Path, base_gguf: Path, out_path: Path) -> Path:
    """Write a peft LoRA adapter as a llama.cpp LoRA adapter GGUF for a base GGUF model.

    The adapter must have been trained on the model transformers loads from `base_gguf`. Only
    plain LoRA on the attention and MLP projections is expressible in llama.cpp's format.

    Args:
        adapter_dir: Folder holding peft's `adapter_config.json` and `adapter_model.safetensors`.
        base_gguf: The base model GGUF the adapter will be served over.
        out_path: Where to write the adapter GGUF; replaced atomically.

    Returns:
        `out_path`.

    Raises:
        InvalidInputError: The adapter holds tensors or options llama.cpp cannot apply, or does
            not fit the base model.
    """
    adapter_dir = Path(adapter_dir)
    info = read_gguf_info(base_gguf)
    config, pairs = _read_checked_adapter(adapter_dir, info, "exported as a llama.cpp LoRA adapter")

    alpha = _gguf_alpha(config)
    writer = _new_writer(info.architecture)
    writer.add_type("adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", alpha)
    for pair in pairs:
        lora_a, lora_b = _to_llama_cpp_layout(pair, config, alpha, info)
        writer.add_tensor(f"{pair.gguf_name}.weight.lora_a", lora_a)
        writer.add_tensor(f"{pair.gguf_name}.weight.lora_b", lora_b)

    _write_atomically(writer, Path(out_path))
    logger.info("exported LoRA adapter %s (%d layers) to %s", adapter_dir, len(pairs), out_path)
    return Path(out_path)


def check_mergeable_adapter(adapter_dir: Path, base_gguf: Path) -> int:
    """Check that a peft adapter holds only plain LoRA matrices that fit a base, before a merge.

    A merged export writes the base's own layers with the LoRA product added, so it takes the
    same adapters a llama.cpp LoRA adapter does: anything else (full weights saved by
    modules_to_save, embedding or output-layer LoRA, DoRA, biases) is refused by name.

    Args:
        adapter_dir: Folder holding peft's `adapter_config.json` and `adapter_model.safetensors`.
        base_gguf: The base model GGUF the adapter was trained on.

    Returns:
        How many layers the adapter adapts.

    Raises:
        InvalidInputError: The adapter holds tensors or options the merged export refuses, or
            does not fit the base model.
    """
    info = read_gguf_info(base_gguf)
    _, pairs = _read_checked_adapter(Path(adapter_dir), info, "merged and exported to GGUF")
    return len(pairs)


def _read_checked_adapter(
    adapter_dir: Path, info: GGUFInfo, purpose: str
) -> tuple[dict[str, Any], list[_LoraPair]]:
    _check_architecture(info)
    config = _read_adapter_config(adapter_dir)
    tensors = _load_adapter_tensors(adapter_dir)
    pairs = _collect_lora_pairs(tensors, info, purpose)
    _check_pairs_fit_base(pairs, info)
    return config, pairs


def _check_architecture(info: GGUFInfo) -> None:
    if info.architecture not in SUPPORTED_ARCHITECTURES:
        raise InvalidInputError(
            f"base GGUF {info.path} has architecture {info.architecture!r}; "
            f"export supports {', '.join(SUPPORTED_ARCHITECTURES)}"
        )


def _read_adapter_config(adapter_dir: Path) -> dict[str, Any]:
    config_path = adapter_dir / "adapter_config.json"
    if not config_path.is_file():
        raise InvalidInputError(
            f"{adapter_dir} has no adapter_config.json; pass a peft adapter folder"
        )
    config: dict[str, Any] = json.loads(config_path.read_text())

    problems = []
    if config.get("peft_type", "LORA") != "LORA":
        problems.append(f"peft_type is {config.get('peft_type')!r}, only 'LORA' is supported")
    if config.get("fan_in_fan_out"):
        problems.append("fan_in_fan_out is set; llama projections are plain Linear layers")
    if not config.get("lora_alpha"):
        problems.append("lora_alpha is 0 or missing; llama.cpp reads alpha 0 as 'no scaling'")
    if problems:
        raise InvalidInputError(f"adapter {adapter_dir} cannot be exported: " + "; ".join(problems))
    return config


def _load_adapter_tensors(adapter_dir: Path) -> dict[str, np.ndarray]:
    weights_path = adapter_dir / "adapter_model.safetensors"
    if not weights_path.is_file():
        raise InvalidInputError(
            f"{adapter_dir} has no adapter_model.safetensors; save the adapter with "
            "save_pretrained(safe_serialization=True)"
        )
    return read_safetensors(weights_path)


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Read every tensor of a safetensors file as float32 numpy arrays, without torch.

    Servers export adapters in worker threads; reading the file format directly keeps torch
    (seconds to import, hundreds of MB) out of the server process.

    Args:
        path: A `.safetensors` file of float tensors (F64, F32, F16 or BF16).

    Returns:
        Tensor name to float32 array.

    Raises:
        InvalidInputError: The file is truncated, malformed, or holds another dtype.
    """
    data = Path(path).read_bytes()
    try:
        header_size = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + header_size])
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"{path} is not a safetensors file: {exc}") from exc
    body = memoryview(data)[8 + header_size :]

    tensors = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        dtype = _SAFETENSORS_DTYPES.get(meta.get("dtype"))
        begin, end = meta["data_offsets"]
        if dtype is None or end > len(body):
            problem = f"dtype {meta.get('dtype')!r}" if dtype is None else "data past the file end"
            raise InvalidInputError(f"tensor {name!r} in {path} has {problem}")
        array = np.frombuffer(body[begin:end], dtype=np.dtype(dtype).newbyteorder("<"))
        if meta["dtype"] == "BF16":  # bfloat16 is the top half of a float32
            array = (array.astype(np.uint32) << 16).view(np.float32)
        tensors[name] = array.astype(np.float32).reshape(meta["shape"])
    return tensors


def _collect_lora_pairs(
    tensors: dict[str, np.ndarray], info: GGUFInfo, purpose: str
) -> list[_LoraPair]:
    name_map = _tensor_name_map(info.architecture, info.block_count)
    refused: dict[str, list[str]] = {}
    parts: dict[str, dict[str, np.ndarray]] = {}
    for key, value in sorted(tensors.items()):
        match = _LORA_KEY.match(key)
        gguf_name = name_map.get_name(match["module"]) if match else None
        if match is None or gguf_name is None or gguf_name.split(".")[-1] not in LORA_TARGETS:
            refused.setdefault(_refusal_reason(key, match is not None), []).append(key)
            continue
        parts.setdefault(match["module"], {})[match["part"]] = value
    if refused:
        raise InvalidInputError(_refusal_message(refused, purpose))

    pairs = []
    for module, ab in parts.items():
        if set(ab) != {"A", "B"}:
            missing = ({"A", "B"} - set(ab)).pop()
            raise InvalidInputError(f"adapter has no {module}.lora_{missing}.weight for its pair")
        gguf_name = name_map.get_name(module)
        pairs.append(_LoraPair(module, gguf_name, ab["A"], ab["B"]))
    if not pairs:
        raise InvalidInputError("adapter holds no LoRA tensors")
    return pairs


def _refusal_reason(key: str, is_lora_matrix: bool) -> str:
    if is_lora_matrix:
        return (
            "adapt a layer that GGUF export does not support; target only q_proj, k_proj, "
            "v_proj, o_proj, gate_proj, up_proj and down_proj"
        )
    if "lora_magnitude_vector" in key:
        return "are DoRA magnitude vectors; llama.cpp applies plain LoRA only (use_dora=False)"
    if "lora_embedding" in key:
        return (
            "are embedding LoRA matrices; llama.cpp shares tied embeddings with the output "
            "layer, so only the attention and MLP projections can be adapted"
        )
    if ".base_layer." in key:
        return (
            "are full copies of an adapted embedding or output layer, which peft saves when "
            "those are targeted; target only the attention and MLP projections"
        )
    if key.endswith(".bias"):
        return "are LoRA biases; llama.cpp LoRA adapters carry no biases (lora_bias=False)"
    return (
        "are full weights (modules_to_save or trainable tokens), not LoRA matrices; retrain "
        "without modules_to_save"
    )


def _refusal_message(refused: dict[str, list[str]], purpose: str) -> str:
    groups = []
    for reason, keys in refused.items():
        names = ", ".join(repr(key) for key in keys[:3])
        more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
        groups.append(f"tensors {names}{more} {reason}")
    return f"adapter cannot be {purpose}: " + "; ".join(groups)


def _tensor_name_map(architecture: str, block_count: int) -> Any:
    import gguf

    arch = {name: key for key, name in gguf.MODEL_ARCH_NAMES.items()}[architecture]
    return gguf.get_tensor_name_map(arch, block_count)


def _check_pairs_fit_base(pairs: list[_LoraPair], info: GGUFInfo) -> None:
    for pair in pairs:
        rank_a, in_features = pair.lora_a.shape
        out_features, rank_b = pair.lora_b.shape
        base_shape = info.tensor_shapes.get(f"{pair.gguf_name}.weight")
        if rank_a != rank_b:
            raise InvalidInputError(
                f"adapter module {pair.module} has lora_A rank {rank_a} but lora_B rank {rank_b}"
            )
        if base_shape is None:
            raise InvalidInputError(
                f"adapter module {pair.module} has no base tensor {pair.gguf_name}.weight in "
                f"{info.path}; export the adapter over the base it was trained on"
            )
        if base_shape != (in_features, out_features):
            raise InvalidInputError(
                f"adapter module {pair.module} maps {in_features} -> {out_features} features but "
                f"base tensor {pair.gguf_name}.weight in {info.path} has shape {base_shape}; "
                "export the adapter over the base it was trained on"
            )


def _gguf_alpha(config: dict[str, Any]) -> float:
    # llama.cpp scales by alpha / rank; rsLoRA scales by alpha / sqrt(rank), so the stored alpha
    # absorbs sqrt(rank) for the adapter's default rank. Other ranks are fixed per tensor.
    alpha = float(config["lora_alpha"])
    if config.get("use_rslora"):
        alpha *= math.sqrt(int(config["r"]))
    return alpha


def _peft_scale(module: str, rank: int, config: dict[str, Any]) -> float:
    alpha = float(config["lora_alpha"])
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            alpha = float(value)
            break
    return alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)


def _to_llama_cpp_layout(
    pair: _LoraPair, config: dict[str, Any], gguf_alpha: float, info: GGUFInfo
) -> tuple[np.ndarray, np.ndarray]:
    rank = pair.lora_a.shape[0]
    lora_b = pair.lora_b

    # A per-module alpha or rank (alpha_pattern, rank_pattern, rsLoRA) that the single stored
    # alpha does not reproduce is folded into lora_b.
    correction = _peft_scale(pair.module, rank, config) / (gguf_alpha / rank)
    if not math.isclose(correction, 1.0, rel_tol=1e-9):
        lora_b = lora_b * np.float32(correction)

    kind = pair.gguf_name.split(".")[-1]
    if kind == "attn_q":
        lora_b = permute_rotary_rows(lora_b, info.head_count)
    elif kind == "attn_k":
        lora_b = permute_rotary_rows(lora_b, info.head_count_kv)
    return _f32(pair.lora_a), _f32(lora_b)


def _f32(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=np.float32)


# --- whole models --------------------------------------------------------------------------


def export_model_gguf(model: Any, base_gguf: Path, out_path: Path, dtype: str = "f32") -> Path:
    """Write a transformers llama-architecture model as a GGUF that llama.cpp can serve.

    Tokenizer and chat template metadata (every `tokenizer.*` key) come from `base_gguf`; the
    hyperparameters come from the model's own config.

    Args:
        model: A `LlamaForCausalLM` (for example a merged LoRA model, or one built from a config).
        base_gguf: A GGUF whose tokenizer the model uses.
        out_path: Where to write the model GGUF; replaced atomically.
        dtype: "f32", "f16" or "q8_0" for the weight matrices; norms stay f32. With "q8_0" a
            matrix whose rows are not a multiple of 32 values long is written in f16.

    Returns:
        `out_path`.

    Raises:
        InvalidInputError: The model's architecture, options or vocabulary cannot be written.
    """
    if dtype not in EXPORT_DTYPES:
        raise InvalidInputError(f"dtype {dtype!r} is not supported; use one of {EXPORT_DTYPES}")
    config = model.config
    _check_model_config(config)
    base_reader = _open_reader(Path(base_gguf))
    _check_vocab_matches(config, base_reader, Path(base_gguf))

    writer = _new_writer("llama")
    writer.add_type("model")
    writer.add_name(Path(out_path).stem)
    writer.add_file_type(_FILE_TYPES[dtype])
    _add_hyperparameters(writer, config)
    _copy_tokenizer_metadata(base_reader, writer)
    for name, tensor in _model_tensors(model):
        _add_weight(writer, name, tensor, dtype)

    _write_atomically(writer, Path(out_path))
    logger.info("exported %d-layer model to %s (%s)", config.num_hidden_layers, out_path, dtype)
    return Path(out_path)


def _check_model_config(config: Any) -> None:
    rope = _rope_parameters(config)
    problems = []
    if getattr(config, "model_type", None) != "llama":
        problems.append(f"model_type is {getattr(config, 'model_type', None)!r}, not 'llama'")
    if rope.get("rope_type", "default") != "default":
        problems.append(f"rope type {rope.get('rope_type')!r} is not exported; only 'default'")
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        problems.append("attention_bias/mlp_bias are set; only bias-free projections are exported")
    if getattr(config, "hidden_act", "silu") != "silu":
        problems.append(f"hidden_act is {config.hidden_act!r}; llama.cpp's llama uses 'silu'")
    if problems:
        raise InvalidInputError("model cannot be exported to GGUF: " + "; ".join(problems))


def _rope_parameters(config: Any) -> dict[str, Any]:
    # transformers 5 keeps rope settings in rope_parameters; older configs had rope_theta.
    rope = dict(getattr(config, "rope_parameters", None) or {})
    rope.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    return rope


def _check_vocab_matches(config: Any, reader: Any, base_gguf: Path) -> None:
    tokens = _optional(reader, "tokenizer.ggml.tokens")
    if tokens is None:
        raise InvalidInputError(f"base GGUF {base_gguf} has no tokenizer to copy")
    if len(tokens) != config.vocab_size:
        raise InvalidInputError(
            f"model vocab_size {config.vocab_size} does not match the {len(tokens)} tokens of "
            f"{base_gguf}; llama.cpp needs one embedding row per token"
        )


def _add_hyperparameters(writer: Any, config: Any) -> None:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_vocab_size(config.vocab_size)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads or config.num_attention_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(_rope_parameters(config)["rope_theta"]))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    if head_dim * config.num_attention_heads != config.hidden_size:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)


def _copy_tokenizer_metadata(reader: Any, writer: Any) -> None:
    from gguf import GGUFValueType

    for key, meta in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        vtype = meta.types[0]
        sub_type = meta.types[1] if vtype == GGUFValueType.ARRAY else None
        if sub_type == GGUFValueType.ARRAY:
            raise InvalidInputError(f"tokenizer key {key!r} holds nested arrays; cannot copy it")
        writer.add_key_value(key, meta.contents(), vtype, sub_type=sub_type)


def _model_tensors(model: Any) -> Iterator[tuple[str, np.ndarray]]:
    config = model.config
    name_map = _tensor_name_map("llama", config.num_hidden_layers)
    n_head = config.num_attention_heads
    n_head_kv = config.num_key_value_heads or n_head
    for key, value in model.state_dict().items():
        if key.endswith("rotary_emb.inv_freq"):
            continue
        if key == "lm_head.weight" and config.tie_word_embeddings:
            continue  # llama.cpp reuses token_embd when the file has no output.weight
        name = name_map.get_name(key, try_suffixes=(".weight",))
        if name is None:
            raise InvalidInputError(
                f"model tensor {key!r} has no llama GGUF name; merge LoRA adapters into the "
                "model (merge_and_unload) before exporting it"
            )
        array = value.detach().float().cpu().numpy()
        if name.endswith("attn_q.weight"):
            array = permute_rotary_rows(array, n_head)
        elif name.endswith("attn_k.weight"):
            array = permute_rotary_rows(array, n_head_kv)
        yield name, array


def _add_weight(writer: Any, name: str, array: np.ndarray, dtype: str) -> None:
    # llama.cpp keeps norm vectors in f32 whatever the file type.
    if dtype == "f32" or array.ndim != 2:
        writer.add_tensor(name, _f32(array))
    elif dtype == "q8_0" and array.shape[-1] % Q8_0_BLOCK == 0:
        from gguf import GGMLQuantizationType
        from gguf.quants import quantize

        packed = quantize(_f32(array), GGMLQuantizationType.Q8_0)
        writer.add_tensor(name, packed, raw_dtype=GGMLQuantizationType.Q8_0)
    else:
        writer.add_tensor(name, array.astype(np.float16))


# --- writing -------------------------------------------------------------------------------


def _new_writer(architecture: str) -> Any:
    from gguf import GGUFWriter

    return GGUFWriter(path=None, arch=architecture)


def _write_atomically(writer: Any, out_path: Path) -> None:
    out_path.parent.mkdir(parents=True, exist_ok=True)
    temp_path = out_path.with_name(f".{out_path.name}.{uuid.uuid4().hex}.tmp")
    try:
        writer.write_header_to_file(path=temp_path)
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        with open(temp_path, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temp_path, out_path)
    except BaseException:
        writer.close()
        temp_path.unlink(missing_ok=True)
        raise
