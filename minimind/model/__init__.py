"""The MiniMind language model as a Hugging Face `PreTrainedModel` (dense and mixture-of-experts).

Importing this package registers the "minimind" model type with the Auto classes, so a folder
written by `save_pretrained` loads back with `AutoModelForCausalLM.from_pretrained(folder)`.
"""

from transformers import AutoConfig, AutoModelForCausalLM

from minimind.model.config import PRESETS, MiniMindConfig, ModelParams, preset_config
from minimind.model.modeling import MiniMindCausalLMOutput, MiniMindForCausalLM

AutoConfig.register(MiniMindConfig.model_type, MiniMindConfig)
AutoModelForCausalLM.register(MiniMindConfig, MiniMindForCausalLM)

__all__ = [
    "PRESETS",
    "MiniMindCausalLMOutput",
    "MiniMindConfig",
    "MiniMindForCausalLM",
    "ModelParams",
    "preset_config",
]
