"""MiniMind-V export: the folder loads through the Auto classes with the source's logits, names
its vision encoder (encoder.json) and documents itself; broken inputs fail the export."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer

from minimind.encoders import load_vision_encoder
from minimind.export.vlm import export_vlm, max_logit_difference
from minimind.model import MiniMindVLM
from tests.project import copy_project, run, stage_env
from tests.tiny_vlm import save_tiny_encoder, save_tiny_vlm

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WEIGHTS = "model.safetensors"


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export-vlm")
    source = save_tiny_vlm(root / "vlm", save_tiny_encoder(root / "encoder"))
    return {"root": root, "source": source, "export": export_vlm(source, root / "export")}


def test_exported_logits_equal_the_source(folders: dict[str, Path]) -> None:
    assert max_logit_difference(folders["source"], folders["export"]) <= 1e-5


@pytest.mark.parametrize("auto", [AutoModelForCausalLM, AutoModelForImageTextToText])
def test_exported_folder_loads_with_the_auto_classes(folders: dict[str, Path], auto) -> None:
    model = auto.from_pretrained(folders["export"])
    source = MiniMindVLM.from_pretrained(folders["source"])
    assert isinstance(model, MiniMindVLM)
    ours, theirs = source.state_dict(), model.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[key], theirs[key]) for key in ours)


def test_encoder_reference_rebuilds_the_encoder(folders: dict[str, Path]) -> None:
    reference = json.loads((folders["export"] / "encoder.json").read_text())
    config = MiniMindVLM.config_class.from_pretrained(folders["export"])
    assert reference == config.vision_encoder
    assert reference["encoder"] == str(folders["root"] / "encoder")
    encoder = load_vision_encoder(reference["encoder"])
    assert (encoder.num_tokens, encoder.feature_dim) == (config.image_tokens,
                                                         config.vision_feature_dim)
    assert json.loads(json.dumps(encoder.describe()))["preprocessing"] == reference["preprocessing"]


def test_readme_documents_loading_serving_and_the_encoder(folders: dict[str, Path]) -> None:
    readme = (folders["export"] / "README.md").read_text()
    for needed in ("import minimind.model", "AutoModelForCausalLM.from_pretrained",
                   "load_vision_encoder", "image_features=features", "python -m minimind.serve",
                   "data:image/png;base64", f"`{folders['root'] / 'encoder'}`", "16 tokens"):
        assert needed in readme, needed


def test_tokenizer_files_are_copied_and_generation_stops_at_end_of_turn(
        folders: dict[str, Path]) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (folders["export"] / name).read_bytes() == (folders["source"] / name).read_bytes()
    generation = json.loads((folders["export"] / "generation_config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(folders["export"])
    assert generation["eos_token_id"] == tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_a_changed_weight_shows_in_the_logit_check(folders: dict[str, Path],
                                                   tmp_path: Path) -> None:
    changed = Path(shutil.copytree(folders["export"], tmp_path / "changed"))
    weights = load_file(changed / WEIGHTS)
    weights["projector.fc1.bias"] += 0.1
    save_file(weights, changed / WEIGHTS, metadata={"format": "pt"})
    assert max_logit_difference(folders["source"], changed) > 1e-3


def test_a_vlm_without_an_encoder_or_with_a_missing_weight_is_not_exported(
        folders: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    nameless = Path(shutil.copytree(folders["source"], tmp_path / "nameless"))
    config = json.loads((nameless / "config.json").read_text())
    (nameless / "config.json").write_text(json.dumps({**config, "vision_encoder": None}))
    with pytest.raises(ValueError, match="names no vision encoder"):
        export_vlm(nameless, out)
    partial = Path(shutil.copytree(folders["source"], tmp_path / "partial"))
    weights = load_file(partial / WEIGHTS)
    del weights["projector.fc2.weight"]
    save_file(weights, partial / WEIGHTS, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"missing keys: \['projector.fc2.weight'\]"):
        export_vlm(partial, out)
    assert {p.name for p in tmp_path.iterdir()} == {"nameless", "partial"}  # no staging left


@pytest.mark.slow
def test_export_vlm_stage_writes_verifies_and_logs(folders: dict[str, Path],
                                                   tmp_path: Path) -> None:
    copy_project(tmp_path)
    shutil.copytree(folders["source"], tmp_path / "models" / "vlm")
    result = run([sys.executable, "-m", "stages.export_vlm"], tmp_path,
                 stage_env(OMP_NUM_THREADS="1"))
    assert "logits match models/vlm" in result.stdout
    metrics = json.loads((tmp_path / "metrics" / "export_vlm.json").read_text())
    assert metrics["max_logit_diff"] <= 1e-5 and metrics["size_mb"] > 0
    exported = tmp_path / "models" / "export-vlm"
    assert {"README.md", "encoder.json", "mlflow_run.json", WEIGHTS} <= {
        p.name for p in exported.iterdir()}
    run_info = json.loads((exported / "mlflow_run.json").read_text())
    logged = list((tmp_path / "mlartifacts").rglob("export_vlm/*"))
    assert {p.name for p in logged} == {"config.json", "generation_config.json",
                                        "encoder.json", "README.md"}
    assert all(run_info["run_id"] in str(p) for p in logged)
