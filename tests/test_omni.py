"""MiniMind-O's Thinker: audio features land exactly on the audio pads (clip by clip, in order),
the grown VLM keeps every weight, generation with audio equals a no-cache loop, save/load is
strict, and omni records tokenize with one pad run per clip of the clip's length."""

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from minimind.data.vlm_tokens import AUDIO_PAD, IMAGE_PAD, Dropped, VLMDataset, encode_vlm
from minimind.model import MiniMindForCausalLM, MiniMindOmni, MiniMindVLM, preset_config
from minimind.model.omni import AUDIO_PROJECTOR_PREFIX
from minimind.model.vlm import PROJECTOR_PREFIX, trainable_filter
from tests.test_vlm import perturbed
from tests.vlm_data import small_tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

VOCAB, PAD, AUDIO, N, D, DA = 97, 5, 8, 3, 10, 6


@pytest.fixture(scope="module")
def vlm() -> MiniMindVLM:
    torch.manual_seed(0)
    llm = perturbed(MiniMindForCausalLM(preset_config("tiny", vocab_size=VOCAB)), 0)
    return perturbed(MiniMindVLM.from_language_model(llm, D, N, PAD), 1)


@pytest.fixture(scope="module")
def omni(vlm) -> MiniMindOmni:
    torch.manual_seed(2)
    model = MiniMindOmni.from_vlm(vlm, DA, AUDIO, {"encoder": "log-mel"})
    perturbed(model.audio_projector, 3)
    return model.eval()


def ids_of(*parts) -> list[int]:
    """ints as they are, "img" one image's pads, ("aud", n) a clip of n audio pads."""
    ids = []
    for part in parts:
        if part == "img":
            ids += [PAD] * N
        elif isinstance(part, tuple):
            ids += [AUDIO] * part[1]
        else:
            ids.append(part)
    return ids


def test_from_vlm_copies_every_weight_and_adds_only_the_audio_projector(vlm, omni):
    theirs, ours = vlm.state_dict(), omni.state_dict()
    assert all(torch.equal(theirs[key], ours[key]) for key in theirs)
    assert sorted(set(ours) - set(theirs)) == sorted(
        f"{AUDIO_PROJECTOR_PREFIX}{name}" for name in omni.audio_projector.state_dict())


def test_audio_features_replace_exactly_the_audio_pads_in_order(omni):
    ids = torch.tensor([ids_of(1, "img", ("aud", 4), 9, ("aud", 2)),
                        ids_of(1, ("aud", 3), 7, 7, 7, 7, 7, 7, 7)])
    image = torch.randn(1, N, D)
    audio = torch.randn(9, DA)  # clips of 4, 2 (row 0) and 3 (row 1) tokens
    with torch.no_grad():
        embeds = omni.embed_media(ids, image, audio)
        projected = omni.audio_projector(audio)
        tokens = omni.get_input_embeddings()(ids)
        images = omni.projector(image)
    assert torch.equal(embeds[0, 1:1 + N], images[0])
    assert torch.equal(embeds[0, 1 + N:5 + N], projected[0:4])
    assert torch.equal(embeds[0, 6 + N:8 + N], projected[4:6])
    assert torch.equal(embeds[1, 1:4], projected[6:9])
    plain = (ids != AUDIO) & (ids != PAD)
    assert torch.equal(embeds[plain], tokens[plain])
    with torch.no_grad():
        logits = omni(ids, image_features=image, audio_features=audio).logits
        other = omni(ids, image_features=image, audio_features=audio.flip(0)).logits
        expected = omni.language_model(inputs_embeds=embeds).logits
    torch.testing.assert_close(logits, expected, atol=0, rtol=0)
    assert not torch.allclose(logits[0, -1], other[0, -1])


@pytest.mark.parametrize("tokens", [0, 3, 6])
def test_audio_pad_count_must_match_the_features(omni, tokens):
    ids = torch.tensor([ids_of(1, ("aud", 4), 9)])
    given = torch.randn(tokens, DA) if tokens else None
    with pytest.raises(ValueError, match=rf"4 <\|audio_pad\|> tokens .* {tokens} tokens"):
        omni(ids, audio_features=given)
    with pytest.raises(ValueError, match=rf"must be \(tokens, {DA}\)"):
        omni(ids, audio_features=torch.randn(4, DA + 1))


def test_text_and_image_input_are_the_vlm(vlm, omni):
    ids = torch.tensor([ids_of(1, "img", 9, 10)])
    image = torch.randn(1, N, D)
    with torch.no_grad():
        torch.testing.assert_close(omni(ids, image_features=image).logits,
                                   vlm(ids, image_features=image).logits, atol=0, rtol=0)


def test_cached_generation_with_audio_equals_a_no_cache_loop(omni):
    ids = torch.tensor([ids_of(1, "img", ("aud", 5), 9)])
    image, audio = torch.randn(1, N, D), torch.randn(5, DA)
    out = omni.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                        image_features=image, audio_features=audio, max_new_tokens=6,
                        do_sample=False, pad_token_id=0, eos_token_id=None)
    loop = ids
    for _ in range(6):
        with torch.no_grad():
            logits = omni(loop, image_features=image, audio_features=audio,
                          use_cache=False).logits[:, -1]
        loop = torch.cat([loop, logits.argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, loop)


def test_save_load_round_trip_is_strict(omni, tmp_path):
    import minimind.model  # noqa: F401  registers the Auto classes

    omni.save_pretrained(tmp_path / "omni")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "omni")
    assert isinstance(loaded, MiniMindOmni) and loaded.config.audio_encoder == {
        "encoder": "log-mel"}
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in omni.state_dict().items())
    config = json.loads((tmp_path / "omni" / "config.json").read_text())
    config["audio_feature_dim"] = DA + 2
    (tmp_path / "omni" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"audio_projector\.norm\.weight"):
        MiniMindOmni.from_pretrained(tmp_path / "omni")


def test_phase_filters_pick_the_audio_projector(omni):
    names = [name for name, _ in omni.named_parameters()]
    audio_only = trainable_filter(omni.config, "none", projectors=(AUDIO_PROJECTOR_PREFIX,))
    assert {n for n in names if audio_only(n)} == {
        n for n in names if n.startswith(AUDIO_PROJECTOR_PREFIX)}
    both = trainable_filter(omni.config, "all", projectors=(PROJECTOR_PREFIX,
                                                            AUDIO_PROJECTOR_PREFIX))
    assert all(both(n) for n in names if "projector" in n)


# ---------------------------------------------------------------------------- omni records


class Clips:
    """An in-memory ragged audio cache: sha -> (tokens, DA)."""

    feature_dim = DA

    def __init__(self, lengths: dict[str, int]) -> None:
        rng = np.random.default_rng(0)
        self.clips = {sha: rng.normal(size=(n, DA)).astype(np.float16)
                      for sha, n in lengths.items()}

    def __contains__(self, sha: object) -> bool:
        return sha in self.clips

    def __getitem__(self, sha: str) -> np.ndarray:
        return self.clips[sha]

    def length(self, sha: str) -> int:
        return len(self.clips[sha])


class Images:
    num_tokens, feature_dim = N, D

    def __contains__(self, sha: object) -> bool:
        return True

    def __getitem__(self, sha: str) -> np.ndarray:
        return np.full((N, D), hash(sha) % 7, np.float16)


def omni_messages() -> list[dict]:
    return [{"role": "user", "content": "<image>\n<audio>"},
            {"role": "assistant", "content": "red"},
            {"role": "user", "content": "<audio>\nTranscribe the audio."},
            {"role": "assistant", "content": "a red circle"}]


def test_each_clip_becomes_a_pad_run_of_its_own_length():
    tokenizer = small_tokenizer()
    example = encode_vlm(tokenizer, omni_messages(), ["img"], N, 500, ["a", "b"], [4, 7])
    ids = example.input_ids
    audio_id = tokenizer.convert_tokens_to_ids(AUDIO_PAD)
    runs = np.split(np.flatnonzero(ids == audio_id),
                    np.flatnonzero(np.diff(np.flatnonzero(ids == audio_id)) > 1) + 1)
    assert [len(run) for run in runs] == [4, 7]
    assert int((ids == tokenizer.convert_tokens_to_ids(IMAGE_PAD)).sum()) == N
    assert (example.labels[ids == audio_id] == -100).all()
    assert example.audios == ("a", "b")


def test_a_cut_inside_a_clip_drops_the_record_and_a_cut_after_it_keeps_it():
    tokenizer = small_tokenizer()
    full = encode_vlm(tokenizer, omni_messages(), ["img"], N, 500, ["a", "b"], [4, 7])
    audio_id = tokenizer.convert_tokens_to_ids(AUDIO_PAD)
    second = np.flatnonzero(full.input_ids == audio_id)[4]  # first pad of clip b
    with pytest.raises(Dropped, match="dropped_cut_audio"):
        encode_vlm(tokenizer, omni_messages(), ["img"], N, int(second) + 2, ["a", "b"], [4, 7])
    cut = encode_vlm(tokenizer, omni_messages(), ["img"], N, int(second), ["a", "b"], [4, 7])
    assert cut.audios == ("a",)


def test_markers_must_match_the_clips():
    with pytest.raises(ValueError, match="2 <audio> markers but 1 clips"):
        encode_vlm(small_tokenizer(), omni_messages(), ["img"], N, 500, ["a"], [4])


def test_batches_carry_every_clip_in_pad_order():
    tokenizer = small_tokenizer()
    clips = Clips({"a": 4, "b": 7, "c": 2})
    rows = [{"conversations": json.dumps(omni_messages()), "images": ["i"],
             "question_audios": ["a", "b"], "source": "s"},
            {"conversations": json.dumps(omni_messages()[2:]), "images": [],
             "question_audios": ["c"], "source": "s"},
            {"conversations": json.dumps([{"role": "user", "content": "<image>\nwhat?"},
                                          {"role": "assistant", "content": "red"}]),
             "images": ["j"], "source": "t"}]  # a vlm row mixed in: no audio
    data = VLMDataset.from_rows(rows, tokenizer, Images(), 500, audio_features=clips)
    batch = data.collate([1, 0, 2])
    expected = np.concatenate([clips["c"], clips["a"], clips["b"]]).astype(np.float32)
    assert torch.equal(batch["audio_features"], torch.from_numpy(expected))
    audio_id = tokenizer.convert_tokens_to_ids(AUDIO_PAD)
    assert int((batch["input_ids"] == audio_id).sum()) == len(expected)
    assert data.stats["audios"] == 3
    with pytest.raises(ValueError, match="record 0 .* holds audio but no audio feature cache"):
        VLMDataset.from_rows(rows, tokenizer, Images(), 500)
    with pytest.raises(ValueError, match="clip b is not in the audio feature cache"):
        VLMDataset.from_rows(rows, tokenizer, Images(), 500, audio_features=Clips({"a": 4}))


# ---------------------------------------------------------------------------- evaluation

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange"]


def omni_row(prompt: str, answer: str, images: list[str], clips: list[str],
             types: list | None = None, choices: list | None = None, more: list | None = None
             ) -> dict:
    """A clean omni row (conversations and evaluation fields as JSON text)."""
    turns = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer},
             *(more or [])]
    row = {"conversations": json.dumps(turns), "images": images, "question_audios": clips,
           "answer_audio": None, "source": "s"}
    for key, value in (("answer_types", types), ("answer_choices", choices)):
        if value is not None:
            row[key] = json.dumps(value)
    return row


CAPTION = "A large red circle at the top left."


def omni_rows(tag: str, colours: list[str]) -> list[dict]:
    rows = [omni_row("<image>\n<audio>", colour, [f"{tag}i{i}"], [f"{tag}q{i}"], ["colour"],
                     [COLOURS]) for i, colour in enumerate(colours)]
    return rows + [
        omni_row("<audio>\nTranscribe the audio.", "a red circle", [], [f"{tag}t1"],
                 ["transcript"]),
        omni_row("<audio>\nWhat does the speaker say?", "a blue star", [],  # untyped, no
                 [f"{tag}t2"]),  # image: a transcription by the fallback
        omni_row("<image>\n<audio>", CAPTION, [f"{tag}c"], [f"{tag}c"]),  # untyped, long: open
        omni_row("<image>\n<audio>", "top left", [f"{tag}s"], [f"{tag}s"],  # untyped, short
                 more=[{"role": "user", "content": "Sure?"},
                       {"role": "assistant", "content": "yes"}]),  # plays no audio: not asked
    ]


def test_eval_omni_scores_spoken_questions_beside_chance_and_the_majority(monkeypatch):
    from minimind import omni_eval

    replies = {"red": "red", "blue": "red", "a red circle": "a red circle",
               "a blue star": "a blue car", CAPTION: "A red circle.", "top left": "top left"}
    asked = []

    def fake_replies(model, tokenizer, features, turns, max_new_tokens, *args, **kwargs):
        asked.extend(turns)
        return [replies[turn.reference] for turn, _ in turns]

    monkeypatch.setattr(omni_eval, "turn_replies", fake_replies)
    metrics = omni_eval.evaluate_omni(None, None, omni_rows("v", ["red", "blue"]),
                                      omni_rows("t", ["red", "red", "blue"]), Images(),
                                      Clips({}), samples=1)
    assert [turn.audios for turn, _ in asked][:2] == [("vq0",), ("vq1",)]  # clips attached
    assert metrics["records"] == metrics["turns"] == 6  # "Sure?" plays no audio
    assert metrics["tasks"] == {"question": 3, "transcribe": 2, "open": 1}
    assert metrics["asr"]["clips"] == 2
    assert metrics["asr"]["cer"] < metrics["asr"]["baseline"]["cer"]
    vqa = metrics["spoken_vqa"]
    assert vqa["colour"] == {"correct": 1, "total": 2, "accuracy": 0.5, "chance": 1 / 6,
                             "majority_baseline": 0.5, "majority_answer": "red",
                             "accuracy_over_chance": 3.0}
    assert vqa["short_answer"] == {"correct": 1, "total": 1, "accuracy": 1.0,
                                   "majority_baseline": 1.0, "majority_answer": "top left"}
    assert vqa["open"]["measure"] == "rouge_l_f1" and 0.5 < vqa["open"]["score"] < 1
    assert vqa["open"]["majority_baseline"] == 1.0  # the train split's one caption
    assert {task: len(s) for task, s in metrics["samples"].items()} == {
        "open": 1, "question": 1, "transcribe": 1}


def test_eval_omni_runs_a_model_on_rows_with_and_without_fields():
    from minimind.omni_eval import evaluate_omni

    tokenizer = small_tokenizer()
    torch.manual_seed(0)
    llm = MiniMindForCausalLM(preset_config("tiny", vocab_size=len(tokenizer),
                                            num_hidden_layers=1))
    vlm = MiniMindVLM.from_language_model(llm, D, N, tokenizer.convert_tokens_to_ids(IMAGE_PAD))
    model = MiniMindOmni.from_vlm(vlm, DA, tokenizer.convert_tokens_to_ids(AUDIO_PAD),
                                  {"encoder": "log-mel"}).eval()
    rows = omni_rows("v", ["red", "blue"])
    clips = Clips({sha: 3 for row in rows for sha in row["question_audios"]})
    metrics = evaluate_omni(model, tokenizer, rows, rows, Images(), clips, max_new_tokens=4)
    assert set(metrics["spoken_vqa"]) == {"colour", "open", "short_answer"}
    assert all("majority_baseline" in score for score in metrics["spoken_vqa"].values())
    assert metrics["asr"]["clips"] == 2
