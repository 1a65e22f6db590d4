"""MiniMind model configuration, the named size presets, and the `model` params section.

`MiniMindConfig` is a Hugging Face config, so a checkpoint folder written by `save_pretrained`
carries its architecture in `config.json` and `AutoConfig` rebuilds it (after `import
minimind.model`, which registers the "minimind" model type).

The field names are Qwen3's wherever the concept is the same (hidden_size, head_dim,
num_key_value_heads, rope_theta, moe_intermediate_size, norm_topk_prob, ...), so exporting a
checkpoint to `Qwen3ForCausalLM` / `Qwen3MoeForCausalLM` is a rename-free copy of the values.

Sizing rules, when a size is left out:
- head_dim = hidden_size // num_attention_heads (MiniMind keeps q_proj square);
- intermediate_size = hidden_size * pi rounded up to a multiple of 64 (MiniMind-3's rule; the
  MiniMind2 presets pin their own 8/3 * hidden values instead);
- moe_intermediate_size = intermediate_size (each expert is as wide as the dense MLP).
"""

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from transformers import PretrainedConfig


class MiniMindConfig(PretrainedConfig):
    """Architecture of a MiniMind decoder (dense or mixture-of-experts)."""

    model_type = "minimind"
    keys_to_ignore_at_inference = ["past_key_values"]

    vocab_size: int = 6400
    hidden_size: int = 768
    num_hidden_layers: int = 8
    num_attention_heads: int = 8
    num_key_value_heads: int = 4
    head_dim: int | None = None
    intermediate_size: int | None = None
    max_position_embeddings: int = 32768
    rope_theta: float = 1e6
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = True
    dropout: float = 0.0
    initializer_range: float = 0.02
    use_cache: bool = True
    # Mixture of experts (ignored unless use_moe): every layer's MLP becomes `num_experts`
    # SwiGLU experts of width `moe_intermediate_size`, of which a softmax router picks
    # `num_experts_per_tok` per token.
    use_moe: bool = False
    num_experts: int = 4
    num_experts_per_tok: int = 1
    moe_intermediate_size: int | None = None
    norm_topk_prob: bool = True
    router_aux_loss_coef: float = 5e-4
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    pad_token_id: int | None = 0

    def __post_init__(self, **kwargs: Any) -> None:
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.intermediate_size is None:
            self.intermediate_size = 64 * math.ceil(self.hidden_size * math.pi / 64)
        if self.moe_intermediate_size is None:
            self.moe_intermediate_size = self.intermediate_size
        self._check_shapes()
        super().__post_init__(**kwargs)

    def _check_shapes(self) -> None:
        """Fail at config time, with the offending values, instead of deep inside a matmul."""
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads}) for grouped-query attention"
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")
        if self.use_moe and not 1 <= self.num_experts_per_tok <= self.num_experts:
            raise ValueError(
                f"num_experts_per_tok ({self.num_experts_per_tok}) must be in "
                f"1..num_experts ({self.num_experts})"
            )


_MINIMIND2_SMALL = dict(
    hidden_size=512,
    num_hidden_layers=8,
    num_attention_heads=8,
    num_key_value_heads=2,
    intermediate_size=1408,  # MiniMind2: 8/3 * 512 rounded up to a multiple of 64
)
_MINIMIND2 = dict(
    hidden_size=768,
    num_hidden_layers=16,
    num_attention_heads=8,
    num_key_value_heads=2,
    intermediate_size=2048,  # MiniMind2: 8/3 * 768
)
# MiniMind-3: head_dim 96 (= 768 / 8 heads, q_proj square) and intermediate 2432 (= 768 * pi
# rounded up to 64) give 63.91M parameters, 0.14% under 64M.
_MINIMIND3 = dict(
    hidden_size=768,
    num_hidden_layers=8,
    num_attention_heads=8,
    num_key_value_heads=4,
    head_dim=96,
    intermediate_size=2432,
)
# The CPU profile: small enough that the default pipeline trains in minutes on 2 cores.
_TINY = dict(
    hidden_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    intermediate_size=448,
    max_position_embeddings=4096,
)

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": _TINY,
    # 4 narrower experts, top-2: the same active MLP width per token as "tiny".
    "tiny-moe": {
        **_TINY,
        "use_moe": True,
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 224,
    },
    "minimind2-small": _MINIMIND2_SMALL,
    "minimind2-small-moe": {
        **_MINIMIND2_SMALL,
        "use_moe": True,
        "num_experts": 4,
        "num_experts_per_tok": 2,
    },
    "minimind2": _MINIMIND2,
    "minimind-3": _MINIMIND3,
    "minimind-3-moe": {**_MINIMIND3, "use_moe": True, "num_experts": 4, "num_experts_per_tok": 1},
}


def preset_config(name: str, **overrides: Any) -> MiniMindConfig:
    """Build the config of a named preset, with any field overridden (e.g. `vocab_size`)."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    return MiniMindConfig(**{**PRESETS[name], **overrides})


class ModelParams(BaseModel):
    """The `model` section of the pipeline's params: a preset plus optional overrides.

    A field left at None keeps the preset's value; the result is checked by building the config,
    so an inconsistent combination (e.g. 6 heads over 4 key/value heads) fails validation.
    """

    model_config = ConfigDict(extra="forbid")

    preset: str = Field(default="tiny", description=f"Size preset, one of {sorted(PRESETS)}.")
    vocab_size: int | None = Field(
        default=None, ge=16, le=65536, description="Vocabulary size; must match the tokenizer."
    )
    hidden_size: int | None = Field(default=None, ge=8, description="Residual stream width.")
    num_hidden_layers: int | None = Field(default=None, ge=1, description="Decoder layers.")
    num_attention_heads: int | None = Field(default=None, ge=1, description="Query heads.")
    num_key_value_heads: int | None = Field(
        default=None, ge=1, description="Key/value heads (grouped-query attention)."
    )
    head_dim: int | None = Field(default=None, ge=2, description="Width of one attention head.")
    intermediate_size: int | None = Field(default=None, ge=1, description="Dense MLP width.")
    max_position_embeddings: int | None = Field(
        default=None, ge=16, description="Longest sequence the model is meant to see."
    )
    rope_theta: float | None = Field(default=None, gt=0, description="RoPE base frequency.")
    dropout: float | None = Field(
        default=None, ge=0.0, lt=1.0, description="Dropout on attention and residual branches."
    )
    num_experts: int | None = Field(default=None, ge=1, description="MoE: experts per layer.")
    num_experts_per_tok: int | None = Field(
        default=None, ge=1, description="MoE: experts each token is routed to (top-k)."
    )
    moe_intermediate_size: int | None = Field(default=None, ge=1, description="MoE: expert width.")
    router_aux_loss_coef: float | None = Field(
        default=None, ge=0.0, description="MoE: weight of the load-balancing loss."
    )

    @model_validator(mode="after")
    def _builds(self) -> "ModelParams":
        self.to_config()
        return self

    def to_config(self, **extra: Any) -> MiniMindConfig:
        """The MiniMindConfig these params describe; `extra` wins over both preset and params."""
        overrides = self.model_dump(exclude={"preset"}, exclude_none=True)
        return preset_config(self.preset, **{**overrides, **extra})
