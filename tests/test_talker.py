"""MiniMind-O Talker: config checks, causal and monotonic masks, padding, that it learns a
synthetic text-to-codes task (codes and stop), KV-cached generation against the teacher-forced
path, streaming equal to offline generation, bad input, determinism and Thinker states."""

from __future__ import annotations

import pytest
import torch

from minimind.model import MiniMindForCausalLM, preset_config
from minimind.model.talker import (
    StreamingTalker,
    Talker,
    TalkerConfig,
    collate_pairs,
    estimate_frames_per_token,
    stream_speech,
    thinker_states,
    train_talker,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

HC, Q, K = 16, 2, 16  # Thinker width, codes per frame, codebook size
VOCAB, RUN = 6, 2  # synthetic text tokens; frames each token is spoken as


def small_config(**overrides) -> TalkerConfig:
    fields = dict(thinker_hidden_size=HC, thinker_layer=0, hidden_size=32, num_layers=2,
                  num_heads=2, intermediate_size=64, num_quantizers=Q, codebook_size=K,
                  frames_per_token=2.0, lookahead=1, max_frames=40)
    return TalkerConfig(**{**fields, **overrides})


def random_talker(seed: int = 0, noise: float = 0.1, **overrides) -> Talker:
    """An untrained talker with every parameter pushed well away from its small init, so that
    any dependence a mask should cut is large enough to see."""
    torch.manual_seed(seed)
    talker = Talker(small_config(**overrides))
    with torch.no_grad():
        for p in talker.parameters():
            p.add_(noise * torch.randn_like(p))
    return talker.eval()


def states(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def codes_like(batch: int, frames: int, seed: int = 2) -> torch.Tensor:
    return torch.randint(0, K, (batch, frames, Q), generator=torch.Generator().manual_seed(seed))


# --- the synthetic task: each text token is spoken as its own fixed run of RUN frames -------

_TABLE = torch.Generator().manual_seed(0)
TOKEN_STATES = torch.randn(VOCAB, HC, generator=_TABLE)  # the "Thinker state" of each token
TOKEN_CODES = torch.randint(0, K, (VOCAB, RUN, Q), generator=_TABLE)  # its run of frames


def synthetic_pairs(count: int, seed: int, min_len: int = 3, max_len: int = 6):
    g = torch.Generator().manual_seed(seed)
    pairs = []
    for _ in range(count):
        length = int(torch.randint(min_len, max_len + 1, (1,), generator=g))
        tokens = torch.randint(0, VOCAB, (length,), generator=g)
        pairs.append((TOKEN_STATES[tokens], TOKEN_CODES[tokens].reshape(-1, Q)))
    return pairs


@pytest.fixture(scope="module")
def trained() -> tuple[Talker, list[float]]:
    pairs = synthetic_pairs(96, seed=1)
    config = small_config(frames_per_token=estimate_frames_per_token(pairs), lookahead=2)
    torch.manual_seed(0)
    talker = Talker(config)
    losses = train_talker(talker, pairs, steps=300, lr=3e-3, batch_size=16, seed=0)
    return talker.eval(), losses


# --- config ----------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [dict(hidden_size=0), dict(num_quantizers=0),
                                 dict(codebook_size=-1), dict(num_heads=3),
                                 dict(hidden_size=36, num_heads=4),  # odd head width
                                 dict(frames_per_token=0.0), dict(frames_per_token=float("nan")),
                                 dict(lookahead=0), dict(thinker_layer=-1), dict(dropout=1.0)])
def test_config_rejects_bad_values(bad) -> None:
    with pytest.raises(ValueError):
        small_config(**bad)


def test_config_for_thinker_takes_middle_layer_and_codec_sizes() -> None:
    thinker = preset_config("tiny", vocab_size=97)  # 4 layers, hidden 128

    class Codec:
        num_quantizers, codebook_size = 4, 512

    config = TalkerConfig.for_thinker(thinker, codec=Codec(), hidden_size=64)
    assert (config.thinker_hidden_size, config.thinker_layer) == (128, 2)
    assert (config.num_quantizers, config.codebook_size, config.hidden_size) == (4, 512, 64)
    assert TalkerConfig.for_thinker(thinker, layer=4).thinker_layer == 4  # final normed output
    with pytest.raises(ValueError, match="thinker_layer 5 is out of range"):
        TalkerConfig.for_thinker(thinker, layer=5)
    assert small_config().intermediate_size == 64
    assert TalkerConfig(thinker_hidden_size=8, thinker_layer=0).intermediate_size == 448


def test_availability_schedule() -> None:
    config = small_config(frames_per_token=2.5, lookahead=2)
    assert [config.rows_needed(s) for s in range(8)] == [2, 2, 2, 3, 3, 4, 4, 4]
    # 3 text tokens + the end-of-text row: the cap opens everything once the text is over.
    assert [config.available(s, 3) for s in range(8)] == [2, 2, 2, 3, 3, 4, 4, 4]
    assert [config.available(s, 1) for s in range(8)] == [2] * 8


def test_estimate_frames_per_token() -> None:
    pairs = [(torch.zeros(2, HC), torch.zeros(10, Q)), (torch.zeros(4, HC), torch.zeros(8, Q))]
    assert estimate_frames_per_token(pairs) == pytest.approx(18 / 6)
    assert estimate_frames_per_token([(2, 10), (4, 8)]) == pytest.approx(3.0)
    assert estimate_frames_per_token([(2, 10), (4, 8)], quantile=0.0) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="needs pairs with text"):
        estimate_frames_per_token([(0, 5)])


# --- shapes and masks ----------------------------------------------------------------------

def test_shapes_and_loss_backward() -> None:
    talker = random_talker().train()
    cond, cond_mask, codes, code_mask = collate_pairs(
        [(states(5, HC), codes_like(1, 9)[0]), (states(3, HC, seed=3), codes_like(1, 4)[0])])
    assert cond.shape == (2, 5, HC) and codes.shape == (2, 9, Q)
    assert cond_mask.sum(1).tolist() == [5, 3] and code_mask.sum(1).tolist() == [9, 4]
    code_logits, stop_logits = talker.logits(cond, cond_mask, codes, code_mask)
    assert code_logits.shape == (2, 9, Q, K) and stop_logits.shape == (2, 10)
    loss = talker(cond, cond_mask, codes, code_mask)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in talker.parameters())
    code_loss, stop_loss = talker.loss_terms(cond, cond_mask, codes, code_mask)
    assert torch.allclose(loss, code_loss + stop_loss)


def test_frames_are_causal_and_levels_coarse_to_fine() -> None:
    talker = random_talker()
    cond, codes = states(1, 4, HC), codes_like(1, 10)
    mask = torch.ones(1, 4, dtype=torch.bool)
    base_codes, base_stop = talker.logits(cond, mask, codes)
    s = 5
    later = codes.clone()
    later[:, s + 1:] = (later[:, s + 1:] + 7) % K
    new_codes, new_stop = talker.logits(cond, mask, later)
    assert torch.allclose(new_codes[:, :s + 1], base_codes[:, :s + 1], atol=1e-6)
    assert torch.allclose(new_stop[:, :s + 2], base_stop[:, :s + 2], atol=1e-6)
    assert (new_codes[:, s + 2:] - base_codes[:, s + 2:]).abs().max() > 1e-3  # a real change

    # Within frame s, level q sees the levels below it and nothing else.
    finer = codes.clone()
    finer[:, s, 1] = (finer[:, s, 1] + 3) % K  # the top level (Q = 2): affects no logit of s
    assert torch.allclose(talker.logits(cond, mask, finer)[0][:, s], base_codes[:, s])
    coarse = codes.clone()
    coarse[:, s, 0] = (coarse[:, s, 0] + 3) % K
    changed = talker.logits(cond, mask, coarse)[0][:, s]
    assert torch.allclose(changed[:, 0], base_codes[:, s, 0])
    assert (changed[:, 1] - base_codes[:, s, 1]).abs().max() > 1e-3


@pytest.mark.parametrize("num_text", [6, 2])
def test_text_rows_reach_only_the_frames_that_may_read_them(num_text: int) -> None:
    """Perturbing text row r changes the logits of frame s exactly when available(s) > r."""
    talker = random_talker(lookahead=1, frames_per_token=2.0)
    config, frames = talker.config, 14
    cond, codes = states(1, num_text, HC), codes_like(1, frames)
    mask = torch.ones(1, num_text, dtype=torch.bool)
    base_codes, base_stop = talker.logits(cond, mask, codes)
    for row in range(num_text):
        moved = cond.clone()
        moved[:, row] += 3 * states(HC, seed=10 + row)
        new_codes, new_stop = talker.logits(cond=moved, cond_mask=mask, codes=codes)
        for s in range(frames + 1):
            sees = config.available(s, num_text) > row
            stop_diff = (new_stop[0, s] - base_stop[0, s]).abs().item()
            code_diff = (new_codes[0, s] - base_codes[0, s]).abs().max().item() if s < frames \
                else None
            if sees:
                assert stop_diff > 1e-4 or (code_diff or 0) > 1e-4, (row, s)
            else:
                assert stop_diff < 1e-6 and (code_diff or 0) < 1e-6, (row, s)
    # The end-of-text row: frame s sees it once available(s) = T + 1; before, the logits of a
    # longer text (same first rows) are the same.
    longer = torch.cat([cond, states(1, 3, HC, seed=20)], dim=1)
    long_codes, _ = talker.logits(longer, torch.ones(1, num_text + 3, dtype=torch.bool), codes)
    for s in range(frames):
        same = torch.allclose(long_codes[0, s], base_codes[0, s], atol=1e-6)
        assert same == (config.available(s, num_text) <= num_text), s


def test_padding_does_not_leak_into_real_rows() -> None:
    talker = random_talker()
    short = (states(3, HC), codes_like(1, 5)[0])
    long = (states(6, HC, seed=4), codes_like(1, 11, seed=5)[0])
    cond, cond_mask, codes, code_mask = collate_pairs([short, long])
    cond[0, 3:] = 100.0  # garbage in the padding must not matter
    codes[0, 5:] = 3
    batched_codes, batched_stop = talker.logits(cond, cond_mask, codes, code_mask)
    alone_codes, alone_stop = talker.logits(short[0][None], torch.ones(1, 3, dtype=torch.bool),
                                            short[1][None])
    assert torch.allclose(batched_codes[0, :5], alone_codes[0], atol=1e-5)
    assert torch.allclose(batched_stop[0, :6], alone_stop[0], atol=1e-5)


# --- learning ------------------------------------------------------------------------------

def test_training_learns_codes_and_when_to_stop(trained) -> None:
    talker, losses = trained
    assert talker.config.frames_per_token == pytest.approx(RUN)
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < first / 30, (first, last)  # measured: 2.9 -> 0.006
    held_out = synthetic_pairs(16, seed=2)
    exact = right_length = 0
    for cond, target in held_out:
        out = talker.generate(cond)
        assert out.dtype == torch.int64 and out.shape[1] == Q
        exact += torch.equal(out, target)
        right_length += out.shape[0] == target.shape[0]
    assert right_length == len(held_out)
    assert exact >= len(held_out) - 1  # measured: 16 of 16


def test_generation_matches_the_teacher_forced_logits(trained) -> None:
    """The KV-cached step path and the training path compute the same function."""
    talker, _ = trained
    cond = synthetic_pairs(1, seed=3)[0][0]
    out = talker.generate(cond)
    code_logits, stop_logits = talker.logits(cond[None], torch.ones(1, len(cond), dtype=bool),
                                             out[None])
    assert torch.equal(code_logits[0].argmax(-1), out)
    assert (stop_logits[0, :-1] < 0).all() and stop_logits[0, -1] > 0


def test_every_generated_frame_reads_what_training_reads() -> None:
    """Frame by frame, the hidden state the KV-cached generator samples from gives the same
    logits as the teacher-forced path with its availability mask (an untrained talker whose
    every frame depends on the rows it may read, so a step that saw more or fewer differs)."""
    talker = random_talker(lookahead=1, frames_per_token=2.0)
    with torch.no_grad():
        talker.stop_head.bias.fill_(-20.0)
    hiddens = []
    sample_frame = talker.sample_frame

    def recording(hidden, temperature, generator):
        hiddens.append(hidden)
        return sample_frame(hidden, temperature, generator)

    talker.sample_frame = recording
    cond = states(6, HC)
    out = talker.generate(cond, max_frames=20)
    code_logits, _ = talker.logits(cond[None], torch.ones(1, 6, dtype=torch.bool), out[None])
    stepped = torch.stack([talker.code_heads[0](talker.depth_norm(h)) for h in hiddens])
    assert torch.allclose(stepped, code_logits[0, :, 0], atol=1e-5)
    assert torch.equal(code_logits[0].argmax(-1), out)


def test_untrained_generation_respects_max_frames() -> None:
    talker = random_talker()
    with torch.no_grad():
        talker.stop_head.bias.fill_(-20.0)  # never stops by itself
    assert talker.generate(states(3, HC), max_frames=7).shape == (7, Q)
    assert talker.generate(states(3, HC)).shape == (talker.config.max_frames, Q)
    assert talker.generate(states(3, HC), max_frames=0).shape == (0, Q)


# --- streaming -----------------------------------------------------------------------------

def test_streaming_equals_offline_and_starts_before_the_text_ends(trained) -> None:
    talker, _ = trained
    for cond, _ in synthetic_pairs(4, seed=4, min_len=5, max_len=8):
        pushed = []

        def thinker(cond=cond, pushed=pushed):
            for row in cond:  # one Thinker state per generated text token
                pushed.append(row)
                yield row

        chunks, pushed_at = [], []
        for chunk in stream_speech(talker, thinker(), chunk_frames=3):
            chunks.append(chunk)
            pushed_at.append(len(pushed))
        assert torch.equal(torch.cat(chunks), talker.generate(cond))
        assert pushed_at[0] < len(cond)  # audio came out while text was still coming
        # With lookahead 2 and 2 frames per token, frames 0..2 need 3 states.
        assert pushed_at[0] == 3
        assert all(len(c) == 3 for c in chunks[:-1]) and 1 <= len(chunks[-1]) <= 3


def test_streaming_sampling_is_seeded_and_equals_generate() -> None:
    talker = random_talker(lookahead=2, frames_per_token=1.5)
    with torch.no_grad():
        talker.stop_head.bias.fill_(-20.0)
    cond = states(8, HC)
    stream = StreamingTalker(talker, chunk_frames=4, temperature=1.0, seed=5, max_frames=25)
    chunks = []
    for pushed, row in enumerate(cond, start=1):
        chunks += stream.push(row)
        # Every frame whose rows have arrived is made; only whole chunks come out before the end.
        ready = sum(talker.config.rows_needed(s) <= pushed for s in range(25))
        assert sum(len(c) for c in chunks) == ready // 4 * 4, pushed
    assert not stream.done and len(chunks) >= 2  # frames came before finish
    chunks += stream.finish()
    assert stream.done
    streamed = torch.cat(chunks)
    assert streamed.shape == (25, Q)
    assert torch.equal(streamed, talker.generate(cond, max_frames=25, temperature=1.0, seed=5))
    other = talker.generate(cond, max_frames=25, temperature=1.0, seed=6)
    assert not torch.equal(streamed, other)
    with pytest.raises(RuntimeError, match="push after finish"):
        stream.push(cond[0])


# --- bad input -----------------------------------------------------------------------------

def test_bad_inputs_raise_clear_errors() -> None:
    talker = random_talker()
    mask = torch.ones(1, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match="thinker_hidden_size = 16"):
        talker(states(1, 4, HC + 1), mask, codes_like(1, 5), torch.ones(1, 5, dtype=bool))
    with pytest.raises(ValueError, match="num_quantizers = 2"):
        talker(states(1, 4, HC), mask, torch.zeros(1, 5, Q + 1, dtype=torch.long),
               torch.ones(1, 5, dtype=bool))
    with pytest.raises(ValueError, match=r"in \[0, 16\)"):
        talker.logits(states(1, 4, HC), mask, codes_like(1, 5) + K)
    with pytest.raises(ValueError, match="must be integers"):
        talker.logits(states(1, 4, HC), mask, codes_like(1, 5).float())
    with pytest.raises(ValueError, match="prefix"):
        talker.logits(states(1, 4, HC), torch.tensor([[True, False, True, True]]),
                      codes_like(1, 5))
    with pytest.raises(ValueError, match="thinker_hidden_size = 16"):
        talker.generate(states(4, HC + 1))
    with pytest.raises(ValueError, match="thinker_hidden_size = 16"):
        StreamingTalker(talker).push(states(HC - 1))
    with pytest.raises(ValueError, match="pair 1 has Hc"):
        collate_pairs([(states(3, HC), codes_like(1, 4)[0]),
                       (states(3, HC + 1), codes_like(1, 4)[0])])
    with pytest.raises(ValueError, match="pair 1 has Hc 16 and Q 3"):
        collate_pairs([(states(3, HC), codes_like(1, 4)[0]),
                       (states(3, HC), torch.zeros(4, Q + 1, dtype=torch.long))])


# --- determinism ---------------------------------------------------------------------------

def test_seeded_training_is_deterministic() -> None:
    pairs = synthetic_pairs(24, seed=7)

    def run(seed: int) -> tuple[dict[str, torch.Tensor], list[float]]:
        torch.manual_seed(0)
        talker = Talker(small_config(dropout=0.1))  # dropout draws from the seed too
        rng_before = torch.get_rng_state()
        losses = train_talker(talker, pairs, steps=15, lr=3e-3, batch_size=8, seed=seed)
        assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's RNG is untouched
        return talker.state_dict(), losses

    (first, first_losses), (second, second_losses) = run(0), run(0)
    assert first_losses == second_losses
    assert all(torch.equal(first[name], second[name]) for name in first)
    other, _ = run(1)
    assert not all(torch.equal(first[name], other[name]) for name in first)


# --- the Thinker side ----------------------------------------------------------------------

def test_thinker_states_feed_the_talker() -> None:
    torch.manual_seed(0)
    llm = MiniMindForCausalLM(preset_config("tiny", vocab_size=97, num_hidden_layers=2)).eval()
    ids = torch.randint(3, 97, (2, 7), generator=torch.Generator().manual_seed(0))
    full = llm(input_ids=ids, output_hidden_states=True).hidden_states
    assert len(full) == 3
    config = TalkerConfig.for_thinker(llm.config, num_quantizers=Q, codebook_size=K,
                                      hidden_size=32, num_heads=2, max_frames=6)
    assert config.thinker_layer == 1
    batched = thinker_states(llm, ids, config.thinker_layer)
    assert batched.shape == (2, 7, 128) and not batched.requires_grad
    assert torch.allclose(batched, full[1])
    single = thinker_states(llm, ids[1], config.thinker_layer)
    assert torch.allclose(single, full[1][1], atol=1e-5)
    with pytest.raises(ValueError, match="out of range"):
        thinker_states(llm, ids, 3)

    talker = Talker(config).eval()
    answer = single[3:]  # the answer tokens' rows
    out = talker.generate(answer)
    assert out.shape[1] == Q and len(out) <= 6
    loss = talker(answer[None], torch.ones(1, 4, dtype=torch.bool),
                  codes_like(1, 5), torch.ones(1, 5, dtype=torch.bool))
    assert torch.isfinite(loss)
