"""Alignment: phase 1 leaves the LLM bit-identical, phases resume from their checkpoints, and
a short phase 1 + phase 2 on synthetic colour features learns to answer from the image."""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from minimind.data.features import FeatureStore
from minimind.data.vlm_tokens import IMAGE_PAD, VLMBatchStream, VLMDataset, eval_vlm_batches
from minimind.model import MiniMindForCausalLM, MiniMindVLM, preset_config
from minimind.model.vlm import trainable_filter
from minimind.training import TrainConfig, Trainer
from minimind.training.evaluate import mean_batch_loss
from minimind.vlm_eval import caption_samples, normalise_answer, vqa_accuracy
from tests.vlm_data import (
    COLOURS,
    FEATURE_DIM,
    IMAGE_TOKENS,
    make_records,
    small_tokenizer,
    write_feature_cache,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tokenizer():
    return small_tokenizer()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    train, train_features = make_records(90, seed=0)
    held_out, held_out_features = make_records(30, seed=1, first_image=10_000)
    cache = write_feature_cache(tmp_path_factory.mktemp("features"),
                                {**train_features, **held_out_features})
    return train, held_out, FeatureStore(cache)


def new_vlm(tokenizer) -> tuple[MiniMindVLM, MiniMindForCausalLM]:
    torch.manual_seed(0)
    llm = MiniMindForCausalLM(preset_config(
        "tiny", vocab_size=len(tokenizer), hidden_size=64, head_dim=16, intermediate_size=192,
        num_hidden_layers=2))
    vlm = MiniMindVLM.from_language_model(llm, FEATURE_DIM, IMAGE_TOKENS,
                                          tokenizer.convert_tokens_to_ids(IMAGE_PAD))
    return vlm, llm


def of_source(records: list[dict], source: str) -> list[dict]:
    return [r for r in records if r["source"] == source]


def train_phase(vlm, tokenizer, features, records, held_out, checkpoint_dir: Path, steps: int,
                **choice) -> dict[str, float]:
    train = VLMDataset.from_rows(records, tokenizer, features, max_len=200)
    val = VLMDataset.from_rows(held_out, tokenizer, features, max_len=200)
    config = TrainConfig(max_steps=steps, micro_batch_size=16, lr=3e-3, warmup_steps=5,
                         weight_decay=0.0, log_every=10, eval_every=0, checkpoint_every=10,
                         seed=0)

    def evaluate(model) -> dict[str, float]:
        return {"val_loss": mean_batch_loss(model, eval_vlm_batches(val, 16))}

    before = evaluate(vlm)["val_loss"]
    trainer = Trainer(vlm, config, VLMBatchStream(train, 16, seed=0), checkpoint_dir,
                      evaluate=evaluate, trainable=trainable_filter(vlm.config, **choice))
    return {"before": before, **trainer.fit()}


def test_phase_one_trains_the_projector_and_leaves_the_llm_bit_identical(tokenizer, data,
                                                                         tmp_path):
    train, held_out, features = data
    vlm, llm = new_vlm(tokenizer)
    projector = {k: v.clone() for k, v in vlm.projector.state_dict().items()}
    result = train_phase(vlm, tokenizer, features, of_source(train, "captions"),
                         of_source(held_out, "captions"), tmp_path, steps=20, llm_layers="none")
    assert result["val_loss"] < result["before"] - 0.1  # the projector alone lowers the loss
    for name, tensor in llm.state_dict().items():
        assert torch.equal(vlm.language_model.state_dict()[name], tensor), name
    assert all(not torch.equal(vlm.projector.state_dict()[k], v) for k, v in projector.items())


def test_a_killed_phase_resumes_to_the_same_weights(tokenizer, data, tmp_path, monkeypatch,
                                                    caplog):
    train, held_out, features = data
    captions, held_captions = of_source(train, "captions"), of_source(held_out, "captions")
    vlm, _ = new_vlm(tokenizer)
    train_phase(vlm, tokenizer, features, captions, held_captions, tmp_path / "a", steps=14,
                llm_layers="none")
    straight = {k: v.clone() for k, v in vlm.state_dict().items()}

    save = Trainer.save_checkpoint

    def save_then_die(self: Trainer) -> None:
        save(self)
        raise KeyboardInterrupt  # killed right after the step-10 checkpoint

    monkeypatch.setattr(Trainer, "save_checkpoint", save_then_die)
    vlm, _ = new_vlm(tokenizer)
    with pytest.raises(KeyboardInterrupt):
        train_phase(vlm, tokenizer, features, captions, held_captions, tmp_path / "b",
                    steps=14, llm_layers="none")
    monkeypatch.setattr(Trainer, "save_checkpoint", save)
    vlm, _ = new_vlm(tokenizer)  # a new process: fresh model, resumed from the checkpoint
    with caplog.at_level(logging.INFO, logger="minimind"):
        train_phase(vlm, tokenizer, features, captions, held_captions, tmp_path / "b",
                    steps=14, llm_layers="none")
    assert "resumed from step 10" in caplog.text
    assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)["step"] == 14
    for name, tensor in straight.items():
        assert torch.equal(vlm.state_dict()[name], tensor), name


def test_phase_one_then_two_learns_to_answer_from_the_image(tokenizer, data, tmp_path):
    train, held_out, features = data
    vlm, _ = new_vlm(tokenizer)
    phase1 = train_phase(vlm, tokenizer, features, of_source(train, "captions"),
                         of_source(held_out, "captions"), tmp_path / "1", steps=20,
                         llm_layers="none")
    phase2 = train_phase(vlm, tokenizer, features, of_source(train, "vqa"),
                         of_source(held_out, "vqa"), tmp_path / "2", steps=60,
                         llm_layers="all", train_embeddings=True)
    assert phase1["val_loss"] < phase1["before"]
    assert phase2["val_loss"] < 0.5 < 5.0 < phase2["before"]
    scores = vqa_accuracy(vlm, tokenizer, of_source(held_out, "vqa"), features)
    assert scores["colour"]["total"] == 20 and scores["which"]["total"] == 10  # from the rows'
    assert scores["short_answer"]["total"] == 20  # answer_types; "What shape is it?" untyped
    assert scores["colour"]["chance"] == pytest.approx(1 / 6)
    assert scores["colour"]["accuracy"] >= 0.9  # chance: 1/6; the image is read
    assert scores["which"]["accuracy"] >= 0.3
    samples = caption_samples(vlm, tokenizer, of_source(held_out, "vqa"), features, count=3)
    assert len(samples) == 3
    assert all(s["reply"] in COLOURS for s in samples)
    assert [s["reference"] for s in samples] == [
        r["conversations"][1]["content"] for r in of_source(held_out, "vqa")[::14]]


def test_a_model_that_ignores_the_image_stays_near_chance(tokenizer, data):
    _, held_out, features = data
    vlm, _ = new_vlm(tokenizer)
    scores = vqa_accuracy(vlm, tokenizer, of_source(held_out, "vqa"), features)
    assert scores["colour"]["accuracy"] < 0.5
    assert scores["colour"]["chance"] == pytest.approx(1 / len(COLOURS))  # from the choices
    assert "chance" not in scores["short_answer"]  # untyped: chance unknown


@pytest.mark.parametrize(("reply", "normal"), [(" Top left. ", "top left"), ("RED!", "red"),
                                               ("3", "3"), ("first?!", "first")])
def test_answers_are_normalised_before_the_exact_match(reply, normal):
    assert normalise_answer(reply) == normal


# ---------------------------------------------------------------------------- the stage


@pytest.mark.slow
def test_align_stage_writes_the_vlm_and_resumes_finished_phases(tokenizer, data, tmp_path):
    """`python -m stages.align` on a project holding synthetic contract files: models/sft,
    data/clean/vlm and data/features/vision; a rerun resumes both finished phases."""
    from transformers import AutoModelForCausalLM

    from tests.project import copy_project, run, set_param, stage_env
    from tests.vlm_data import write_clean_vlm

    train, held_out, features = data
    root = tmp_path / "project"
    copy_project(root)
    _, llm = new_vlm(tokenizer)
    llm.save_pretrained(root / "models" / "sft")
    tokenizer.save_pretrained(root / "models" / "sft")
    write_clean_vlm(root / "data/clean/vlm", "train", train)
    write_clean_vlm(root / "data/clean/vlm", "val", held_out)
    shutil.copytree(features.directory, root / "data/features/vision")
    sources = yaml.safe_load((root / "params.yaml").read_text())["data"]["sources"]
    set_param(root, "data.sources", sources + [  # align's sources must be vlm sources
        {"name": name, "uri": "builtin:scene_vqa", "kind": "vlm"} for name in ("vqa", "captions")])
    for phase, source in (("phase1", "captions"), ("phase2", "vqa")):
        set_param(root, f"align.{phase}.sources", [source])
        set_param(root, f"align.{phase}.train.max_steps", 6)
        set_param(root, f"align.{phase}.train.micro_batch_size", 8)
        set_param(root, f"align.{phase}.train.warmup_steps", 1)
        set_param(root, f"align.{phase}.train.checkpoint_every", 3)
    env = stage_env(OMP_NUM_THREADS="1")
    first = run([sys.executable, "-m", "stages.align"], root, env)
    assert "held-out loss: phase 1" in first.stdout

    metrics = json.loads((root / "metrics/align.json").read_text())
    assert metrics["phase1"]["llm_unchanged"] is True
    for phase, records in (("phase1", 90), ("phase2", 90)):
        assert metrics[phase]["records"] == records
        assert metrics[phase]["val_loss"] < metrics[phase]["val_loss_before"]
    assert metrics["phase1"]["trainable_parameters"] == sum(
        p.numel() for p in new_vlm(tokenizer)[0].projector.parameters())
    assert metrics["phase2"]["images"] == 120  # 60 one-image and 30 two-image records
    vlm = AutoModelForCausalLM.from_pretrained(root / "models/vlm")
    assert isinstance(vlm, MiniMindVLM)
    assert vlm.config.vision_encoder["encoder"] == "fake-colour-encoder"
    assert (root / "models/vlm/tokenizer.json").exists()
    assert {p.name for p in (root / "plots/align").iterdir()} == {
        "train.json", "val.json", "curves.png"}
    steps = [row["step"] for row in json.loads((root / "plots/align/val.json").read_text())]
    assert steps == [0, 6, 12]  # phase 2 continues the curve (its start overwrites step 6)
    (run_dir,) = (root / "checkpoints/align").iterdir()
    assert {p.name for p in run_dir.iterdir()} >= {"phase1", "phase2"}

    weights = load_file(root / "models/vlm/model.safetensors")
    again = run([sys.executable, "-m", "stages.align"], root, env)
    assert again.stderr.count("resumed from step 6") == 2
    for name, tensor in load_file(root / "models/vlm/model.safetensors").items():
        assert torch.equal(tensor, weights[name]), name


def test_projector_lr_scale_speeds_up_the_projectors_only() -> None:
    from pydantic import ValidationError

    from minimind.model.omni import AUDIO_PROJECTOR_PREFIX
    from minimind.model.vlm import PROJECTOR_PREFIX
    from pipelines.alignment import projector_lr_scale
    from pipelines.params import AlignPhase2Params

    train = {"max_steps": 10, "micro_batch_size": 4, "lr": 3e-4, "warmup_steps": 1,
             "log_every": 1, "eval_every": 0, "checkpoint_every": 0, "seed": 0}
    phase = AlignPhase2Params(sources=["scenes"], train=train, projector_lr=3e-3)
    scale = projector_lr_scale(phase, (PROJECTOR_PREFIX, AUDIO_PROJECTOR_PREFIX))
    assert scale("projector.fc1.weight") == pytest.approx(10.0)
    assert scale("audio_projector.position") == pytest.approx(10.0)
    assert scale("language_model.model.layers.0.mlp.up_proj.weight") == 1.0
    assert projector_lr_scale(AlignPhase2Params(sources=["scenes"], train=train),
                              (PROJECTOR_PREFIX,)) is None
    with pytest.raises(ValidationError, match="projector_lr"):
        AlignPhase2Params(sources=["scenes"], train=train, projector_lr=0)
