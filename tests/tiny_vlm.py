"""A tiny MiniMind-V folder with a tiny random SigLIP encoder, for the export and server tests.

The encoder is random; the model is random too, or briefly taught to answer a question about
a picture with a different reply per picture colour, which makes the features of each
request's image visible in the reply. Everything is built in a few seconds.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw

from minimind.data.vlm_tokens import IMAGE_PAD, encode_vlm
from minimind.encoders import load_vision_encoder
from minimind.model import MiniMindForCausalLM, MiniMindVLM, preset_config
from minimind.tokenizer import train_tokenizer

ENCODER_SIZE = 32  # px; 8 px patches -> 16 tokens per image
QUESTION = "what colour is the circle?"


def save_tiny_encoder(folder: Path) -> Path:
    """A random 1-layer SigLIP vision tower and its image processor, as a local model dir."""
    import transformers as tf

    torch.manual_seed(0)
    model = tf.SiglipVisionModel(tf.SiglipVisionConfig(
        image_size=ENCODER_SIZE, patch_size=8, hidden_size=32, intermediate_size=64,
        num_hidden_layers=1, num_attention_heads=2))
    model.save_pretrained(folder)
    tf.SiglipImageProcessorPil(size={"height": ENCODER_SIZE, "width": ENCODER_SIZE}
                               ).save_pretrained(folder)
    return folder


def save_tiny_vlm(folder: Path, encoder_dir: Path, lessons: dict[str, str] | None = None,
                  steps: int = 60) -> Path:
    """A 2-layer MiniMind-V reading `encoder_dir`'s features, saved as the align stage saves
    models/vlm. With `lessons` ({circle colour: reply}) it is trained to give each reply to
    QUESTION about a picture of that colour, so a reply shows which image the model saw."""
    encoder = load_vision_encoder(str(encoder_dir))
    texts = [f"{QUESTION} {' '.join(lessons or {})} a circle on the left."] * 20
    tokenizer = train_tokenizer(texts, vocab_size=400, min_frequency=1, show_progress=False)
    torch.manual_seed(0)
    llm = MiniMindForCausalLM(preset_config("tiny", vocab_size=len(tokenizer),
                                            num_hidden_layers=2))
    vlm = MiniMindVLM.from_language_model(
        llm, encoder.feature_dim, encoder.num_tokens, tokenizer.convert_tokens_to_ids(IMAGE_PAD),
        {**encoder.describe(), "images": 0})
    if lessons:
        teach(vlm, tokenizer, encoder, lessons, steps)
    vlm.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def teach(vlm: MiniMindVLM, tokenizer: Any, encoder: Any, lessons: dict[str, str],
          steps: int) -> None:
    """Full fine-tuning on one conversation per lesson (a second or two on CPU)."""
    rows = [encode_vlm(tokenizer, [{"role": "user", "content": f"<image>\n{QUESTION}"},
                                   {"role": "assistant", "content": reply}],
                       [colour], encoder.num_tokens, max_len=512)
            for colour, reply in lessons.items()]
    width = max(len(row.input_ids) for row in rows)
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    labels = torch.full((len(rows), width), -100)
    for i, row in enumerate(rows):
        input_ids[i, :len(row.input_ids)] = torch.from_numpy(row.input_ids)
        labels[i, :len(row.labels)] = torch.from_numpy(row.labels)
    attention_mask = (input_ids != tokenizer.pad_token_id).long()
    features = encoder.encode([picture(colour) for colour in lessons])
    optimizer = torch.optim.AdamW(vlm.parameters(), lr=3e-3)
    vlm.train()
    for _ in range(steps):
        loss = vlm(input_ids=input_ids, attention_mask=attention_mask, labels=labels,
                   image_features=features).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    vlm.eval()


def picture(colour: str, box: tuple[int, int, int, int] = (8, 8, 40, 40),
            size: tuple[int, int] = (48, 48)) -> Image.Image:
    image = Image.new("RGB", size, "white")
    ImageDraw.Draw(image).ellipse(box, fill=colour)
    return image


def encoded(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def data_uri(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"
