"""The MiniMind language model as a Hugging Face `PreTrainedModel` (dense and mixture-of-experts),
and MiniMind-V, the same model reading images through a projector.

Importing this package registers the "minimind" and "minimind-vlm" model types with the Auto
classes, so a folder written by `save_pretrained` loads back with
`AutoModelForCausalLM.from_pretrained(folder)` (a VLM folder also with
`AutoModelForImageTextToText`).
"""

from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

from minimind.model.config import PRESETS, MiniMindConfig, ModelParams, preset_config
from minimind.model.modeling import MiniMindCausalLMOutput, MiniMindForCausalLM
from minimind.model.vlm import MiniMindVLM, MiniMindVLMConfig, VisionProjector

AutoConfig.register(MiniMindConfig.model_type, MiniMindConfig)
AutoModelForCausalLM.register(MiniMindConfig, MiniMindForCausalLM)
AutoConfig.register(MiniMindVLMConfig.model_type, MiniMindVLMConfig)
AutoModelForCausalLM.register(MiniMindVLMConfig, MiniMindVLM)
AutoModelForImageTextToText.register(MiniMindVLMConfig, MiniMindVLM)

__all__ = [
    "PRESETS",
    "MiniMindCausalLMOutput",
    "MiniMindConfig",
    "MiniMindForCausalLM",
    "MiniMindVLM",
    "MiniMindVLMConfig",
    "ModelParams",
    "VisionProjector",
    "preset_config",
]
