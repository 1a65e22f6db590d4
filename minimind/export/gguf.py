"""Convert an exported Hugging Face Qwen3 folder (see `minimind.export.hf`) into one GGUF file.

GGUF is the single-file format of llama.cpp and the tools built on it (Ollama, LM Studio, ...):
weights, hyperparameters, tokenizer and chat template together, so a trained MiniMind runs on a
laptop CPU with no Python. We write it with the `gguf` package's `GGUFWriter` under llama.cpp's
"qwen3" architecture ("qwen3moe" for mixture-of-experts models), whose graph is exactly ours:

- Tensor names are llama.cpp's (`token_embd.weight`, `blk.{i}.attn_q.weight`, ...), taken from
  `gguf.TENSOR_NAMES`. Matrices keep the PyTorch (out, in) layout, which GGUF records as
  ne = (in, out). Unlike llama.cpp's "llama" architecture, "qwen3" rotates with NEOX RoPE (the
  rotate-half pairing we train with), so q/k rows are NOT permuted. MoE experts are stacked into
  one (experts, out, in) tensor per projection. A tied output head is not stored: llama.cpp
  reuses `token_embd` when `output.weight` is absent.
- The tokenizer is stored as a "gpt2" (byte-level BPE) vocabulary: tokens in the byte-to-unicode
  spelling, merges, and token types (control for special tokens, user-defined for the other
  added tokens, which llama.cpp then matches whole). Its pre-tokenizer is declared "gpt-2": our
  tokenizer splits text with the `ByteLevel` pre-tokenizer's regex, which is GPT-2's, and
  "gpt-2" is the llama.cpp name for that regex (e.g. "qwen2" or "llama-bpe" would split digits
  and punctuation differently than the merges were learned on).
- f16 files store matrices in half precision but keep norms and the MoE router in float32, as
  llama.cpp's own converter does: they are tiny and precision-sensitive.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from gguf import (
    MODEL_ARCH,
    MODEL_ARCH_NAMES,
    MODEL_TENSOR,
    MODEL_TENSORS,
    TENSOR_NAMES,
    GGUFWriter,
    LlamaFileType,
    TokenType,
)
from safetensors.torch import load_file
from transformers import AutoConfig, AutoTokenizer, PretrainedConfig, PreTrainedTokenizerBase

from minimind.export.hf import WEIGHTS_FILE

GGUFDtype = Literal["f32", "f16"]
FILE_TYPES: dict[str, tuple[type[np.floating], LlamaFileType]] = {
    "f32": (np.float32, LlamaFileType.ALL_F32),
    "f16": (np.float16, LlamaFileType.MOSTLY_F16),
}
ARCHITECTURES = {"qwen3": MODEL_ARCH.QWEN3, "qwen3_moe": MODEL_ARCH.QWEN3MOE}
TOKENIZER_MODEL = "gpt2"  # llama.cpp's name for byte-level BPE
PRE_TOKENIZER = "gpt-2"  # llama.cpp's name for the GPT-2 split regex (see module docstring)

# Per-layer tensors shared by dense and MoE models: checkpoint name inside `model.layers.{i}.`
LAYER_TENSORS = {
    "input_layernorm": MODEL_TENSOR.ATTN_NORM,
    "self_attn.q_proj": MODEL_TENSOR.ATTN_Q,
    "self_attn.k_proj": MODEL_TENSOR.ATTN_K,
    "self_attn.v_proj": MODEL_TENSOR.ATTN_V,
    "self_attn.o_proj": MODEL_TENSOR.ATTN_OUT,
    "self_attn.q_norm": MODEL_TENSOR.ATTN_Q_NORM,
    "self_attn.k_norm": MODEL_TENSOR.ATTN_K_NORM,
    "post_attention_layernorm": MODEL_TENSOR.FFN_NORM,
}
DENSE_MLP_TENSORS = {
    "mlp.gate_proj": MODEL_TENSOR.FFN_GATE,
    "mlp.up_proj": MODEL_TENSOR.FFN_UP,
    "mlp.down_proj": MODEL_TENSOR.FFN_DOWN,
}
MOE_ROUTER_TENSOR = ("mlp.gate", MODEL_TENSOR.FFN_GATE_INP)
MOE_EXPERT_TENSORS = {  # per-expert `mlp.experts.{j}.<name>`, stacked over j
    "gate_proj": MODEL_TENSOR.FFN_GATE_EXP,
    "up_proj": MODEL_TENSOR.FFN_UP_EXP,
    "down_proj": MODEL_TENSOR.FFN_DOWN_EXP,
}
ROUTER_SUFFIX = "." + TENSOR_NAMES[MODEL_TENSOR.FFN_GATE_INP].rsplit(".", 1)[1] + ".weight"

# Hugging Face's `{% generation %}` marks assistant tokens for training masks; it means nothing
# at inference and plain Jinja engines reject it, so the GGUF template gets an always-true `if`
# in its place (same whitespace control, same output).
_GENERATION_TAG = re.compile(r"\{%(-?)\s*(end)?generation\s*(-?)%\}")


def export_gguf(hf_dir: Path, out_path: Path, dtype: GGUFDtype = "f32") -> Path:
    """Write the Qwen3 folder `hf_dir` as the GGUF file `out_path` ("f32" or "f16"); return it.

    Raises NotImplementedError for a model llama.cpp's graph would compute differently (RoPE
    scaling, MoE without renormalised top-k weights, dense layers inside a MoE model). The file is
    written next to `out_path` under a temporary name and renamed into place when complete.
    """
    hf_dir, out_path = Path(hf_dir), Path(out_path)
    if dtype not in FILE_TYPES:
        raise ValueError(f"dtype must be one of {sorted(FILE_TYPES)}, got {dtype!r}")
    config = AutoConfig.from_pretrained(hf_dir)
    arch = _llama_cpp_arch(config)
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    tensors = gguf_tensors(load_file(hf_dir / WEIGHTS_FILE), config, arch)

    out_path.parent.mkdir(parents=True, exist_ok=True)
    staging = out_path.with_name(f".{out_path.name}.{uuid.uuid4().hex}.tmp")
    writer = GGUFWriter(staging, MODEL_ARCH_NAMES[arch])
    try:
        writer.add_name(out_path.stem)
        _add_hyperparameters(writer, config, FILE_TYPES[dtype][1])
        _add_tokenizer(writer, tokenizer, config.vocab_size)
        for name, array in tensors.items():
            writer.add_tensor(name, _storage_array(name, array, dtype))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(staging, out_path)
    finally:
        writer.close()  # a no-op when already closed
        staging.unlink(missing_ok=True)
    return out_path


def _llama_cpp_arch(config: PretrainedConfig) -> MODEL_ARCH:
    """The llama.cpp architecture computing exactly what `config` describes, or an error."""
    if config.model_type not in ARCHITECTURES:
        raise ValueError(f"expected a Qwen3 folder, got model_type {config.model_type!r}")
    if config.rope_parameters.get("rope_type", "default") != "default":
        raise NotImplementedError(f"RoPE scaling is not exported: {config.rope_parameters}")
    if config.model_type == "qwen3_moe":
        if not config.norm_topk_prob:
            raise NotImplementedError("llama.cpp's qwen3moe always renormalises top-k weights")
        if config.decoder_sparse_step != 1 or config.mlp_only_layers:
            raise NotImplementedError("llama.cpp's qwen3moe has a MoE MLP in every layer")
    return ARCHITECTURES[config.model_type]


def tensor_name(kind: MODEL_TENSOR, arch: MODEL_ARCH, layer: int | None = None) -> str:
    """llama.cpp's name of a weight, checked against the tensors `arch` declares."""
    if kind not in MODEL_TENSORS[arch]:
        raise ValueError(f"{MODEL_ARCH_NAMES[arch]} has no {kind.name} tensor")
    return TENSOR_NAMES[kind].format(bid=layer) + ".weight"


def gguf_tensors(
    weights: dict[str, torch.Tensor], config: PretrainedConfig, arch: MODEL_ARCH
) -> dict[str, np.ndarray]:
    """Checkpoint tensors renamed (and MoE experts stacked) for llama.cpp, as float32 arrays.

    Every checkpoint tensor must be used exactly once: a leftover one means the mapping is
    incomplete and the GGUF would compute something else, so it is an error.
    """
    remaining = dict(weights)

    def take(name: str) -> np.ndarray:
        return remaining.pop(f"{name}.weight").to(torch.float32).numpy()

    out = {
        tensor_name(MODEL_TENSOR.TOKEN_EMBD, arch): take("model.embed_tokens"),
        tensor_name(MODEL_TENSOR.OUTPUT_NORM, arch): take("model.norm"),
    }
    if not config.tie_word_embeddings:
        out[tensor_name(MODEL_TENSOR.OUTPUT, arch)] = take("lm_head")
    for i in range(config.num_hidden_layers):
        prefix = f"model.layers.{i}."
        for name, kind in LAYER_TENSORS.items():
            out[tensor_name(kind, arch, i)] = take(prefix + name)
        if arch == MODEL_ARCH.QWEN3MOE:
            router, kind = MOE_ROUTER_TENSOR
            out[tensor_name(kind, arch, i)] = take(prefix + router)
            for name, kind in MOE_EXPERT_TENSORS.items():
                experts = [
                    take(f"{prefix}mlp.experts.{j}.{name}") for j in range(config.num_experts)
                ]
                out[tensor_name(kind, arch, i)] = np.stack(experts)
        else:
            for name, kind in DENSE_MLP_TENSORS.items():
                out[tensor_name(kind, arch, i)] = take(prefix + name)
    if remaining:
        raise ValueError(f"checkpoint tensors with no GGUF counterpart: {sorted(remaining)}")
    return out


def _storage_array(name: str, array: np.ndarray, dtype: GGUFDtype) -> np.ndarray:
    """`array` in the file's precision, except 1-D tensors and the router, kept in float32."""
    keep_float32 = array.ndim == 1 or name.endswith(ROUTER_SUFFIX)
    return array if keep_float32 else array.astype(FILE_TYPES[dtype][0])


def _add_hyperparameters(
    writer: GGUFWriter, config: PretrainedConfig, file_type: LlamaFileType
) -> None:
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(config.head_dim)
    writer.add_value_length(config.head_dim)
    writer.add_rope_dimension_count(config.head_dim)  # every head dimension rotates
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_file_type(file_type)
    if config.model_type == "qwen3_moe":
        writer.add_expert_count(config.num_experts)
        writer.add_expert_used_count(config.num_experts_per_tok)
        writer.add_expert_feed_forward_length(config.moe_intermediate_size)


def _add_tokenizer(writer: GGUFWriter, tokenizer: PreTrainedTokenizerBase, vocab_size: int) -> None:
    """Vocabulary, merges, token types, special ids and chat template, in llama.cpp's keys."""
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    _check_byte_level_bpe(state)
    tokens, token_types = token_table(state, vocab_size)
    writer.add_tokenizer_model(TOKENIZER_MODEL)
    writer.add_tokenizer_pre(PRE_TOKENIZER)
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)
    writer.add_token_merges(
        [m if isinstance(m, str) else " ".join(m) for m in state["model"]["merges"]]
    )
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_unk_token_id(tokenizer.unk_token_id)
    writer.add_add_bos_token(False)  # the chat template writes every special token itself
    writer.add_add_eos_token(False)
    if tokenizer.chat_template:
        writer.add_chat_template(inference_chat_template(tokenizer.chat_template))


def _check_byte_level_bpe(state: dict) -> None:
    """Refuse a tokenizer that "gpt2" + "gpt-2" would not reproduce in llama.cpp."""
    pre = state.get("pre_tokenizer") or {}
    if (
        state["model"]["type"] != "BPE"
        or state.get("normalizer") is not None
        or pre.get("type") != "ByteLevel"
        or not pre.get("use_regex", True)
    ):
        raise NotImplementedError(
            "only byte-level BPE with the ByteLevel (GPT-2 regex) pre-tokenizer and no normalizer "
            "is exported to GGUF"
        )


def token_table(state: dict, vocab_size: int) -> tuple[list[str], list[TokenType]]:
    """Token strings and llama.cpp token types for ids 0..vocab_size-1.

    Ids the tokenizer does not use (the model's embedding may be padded past the vocabulary) get
    an unused `[PAD{id}]` entry, since llama.cpp needs one token per embedding row.
    """
    by_id = {index: token for token, index in state["model"]["vocab"].items()}
    types = dict.fromkeys(by_id, TokenType.NORMAL)
    for added in state["added_tokens"]:
        by_id[added["id"]] = added["content"]
        types[added["id"]] = TokenType.CONTROL if added["special"] else TokenType.USER_DEFINED
    if max(by_id) >= vocab_size:
        raise ValueError(
            f"the tokenizer has ids up to {max(by_id)} but the model only {vocab_size}"
        )
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(vocab_size)]
    token_types = [types.get(i, TokenType.UNUSED) for i in range(vocab_size)]
    return tokens, token_types


def inference_chat_template(template: str) -> str:
    """`template` with Hugging Face's training-only `{% generation %}` blocks made plain `if`s."""
    return _GENERATION_TAG.sub(
        lambda m: f"{{%{m[1]} {'endif' if m[2] else 'if true'} {m[3]}%}}", template
    )
