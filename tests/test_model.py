"""MiniMind model: masks (packing, padding), KV-cache generation, MoE routing and aux loss,
preset sizes, Qwen3 weight-copy equivalence, loss semantics and that it actually learns."""

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    Qwen3ForCausalLM,
    Qwen3MoeForCausalLM,
)

from minimind.export.hf import qwen3_config
from minimind.model import (
    PRESETS,
    MiniMindCausalLMOutput,
    MiniMindConfig,
    MiniMindForCausalLM,
    ModelParams,
    modeling,
    preset_config,
)
from minimind.model.modeling import (
    IGNORE_INDEX,
    MoEFeedForward,
    RouterStats,
    build_attention_mask,
    load_balancing_loss,
    positions_from_documents,
)

VOCAB = 97


def make_model(preset: str = "tiny", noise: float = 0.05, seed: int = 0, **overrides):
    """A small fp32 model whose every parameter (norms included) is perturbed away from init,
    so that a swapped or missing weight cannot go unnoticed."""
    torch.manual_seed(seed)
    model = MiniMindForCausalLM(preset_config(preset, vocab_size=VOCAB, **overrides))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(noise * torch.randn_like(p))
    return model.eval()


def tokens(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(3, VOCAB, shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def dense() -> MiniMindForCausalLM:
    return make_model()


@pytest.fixture(scope="module")
def moe() -> MiniMindForCausalLM:
    return make_model("tiny-moe")


# ---------------------------------------------------------------------------- packed sequences


def test_document_positions_restart_per_document():
    docs = torch.tensor([[0, 0, 0, 1, 1, 2, -1, -1]])
    assert positions_from_documents(docs).tolist() == [[0, 1, 2, 0, 1, 0, 0, 1]]


def test_packed_mask_matches_its_definition():
    """i sees j iff j <= i, same document, j not padding; a row that sees nothing sees itself."""
    docs = torch.tensor([[0, 0, 1, 1, 1, -1, -1], [-1, 5, 5, 6, -1, 7, 7]])
    mask = build_attention_mask(2, 7, 0, None, docs, docs.device)
    for b in range(2):
        for i in range(7):
            for j in range(7):
                rule = j <= i and docs[b, i] == docs[b, j] and docs[b, j] >= 0
                assert mask[b, 0, i, j].item() == (rule or (i == j and docs[b, i] < 0))
    assert mask.any(dim=-1).all()  # no empty row, so no NaN from any SDPA kernel


def test_padding_mask_with_cache_matches_its_definition():
    attention_mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 0, 1]])
    mask = build_attention_mask(2, 2, 4, attention_mask, None, attention_mask.device)
    assert mask.shape == (2, 1, 2, 6)
    for b in range(2):
        for i in range(2):
            for j in range(6):
                rule = j <= 4 + i and attention_mask[b, j] == 1
                assert mask[b, 0, i, j].item() == (rule or j == 4 + i)
    assert build_attention_mask(2, 5, 0, None, None, attention_mask.device) is None


def test_model_picks_rope_positions_from_documents_padding_or_caller(dense, monkeypatch):
    """RoPE is shift-invariant, so logits alone cannot show which positions were used."""
    seen = []

    def recording_rope(position_ids, *args):
        seen.append(position_ids.tolist())
        return rope_cos_sin(position_ids, *args)

    rope_cos_sin = modeling.rope_cos_sin
    monkeypatch.setattr(modeling, "rope_cos_sin", recording_rope)
    ids = tokens(1, 6, seed=23)
    with torch.no_grad():
        dense(ids, document_ids=torch.tensor([[0, 0, 0, 1, 1, -1]]))
        dense(ids, attention_mask=torch.tensor([[0, 0, 1, 1, 1, 1]]))
        dense(ids, position_ids=torch.tensor([[7, 8, 9, 10, 11, 12]]))
        dense(ids)
    assert seen == [
        [[0, 1, 2, 0, 1, 0]],
        [[0, 0, 0, 1, 2, 3]],
        [[7, 8, 9, 10, 11, 12]],
        [[0, 1, 2, 3, 4, 5]],
    ]


# Dense: bit-identical. MoE: A's tokens change how many rows each expert's matmul gets, which
# changes the float summation blocking by ~1e-6 (not information flow).
@pytest.mark.parametrize(("fixture", "atol"), [("dense", 0.0), ("moe", 1e-5)])
def test_packed_documents_are_isolated(fixture, atol, request):
    model = request.getfixturevalue(fixture)
    doc_a, doc_b = tokens(6, seed=2), tokens(5, seed=3)
    pad = torch.zeros(3, dtype=torch.long)
    row = torch.cat([doc_a, doc_b, pad])[None]
    document_ids = torch.tensor([[0] * 6 + [1] * 5 + [-1] * 3])
    b = slice(6, 11)
    with torch.no_grad():
        packed = model(row, document_ids=document_ids).logits
        other_a = row.clone()
        other_a[0, :6] = tokens(6, seed=4)
        packed_other_a = model(other_a, document_ids=document_ids).logits
        b_alone = model(doc_b[None]).logits
        a_alone = model(doc_a[None]).logits

    assert torch.isfinite(packed).all()
    assert not torch.allclose(packed[:, :6], packed_other_a[:, :6])  # A really changed
    torch.testing.assert_close(packed_other_a[:, b], packed[:, b], atol=atol, rtol=0)
    torch.testing.assert_close(packed[:, b], b_alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(packed[:, :6], a_alone, atol=1e-5, rtol=0)


def test_padding_in_packed_rows_never_makes_nan():
    model = make_model()
    model.train()  # gradients through padding rows too
    ids = tokens(2, 10, seed=5)
    document_ids = torch.tensor([[0] * 4 + [1] * 3 + [-1] * 3, [-1] * 2 + [0] * 8])
    labels = ids.masked_fill(document_ids < 0, IGNORE_INDEX)
    out = model(ids, document_ids=document_ids, labels=labels)
    out.loss.backward()
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


# ---------------------------------------------------------------------------- padding mask


def test_left_padded_batch_matches_unpadded_rows(dense):
    long, short = tokens(9, seed=6), tokens(5, seed=7)
    batch = torch.stack([long, torch.cat([torch.zeros(4, dtype=torch.long), short])])
    attention_mask = torch.tensor([[1] * 9, [0] * 4 + [1] * 5])
    with torch.no_grad():
        padded = dense(batch, attention_mask=attention_mask).logits
        alone = [dense(row[None]).logits for row in (long, short)]
    torch.testing.assert_close(padded[0, -1], alone[0][0, -1], atol=1e-5, rtol=0)
    torch.testing.assert_close(padded[1, -1], alone[1][0, -1], atol=1e-5, rtol=0)
    torch.testing.assert_close(padded[1, 4:], alone[1][0], atol=1e-5, rtol=0)
    assert torch.isfinite(padded).all()


def test_right_padding_leaves_real_tokens_unchanged(dense):
    short = tokens(5, seed=8)
    batch = torch.cat([short, torch.zeros(3, dtype=torch.long)])[None]
    with torch.no_grad():
        padded = dense(batch, attention_mask=torch.tensor([[1] * 5 + [0] * 3])).logits
        alone = dense(short[None]).logits
    torch.testing.assert_close(padded[:, :5], alone, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------- KV cache / generate


def check_generation_against_full_forward(model, prompt, attention_mask=None):
    out = model.generate(
        prompt,
        attention_mask=attention_mask,
        max_new_tokens=8,
        do_sample=False,
        output_logits=True,
        return_dict_in_generate=True,
        pad_token_id=0,
    )
    assert out.sequences.shape[1] == prompt.shape[1] + 8
    assert len(out.logits) == 8
    for step, step_logits in enumerate(out.logits):
        prefix = out.sequences[:, : prompt.shape[1] + step]
        mask = None
        if attention_mask is not None:
            mask = F.pad(attention_mask, (0, step), value=1)
        with torch.no_grad():
            full = model(prefix, attention_mask=mask, use_cache=False).logits[:, -1]
        torch.testing.assert_close(step_logits, full, atol=1e-4, rtol=0)
    uncached = model.generate(
        prompt,
        attention_mask=attention_mask,
        max_new_tokens=8,
        do_sample=False,
        use_cache=False,
        pad_token_id=0,
    )
    assert torch.equal(uncached, out.sequences)
    return out.sequences


def test_cached_greedy_generation_matches_full_forward(dense):
    sequences = check_generation_against_full_forward(dense, tokens(1, 6, seed=9))
    assert len(set(sequences[0, 6:].tolist())) > 1  # a real continuation, not one stuck token


def test_cached_generation_of_left_padded_batch(dense):
    prompt = torch.stack([tokens(7, seed=10), torch.cat([torch.zeros(3).long(), tokens(4)])])
    attention_mask = torch.tensor([[1] * 7, [0] * 3 + [1] * 4])
    sequences = check_generation_against_full_forward(dense, prompt, attention_mask)
    alone = dense.generate(prompt[1:, 3:], max_new_tokens=8, do_sample=False)
    assert torch.equal(sequences[1, 7:], alone[0, 4:])


def test_cached_generation_moe(moe):
    check_generation_against_full_forward(moe, tokens(1, 6, seed=11))


def test_sampling_with_and_without_cache_agree(dense):
    prompt = tokens(1, 5, seed=12)
    runs = []
    for use_cache in (True, False):
        torch.manual_seed(123)
        runs.append(
            dense.generate(prompt, max_new_tokens=8, do_sample=True, top_k=20, use_cache=use_cache)
        )
    assert torch.equal(runs[0], runs[1])


def test_logits_to_keep_and_hidden_states(dense):
    ids = tokens(2, 8, seed=13)
    with torch.no_grad():
        full = dense(ids, output_hidden_states=True)
        last = dense(ids, logits_to_keep=3).logits
    torch.testing.assert_close(last, full.logits[:, -3:])
    assert len(full.hidden_states) == dense.config.num_hidden_layers + 1
    torch.testing.assert_close(dense.lm_head(full.hidden_states[-1]), full.logits)


# ---------------------------------------------------------------------------- mixture of experts


def test_router_picks_top_k_experts_with_normalised_weights():
    config = preset_config("tiny-moe", vocab_size=VOCAB, num_experts=5, num_experts_per_tok=3)
    torch.manual_seed(0)
    layer = MoEFeedForward(config)
    x = torch.randn(2, 7, config.hidden_size)
    weights, stats = layer.route(x.reshape(-1, config.hidden_size))
    assert stats.expert_index.shape == (14, 3)
    assert all(len(set(row)) == 3 for row in stats.expert_index.tolist())
    top3 = stats.probs.topk(3, dim=-1).indices
    assert torch.equal(stats.expert_index.sort(-1).values, top3.sort(-1).values)
    torch.testing.assert_close(weights.sum(-1), torch.ones(14))
    # the layer's output is the weighted sum of exactly those experts
    out, _ = layer(x)
    tokens_flat = x.reshape(-1, config.hidden_size)
    expected = torch.stack(
        [
            sum(w * layer.experts[e](t) for w, e in zip(ws, es, strict=True))
            for t, ws, es in zip(tokens_flat, weights, stats.expert_index.tolist(), strict=True)
        ]
    )
    torch.testing.assert_close(out.reshape(-1, config.hidden_size), expected, atol=1e-5, rtol=0)


def test_aux_loss_matches_hand_computation():
    probs = torch.tensor(
        [[0.7, 0.2, 0.1], [0.5, 0.3, 0.2], [0.1, 0.6, 0.3], [0.2, 0.2, 0.6]], dtype=torch.float32
    )
    index = probs.topk(2, dim=-1).indices  # top-2 of 3 experts
    # f_i: share of the 8 (token, slot) picks; P_i: mean probability
    counts = [sum(row.count(i) for row in index.tolist()) for i in range(3)]
    f = [c / 8 for c in counts]
    p = [sum(probs[t, i].item() for t in range(4)) / 4 for i in range(3)]
    expected = 3 * sum(fi * pi for fi, pi in zip(f, p, strict=True))
    loss = load_balancing_loss([RouterStats(probs, index)], num_experts=3)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert loss.item() > 1.0
    # a padding token (the last) is left out of both averages
    masked = load_balancing_loss([RouterStats(probs, index)], 3, torch.tensor([1, 1, 1, 0]))
    f3 = [sum(row.count(i) for row in index[:3].tolist()) / 6 for i in range(3)]
    p3 = [sum(probs[t, i].item() for t in range(3)) / 3 for i in range(3)]
    assert masked.item() == pytest.approx(3 * sum(a * b for a, b in zip(f3, p3, strict=True)))


def test_balanced_router_gives_the_minimum_aux_loss():
    model = make_model("tiny-moe")
    for layer in model.model.layers:
        torch.nn.init.zeros_(layer.mlp.gate.weight)  # uniform router probabilities
    ids = tokens(2, 9, seed=14)
    with torch.no_grad():
        out = model(ids, labels=ids)
    assert out.aux_loss.item() == pytest.approx(1.0, abs=1e-6)
    lm_loss = F.cross_entropy(out.logits[:, :-1].reshape(-1, VOCAB), ids[:, 1:].reshape(-1))
    coef = model.config.router_aux_loss_coef
    assert (out.loss - lm_loss).item() == pytest.approx(1.0 * coef, rel=1e-3)


def test_skewed_router_is_penalised():
    model = make_model("tiny-moe")
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.gate.weight.zero_()
            layer.mlp.gate.weight[0] = 1.0  # expert 0 wins for most tokens
        out = model(tokens(2, 9, seed=15))
    assert out.aux_loss.item() > 1.3


def test_router_and_every_expert_get_gradients():
    model = make_model("tiny-moe")
    model.train()
    ids = tokens(2, 12, seed=16)
    out = model(ids, labels=ids)
    assert isinstance(out, MiniMindCausalLMOutput) and out.aux_loss.item() > 0
    out.loss.backward()
    for layer in model.model.layers:
        assert layer.mlp.gate.weight.grad.abs().sum() > 0
        assert all(p.grad is not None for p in layer.mlp.experts.parameters())


def test_moe_model_trains():
    final, first = train_on_repeated_batch(make_model("tiny-moe", noise=0.0), steps=30)
    assert final < 0.5 * first


# ---------------------------------------------------------------------------- presets


def expected_parameter_count(config: MiniMindConfig) -> int:
    """Closed-form count: tied embedding once, attention, norms, MLP or experts + router."""
    h, hd = config.hidden_size, config.head_dim
    attention = 2 * h * config.num_attention_heads * hd + 2 * h * config.num_key_value_heads * hd
    norms = 2 * h + 2 * hd
    if config.use_moe:
        mlp = config.num_experts * 3 * h * config.moe_intermediate_size + config.num_experts * h
    else:
        mlp = 3 * h * config.intermediate_size
    return config.vocab_size * h + config.num_hidden_layers * (attention + norms + mlp) + h


@pytest.mark.parametrize(
    ("name", "target"),
    [("minimind2-small", 26e6), ("minimind2", 104e6), ("minimind-3", 64e6)],
)
def test_preset_parameter_counts(name, target):
    config = preset_config(name)
    with torch.device("meta"):
        model = MiniMindForCausalLM(config)
    count = sum(p.numel() for p in model.parameters())  # shared (tied) tensors counted once
    assert count == expected_parameter_count(config)
    assert abs(count - target) / target < 0.03


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds(name):
    config = preset_config(name)
    with torch.device("meta"):
        model = MiniMindForCausalLM(config)
    assert sum(p.numel() for p in model.parameters()) == expected_parameter_count(config)
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_unknown_preset_and_bad_shapes_fail_clearly():
    with pytest.raises(ValueError, match="unknown model preset 'huge'.*minimind-3"):
        preset_config("huge")
    with pytest.raises(ValueError, match="multiple of num_key_value_heads"):
        preset_config("tiny", num_attention_heads=6, num_key_value_heads=4)
    with pytest.raises(ValueError, match="num_experts_per_tok"):
        preset_config("tiny-moe", num_experts_per_tok=5)


def test_model_params_section():
    params = ModelParams(preset="minimind-3", vocab_size=1200)
    config = params.to_config()
    assert (config.vocab_size, config.hidden_size, config.num_key_value_heads) == (1200, 768, 4)
    with pytest.raises(ValueError, match="unknown model preset"):
        ModelParams(preset="nope")
    with pytest.raises(ValueError, match="extra"):
        ModelParams(hiden_size=3)
    with pytest.raises(ValueError, match="multiple of num_key_value_heads"):
        ModelParams(num_attention_heads=3)


# ---------------------------------------------------------------------------- Hugging Face


def test_weights_copy_into_qwen3_with_identical_logits(dense):
    qwen = Qwen3ForCausalLM(qwen3_config(dense.config)).eval()
    qwen.load_state_dict(dense.state_dict(), strict=True)
    assert qwen.lm_head.weight.data_ptr() == qwen.model.embed_tokens.weight.data_ptr()
    ids = tokens(2, 16, seed=17)
    with torch.no_grad():
        torch.testing.assert_close(dense(ids).logits, qwen(ids).logits, atol=1e-5, rtol=0)


def test_moe_checkpoint_loads_into_qwen3_moe_with_identical_logits(moe, tmp_path):
    """Qwen3-MoE keeps experts fused in memory (gate_up_proj, down_proj of shape
    (experts, ...)); from_pretrained fuses the per-expert names we use on load."""
    config = moe.config
    qwen3_config(config).save_pretrained(tmp_path)  # the export's Qwen3MoeConfig mapping
    weights = {k: v.contiguous() for k, v in moe.state_dict().items() if k != "lm_head.weight"}
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    qwen, info = Qwen3MoeForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ids = tokens(2, 16, seed=18)
    with torch.no_grad():
        torch.testing.assert_close(moe(ids).logits, qwen.eval()(ids).logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("fixture", ["dense", "moe"])
def test_save_and_load_through_auto_classes(fixture, request, tmp_path):
    model = request.getfixturevalue(fixture)
    model.save_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path).model_type == "minimind"
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, MiniMindForCausalLM)
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    ids = tokens(1, 10, seed=19)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, atol=0, rtol=0)


# ---------------------------------------------------------------------------- loss


def test_loss_ignores_masked_labels(dense):
    ids = tokens(2, 10, seed=20)
    labels = ids.clone()
    labels[0, :6] = IGNORE_INDEX
    labels[1, 3] = IGNORE_INDEX
    with torch.no_grad():
        out = dense(ids, labels=labels)
    targets = labels[:, 1:].reshape(-1)
    keep = targets != IGNORE_INDEX
    logits = out.logits[:, :-1].reshape(-1, VOCAB)
    expected = F.cross_entropy(logits[keep], targets[keep])
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    with torch.no_grad():
        nothing = dense(ids, labels=torch.full_like(ids, IGNORE_INDEX)).loss
    assert nothing.item() == 0.0


@pytest.mark.parametrize("preset", ["tiny", "tiny-moe"])
def test_loss_only_gives_the_same_loss_and_gradients_without_logits(preset):
    """The head on supervised positions only: same loss, same gradients, no logits."""
    model = make_model(preset)
    model.train()
    ids = tokens(2, 12, seed=22)
    labels = ids.clone()
    labels[0, :7] = IGNORE_INDEX  # a prompt, then an answer
    labels[1, :10] = IGNORE_INDEX
    grads = []
    for loss_only in (False, True):
        model.zero_grad()
        out = model(ids, labels=labels, num_items_in_batch=6, loss_only=loss_only)
        out.loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
        if loss_only:
            assert out.logits is None
        else:
            full = out.loss
    assert out.loss.item() == pytest.approx(full.item(), rel=1e-6)
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-5, atol=1e-6, msg=name)
    with pytest.raises(ValueError, match="loss_only needs labels"):
        model(ids, loss_only=True)


def test_num_items_in_batch_normalises_by_the_global_count(dense):
    """Two micro-batches each divided by the global token count add up to the mean loss of
    both together, however unevenly the supervised tokens are split between them."""
    ids = tokens(2, 10, seed=21)
    labels = ids.clone()
    labels[0, 2:] = IGNORE_INDEX  # row 0 supervises 1 token, row 1 supervises 9
    with torch.no_grad():
        whole = dense(ids, labels=labels).loss
        total = int((labels[:, 1:] != IGNORE_INDEX).sum())
        parts = [
            dense(ids[i : i + 1], labels=labels[i : i + 1], num_items_in_batch=total).loss
            for i in range(2)
        ]
        summed = dense(ids[:1], labels=labels[:1], num_items_in_batch=1).loss
        mean = dense(ids[:1], labels=labels[:1]).loss
    assert (parts[0] + parts[1]).item() == pytest.approx(whole.item(), rel=1e-5)
    assert summed.item() == pytest.approx(mean.item(), rel=1e-6)  # 1 token: sum == mean


def test_moe_aux_loss_takes_the_micro_batch_share_of_the_global_count(moe):
    ids = tokens(1, 10, seed=24)
    with torch.no_grad():
        out = moe(ids, labels=ids, num_items_in_batch=36)
    lm_sum = F.cross_entropy(out.logits[0, :-1], ids[0, 1:], reduction="sum")
    share = 9 / 36  # this micro-batch supervises 9 of the 36 tokens of the optimizer step
    expected = lm_sum / 36 + moe.config.router_aux_loss_coef * out.aux_loss * share
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)


# ---------------------------------------------------------------------------- learning


def train_on_repeated_batch(model: MiniMindForCausalLM, steps: int) -> tuple[float, float]:
    """Fit one fixed batch; returns (last loss, first loss)."""
    torch.manual_seed(0)
    ids = tokens(2, 24, seed=22)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    losses = []
    for _ in range(steps):
        loss = model(ids, labels=ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses[-1], losses[0]


def test_dense_model_overfits_a_repeated_sequence():
    final, first = train_on_repeated_batch(make_model(noise=0.0), steps=40)
    assert first > 4.0  # about ln(97) at init
    assert final < 0.2 * first
