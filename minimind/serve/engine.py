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
the model), and the features fill the image's `<|image_pad|>` run on the prefill step. An omni
folder (`minimind-omni`) likewise comes with its audio encoder (`audio_encoder.encoder`): each
clip fills a run of `<|audio_pad|>` as long as the encoder's token count for that clip.

Given a Talker folder the engine also speaks replies (`GenerationSettings.speak`). The Talker
was trained on the Thinker's `hidden_states[thinker_layer]` of each answer token, taken where
that token is the model's input; in the decode loop a token is input on the step after it was
sampled, so its state arrives one step late, the end-of-turn token (never fed back) is never
spoken, and a reply cut at max_tokens takes one more forward step for its last token's state.
A token's state goes to the `StreamingTalker` once the token's text is final in the reply
(text held back because it may begin a stop string is not spoken yet, a stop string never),
and every code chunk the Talker returns is decoded by the speech codec into an audio delta,
so sound streams out between the text deltas while the reply is still being written.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import minimind.model  # noqa: F401  (registers MiniMind with the Auto classes)
from minimind.data.vlm_tokens import AUDIO_MARKER, count_markers, expand_audio, expand_images
from minimind.model.talker import StreamingTalker, check_thinker_layer, load_talker

if TYPE_CHECKING:
    from PIL import Image

    from minimind.audio.codec import SpeechCodec
    from minimind.encoders import VisionEncoder
    from minimind.encoders.audio import AudioEncoder
    from minimind.model.talker import Talker

FinishReason = Literal["stop", "length"]
REPLACEMENT_CHAR = "\ufffd"  # what decode() shows for a UTF-8 sequence cut in the middle


@dataclass(frozen=True)
class GenerationSettings:
    """How one reply is sampled (OpenAI semantics; temperature 0 means greedy), and whether it
    is spoken too."""

    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    speak: bool = False  # also yield the reply as speech (needs a Talker)
    # Speaking: decode and yield the sound every this many codec frames; None: all of it at the
    # end, decoded in one piece (a reply that is not streamed gains nothing from chunks).
    audio_chunk_frames: int | None = None


@dataclass(frozen=True)
class Delta:
    """A piece of the reply, text or sound; the last one of a generation carries the finish
    reason."""

    text: str
    completion_tokens: int  # tokens generated so far, end-of-turn token included
    finish_reason: FinishReason | None = None
    audio: np.ndarray | None = None  # speech, float32 mono at the speech codec's sample rate


class ChatEngine:
    """A causal LM and its chat tokenizer, turned into a stream of reply text (and speech).

    `vision`: the encoder of a vision-language model (None for a text model); its tokens per
    image and width must be what the model's projector was trained on. `audio_encoder`: that of
    an omni model, of the width its audio projector takes. `talker` and `codec`: what speaks
    the replies (`load_talker`); the Talker must read states of this model's width and depth.
    """

    def __init__(self, model: Any, tokenizer: Any, vision: VisionEncoder | None = None,
                 audio_encoder: AudioEncoder | None = None, talker: Talker | None = None,
                 codec: SpeechCodec | None = None) -> None:
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
        self.audio_encoder = audio_encoder
        if audio_encoder is not None and (
                audio_encoder.feature_dim != model.config.audio_feature_dim):
            raise ValueError(f"the audio encoder {audio_encoder.spec!r} gives tokens of width "
                             f"{audio_encoder.feature_dim}; the model expects "
                             f"{model.config.audio_feature_dim}")
        if (talker is None) != (codec is None):
            raise ValueError("a Talker speaks through its speech codec: pass both or neither")
        self.talker, self.codec = talker, codec
        if talker is not None:
            thinker = model.config.get_text_config()
            if talker.config.thinker_hidden_size != thinker.hidden_size:
                raise ValueError(f"the Talker reads Thinker states of width "
                                 f"{talker.config.thinker_hidden_size}; this model's are "
                                 f"{thinker.hidden_size} wide")
            check_thinker_layer(talker.config.thinker_layer, thinker.num_hidden_layers)

    @classmethod
    def from_folder(cls, model_dir: str | Path, device: str | None = None,
                    talker_dir: str | Path | None = None) -> ChatEngine:
        """Load a Hugging Face model folder (MiniMind, MiniMind-V, MiniMind-O or an exported
        Qwen3) and its tokenizer, with the vision and audio encoders its config names, and the
        Talker of `talker_dir` (a `save_talker` folder) to speak replies."""
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model = AutoModelForCausalLM.from_pretrained(model_dir).to(device)
        talker, codec = load_talker(talker_dir, device) if talker_dir is not None else (None, None)
        if codec is not None:
            # One frame now loads what decoding needs (rvq-mel loads HiFi-GAN lazily), so the
            # first spoken reply does not wait for it and a broken codec fails at startup.
            codec.decode(torch.zeros(1, codec.num_quantizers, dtype=torch.long))
        return cls(model, AutoTokenizer.from_pretrained(model_dir),
                   _vision_encoder(model.config, model_dir, device),
                   _audio_encoder(model.config, model_dir, device), talker, codec)

    @property
    def reads_images(self) -> bool:
        return self.vision is not None

    @property
    def hears_audio(self) -> bool:
        return self.audio_encoder is not None

    def prompt_ids(self, messages: list[dict[str, Any]], tools: list[Any] | None = None,
                   clips: Sequence[np.ndarray] = ()) -> list[int]:
        """Token ids of `messages` in the chat template, ending with the assistant's header.

        For a vision-language model each `<image>` marker of a user turn becomes the image's
        run of `<|image_pad|>` tokens; for an omni model the k-th `<audio>` marker becomes a run
        of `<|audio_pad|>` as long as the encoder's token count for `clips[k]` (16 kHz samples).
        """
        if self.vision is not None:
            messages = expand_images(messages, self.model.config.image_tokens)
        if self.audio_encoder is not None:
            markers = count_markers(messages, AUDIO_MARKER)
            if markers != len(clips):
                raise ValueError(f"{markers} {AUDIO_MARKER} markers but {len(clips)} clips")
            messages = expand_audio(messages, [self.audio_encoder.num_tokens(len(clip))
                                               for clip in clips])
        encoded = self.tokenizer.apply_chat_template(
            messages, tools=tools, add_generation_prompt=True, tokenize=True, return_dict=True
        )
        return list(encoded["input_ids"])

    @torch.inference_mode()
    def stream(self, prompt_ids: list[int], settings: GenerationSettings,
               cancelled: threading.Event | None = None,
               images: Sequence[Image.Image] = (),
               clips: Sequence[np.ndarray] = ()) -> Iterator[Delta]:
        """Yield the reply to `prompt_ids` as deltas; the last delta says why it ended.

        Text that could still turn into a stop string, or that ends inside a multi-byte
        character, is held back until the next tokens decide it. Setting `cancelled` ends the
        generation after the current token, without a final delta. `images` (RGB) and `clips`
        (float32 16 kHz mono), each in the order of their pad runs in the prompt, go through
        their encoders first. With `settings.speak`, audio deltas come between the text ones.
        """
        inputs = self._media_inputs(images, clips)  # what only the prefill step gets
        speech = self._speech(settings)
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
            hear = speech is not None and bool(generated)  # the input is a reply token
            output = self.model(input_ids=input_ids, past_key_values=cache, use_cache=True,
                                logits_to_keep=1, output_hidden_states=hear, **inputs)
            inputs = {}
            cache = output.past_key_values
            if hear:
                speech.hear(output.hidden_states[speech.layer][0, -1])
            token = _next_token(output.logits[0, -1], generated, settings, generator)
            generated.append(token)
            ended = token in self.end_of_turn_ids
            text = self.tokenizer.decode(generated[:-1] if ended else generated,
                                         skip_special_tokens=True)
            if speech is not None:
                speech.sampled(len(text.rstrip(REPLACEMENT_CHAR)))
            cut = _first_stop(text, settings.stop)
            if cut is not None:
                yield from _ending(text[sent:cut], len(generated), "stop", speech, cut, cancelled)
                return
            if ended or len(generated) == settings.max_new_tokens:
                if speech is not None and not ended:  # the last token is spoken too
                    speech.hear(self._last_state(token, cache, speech.layer))
                yield from _ending(text[sent:], len(generated), "stop" if ended else "length",
                                   speech, len(text), cancelled)
                return
            if cancelled is not None and cancelled.is_set():
                return
            ready = _safe_prefix_length(text, settings.stop)
            if ready > sent:
                yield Delta(text[sent:ready], len(generated))
                sent = ready
            if speech is not None:
                for samples in speech.release(sent):
                    yield Delta("", len(generated), audio=samples)
            input_ids = torch.tensor([[token]], device=self.device)

    def _media_inputs(self, images: Sequence[Image.Image], clips: Sequence[np.ndarray]
                      ) -> dict[str, torch.Tensor]:
        """The encoded images and clips, as the model's prefill step takes them."""
        inputs = {}
        if images:
            if self.vision is None:
                raise ValueError("this model reads text only; it cannot take images")
            inputs["image_features"] = self.vision.encode(list(images)).to(self.device)
        if clips:
            if self.audio_encoder is None:
                raise ValueError("this model does not hear audio; it cannot take clips")
            tokens = self.audio_encoder.encode(list(clips))
            inputs["audio_features"] = torch.cat(tokens).to(self.device)
        return inputs

    def _speech(self, settings: GenerationSettings) -> _Speech | None:
        if not settings.speak:
            return None
        if self.talker is None or self.codec is None:
            raise ValueError("this engine has no Talker; it cannot speak")
        return _Speech(self.talker, self.codec, settings.audio_chunk_frames)

    def _last_state(self, token: int, cache: Any, layer: int) -> torch.Tensor:
        """The Thinker state of a reply's last token, which sampling alone never feeds back."""
        output = self.model(input_ids=torch.tensor([[token]], device=self.device),
                            past_key_values=cache, use_cache=True, logits_to_keep=1,
                            output_hidden_states=True)
        return output.hidden_states[layer][0, -1]


class _Speech:
    """One reply being spoken: each sampled token's text end and, once it was fed back, its
    Thinker state; the states of tokens whose text is final go to the Talker in order."""

    def __init__(self, talker: Talker, codec: SpeechCodec, chunk_frames: int | None) -> None:
        self.codec, self.layer = codec, talker.config.thinker_layer
        self.streaming = StreamingTalker(talker, chunk_frames or talker.config.max_frames)
        self.ends: list[int] = []  # per sampled token: length of the reply text it completes
        self.states: list[torch.Tensor] = []  # per token fed back so far: its Thinker state
        self.spoken = 0  # tokens whose states the Talker has

    def sampled(self, text_end: int) -> None:
        """A token was sampled; the reply's text up to it is `text_end` characters long."""
        self.ends.append(text_end)

    def hear(self, state: torch.Tensor) -> None:
        """The Thinker state of the oldest token whose state was missing."""
        self.states.append(state)

    def release(self, final_chars: int) -> list[np.ndarray]:
        """The reply's first `final_chars` characters are final: speak their tokens (those with
        a state: the token just sampled has none yet). Returns the sound that became ready."""
        # Text ends never decrease: a decoded prefix only grows (see _safe_prefix_length).
        final = min(len(self.states), bisect.bisect_right(self.ends, final_chars))
        if final <= self.spoken:
            return []
        chunks = self.streaming.push(torch.stack(self.states[self.spoken:final]))
        self.spoken = final
        return self._decode(chunks)

    def finish(self, reply_chars: int) -> list[np.ndarray]:
        """The reply is `reply_chars` characters long and over: the rest of its sound."""
        sound = self.release(reply_chars)
        return sound + self._decode(self.streaming.finish())

    def _decode(self, chunks: list[torch.Tensor]) -> list[np.ndarray]:
        return [self.codec.decode(chunk.cpu()) for chunk in chunks]


def _ending(text: str, completion_tokens: int, reason: FinishReason, speech: _Speech | None,
            reply_chars: int, cancelled: threading.Event | None) -> Iterator[Delta]:
    """The last deltas of a reply: its remaining text, the rest of its sound, the reason."""
    if speech is None:
        yield Delta(text, completion_tokens, reason)
        return
    yield Delta(text, completion_tokens)
    for samples in speech.finish(reply_chars):
        if cancelled is not None and cancelled.is_set():
            return
        yield Delta("", completion_tokens, audio=samples)
    yield Delta("", completion_tokens, reason)


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


def _audio_encoder(config: Any, model_dir: str | Path, device: str) -> AudioEncoder | None:
    """The encoder an omni config names (`audio_encoder.encoder`); None for a model without
    audio input."""
    if not hasattr(config, "audio_feature_dim"):
        return None
    spec = (getattr(config, "audio_encoder", None) or {}).get("encoder")
    if not spec:
        raise ValueError(f"{model_dir} is an omni model but its config.json names no audio "
                         "encoder (audio_encoder.encoder)")
    from minimind.encoders.audio import load_audio_encoder

    return load_audio_encoder(spec, device)


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
