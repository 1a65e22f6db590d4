"""The MiniMind decoder in plain PyTorch, wrapped as a Hugging Face causal LM.

Architecture (the MiniMind-3 / Qwen3 recipe): token embedding -> N x [RMSNorm -> grouped-query
attention with per-head q/k RMSNorm and RoPE -> residual, RMSNorm -> SwiGLU MLP (or a
mixture of SwiGLU experts) -> residual] -> RMSNorm -> output head tied to the embedding.

Every parameter is named exactly as in Hugging Face `Qwen3ForCausalLM` (MoE: the per-expert
checkpoint layout `Qwen3MoeForCausalLM` loads), and the maths matches it operation for
operation, so exporting is a plain state_dict copy and llama.cpp's GGUF converter follows.

Masking is the subtle part. One boolean (batch, 1, query, key) mask is built per forward and
shared by all layers. It combines causality, the usual 0/1 padding `attention_mask`, and
`document_ids` for packed sequences: a token only sees earlier tokens of its own document, so
several short documents packed into one row train exactly as if each were alone (their RoPE
positions also restart at 0). Rows that would see nothing (padding) see themselves: softmax over
an empty row is undefined, some attention kernels return NaN for it, and a NaN in a padding row
still poisons the gradients.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast

from minimind.model.config import MiniMindConfig

IGNORE_INDEX = -100  # label value that contributes no loss (Hugging Face / PyTorch convention)


@dataclass
class MiniMindCausalLMOutput(CausalLMOutputWithPast):
    """CausalLMOutputWithPast plus the MoE load-balancing loss (None for dense models).

    When labels are given, `loss` already includes `router_aux_loss_coef * aux_loss`.
    """

    aux_loss: torch.FloatTensor | None = None


@dataclass
class RouterStats:
    """What one MoE layer's router decided, kept for the load-balancing loss."""

    probs: torch.Tensor  # (tokens, num_experts) softmax over all experts, float32
    expert_index: torch.Tensor  # (tokens, top_k) chosen experts


class RMSNorm(nn.Module):
    """Root-mean-square norm, computed in float32 so bf16 activations do not lose precision.

    The weight multiplies after casting back to the input dtype, exactly as in Qwen3.
    """

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def rope_cos_sin(
    position_ids: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of the rotary angles, shaped (batch, 1, seq, head_dim) to broadcast over heads.

    Frequencies are recomputed per call (head_dim/2 numbers): no buffer to keep in sync with
    the device, the dtype or meta-device initialisation. Angles are computed in float32.
    """
    inv_freq = 1.0 / theta ** (
        torch.arange(0, head_dim, 2, device=position_ids.device, dtype=torch.float32) / head_dim
    )
    angles = position_ids[:, None, :, None].float() * inv_freq  # (B, 1, T, head_dim/2)
    angles = torch.cat((angles, angles), dim=-1)  # rotate-half layout: both halves share angles
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dim."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each (i, i + head_dim/2) pair of `x` by its position's angle."""
    return x * cos + rotate_half(x) * sin


def positions_from_documents(document_ids: torch.Tensor) -> torch.Tensor:
    """Position of every token inside its own document: 0 where the document id changes.

    Adjacent documents must have different ids (a packer numbers them 0, 1, 2, ...).
    """
    index = torch.arange(document_ids.shape[1], device=document_ids.device).expand_as(document_ids)
    starts = torch.ones_like(document_ids, dtype=torch.bool)
    starts[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]
    last_start = torch.where(starts, index, 0).cummax(dim=1).values
    return index - last_start


def positions_from_padding(attention_mask: torch.Tensor) -> torch.Tensor:
    """Count only real tokens, so a left-padded row gets the positions it would get unpadded."""
    return (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)


def default_position_ids(
    batch: int,
    seq: int,
    past_len: int,
    attention_mask: torch.Tensor | None,
    document_ids: torch.Tensor | None,
    device: torch.device,
) -> torch.Tensor:
    """RoPE positions of the new tokens: per document, per real token, or just counting."""
    if document_ids is not None:
        return positions_from_documents(document_ids)[:, past_len:]
    if attention_mask is not None:
        return positions_from_padding(attention_mask)[:, past_len:]
    return torch.arange(past_len, past_len + seq, device=device).expand(batch, seq)


def build_attention_mask(
    batch_size: int,
    query_len: int,
    past_len: int,
    attention_mask: torch.Tensor | None,
    document_ids: torch.Tensor | None,
    device: torch.device,
) -> torch.Tensor | None:
    """Boolean (batch, 1, query, key) mask, True where a query may attend to a key.

    Keys are the cached tokens followed by the new ones; `attention_mask` and `document_ids`
    cover all of them (batch, past_len + query_len). Returns None for the plain causal case
    (no padding, no packing, no cache), which lets SDPA use its fastest `is_causal` kernel.
    """
    if attention_mask is None and document_ids is None and past_len == 0:
        return None
    query_pos = torch.arange(past_len, past_len + query_len, device=device)[:, None]
    key_pos = torch.arange(past_len + query_len, device=device)[None, :]
    allowed = (key_pos <= query_pos).expand(batch_size, 1, query_len, past_len + query_len)
    if attention_mask is not None:
        allowed = allowed & attention_mask.bool()[:, None, None, :]
    if document_ids is not None:
        query_docs = document_ids[:, past_len:]
        same_doc = query_docs[:, :, None] == document_ids[:, None, :]
        allowed = allowed & (same_doc & (document_ids >= 0)[:, None, :])[:, None]
    # A padding query would see no key at all; let it see itself so no row is empty (NaN).
    return allowed | (key_pos == query_pos)


class Attention(nn.Module):
    """Grouped-query self-attention with q/k RMSNorm and RoPE, computed by SDPA."""

    def __init__(self, config: MiniMindConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx  # which slot of the KV cache is ours
        self.head_dim = config.head_dim
        self.dropout = config.dropout
        q_width = config.num_attention_heads * config.head_dim
        kv_width = config.num_key_value_heads * config.head_dim
        self.q_proj = nn.Linear(config.hidden_size, q_width, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, kv_width, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, kv_width, bias=False)
        self.o_proj = nn.Linear(q_width, config.hidden_size, bias=False)
        # Normalising q and k per head bounds the attention logits, which keeps training stable.
        self.q_norm = RMSNorm(config.head_dim, config.rms_norm_eps)
        self.k_norm = RMSNorm(config.head_dim, config.rms_norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        cache: Cache | None,
    ) -> torch.Tensor:
        batch, seq, _ = x.shape
        heads_shape = (batch, seq, -1, self.head_dim)
        q = self.q_norm(self.q_proj(x).view(heads_shape)).transpose(1, 2)  # (B, H, T, D)
        k = self.k_norm(self.k_proj(x).view(heads_shape)).transpose(1, 2)  # (B, Hkv, T, D)
        v = self.v_proj(x).view(heads_shape).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:  # append this step's keys/values, get the whole history back
            k, v = cache.update(k, v, self.layer_idx)
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=mask is None,
            enable_gqa=True,  # each group of query heads shares one key/value head
        )
        return self.o_proj(out.transpose(1, 2).reshape(batch, seq, -1))


class SwiGLU(nn.Module):
    """The gated MLP: down(silu(gate(x)) * up(x))."""

    def __init__(self, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class MoEFeedForward(nn.Module):
    """Top-k mixture of SwiGLU experts behind a softmax router (Qwen3-MoE style).

    Each token goes to its `num_experts_per_tok` most probable experts; their outputs are
    mixed with the router probabilities (renormalised to sum to 1 when `norm_topk_prob`).
    """

    def __init__(self, config: MiniMindConfig) -> None:
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.norm_topk_prob = config.norm_topk_prob
        self.gate = nn.Linear(config.hidden_size, config.num_experts, bias=False)  # the router
        self.experts = nn.ModuleList(
            SwiGLU(config.hidden_size, config.moe_intermediate_size)
            for _ in range(config.num_experts)
        )

    def route(self, tokens: torch.Tensor) -> tuple[torch.Tensor, RouterStats]:
        """Top-k expert weights (tokens, top_k) and the router statistics."""
        probs = F.softmax(self.gate(tokens), dim=-1, dtype=torch.float32)
        weights, expert_index = probs.topk(self.top_k, dim=-1)
        if self.norm_topk_prob:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return weights.to(tokens.dtype), RouterStats(probs, expert_index)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, RouterStats]:
        tokens = x.reshape(-1, x.shape[-1])
        weights, stats = self.route(tokens)
        out = torch.zeros_like(tokens)
        for e, expert in enumerate(self.experts):
            # Run every expert even on an empty selection: its parameters then always take part
            # in the graph (zero gradient), which DDP requires of every parameter.
            token_idx, slot = torch.where(stats.expert_index == e)
            expert_out = expert(tokens[token_idx]) * weights[token_idx, slot, None]
            out = out.index_add(0, token_idx, expert_out)
        return out.view_as(x), stats


class DecoderLayer(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: MiniMindConfig, layer_idx: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        if config.use_moe:
            self.mlp = MoEFeedForward(config)
        else:
            self.mlp = SwiGLU(config.hidden_size, config.intermediate_size)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        cache: Cache | None,
    ) -> tuple[torch.Tensor, RouterStats | None]:
        x = x + self.resid_dropout(self.self_attn(self.input_layernorm(x), cos, sin, mask, cache))
        h = self.post_attention_layernorm(x)
        if isinstance(self.mlp, MoEFeedForward):
            mlp_out, router_stats = self.mlp(h)
        else:
            mlp_out, router_stats = self.mlp(h), None
        return x + self.resid_dropout(mlp_out), router_stats


class MiniMindModel(nn.Module):
    """The decoder stack without the output head (`model.*` in the checkpoint)."""

    def __init__(self, config: MiniMindConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            DecoderLayer(config, i) for i in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        position_ids: torch.Tensor,
        mask: torch.Tensor | None,
        cache: Cache | None,
        output_hidden_states: bool = False,
    ) -> tuple[torch.Tensor, list[RouterStats], tuple[torch.Tensor, ...] | None]:
        """Final normed hidden states, per-layer router stats (MoE) and optionally all states.

        With `output_hidden_states`, entry i is the input of layer i and the last entry is the
        final normed output (the Hugging Face convention).
        """
        cos, sin = rope_cos_sin(
            position_ids, self.config.head_dim, self.config.rope_theta, inputs_embeds.dtype
        )
        x = inputs_embeds
        all_states = []
        router_stats = []
        for layer in self.layers:
            all_states.append(x)
            x, stats = layer(x, cos, sin, mask, cache)
            if stats is not None:
                router_stats.append(stats)
        x = self.norm(x)
        all_states.append(x)
        return x, router_stats, tuple(all_states) if output_hidden_states else None


def load_balancing_loss(
    router_stats: list[RouterStats], num_experts: int, token_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Switch/Qwen-MoE auxiliary loss, averaged over MoE layers.

    Per layer: num_experts * sum_i f_i * P_i, where f_i is the fraction of (token, slot) routing
    assignments that went to expert i and P_i is the mean router probability of expert i. It is
    1.0 for a perfectly balanced router and grows as routing concentrates; gradients flow through
    P (f is a count). `token_mask` (tokens,) excludes padding from both averages.
    """
    losses = []
    for stats in router_stats:
        num_tokens, top_k = stats.expert_index.shape
        weight = stats.probs.new_ones(num_tokens) if token_mask is None else token_mask.float()
        total = weight.sum().clamp(min=1.0)
        mean_prob = (stats.probs * weight[:, None]).sum(0) / total  # P_i
        picks = F.one_hot(stats.expert_index, num_experts).sum(1).float()  # (tokens, experts)
        fraction = (picks * weight[:, None]).sum(0) / (total * top_k)  # f_i
        losses.append(num_experts * (fraction * mean_prob).sum())
    return torch.stack(losses).mean()


def causal_lm_loss(
    logits: torch.Tensor, labels: torch.Tensor, num_items_in_batch: int | torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token cross-entropy in float32 and the number of tokens it covers.

    `labels` are aligned with the inputs (Hugging Face convention) and shifted here: position t
    predicts labels[t + 1]; IGNORE_INDEX positions count for nothing. The sum is divided by
    `num_items_in_batch` when given (a trainer's global token count across gradient-accumulation
    steps and ranks), else by this batch's own count (0 when nothing is supervised, not NaN).
    """
    targets = shifted_targets(labels)
    return token_loss(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                      num_items_in_batch)


def shifted_targets(labels: torch.Tensor) -> torch.Tensor:
    """labels (batch, seq) aligned with the inputs -> the token each position predicts."""
    return F.pad(labels, (0, 1), value=IGNORE_INDEX)[:, 1:]


def token_loss(
    logits: torch.Tensor, targets: torch.Tensor, num_items_in_batch: int | torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed float32 cross-entropy of (N, vocab) logits against (N,) targets (IGNORE_INDEX
    counts for nothing) over `num_items_in_batch`, else over the target count."""
    loss_sum = F.cross_entropy(
        logits.float(), targets, ignore_index=IGNORE_INDEX, reduction="sum"
    )
    num_tokens = (targets != IGNORE_INDEX).sum()
    denominator = num_items_in_batch if num_items_in_batch is not None else num_tokens.clamp(min=1)
    return loss_sum / denominator, num_tokens


class MiniMindForCausalLM(PreTrainedModel, GenerationMixin):
    """MiniMind causal LM: `save_pretrained`, `from_pretrained`, `generate` all work as usual.

    Extra inputs beyond the Hugging Face standard: `document_ids` (packed-sequence masking) and
    `num_items_in_batch` (loss normalisation by a global token count).
    """

    config_class = MiniMindConfig
    base_model_prefix = "model"
    _no_split_modules = ["DecoderLayer"]
    _skip_keys_device_placement = ["past_key_values"]
    _supports_sdpa = True
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: MiniMindConfig) -> None:
        super().__init__(config)
        self.model = MiniMindModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()  # initialise weights and tie lm_head to the embedding

    def _init_weights(self, module: nn.Module) -> None:
        """Normal(0, initializer_range) for matrices, ones for norms.

        Uses `transformers.initialization`, which skips tensors already loaded from a checkpoint.
        """
        if isinstance(module, nn.Linear | nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
        elif isinstance(module, RMSNorm):
            init.ones_(module.weight)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        document_ids: torch.LongTensor | None = None,
        num_items_in_batch: int | torch.Tensor | None = None,
        logits_to_keep: int = 0,
        loss_only: bool = False,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        **kwargs,
    ) -> MiniMindCausalLMOutput:
        """Logits, and the loss when `labels` are given.

        attention_mask: (batch, past + seq) 1 for real tokens, 0 for padding (any side).
        document_ids: (batch, past + seq) packed-document index per token; a token attends only
            to earlier tokens with the same id, negative ids are padding. Without explicit
            `position_ids`, positions restart at 0 at each document.
        num_items_in_batch: divide the summed token loss by this instead of the local count.
        logits_to_keep: if > 0, only the last `logits_to_keep` positions get logits.
        loss_only: with `labels`, run the output head only on the positions the loss reads and
            return no logits. The head and its softmax over the vocabulary cost about as much
            as the whole tiny decoder per position, and an SFT or VQA row supervises a small
            share of its positions (a scene question: ~6 of ~100), so training steps get
            cheaper while the loss and its gradients are the same.
        use_cache: defaults to `config.use_cache` in eval mode and False in training.
        """
        if output_attentions:
            raise ValueError("attention weights are not available: SDPA does not return them")
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if labels is not None and logits_to_keep:
            raise ValueError("logits_to_keep drops the positions the loss needs; use one of them")
        if loss_only and labels is None:
            raise ValueError("loss_only needs labels: it computes the loss and nothing else")
        if attention_mask is not None and attention_mask.dim() != 2:
            raise ValueError("attention_mask must be a 2D (batch, seq) 0/1 mask")
        if inputs_embeds is None:
            inputs_embeds = self.model.embed_tokens(input_ids)
        batch, seq = inputs_embeds.shape[:2]

        if use_cache is None:
            use_cache = self.config.use_cache and not self.training
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=self.config)
        past_len = past_key_values.get_seq_length() if past_key_values is not None else 0

        if position_ids is None:
            position_ids = default_position_ids(
                batch, seq, past_len, attention_mask, document_ids, inputs_embeds.device
            )
        mask = build_attention_mask(
            batch, seq, past_len, attention_mask, document_ids, inputs_embeds.device
        )
        hidden, router_stats, all_states = self.model(
            inputs_embeds, position_ids, mask, past_key_values, bool(output_hidden_states)
        )
        if loss_only:
            targets = shifted_targets(labels)
            supervised = targets != IGNORE_INDEX
            logits = self.lm_head(hidden[supervised])  # (supervised positions, vocab)
            labels = targets[supervised]
        else:
            logits = self.lm_head(hidden[:, -logits_to_keep:] if logits_to_keep else hidden)

        aux_loss = None
        if router_stats:
            aux_loss = load_balancing_loss(
                router_stats,
                self.config.num_experts,
                _real_tokens(attention_mask, document_ids, seq),
            )
        loss = None
        if labels is not None:
            if loss_only:  # labels were already shifted and gathered with the hidden states
                loss, num_tokens = token_loss(logits, labels, num_items_in_batch)
                logits = None
            else:
                loss, num_tokens = causal_lm_loss(logits, labels, num_items_in_batch)
            if aux_loss is not None:
                loss = loss + self.config.router_aux_loss_coef * aux_loss * _aux_share(
                    num_tokens, num_items_in_batch
                )
        return MiniMindCausalLMOutput(
            loss=loss,
            logits=logits,
            past_key_values=past_key_values if use_cache else None,
            hidden_states=all_states,
            aux_loss=aux_loss,
        )


def _real_tokens(
    attention_mask: torch.Tensor | None, document_ids: torch.Tensor | None, seq: int
) -> torch.Tensor | None:
    """Flat (batch * seq,) mask of the new tokens that are not padding, or None if all are."""
    real = None
    if attention_mask is not None:
        real = attention_mask[:, -seq:].bool()
    if document_ids is not None:
        in_doc = document_ids[:, -seq:] >= 0
        real = in_doc if real is None else real & in_doc
    return real.reshape(-1) if real is not None else None


def _aux_share(
    num_tokens: torch.Tensor, num_items_in_batch: int | torch.Tensor | None
) -> torch.Tensor | float:
    """Weight of this batch's aux loss, so it accumulates like the LM loss does.

    With `num_items_in_batch` the LM loss of each micro-batch is a share (local / global tokens)
    of the global mean; the aux loss gets the same share, so the accumulated total is the
    token-weighted mean aux loss rather than a sum over micro-steps.
    """
    if num_items_in_batch is None:
        return 1.0
    return num_tokens / num_items_in_batch
