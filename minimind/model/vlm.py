"""MiniMind-V: the MiniMind language model reading images through a projector (MiniMind-V design).

An image reaches the model as N feature vectors of width D from a frozen vision encoder (cached
once per image by the features stage, never run while training). The chat text holds one run of
N `<|image_pad|>` tokens per image; the projector (LayerNorm -> Linear -> GELU -> Linear) maps
each feature vector into the LLM's embedding space, adds a learned embedding of the token's
place in the image, and those vectors replace the pad tokens' embeddings, run by run in
row-major order of the batch. Everything after that is the plain
language model, so masks, RoPE, the KV cache and the loss are exactly the text model's.

Generation: the features are only needed on the prefill step, when the pad tokens are in the
input; later steps read them from the KV cache.

Loading is strict: a folder whose weights miss a key, hold an unexpected one or have another
shape raises with the key names (Hugging Face only warns about missing keys and would leave the
gap randomly initialised), so a wrong projector or LLM can never load halfway.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache

from minimind.model.config import MiniMindConfig
from minimind.model.modeling import MiniMindCausalLMOutput, MiniMindForCausalLM

PROJECTOR_PREFIX = "projector."
LANGUAGE_MODEL_PREFIX = "language_model."


class MiniMindVLMConfig(PretrainedConfig):
    """A MiniMind LLM (`text_config`) plus what the projector and the serving side need.

    `vision_encoder` is the encoder's own description (the features cache's encoder.json), so a
    server can rebuild the encoder whose features the projector was trained on.
    """

    model_type = "minimind-vlm"
    sub_configs_defaults = {"text_config": MiniMindConfig}
    keys_to_ignore_at_inference = ["past_key_values"]

    text_config: dict | MiniMindConfig | None = None
    vision_feature_dim: int = 1360
    image_tokens: int = 49
    image_token_id: int = 5  # `<|image_pad|>` in the MiniMind tokenizer
    image_positions: bool = True  # a learned embedding per image token (see VisionProjector)
    vision_encoder: dict | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        if self.vision_feature_dim < 1 or self.image_tokens < 1:
            raise ValueError(f"vision_feature_dim ({self.vision_feature_dim}) and image_tokens "
                             f"({self.image_tokens}) must be positive")


class VisionProjector(nn.Module):
    """Encoder features (..., N, D) -> LLM embeddings (..., N, H): LayerNorm, Linear, GELU,
    Linear, plus a learned embedding per token index when `num_tokens` is given.

    The LayerNorm puts features of any encoder on one scale before the first matrix, which
    keeps the learning rate meaningful across encoders. The position embedding says where in
    the image each token sits: a CNN's grid features carry almost no absolute position (its
    filters are translation-equivariant) and the LLM's RoPE sees only distances between
    tokens, which shift with the question's length, so without it "where is the red star?"
    stays at chance. One vector per token index (row-major grid order) fits any encoder.
    """

    def __init__(self, feature_dim: int, hidden_size: int, num_tokens: int | None = None
                 ) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(feature_dim)
        self.fc1 = nn.Linear(feature_dim, hidden_size)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_size, hidden_size)
        self.position = (None if num_tokens is None
                         else nn.Parameter(torch.zeros(num_tokens, hidden_size)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        projected = self.fc2(self.act(self.fc1(self.norm(features))))
        return projected if self.position is None else projected + self.position


class MiniMindVLM(PreTrainedModel, GenerationMixin):
    """`language_model` (MiniMindForCausalLM) + `projector`; `image_features` fill the pads.

    Extra input beyond the language model's: `image_features`, float (images, N, D), the
    features of every image of the batch in the order their pad runs appear (row by row, left
    to right). The number of `<|image_pad|>` tokens must be exactly images x N.
    """

    config_class = MiniMindVLMConfig
    main_input_name = "input_ids"
    _no_split_modules = ["DecoderLayer"]
    _skip_keys_device_placement = ["past_key_values"]
    _supports_sdpa = True

    def __init__(self, config: MiniMindVLMConfig) -> None:
        super().__init__(config)
        self.language_model = MiniMindForCausalLM(config.text_config)
        self.projector = VisionProjector(
            config.vision_feature_dim, config.text_config.hidden_size,
            config.image_tokens if config.image_positions else None)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        """Projector: normal(0, initializer_range) matrices and position embeddings, zero
        biases, unit LayerNorm."""
        std = self.config.text_config.initializer_range
        if isinstance(module, VisionProjector) and module.position is not None:
            init.normal_(module.position, mean=0.0, std=std)
        elif isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)

    # ----------------------------------------------------------------------- construction

    @classmethod
    def from_language_model(cls, llm: MiniMindForCausalLM, vision_feature_dim: int,
                            image_tokens: int, image_token_id: int,
                            vision_encoder: dict | None = None) -> MiniMindVLM:
        """A VLM around a copy of `llm`'s weights (bit for bit) and a freshly initialised
        projector (seed torch first for a reproducible one)."""
        config = MiniMindVLMConfig(
            text_config=llm.config.to_dict(),
            vision_feature_dim=vision_feature_dim,
            image_tokens=image_tokens,
            image_token_id=image_token_id,
            vision_encoder=vision_encoder,
        )
        model = cls(config).to(llm.dtype)
        model.language_model.load_state_dict(llm.state_dict(), strict=True)
        return model

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, *args: Any,
                        **kwargs: Any) -> Any:
        """`PreTrainedModel.from_pretrained`, but any missing, unexpected or mismatched
        weight raises instead of being warned about (see `raise_on_partial_load`)."""
        return strict_from_pretrained(super().from_pretrained, pretrained_model_name_or_path,
                                      *args, **kwargs)

    # ----------------------------------------------------------------------- embeddings

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def embed(self, input_ids: torch.Tensor, image_features: torch.Tensor | None
              ) -> torch.Tensor:
        """Token embeddings with every `<|image_pad|>` replaced by a projected feature."""
        embeds = self.get_input_embeddings()(input_ids)
        pads = input_ids == self.config.image_token_id
        num_pads = int(pads.sum())
        num_images = 0 if image_features is None else image_features.shape[0]
        expected = num_images * self.config.image_tokens
        if num_pads != expected:
            raise ValueError(
                f"the input holds {num_pads} <|image_pad|> tokens (id "
                f"{self.config.image_token_id}) but image_features hold {num_images} images x "
                f"{self.config.image_tokens} tokens = {expected}; each <image> must expand to "
                f"exactly {self.config.image_tokens} pads"
            )
        if image_features is None or num_images == 0:
            return embeds
        want = (self.config.image_tokens, self.config.vision_feature_dim)
        if tuple(image_features.shape[1:]) != want:
            raise ValueError(f"image_features must be (images, {want[0]}, {want[1]}), "
                             f"got {tuple(image_features.shape)}")
        projected = self.projector(image_features.to(embeds.dtype))
        # masked_scatter fills the True positions in row-major order: run by run, as promised.
        return embeds.masked_scatter(pads.unsqueeze(-1), projected.reshape(-1, embeds.shape[-1]))

    # ----------------------------------------------------------------------- forward

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        image_features: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> MiniMindCausalLMOutput:
        """The language model's output for the text with the images' features spliced in.

        Other keyword arguments (`num_items_in_batch`, `logits_to_keep`, `document_ids`, ...)
        go to `MiniMindForCausalLM.forward` unchanged.
        """
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("pass input_ids (or inputs_embeds with the features spliced in)")
            inputs_embeds = self.embed(input_ids, image_features)
        elif image_features is not None:
            raise ValueError("image_features need input_ids to find the <|image_pad|> positions")
        return self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            labels=labels,
            use_cache=use_cache,
            **kwargs,
        )

    def prepare_inputs_for_generation(self, input_ids: torch.LongTensor,
                                      past_key_values: Cache | None = None,
                                      image_features: torch.Tensor | None = None,
                                      **kwargs: Any) -> dict[str, Any]:
        """Features go with the prefill step only: afterwards the pads are in the KV cache and
        the input is just the newest token (without a cache every step sees the whole text)."""
        inputs = super().prepare_inputs_for_generation(
            input_ids, past_key_values=past_key_values, **kwargs
        )
        if past_key_values is None or past_key_values.get_seq_length() == 0:
            inputs["image_features"] = image_features
        return inputs


# --------------------------------------------------------------------------- strict loading


def raise_on_partial_load(info: dict[str, Any], source: str | Path) -> None:
    """Raise if a `from_pretrained` loading report shows any weight not loaded one to one."""
    problems = []
    if info.get("missing_keys"):
        problems.append(f"missing keys: {sorted(info['missing_keys'])}")
    if info.get("unexpected_keys"):
        problems.append(f"unexpected keys: {sorted(info['unexpected_keys'])}")
    if info.get("mismatched_keys"):
        shapes = [f"{name} {tuple(found)} in the checkpoint vs {tuple(wanted)} in the model"
                  for name, found, wanted in sorted(info["mismatched_keys"])]
        problems.append(f"mismatched shapes: {shapes}")
    if info.get("error_msgs"):
        problems.append(f"errors: {list(info['error_msgs'])}")
    if problems:
        raise ValueError(f"{source} does not match the model it should load into; "
                         + "; ".join(problems))


def strict_from_pretrained(loader: Callable[..., Any], path: str | Path, *args: Any,
                           **kwargs: Any) -> Any:
    """Call a `from_pretrained` and raise (naming the keys) unless every weight loaded.

    Mismatched shapes are let through the loader (whose own error names no key) and reported
    here with the rest.
    """
    want_info = kwargs.pop("output_loading_info", False)
    kwargs["ignore_mismatched_sizes"] = True
    model, info = loader(path, *args, output_loading_info=True, **kwargs)
    raise_on_partial_load(info, path)
    return (model, info) if want_info else model


def load_language_model(path: str | Path, dtype: torch.dtype = torch.float32
                        ) -> MiniMindForCausalLM:
    """A MiniMind LLM folder, loaded strictly (no silently re-initialised layer)."""
    return strict_from_pretrained(MiniMindForCausalLM.from_pretrained, path, dtype=dtype)


# --------------------------------------------------------------------------- what trains


LayerChoice = Literal["all", "none"] | list[int]


def trainable_filter(config: MiniMindVLMConfig, llm_layers: LayerChoice = "none",
                     train_embeddings: bool = False,
                     projectors: Sequence[str] = (PROJECTOR_PREFIX,)) -> Callable[[str], bool]:
    """Which parameters (by name) train: the `projectors` (name prefixes) always, plus the
    chosen LLM parts.

    `llm_layers`: "none" (the LLM frozen: alignment phase 1), "all" (every decoder layer and
    the final norm) or a list of decoder layer indices. `train_embeddings` adds the token
    embedding, which is tied to the output head.
    """
    num_layers = config.text_config.num_hidden_layers
    if llm_layers == "all":
        layers = set(range(num_layers))
    elif llm_layers == "none":
        layers = set()
    else:
        layers = set(llm_layers)
        if bad := sorted(i for i in layers if not 0 <= i < num_layers):
            raise ValueError(f"llm_layers {bad} out of range: the LLM has {num_layers} layers "
                             f"(0..{num_layers - 1})")
    prefixes = list(projectors)
    prefixes += [f"{LANGUAGE_MODEL_PREFIX}model.layers.{i}." for i in sorted(layers)]
    if llm_layers == "all":
        prefixes.append(f"{LANGUAGE_MODEL_PREFIX}model.norm.")
    if train_embeddings:
        prefixes += [f"{LANGUAGE_MODEL_PREFIX}model.embed_tokens.",
                     f"{LANGUAGE_MODEL_PREFIX}lm_head."]
    chosen = tuple(prefixes)
    return lambda name: name.startswith(chosen)
