"""Family presets and modalities: each preset alone and composed validates, a switched-off
family's sections are not checked, and a skipped stage leaves outputs that say so."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import yaml

from pipelines.params import ParamsError, load_params, validate_params
from pipelines.presets import apply_presets, available
from pipelines.provenance import read_stage_spec
from pipelines.stage import SKIPPED_FILE, write_skipped
from tests.conftest import REPO

RAW = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
FAMILIES = ["minimind-3", "minimind-3-moe", "minimind-3v", "minimind-o"]


def applied(tmp_path: Path, *names: str):
    params = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", params)
    apply_presets(list(names), params)
    return load_params(params)


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_preset_validates_alone_and_with_gpu(tmp_path: Path, family: str) -> None:
    alone = applied(tmp_path, family)
    # Nothing of the embedded default is left in the data.
    assert not [s.uri for s in alone.data.sources if s.uri.startswith("builtin:")]
    assert alone.model.preset.startswith("minimind-3")
    assert alone.pretrain.train.epochs == 2 and alone.pretrain.train.max_steps is None
    composed = applied(tmp_path, family, "gpu")
    assert composed.pretrain.train.compile and composed.pretrain.train.dtype == "bfloat16"
    assert composed.data == alone.data and composed.model == alone.model


def test_family_presets_switch_the_modalities_they_need(tmp_path: Path) -> None:
    text, vision, omni = (applied(tmp_path, name).modalities
                          for name in ("minimind-3", "minimind-3v", "minimind-o"))
    assert (text.vision, text.omni) == (False, False)
    assert (vision.vision, vision.omni) == (True, False)
    assert (omni.vision, omni.omni) == (True, True)
    v = applied(tmp_path, "minimind-3v")
    assert v.features.vision.encoder == "jingyaogong/siglip2-base-p32-256-ve"
    assert v.align.phase2.llm_layers == [0, 7]
    o = applied(tmp_path, "minimind-o")
    assert o.features.audio.encoder.startswith("openai/whisper")
    assert {s.name: s.kind for s in o.data.sources}["sft_a2a_mini"] == "omni"


def test_upstream_recipe_of_minimind_3(tmp_path: Path) -> None:
    p = applied(tmp_path, "minimind-3")
    assert (p.pretrain.seq_len, p.pretrain.train.lr, p.pretrain.train.micro_batch_size,
            p.pretrain.train.grad_accum_steps) == (340, 5e-4, 32, 8)
    assert (p.sft.seq_len, p.sft.train.lr) == (768, 1e-5)
    assert (p.dpo.beta, p.dpo.train.lr) == (0.15, 4e-8)
    assert p.data.sources[0].uri == "hf://jingyaogong/minimind_dataset/pretrain_t2t_mini.jsonl"
    assert applied(tmp_path, "minimind-3-moe").model.preset == "minimind-3-moe"


def test_presets_extend_and_compose_in_order(tmp_path: Path) -> None:
    presets = tmp_path / "presets"
    presets.mkdir()
    (presets / "base.yaml").write_text("tokenizer: {vocab_size: 2000, min_frequency: 3}\n")
    (presets / "child.yaml").write_text("extends: base\ntokenizer: {vocab_size: 3000}\n")
    (presets / "loop.yaml").write_text("extends: loop\n")
    params = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", params)
    apply_presets(["child"], params, presets)
    loaded = load_params(params)
    assert (loaded.tokenizer.vocab_size, loaded.tokenizer.min_frequency) == (3000, 3)
    apply_presets(["child", "base"], params, presets)  # the later one wins
    assert load_params(params).tokenizer.vocab_size == 2000
    with pytest.raises(SystemExit, match="extends itself"):
        apply_presets(["loop"], params, presets)
    assert set(FAMILIES) <= set(available())


def text_only() -> dict:
    raw = copy.deepcopy(RAW)
    raw["data"]["sources"] = [s for s in raw["data"]["sources"]
                              if s["kind"] not in ("vlm", "omni")]
    return raw


def test_switched_off_families_are_not_checked_against_the_sources() -> None:
    raw = text_only()
    with pytest.raises(ParamsError, match="align.phase1.sources"):
        validate_params(raw)
    raw["modalities"] = {"vision": False, "omni": False}
    assert validate_params(raw).modalities.vision is False
    raw["modalities"] = {"vision": False, "omni": True}
    with pytest.raises(ParamsError, match="omni: true needs vision: true"):
        validate_params(raw)
    vision_only = copy.deepcopy(RAW)
    vision_only["data"]["sources"] = [s for s in RAW["data"]["sources"] if s["kind"] != "omni"]
    vision_only["modalities"] = {"vision": True, "omni": False}
    assert validate_params(vision_only).modalities.omni is False
    vision_only["eval_vlm"]["sources"] = ["wiki_qa"]  # an sft source is no VQA source
    with pytest.raises(ParamsError, match=r"eval_vlm.sources: \['wiki_qa'\] are not vlm"):
        validate_params(vision_only)


def test_llm_layers_must_exist_in_the_model() -> None:
    raw = copy.deepcopy(RAW)
    raw["align"]["phase2"]["llm_layers"] = [0, 7]  # minimind-3's last layer; tiny has 4
    with pytest.raises(ParamsError, match=r"align.phase2.llm_layers \[7\] out of range"):
        validate_params(raw)
    raw["model"]["preset"] = "minimind-3"
    assert validate_params(raw).align.phase2.llm_layers == [0, 7]


def test_eval_qa_sources_must_be_sft_sources() -> None:
    raw = copy.deepcopy(RAW)
    raw["eval"]["qa_sources"] = ["zh_news"]
    with pytest.raises(ParamsError, match=r"eval.qa_sources: \['zh_news'\] are not sft"):
        validate_params(raw)
    raw["eval"]["qa_sources"] = []
    assert validate_params(raw).eval.qa_sources == []


def test_skipped_stage_writes_placeholders_downstream_stages_can_depend_on(
        tmp_path: Path) -> None:
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    (tmp_path / "models" / "vlm").mkdir(parents=True)
    (tmp_path / "models" / "vlm" / "model.safetensors").write_bytes(b"old weights")
    for stage in ("features", "align", "eval_vlm", "talker"):
        write_skipped(read_stage_spec(stage, tmp_path), tmp_path, "modalities.vision is false")
    # data/features is one output; the vision and audio folders under it are deps elsewhere.
    for folder in ("data/features", "data/features/vision", "data/features/audio",
                   "models/vlm", "checkpoints/align", "models/talker"):
        marker = json.loads((tmp_path / folder / SKIPPED_FILE).read_text())
        assert marker["skipped"] is True and marker["reason"] == "modalities.vision is false"
    assert not (tmp_path / "models" / "vlm" / "model.safetensors").exists()  # no stale model
    for metrics in ("features", "align", "eval_vlm", "talker"):
        assert json.loads((tmp_path / "metrics" / f"{metrics}.json").read_text())["skipped"]
    assert json.loads((tmp_path / "metrics" / "vlm_samples.json").read_text())["skipped"]
    assert json.loads((tmp_path / "plots" / "align" / "train.json").read_text()) == []
    from PIL import Image

    assert Image.open(tmp_path / "plots" / "align" / "curves.png").size == (480, 60)
