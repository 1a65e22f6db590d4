"""Each family preset end to end: `dvc repro` from upstream's files on a loopback Hub.

Per family the test applies the preset unchanged (its hf:// sources, the hub ids of its
tokenizer and encoders), then one overlay that only shrinks sizes and steps to seconds, and
runs `dvc repro` to the exported model with HF_ENDPOINT pointed at `tests.upstream_world`'s
fake Hub. That Hub serves small files written in upstream's exact schemas and file names,
tiny random SigLIP/Whisper encoders under the presets' hub ids, an upstream-style tokenizer
under `jingyaogong/minimind-3` and a tiny upstream-style `.pth`. No builtin source is used.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from pipelines.params import load_params
from tests.project import DVC, copy_project, executed, run, stage_env
from tests.upstream_world import build_world, serve_hub

pytestmark = pytest.mark.slow

TEXT = {"download", "clean", "tokenizer", "tokenize", "pretrain", "sft", "dpo", "eval", "export"}
VISION = {"features", "align", "eval_vlm", "export_vlm"}
OMNI = {"align_omni", "eval_omni", "talker"}

# Sizes and steps to seconds; every data, tokenizer and encoder key stays the preset's.
# Training sections keep the presets' `epochs` where the tiny data makes them cheap.
SECONDS = {
    "clean": {"val_fraction": 0.1, "shard_rows": 1000},
    "tokenize": {"sft": {"max_len": 256}, "dpo": {"max_len": 128}},
    "model": {"preset": "tiny"},
    "pretrain": {"seq_len": 64, "eval_rows": 8,
                 "train": {"micro_batch_size": 8, "grad_accum_steps": 2, "warmup_steps": 1}},
    "sft": {"seq_len": 256, "eval_rows": 4, "sampling": {"prompts": 1, "max_new_tokens": 8},
            "train": {"micro_batch_size": 4, "epochs": 1, "warmup_steps": 1}},
    "dpo": {"train": {"max_steps": 4, "epochs": None, "warmup_steps": 1}},
    "eval": {"docs_per_group": 4, "max_tokens": 64, "questions": 8,
             "sampling": {"prompts": 1, "max_new_tokens": 8}},
    "align": {"max_len": 256, "eval_rows": 8,
              "phase1": {"train": {"max_steps": 4, "epochs": None, "micro_batch_size": 4,
                                   "warmup_steps": 1}},
              "phase2": {"llm_layers": [0, 3],  # the first and last of tiny's 4
                         "train": {"max_steps": 4, "epochs": None, "micro_batch_size": 4,
                                   "warmup_steps": 1}}},
    "eval_vlm": {"max_questions": 16, "max_new_tokens": 4, "captions": 1,
                 "caption_max_new_tokens": 8},
    "align_omni": {"max_len": 512, "eval_rows": 8,
                   "phase1": {"train": {"max_steps": 4, "epochs": None, "micro_batch_size": 4,
                                        "warmup_steps": 1}},
                   "phase2": {"train": {"max_steps": 4, "epochs": None,
                                        "micro_batch_size": 4, "warmup_steps": 1}}},
    "eval_omni": {"max_records": 8, "max_new_tokens": 8, "answer_max_new_tokens": 4,
                  "samples": 1},
}


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory):
    world = build_world(tmp_path_factory.mktemp("world"))
    with serve_hub(world.repos) as served:
        yield world, served


def family_project(root: Path, hub_env: dict[str, str], *presets: str,
                   extra: dict | None = None) -> dict[str, str]:
    """A git-committed copy of the project with `presets` and the seconds overlay applied."""
    env = stage_env(**hub_env)
    copy_project(root)
    apply(root, env, list(presets), extra)
    for command in (["git", "init", "-q"], ["git", "add", "-A"],
                    ["git", "commit", "-qm", "family project"]):
        run(command, root, env)
    return env


def apply(root: Path, env: dict[str, str], presets: list[str], extra: dict | None) -> None:
    """`python -m pipelines.presets apply <presets>`, then the seconds overlay (+ `extra`)."""
    run([sys.executable, "-m", "pipelines.presets", "apply", *presets], root, env)
    overlays = root / ".test-presets"
    overlays.mkdir(exist_ok=True)
    (overlays / "seconds.yaml").write_text(yaml.safe_dump(_merged(SECONDS, extra or {})))
    code = ("import sys; from pathlib import Path; from pipelines.presets import apply_presets;"
            "apply_presets(['seconds'], Path('params.yaml'), Path(sys.argv[1]))")
    run([sys.executable, "-c", code, str(overlays)], root, env)


def _merged(base: dict, extra: dict) -> dict:
    out = {**base}
    for key, value in extra.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(
            out.get(key), dict) else value
    return out


def metrics(root: Path, name: str) -> dict:
    return json.loads((root / "metrics" / f"{name}.json").read_text(encoding="utf-8"))


def check_no_builtin_and_fetched_from_hub(root: Path, served) -> None:
    params = load_params(root / "params.yaml")
    assert all(s.uri.startswith("hf://") for s in params.data.sources), params.data.sources
    for source in params.data.sources:
        path = source.uri.removeprefix("hf://").split("/", 2)[2]
        assert served.hits(f"/datasets/{'/'.join(source.uri[5:].split('/')[:2])}/resolve/"), \
            source.uri
        assert any(path in r.path for r in served.requests), path


def check_text_family(root: Path, env: dict[str, str]) -> None:
    tokenizer = metrics(root, "tokenizer")
    assert tokenizer["source"].startswith("jingyaogong/minimind-3"), tokenizer
    clean = metrics(root, "clean")
    assert clean["records_kept"] > 0
    pretrain, sft, dpo = metrics(root, "pretrain"), metrics(root, "sft"), metrics(root, "dpo")
    params = load_params(root / "params.yaml")
    assert params.pretrain.train.epochs == 2 and pretrain["steps"] >= 1  # from epochs
    assert pretrain["val_loss"] < pretrain["unigram_entropy"] + 1.0
    assert sft["val_loss"] < sft["val_loss_before"]
    assert 0 <= dpo["val_reward_accuracy"] <= 1
    evaluation = metrics(root, "eval")
    assert evaluation["qa_accuracy"]["sft"]["chance"] == 0.25
    assert set(evaluation["perplexity"]) == {"pretrain", "sft", "dpo"}
    exported = metrics(root, "export")
    assert exported["hf_max_logit_diff"] <= 1e-4
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(root / "models" / "export" / "hf")
    tok = AutoTokenizer.from_pretrained(root / "models" / "export" / "hf")
    assert tok.convert_tokens_to_ids("<|image_pad|>") == 12  # upstream's ids, kept
    ids = tok("hello", return_tensors="pt").input_ids
    assert model(input_ids=ids).logits.shape[-1] == len(tok)
    assert (root / "models" / "export" / "gguf" / "minimind.gguf").stat().st_size > 0


def repro_family(tmp_path: Path, served, *presets: str, extra: dict | None = None
                 ) -> tuple[Path, dict[str, str], str]:
    """A family project's first `dvc repro`: every stage runs (or says it skipped), all of
    its data from the fake Hub. Returns the project root, its env and the repro output."""
    root = tmp_path / "project"
    env = family_project(root, served.env(tmp_path / "hf_home"), *presets, extra=extra)
    first = run([DVC, "repro"], root, env).stdout
    assert executed(first) == TEXT | VISION | OMNI, first
    check_no_builtin_and_fetched_from_hub(root, served)
    return root, env, first


def check_skipped(root: Path, env: dict[str, str], stages: set[str], reason: str) -> None:
    """The stages' metrics say skipped and why, in the files and in `dvc metrics show`."""
    shown = json.loads(run([DVC, "metrics", "show", "--json"], root, env).stdout)[""]["data"]
    for stage in stages:
        marker = metrics(root, stage)
        assert marker["skipped"] is True and reason in marker["reason"], (stage, marker)
        assert shown[f"metrics/{stage}.json"]["data"]["skipped"] is True


def test_minimind_3_text_only_then_moe(tmp_path: Path, hub) -> None:
    world, served = hub
    root, env, first = repro_family(tmp_path, served, "minimind-3")
    assert "skipped (modalities.vision is false)" in first
    check_text_family(root, env)
    check_skipped(root, env, {"align", "eval_vlm", "export_vlm"}, "modalities.vision is false")
    check_skipped(root, env, {"align_omni", "eval_omni", "talker"}, "modalities.omni is false")
    assert not (root / "models" / "vlm" / "model.safetensors").exists()
    assert executed(run([DVC, "repro"], root, env).stdout) == set()
    status = run([DVC, "status"], root, env).stdout
    assert "changed" not in status, status

    # MiniMind-3-MoE on the same project: the data half is kept, the model half reruns.
    apply(root, env, ["minimind-3-moe"], {"model": {"preset": "tiny-moe"}})
    rerun = executed(run([DVC, "repro"], root, env).stdout)
    assert {"pretrain", "sft", "dpo", "eval", "export"} <= rerun, rerun
    assert not {"download", "clean", "tokenizer", "tokenize"} & rerun, rerun
    config = json.loads((root / "models" / "export" / "hf" / "config.json").read_text())
    assert config["architectures"] == ["Qwen3MoeForCausalLM"], config["architectures"]


def test_minimind_3v_from_an_upstream_llm(tmp_path: Path, hub) -> None:
    world, served = hub
    root, env, _ = repro_family(tmp_path, served, "minimind-3v",
                                extra={"sft": {"init_from": world.weights_uri()}})
    assert served.hits(f"/{world.vision_encoder_repo}/resolve/")
    assert metrics(root, "sft")["init_from"]["source"] == world.weights_uri()
    features = metrics(root, "features")["vision"]
    assert features["unique_images"] > 0 and features["num_tokens"] == 4
    align = metrics(root, "align")
    assert align["phase1"]["llm_unchanged"] is True and align["phase2"]["images"] > 0
    vqa = metrics(root, "eval_vlm")
    assert vqa["overall"]["total"] > 0 or vqa.get("open", {}).get("total", 0) > 0, vqa
    assert (root / "models" / "export-vlm" / "encoder.json").is_file()
    check_skipped(root, env, {"align_omni", "eval_omni", "talker"}, "modalities.omni is false")


def test_minimind_o_hears_upstream_spoken_questions(tmp_path: Path, hub) -> None:
    world, served = hub
    root, env, _ = repro_family(tmp_path, served, "minimind-o")
    assert served.hits(f"/{world.audio_encoder_repo}/resolve/")
    clean = metrics(root, "clean")
    assert clean["records_kept"] > 0
    audio = metrics(root, "features")["audio"]
    assert audio["unique_clips"] > 0
    align = metrics(root, "align_omni")
    assert align["phase1"]["vlm_unchanged"] is True and align["phase1"]["audios"] > 0
    scores = metrics(root, "eval_omni")
    assert scores["records"] > 0
    # Upstream's answer speech is Mimi codes: the Talker has nothing to learn and says so.
    check_skipped(root, env, {"talker"}, "no answer speech")
