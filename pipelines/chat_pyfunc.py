"""The MLflow pyfunc flavour of an exported chat model, logged as code ("models from code").

MLflow copies this file next to the model and runs it on `mlflow.pyfunc.load_model`, so it
must stand alone: it imports only mlflow, torch and transformers, and loads the exported
Hugging Face (Qwen3) folder it was logged with as the `hf_model` artifact.

Input: a prompt string, a list of prompt strings, a list of message lists, or a DataFrame with
a `prompt` or `messages` column. Output: one reply string per input (greedy, at most the
`max_new_tokens` of the model config it was logged with, default 64).
"""

from __future__ import annotations

from typing import Any

import mlflow
from mlflow.pyfunc import PythonModel


class ChatModel(PythonModel):
    def load_context(self, context: Any) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = context.artifacts["hf_model"]
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForCausalLM.from_pretrained(path).eval()

    # No type hints here on purpose: MLflow reads them as an input schema, and this model
    # accepts several input shapes.
    def predict(self, context, model_input, params=None):
        import torch

        max_new_tokens = int((context.model_config or {}).get("max_new_tokens", 64))
        replies = []
        for messages in _conversations(model_input):
            inputs = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                return_tensors="pt")
            with torch.no_grad():
                output = self.model.generate(**inputs, max_new_tokens=max_new_tokens,
                                             do_sample=False,
                                             eos_token_id=self.tokenizer.eos_token_id,
                                             pad_token_id=self.tokenizer.pad_token_id)
            new = output[0, inputs["input_ids"].shape[1]:]
            replies.append(self.tokenizer.decode(new, skip_special_tokens=True))
        return replies


def _conversations(model_input: Any) -> list[list[dict]]:
    """Normalise the accepted input shapes to a list of message lists."""
    if hasattr(model_input, "columns"):  # a pandas DataFrame
        column = "messages" if "messages" in model_input.columns else "prompt"
        model_input = model_input[column].tolist()
    if isinstance(model_input, str):
        model_input = [model_input]
    return [[{"role": "user", "content": item}] if isinstance(item, str) else list(item)
            for item in model_input]


mlflow.models.set_model(ChatModel())
