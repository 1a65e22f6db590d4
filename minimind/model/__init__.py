"""The MiniMind language model as a Hugging Face `PreTrainedModel` (dense and mixture-of-experts),
MiniMind-V, the same model reading images through a projector, and MiniMind-O's Thinker, which
also reads audio.

Importing this package registers the "minimind", "minimind-vlm" and "minimind-omni" model types
with the Auto classes, so a folder written by `save_pretrained` loads back with
`AutoModelForCausalLM.from_pretrained(folder)` (a VLM folder also with
`AutoModelForImageTextToText`, an omni folder likewise).
"""

from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

from minimind.model.config import PRESETS, MiniMindConfig, ModelParams, preset_config
from minimind.model.modeling import MiniMindCausalLMOutput, MiniMindForCausalLM
from minimind.model.omni import MiniMindOmni, MiniMindOmniConfig
from minimind.model.vlm import MiniMindVLM, MiniMindVLMConfig, VisionProjector

AutoConfig.register(MiniMindConfig.model_type, MiniMindConfig)
AutoModelForCausalLM.register(MiniMindConfig, MiniMindForCausalLM)
AutoConfig.register(MiniMindVLMConfig.model_type, MiniMindVLMConfig)
AutoModelForCausalLM.register(MiniMindVLMConfig, MiniMindVLM)
AutoModelForImageTextToText.register(MiniMindVLMConfig, MiniMindVLM)
AutoConfig.register(MiniMindOmniConfig.model_type, MiniMindOmniConfig)
AutoModelForCausalLM.register(MiniMindOmniConfig, MiniMindOmni)
AutoModelForImageTextToText.register(MiniMindOmniConfig, MiniMindOmni)

__all__ = [
    "PRESETS",
    "MiniMindCausalLMOutput",
    "MiniMindConfig",
    "MiniMindForCausalLM",
    "MiniMindOmni",
    "MiniMindOmniConfig",
    "MiniMindVLM",
    "MiniMindVLMConfig",
    "ModelParams",
    "VisionProjector",
    "preset_config",
]
