"""MiniMind-O's Talker: the speech-out half of the Thinker-Talker design, in plain PyTorch.

The Thinker (the MiniMind LLM) writes the answer text; the Talker, a small causal decoder over
speech-codec frames, turns it into codes [S, Q] that a `SpeechCodec` decodes to a waveform.
It does not read the text tokens but the Thinker's hidden states of them, taken at a middle
layer (`thinker_layer`): those carry what the token means in context (which a pronunciation
depends on) before the last layers specialise in predicting the next token.

One frame step s of the Talker:

    input     = sum of the Q code embeddings of frame s-1   (a learned BOS vector at s = 0)
    n layers  : x + self_attn(x) over frames < s            (causal, KV-cached when generating)
                x + cross_attn(x, conditioning rows < available(s))
                x + mlp(x)
    outputs   : a stop logit ("the speech ended before frame s") and the Q codes of frame s,
                coarse to fine: code q is predicted from the hidden state plus embeddings of
                codes 0..q-1 of the same frame. The RVQ levels of a frame depend on each
                other (level q quantises what levels < q left over), so sampling them
                independently could pair a coarse code with a fine code meant for another;
                the sequential head costs Q tiny matmuls per frame and nothing in depth.

Streaming comes from the cross-attention mask. The conditioning rows are the answer's T text
states followed by one learned end-of-text row (softmax attention cannot notice that something
is absent, so "the text is over, stop soon" must be something the Talker can attend to).
Frame s may read the first `available(s) = min(T + 1, lookahead + floor(s / frames_per_token))`
rows: a fixed schedule that depends on s and T only. So frame s can be generated as soon as
`lookahead + floor(s / frames_per_token)` text states exist (or the text has ended, which
makes the min() cap take over), audio chunks come out while the Thinker is still writing,
and training, offline `generate` and `StreamingTalker` all see exactly the same mask.
`frames_per_token` is the speaking rate the schedule assumes; `estimate_frames_per_token`
measures it on training pairs. Cross-attention also applies RoPE with the query at fractional
text position s / frames_per_token and the keys at their indices, so the attention logits know
how far each text row is from where the schedule says speech should be.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.cache_utils import Cache, DynamicCache

from minimind.model.config import MiniMindConfig
from minimind.model.modeling import (
    Attention,
    MiniMindForCausalLM,
    RMSNorm,
    SwiGLU,
    apply_rope,
    rope_cos_sin,
)

# One training/eval pair: the Thinker states of the answer [T, thinker_hidden_size] and the
# codec codes of its speech [S, Q].
TalkerPair = tuple[torch.Tensor, torch.Tensor]


@dataclass
class TalkerConfig:
    """Sizes of the Talker, what it reads from the Thinker, and the streaming schedule."""

    thinker_hidden_size: int  # width of the Thinker states it reads
    thinker_layer: int  # index into the Thinker's hidden_states (0 = embeddings); see for_thinker
    hidden_size: int = 128
    num_layers: int = 3
    num_heads: int = 4
    intermediate_size: int | None = None  # None: hidden_size * pi rounded up to 64 (MiniMind-3)
    num_quantizers: int = 4  # Q: codes per frame (the codec's)
    codebook_size: int = 512  # K: each code lies in [0, K)
    # Streaming schedule: frame s reads lookahead + floor(s / frames_per_token) text rows.
    frames_per_token: float = 12.0  # ~43 frames/s over ~3.5 tokens/s; measure it on your data
    lookahead: int = 2  # text rows visible before the first frame (>= 1: never an empty row)
    max_frames: int = 2048  # generation limit when the stop signal never fires (~48 s at 43/s)
    stop_loss_weight: float = 1.0
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    dropout: float = 0.0

    def __post_init__(self) -> None:
        positive = ("thinker_hidden_size", "hidden_size", "num_layers", "num_heads",
                    "num_quantizers", "codebook_size", "lookahead", "max_frames")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"TalkerConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.thinker_layer < 0:
            raise ValueError(f"TalkerConfig.thinker_layer must be >= 0, got {self.thinker_layer}")
        if self.hidden_size % self.num_heads or (self.hidden_size // self.num_heads) % 2:
            raise ValueError(f"hidden_size ({self.hidden_size}) must split into num_heads "
                             f"({self.num_heads}) heads of even width (RoPE)")
        if self.intermediate_size is None:
            self.intermediate_size = 64 * math.ceil(self.hidden_size * math.pi / 64)
        if self.intermediate_size < 1:
            raise ValueError(f"TalkerConfig.intermediate_size must be >= 1, "
                             f"got {self.intermediate_size}")
        if not (self.frames_per_token > 0 and math.isfinite(self.frames_per_token)):
            raise ValueError(f"frames_per_token must be a positive number, "
                             f"got {self.frames_per_token}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.stop_loss_weight < 0:
            raise ValueError(f"stop_loss_weight must be >= 0, got {self.stop_loss_weight}")

    @classmethod
    def for_thinker(cls, thinker: MiniMindConfig, layer: int | None = None, codec: Any = None,
                    **overrides: Any) -> TalkerConfig:
        """A config reading `thinker`'s states at `layer` (default: the middle one), with Q and
        K from `codec` (anything with `num_quantizers` and `codebook_size`, e.g. a
        SpeechCodec) when given. The layer is checked against the Thinker's depth."""
        layer = thinker.num_hidden_layers // 2 if layer is None else layer
        check_thinker_layer(layer, thinker.num_hidden_layers)
        fields: dict[str, Any] = {"thinker_hidden_size": thinker.hidden_size,
                                  "thinker_layer": layer}
        if codec is not None:
            fields |= {"num_quantizers": int(codec.num_quantizers),
                       "codebook_size": int(codec.codebook_size)}
        return cls(**{**fields, **overrides})

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def rows_needed(self, frame: int) -> int:
        """Conditioning rows frame `frame` reads while the text goes on: generating it must
        wait for this many Thinker states (or for the text to end)."""
        return self.lookahead + math.floor(frame / self.frames_per_token)

    def available(self, frame: int, num_text: int) -> int:
        """Rows frame `frame` reads of an answer of `num_text` tokens (+1: end-of-text row)."""
        return min(num_text + 1, self.rows_needed(frame))

    def self_attention_config(self) -> MiniMindConfig:
        """The MiniMind config whose `Attention` is the Talker's self-attention (no GQA)."""
        return MiniMindConfig(
            vocab_size=self.num_quantizers * self.codebook_size, hidden_size=self.hidden_size,
            num_hidden_layers=self.num_layers, num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_heads, head_dim=self.head_dim,
            intermediate_size=self.intermediate_size, rope_theta=self.rope_theta,
            rms_norm_eps=self.rms_norm_eps, dropout=self.dropout)


def check_thinker_layer(layer: int, num_hidden_layers: int) -> None:
    """hidden_states has num_hidden_layers + 1 entries: 0 is the embeddings, entry i the input
    of layer i, the last one the final normed output."""
    if not 0 <= layer <= num_hidden_layers:
        raise ValueError(f"thinker_layer {layer} is out of range: a Thinker with "
                         f"{num_hidden_layers} layers has hidden states 0..{num_hidden_layers}")


class CrossAttention(nn.Module):
    """Frames (queries) read conditioning rows (keys/values), with q/k RMSNorm like the
    Thinker's self-attention and RoPE on both sides (query at s / frames_per_token, keys at
    their row index), so a score knows how far a row is from the schedule's reading point."""

    def __init__(self, config: TalkerConfig) -> None:
        super().__init__()
        width, self.head_dim = config.hidden_size, config.head_dim
        self.dropout = config.dropout
        self.q_proj = nn.Linear(width, width, bias=False)
        self.k_proj = nn.Linear(width, width, bias=False)
        self.v_proj = nn.Linear(width, width, bias=False)
        self.o_proj = nn.Linear(width, width, bias=False)
        self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)

    def forward(self, x: torch.Tensor, memory: torch.Tensor,
                q_rope: tuple[torch.Tensor, torch.Tensor],
                k_rope: tuple[torch.Tensor, torch.Tensor],
                mask: torch.Tensor | None) -> torch.Tensor:
        """x [B, S, H], memory [B, M, H], mask [B, 1, S, M] (True = may read) or None (all)."""
        batch, seq, _ = x.shape
        rows = memory.shape[1]
        q = self.q_norm(self.q_proj(x).view(batch, seq, -1, self.head_dim)).transpose(1, 2)
        k = self.k_norm(self.k_proj(memory).view(batch, rows, -1, self.head_dim)).transpose(1, 2)
        v = self.v_proj(memory).view(batch, rows, -1, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, *q_rope), apply_rope(k, *k_rope)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        return self.o_proj(out.transpose(1, 2).reshape(batch, seq, -1))


class TalkerBlock(nn.Module):
    """Pre-norm block: causal self-attention over frames, cross-attention to the text, MLP."""

    def __init__(self, config: TalkerConfig, layer_idx: int) -> None:
        super().__init__()
        width, eps = config.hidden_size, config.rms_norm_eps
        self.self_norm = RMSNorm(width, eps)
        self.self_attn = Attention(config.self_attention_config(), layer_idx)
        self.cross_norm = RMSNorm(width, eps)
        self.cross_attn = CrossAttention(config)
        self.mlp_norm = RMSNorm(width, eps)
        self.mlp = SwiGLU(width, config.intermediate_size)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, self_rope: tuple[torch.Tensor, torch.Tensor],
                self_mask: torch.Tensor | None, cache: Cache | None, memory: torch.Tensor,
                q_rope: tuple[torch.Tensor, torch.Tensor],
                k_rope: tuple[torch.Tensor, torch.Tensor],
                cross_mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.resid_dropout(self.self_attn(self.self_norm(x), *self_rope, self_mask, cache))
        x = x + self.resid_dropout(
            self.cross_attn(self.cross_norm(x), memory, q_rope, k_rope, cross_mask))
        return x + self.resid_dropout(self.mlp(self.mlp_norm(x)))


class Talker(nn.Module):
    """Causal decoder from Thinker states to codec frames; see the module docstring."""

    def __init__(self, config: TalkerConfig) -> None:
        super().__init__()
        self.config = config
        q, k, width = config.num_quantizers, config.codebook_size, config.hidden_size
        # Code q of value c is row q * K + c: one table for all levels, summed per frame.
        self.code_embed = nn.Embedding(q * k, width)
        self.bos = nn.Parameter(torch.zeros(width))
        self.cond_norm = RMSNorm(config.thinker_hidden_size, config.rms_norm_eps)
        self.cond_proj = nn.Linear(config.thinker_hidden_size, width, bias=False)
        self.end_of_text = nn.Parameter(torch.zeros(width))
        self.layers = nn.ModuleList(TalkerBlock(config, i) for i in range(config.num_layers))
        self.norm = RMSNorm(width, config.rms_norm_eps)
        self.stop_head = nn.Linear(width, 1)
        self.depth_embed = nn.Embedding(q * k, width)  # codes < q of the frame being predicted
        self.depth_norm = RMSNorm(width, config.rms_norm_eps)
        self.code_heads = nn.ModuleList(nn.Linear(width, k, bias=False) for _ in range(q))
        self.register_buffer("code_offsets", torch.arange(q) * k, persistent=False)
        self.reset_parameters()

    def reset_parameters(self, std: float = 0.02) -> None:
        """MiniMind's init: Normal(0, 0.02) matrices and vectors, zero biases, unit norms."""
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, std=std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)
        nn.init.normal_(self.bos, std=std)
        nn.init.normal_(self.end_of_text, std=std)

    # --- pieces shared by training and generation ------------------------------------------

    def embed_frames(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [..., Q] -> the sum of their Q embeddings [..., H]."""
        return self.code_embed(codes + self.code_offsets).sum(-2)

    def project_rows(self, cond: torch.Tensor) -> torch.Tensor:
        """Thinker states [..., Hc] -> conditioning rows [..., H] (normed first: middle-layer
        states are the un-normalised residual stream, whose scale grows with depth)."""
        return self.cond_proj(self.cond_norm(cond.to(self.cond_proj.weight.dtype)))

    def _trunk(self, x: torch.Tensor, frame_pos: torch.Tensor, self_mask: torch.Tensor | None,
               cache: Cache | None, memory: torch.Tensor,
               cross_mask: torch.Tensor | None) -> torch.Tensor:
        """Run the blocks on frame inputs x [B, L, H] at positions frame_pos [1, L] (integer
        frame indices) against memory [B, M, H]; the final normed hidden states [B, L, H]."""
        cfg = self.config
        self_rope = rope_cos_sin(frame_pos, cfg.head_dim, cfg.rope_theta, x.dtype)
        q_rope = rope_cos_sin(frame_pos / cfg.frames_per_token, cfg.head_dim, cfg.rope_theta,
                              x.dtype)
        row_pos = torch.arange(memory.shape[1], device=x.device)[None]
        k_rope = rope_cos_sin(row_pos, cfg.head_dim, cfg.rope_theta, x.dtype)
        for layer in self.layers:
            x = layer(x, self_rope, self_mask, cache, memory, q_rope, k_rope, cross_mask)
        return self.norm(x)

    def _check_cond(self, cond: torch.Tensor, dims: int) -> None:
        width = self.config.thinker_hidden_size
        if cond.dim() != dims or cond.shape[-1] != width:
            shape = "[B, T, Hc]" if dims == 3 else "[T, Hc]"
            raise ValueError(f"Thinker states must be {shape} with Hc = thinker_hidden_size = "
                             f"{width}, got {tuple(cond.shape)}")

    def _check_codes(self, codes: torch.Tensor, real: torch.Tensor | None = None) -> None:
        q, k = self.config.num_quantizers, self.config.codebook_size
        if codes.dim() < 2 or codes.shape[-1] != q:
            raise ValueError(f"codes must be [..., S, Q] with Q = num_quantizers = {q}, "
                             f"got {tuple(codes.shape)}")
        if codes.dtype.is_floating_point or codes.dtype == torch.bool:
            raise ValueError(f"codes must be integers, got {codes.dtype}")
        checked = codes if real is None else codes[real]
        if checked.numel() and (checked.min() < 0 or checked.max() >= k):
            raise ValueError(f"codes must lie in [0, {k}) (codebook_size), found "
                             f"[{int(checked.min())}, {int(checked.max())}]")

    # --- training --------------------------------------------------------------------------

    def logits(self, cond: torch.Tensor, cond_mask: torch.Tensor, codes: torch.Tensor,
               code_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced outputs: code logits [B, S, Q, K] (frame s, level q, given frames < s
        and levels < q of frame s) and stop logits [B, S + 1] (stop before frame s).

        cond [B, T, Hc] and codes [B, S, Q] are right-padded; cond_mask [B, T] and code_mask
        [B, S] (default: all real) mark the real rows/frames, as prefixes.
        """
        self._check_cond(cond, 3)
        batch, num_rows = cond.shape[:2]
        if codes.dim() != 3 or codes.shape[0] != batch:
            raise ValueError(f"codes must be [B={batch}, S, Q], got {tuple(codes.shape)}")
        num_frames = codes.shape[1]
        if code_mask is None:
            code_mask = torch.ones(codes.shape[:2], dtype=torch.bool, device=codes.device)
        code_mask = code_mask.bool()
        text_len = _prefix_lengths(cond_mask, (batch, num_rows), "cond_mask")
        _prefix_lengths(code_mask, (batch, num_frames), "code_mask")
        self._check_codes(codes, code_mask)
        codes = codes.long().masked_fill(~code_mask[..., None], 0)
        device = cond.device

        # Frame inputs: BOS, then frames 0..S-1; input s predicts frame s (and stop before s).
        frames = self.embed_frames(codes)
        x = torch.cat([self.bos.expand(batch, 1, -1), frames], dim=1)  # [B, S + 1, H]
        # Memory: the text rows, then the end-of-text row at each row's own length.
        rows = torch.cat([self.project_rows(cond), x.new_zeros(batch, 1, x.shape[-1])], dim=1)
        at_end = torch.arange(num_rows + 1, device=device) == text_len[:, None]
        memory = torch.where(at_end[..., None], self.end_of_text.to(rows.dtype), rows)

        steps = num_frames + 1
        needed = torch.tensor([self.config.rows_needed(s) for s in range(steps)], device=device)
        available = torch.minimum(needed[None], text_len[:, None] + 1)  # [B, S + 1]
        row_idx = torch.arange(num_rows + 1, device=device)
        cross_mask = (row_idx[None, None] < available[..., None])[:, None]  # [B, 1, S+1, T+1]
        frame_pos = torch.arange(steps, device=device)[None]
        hidden = self._trunk(x, frame_pos, None, None, memory, cross_mask)

        stop_logits = self.stop_head(hidden).squeeze(-1)
        depth = self.depth_embed(codes + self.code_offsets)  # [B, S, Q, H]
        before = F.pad(depth.cumsum(2)[:, :, :-1], (0, 0, 1, 0))  # sum of levels < q
        z = self.depth_norm(hidden[:, :num_frames, None] + before)
        code_logits = torch.stack([head(z[:, :, q]) for q, head in enumerate(self.code_heads)],
                                  dim=2)
        return code_logits, stop_logits

    def loss_terms(self, cond: torch.Tensor, cond_mask: torch.Tensor, codes: torch.Tensor,
                   code_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(code loss, stop loss): mean cross-entropy over the Q codes of every real frame, and
        mean binary cross-entropy of the stop logit over frames 0..S of each row (1 only at S,
        the frame after the last: plain BCE keeps its probability calibrated)."""
        code_logits, stop_logits = self.logits(cond, cond_mask, codes, code_mask)
        code_mask = code_mask.bool()
        real = code_logits[code_mask]  # [frames, Q, K]
        code_loss = (F.cross_entropy(real.reshape(-1, real.shape[-1]).float(),
                                     codes[code_mask].reshape(-1).long())
                     if real.numel() else stop_logits.sum() * 0)
        num_frames = code_mask.sum(1)
        position = torch.arange(stop_logits.shape[1], device=stop_logits.device)[None]
        stop_target = (position == num_frames[:, None]).float()
        scored = position <= num_frames[:, None]
        stop_loss = F.binary_cross_entropy_with_logits(stop_logits[scored].float(),
                                                       stop_target[scored])
        return code_loss, stop_loss

    def forward(self, cond: torch.Tensor, cond_mask: torch.Tensor, codes: torch.Tensor,
                code_mask: torch.Tensor) -> torch.Tensor:
        """Training loss: code cross-entropy + stop_loss_weight * stop BCE (see loss_terms)."""
        code_loss, stop_loss = self.loss_terms(cond, cond_mask, codes, code_mask)
        return code_loss + self.config.stop_loss_weight * stop_loss

    # --- generation ------------------------------------------------------------------------

    def sample_frame(self, hidden: torch.Tensor, temperature: float,
                     generator: torch.Generator | None) -> torch.Tensor:
        """The Q codes [Q] of one frame from its hidden state [H], level by level."""
        before = torch.zeros_like(hidden)
        codes = []
        for q, head in enumerate(self.code_heads):
            logits = head(self.depth_norm(hidden + before)).float()
            if temperature <= 0:
                code = logits.argmax()
            else:
                probs = F.softmax(logits / temperature, dim=-1)
                code = torch.multinomial(probs, 1, generator=generator)[0]
            codes.append(code)
            before = before + self.depth_embed.weight[q * self.config.codebook_size + code]
        return torch.stack(codes)

    @torch.no_grad()
    def generate(self, cond: torch.Tensor, max_frames: int | None = None,
                 temperature: float = 0.0, seed: int = 0) -> torch.Tensor:
        """Codes int64 [S, Q] for the Thinker states cond [T, Hc] of a whole answer: greedy at
        temperature 0, else seeded sampling; stops when the stop logit turns positive or after
        max_frames (default config.max_frames). Exactly what StreamingTalker yields."""
        self._check_cond(cond, 2)
        stream = StreamingTalker(self, chunk_frames=max_frames or self.config.max_frames,
                                 temperature=temperature, seed=seed, max_frames=max_frames)
        chunks = stream.push(cond) + stream.finish()
        if not chunks:
            return torch.zeros(0, self.config.num_quantizers, dtype=torch.long,
                               device=cond.device)
        return torch.cat(chunks)


class StreamingTalker:
    """Speech while the text is still being written: `push` Thinker states as tokens come,
    `finish` when the text ends; both return the code chunks [<= chunk_frames, Q] that became
    ready, and their concatenation is `generate` on all the states with the same seed.

    Frame s is generated once `config.rows_needed(s)` states were pushed (or after finish), so
    a frame only ever reads what the availability mask gives it. Self-attention keys/values
    are kept in a KV cache (the frame history never changes); the conditioning rows a frame
    reads are re-projected whenever their count grows, which is O(T) per step and cheap at the
    Talker's size. The talker must not be in training mode with dropout.
    """

    def __init__(self, talker: Talker, chunk_frames: int = 8, temperature: float = 0.0,
                 seed: int = 0, max_frames: int | None = None) -> None:
        if chunk_frames < 1:
            raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
        if talker.training and talker.config.dropout > 0:
            raise ValueError("call talker.eval() first: dropout would make generation random")
        self.talker, self.config = talker, talker.config
        self.chunk_frames, self.temperature = chunk_frames, temperature
        self.max_frames = self.config.max_frames if max_frames is None else max_frames
        self.device = talker.code_offsets.device
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.states: list[torch.Tensor] = []  # pushed Thinker states [Hc]
        self.finished = False  # the text has ended
        self.done = False  # the speech has ended (stop signal or max_frames)
        self.num_frames = 0
        self._cache = DynamicCache()
        self._last: torch.Tensor | None = None  # codes of the latest frame
        self._pending: list[torch.Tensor] = []  # frames of the chunk being filled
        self._memory: torch.Tensor | None = None  # projected rows, kept while their count holds

    def push(self, states: torch.Tensor) -> list[torch.Tensor]:
        """Add the Thinker states of one token [Hc] (or of several [n, Hc])."""
        if self.finished:
            raise RuntimeError("push after finish: the text has already ended")
        states = states[None] if states.dim() == 1 else states
        self.talker._check_cond(states, 2)
        self.states.extend(states.detach().to(self.device).unbind(0))
        return self._advance()

    def finish(self) -> list[torch.Tensor]:
        """The text has ended: generate the rest of the speech, return its chunks."""
        self.finished = True
        return self._advance()

    def _available(self) -> int | None:
        """Rows the next frame reads, or None while it must wait for more text."""
        needed = self.config.rows_needed(self.num_frames)
        if self.finished:
            return min(len(self.states) + 1, needed)
        return needed if len(self.states) >= needed else None

    def _rows(self, count: int) -> torch.Tensor:
        """The first `count` conditioning rows [1, count, H]: text states, then end-of-text."""
        if self._memory is None or self._memory.shape[1] != count:
            talker = self.talker
            num_text = min(count, len(self.states))
            rows = talker.project_rows(torch.stack(self.states[:num_text]))
            if count > num_text:
                rows = torch.cat([rows, talker.end_of_text[None].to(rows.dtype)])
            self._memory = rows[None]
        return self._memory

    def _advance(self) -> list[torch.Tensor]:
        chunks = []
        with torch.no_grad():
            while not self.done:
                available = self._available()
                if available is None:
                    break
                frame = self._next_frame(available)
                if frame is None:
                    self.done = True
                    break
                self._pending.append(frame)
                self.done = self.num_frames >= self.max_frames
                if len(self._pending) == self.chunk_frames:
                    chunks.append(torch.stack(self._pending))
                    self._pending = []
        if self.done and self._pending:
            chunks.append(torch.stack(self._pending))
            self._pending = []
        return chunks

    def _next_frame(self, available: int) -> torch.Tensor | None:
        """One decoder step: the codes [Q] of frame num_frames, or None if speech stops."""
        if self.num_frames >= self.max_frames:
            return None
        talker, step = self.talker, self.num_frames
        x = talker.bos if self._last is None else talker.embed_frames(self._last)
        self_mask = torch.ones(1, 1, 1, step + 1, dtype=torch.bool, device=self.device)
        frame_pos = torch.tensor([[step]], device=self.device)
        hidden = talker._trunk(x[None, None], frame_pos, self_mask, self._cache,
                               self._rows(available), None)[0, 0]
        if talker.stop_head(hidden).item() > 0:
            return None
        self._last = talker.sample_frame(hidden, self.temperature, self.generator)
        self.num_frames += 1
        return self._last


def stream_speech(talker: Talker, states: Iterable[torch.Tensor], chunk_frames: int = 8,
                  temperature: float = 0.0, seed: int = 0,
                  max_frames: int | None = None) -> Iterator[torch.Tensor]:
    """Generator form of StreamingTalker: consumes Thinker states (one [Hc] per token, e.g.
    from a token-by-token Thinker loop) and yields code chunks as soon as they are ready."""
    stream = StreamingTalker(talker, chunk_frames, temperature, seed, max_frames)
    for state in states:
        yield from stream.push(state)
        if stream.done:
            return
    yield from stream.finish()


# --- data, training and the Thinker side ----------------------------------------------------


def _prefix_lengths(mask: torch.Tensor, shape: tuple[int, int], name: str) -> torch.Tensor:
    """Lengths [B] of a right-padded boolean mask; anything but a prefix mask is an error."""
    if tuple(mask.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(mask.shape)}")
    mask = mask.bool()
    lengths = mask.sum(1)
    prefix = torch.arange(shape[1], device=mask.device)[None] < lengths[:, None]
    if not torch.equal(mask, prefix):
        raise ValueError(f"{name} must mark a prefix of each row (right padding only)")
    return lengths


def collate_pairs(pairs: Sequence[TalkerPair]) -> tuple[torch.Tensor, ...]:
    """Right-pad (states [T, Hc], codes [S, Q]) pairs into the forward's inputs:
    cond [B, T, Hc], cond_mask [B, T], codes [B, S, Q] (padding 0), code_mask [B, S]."""
    if not pairs:
        raise ValueError("collate_pairs needs at least one pair")
    for cond, codes in pairs:
        if cond.dim() != 2 or codes.dim() != 2:
            raise ValueError(f"each pair must be (states [T, Hc], codes [S, Q]), got shapes "
                             f"{tuple(cond.shape)} and {tuple(codes.shape)}")
    batch = len(pairs)
    max_text = max(cond.shape[0] for cond, _ in pairs)
    max_frames = max(codes.shape[0] for _, codes in pairs)
    width, q = pairs[0][0].shape[1], pairs[0][1].shape[1]
    cond = pairs[0][0].new_zeros(batch, max_text, width)
    codes = torch.zeros(batch, max_frames, q, dtype=torch.long)
    cond_mask = torch.zeros(batch, max_text, dtype=torch.bool)
    code_mask = torch.zeros(batch, max_frames, dtype=torch.bool)
    for i, (row_cond, row_codes) in enumerate(pairs):
        if row_cond.shape[1] != width or row_codes.shape[1] != q:
            raise ValueError(f"pair {i} has Hc {row_cond.shape[1]} and Q {row_codes.shape[1]}, "
                             f"pair 0 has {width} and {q}")
        cond[i, :len(row_cond)], cond_mask[i, :len(row_cond)] = row_cond, True
        codes[i, :len(row_codes)], code_mask[i, :len(row_codes)] = row_codes, True
    return cond, cond_mask, codes, code_mask


def estimate_frames_per_token(pairs: Iterable[tuple[Any, Any]],
                              quantile: float | None = None) -> float:
    """Codec frames per text token, from (states or token count, codes or frame count) pairs.

    Default: total frames / total tokens, the mean speaking rate. With `quantile`, that
    quantile of the per-pair rates instead: a low one (say 0.1) makes the schedule run ahead of
    most utterances, so the end-of-text row is visible by the time the speech ends even for
    fast speakers, at the cost of waiting for a few more tokens before the first frame.
    """
    lengths = [(_count(text), _count(speech)) for text, speech in pairs]
    lengths = [(t, s) for t, s in lengths if t > 0]
    if not lengths:
        raise ValueError("estimate_frames_per_token needs pairs with text")
    if quantile is None:
        rate = sum(s for _, s in lengths) / sum(t for t, _ in lengths)
    else:
        rates = torch.tensor([s / t for t, s in lengths], dtype=torch.float64)
        rate = float(torch.quantile(rates, quantile))
    if rate <= 0:
        raise ValueError("the pairs hold no speech frames")
    return rate


def _count(item: Any) -> int:
    return int(item) if isinstance(item, int) else int(item.shape[0])


def train_talker(talker: Talker, pairs: Sequence[TalkerPair], steps: int, lr: float = 1e-3,
                 batch_size: int = 16, seed: int = 0) -> list[float]:
    """Plain seeded AdamW loop over random batches of pairs; returns the loss of every step.

    The batch order and dropout draw from `seed` alone (the caller's RNG is left as it was),
    so the same talker init, pairs and arguments give bit-identical weights on CPU. Gradients
    are clipped to norm 1; a non-finite loss stops training with an error.
    """
    if not pairs:
        raise ValueError("train_talker needs at least one pair")
    if steps < 0 or batch_size < 1 or lr <= 0:
        raise ValueError(f"bad steps {steps} / batch_size {batch_size} / lr {lr}")
    device = talker.code_offsets.device
    optimizer = torch.optim.AdamW(talker.parameters(), lr=lr, weight_decay=0.01)
    order = torch.Generator().manual_seed(seed)
    batch_size = min(batch_size, len(pairs))
    perm, cursor, losses = torch.randperm(len(pairs), generator=order), 0, []
    was_training = talker.training
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        talker.train()
        for step in range(steps):
            if cursor + batch_size > len(pairs):
                perm, cursor = torch.randperm(len(pairs), generator=order), 0
            batch = [pairs[int(i)] for i in perm[cursor:cursor + batch_size]]
            cursor += batch_size
            cond, cond_mask, codes, code_mask = (t.to(device) for t in collate_pairs(batch))
            loss = talker(cond, cond_mask, codes, code_mask)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"talker loss is {loss.item()} at step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(talker.parameters(), 1.0)
            optimizer.step()
            losses.append(loss.item())
    talker.train(was_training)
    return losses


@torch.no_grad()
def thinker_states(llm: MiniMindForCausalLM, input_ids: torch.Tensor, layer: int,
                   attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The Thinker's hidden states at `layer` for input_ids [T] -> [T, H] or [B, T] -> [B, T, H].

    Entry `layer` of `output_hidden_states` (0: embeddings, i: the input of layer i, last: the
    final normed output). Computed without gradients: the Talker trains on a frozen Thinker's
    states. Slice out the answer tokens' rows for the Talker.
    """
    check_thinker_layer(layer, llm.config.num_hidden_layers)
    single = input_ids.dim() == 1
    ids = input_ids[None] if single else input_ids
    out = llm(input_ids=ids, attention_mask=attention_mask, output_hidden_states=True,
              use_cache=False)
    states = out.hidden_states[layer]
    return states[0] if single else states


# --------------------------------------------------------------------------- folder format

TALKER_FILE, TALKER_WEIGHTS, CODEC_DIR = "talker.json", "talker.safetensors", "codec"


def save_talker(talker: Talker, directory: str | Path, codec: Any) -> None:
    """Write `talker.json` (config + codec identity), `talker.safetensors` and, for the
    pipeline-trained rvq-mel codec, the codec itself under `codec/`, so the folder is whole."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    codec_info = codec.describe()
    if codec_info["kind"] == "rvq-mel":
        codec.save(directory / CODEC_DIR)
        codec_info = {**codec.describe(), "source": CODEC_DIR}  # relative: the folder moves
    (directory / TALKER_FILE).write_text(json.dumps(
        {"config": asdict(talker.config), "codec": codec_info}, indent=2) + "\n")
    save_file({k: v.contiguous() for k, v in talker.state_dict().items()},
              directory / TALKER_WEIGHTS)


def load_talker(directory: str | Path, device: str | torch.device = "cpu"
                ) -> tuple[Talker, Any]:
    """(Talker, SpeechCodec) from a `save_talker` folder; every weight must load (strict)."""
    from safetensors.torch import load_file

    from minimind.audio.codec import load_codec

    directory = Path(directory)
    if not (directory / TALKER_FILE).is_file():
        raise FileNotFoundError(f"{directory}: no {TALKER_FILE} (not a Talker folder)")
    meta = json.loads((directory / TALKER_FILE).read_text())
    talker = Talker(TalkerConfig(**meta["config"]))
    talker.load_state_dict(load_file(directory / TALKER_WEIGHTS), strict=True)
    source = meta["codec"]["source"]
    if meta["codec"]["kind"] == "rvq-mel":
        source = directory / source
    codec = load_codec(meta["codec"]["kind"], source, device)
    return talker.to(device).eval(), codec
