"""Export a trained MiniMind folder as a plain Hugging Face Qwen3 (or Qwen3-MoE) model folder.

Why Qwen3: MiniMind is the Qwen3 recipe with Qwen3's parameter names, so the exported folder is a
stock `Qwen3ForCausalLM` checkpoint. Anyone can then load it with `AutoModelForCausalLM`, without
this package and without `trust_remote_code`, and every tool that knows Qwen3 (vLLM, llama.cpp's
converter, `gguf_file=` loaders, fine-tuning libraries) knows our model.

The weights are a straight copy of our state_dict: no renaming, no transposition. A tied output
head is left out of the file, as `save_pretrained` does for tied weights; the config's
`tie_word_embeddings` tells the loader to tie it back. MoE layers keep our per-expert names
(`mlp.experts.{j}.{gate,up,down}_proj.weight`), the checkpoint layout `Qwen3MoeForCausalLM`
fuses on load.

Before the folder is published, it is loaded back as the Qwen3 class and must match exactly (no
missing, unexpected or mis-shaped tensor), so a mapping mistake fails the export instead of
surfacing later as a model that silently ignores some weights.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PretrainedConfig,
    Qwen3Config,
    Qwen3MoeConfig,
)

from minimind.model import MiniMindConfig, MiniMindForCausalLM

WEIGHTS_FILE = "model.safetensors"
# What `save_pretrained` of a fast tokenizer may write; copied byte for byte, so the exported
# tokenizer is the trained one (re-saving a loaded tokenizer adds loader-local settings).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "special_tokens_map.json",
    "added_tokens.json",
)
END_OF_TURN = "<|im_end|>"  # a chat reply ends here, so generation stops here by default


def qwen3_config(config: MiniMindConfig) -> PretrainedConfig:
    """The `Qwen3Config` (MoE: `Qwen3MoeConfig`) describing the same network as `config`."""
    common = dict(
        architectures=["Qwen3MoeForCausalLM" if config.use_moe else "Qwen3ForCausalLM"],
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        head_dim=config.head_dim,
        hidden_act="silu",
        max_position_embeddings=config.max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta},
        rms_norm_eps=config.rms_norm_eps,
        attention_bias=False,
        attention_dropout=0.0,  # dropout is a training setting; the export is for inference
        initializer_range=config.initializer_range,
        use_cache=True,
        tie_word_embeddings=config.tie_word_embeddings,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        dtype="float32",
    )
    if not config.use_moe:
        return Qwen3Config(**common)
    return Qwen3MoeConfig(
        **common,
        num_experts=config.num_experts,
        num_experts_per_tok=config.num_experts_per_tok,
        moe_intermediate_size=config.moe_intermediate_size,
        norm_topk_prob=config.norm_topk_prob,
        router_aux_loss_coef=config.router_aux_loss_coef,
        decoder_sparse_step=1,  # every layer is a MoE layer, as in MiniMind
        mlp_only_layers=[],
    )


def checkpoint_tensors(model: MiniMindForCausalLM) -> dict[str, torch.Tensor]:
    """Our state_dict as the checkpoint stores it: float32, contiguous, tied head left out."""
    tensors = {
        name: tensor.detach().to(torch.float32).contiguous()
        for name, tensor in model.state_dict().items()
    }
    if model.config.tie_word_embeddings:
        del tensors["lm_head.weight"]  # the same tensor as the embedding; the loader re-ties it
    return tensors


def export_hf(model_dir: Path, out_dir: Path) -> Path:
    """Write `model_dir` (a MiniMind folder) to `out_dir` as a stock Qwen3 folder; return it.

    The folder holds `config.json`, `model.safetensors`, `generation_config.json` (stopping at
    `<|im_end|>`) and the tokenizer files with the chat template. It is written to a temporary
    sibling and renamed into place, so `out_dir` is either the old folder or the complete new one.
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    model = MiniMindForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    end_of_turn = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    if end_of_turn is None or end_of_turn == tokenizer.unk_token_id:
        raise ValueError(f"the tokenizer in {model_dir} has no {END_OF_TURN} token")
    with _atomic_dir(out_dir) as staging:
        qwen3_config(model.config).save_pretrained(staging)
        save_file(checkpoint_tensors(model), staging / WEIGHTS_FILE, metadata={"format": "pt"})
        GenerationConfig(
            bos_token_id=model.config.bos_token_id,
            eos_token_id=end_of_turn,
            pad_token_id=model.config.pad_token_id,
        ).save_pretrained(staging)
        for name in TOKENIZER_FILES:
            if (model_dir / name).is_file():
                shutil.copy2(model_dir / name, staging / name)
        _check_loads_exactly(staging)
    return out_dir


def _check_loads_exactly(folder: Path) -> None:
    """Load `folder` as the Qwen3 class its config names; fail on any tensor that does not fit."""
    _, info = AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True)
    if any(info.values()):  # missing, unexpected or mis-shaped tensors, or load errors
        raise RuntimeError(f"the exported checkpoint does not load cleanly: {info}")


@contextlib.contextmanager
def _atomic_dir(target: Path) -> Iterator[Path]:
    """Yield an empty staging folder next to `target`; it replaces `target` if the block succeeds.

    The staging folder is a sibling so the final rename stays on one filesystem (atomic). An old
    `target` is moved aside first and deleted only once the new one is in place.
    """
    staging = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    staging.mkdir(parents=True)  # unlike mkdtemp, honours the umask (the folder is for sharing)
    try:
        yield staging
        if target.exists():
            retired = target.with_name(f".{target.name}.{uuid.uuid4().hex}.old")
            os.replace(target, retired)
            os.replace(staging, target)
            shutil.rmtree(retired)
        else:
            os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
