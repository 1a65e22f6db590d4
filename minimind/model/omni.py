"""MiniMind-O's Thinker: the VLM that also listens, one model for text, image and audio input.

Audio reaches the model as the frozen audio encoder's tokens (log-mel frames or Whisper
states, cached once per clip by the features stage). A clip gives a variable number of tokens
(about 25 per second with log-mel), so the chat text holds one run of `<|audio_pad|>` tokens
per clip, as long as that clip's token count, and `audio_features` is the packed
(total audio tokens, D) matrix of every clip of the batch in the order their runs appear.
An audio projector of the vision projector's design (LayerNorm -> Linear -> GELU -> Linear)
maps them into the LLM's embedding space and they replace the pads, exactly as image features
replace `<|image_pad|>`. Audio tokens carry no learned position embedding: a clip is a
contiguous run, so RoPE already tells the LLM the order of its frames.

`MiniMindOmni.from_vlm` grows a trained VLM into the omni model with its every weight copied
bit for bit and a fresh audio projector; loading stays strict (see `minimind.model.vlm`).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import Cache

from minimind.model.modeling import MiniMindCausalLMOutput
from minimind.model.vlm import MiniMindVLM, MiniMindVLMConfig, VisionProjector

AUDIO_PROJECTOR_PREFIX = "audio_projector."


class MiniMindOmniConfig(MiniMindVLMConfig):
    """A VLM config plus the audio side: feature width, pad token and the encoder's identity
    (`audio_encoder`: the audio cache's encoder.json, what rebuilds the encoder to serve)."""

    model_type = "minimind-omni"

    audio_feature_dim: int = 320
    audio_token_id: int = 8  # `<|audio_pad|>` in the MiniMind tokenizer
    audio_encoder: dict | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        if self.audio_feature_dim < 1:
            raise ValueError(f"audio_feature_dim must be positive, got {self.audio_feature_dim}")
        if self.audio_token_id == self.image_token_id:
            raise ValueError(f"audio_token_id and image_token_id are both {self.audio_token_id}")


class MiniMindOmni(MiniMindVLM):
    """`MiniMindVLM` + `audio_projector`; `audio_features` fill the `<|audio_pad|>` runs.

    Extra input beyond the VLM's: `audio_features`, float (total audio tokens, D_audio), every
    clip's tokens of the batch concatenated in the order their pad runs appear (row by row,
    left to right). The number of `<|audio_pad|>` tokens must equal its first dimension.
    """

    config_class = MiniMindOmniConfig

    def __init__(self, config: MiniMindOmniConfig) -> None:
        super().__init__(config)
        self.audio_projector = VisionProjector(config.audio_feature_dim,
                                               config.text_config.hidden_size)
        self.post_init()

    @classmethod
    def from_vlm(cls, vlm: MiniMindVLM, audio_feature_dim: int, audio_token_id: int,
                 audio_encoder: dict | None = None) -> MiniMindOmni:
        """An omni model holding a copy of `vlm`'s weights (bit for bit: LLM, vision projector)
        and a freshly initialised audio projector (seed torch first for a reproducible one)."""
        config = MiniMindOmniConfig(**{**vlm.config.to_dict(), "model_type": "minimind-omni",
                                       "audio_feature_dim": audio_feature_dim,
                                       "audio_token_id": audio_token_id,
                                       "audio_encoder": audio_encoder})
        model = cls(config).to(vlm.dtype)
        missing, unexpected = model.load_state_dict(vlm.state_dict(), strict=False)
        fresh = [key for key in missing if not key.startswith(AUDIO_PROJECTOR_PREFIX)]
        if fresh or unexpected:
            raise ValueError(f"the VLM does not fit the omni model: missing {fresh}, "
                             f"unexpected {list(unexpected)}")
        return model

    def embed_media(self, input_ids: torch.Tensor, image_features: torch.Tensor | None,
                    audio_features: torch.Tensor | None) -> torch.Tensor:
        """Token embeddings with image pads and audio pads replaced by projected features."""
        embeds = self.embed(input_ids, image_features)
        pads = input_ids == self.config.audio_token_id
        num_pads = int(pads.sum())
        num_tokens = 0 if audio_features is None else audio_features.shape[0]
        if num_pads != num_tokens:
            raise ValueError(
                f"the input holds {num_pads} <|audio_pad|> tokens (id "
                f"{self.config.audio_token_id}) but audio_features hold {num_tokens} tokens; "
                "each <audio> must expand to as many pads as its clip has tokens")
        if audio_features is None or num_tokens == 0:
            return embeds
        if audio_features.dim() != 2 or audio_features.shape[1] != self.config.audio_feature_dim:
            raise ValueError(f"audio_features must be (tokens, {self.config.audio_feature_dim}), "
                             f"got {tuple(audio_features.shape)}")
        projected = self.audio_projector(audio_features.to(embeds.dtype))
        return embeds.masked_scatter(pads.unsqueeze(-1), projected)

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
        audio_features: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> MiniMindCausalLMOutput:
        """The VLM's forward with the audio features spliced in as well."""
        if inputs_embeds is None and input_ids is not None:
            inputs_embeds, input_ids = self.embed_media(input_ids, image_features,
                                                        audio_features), None
            image_features = None
        elif audio_features is not None:
            raise ValueError("audio_features need input_ids to find the <|audio_pad|> positions")
        return super().forward(input_ids=input_ids, attention_mask=attention_mask,
                               position_ids=position_ids, past_key_values=past_key_values,
                               inputs_embeds=inputs_embeds, labels=labels, use_cache=use_cache,
                               image_features=image_features, **kwargs)

    def prepare_inputs_for_generation(self, input_ids: torch.LongTensor,
                                      past_key_values: Any = None,
                                      audio_features: torch.Tensor | None = None,
                                      **kwargs: Any) -> dict[str, Any]:
        """Audio features go with the prefill step only, like image features."""
        inputs = super().prepare_inputs_for_generation(input_ids, past_key_values=past_key_values,
                                                       **kwargs)
        if past_key_values is None or past_key_values.get_seq_length() == 0:
            inputs["audio_features"] = audio_features
        return inputs
