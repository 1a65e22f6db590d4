"""MiniMind-V: features land exactly on the pads (in order), cached generation equals a no-cache
greedy loop, save/load round trips, loading anything partial fails loudly, and phase choices."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

from minimind.model import MiniMindForCausalLM, MiniMindVLM, MiniMindVLMConfig, preset_config
from minimind.model.vlm import load_language_model, trainable_filter

pytestmark = pytest.mark.usefixtures("one_torch_thread")

VOCAB, PAD, N, D = 97, 5, 3, 10


def perturbed(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter moved off its init, so a swapped or dropped weight shows."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def make_llm(seed: int = 0, **overrides) -> MiniMindForCausalLM:
    torch.manual_seed(seed)
    return perturbed(MiniMindForCausalLM(preset_config("tiny", vocab_size=VOCAB, **overrides)),
                     seed)


@pytest.fixture(scope="module")
def llm() -> MiniMindForCausalLM:
    return make_llm()


@pytest.fixture(scope="module")
def vlm(llm) -> MiniMindVLM:
    torch.manual_seed(1)
    model = MiniMindVLM.from_language_model(llm, D, N, PAD, {"encoder": "fake", "num_tokens": N})
    perturbed(model.projector, 2)
    return model.eval()


def text(*parts) -> list[int]:
    """Token ids: ints as they are, "img" as one image's pad run."""
    ids = []
    for part in parts:
        ids += [PAD] * N if part == "img" else [part]
    return ids


def features(count: int, seed: int = 3) -> torch.Tensor:
    return torch.randn(count, N, D, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------- pad replacement


def test_projected_features_replace_exactly_the_pads_in_row_major_order(vlm):
    ids = torch.tensor([text(1, 7, "img", 9, "img", 11), text(1, 8, 8, "img", 12, 13, 14, 15)])
    feats = features(3)
    seen = {}
    hook = vlm.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.update(kwargs), with_kwargs=True)
    try:
        with torch.no_grad():
            vlm(ids, image_features=feats)
    finally:
        hook.remove()
    embeds = seen["inputs_embeds"]
    with torch.no_grad():
        projected = vlm.projector(feats)  # (3, N, H)
        tokens = vlm.get_input_embeddings()(ids)
    pads = ids == PAD
    assert torch.equal(embeds[~pads], tokens[~pads])
    # row 0: images 0 and 1 in order; row 1: image 2
    assert torch.equal(embeds[0, 2:2 + N], projected[0])
    assert torch.equal(embeds[0, 3 + N:3 + 2 * N], projected[1])
    assert torch.equal(embeds[1, 3:3 + N], projected[2])


def test_logits_equal_the_language_model_on_a_hand_built_embedding(vlm):
    ids = torch.tensor([text(1, 7, "img", 9, 10)])
    feats = features(1, seed=4)
    with torch.no_grad():
        manual = vlm.get_input_embeddings()(ids)
        manual[0, 2:2 + N] = vlm.projector(feats)[0]
        expected = vlm.language_model(inputs_embeds=manual).logits
        torch.testing.assert_close(vlm(ids, image_features=feats).logits, expected,
                                   atol=0, rtol=0)


def test_image_order_and_content_reach_the_model(vlm):
    ids = torch.tensor([text(1, "img", 9, "img", 10)])
    feats = features(2, seed=5)
    with torch.no_grad():
        logits = vlm(ids, image_features=feats).logits[0, -1]
        swapped = vlm(ids, image_features=feats.flip(0)).logits[0, -1]
    assert not torch.allclose(logits, swapped)


@pytest.mark.parametrize("images", [0, 1, 3])
def test_pad_count_must_match_the_features(vlm, images):
    ids = torch.tensor([text(1, "img", 9, "img", 10)])  # 2 images' pads
    given = features(images) if images else None
    with pytest.raises(ValueError, match=rf"{2 * N} <\|image_pad\|> tokens .* {images} images"):
        vlm(ids, image_features=given)


def test_feature_shape_is_checked(vlm):
    with pytest.raises(ValueError, match=rf"must be \(images, {N}, {D}\)"):
        vlm(torch.tensor([text(1, "img")]), image_features=torch.randn(1, N, D + 1))


def test_text_only_input_is_the_language_model(vlm, llm):
    ids = torch.tensor([[1, 7, 9, 10]])
    with torch.no_grad():
        torch.testing.assert_close(vlm(ids).logits, llm(ids).logits, atol=0, rtol=0)


# ---------------------------------------------------------------------------- generation


def greedy_without_cache(model, ids, feats, steps):
    for _ in range(steps):
        with torch.no_grad():
            logits = model(ids, image_features=feats, use_cache=False).logits[:, -1]
        ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
    return ids


def test_cached_generate_matches_a_no_cache_greedy_loop(vlm):
    ids = torch.tensor([text(1, 7, "img", 9, "img", 11)])
    feats = features(2, seed=6)
    generated = vlm.generate(ids, image_features=feats, max_new_tokens=10, do_sample=False,
                             pad_token_id=0, eos_token_id=None)
    expected = greedy_without_cache(vlm, ids, feats, 10)
    assert torch.equal(generated, expected)
    assert len(set(generated[0, ids.shape[1]:].tolist())) > 1  # a real continuation
    uncached = vlm.generate(ids, image_features=feats, max_new_tokens=10, do_sample=False,
                            pad_token_id=0, eos_token_id=None, use_cache=False)
    assert torch.equal(uncached, expected)


def test_left_padded_batch_generates_like_each_prompt_alone(vlm):
    long, short = text(1, 7, "img", 9, "img", 11), text(1, "img", 12)
    width = len(long)
    ids = torch.tensor([long, [0] * (width - len(short)) + short])
    mask = (torch.arange(width) >= torch.tensor([[0], [width - len(short)]])).long()
    feats = features(3, seed=7)
    batch = vlm.generate(ids, attention_mask=mask, image_features=feats, max_new_tokens=6,
                         do_sample=False, pad_token_id=0, eos_token_id=None)
    first = vlm.generate(torch.tensor([long]), image_features=feats[:2], max_new_tokens=6,
                         do_sample=False, pad_token_id=0, eos_token_id=None)
    second = vlm.generate(torch.tensor([short]), image_features=feats[2:], max_new_tokens=6,
                          do_sample=False, pad_token_id=0, eos_token_id=None)
    assert torch.equal(batch[0], first[0])
    assert torch.equal(batch[1, width:], second[0, len(short):])


# ---------------------------------------------------------------------------- save / load


def test_from_language_model_copies_the_weights_bit_for_bit(vlm, llm):
    state = vlm.language_model.state_dict()
    for name, tensor in llm.state_dict().items():
        assert torch.equal(state[name], tensor), name
        assert state[name].data_ptr() != tensor.data_ptr()  # a copy: training one spares the other
    assert vlm.config.text_config.hidden_size == llm.config.hidden_size
    assert vlm.projector.fc2.out_features == llm.config.hidden_size


def test_projector_tells_image_tokens_apart_by_place_only_with_positions(llm):
    """The same feature at every token: with position embeddings each place projects to its
    own vector (the LLM can read where an object is), without them all rows are equal."""
    same = torch.randn(1, 1, D).expand(2, N, D)
    for positions in (True, False):
        torch.manual_seed(1)
        config = MiniMindVLMConfig(text_config=llm.config.to_dict(), vision_feature_dim=D,
                                   image_tokens=N, image_token_id=PAD, image_positions=positions)
        projected = MiniMindVLM(config).projector(same)
        assert projected.shape == (2, N, llm.config.hidden_size)
        torch.testing.assert_close(projected[0], projected[1])  # per token, not per image
        distinct = len({tuple(row.tolist()) for row in projected[0]})
        assert distinct == (N if positions else 1)
    assert trainable_filter(config)("projector.position")


@pytest.mark.parametrize("auto", [AutoModelForCausalLM, AutoModelForImageTextToText])
def test_save_and_load_round_trip_gives_equal_logits(vlm, tmp_path, auto):
    vlm.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "minimind-vlm"
    assert config["text_config"]["model_type"] == "minimind"
    assert (config["vision_feature_dim"], config["image_tokens"], config["image_token_id"]) == (
        D, N, PAD)
    assert config["vision_encoder"] == {"encoder": "fake", "num_tokens": N}
    assert isinstance(AutoConfig.from_pretrained(tmp_path), MiniMindVLMConfig)
    loaded = auto.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, MiniMindVLM)
    lm = loaded.language_model
    assert lm.lm_head.weight is lm.model.embed_tokens.weight  # tying survives the round trip
    ids = torch.tensor([text(1, 7, "img", 9)])
    feats = features(1, seed=8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, image_features=feats).logits,
                                   vlm(ids, image_features=feats).logits, atol=0, rtol=0)


def rewrite(folder, weights=None, **config_changes) -> None:
    if weights is not None:
        save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    if config_changes:
        config = json.loads((folder / "config.json").read_text())
        for key, value in config_changes.items():
            if key.startswith("text_"):
                config["text_config"][key.removeprefix("text_")] = value
            else:
                config[key] = value
        (folder / "config.json").write_text(json.dumps(config))


def test_projector_of_another_feature_dim_fails_loudly(vlm, tmp_path):
    vlm.save_pretrained(tmp_path)
    rewrite(tmp_path, vision_feature_dim=D + 6)
    with pytest.raises(ValueError, match=r"mismatched shapes: .*projector\.fc1\.weight "
                                         rf"\(128, {D}\) in the checkpoint vs \(128, {D + 6}\)"):
        MiniMindVLM.from_pretrained(tmp_path)


def test_missing_or_unexpected_vlm_weights_fail_loudly(vlm, tmp_path):
    vlm.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    rewrite(tmp_path, {k: v for k, v in weights.items() if not k.startswith("projector.fc2")})
    with pytest.raises(ValueError, match=r"missing keys: \['projector\.fc2\.bias', "
                                         r"'projector\.fc2\.weight'\]"):
        AutoModelForCausalLM.from_pretrained(tmp_path)
    rewrite(tmp_path, {**weights, "projector.extra.weight": torch.zeros(2)})
    with pytest.raises(ValueError, match=r"unexpected keys: \['projector\.extra\.weight'\]"):
        MiniMindVLM.from_pretrained(tmp_path)


def test_vlm_whose_language_model_has_another_width_fails_loudly(vlm, tmp_path):
    vlm.save_pretrained(tmp_path)
    rewrite(tmp_path, text_hidden_size=64, text_head_dim=16, text_intermediate_size=224)
    with pytest.raises(ValueError, match=r"mismatched shapes: .*language_model\.model\."
                                         r"embed_tokens\.weight \(97, 128\) in the checkpoint"):
        MiniMindVLM.from_pretrained(tmp_path)


def test_language_model_missing_a_layer_fails_loudly(llm, tmp_path):
    llm.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    rewrite(tmp_path, {k: v for k, v in weights.items() if ".layers.3." not in k})
    with pytest.raises(ValueError, match=r"missing keys: \['model\.layers\.3\.input_layernorm"):
        load_language_model(tmp_path)


def test_language_model_of_another_width_fails_loudly(llm, tmp_path):
    llm.save_pretrained(tmp_path)
    rewrite(tmp_path, hidden_size=64, head_dim=16, intermediate_size=224)
    with pytest.raises(ValueError, match=r"mismatched shapes: .*model\.embed_tokens\.weight"):
        load_language_model(tmp_path)
    other = make_llm(hidden_size=64, head_dim=16, intermediate_size=224)
    vlm = MiniMindVLM.from_language_model(other, D, N, PAD)
    with pytest.raises(RuntimeError, match="size mismatch"):  # torch's strict load_state_dict
        vlm.language_model.load_state_dict(llm.state_dict())


def test_clean_folders_load_strictly(llm, vlm, tmp_path):
    llm.save_pretrained(tmp_path / "llm")
    loaded = load_language_model(tmp_path / "llm")
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in llm.state_dict().items())
    vlm.save_pretrained(tmp_path / "vlm")
    _, info = MiniMindVLM.from_pretrained(tmp_path / "vlm", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]


# ---------------------------------------------------------------------------- what trains


def trained_names(vlm, **choice) -> set[str]:
    keep = trainable_filter(vlm.config, **choice)
    return {name for name, _ in vlm.named_parameters() if keep(name)}


def test_trainable_filter_choices(vlm):
    all_names = {name for name, _ in vlm.named_parameters()}
    projector = {n for n in all_names if n.startswith("projector.")}
    assert trained_names(vlm, llm_layers="none") == projector
    layer1 = {n for n in all_names if n.startswith("language_model.model.layers.1.")}
    assert trained_names(vlm, llm_layers=[1]) == projector | layer1
    everything_but_embeddings = all_names - {"language_model.model.embed_tokens.weight"}
    assert trained_names(vlm, llm_layers="all") == everything_but_embeddings
    assert trained_names(vlm, llm_layers="all", train_embeddings=True) == all_names
    with pytest.raises(ValueError, match=r"llm_layers \[4, 7\] out of range: the LLM has 4"):
        trainable_filter(vlm.config, llm_layers=[0, 4, 7])
