"""Export a trained MiniMind model for use outside this project.

Two formats, one chain: `export_hf` turns a MiniMind folder into a stock Hugging Face Qwen3 folder
(loadable by any transformers install, no remote code), and `export_gguf` turns that folder into a
single GGUF file for llama.cpp. Going through the Qwen3 folder means the GGUF writer reads the same
artifact users get, so both exports are checked against one reference.
"""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from minimind.export.gguf import export_gguf
from minimind.export.hf import export_hf


class ExportParams(BaseModel):
    """The `export` section of the pipeline's params."""

    model_config = ConfigDict(extra="forbid")

    gguf: bool = Field(default=True, description="Also write a GGUF file for llama.cpp.")
    gguf_dtype: Literal["f32", "f16"] = Field(
        default="f16",
        description="Precision of GGUF matrices (norms and MoE router always stay float32).",
    )


__all__ = ["ExportParams", "export_gguf", "export_hf"]
