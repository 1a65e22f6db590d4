"""Speech out plumbing: the Thinker states a Talker trains on follow the conditioning contract
(answer tokens only, each at the position where it is the input, unchanged by batching), and a
Talker folder loads back whole (weights and codec) or not at all."""

import json

import pytest
import torch

from minimind.audio.codec import RvqMelCodec
from minimind.audio.rvq import ResidualVQ, RVQConfig
from minimind.model import MiniMindForCausalLM, MiniMindOmni, MiniMindVLM, preset_config
from minimind.model.talker import Talker, TalkerConfig, load_talker, save_talker
from minimind.speech_out import answer_states, first_run, spoken_answers
from tests.test_omni import Clips, Images
from tests.vlm_data import small_tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tokenizer():
    return small_tokenizer()


@pytest.fixture(scope="module")
def omni(tokenizer) -> MiniMindOmni:
    torch.manual_seed(0)
    llm = MiniMindForCausalLM(preset_config("tiny", vocab_size=len(tokenizer)))
    vlm = MiniMindVLM.from_language_model(llm, Images.feature_dim, Images.num_tokens,
                                          tokenizer.convert_tokens_to_ids("<|image_pad|>"))
    return MiniMindOmni.from_vlm(vlm, Clips.feature_dim,
                                 tokenizer.convert_tokens_to_ids("<|audio_pad|>")).eval()


def rows() -> list[dict]:
    def conversation(answer: str, image: bool) -> str:
        prompt = "<image>\n<audio>" if image else "<audio>\nTranscribe the audio."
        return json.dumps([{"role": "user", "content": prompt},
                           {"role": "assistant", "content": answer}])

    return [{"conversations": conversation("red", True), "images": ["i"],
             "question_audios": ["a"], "answer_audio": "x"},
            {"conversations": conversation("a large blue star at the top", False),
             "images": [], "question_audios": ["b"], "answer_audio": "y"},
            {"conversations": conversation("no speech for this one", False), "images": [],
             "question_audios": ["b"], "answer_audio": None}]


def test_states_are_the_answer_tokens_at_their_input_positions(omni, tokenizer):
    clips = Clips({"a": 5, "b": 9})
    answers = spoken_answers(rows(), tokenizer, Images(), clips, max_len=200)
    assert [a.answer_audio for a in answers] == ["x", "y"]  # no answer speech: skipped
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    batched = answer_states(omni, answers, Images(), clips, 2, [end], 0, batch_size=2)
    for answer, states in zip(answers, batched, strict=True):
        words = tokenizer(answer.text, add_special_tokens=False).input_ids
        assert states.shape == (len(words), omni.config.text_config.hidden_size)
        alone = answer_states(omni, [answer], Images(), clips, 2, [end], 0)[0]
        torch.testing.assert_close(states, alone, atol=1e-5, rtol=1e-5)  # padding changes nothing
        ids = torch.from_numpy(answer.example.input_ids)
        positions = first_run((torch.from_numpy(answer.example.labels) != -100) & (ids != end))
        assert ids[positions].tolist() == words


def test_first_run_takes_the_first_answer_only():
    mask = torch.tensor([0, 1, 1, 0, 1, 1, 1], dtype=torch.bool)
    assert first_run(mask).tolist() == [1, 2]
    with pytest.raises(ValueError, match="no answer token"):
        first_run(torch.zeros(3, dtype=torch.bool))


def test_talker_folder_round_trips_weights_and_codec(tmp_path):
    mels = [torch.randn(80, 40, generator=torch.Generator().manual_seed(i)) for i in range(6)]
    codec = RvqMelCodec(ResidualVQ.fit(mels, RVQConfig(num_quantizers=2, codebook_size=8,
                                                       kmeans_iters=3)))
    torch.manual_seed(1)
    talker = Talker(TalkerConfig(thinker_hidden_size=16, thinker_layer=1, hidden_size=16,
                                 num_layers=1, num_heads=2, num_quantizers=2, codebook_size=8))
    save_talker(talker, tmp_path / "talker", codec)
    moved = tmp_path / "moved"
    (tmp_path / "talker").rename(moved)  # the codec path is relative: the folder can move
    loaded, loaded_codec = load_talker(moved)
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in talker.state_dict().items())
    assert loaded.config == talker.config
    mel = torch.randn(80, 30, generator=torch.Generator().manual_seed(9))
    assert torch.equal(loaded_codec.rvq.encode(mel), codec.rvq.encode(mel))
    weights = moved / "talker.safetensors"
    from safetensors.torch import load_file, save_file

    partial = load_file(weights)
    partial.pop(next(iter(partial)))
    save_file(partial, weights)
    with pytest.raises(RuntimeError, match="Missing key"):
        load_talker(moved)
    with pytest.raises(FileNotFoundError, match="not a Talker folder"):
        load_talker(tmp_path)
