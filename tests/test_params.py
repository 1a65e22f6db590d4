"""params.yaml validation: every mistake is caught before work starts, naming the key."""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipelines.params import ParamsError, load_params, params_hash, select, validate_params
from pipelines.presets import apply_presets
from tests.conftest import REPO

RAW = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))


def with_change(path: str, value: object) -> dict:
    raw = copy.deepcopy(RAW)
    *parents, last = path.split(".")
    node = raw
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return raw


def error_of(raw: dict) -> str:
    with pytest.raises(ParamsError) as info:
        validate_params(raw)
    return str(info.value)


def test_project_params_are_valid() -> None:
    params = load_params(REPO / "params.yaml")
    assert params.tokenizer.vocab_size == 6400
    assert {s.kind for s in params.data.sources} >= {"pretrain", "sft", "dpo"}


@pytest.mark.parametrize(("path", "value", "message"), [
    ("download.backoff_s", "fast", "download.backoff_s: 'fast' is not a number"),
    ("sft.train.lr", "fast", "sft.train.lr: 'fast' is not a number"),
    ("pretrain.train.warmup_steps", -1, "pretrain.train.warmup_steps: -1 must be >= 0"),
    ("sft.lora.rank", 0, "sft.lora.rank: 0 must be >= 1"),
    ("tokenizer.vocab_size", "big", "tokenizer.vocab_size: 'big' is not an integer"),
    ("tokenizer.vocab_size", 100, "tokenizer.vocab_size: 100 must be >= 271"),
    ("clean.val_fraction", 1.5, "clean.val_fraction: 1.5 must be < 1"),
    ("clean.unicode_form", "NFD", "clean.unicode_form: 'NFD' is not one of"),
    ("clean.bogus", 1, "clean.bogus: unknown key"),
    ("clean.dedup.num_perm", "many", "clean.dedup.num_perm: 'many' is not an integer"),
    ("tokenizer.include_sft", "perhaps", "tokenizer.include_sft: 'perhaps' is not true/false"),
    ("data.sources.0.kind", "video", "data.sources[0].kind: 'video' is not one of"),
    ("data.sources.0.uri", "ftp://x/y", "data.sources[0].uri: 'ftp://x/y' must start with"),
    ("data.sources.0.uri", "builtin:nope", "unknown builtin 'nope'"),
    ("data.sources.0.sha256", "abc", "data.sources[0].sha256: 'abc' does not match"),
])
def test_bad_values_name_their_key(path: str, value: object, message: str) -> None:
    assert message in error_of(with_change(path, value))


def test_structural_mistakes() -> None:
    raw = copy.deepcopy(RAW)
    raw["data"]["sources"].append(dict(raw["data"]["sources"][0]))
    assert "source names must be unique; repeated: zh_news" in error_of(raw)
    raw = copy.deepcopy(RAW)
    del raw["data"]
    assert "data: is required" in error_of(raw)
    raw = with_change("data.sources.0", {"name": "x", "uri": "https://h/x.jsonl",
                                         "kind": "pretrain", "limit": 3})
    assert "limit applies to builtin: sources only" in error_of(raw)
    raw = with_change("data.sources.0", {"name": "x", "uri": "builtin:zh_news", "kind": "sft"})
    assert "holds 'pretrain' records, not 'sft'" in error_of(raw)
    raw = with_change("sfft", {"lr": 1})
    assert "sfft: unknown key" in error_of(raw)
    raw = with_change("sft.seq_len", 256)
    assert "sft.seq_len (256) must be >= tokenize.sft.max_len (1024)" in error_of(raw)
    raw = with_change("pretrain.seq_len", 100_000)
    assert "pretrain.seq_len (100000) exceeds the model's max_position_embeddings" in error_of(raw)
    raw = with_change("model.preset", "huge")
    assert "model: " in error_of(raw) and "huge" in error_of(raw)
    raw = with_change("align_omni.phase1.sources", ["scene_vqa"])
    assert "align_omni.phase1.sources: ['scene_vqa'] are not omni sources" in error_of(raw)
    raw = with_change("eval_omni.text_sources", ["nope"])
    assert "eval_omni.text_sources: ['nope'] are not vlm sources" in error_of(raw)
    raw = with_change("align_omni.max_len", 100_000)
    assert "align_omni.max_len (100000) exceeds" in error_of(raw)


def test_every_error_is_reported_at_once() -> None:
    raw = with_change("clean.val_fraction", 2.0)
    raw["tokenizer"]["vocab_size"] = "x"
    message = error_of(raw)
    assert "clean.val_fraction" in message and "tokenizer.vocab_size" in message


def test_select_and_hash_follow_dvc_keys() -> None:
    params = validate_params(RAW)
    picked = select(params, ["tokenizer", "clean.dedup"])
    assert set(picked) == {"tokenizer", "clean.dedup"}
    assert picked["tokenizer"]["vocab_size"] == 6400
    same = params_hash(select(validate_params(copy.deepcopy(RAW)), ["tokenizer"]))
    assert params_hash(select(params, ["tokenizer"])) == same
    other = validate_params(with_change("tokenizer.vocab_size", 7000))
    assert params_hash(select(other, ["tokenizer"])) != same
    assert params_hash(select(other, ["clean"])) == params_hash(select(params, ["clean"]))


def test_stage_refuses_bad_params_before_any_work(tmp_path: Path) -> None:
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / name, tmp_path / name)
    bad = with_change("download.timeout_s", "soon")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(bad), encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "stages.download", "--root", str(tmp_path)],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "download.timeout_s: 'soon' is not a number" in result.stderr
    assert not (tmp_path / "data").exists() and not (tmp_path / "mlflow.db").exists()


def test_stage_help_is_light() -> None:
    code = ("import sys, contextlib, io\n"
            "sys.argv = ['x', '--help']\n"
            "import stages.clean as s\n"
            "heavy = [m for m in ('mlflow', 'torch', 'transformers', 'dvc') if m in sys.modules]\n"
            "assert not heavy, heavy\n"
            "out = io.StringIO()\n"
            "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(out) as o:\n"
            "    s.run_stage('clean', s.main, s.__doc__)\n"
            "assert 'data/clean' in o.getvalue(), o.getvalue()\n")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)


def test_preset_overlays_keys_and_keeps_comments(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", params)
    apply_presets(["tiny-test"], params)
    text = params.read_text(encoding="utf-8")
    assert "# Every knob of the pipeline" in text
    loaded = load_params(params)
    assert loaded.tokenizer.vocab_size == 1200          # from the preset
    assert loaded.tokenizer.min_frequency == 2          # untouched key survives the merge
    assert loaded.clean.dedup.num_perm == RAW["clean"]["dedup"]["num_perm"]
    assert max(s.limit or 0 for s in loaded.data.sources) <= 200


def test_invalid_preset_result_leaves_params_untouched(tmp_path: Path) -> None:
    presets = tmp_path / "presets"
    presets.mkdir()
    (presets / "broken.yaml").write_text("# broken\ntokenizer: {vocab_size: -1}\n")
    params = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", params)
    before = params.read_text(encoding="utf-8")
    with pytest.raises(ParamsError, match="tokenizer.vocab_size: -1 must be >= 271"):
        apply_presets(["broken"], params, presets)
    assert params.read_text(encoding="utf-8") == before
    with pytest.raises(SystemExit, match="unknown preset 'nope'"):
        apply_presets(["nope"], params, presets)
