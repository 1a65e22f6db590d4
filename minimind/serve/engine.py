"""Token-by-token chat generation for one conversation at a time.

Why a hand-written decode loop instead of `model.generate`: a server needs to stream text as it
is produced, stop at user-given stop strings (which must not appear in the reply), stop early
when the client goes away, and seed sampling per request without touching torch's global RNG.
One loop that yields text deltas gives all of that, and the non-streaming reply is simply the
concatenation of the same deltas, so both modes return exactly the same text.

Generations are meant to run one at a time (each keeps its own KV cache): unbatched
generations run side by side only split the same compute between them. The HTTP server queues
them onto a single worker thread; the terminal chat calls the engine directly.

A vision-language folder (`minimind-vlm`) comes with the vision encoder its config names; the
encoder runs on each request's images at the start of its generation (on the same thread as
the model), and the features fill the image's `<|image_pad|>` run on the prefill step.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import minimind.model  # noqa: F401  (registers MiniMind with the Auto classes)
from minimind.data.vlm_tokens import expand_images

if TYPE_CHECKING:
    from PIL import Image

    from minimind.encoders import VisionEncoder

FinishReason = Literal["stop", "length"]
REPLACEMENT_CHAR = "\ufffd"  # what decode() shows for a UTF-8 sequence cut in the middle


@dataclass(frozen=True)
class GenerationSettings:
    """How one reply is sampled (OpenAI semantics; temperature 0 means greedy)."""

    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass(frozen=True)
class Delta:
    """A piece of the reply; the last one of a generation carries the finish reason."""

    text: str
    completion_tokens: int  # tokens generated so far, end-of-turn token included
    finish_reason: FinishReason | None = None


class ChatEngine:
    """A causal LM and its chat tokenizer, turned into a stream of reply text.

    `vision`: the encoder of a vision-language model (None for a text model); its tokens per
    image and width must be what the model's projector was trained on.
    """

    def __init__(self, model: Any, tokenizer: Any, vision: VisionEncoder | None = None) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        self.context_length: int = model.config.get_text_config().max_position_embeddings
        self.end_of_turn_ids = _end_of_turn_ids(model, tokenizer)
        self.vision = vision
        if vision is not None:
            wanted = (model.config.image_tokens, model.config.vision_feature_dim)
            if (vision.num_tokens, vision.feature_dim) != wanted:
                raise ValueError(f"the vision encoder {vision.spec!r} gives {vision.num_tokens} "
                                 f"tokens of width {vision.feature_dim} per image; the model "
                                 f"expects {wanted[0]} of width {wanted[1]}")

    @classmethod
    def from_folder(cls, model_dir: str | Path, device: str | None = None) -> ChatEngine:
        """Load a Hugging Face model folder (MiniMind, MiniMind-V or an exported Qwen3) and
        its tokenizer; a MiniMind-V folder also loads the vision encoder its config names."""
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model = AutoModelForCausalLM.from_pretrained(model_dir).to(device)
        return cls(model, AutoTokenizer.from_pretrained(model_dir),
                   _vision_encoder(model.config, model_dir, device))

    @property
    def reads_images(self) -> bool:
        return self.vision is not None

    def prompt_ids(self, messages: list[dict[str, Any]], tools: list[Any] | None = None
                   ) -> list[int]:
        """Token ids of `messages` in the chat template, ending with the assistant's header.

        For a vision-language model each `<image>` marker of a user turn becomes the image's
        run of `<|image_pad|>` tokens.
        """
        if self.vision is not None:
            messages = expand_images(messages, self.model.config.image_tokens)
        encoded = self.tokenizer.apply_chat_template(
            messages, tools=tools, add_generation_prompt=True, tokenize=True, return_dict=True
        )
        return list(encoded["input_ids"])

    @torch.inference_mode()
    def stream(self, prompt_ids: list[int], settings: GenerationSettings,
               cancelled: threading.Event | None = None,
               images: Sequence[Image.Image] = ()) -> Iterator[Delta]:
        """Yield the reply to `prompt_ids` as text deltas; the last delta says why it ended.

        Text that could still turn into a stop string, or that ends inside a multi-byte
        character, is held back until the next tokens decide it. Setting `cancelled` ends the
        generation after the current token, without a final delta. `images` (RGB, in the
        order of their pad runs in the prompt) go through the vision encoder first.
        """
        inputs: dict[str, Any] = {}  # what only the prefill step gets
        if images:
            if self.vision is None:
                raise ValueError("this model reads text only; it cannot take images")
            inputs["image_features"] = self.vision.encode(list(images)).to(self.device)
        generator = torch.Generator(self.device)
        if settings.seed is None:
            generator.seed()  # a fresh random seed
        else:
            generator.manual_seed(settings.seed)
        input_ids = torch.tensor([prompt_ids], device=self.device)
        generated: list[int] = []
        cache = None
        sent = 0  # characters of the reply already yielded
        while True:
            output = self.model(input_ids=input_ids, past_key_values=cache, use_cache=True,
                                logits_to_keep=1, **inputs)
            inputs = {}
            cache = output.past_key_values
            token = _next_token(output.logits[0, -1], generated, settings, generator)
            generated.append(token)
            ended = token in self.end_of_turn_ids
            text = self.tokenizer.decode(generated[:-1] if ended else generated,
                                         skip_special_tokens=True)
            cut = _first_stop(text, settings.stop)
            if cut is not None:
                yield Delta(text[sent:cut], len(generated), "stop")
                return
            if ended or len(generated) == settings.max_new_tokens:
                yield Delta(text[sent:], len(generated), "stop" if ended else "length")
                return
            if cancelled is not None and cancelled.is_set():
                return
            ready = _safe_prefix_length(text, settings.stop)
            if ready > sent:
                yield Delta(text[sent:ready], len(generated))
                sent = ready
            input_ids = torch.tensor([[token]], device=self.device)


def _vision_encoder(config: Any, model_dir: str | Path, device: str) -> VisionEncoder | None:
    """The encoder a vision-language config names (`vision_encoder.encoder`); None for text."""
    if not hasattr(config, "image_tokens"):
        return None
    spec = (getattr(config, "vision_encoder", None) or {}).get("encoder")
    if not spec:
        raise ValueError(f"{model_dir} is a vision-language model but its config.json names no "
                         "vision encoder (vision_encoder.encoder)")
    from minimind.encoders import load_vision_encoder

    return load_vision_encoder(spec, device)


def _end_of_turn_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    """Tokens that end the assistant's turn: the tokenizer's eos plus the model's own."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    ids.discard(None)
    if not ids:
        raise ValueError("the tokenizer has no eos token, so replies would never end")
    return frozenset(ids)


def _next_token(logits: torch.Tensor, generated: list[int], settings: GenerationSettings,
                generator: torch.Generator) -> int:
    """Pick the next token: penalties, then greedy or temperature + nucleus (top-p) sampling."""
    logits = logits.float()
    if generated and (settings.presence_penalty or settings.frequency_penalty):
        counts = torch.bincount(torch.tensor(generated, device=logits.device),
                                minlength=logits.numel()).float()
        logits = (logits - settings.frequency_penalty * counts
                  - settings.presence_penalty * (counts > 0).float())
    if settings.temperature == 0:
        return int(logits.argmax())
    # Shift before dividing: a tiny temperature sends the others to -inf instead of inf - inf.
    probs = torch.softmax((logits - logits.max()) / settings.temperature, dim=-1)
    if settings.top_p < 1:
        sorted_probs, order = probs.sort(descending=True)
        mass_before = sorted_probs.cumsum(0) - sorted_probs
        sorted_probs[mass_before >= settings.top_p] = 0  # the top token always survives
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))


def _first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    """Index where the earliest stop string starts in `text`, or None."""
    found = [i for i in (text.find(stop) for stop in stops) if i >= 0]
    return min(found) if found else None


def _safe_prefix_length(text: str, stops: tuple[str, ...]) -> int:
    """How much of `text` can be shown now: all of it except a tail that may still change.

    The tail held back is either an incomplete UTF-8 character (decoded as U+FFFD) or the
    longest suffix that is the beginning of some stop string.
    """
    complete = text.rstrip(REPLACEMENT_CHAR)
    held = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(complete)), held, -1):
            if complete.endswith(stop[:size]):
                held = size
                break
    return len(complete) - held
