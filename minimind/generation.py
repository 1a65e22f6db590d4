"""Chat replies from a causal LM through its tokenizer's chat template."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field


class SamplingConfig(BaseModel):
    """How replies are sampled for inspection (temperature 0 = greedy)."""

    model_config = ConfigDict(extra="forbid")

    prompts: int = Field(default=8, ge=0, description="held-out prompts to reply to")
    max_new_tokens: int = Field(default=64, ge=1)
    temperature: float = Field(default=0.7, ge=0)
    top_p: float = Field(default=0.85, gt=0, le=1)
    repetition_penalty: float = Field(default=1.1, ge=1)
    seed: int = Field(default=0, ge=0, description="sampling is seeded: same model, same replies")

    def generate_kwargs(self) -> dict[str, Any]:
        if self.temperature == 0:
            return {"do_sample": False, "repetition_penalty": self.repetition_penalty}
        return {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p,
                "repetition_penalty": self.repetition_penalty}


@dataclass(frozen=True)
class Reply:
    text: str            # the assistant's reply, without the end-of-turn token
    stopped: bool        # True if the model ended its turn itself (emitted <|im_end|>)
    new_tokens: int


@torch.no_grad()
def chat_reply(model: Any, tokenizer: Any, messages: list[dict[str, Any]],
               max_new_tokens: int = 64, **generate_kwargs: Any) -> Reply:
    """Greedy (by default) assistant reply to `messages`, stopping at `<|im_end|>`."""
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                           return_dict=True, return_tensors="pt")
    device = next(model.parameters()).device
    inputs = {k: v.to(device) for k, v in inputs.items()}
    settings = {"do_sample": False, **generate_kwargs}
    output = model.generate(**inputs, max_new_tokens=max_new_tokens,
                            eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id, **settings)
    new = output[0, inputs["input_ids"].shape[1]:].tolist()
    stopped = bool(new) and new[-1] == tokenizer.eos_token_id
    text = tokenizer.decode(new[:-1] if stopped else new, skip_special_tokens=False)
    return Reply(text=text, stopped=stopped, new_tokens=len(new))
